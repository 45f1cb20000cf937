"""What every layer does with its input first and last: check that it is a tensor at all,
and give the output the input's memory layout."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_tensor", "in_layout_of"]


def check_tensor(input: object, layer: str) -> Tensor:
    """``input`` itself when it is a ``torch.Tensor``; else a ``TypeError`` naming ``layer``
    (a list or a numpy array would otherwise fail as an ``AttributeError`` on ``.dim``)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor input, got {type(input).__name__}")
    return input


def in_layout_of(output: Tensor, input: Tensor) -> Tensor:
    """``output`` in ``input``'s channels_last layout when ``input`` has one (splitting the
    channel axis into fields yields a channels-first result), else ``output`` itself, as
    ``nn.BatchNorm2d`` and the convolutions keep the layout for the next layer."""
    for dims, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if input.dim() == dims == output.dim() and not input.is_contiguous():
            if input.is_contiguous(memory_format=fmt):
                return output.contiguous(memory_format=fmt)
    return output
