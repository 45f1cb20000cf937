"""GlobalConv1d: a permutation-equivariant layer over sets.

Every position ``i`` of a length-``n`` sequence is mixed with the *sum* of all the other
positions through two matrices, a center ``C`` and a surround ``S``::

    y_i = x_i C + (sum_{j != i} x_j) S + b

The result does not depend on the order of the other positions, so permuting the input
positions permutes the outputs the same way: the layer is permutation-*equivariant*, not
invariant; follow it with a pooling over ``n`` (sum, mean, max,
:class:`~symconv.nn.pooling.TopKPool`) for an invariant model. It is the "Deep Sets"
equivariant layer with a separate center weight.

The total is computed once and ``x_i`` subtracted from it, ``O(n)`` (a convolution with a
``2n + 1`` kernel would be ``O(n^2)``). Arguments and parameter layouts come from
:class:`symconv.core.global_conv.GlobalConvSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from symconv.core.global_conv import GlobalConvSpec
from symconv.core.validate import type_error
from symconv.nn._cache import not_scriptable
from symconv.nn._inputs import check_tensor

__all__ = ["GlobalConv1d"]


def _check_input(in_channels: int, input: Tensor, mask: Tensor | None) -> Tensor:
    """``input`` as ``(N, in_channels, n)`` once it and ``mask`` fit the layer."""
    check_tensor(input, "GlobalConv1d")
    if input.dim() == 2:
        if in_channels != 1:
            raise ValueError(
                f"a 2-D input (N, n) is read as one channel, but in_channels="
                f"{in_channels}; pass (N, {in_channels}, n)"
            )
        input = input.unsqueeze(1)
    if input.dim() != 3 or input.shape[1] != in_channels:
        raise ValueError(
            f"GlobalConv1d expects input of shape (N, {in_channels}, n), got {tuple(input.shape)}"
        )
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"a {mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor of shape (N, n), got {got}")
        expected = (input.shape[0], input.shape[2])
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, expected (N, n) = {expected} for "
                f"input of shape {tuple(input.shape)}"
            )
    return input


def _n_others(x: Tensor) -> int:
    """Positions in the surround of each position of ``(N, C, n)``: ``n - 1``, at least 1."""
    return max(x.shape[2] - 1, 1)


# An FX graph calls these instead of tracing into their shape tests (which FX cannot).
torch.fx.wrap("_check_input")
torch.fx.wrap("_n_others")


class GlobalConv1d(nn.Module):
    r"""Permutation-equivariant set layer: each position against the sum of all others.

    .. math::
        y_i = \mathrm{act}\Big(x_i C + \frac{1}{d}\sum_{j \ne i} x_j S + b\Big)

    with ``d = 1`` for ``reduction='sum'`` and ``d = n - 1`` (the number of *other*
    positions) for ``reduction='mean'``.

    Args:
        in_channels: features per position.
        out_channels: output features per position.
        bias: add a learnable bias ``b``.
        reduction: ``'sum'`` or ``'mean'`` over the surround.
        activation: ``None`` or a callable (a function or an ``nn.Module``, which is
            registered as a sub-module) applied to the output.
        device, dtype: factory arguments for the parameters.

    Parameters:
        center: ``C``, ``(in_channels, out_channels)``.
        surround: ``S``, ``(in_channels, out_channels)``.
        bias: ``b``, ``(out_channels,)`` or ``None``.

    The ``(in, out)`` layout is the Keras one, so moving weights between this layer and
    :class:`symconv.keras.GlobalConv1D` is a copy (:mod:`symconv.keras.interop`).

    Shapes: input ``(N, in_channels, n)``, or ``(N, n)`` when ``in_channels == 1``;
    output ``(N, out_channels, n)``. ``mask`` (optional) is a bool tensor ``(N, n)``,
    ``True`` at *valid* positions (the Keras convention; the opposite of
    ``nn.MultiheadAttention``'s ``key_padding_mask``): invalid positions neither enter
    the sums nor receive output (their output is exactly 0, after the activation), and
    ``n`` in the mean becomes the number of valid positions.

    A position with no other (valid) position has an empty surround, which contributes
    0 under both reductions (for ``n = 1``, ``y_0 = act(x_0 C + b)``).

    Example::

        >>> layer = GlobalConv1d(3, 8, reduction="mean")
        >>> x = torch.randn(4, 3, 10)
        >>> perm = torch.randperm(10)
        >>> torch.allclose(layer(x[..., perm]), layer(x)[..., perm], atol=1e-6)
        True
    """

    __constants__ = ["in_channels", "out_channels", "reduction"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        reduction: str = "sum",
        activation: Callable[[Tensor], Tensor] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec = GlobalConvSpec.from_torch(in_channels, out_channels, bias, reduction)
        if activation is not None and not callable(activation):
            raise type_error(
                "activation", activation, "None or a callable (e.g. nn.ReLU() or torch.tanh)"
            )
        self.in_channels: int = spec.in_channels  # type: ignore[assignment]
        self.out_channels = spec.out_channels
        self.reduction = spec.reduction
        self.activation = activation
        factory = {"device": device, "dtype": dtype}
        for layout in spec.params():  # center, surround, bias (None without bias)
            shape = layout.torch_shape
            param = nn.Parameter(torch.empty(shape, **factory)) if layout.present else None
            self.register_parameter(layout.torch_name, param)
        self.reset_parameters()

    @classmethod
    def from_spec(
        cls,
        spec: GlobalConvSpec,
        *,
        activation: Callable[[Tensor], Tensor] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GlobalConv1d:
        """The layer ``spec`` describes (a Keras-made spec needs its ``in_channels``)."""
        if not isinstance(spec, GlobalConvSpec):
            raise type_error("spec", spec, "a GlobalConvSpec")
        return cls(
            **spec.torch_kwargs_from_keras(), activation=activation, device=device, dtype=dtype
        )

    def reset_parameters(self) -> None:
        """Uniform in ``+-1/sqrt(2 * in_channels)``: ``nn.Linear``'s init for the layer seen
        as a linear map of the concatenated features ``[x_i, surround_i]``."""
        bound = 1 / math.sqrt(2 * self.in_channels)
        init.uniform_(self.center, -bound, bound)
        init.uniform_(self.surround, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(N, in_channels, n)`` (or ``(N, n)``) and optional bool ``mask`` ``(N, n)`` ->
        ``(N, out_channels, n)``."""
        x = _check_input(self.in_channels, input, mask)
        keep = None if mask is None else mask.unsqueeze(1)  # (N, 1, n)
        if keep is not None:
            # `where`, not a product: padding may hold inf/NaN, which must not leak.
            x = torch.where(keep, x, x.new_zeros(()))
        # Surround of every position: the total minus the position itself, O(n).
        surround = x.sum(dim=2, keepdim=True) - x
        if self.reduction == "mean":
            if keep is None:
                others = _n_others(x)
            else:
                others = (keep.sum(dim=2, keepdim=True) - 1).clamp(min=1).to(x.dtype)  # (N, 1, 1)
            surround = surround / others
        # (N, n, in) @ (in, out) per term, positions as the batch; F.linear so that autocast
        # treats the bias like the matrices.
        out = F.linear(x.transpose(1, 2), self.center.t()) + F.linear(
            surround.transpose(1, 2), self.surround.t(), self.bias
        )
        out = out.transpose(1, 2)
        if self.activation is not None:
            out = self.activation(out)
        if keep is not None:
            out = torch.where(keep, out, out.new_zeros(()))
        return out

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, reduction={self.reduction!r}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation is not None and not isinstance(self.activation, nn.Module):
            s += f", activation={getattr(self.activation, '__name__', self.activation)!r}"
        return s
