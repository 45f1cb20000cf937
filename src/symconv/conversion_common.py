"""What every ``convert`` target shares: which modules may be replaced, and the swap.

A module is a *candidate* when it is a plain ``nn.ConvNd`` of a class the target handles
(or a subclass that computes the same, or any subclass with ``allow_subclasses``) without
hooks or parametrizations that a replacement would drop.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = [
    "candidate",
    "count_parameters",
    "hooks_reason",
    "is_conv_like",
    "own_computation",
    "summary",
    "swap_modules",
]


def count_parameters(model: nn.Module) -> int:
    """Every parameter of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def summary(module: nn.Module) -> str:
    """``Class(extra_repr) [n params]`` (a ``Sequential``'s children joined by ``+``): one
    line of a conversion report."""
    parts = module if isinstance(module, nn.Sequential) else [module]
    text = " + ".join(f"{type(m).__name__}({m.extra_repr()})" for m in parts)
    return f"{text} [{count_parameters(module):,} params]"


def own_computation(module: nn.Module, base: type[nn.Module]) -> str | None:
    """The method by which a subclass of ``base`` computes differently, or ``None``."""
    for method in ("forward", "_conv_forward", "__call__"):
        if getattr(type(module), method) is not getattr(base, method):
            return method
    return None


def hooks_reason(module: nn.Module) -> str | None:
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


def is_conv_like(module: nn.Module) -> bool:
    """A module with its own parameters that describes itself as a convolution."""
    attrs = ("in_channels", "out_channels", "kernel_size")
    own_params = any(p is not None for p in module._parameters.values())
    return own_params and all(hasattr(module, a) for a in attrs)


def candidate(
    module: nn.Module,
    plain: tuple[type[nn.Module], ...],
    wrong_rank: str,
    has_predicate: bool,
    allow_subclasses: bool,
) -> tuple[type[nn.Module] | None, str | None]:
    """``(base, None)`` when ``module`` may be converted (``base`` its class among
    ``plain``), else ``(None, why)``; ``why`` is ``None`` for modules not worth reporting.
    ``wrong_rank`` is the reason given for an ``nn.ConvNd`` of a class not in ``plain``."""
    from symconv.nn.gathered import GatheredConvNd
    from symconv.nn.symmetric import SymmetricConvNd
    from symconv.nn.twist import ConvTwist

    if isinstance(module, ConvTwist | SymmetricConvNd | GatheredConvNd):
        return None, f"already a {type(module).__name__}"
    if not isinstance(module, nn.modules.conv._ConvNd):
        if not is_conv_like(module):
            return None, None
        return None, (
            f"not convertible: {type(module).__name__} looks like a convolution "
            "(in_channels, out_channels, kernel_size) but is not an nn.Conv1d/2d/3d"
        )
    if module.transposed:
        return None, f"transposed convolution ({type(module).__name__})"
    base = next((c for c in plain if isinstance(module, c)), None)
    if base is None:
        return None, f"{type(module).__name__}: {wrong_rank}"
    if (why := hooks_reason(module)) is not None:
        return None, why
    if type(module) is base or allow_subclasses:
        return base, None
    if (method := own_computation(module, base)) is not None:
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


def swap_modules(model: nn.Module, replacements: Mapping[int, nn.Module]) -> None:
    """Replace every reference to a module whose ``id`` is a key (a module registered
    under several names is replaced everywhere)."""
    for parent in model.modules():
        for child_name, child in parent._modules.items():
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]
