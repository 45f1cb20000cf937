"""Layer variants of one base network, selected by name.

``plain``
    The base network (:mod:`symconv.compare.models`) as built.
``sym``
    Its convolutions converted by ``symconv.convert(model, 'symmetric', symmetry=spec)``:
    a share of the filters of every layer are reflected copies of free filters. This is
    a *prior* (fewer free parameters, mirrored feature detectors), not a guarantee: each
    layer is flip-equivariant only up to a permutation of its orbit channels, which the
    next layer does not undo, so the network as a whole is not flip-invariant.
``sym-inv``
    Exactly flip-invariant: every k x k convolution (k > 1) is a
    :class:`~symconv.OrbitConv2d`, a :class:`~symconv.SymmetricConv2d` whose filters all
    lie in orbits of ``key`` (orbit size ``s``; ``s`` times as many output channels)
    followed by :class:`~symconv.OrbitPool` (max over each orbit). Flipping its input flips its
    output *without* permuting channels, so the next layer sees ordinary images again;
    with the flip-commuting architecture of the base networks, the logits of a flipped
    image equal the logits of the image. Same parameter count as ``plain``, ``s`` times
    the convolution cost.
``twist``
    Its 3x3 convolutions converted by ``symconv.convert(model, 'twist')`` to
    :class:`~symconv.ConvTwist` (position-dependent kernels that can rotate and scale).
``p4``, ``p4m``
    ``symconv.convert(model, 'group', group='r' | 'hr', width=group_width)``: the first
    convolution lifts, the others are group convolutions with group batch norm, and the
    members are max-pooled before the head, so the logits are exactly invariant to quarter
    turns (``p4``) and also to flips (``p4m``), at every input size the base networks
    take (stride-1 convolutions, :class:`HalvingPool2d`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from symconv.compare.config import GROUP_VARIANTS, INVARIANT_KEYS, VARIANTS, parse_variants
from symconv.compare.models import ConvFactory, build_model, plain_conv
from symconv.nn.orbit import OrbitConv2d

__all__ = ["VARIANTS", "BuiltVariant", "OrbitConv2d", "build_variant", "parse_variants"]


def orbit_conv_factory(key: str) -> ConvFactory:
    """A conv factory for :mod:`symconv.compare.models` building :class:`OrbitConv2d`.

    1x1 convolutions stay plain: a 1x1 kernel is its own mirror image, so it already maps
    images that flip to images that flip.
    """
    if key not in INVARIANT_KEYS:
        raise ValueError(f"invariance key {key!r} is not allowed; use one of {INVARIANT_KEYS}")

    def conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
        if kernel_size == 1:
            return plain_conv(in_channels, out_channels, 1)
        return OrbitConv2d(in_channels, out_channels, kernel_size, key)

    return conv


@dataclass
class BuiltVariant:
    """A variant's network and what building it did (for ``results.json``)."""

    name: str
    model: nn.Module
    description: str
    converted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _is_spatial_conv(name: str, module: nn.Module) -> bool:
    # 1x1 convolutions are their own mirror image: symmetric sharing would only copy them.
    return isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1


def build_variant(
    variant: str,
    model: str,
    in_channels: int,
    num_classes: int,
    *,
    size: int = 28,
    width: int | None = None,
    symmetry: str = "hv:50%",
    invariant_key: str = "hv",
    group_width: str = "channels",
) -> BuiltVariant:
    """Build ``variant`` of network ``model`` (uses the global torch RNG for the weights).

    ``plain``, ``sym`` and ``twist`` start from the same base network, so under one seed
    they start from the same weights (``sym`` from their orbit averages, ``twist`` with
    zero twist terms).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed; use one of {VARIANTS}")
    if variant == "sym-inv":
        net = build_model(
            model,
            in_channels,
            num_classes,
            size=size,
            width=width,
            conv=orbit_conv_factory(invariant_key),
        )
        return BuiltVariant(
            variant,
            net,
            f"every {model} convolution an OrbitConv2d (SymmetricConv2d with all filters in "
            f"{invariant_key!r} orbits + OrbitPool max): exactly {invariant_key}-flip invariant",
        )
    net = build_model(model, in_channels, num_classes, size=size, width=width)
    if variant == "plain":
        return BuiltVariant(variant, net, f"the {model} as built")
    from symconv.conversion import convert

    if variant == "sym":
        report = convert(net, "symmetric", symmetry=symmetry, predicate=_is_spatial_conv)
        what = f"convert(model, 'symmetric', symmetry={symmetry!r}) on every k x k conv, k > 1"
    elif variant in GROUP_VARIANTS:
        key = GROUP_VARIANTS[variant]
        report = convert(net, "group", group=key, width=group_width)
        if not report.invariant:
            raise ValueError(f"variant {variant!r} is not invariant: {report.breaks}")
        what = (f"convert(model, 'group', group={key!r}, width={group_width!r}): invariant "
                "logits")  # fmt: skip
    else:
        report = convert(net, "twist")
        what = "convert(model, 'twist'): 3x3 convs to ConvTwist"
    if not report.converted:
        reasons = "; ".join(f"{n}: {why}" for n, why in report.skipped) or "no convolutions"
        raise ValueError(f"variant {variant!r} converts no layer of the {model} ({reasons})")
    return BuiltVariant(
        variant,
        net,
        f"{what}: {len(report.converted)} converted, {len(report.skipped)} left as they are",
        [n for n, _, _ in report.converted],
        [(n, why) for n, why in report.skipped],
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the free ones of symmetric layers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
