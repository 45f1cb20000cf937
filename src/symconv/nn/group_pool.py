"""Pooling the member axis of group feature maps away, or down to a subgroup."""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

from symconv.core.pooling import GroupPoolSpec
from symconv.core.validate import type_error
from symconv.nn._cache import not_scriptable
from symconv.nn._inputs import check_tensor, in_layout_of

__all__ = ["GroupPool", "check_fields_input"]


def check_fields_input(input: Tensor, order: int, name: str, dims: int | None = None) -> Tensor:
    """``input`` itself, once it is a tensor ``(N, C, ...)`` (``dims`` dims in all, if
    given) with ``C`` a multiple of ``order``."""
    check_tensor(input, name)
    if input.dim() < 2 or input.shape[1] % order or dims not in (None, input.dim()):
        spatial = {None: "...", 3: "L", 4: "H, W", 5: "D, H, W"}.get(dims, "...")
        raise ValueError(
            f"{name} expects input of shape (N, C, {spatial}) with C a multiple of "
            f"|G|={order} (fields of |G| channels), got {tuple(input.shape)}"
        )
    return input


# FX graphs call the checks instead of tracing into their shape tests.
torch.fx.wrap("check_fields_input")
torch.fx.wrap("in_layout_of")  # a wrap holds only in the module that calls it


class GroupPool(nn.Module):
    """Max or mean over the members of every field, or over the cosets of a subgroup.

    Args:
        group: the key of the input's group (``'hr'``, ``'r'``, ``'hv'``, ...).
        mode: ``'max'`` or ``'mean'``.
        to: ``None`` pools every field to one channel (invariant fields: they transform
            like images); a subgroup key (``'r'`` for ``'hr'``) keeps that subgroup's
            members: member ``h_i`` of the output pools ``h_i c`` over coset
            representatives ``c`` (:meth:`symconv.core.groups.Group.cosets`), so the
            output is a group feature map of the subgroup. Stored as ``subgroup``
            (``to`` would hide ``nn.Module.to``).

    Shapes: input ``(N, F * |G|, *spatial)``, output ``(N, F * |H|, *spatial)`` (``|H| = 1``
    when ``to`` is ``None``).
    """

    def __init__(self, group: str, mode: str = "max", to: str | None = None) -> None:
        super().__init__()
        self.spec = spec = GroupPoolSpec.from_args(group, mode, to)
        # `to` is stored as `subgroup`: an attribute named `to` would hide `nn.Module.to`.
        self.group, self.mode, self.subgroup = spec.group.key, spec.mode, spec.to
        self.order = spec.group.order
        # A plain tensor, not a buffer: derived from the spec, so `to_empty` (deferred
        # initialization) must not replace it by uninitialized memory; `_apply` moves it.
        self._cosets = torch.from_numpy(spec.cosets.reshape(-1).copy())
        self._shape = tuple(int(n) for n in spec.cosets.shape)

    @classmethod
    def from_spec(
        cls,
        spec: GroupPoolSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GroupPool:
        """The layer ``spec`` describes. ``dtype`` is there for the signature every
        family's ``from_spec`` shares: the layer has no parameters."""
        if not isinstance(spec, GroupPoolSpec):
            raise type_error("spec", spec, "a GroupPoolSpec")
        layer = cls(**spec.torch_kwargs())
        return layer if device is None else layer.to(device)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        module = super()._apply(fn, recurse)
        # The index goes where `fn` sends tensors (`.to(device)`, `.cuda()`, `to_empty`),
        # rebuilt from the spec rather than passed through `fn` (`to_empty` would not copy).
        device = fn(torch.empty(0, device=self._cosets.device)).device
        self._cosets = torch.from_numpy(self.spec.cosets.reshape(-1).copy()).to(device)
        return module

    @property
    def out_order(self) -> int:
        """Channels per output field: ``|H|``, or 1 when ``to`` is ``None``."""
        return self._shape[0]

    def forward(self, input: Tensor) -> Tensor:
        input = check_fields_input(input, self.order, "GroupPool")
        fields = input.unflatten(1, (-1, self.order))
        if self.subgroup is not None:
            fields = fields.index_select(2, self._cosets)
        fields = fields.unflatten(2, self._shape)  # (N, F, |H|, cosets, *spatial)
        pooled = fields.amax(3) if self.mode == "max" else fields.mean(3)
        return in_layout_of(pooled.flatten(1, 2), input)

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def extra_repr(self) -> str:
        return f"group={self.group!r}, mode={self.mode!r}, to={self.subgroup!r}"
