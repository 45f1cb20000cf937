"""Keras tests: skipped when keras is not installed; the backend is set in tests/conftest.py.
Shared helpers live in this directory's ``_*.py`` modules."""

import pytest

keras = pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(0)
