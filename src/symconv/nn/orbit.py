"""Invariance tools for symmetric layers: orbit pooling and member permutations.

A symmetric layer is flip-*equivariant*: flipping its input flips its output and
permutes the channels inside each orbit. Pooling over the members of every orbit
(:class:`OrbitPool`) removes the permutation, leaving channels that transform like
ordinary images under the flips of their orbit's group; a global spatial pooling after
that makes them flip-*invariant*. :class:`OrbitConv2d` is a symmetric convolution and its
orbit pooling in one layer: a drop-in for ``nn.Conv2d`` whose output flips with its input.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

from symconv.core.pooling import OrbitPoolSpec, plan_of
from symconv.core.validate import check_choice, check_int
from symconv.nn._cache import not_scriptable
from symconv.nn._inputs import check_tensor, in_layout_of
from symconv.nn.symmetric import SymmetricConv2d
from symconv.symmetry import SymmetryPlan

__all__ = ["OrbitConv2d", "OrbitPool", "flip_permutation", "member_permutation"]

#: The flip groups :class:`OrbitConv2d` can commute with: ``'h'`` (left-right), ``'v'``
#: (top-bottom) or both.
ORBIT_KEYS = ("h", "v", "hv")


def _check_orbit_input(input: Tensor, channels: int) -> Tensor:
    """``input`` itself, once it is a tensor of shape ``(N, channels, ...)``."""
    check_tensor(input, "OrbitPool")
    if input.dim() < 2 or input.shape[1] != channels:
        raise ValueError(
            f"OrbitPool expects input of shape (N, {channels}, ...), got {tuple(input.shape)}"
        )
    return input


# An FX graph calls the check instead of tracing into its shape tests (which FX cannot).
torch.fx.wrap("_check_orbit_input")
torch.fx.wrap("in_layout_of")  # a wrap holds only in the module that calls it


def flip_permutation(layer_or_plan: SymmetryPlan | nn.Module, axes: str) -> tuple[Tensor, Tensor]:
    """Channel permutation a reflection of the input induces on a symmetric layer's output.

    Returns ``(perm, equivariant)``: a long tensor and a bool tensor of shape
    ``(out_channels,)`` such that, for the channels where ``equivariant`` is true,
    ``layer(x.flip(dims))[:, c] == layer(x).flip(dims)[:, perm[c]]`` where ``dims`` are the
    tensor dimensions of ``axes`` (``'h'`` = width = last, ``'v'`` = height, ``'z'`` =
    depth). See :meth:`symconv.symmetry.SymmetryPlan.flip_permutation`.
    """
    plan = plan_of(layer_or_plan, "layer_or_plan")
    perm, equivariant = plan.flip_permutation(axes)
    return torch.from_numpy(perm), torch.from_numpy(equivariant)


def member_permutation(layer_or_plan: SymmetryPlan | nn.Module, g: object) -> tuple[Tensor, Tensor]:
    """Channel permutation any group member ``g`` acting on the input induces on a
    symmetric layer's output: turns too, where :func:`flip_permutation` takes only flips.

    ``g``: a member's name (``'r'``, ``'r2'``, ``'rh'``, ``'e'``, ...; see
    :meth:`symconv.symmetry.SymmetryPlan.member_permutation`) or ``(group key, index)``.
    Returns ``(perm, equivariant)``, a long and a bool tensor of shape ``(out_channels,)``:
    ``layer(g x)[:, c] == g(layer(x))[:, perm[c]]`` (``g`` acting spatially on the right)
    for the channels where ``equivariant`` is true.
    """
    plan = plan_of(layer_or_plan, "layer_or_plan")
    perm, equivariant = plan.member_permutation(g)
    return torch.from_numpy(perm), torch.from_numpy(equivariant)


class OrbitPool(nn.Module):
    """Max or mean over the members of each orbit of a symmetric layer's output.

    Args:
        layer_or_plan: the symmetric layer whose output this pools, or its plan.
        mode: ``'max'`` or ``'mean'``.

    Shapes: input ``(N, out_channels, *spatial)``, output ``(N, plan.n_free, *spatial)``
    with channel ``f`` pooling orbit ``f`` (free filter ``f``); plain channels are orbits
    of one and pass through unchanged, last.
    """

    def __init__(self, layer_or_plan: SymmetryPlan | nn.Module, mode: str = "max") -> None:
        super().__init__()
        self.spec = OrbitPoolSpec.from_torch(layer_or_plan, mode)
        self.plan, self.mode = self.spec.plan, self.spec.mode

    @classmethod
    def from_spec(
        cls, spec: OrbitPoolSpec, *, device: object = None, dtype: object = None
    ) -> OrbitPool:
        """The pooling an :class:`~symconv.core.pooling.OrbitPoolSpec` describes (``device``
        and ``dtype`` are accepted for a uniform signature: it has no parameters)."""
        if not isinstance(spec, OrbitPoolSpec):
            raise TypeError(f"OrbitPool.from_spec needs an OrbitPoolSpec, got {spec!r}")
        return cls(**spec.torch_kwargs())

    @property
    def out_channels(self) -> int:
        return self.plan.n_free

    def forward(self, input: Tensor) -> Tensor:
        input = _check_orbit_input(input, self.plan.out_channels)
        pieces = []
        for block in self.plan.blocks:
            members = input[:, block.start : block.stop].unflatten(
                1, (block.n_orbits, block.orbit_size)
            )
            pieces.append(members.amax(2) if self.mode == "max" else members.mean(2))
        if self.plan.n_plain:
            pieces.append(input[:, self.plan.n_symmetric :])
        return in_layout_of(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1), input)

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.plan.out_channels}, out_channels={self.out_channels}, "
            f"mode={self.mode!r}"
        )


class OrbitConv2d(nn.Module):
    """A symmetric convolution whose output channels transform as ordinary images.

    ``SymmetricConv2d(in_channels, s * out_channels, kernel_size, symmetry={key: '100%'})``
    then ``OrbitPool(mode='max')`` back to ``out_channels``, with ``s`` the orbit size of
    ``key`` (2 for ``'h'`` and ``'v'``, 4 for ``'hv'``). For every flip ``g`` in the group
    of ``key``: ``layer(g(x)) == g(layer(x))`` exactly, channel by channel, so the next
    layer sees ordinary images again (a plain :class:`SymmetricConv2d` permutes its
    channels under ``g`` instead). Same parameter count as the ``nn.Conv2d`` it replaces,
    ``s`` times its cost.

    Args:
        in_channels, out_channels: ints >= 1.
        kernel_size: an odd int (the 'same' padding of an even kernel is lopsided and does
            not commute with flips).
        key: ``'h'``, ``'v'`` or ``'hv'``: the flips the layer commutes with.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H, W)`` ('same' zero padding,
    stride 1, no bias).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a count below 1, an even ``kernel_size`` or an unknown ``key``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, key: str = "hv"
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("kernel_size", kernel_size, 1)
        check_choice("key", key, ORBIT_KEYS)
        if kernel_size % 2 != 1:
            raise ValueError(
                f"kernel_size={kernel_size} must be odd: an even kernel's 'same' padding is "
                "lopsided and does not commute with flips"
            )
        self.key = key
        orbit = 2 ** len(key)
        self.conv = SymmetricConv2d(
            in_channels,
            orbit * out_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=False,
            symmetry={key: orbit * out_channels},
        )
        self.pool = OrbitPool(self.conv, mode="max")

    def forward(self, input: Tensor) -> Tensor:
        return self.pool(self.conv(input))
