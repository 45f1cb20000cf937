"""PyTorch layers, one module per family (loaded on first use)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SymmetricConv1d": "symconv.nn.symmetric",
    "SymmetricConv2d": "symconv.nn.symmetric",
    "SymmetricConv3d": "symconv.nn.symmetric",
    "OrbitPool": "symconv.nn.orbit",
    "flip_permutation": "symconv.nn.orbit",
    "ConvTwist": "symconv.nn.twist",
    "GlobalConv1d": "symconv.nn.global_conv",
    "TopKPool": "symconv.nn.pooling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'symconv.nn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
