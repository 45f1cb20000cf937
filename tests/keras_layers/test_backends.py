"""Run the Keras tests again under the PyTorch backend (Keras picks one per process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")

HERE = Path(__file__).parent


@pytest.mark.skipif(
    os.environ.get("SYMCONV_KERAS_SUBRUN") == "1", reason="already inside the backend re-run"
)
@pytest.mark.timeout(900)
def test_keras_suite_on_torch_backend() -> None:
    env = dict(os.environ, KERAS_BACKEND="torch", SYMCONV_KERAS_SUBRUN="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider", "-x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"Keras tests failed on the torch backend:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    )
