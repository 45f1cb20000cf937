"""Draw a trained model's filters, each orbit of a symmetric layer in one row.

:func:`plot_filters` takes an ``nn.Module`` (or a state_dict) and writes a PNG in which
every row is one orbit: the free filter and its reflected copies side by side (labelled
``id``, ``h``, ``v``, ``hv``), so the weight sharing of a :class:`symconv.SymmetricConv2d`
is visible at a glance. Plain ``nn.Conv2d`` filters are orbits of one; a
:class:`symconv.ConvTwist` row shows ``W``, ``Wx`` and ``Wy`` of one output channel.
Colors: red positive, blue negative, white zero, on one scale for the whole layer.

Accepted inputs (:func:`load_checkpoint` reads files, ``torch.load`` with
``weights_only=True`` unless ``trust=True``):

- an ``nn.Module``, or a file holding one (pickled: needs ``trust=True``);
- a dict whose ``'model'`` entry is an ``nn.Module`` or a state_dict;
- a ``symconv compare`` checkpoint ``<out>/checkpoints/<variant>-run<k>.pt``: the network
  is rebuilt from the variant and the settings the checkpoint records, then the weights
  are loaded (the file may be moved anywhere);
- a bare state_dict. A state_dict does not record which channels share weights (the
  plan is derived, not stored), so give ``symmetry={layer: spec}`` (in a file: a
  ``'symmetry'`` entry beside ``'model'``, with an optional ``'out_channels'``
  ``{layer: count}`` when a percentage spec leaves the channel count ambiguous); layers
  without one are drawn as plain convolutions, one filter per row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from symconv import checkpoint
from symconv.symmetry import SymmetryPlan, SymmetrySpec, make_plan
from symconv.viz import drawing
from symconv.viz.limits import FILTER_MAX_IN, FILTER_MAX_ROWS

__all__ = [
    "FilterFigure",
    "FilterRow",
    "LayerFilters",
    "conv_layers",
    "layers_of",
    "load_checkpoint",
    "plot_filters",
]


@dataclass
class LayerFilters:
    """The full kernel of one layer and how its output channels group into orbits.

    ``weight`` is ``(out_channels, in_channels / groups, kH, kW)`` (expanded for symmetric
    layers); ``plan`` is ``None`` for a plain convolution; ``extra`` holds a ConvTwist's
    ``Wx`` and ``Wy`` of the same shape.
    """

    kind: str  # 'symmetric', 'group', 'conv' or 'twist'
    weight: np.ndarray
    plan: SymmetryPlan | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    #: A group convolution's group key and member names (each field is one row).
    group: tuple[str, tuple[str, ...]] | None = None

    def describe(self) -> str:
        out, cin, kh, kw = self.weight.shape
        text = f"{self.kind}, {out} filters of {cin} x {kh} x {kw}"
        if self.plan is not None:
            text += f", {self.plan.n_free} orbits"
        if self.group is not None:
            key, names = self.group
            text += f", {out // len(names)} fields of |G|={len(names)} (group {key!r})"
        return text


@dataclass(frozen=True)
class FilterRow:
    """One row of the figure: an orbit (or one channel of a plain/twist layer)."""

    label: str
    channels: tuple[int, ...]  # output channels shown, in member order
    tiles: tuple[str, ...]  # tile labels ('id', 'h', ... or 'W', 'Wx', 'Wy')
    boxes: tuple[tuple[tuple[int, int, int, int], ...], ...]  # [tile][input ch] -> box


@dataclass(frozen=True)
class FilterFigure:
    """What :func:`plot_filters` drew, with pixel boxes for every kernel."""

    layer: str
    info: LayerFilters
    rows: tuple[FilterRow, ...]
    n_in_shown: int
    zoom: int
    scale: float  # |value| drawn at full color
    width: int
    height: int

    def describe(self) -> str:
        return f"{self.info.describe()}, {len(self.rows)} rows drawn"


# -- finding the layers --------------------------------------------------------------------


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def conv_layers(model: nn.Module) -> dict[str, LayerFilters]:
    """Every 2-D convolution of ``model`` (``nn.Conv2d``, ``SymmetricConv2d``,
    ``GroupConv2d``, ``ConvTwist``); symmetric and group layers with their full kernels."""
    from symconv.nn.group_conv import GroupConv2d
    from symconv.nn.symmetric import SymmetricConv2d

    try:
        from symconv.nn.twist import ConvTwist
    except ImportError:  # pragma: no cover - twist is part of the package
        ConvTwist = ()  # noqa: N806

    found: dict[str, LayerFilters] = {}
    for name, module in model.named_modules():
        if isinstance(module, SymmetricConv2d):
            found[name] = LayerFilters(
                "symmetric", _numpy(module.expanded_weight), plan=module.plan
            )
        elif isinstance(module, GroupConv2d):
            grp = module.spec.group
            found[name] = LayerFilters(
                "group", _numpy(module.expanded_weight), group=(grp.key, tuple(grp.names))
            )
        elif isinstance(module, ConvTwist):
            found[name] = LayerFilters(
                "twist",
                _numpy(module.weight),
                extra={"Wx": _numpy(module.weight_x), "Wy": _numpy(module.weight_y)},
            )
        elif isinstance(module, nn.Conv2d):
            found[name] = LayerFilters("conv", _numpy(module.weight))
    return found


def layers_of(
    model_or_state: nn.Module | Mapping[str, Any],
    symmetry: Mapping[str, SymmetrySpec] | None = None,
    out_channels: Mapping[str, int] | None = None,
) -> dict[str, LayerFilters]:
    """The drawable layers of a module, a state_dict or a :func:`load_checkpoint` result."""
    if isinstance(model_or_state, nn.Module):
        if symmetry or out_channels:
            raise ValueError("symmetry/out_channels apply to state_dicts; a module has its plans")
        return conv_layers(model_or_state)
    if isinstance(model_or_state, Mapping):
        if model_or_state and all(isinstance(v, LayerFilters) for v in model_or_state.values()):
            return dict(model_or_state)
        return _state_layers(model_or_state, symmetry, out_channels)
    raise TypeError(
        f"model_or_state must be an nn.Module or a state_dict, got {type(model_or_state).__name__}"
    )


def _plan_for(name: str, spec: SymmetrySpec, n_free: int, out_channels: int | None) -> SymmetryPlan:
    """The plan of a state_dict layer whose free weight has ``n_free`` rows."""
    if out_channels is not None:
        plan = make_plan(spec, out_channels, 2)
        if plan.n_free != n_free:
            raise ValueError(
                f"layer {name!r}: symmetry {spec!r} with out_channels={out_channels} has "
                f"{plan.n_free} free filters but the weight has {n_free}"
            )
        return plan
    # Each orbit of size s adds s - 1 channels beyond its free filter, so out_channels
    # lies in [n_free, 8 n_free]; a percentage spec may fit more than one count.
    fits = []
    for out in range(n_free, 8 * n_free + 1):
        try:
            plan = make_plan(spec, out, 2)
        except ValueError:
            continue
        if plan.n_free == n_free:
            fits.append(plan)
    if not fits:
        raise ValueError(
            f"layer {name!r}: no channel count gives symmetry {spec!r} exactly {n_free} free "
            "filters; is the spec right for this layer?"
        )
    if len(fits) > 1:
        raise ValueError(
            f"layer {name!r}: symmetry {spec!r} fits {len(fits)} channel counts "
            f"({', '.join(str(p.out_channels) for p in fits)}); give out_channels={{{name!r}: N}}"
        )
    return fits[0]


def _state_layers(
    state: Mapping[str, Any],
    symmetry: Mapping[str, SymmetrySpec] | None,
    out_channels: Mapping[str, int] | None,
) -> dict[str, LayerFilters]:
    symmetry = dict(symmetry or {})
    out_channels = dict(out_channels or {})
    found: dict[str, LayerFilters] = {}
    for key, value in state.items():
        if not key.endswith("weight") or not isinstance(value, Tensor) or value.ndim != 4:
            continue
        name = key[: -len("weight")].rstrip(".")
        weight = _numpy(value)
        if name in symmetry:
            plan = _plan_for(name, symmetry.pop(name), weight.shape[0], out_channels.get(name))
            found[name] = LayerFilters("symmetric", plan.expand(weight), plan=plan)
        elif f"{name}.center_x" in state:
            found[name] = LayerFilters("twist", weight)  # free taps of Wx/Wy stay unexpanded
        else:
            found[name] = LayerFilters("conv", weight)
    if symmetry:
        raise ValueError(
            f"symmetry names layers not in the state_dict: {', '.join(map(repr, symmetry))}; "
            f"4-D weights found: {', '.join(map(repr, found)) or 'none'}"
        )
    return found


# -- reading checkpoints ------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike[str], trust: bool = False
) -> nn.Module | dict[str, LayerFilters]:
    """Read a checkpoint for :func:`plot_filters`: a module, or the layers of a state_dict.

    ``trust=True`` allows files that pickle whole modules; loading those runs code from
    the file, so only pass it for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    ckpt = checkpoint.load(path, trust=trust, trust_hint="trust=True (--trust)")
    if isinstance(ckpt, nn.Module):
        return ckpt
    if not isinstance(ckpt, Mapping):
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}; expected an nn.Module, "
            "a state_dict or a dict with a 'model' entry"
        )
    model = ckpt.get("model", ckpt)
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, Mapping):
        raise ValueError(
            f"checkpoint {str(path)!r}: 'model' is a {type(model).__name__}, expected an "
            "nn.Module or a state_dict"
        )
    if checkpoint.is_compare_checkpoint(ckpt):
        return checkpoint.compare_model(ckpt, path)
    return _state_layers(model, ckpt.get("symmetry"), ckpt.get("out_channels"))


# -- drawing --------------------------------------------------------------------------------


#: Unshared filters (orbits of one) are packed this many to a row.
_PLAIN_PER_ROW = 8


def _plain_rows(channels: list[int]) -> list[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    rows = []
    for k in range(0, len(channels), _PLAIN_PER_ROW):
        chunk = tuple(channels[k : k + _PLAIN_PER_ROW])
        label = f"plain {chunk[0]}" + (f"-{chunk[-1]}" if len(chunk) > 1 else "")
        rows.append((label, chunk, tuple(str(c) for c in chunk)))
    return rows


def _rows(info: LayerFilters) -> list[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """``(label, output channels, tile labels)`` per row: one row per orbit."""
    out = info.weight.shape[0]
    if info.kind == "twist":
        return [(f"channel {c}", (c, c, c), ("W", "Wx", "Wy")) for c in range(out)]
    if info.group is not None:  # field f: channels f |G| .. f |G| + |G| - 1, member order
        key, names = info.group
        n = len(names)
        fields = range(out // n)
        return [(f"field {f} ({key})", tuple(range(f * n, f * n + n)), names) for f in fields]
    if info.plan is None:
        return _plain_rows(list(range(out)))
    plan = info.plan
    rows = []
    for block in plan.blocks:
        for f in range(block.first_orbit, block.first_orbit + block.n_orbits):
            channels = tuple(int(c) for c in np.flatnonzero(plan.free_index == f))
            # Member m applies generator i (the i-th letter of the key) when bit i is set.
            members = tuple(
                "".join(ch for i, ch in enumerate(block.key) if int(plan.member[c]) >> i & 1)
                or "id"
                for c in channels
            )
            rows.append((f"orbit {f} ({block.key})", channels, members))
    return rows + _plain_rows(list(range(plan.n_symmetric, plan.out_channels)))


def _color(values: np.ndarray, scale: float) -> np.ndarray:
    """Diverging colors: blue (-scale) .. white (0) .. red (+scale); ``(..., 3)`` uint8."""
    t = np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(values)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    rgb = np.stack([1 - 0.8 * neg, 1 - 0.8 * pos - 0.8 * neg, 1 - 0.8 * pos], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def _kernel_pixels(kernel: np.ndarray, zoom: int, scale: float) -> np.ndarray:
    return _color(kernel, scale).repeat(zoom, axis=0).repeat(zoom, axis=1)


def _pick_layer(layers: Mapping[str, LayerFilters], layer: str | None) -> str:
    """``layer``, or the first of ``layers`` when None; ValueError if there is none."""
    if not layers:
        raise ValueError("found no 2-D convolution (4-D weight) to draw")
    if layer is None:
        return next(iter(layers))
    if layer not in layers:
        raise ValueError(
            f"layer {layer!r} is not a 2-D convolution here; choose one of "
            f"{', '.join(map(repr, layers))}"
        )
    return layer


def _draw_row(  # type: ignore[no-untyped-def]
    canvas,
    info: LayerFilters,
    row: tuple[str, tuple[int, ...], tuple[str, ...]],
    r: int,
    geometry: tuple[int, ...],
    n_in_shown: int,
    zoom: int,
    scale: float,
) -> FilterRow:
    """Draw row ``r`` (its label, then one tile of ``n_in_shown`` kernels per channel)."""
    from PIL import Image, ImageDraw

    margin, label_w, tile_label_h, gap, title_h, tile_w, row_h = geometry
    label, channels, tiles = row
    _, _, kh, kw = info.weight.shape
    kpx_w, kpx_h = kw * zoom, kh * zoom
    draw = ImageDraw.Draw(canvas)
    font, small = drawing.font(12), drawing.font(10)
    top = margin + title_h + r * (row_h + gap)
    draw.text((margin, top + tile_label_h + kpx_h // 2 - 7), label, fill="black", font=font)
    boxes = []
    for t, (channel, tile) in enumerate(zip(channels, tiles, strict=True)):
        left = margin + label_w + t * (tile_w + gap)
        if tile:
            draw.text((left, top), tile, fill="black", font=small)
        kernel_set = info.extra[tile] if tile in info.extra else info.weight
        tile_boxes = []
        for i in range(n_in_shown):
            x0, y0 = left + i * (kpx_w + 4), top + tile_label_h
            pixels = _kernel_pixels(kernel_set[channel, i], zoom, scale)
            canvas.paste(Image.fromarray(pixels), (x0, y0))
            # A gray frame keeps near-zero (white) kernels visible on the page.
            draw.rectangle((x0 - 1, y0 - 1, x0 + kpx_w, y0 + kpx_h), outline=(160, 160, 160))
            tile_boxes.append((x0, y0, x0 + kpx_w, y0 + kpx_h))
        boxes.append(tuple(tile_boxes))
    return FilterRow(label, channels, tiles, tuple(boxes))


def plot_filters(
    model_or_state: nn.Module | Mapping[str, Any],
    out: str | os.PathLike[str],
    layer: str | None = None,
    *,
    symmetry: Mapping[str, SymmetrySpec] | None = None,
    out_channels: Mapping[str, int] | None = None,
    max_rows: int = FILTER_MAX_ROWS,
    max_in: int = FILTER_MAX_IN,
) -> FilterFigure:
    """Draw the filters of one layer, one orbit per row, and save the picture to ``out``.

    Args:
        model_or_state: an ``nn.Module``; a state_dict; or what :func:`load_checkpoint`
            returns (a module or a ``{layer: LayerFilters}`` dict).
        out: the picture to write, in the format its extension names (``.png``,
            ``.jpg``, ...: :data:`symconv.viz.limits.STRIP_FORMATS`); ``ValueError`` for
            another extension, ``OSError`` for a folder that cannot take it (checked
            before drawing).
        layer: the layer's name (``model.named_modules()`` / state_dict prefix); default:
            the first convolution.
        symmetry, out_channels: for a state_dict, ``{layer: spec}`` (and channel counts)
            saying which layers are symmetric (see the module docstring).
        max_rows: draw at most this many rows (orbits first, then unshared filters
            packed eight to a row).
        max_in: draw at most this many input channels of each filter.

    Returns:
        The :class:`FilterFigure` drawn (rows, pixel boxes of every kernel, color scale).
    """
    from PIL import Image, ImageDraw

    for name, value in (("max_rows", max_rows), ("max_in", max_in)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; give an integer >= 1")
    fmt = drawing.check_output_path(out)
    layers = layers_of(model_or_state, symmetry, out_channels)
    layer = _pick_layer(layers, layer)
    info = layers[layer]

    all_rows = _rows(info)
    rows = all_rows[:max_rows]
    _, n_in, kh, kw = info.weight.shape
    n_in_shown = min(n_in, max_in)
    zoom = max(3, math.ceil(24 / max(kh, kw)))
    shown = [info.weight, *info.extra.values()]
    scale = max(float(np.abs(w[:, :n_in_shown]).max()) for w in shown)

    # Geometry: label column, then tiles; a tile is n_in_shown kernels 4 px apart.
    margin, label_w, tile_label_h, gap, title_h = 8, 120, 13, 10, 36
    kpx_w, kpx_h = kw * zoom, kh * zoom
    tile_w = n_in_shown * kpx_w + (n_in_shown - 1) * 4
    max_tiles = max(len(r[1]) for r in rows)
    row_h = tile_label_h + kpx_h
    width = 2 * margin + label_w + max_tiles * tile_w + (max_tiles - 1) * gap
    height = 2 * margin + title_h + len(rows) * row_h + (len(rows) - 1) * gap

    canvas = Image.new("RGB", (max(width, 420), height), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = drawing.font(12), drawing.font(10)
    title = f"{layer}: {info.describe()}"
    notes = [f"red +, blue -, full color at |w| = {scale:.3g}"]
    if len(rows) < len(all_rows):
        notes.append(f"first {len(rows)} of {len(all_rows)} rows")
    if n_in_shown < n_in:
        notes.append(f"input channels 0-{n_in_shown - 1} of {n_in}")
    draw.text((margin, margin), title, fill="black", font=font)
    draw.text((margin, margin + 16), "; ".join(notes), fill="black", font=small)

    geometry = (margin, label_w, tile_label_h, gap, title_h, tile_w, row_h)
    drawn_rows = [
        _draw_row(canvas, info, row, r, geometry, n_in_shown, zoom, scale)
        for r, row in enumerate(rows)
    ]
    canvas.save(os.fspath(out), format=fmt)
    return FilterFigure(
        layer=layer,
        info=info,
        rows=tuple(drawn_rows),
        n_in_shown=n_in_shown,
        zoom=zoom,
        scale=scale,
        width=canvas.width,
        height=canvas.height,
    )
