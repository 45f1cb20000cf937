"""One-call model surgery: swap the convolutions of an existing model, in place::

    report = convert(model, "twist")                     # 3x3 convs -> ConvTwist
    report = convert(model, "symmetric", symmetry={"hv": "50%"})
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
from dataclasses import dataclass, field

from torch import nn

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
_TARGETS = ("twist", "symmetric")


@dataclass
class ConversionReport:
    """What :func:`convert` did.

    Attributes:
        to: ``'twist'`` or ``'symmetric'``.
        converted: ``(qualified name, old layer, new layer)`` for every replaced layer.
        skipped: ``(qualified name, reason)`` for every convolution (or conv-like module)
            left alone.
        notes: ``(qualified name, note)`` for converted layers that did not take the whole
            spec (a key left out because it would only make identical copies).
        params_before, params_after: trainable-or-not parameter counts of the model.
    """

    to: str
    converted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def __len__(self) -> int:
        return len(self.converted)

    def __bool__(self) -> bool:
        return bool(self.converted)

    def __str__(self) -> str:
        lines = [
            f"convert(to={self.to!r}): {len(self.converted)} converted, "
            f"{len(self.skipped)} skipped; parameters {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_after - self.params_before:+,})"
        ]
        if self.converted:
            w = max(len("layer"), *(len(n) for n, _, _ in self.converted))
            lines += ["", f"{'layer':<{w}}  before -> after", f"{'-' * w}  {'-' * 15}"]
            lines += [
                f"{n or '<root>':<{w}}  {old}\n{'':<{w}}  -> {new}"
                for n, old, new in self.converted
            ]
        if self.skipped:
            w = max(len("skipped"), *(len(n) for n, _ in self.skipped))
            lines += ["", f"{'skipped':<{w}}  reason", f"{'-' * w}  {'-' * 6}"]
            lines += [f"{n or '<root>':<{w}}  {why}" for n, why in self.skipped]
        if self.notes:
            w = max(len("note on"), *(len(n) for n, _ in self.notes))
            lines += ["", f"{'note on':<{w}}  note", f"{'-' * w}  {'-' * 4}"]
            lines += [f"{n or '<root>':<{w}}  {note}" for n, note in self.notes]
        return "\n".join(lines)


def name_matches(*patterns: str) -> Predicate:
    """A predicate selecting layers whose qualified name matches any shell-style pattern,
    e.g. ``convert(model, "twist", predicate=name_matches("layer3.*", "layer4.*"))``."""
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"name_matches needs one or more string patterns, got {patterns!r}")

    def predicate(name: str, module: nn.Module) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return predicate


def _summary(module: nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{type(module).__name__}({module.extra_repr()}) [{n:,} params]"


def _twist_reason(conv: nn.Conv2d) -> str | None:
    """Why the default rule leaves ``conv`` alone, or ``None`` if it converts it."""
    return twist_conversion_reason(conv.kernel_size, conv.dilation, conv.padding)


def _own_computation(module: nn.Module, base: type[nn.Module]) -> str | None:
    """The method by which a subclass of ``base`` computes differently, or ``None``."""
    for method in ("forward", "_conv_forward", "__call__"):
        if getattr(type(module), method) is not getattr(base, method):
            return method
    return None


def _hooks_reason(module: nn.Module) -> str | None:
    """Why replacing ``module`` would drop part of its computation, or ``None``."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module):
        names = ", ".join(module.parametrizations.keys())  # type: ignore[union-attr]
        return (
            f"parametrized ({names}): the replacement would not carry the parametrization "
            "over; remove it (torch.nn.utils.parametrize.remove_parametrizations) to convert"
        )
    hooks = [
        kind
        for kind, registry in (
            ("forward hooks", module._forward_hooks),
            ("forward pre-hooks", module._forward_pre_hooks),
        )
        if registry
    ]
    if hooks:
        return (
            f"has {' and '.join(hooks)}, which the replacement would not carry over; "
            "remove them to convert it"
        )
    return None


def _is_conv_like(module: nn.Module) -> bool:
    """A module with its own parameters that describes itself as a convolution."""
    attrs = ("in_channels", "out_channels", "kernel_size")
    own_params = any(p is not None for p in module._parameters.values())
    return own_params and all(hasattr(module, a) for a in attrs)


def _check_args(
    model: object,
    to: object,
    symmetry: object,
    share_bias: object,
    predicate: object,
    copy_weights: object,
    init_max: object,
    include_degenerate: object,
    allow_subclasses: object,
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("to", to, _TARGETS)
    if to == "symmetric" and symmetry is None:
        raise ValueError("to='symmetric' needs a symmetry spec, e.g. symmetry={'hv': '50%'}")
    if to == "twist" and symmetry is not None:
        raise ValueError(f"symmetry={symmetry!r} is only used with to='symmetric'")
    check_bool("share_bias", share_bias)
    check_bool("copy_weights", copy_weights)
    check_bool("include_degenerate", include_degenerate)
    check_bool("allow_subclasses", allow_subclasses)
    if to == "twist" and include_degenerate:
        raise ValueError("include_degenerate=True is only used with to='symmetric'")
    if predicate is not None and not callable(predicate):
        raise TypeError(f"predicate={predicate!r} must be a callable (name, module) -> bool")
    if to == "symmetric":
        _check_spec(symmetry)
    check_real("init_max", init_max, 0)


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
        canon = canonical_key(key, 3)  # every key some layer could take
        count_for(key, value, 2 ** len(canon), 1)


def convert(
    model: nn.Module,
    to: str,
    *,
    symmetry: SymmetrySpec = None,
    share_bias: bool = True,
    predicate: Predicate | None = None,
    copy_weights: bool = True,
    init_max: float = 1.5,
    include_degenerate: bool = False,
    allow_subclasses: bool = False,
) -> ConversionReport:
    """Replace convolutions of ``model`` in place; return a :class:`ConversionReport`.

    Args:
        model: any ``nn.Module``; its submodules are swapped, the object stays the same.
        to: ``'twist'`` (``nn.Conv2d`` -> ``ConvTwist``) or ``'symmetric'``
            (``nn.Conv1d/2d/3d`` -> ``SymmetricConv1d/2d/3d``).
        symmetry: the spec for ``to='symmetric'`` (see :mod:`symconv.symmetry`), applied to
            every layer separately.
        share_bias: ``to='symmetric'``: one bias per orbit.
        predicate: ``predicate(qualified_name, module) -> bool`` picks which convolutions
            to convert, instead of the default rule; it is asked about every
            non-transposed, not yet converted ``nn.ConvNd`` without hooks or
            parametrizations (subclasses included, except those with their own ``forward``
            unless ``allow_subclasses``). Chosen layers the target cannot represent are
            skipped with the reason.
        copy_weights: start from the original weights (``True``) or from a fresh
            initialization.
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
    _check_args(
        model,
        to,
        symmetry,
        share_bias,
        predicate,
        copy_weights,
        init_max,
        include_degenerate,
        allow_subclasses,
    )
    report = ConversionReport(to=to, params_before=sum(p.numel() for p in model.parameters()))
    replacements: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        base, why = _candidate(module, to, predicate is not None, allow_subclasses)
        if base is None:
            if why is not None:
                report.skipped.append((name, why))
            continue
        if predicate is not None and not predicate(name, module):
            report.skipped.append((name, "not selected by predicate"))
            continue
        if predicate is None and to == "twist" and (why := _twist_reason(module)) is not None:
            report.skipped.append((name, why))
            continue
        layer_spec, notes = symmetry, []
        if to == "symmetric":
            layer_spec, notes = _layer_symmetry(module, symmetry, include_degenerate)
            if not layer_spec:
                report.skipped.append((name, _degenerate_reason(module, notes)))
                continue
        if name == "":
            report.skipped.append(
                (
                    name,
                    "the model itself is a convolution and cannot be replaced in place; "
                    "use ConvTwist.from_conv / SymmetricConvNd.from_conv",
                )
            )
            continue
        try:
            new = _replacement(module, to, layer_spec, share_bias, copy_weights, init_max)
        except ValueError as exc:
            report.skipped.append((name, str(exc)))
            continue
        copy_mode(module, new)
        replacements[id(module)] = new
        report.converted.append((name, _summary(module), _summary(new)))
        report.notes += [(name, note) for note in notes]

    # Swap every reference (a module registered under several names is replaced everywhere).
    for parent in model.modules():
        for child_name, child in parent._modules.items():
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]
    report.params_after = sum(p.numel() for p in model.parameters())
    return report


def _candidate(
    module: nn.Module, to: str, has_predicate: bool, allow_subclasses: bool
) -> tuple[type[nn.Module] | None, str | None]:
    """``(base, None)`` when ``module`` may be converted (``base`` its ``nn.ConvNd``
    class), else ``(None, why)``; ``why`` is ``None`` for modules not worth reporting."""
    from symconv.nn.symmetric import SymmetricConvNd
    from symconv.nn.twist import ConvTwist

    if isinstance(module, ConvTwist | SymmetricConvNd):
        return None, f"already a {type(module).__name__}"
    if not isinstance(module, nn.modules.conv._ConvNd):
        if not _is_conv_like(module):
            return None, None
        return None, (
            f"not convertible: {type(module).__name__} looks like a convolution "
            "(in_channels, out_channels, kernel_size) but is not an nn.Conv1d/2d/3d"
        )
    if module.transposed:
        return None, f"transposed convolution ({type(module).__name__})"
    plain = (nn.Conv2d,) if to == "twist" else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    base = next((c for c in plain if isinstance(module, c)), None)
    if base is None:
        return None, f"{type(module).__name__}: ConvTwist is 2-D only"
    if (why := _hooks_reason(module)) is not None:
        return None, why
    if type(module) is base or allow_subclasses:
        return base, None
    if (method := _own_computation(module, base)) is not None:
        return None, (
            f"{type(module).__name__} subclasses nn.{base.__name__} with its own {method}, "
            "which the replacement would drop; pass allow_subclasses=True to convert it anyway"
        )
    if not has_predicate:
        return None, (
            f"{type(module).__name__} subclasses nn.{base.__name__}; select it with "
            "predicate (or allow_subclasses=True) to convert it"
        )
    return base, None


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
    conv: nn.Module,
    to: str,
    symmetry: SymmetrySpec,
    share_bias: bool,
    copy_weights: bool,
    init_max: float,
) -> nn.Module:
    """The layer that replaces ``conv`` (``ValueError`` when the target cannot fit it)."""
    if to == "twist":
        from symconv.nn.twist import ConvTwist

        return ConvTwist.from_conv(conv, init_max=init_max, copy_weights=copy_weights)
    return _to_symmetric(conv, symmetry, share_bias, copy_weights)


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
