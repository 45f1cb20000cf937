"""Keras 3 layers (built with ``keras.ops`` only: TensorFlow, PyTorch and JAX backends)
and weight interop with the PyTorch layers.

Importing this package imports keras and registers every layer for ``.keras`` loading
(package ``'symconv'``); ``import symconv`` alone never imports keras.

=============================  ==========================================
``SymmetricConv1D/2D/3D``      reflection-symmetric convolutions
``ConvTwist2D``                convolution with rotation/dilation terms
``GlobalConv1D``               permutation-equivariant set layer
``TopKPool``                   top-k pooling over the length axis
``torch_to_keras``             copy weights torch -> Keras (or make the twin)
``keras_to_torch``             copy weights Keras -> torch (or make the twin)
=============================  ==========================================
"""

from symconv.keras.global_conv import GlobalConv1D
from symconv.keras.interop import keras_to_torch, torch_to_keras
from symconv.keras.pooling import TopKPool
from symconv.keras.symmetric import SymmetricConv1D, SymmetricConv2D, SymmetricConv3D
from symconv.keras.twist import ConvTwist2D

__all__ = [
    "ConvTwist2D",
    "GlobalConv1D",
    "SymmetricConv1D",
    "SymmetricConv2D",
    "SymmetricConv3D",
    "TopKPool",
    "keras_to_torch",
    "torch_to_keras",
]
