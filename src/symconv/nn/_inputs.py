"""The first check of every layer's input: that it is a tensor at all."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_tensor"]


def check_tensor(input: object, layer: str) -> Tensor:
    """``input`` itself when it is a ``torch.Tensor``; else a ``TypeError`` naming ``layer``
    (a list or a numpy array would otherwise fail as an ``AttributeError`` on ``.dim``)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor input, got {type(input).__name__}")
    return input
