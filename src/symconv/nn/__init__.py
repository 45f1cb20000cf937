"""PyTorch layers, one module per family (loaded on first use)."""

from __future__ import annotations

from symconv._lazy import lazy_exports

_EXPORTS = {
    "SymmetricConv1d": "symconv.nn.symmetric",
    "SymmetricConv2d": "symconv.nn.symmetric",
    "SymmetricConv3d": "symconv.nn.symmetric",
    "OrbitConv2d": "symconv.nn.orbit",
    "OrbitPool": "symconv.nn.orbit",
    "flip_permutation": "symconv.nn.orbit",
    "ConvTwist": "symconv.nn.twist",
    "GlobalConv1d": "symconv.nn.global_conv",
    "TopKPool": "symconv.nn.pooling",
    "GroupConv1d": "symconv.nn.group_conv",
    "GroupConv2d": "symconv.nn.group_conv",
    "GroupConv3d": "symconv.nn.group_conv",
    "GroupPool": "symconv.nn.group_pool",
    "GroupBatchNorm1d": "symconv.nn.group_norm",
    "GroupBatchNorm2d": "symconv.nn.group_norm",
    "GroupBatchNorm3d": "symconv.nn.group_norm",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
