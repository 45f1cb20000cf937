"""Keras 3 layers (built with ``keras.ops`` only: TensorFlow, PyTorch and JAX backends)
and weight interop with the PyTorch layers.

Importing this package imports keras and registers every layer for ``.keras`` loading
(package ``'symconv'``); ``import symconv`` alone never imports keras.

=============================  ==========================================
``SymmetricConv1D/2D/3D``      reflection-symmetric convolutions
``ConvTwist2D``                convolution with rotation/dilation terms
``GroupConv1D/2D/3D``          group convolutions (p4, p4m, reflection groups)
``GroupPool``                  pool group feature maps (to fields or a subgroup)
``GroupBatchNormalization``    batch norm with one statistic per field
``GlobalConv1D``               permutation-equivariant set layer
``TopKPool``                   top-k pooling over the length axis
``torch_to_keras``             copy weights torch -> Keras (or make the twin)
``keras_to_torch``             copy weights Keras -> torch (or make the twin)
=============================  ==========================================
"""

from symconv.keras.global_conv import GlobalConv1D
from symconv.keras.group_conv import GroupConv1D, GroupConv2D, GroupConv3D
from symconv.keras.group_norm import GroupBatchNormalization
from symconv.keras.group_pool import GroupPool
from symconv.keras.interop import keras_to_torch, torch_to_keras
from symconv.keras.pooling import TopKPool
from symconv.keras.symmetric import SymmetricConv1D, SymmetricConv2D, SymmetricConv3D
from symconv.keras.twist import ConvTwist2D

__all__ = [
    "ConvTwist2D",
    "GlobalConv1D",
    "GroupBatchNormalization",
    "GroupConv1D",
    "GroupConv2D",
    "GroupConv3D",
    "GroupPool",
    "SymmetricConv1D",
    "SymmetricConv2D",
    "SymmetricConv3D",
    "TopKPool",
    "keras_to_torch",
    "torch_to_keras",
]
