"""PyTorch layers: one module per family."""

from symconv.nn.global_conv import GlobalConv1d
from symconv.nn.orbit import OrbitPool, flip_permutation
from symconv.nn.pooling import TopKPool
from symconv.nn.symmetric import SymmetricConv1d, SymmetricConv2d, SymmetricConv3d
from symconv.nn.twist import ConvTwist

__all__ = [
    "ConvTwist",
    "GlobalConv1d",
    "OrbitPool",
    "SymmetricConv1d",
    "SymmetricConv2d",
    "SymmetricConv3d",
    "TopKPool",
    "flip_permutation",
]
