"""TopKPool: the ``k`` largest values per channel over the length axis.

A generalization of global max pooling (``k = 1``) that keeps the ``k`` strongest
responses of each channel, sorted, so the output does not depend on *where* they occurred:
after a permutation-equivariant layer (:class:`~symconv.nn.global_conv.GlobalConv1d`) it
gives a permutation-invariant fixed-size summary of a set. Its rules (``k``, the length
check) live in :mod:`symconv.core.pooling`, shared with the Keras twin.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

from symconv.core.pooling import TopKPoolSpec, check_length
from symconv.core.validate import type_error
from symconv.nn._cache import not_scriptable
from symconv.nn._inputs import check_tensor

__all__ = ["TopKPool"]


def _check_topk_input(input: Tensor, mask: Tensor | None, k: int) -> Tensor:
    """``input`` itself, once it and ``mask`` fit a ``TopKPool(k)``."""
    check_tensor(input, "TopKPool")
    if input.dim() < 1:
        raise ValueError("TopKPool expects input of shape (N, C, L), got a scalar")
    check_length(k, input.shape[-1])
    if mask is None:
        return input
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"a {mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor of shape (N, L), got {got}")
    if input.dim() != 3 or tuple(mask.shape) != (input.shape[0], input.shape[2]):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, expected (N, L) = "
            f"{(input.shape[0], input.shape[-1])} for input of shape {tuple(input.shape)}"
        )
    return input


# An FX graph calls the check instead of tracing into its shape tests (which FX cannot).
torch.fx.wrap("_check_topk_input")


class TopKPool(nn.Module):
    """The ``k`` largest values of every channel along the last axis, sorted descending.

    Args:
        k: how many values to keep per channel (``k = 1`` is global max pooling).

    Shapes: input ``(N, C, L)`` (any leading dimensions are kept), output ``(N, C, k)``
    with ``out[..., 0] >= out[..., 1] >= ...``; ``L >= k`` is required (a ``ValueError``
    naming both otherwise). Gradients flow to the selected entries only, one per output
    (with ties, to the entry :func:`torch.topk` picked).

    ``mask`` (optional, 3-D input only): a bool tensor ``(N, L)``, ``True`` at valid
    positions (as :class:`~symconv.nn.global_conv.GlobalConv1d`'s). Masked positions are
    never selected; a set with fewer than ``k`` valid positions gets 0 in the remaining
    (last) slots.

    Example::

        >>> TopKPool(2)(torch.tensor([[[3.0, 1.0, 4.0, 1.0, 5.0]]]))
        tensor([[[5., 4.]]])
    """

    __constants__ = ["k"]

    def __init__(self, k: int) -> None:
        super().__init__()
        self.spec = TopKPoolSpec.from_torch(k)
        self.k = self.spec.k

    @classmethod
    def from_spec(
        cls,
        spec: TopKPoolSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TopKPool:
        """The layer ``spec`` describes. ``device`` and ``dtype`` are there for the signature
        every family's ``from_spec`` shares: the layer has no parameters to place."""
        if not isinstance(spec, TopKPoolSpec):
            raise type_error("spec", spec, "a TopKPoolSpec")
        return cls(**spec.torch_kwargs())

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(N, C, L)`` and an optional bool ``mask`` ``(N, L)`` -> ``(N, C, k)``."""
        input = _check_topk_input(input, mask, self.k)
        if mask is None:
            return torch.topk(input, self.k, dim=-1, largest=True, sorted=True).values
        keep = mask.unsqueeze(1)
        values = torch.topk(
            input.masked_fill(~keep, float("-inf")), self.k, dim=-1, largest=True, sorted=True
        ).values
        # Slots beyond a set's number of valid positions hold 0, not -inf.
        slots = torch.arange(self.k, device=input.device)
        filled = slots < mask.sum(dim=-1, keepdim=True).unsqueeze(1)
        return torch.where(filled, values, values.new_zeros(()))

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def extra_repr(self) -> str:
        return f"k={self.k}"
