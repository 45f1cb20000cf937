"""``convert(model, 'group', group=key, width=...)``: a 2-D CNN made group-equivariant,
with invariant logits.

In module registration order (the order layers are built in, which the conversion takes
for the order data flows in):

- the first convolution *lifts*: a :class:`~symconv.nn.symmetric.SymmetricConv2d` with
  every channel in an orbit of the group (``symmetry={key: out_channels}``), whose output
  is group fields in the layout :class:`~symconv.nn.group_conv.GroupConv2d` takes
  (field-major, member-minor);
- every later ``nn.Conv2d`` becomes a ``GroupConv2d`` (1x1 ones too: they mix members);
- every ``nn.BatchNorm2d`` after the lift becomes a
  :class:`~symconv.nn.group_norm.GroupBatchNorm2d` (one statistic per field);
- the first ``nn.Linear`` after the last convolution (the head, after global pooling)
  becomes ``nn.Sequential(GroupPool(key), nn.Linear(fields, ...))``: each field's members
  are max-pooled away, so the logits are invariant.

Channels: a layer with ``c`` channels gets ``new(c) = |G| * max(1, round(c * f / |G|))``,
``f = 1`` for ``width='channels'`` (about ``1/|G|`` of the parameters, a plain network's
cost) and ``f = sqrt(|G|)`` for ``width='params'`` (about the parameter count, ``|G|``
times the cost). Every count maps alike, so both branches of a residual add stay equal.
Layers whose shapes stay take the projection of their weights (``copy_weights``); widened
layers start afresh (batch norms with the mean of the old affine, so a zero-initialized
residual branch stays zero).

What cannot be converted (non-square kernels for rotation groups, channel groups that
split fields, ``nn.Linear`` or other layers with parameters between convolutions, a head
that does not take pooled channels) stays as it is and is listed in ``report.skipped`` and
``report.breaks``; when the width would change such a layer's channels, ``convert`` raises
``ValueError`` before changing anything. ``report.check_invariance(model, input_size)``
measures the result (strides decide exactness: :mod:`symconv.conversion_report`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from symconv.conversion_common import candidate, count_parameters, summary, swap_modules
from symconv.conversion_report import ConversionReport
from symconv.core.group_conv import conversion_reason
from symconv.core.groups import Group
from symconv.core.groups import group as make_group
from symconv.nn.conv_utils import copy_mode

__all__ = ["convert_group", "group_width"]


def group_width(channels: int, order: int, width: str) -> int:
    """``new(channels)`` of the module docstring: whole fields of ``order`` channels."""
    factor = 1.0 if width == "channels" else math.sqrt(order)
    return order * max(1, math.floor(channels * factor / order + 0.5))


@dataclass
class _Plan:
    """What to do with each layer: ``kind`` is lift, conv, bn or head."""

    grp: Group
    width: str
    copy_weights: bool
    todo: list[tuple[str, nn.Module, str]]

    def new(self, channels: int) -> int:
        return group_width(channels, self.grp.order, self.width)


def convert_group(
    model: nn.Module,
    key: str,
    width: str,
    *,
    predicate: object,
    copy_weights: bool,
    allow_subclasses: bool,
) -> ConversionReport:
    """``convert(model, 'group', ...)`` (arguments checked by :func:`symconv.convert`)."""
    grp = make_group(key, 2)
    report = ConversionReport(
        to="group", group=grp.key, width=width, params_before=count_parameters(model)
    )
    plan = _Plan(grp, width, copy_weights, [])
    layers = list(model.named_modules())
    start = _lift_index(layers, plan, predicate, allow_subclasses)
    stop = _head_index(layers, start)
    problems = _plan_layers(layers, start, stop, plan, report, predicate, allow_subclasses)
    if problems:
        raise ValueError(
            f"convert(to='group', width={width!r}) cannot change the channels consistently: "
            + "; ".join(problems)
            + " (width='channels' with channel counts that are multiples of "
            f"|G|={grp.order} keeps them, or convert those layers first)"
        )
    replacements, fresh = {}, []
    for name, module, kind in plan.todo:
        new, reshaped = _BUILD[kind](module, plan)
        replacements[id(module)] = new
        report.converted.append((name, summary(module), summary(new)))
        fresh += [name or "<root>"] if reshaped and copy_weights else []
    if fresh:
        report.notes.append(("", f"{len(fresh)} layers changed shape (width={width!r}) and start "
                                 f"afresh: {', '.join(fresh)}"))  # fmt: skip
    swap_modules(model, replacements)
    report.params_after = count_parameters(model)
    return report


def _is_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        or hasattr(module, "kernel_size")
        and any(p is not None for p in module._parameters.values())
    )


def _conv_reason(
    name: str, module: nn.Module, predicate: object, allow_subclasses: bool
) -> str | None:
    """Why ``module`` may not be replaced at all (``None``: it may)."""
    base, why = candidate(
        module, (nn.Conv2d,), "group conversion is 2-D only", predicate is not None,
        allow_subclasses,
    )  # fmt: skip
    if base is None:
        return why
    if predicate is not None and not predicate(name, module):  # type: ignore[operator]
        return "not selected by predicate"
    return None


def _lift_index(
    layers: list[tuple[str, nn.Module]], plan: _Plan, predicate: object, allow: bool
) -> int:
    """Index of the first convolution, once it can lift."""
    for i, (name, module) in enumerate(layers):
        if not _is_conv(module):
            continue
        why = "the model itself is a convolution" if name == "" else None
        why = why or _conv_reason(name, module, predicate, allow) or _lift_reason(module, plan)
        if why is not None:
            raise ValueError(f"the first convolution {name!r} cannot lift to a group: {why}")
        return i
    raise ValueError("convert(to='group') found no convolution to lift")


def _lift_reason(conv: nn.Module, plan: _Plan) -> str | None:
    """Why ``conv`` cannot become the lifting ``SymmetricConv2d`` (``None``: it can)."""
    from symconv.core.symmetric_conv import SymmetricConvSpec
    from symconv.nn.conv_utils import geometry_of

    kwargs = geometry_of(conv).torch_kwargs()
    kwargs["out_channels"] = out = plan.new(conv.out_channels)
    try:
        plan.grp.check_kernel(tuple(conv.kernel_size))
        SymmetricConvSpec.from_torch(2, **kwargs, symmetry={plan.grp.key: out}, share_bias=True)
    except ValueError as error:
        return str(error)
    return None


def _head_index(layers: list[tuple[str, nn.Module]], start: int) -> int | None:
    """Index of the first ``nn.Linear`` after the last convolution (``None``: no head)."""
    last = max(i for i, (_, m) in enumerate(layers) if _is_conv(m))
    return next(
        (i for i in range(last + 1, len(layers)) if isinstance(layers[i][1], nn.Linear)), None
    )


def _plan_layers(
    layers: list[tuple[str, nn.Module]],
    start: int,
    stop: int | None,
    plan: _Plan,
    report: ConversionReport,
    predicate: object,
    allow: bool,
) -> list[str]:
    """Fill ``plan.todo`` and the report's skipped/breaks; return the layers whose channels
    would have to change but cannot."""
    problems: list[str] = []
    name, lift = layers[start]
    plan.todo.append((name, lift, "lift"))
    end = len(layers) if stop is None else stop
    for name, module in layers[start + 1 : end]:
        why, counts = _group_reason(name, module, plan, predicate, allow)
        if why == "":
            continue
        if why is not None:
            report.skipped.append((name, why))
            report.breaks.append((name, f"left as it is: {why}"))
            if any(plan.new(c) != c for c in counts):
                problems.append(f"{name} ({why})")
            continue
        kind = "bn" if isinstance(module, nn.BatchNorm2d) else "conv"
        plan.todo.append((name, module, kind))
    if stop is None:
        why = "no nn.Linear after the last convolution: the output stays group fields"
        report.breaks.append(("", f"{why} (end the model with GroupPool yourself)"))
        return problems
    name, head = layers[stop]
    channels = [m.out_channels for _, m in layers[:stop] if _is_conv(m)][-1]
    if head.in_features != channels:
        why = (
            f"head takes {head.in_features} features, not the {channels} pooled channels of "
            "the last convolution (a flattened map cannot be pooled over the group)"
        )
        report.skipped.append((name, why))
        report.breaks.append((name, why))
        if plan.new(channels) != channels:
            problems.append(f"{name} ({why})")
    else:
        plan.todo.append((name, head, "head"))
    return problems


def _group_reason(
    name: str, module: nn.Module, plan: _Plan, predicate: object, allow: bool
) -> tuple[str | None, tuple[int, ...]]:
    """``(None, counts)`` when ``module`` converts, ``('', ())`` when it needs nothing
    (no parameters of its own), else ``(why not, its channel counts)``."""
    from symconv.nn.group_norm import GroupBatchNorm2d

    if _is_conv(module):
        counts = (getattr(module, "in_channels", 0), getattr(module, "out_channels", 0))
        why = _conv_reason(name, module, predicate, allow) or conversion_reason(
            2, plan.new(counts[0]), plan.new(counts[1]), tuple(module.kernel_size),
            module.groups, plan.grp.key, stride=tuple(module.stride),
            padding=module.padding, dilation=tuple(module.dilation),
        )  # fmt: skip
        return why, counts
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GroupBatchNorm2d):
        return None, (module.num_features,)
    if isinstance(module, nn.Linear):
        return ("nn.Linear between convolutions (e.g. squeeze-and-excitation): no group "
                "counterpart", (module.in_features, module.out_features))  # fmt: skip
    own = [n for n, p in module._parameters.items() if p is not None]
    if any(module._parameters[n].numel() > 1 for n in own):  # type: ignore[union-attr]
        why = f"{type(module).__name__} has parameters of its own ({', '.join(own)})"
        counts = tuple(p.shape[0] for p in module.parameters(False) if p.dim())
        return f"{why} and no group counterpart", counts
    return "", ()


def _build_lift(conv: nn.Module, plan: _Plan) -> tuple[nn.Module, bool]:
    from symconv.nn.symmetric import SymmetricConv2d

    out = plan.new(conv.out_channels)
    symmetry = {plan.grp.key: out}
    if plan.copy_weights and out == conv.out_channels:
        return SymmetricConv2d.from_conv(conv, symmetry), False
    layer = SymmetricConv2d(
        conv.in_channels, out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode, symmetry=symmetry,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )  # fmt: skip
    copy_mode(conv, layer)
    return layer, out != conv.out_channels


def _build_conv(conv: nn.Module, plan: _Plan) -> tuple[nn.Module, bool]:
    from symconv.nn.group_conv import GroupConv2d

    cin, cout = plan.new(conv.in_channels), plan.new(conv.out_channels)
    layer = GroupConv2d(
        cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        conv.bias is not None, conv.padding_mode, conv.weight.device, conv.weight.dtype,
        group=plan.grp.key,
    )  # fmt: skip
    copy_mode(conv, layer)
    if (cin, cout) != (conv.in_channels, conv.out_channels):
        return layer, True
    if plan.copy_weights:  # the projection: each free entry the mean of its |G| copies
        with torch.no_grad():
            full = conv.weight.detach().cpu().numpy()
            layer.weight.copy_(torch.from_numpy(layer.spec.project(full)))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.reshape(-1, plan.grp.order).mean(1))
        layer.clear_cache()
    return layer, False


def _build_bn(bn: nn.BatchNorm2d, plan: _Plan) -> tuple[nn.Module, bool]:
    from symconv.nn.group_norm import GroupBatchNorm2d

    c, order = plan.new(bn.num_features), plan.grp.order
    factory = {"device": bn.running_mean.device if bn.running_mean is not None else None}
    if bn.weight is not None:
        factory = {"device": bn.weight.device, "dtype": bn.weight.dtype}
    layer = GroupBatchNorm2d(
        c, plan.grp.key, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **factory
    )
    copy_mode(bn, layer)
    same = c == bn.num_features and plan.copy_weights
    with torch.no_grad():
        if bn.affine:  # widened: the old affine's mean keeps a zero-initialized branch zero
            layer.weight.copy_(bn.weight.reshape(-1, order).mean(1) if same else bn.weight.mean())
            layer.bias.copy_(bn.bias.reshape(-1, order).mean(1) if same else bn.bias.mean())
        if same and bn.track_running_stats and layer.running_mean is not None:
            mean, var = bn.running_mean.reshape(-1, order), bn.running_var.reshape(-1, order)
            layer.running_mean.copy_(mean.mean(1))
            # a field's variance: its members' mean variance plus the variance of their means
            layer.running_var.copy_(var.mean(1) + mean.var(1, unbiased=False))
            layer.num_batches_tracked.copy_(bn.num_batches_tracked)
    return layer, c != bn.num_features


def _build_head(linear: nn.Linear, plan: _Plan) -> tuple[nn.Module, bool]:
    from symconv.nn.group_pool import GroupPool

    order = plan.grp.order
    fields = plan.new(linear.in_features) // order
    w = linear.weight
    layer = nn.Linear(fields, linear.out_features, linear.bias is not None, w.device, w.dtype)
    copy_mode(linear, layer)
    reshaped = fields * order != linear.in_features
    if not reshaped and plan.copy_weights:
        with torch.no_grad():  # a field's members pooled to one value carry their summed weight
            layer.weight.copy_(w.reshape(w.shape[0], fields, order).sum(-1))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
    return nn.Sequential(GroupPool(plan.grp.key), layer), reshaped


_BUILD = {"lift": _build_lift, "conv": _build_conv, "bn": _build_bn, "head": _build_head}
