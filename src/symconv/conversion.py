"""One-call model surgery: swap the convolutions of an existing model, in place::

    report = convert(model, "twist")                     # 3x3 convs -> ConvTwist
    report = convert(model, "symmetric", symmetry={"hv": "50%"})
    report = convert(model, "group", group="hr")         # a p4m network, invariant logits
    print(report)

``to="twist"`` replaces every ``nn.Conv2d`` with an odd square kernel of size 3 or more,
padding ``k // 2`` (or ``'same'``) and dilation 1 by a :class:`~symconv.nn.twist.ConvTwist`
with the same channels, stride, groups, bias, padding mode, device and dtype. With
``copy_weights=True`` (default) ``W`` and the bias are copied and the twist taps start at
zero, so the model computes the same function until it trains.

``to="symmetric"`` replaces every ``nn.Conv1d``/``2d``/``3d`` by the matching
``SymmetricConv1d``/``2d``/``3d`` with the ``symmetry`` spec applied to each layer on its
own (percentages are of that layer's ``out_channels``); with ``copy_weights=True`` the
free filters are the least-squares projection of the original ones. Layers the spec
cannot fit are left alone and listed in the report with the reason. A key that flips an
axis along which the layer's kernel has extent 1 (any key on a 1x1 convolution) would fill
its orbits with identical copies, so it is not applied to that layer unless
``include_degenerate=True``.

``to="group"`` makes a group-equivariant network with invariant logits: see
:mod:`symconv.conversion_group`.

``convert`` never changes what a kept module computes, and never silently drops one:
only exact ``nn.Conv1d/2d/3d`` instances are candidates by default; a ``predicate(name,
module) -> bool`` narrows the choice or opts in subclasses that keep ``nn.ConvNd``'s
forward, while subclasses with their own ``forward`` (weight standardization, dynamic
"same" padding) are refused unless ``allow_subclasses=True``. Layers with forward hooks or
parametrizations (which the replacement would not carry over), transposed convolutions,
layers that are already ``SymmetricConv``/``ConvTwist`` and conv-like modules that are not
``nn.ConvNd`` are left alone and listed in the report with the reason.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping

from torch import nn

from symconv.conversion_common import candidate, count_parameters, summary, swap_modules
from symconv.conversion_report import ConversionReport
from symconv.core.groups import canonical_group_key
from symconv.core.groups import group as make_group
from symconv.core.symmetric_conv import SymmetricConvSpec, degenerate_keys
from symconv.core.symmetry import (
    SymmetrySpec,
    canonical_key,
    count_for,
    parse_symmetry_string,
)
from symconv.core.twist import conversion_reason as twist_conversion_reason
from symconv.core.validate import check_bool, check_choice, check_real
from symconv.nn.conv_utils import copy_mode, geometry_of

__all__ = ["ConversionReport", "convert", "name_matches"]

Predicate = Callable[[str, nn.Module], bool]
_TARGETS = ("twist", "symmetric", "group")
WIDTHS = ("channels", "params")


def name_matches(*patterns: str) -> Predicate:
    """A predicate selecting layers whose qualified name matches any shell-style pattern,
    e.g. ``convert(model, "twist", predicate=name_matches("layer3.*", "layer4.*"))``."""
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"name_matches needs one or more string patterns, got {patterns!r}")

    def predicate(name: str, module: nn.Module) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return predicate


def _twist_reason(conv: nn.Conv2d) -> str | None:
    """Why the default rule leaves ``conv`` alone, or ``None`` if it converts it."""
    return twist_conversion_reason(conv.kernel_size, conv.dilation, conv.padding)


def _only_for(target: str, to: object, **given: object) -> None:
    """Reject options given (not ``None``/``False``) that only ``to=target`` uses."""
    for name, value in given.items():
        if to != target and value not in (None, False):
            raise ValueError(f"{name}={value!r} is only used with to={target!r}")


def _check_args(model: object, to: object, options: Mapping[str, object]) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("to", to, _TARGETS)
    symmetry = options["symmetry"]
    if to == "symmetric" and symmetry is None:
        raise ValueError("to='symmetric' needs a symmetry spec, e.g. symmetry={'hv': '50%'}")
    if to == "group" and options["group"] is None:
        raise ValueError("to='group' needs a group key, e.g. group='hr' (p4m) or 'r' (p4)")
    for name in ("share_bias", "copy_weights", "include_degenerate", "allow_subclasses"):
        check_bool(name, options[name])
    if options["predicate"] is not None and not callable(options["predicate"]):
        raise TypeError(
            f"predicate={options['predicate']!r} must be a callable (name, module) -> bool"
        )
    _only_for("symmetric", to, symmetry=symmetry, include_degenerate=options["include_degenerate"])
    _only_for("group", to, group=options["group"], width=options["width"])
    if to == "symmetric":
        _check_spec(symmetry)
    if to == "group":
        canonical_group_key(options["group"], 2)
        if options["width"] is not None:
            check_choice("width", options["width"], WIDTHS)
    check_real("init_max", options["init_max"], 0)


def _check_spec(symmetry: object) -> None:
    """Reject malformed specs up front; whether a spec fits a layer is decided per layer."""
    spec = parse_symmetry_string(symmetry) if isinstance(symmetry, str) else symmetry
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"symmetry={symmetry!r} must be a dict such as {{'hv': '50%', 'h': 2}} or a string "
            f"such as 'hv:50%,h:2'; got {type(symmetry).__name__}"
        )
    if not spec:
        raise ValueError(f"symmetry={symmetry!r} selects no channels; nothing to convert")
    for key, value in spec.items():
        # every key some layer could take: rotation keys live in the 2-D plane
        ndim = 2 if isinstance(key, str) and "r" in key.lower() else 3
        canon = canonical_key(key, ndim)
        count_for(key, value, make_group(canon, ndim).order, 1)


def convert(
    model: nn.Module,
    to: str,
    *,
    symmetry: SymmetrySpec = None,
    group: str | None = None,
    width: str | None = None,
    share_bias: bool = True,
    predicate: Predicate | None = None,
    copy_weights: bool = True,
    init_max: float = 1.5,
    include_degenerate: bool = False,
    allow_subclasses: bool = False,
) -> ConversionReport:
    """Replace layers of ``model`` in place; return a :class:`ConversionReport`.

    Args:
        model: any ``nn.Module``; its submodules are swapped, the object stays the same.
        to: ``'twist'`` (``nn.Conv2d`` -> ``ConvTwist``), ``'symmetric'``
            (``nn.Conv1d/2d/3d`` -> ``SymmetricConv1d/2d/3d``) or ``'group'`` (a 2-D CNN
            -> a group-equivariant one with invariant logits, :mod:`symconv.conversion_group`).
        symmetry: the spec for ``to='symmetric'`` (see :mod:`symconv.symmetry`), applied to
            every layer separately.
        group: ``to='group'``: a 2-D group key (``'hr'`` p4m, ``'r'`` p4, ``'hv'``, ...).
        width: ``to='group'``: ``'channels'`` (default: keep channel counts, about
            ``1/|G|`` of the parameters) or ``'params'`` (widen by about ``sqrt(|G|)`` to
            keep the parameter count).
        share_bias: ``to='symmetric'``: one bias per orbit.
        predicate: ``predicate(qualified_name, module) -> bool`` picks which convolutions
            to convert, instead of the default rule; it is asked about every
            non-transposed, not yet converted ``nn.ConvNd`` without hooks or
            parametrizations (subclasses included, except those with their own ``forward``
            unless ``allow_subclasses``). Chosen layers the target cannot represent are
            skipped with the reason.
        copy_weights: start from the original weights (``True``; for ``'group'`` only
            layers whose shapes stay) or from a fresh initialization.
        init_max: ``to='twist'``: range of the initial centers.
        include_degenerate: ``to='symmetric'``: also apply keys that flip an axis along
            which the kernel has extent 1 (1x1 convolutions, 1xk ones for ``'v'``): their
            orbits hold identical copies, so by default such keys are left out for that
            layer (listed in ``notes``, or the layer in ``skipped`` if no key is left).
        allow_subclasses: also convert subclasses of ``nn.ConvNd`` that compute
            differently (their own ``forward``, ``_conv_forward`` or ``__call__``, e.g.
            weight standardization or dynamic "same" padding); the replacement computes a
            plain convolution instead, so only do this knowingly.

    A module shared under several names is converted once and replaced everywhere.
    """
    options = dict(
        symmetry=symmetry, group=group, width=width, share_bias=share_bias,
        predicate=predicate, copy_weights=copy_weights, init_max=init_max,
        include_degenerate=include_degenerate, allow_subclasses=allow_subclasses,
    )  # fmt: skip
    _check_args(model, to, options)
    if to == "group":
        from symconv.conversion_group import convert_group

        return convert_group(
            model, group, width or "channels", predicate=predicate,
            copy_weights=copy_weights, allow_subclasses=allow_subclasses,
        )  # fmt: skip
    return _convert_each(model, to, options)


def _convert_each(model: nn.Module, to: str, options: Mapping[str, object]) -> ConversionReport:
    """``to='twist'`` or ``'symmetric'``: each convolution on its own."""
    predicate = options["predicate"]
    report = ConversionReport(to=to, params_before=count_parameters(model))
    replacements: dict[int, nn.Module] = {}
    plain = (nn.Conv2d,) if to == "twist" else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for name, module in model.named_modules():
        base, why = candidate(
            module, plain, "ConvTwist is 2-D only", predicate is not None,
            bool(options["allow_subclasses"]),
        )  # fmt: skip
        if base is None:
            if why is not None:
                report.skipped.append((name, why))
            continue
        if predicate is not None and not predicate(name, module):  # type: ignore[operator]
            report.skipped.append((name, "not selected by predicate"))
            continue
        if predicate is None and to == "twist" and (why := _twist_reason(module)) is not None:
            report.skipped.append((name, why))
            continue
        layer_spec, notes = options["symmetry"], []
        if to == "symmetric":
            layer_spec, notes = _layer_symmetry(module, layer_spec, options["include_degenerate"])
            if not layer_spec:
                report.skipped.append((name, _degenerate_reason(module, notes)))
                continue
        if name == "":
            report.skipped.append((name, ROOT_REASON))
            continue
        try:
            new = _replacement(module, to, layer_spec, options)
        except ValueError as exc:
            report.skipped.append((name, str(exc)))
            continue
        copy_mode(module, new)
        replacements[id(module)] = new
        report.converted.append((name, summary(module), summary(new)))
        report.notes += [(name, note) for note in notes]
    swap_modules(model, replacements)
    report.params_after = count_parameters(model)
    return report


ROOT_REASON = (
    "the model itself is a convolution and cannot be replaced in place; "
    "use ConvTwist.from_conv / SymmetricConvNd.from_conv"
)


def _layer_symmetry(
    conv: nn.Module, symmetry: SymmetrySpec, include_degenerate: bool
) -> tuple[SymmetrySpec, list[str]]:
    """The part of ``symmetry`` to apply to ``conv``, and notes on the keys left out."""
    if include_degenerate:
        spec = parse_symmetry_string(symmetry) if isinstance(symmetry, str) else symmetry
        return dict(spec or {}), []
    return degenerate_keys(symmetry, tuple(conv.kernel_size))


def _degenerate_reason(conv: nn.Module, notes: list[str]) -> str:
    """Why no key of the spec applies to ``conv``."""
    k = conv.kernel_size
    if all(n == 1 for n in k):
        shape = "x".join("1" * len(k)) if len(k) > 1 else "length-1"
        return (
            f"{shape} kernel: every reflection leaves it unchanged, so each orbit would be "
            "identical copies (include_degenerate=True converts it anyway)"
        )
    return "; ".join(notes)


def _replacement(
    conv: nn.Module, to: str, symmetry: SymmetrySpec, options: Mapping[str, object]
) -> nn.Module:
    """The layer that replaces ``conv`` (``ValueError`` when the target cannot fit it)."""
    copy_weights = bool(options["copy_weights"])
    if to == "twist":
        from symconv.nn.twist import ConvTwist

        init_max = float(options["init_max"])  # type: ignore[arg-type]
        return ConvTwist.from_conv(conv, init_max=init_max, copy_weights=copy_weights)
    return _to_symmetric(conv, symmetry, bool(options["share_bias"]), copy_weights)


def _to_symmetric(
    conv: nn.Module, symmetry: SymmetrySpec, share_bias: bool, copy_weights: bool
) -> nn.Module:
    from symconv.nn.symmetric import SymmetricConv1d, SymmetricConv2d, SymmetricConv3d

    cls = (SymmetricConv1d, SymmetricConv2d, SymmetricConv3d)[len(conv.kernel_size) - 1]
    spec = SymmetricConvSpec.from_torch(
        len(conv.kernel_size),
        **geometry_of(conv).torch_kwargs(),
        symmetry=symmetry,
        share_bias=share_bias,
    )
    if spec.plan.n_symmetric == 0:
        # e.g. '50%' of 6 channels with 'hv' rounds down to no quadruple: nothing would change
        raise ValueError(
            f"symmetry={spec.plan.spec_dict()!r} gives no symmetric channels for "
            f"out_channels={conv.out_channels} (percentages round down to whole orbits)"
        )
    if copy_weights:
        return cls.from_conv(conv, symmetry, share_bias=share_bias)
    return cls.from_spec(spec, device=conv.weight.device, dtype=conv.weight.dtype)
