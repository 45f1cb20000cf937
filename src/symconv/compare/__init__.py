"""``symconv compare``: train layer variants on real data and compare them.

Programmatic use::

    from symconv.compare import CompareConfig, TrainSettings, run_compare

    results = run_compare(CompareConfig(variants=("plain", "sym-inv"),
                                        settings=TrainSettings(epochs=3)))
    results["variants"]["sym-inv"]["mean"]["accuracy"]["hflip"]

Submodules: :mod:`~symconv.compare.config` (the options and names, torch-free),
:mod:`~symconv.compare.data` (datasets), :mod:`~symconv.compare.models` (SmallCNN, ResNet),
:mod:`~symconv.compare.variants` (plain/sym/sym-inv/twist),
:mod:`~symconv.compare.transforms` (robustness transforms), :mod:`~symconv.compare.train`
(the training loop), :mod:`~symconv.compare.optim`, :mod:`~symconv.compare.distributed`
(devices, DDP), :mod:`~symconv.compare.checkpoints`, :mod:`~symconv.compare.memory`,
:mod:`~symconv.compare.progress`, :mod:`~symconv.compare.report` (table, files, plots),
:mod:`~symconv.compare.outdir` (the locked run folder), :mod:`~symconv.compare.runner`
and :mod:`~symconv.compare.cli`. Loaded on first use, so the ``symconv`` command starts
fast.
"""

from __future__ import annotations

from symconv._lazy import lazy_exports

_EXPORTS = {
    "symconv.compare.config": ("CompareConfig", "TrainSettings"),
    "symconv.compare.runner": ("run_compare",),
    "symconv.compare.data": ("load_data", "ImageData"),
    "symconv.compare.variants": ("build_variant",),
    "symconv.nn.orbit": ("OrbitConv2d",),
    "symconv.compare.transforms": ("TRANSFORMS",),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
