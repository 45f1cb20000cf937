"""PyTorch layers, one module per family (loaded on first use)."""

from __future__ import annotations

from symconv._lazy import lazy_exports

#: Module -> the layers it defines; the top-level package exports these too.
LAYER_MODULES = {
    "symconv.nn.symmetric": ("SymmetricConv1d", "SymmetricConv2d", "SymmetricConv3d"),
    "symconv.nn.orbit": ("OrbitConv2d", "OrbitPool", "flip_permutation", "member_permutation"),
    "symconv.nn.twist": ("ConvTwist",),
    "symconv.nn.global_conv": ("GlobalConv1d",),
    "symconv.nn.pooling": ("TopKPool",),
    "symconv.nn.group_conv": ("GroupConv1d", "GroupConv2d", "GroupConv3d"),
    "symconv.nn.group_pool": ("GroupPool",),
    "symconv.nn.group_norm": ("GroupBatchNorm1d", "GroupBatchNorm2d", "GroupBatchNorm3d"),
}

__all__ = sorted(name for names in LAYER_MODULES.values() for name in names)


__getattr__, __dir__ = lazy_exports(__name__, LAYER_MODULES)
