"""What :func:`symconv.convert` did (:class:`ConversionReport`), and whether a model
converted to a group network is exactly invariant at an input size
(:class:`InvarianceCheck`).

A group network is exactly invariant when every layer commutes with the group and every
strided layer's sampling grid maps onto itself: along each turned or reflected axis of
length ``L`` at that layer, ``(L + 2 * padding - dilation * (kernel - 1) - 1) % stride ==
0`` (always true for stride 1 with symmetric padding), with the same kernel, stride,
padding and dilation on the height and width for rotation groups.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field

import torch
from torch import nn

from symconv.core.validate import check_int, check_real, type_error, value_error

__all__ = ["ConversionReport", "InvarianceCheck", "grid_problems"]


@dataclass
class InvarianceCheck:
    """:meth:`ConversionReport.check_invariance`'s answer for one input size.

    Attributes:
        input_size: ``(N, C, H, W)`` checked.
        errors: ``{member: max |model(u x) - model(x)|}`` in float64
            (:func:`symconv.equivariance_error`).
        tol: the largest deviation counted as rounding.
        promised: whether the layers and sampling grids promise exact invariance.
        reasons: why not (layers left plain, grids that do not map onto themselves).
    """

    input_size: tuple[int, ...]
    errors: dict[str, float]
    tol: float
    promised: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def exact(self) -> bool:
        """Every member's deviation is within ``tol``."""
        return self.max_error <= self.tol

    def __bool__(self) -> bool:
        return self.exact

    def __str__(self) -> str:
        verdict = "exactly invariant" if self.exact else "NOT invariant"
        lines = [f"input {self.input_size}: {verdict} (max error {self.max_error:.2g}, "
                 f"tol {self.tol:g}); promised: {'yes' if self.promised else 'no'}"]  # fmt: skip
        return "\n".join(lines + [f"  {why}" for why in self.reasons])


def _pairs(value: object, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * n  # type: ignore[arg-type]


def _grid_reason(name: str, module: nn.Module, shape: tuple[int, ...], turns: bool) -> str | None:
    """Why ``module`` (a convolution or pooling with ``kernel_size`` and ``stride``) breaks
    exactness on an input of ``shape`` ``(N, C, *spatial)``, or ``None``."""
    spatial = shape[2:]
    n = len(spatial)
    k, s = _pairs(module.kernel_size, n), _pairs(module.stride or module.kernel_size, n)
    d = _pairs(getattr(module, "dilation", 1), n)
    pad = getattr(module, "padding", 0)
    label = f"{name or '<root>'} ({type(module).__name__})"
    if pad == "same":
        if any(di * (ki - 1) % 2 for ki, di in zip(k, d, strict=True)):
            return f"{label}: padding='same' with an even extent pads one side more"
        pad = 0 if all(si == 1 for si in s) else pad
    p = _pairs(0 if pad == "valid" else pad, n)
    if turns and n >= 2 and len({(k[i], s[i], p[i], d[i]) for i in (-2, -1)}) > 1:
        return f"{label}: kernel, stride, padding or dilation differ between height and width"
    for i, length in enumerate(spatial):
        if s[i] > 1 and (length + 2 * p[i] - d[i] * (k[i] - 1) - 1) % s[i]:
            return (
                f"{label}: stride {s[i]} on an input of side {length} (padding {p[i]}) samples "
                "one border but not the other; exact for sides with "
                "(L + 2 * padding - dilation * (kernel - 1) - 1) % stride == 0"
            )
    return None


def grid_problems(model: nn.Module, x: torch.Tensor, turns: bool) -> list[str]:
    """Run ``model(x)`` once and list the strided layers whose sampling grid does not map
    onto itself (see the module); ``turns``: the group has quarter turns."""
    seen: dict[int, tuple[str, nn.Module, tuple[int, ...]]] = {}

    def record(name: str) -> object:
        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(id(module), (name, module, tuple(args[0].shape)))

        return hook

    handles = [
        m.register_forward_pre_hook(record(name))
        for name, m in model.named_modules()
        if hasattr(m, "kernel_size") and hasattr(m, "stride")
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    reasons = (_grid_reason(n, m, shape, turns) for n, m, shape in seen.values())
    return [r for r in reasons if r is not None]


@dataclass
class ConversionReport:
    """What :func:`symconv.convert` did.

    Attributes:
        to: ``'twist'``, ``'symmetric'`` or ``'group'``.
        converted: ``(qualified name, old layer, new layer)`` for every replaced layer.
        skipped: ``(qualified name, reason)`` for every convolution (or conv-like module)
            left alone.
        notes: ``(qualified name, note)`` for converted layers that did not take the whole
            spec (a key left out because it would only make identical copies), or, for
            ``'group'``, were initialized afresh.
        params_before, params_after: trainable-or-not parameter counts of the model.
        group, width: ``to='group'``'s group key and width rule.
        breaks: ``to='group'``: ``(qualified name, why)`` for each place the converted model
            stops being group-equivariant (empty: invariant logits, given input sizes whose
            grids map onto themselves: :meth:`check_invariance`).
    """

    to: str
    converted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    group: str | None = None
    width: str | None = None
    breaks: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.converted)

    def __bool__(self) -> bool:
        return bool(self.converted)

    @property
    def invariant(self) -> bool:
        """``to='group'``: every layer commutes with the group and a pool makes the logits
        invariant (exact at input sizes :meth:`check_invariance` approves)."""
        return self.to == "group" and bool(self.converted) and not self.breaks

    def check_invariance(
        self, model: nn.Module, input_size: tuple[int, ...], *, tol: float = 1e-9, seed: int = 0
    ) -> InvarianceCheck:
        """Measure ``model``'s invariance to the group at ``input_size`` ``(N, C, H, W)``:
        a float64 copy (same mode) runs on a random input and every member of it
        (:func:`symconv.equivariance_error`), and the strides decide what is promised."""
        from symconv.equivariance import equivariance_error

        if self.to != "group":
            raise ValueError(f"check_invariance needs a report of to='group', not to={self.to!r}")
        allowed = "a tuple (N, C, H, W) of 4 ints >= 1"
        if not isinstance(input_size, (tuple, list, torch.Size)):
            raise type_error("input_size", input_size, allowed)
        for n in input_size:
            if not isinstance(n, numbers.Integral) or isinstance(n, bool):
                raise type_error("input_size", input_size, allowed, got=n)
        size = tuple(int(n) for n in input_size)
        if len(size) != 4 or min(size) < 1:
            raise value_error("input_size", input_size, allowed)
        tol = check_real("tol", tol, 0.0)
        seed = check_int("seed", seed, 0)
        self._check_is_converted(model, size[1])
        probe = copy.deepcopy(model).to(torch.float64)
        device = next((p.device for p in probe.parameters()), torch.device("cpu"))
        gen = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(size, generator=gen, dtype=torch.float64).to(device)
        try:
            reasons = [f"{n}: {why}" for n, why in self.breaks]
            reasons += grid_problems(probe, x, turns="r" in (self.group or ""))
            errors = equivariance_error(probe, x, self.group or "")
        except RuntimeError as error:
            raise ValueError(
                f"the converted model does not run on input_size={size}: {error} (a layer "
                "whose channels did not follow the conversion, e.g. a concatenation of "
                "widened maps, or a plain layer between group layers)"
            ) from error
        return InvarianceCheck(size, errors, tol, not reasons, reasons)

    def _check_is_converted(self, model: nn.Module, channels: int) -> None:
        """``ValueError`` unless ``model`` holds the layers this report made, as it made
        them (its promise, ``breaks``, is about that model only), and its first one takes
        ``channels`` input channels."""
        if not isinstance(model, nn.Module):
            raise type_error("model", model, "the nn.Module this report converted")
        modules = dict(model.named_modules())
        for name, _, after in self.converted:
            made = after.rsplit(" [", 1)[0].split(" + ")[0]  # "GroupPool(...) + Linear(...)"
            found = modules.get(name)
            first = found[0] if isinstance(found, nn.Sequential) and len(found) else found
            if made not in (repr(found), repr(first)):
                what = "no such layer" if found is None else repr(first)
                raise ValueError(
                    f"model is not the model this report converted: layer {name!r} is "
                    f"{what}, where the conversion made {made}"
                )
        if self.converted:
            name = self.converted[0][0]
            first = modules[name]
            expected = getattr(first, "in_channels", None)
            if expected is not None and expected != channels:
                raise ValueError(
                    f"input_size has {channels} channels; the model's first converted layer "
                    f"{name!r} takes {expected}"
                )

    def __str__(self) -> str:
        target = f"to={self.to!r}"
        if self.to == "group":
            target += f", group={self.group!r}, width={self.width!r}"
        lines = [
            f"convert({target}): {len(self.converted)} converted, "
            f"{len(self.skipped)} skipped; parameters {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_after - self.params_before:+,})"
        ]
        if self.to == "group":
            lines.append(
                "invariant logits (exact where strides allow: check_invariance)"
                if self.invariant
                else "NOT invariant: see 'breaks'"
            )
        lines += _table(
            "layer", "before -> after", [(n, f"{o}\n-> {a}") for n, o, a in self.converted]
        )
        lines += _table("skipped", "reason", self.skipped)
        lines += _table("note on", "note", self.notes)
        lines += _table("breaks at", "why", self.breaks)
        return "\n".join(lines)


def _table(title: str, heading: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    w = max(len(title), *(len(n) for n, _ in rows))
    out = ["", f"{title:<{w}}  {heading}", f"{'-' * w}  {'-' * len(heading)}"]
    for name, text in rows:
        first, *rest = text.split("\n")
        out.append(f"{name or '<root>':<{w}}  {first}")
        out += [f"{'':<{w}}  {line}" for line in rest]
    return out
