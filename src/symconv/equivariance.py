"""Checking exactness: how group members act on tensors, and how far a model is from
commuting with them.

Two layouts of a torch tensor ``(N, C, *spatial)``:

- ``'image'``: a member acts on the spatial axes only (turns and reflections of the
  grid, :mod:`symconv.core.groups`);
- ``'group'``: the channels are fields of ``|G|`` channels (field-major, member-minor, as
  :class:`~symconv.nn.group_conv.GroupConv2d` and lifting
  :class:`~symconv.nn.symmetric.SymmetricConv2d` layers produce); a member ``u`` also
  permutes each field's members: ``(u F)[f, h] = u(F[f, u^-1 h])``.

Example: a p4m network from images to invariant logits ``(N, classes)``::

    errors = equivariance_error(model, x, "hr")                    # {'e': 0.0, 'r': ..., ...}
    errors = equivariance_error(block, x, "hr", input="group", output="group")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from symconv.core.groups import Group
from symconv.core.groups import group as make_group
from symconv.core.validate import check_choice, type_error

__all__ = ["act", "equivariance_error"]

_LAYOUTS = ("image", "group")


def _group_for(key: object, x: Tensor, name: str = "x", key_name: str = "group") -> Group:
    if not isinstance(x, Tensor):
        raise type_error(name, x, "a torch.Tensor")
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; it must be (N, C, *spatial) with "
                         "1 to 3 spatial axes")  # fmt: skip
    if isinstance(key, Group):
        return key
    try:
        return make_group(key, x.dim() - 2)
    except ValueError as error:
        try:
            fits = make_group(key)  # the key is valid, only not for this many axes
        except (TypeError, ValueError):
            raise ValueError(str(error).replace("group=", f"{key_name}=", 1)) from None
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: {key_name}={key!r} acts on {fits.ndim} "
            f"spatial axes, so {name} must have {fits.ndim + 2} dims (N, C, *spatial)"
        ) from None


def _members(grp: Group, members: Iterable[int | str] | None) -> list[int]:
    """Indices of the ``members`` to check (names or indices of ``grp``), default all."""
    if members is None:
        return list(range(grp.order))
    if isinstance(members, str) or not isinstance(members, Iterable):
        raise type_error("members", members, "a list of member names or indices, or None")
    chosen = []
    for m in members:
        try:
            chosen.append(grp.index(m))
        except (TypeError, ValueError):
            raise ValueError(
                f"members={members!r} is not allowed; it must name members of group "
                f"{grp.key!r}: {', '.join(grp.names)} (or their indices 0-{grp.order - 1})"
            ) from None
    return chosen


def act(x: Tensor, key: str | Group, member: int | str, layout: str = "image") -> Tensor:
    """Member ``member`` (index or name such as ``'rh'``) of group ``key`` acting on ``x``
    ``(N, C, *spatial)``, in layout ``'image'`` or ``'group'`` (see the module). Returns a
    tensor of the same shape, except that quarter turns swap the height and width."""
    grp = _group_for(key, x)
    layout = check_choice("layout", layout, _LAYOUTS)
    g = grp.index(member)
    out = x.permute(0, 1, *(2 + int(a) for a in grp.axis_perm[g]))
    dims = [2 + int(a) for a in grp.flips[g].nonzero()[0]]
    out = out.flip(dims) if dims else out
    if layout == "group":
        if x.shape[1] % grp.order:
            raise ValueError(
                f"x has {x.shape[1]} channels, not fields of |G|={grp.order} (group {grp.key!r})"
            )
        source = torch.as_tensor(grp.table[grp.inverse[g]].copy(), device=x.device)
        out = out.unflatten(1, (-1, grp.order)).index_select(2, source).flatten(1, 2)
    return out


def equivariance_error(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    group: str,
    *,
    input: str = "image",
    output: str = "invariant",
    output_group: str | None = None,
    members: Iterable[int | str] | None = None,
) -> dict[str, float]:
    """For each member ``u`` of ``group``: ``max |model(u x) - u model(x)|``.

    Args:
        model: any callable on a batch (its mode is left as it is: in training mode,
            batch norm statistics and running averages see both calls).
        x: an input ``(N, C, *spatial)``.
        group: the group key (``'hr'``, ``'r'``, ``'hv'``, ...).
        input: ``'image'`` (a plain image: a lifting model) or ``'group'`` (group fields).
        output: ``'invariant'`` (the output must not change, any shape: logits
            ``(N, classes)``), ``'image'`` (``(N, C, *spatial)``, transformed spatially) or
            ``'group'`` (fields of ``output_group``).
        output_group: the group of the output's fields when it differs from ``group`` (after
            ``GroupPool(..., to=...)``); only the members it shares with ``group`` are checked.
        members: indices or names to check (default: every member that applies).

    Returns ``{member name: largest absolute deviation}`` in the group's member order (the
    identity included: non-zero there means the model is not deterministic).
    """
    if not callable(model):
        raise type_error("model", model, "a callable (an nn.Module or a function of a batch)")
    grp = _group_for(group, x)
    check_choice("input", input, _LAYOUTS)
    check_choice("output", output, ("invariant", *_LAYOUTS))
    if output_group is not None and output != "group":
        raise ValueError(f"output_group={output_group!r} is only used with output='group'")
    out_grp = grp if output_group is None else _group_for(output_group, x, "x", "output_group")
    chosen = _members(grp, members)
    errors: dict[str, float] = {}
    with torch.no_grad():
        y = model(x)
        if not isinstance(y, Tensor):
            raise TypeError(f"model(x) must return a torch.Tensor, got {type(y).__name__}")
        if output != "invariant" and y.dim() != x.dim():
            raise ValueError(f"output={output!r} needs a model output with {x.dim()} dims like "
                             f"x, got shape {tuple(y.shape)}")  # fmt: skip
        if output == "group" and y.shape[1] % out_grp.order:
            raise ValueError(
                f"model(x) has {y.shape[1]} channels, not fields of |G|={out_grp.order} "
                + (
                    f"(group {out_grp.key!r}): pass output_group= for a pooled output"
                    if output_group is None
                    else f"(output_group={output_group!r}): is it the group of the output?"
                )
            )
        for g in chosen:
            target = out_grp.find(grp.matrices[g])
            if output == "group" and target is None:
                continue
            y_g = model(act(x, grp, g, input))
            if output == "invariant":
                expected = y
            elif output == "image":
                expected = act(y, grp, g, "image")
            else:
                expected = act(y, out_grp, target, "group")
            if y_g.shape != expected.shape:
                raise ValueError(
                    f"member {grp.names[g]!r}: model(u x) has shape {tuple(y_g.shape)}, the "
                    f"transformed output {tuple(expected.shape)}"
                )
            errors[grp.names[g]] = float((y_g - expected).abs().max()) if y.numel() else 0.0
    return errors
