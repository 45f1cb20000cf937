"""``symconv compare``: train layer variants on real data and compare them.

Programmatic use::

    from symconv.compare import CompareConfig, TrainSettings, run_compare

    results = run_compare(CompareConfig(variants=("plain", "sym-inv"),
                                        settings=TrainSettings(epochs=3)))
    results["variants"]["sym-inv"]["mean"]["accuracy"]["hflip"]

Submodules: :mod:`~symconv.compare.data` (datasets), :mod:`~symconv.compare.models`
(SmallCNN, ResNet), :mod:`~symconv.compare.variants` (plain/sym/sym-inv/twist),
:mod:`~symconv.compare.transforms` (robustness transforms), :mod:`~symconv.compare.train`
(training loop, checkpoints, DDP), :mod:`~symconv.compare.report` (table, files, plots),
:mod:`~symconv.compare.runner` and :mod:`~symconv.compare.cli`. Loaded on first use, so
the ``symconv`` command starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CompareConfig": "symconv.compare.runner",
    "run_compare": "symconv.compare.runner",
    "TrainSettings": "symconv.compare.train",
    "load_data": "symconv.compare.data",
    "ImageData": "symconv.compare.data",
    "build_variant": "symconv.compare.variants",
    "OrbitConv2d": "symconv.compare.variants",
    "TRANSFORMS": "symconv.compare.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'symconv.compare' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
