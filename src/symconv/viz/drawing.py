"""Drawing flow frames: a strip of labeled panels (:func:`save_strip`) or a GIF (:func:`save_gif`).

Pillow is imported when a picture is drawn, not with this module.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from symconv.core.validate import check_int
from symconv.viz.limits import ANIMATION_FORMATS, STRIP_FORMATS

__all__ = [
    "ANIMATION_FORMATS",
    "STRIP_FORMATS",
    "StripLayout",
    "check_output_path",
    "default_columns",
    "font",
    "save_gif",
    "save_strip",
    "strip_layout",
]


def _output_format(path: str, formats: dict[str, str]) -> str:
    ext = os.path.splitext(path)[1].lower()
    fmt = formats.get(ext)
    if fmt is None:
        given = f"extension {ext!r}" if ext else "no extension"
        raise ValueError(
            f"{path!r} has {given}; the format is taken from the extension: use one of "
            f"{', '.join(formats)}"
        )
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            raise ValueError(f"{path!r}: this Pillow cannot write WebP; use .png")
    return fmt


def check_output_path(path: str | os.PathLike[str], animation: bool = False) -> str:
    """Check that a picture can be written to ``path``; returns its Pillow format name.

    The format comes from the extension (:data:`STRIP_FORMATS`, or
    :data:`ANIMATION_FORMATS` when ``animation``): ``ValueError`` if it is not one of them.
    The directory must exist and be writable and ``path`` must not be a directory: an
    ``OSError`` (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``,
    ``PermissionError``) naming the path otherwise. Nothing is written.
    """
    path = os.fspath(path)
    fmt = _output_format(path, ANIMATION_FORMATS if animation else STRIP_FORMATS)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise FileNotFoundError(errno.ENOENT, f"the directory {parent} does not exist", path)
    if not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a directory", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, f"{target} is not writable", path)
    return fmt


@dataclass(frozen=True)
class StripLayout:
    """Pixel geometry of a frame strip: panels in rows of ``columns``, each under its label."""

    n_panels: int
    zoom: int  # each picture pixel is drawn as zoom x zoom screen pixels
    panel_width: int
    panel_height: int
    margin: int
    title_height: int
    label_height: int
    columns: int

    @property
    def rows(self) -> int:
        return -(-self.n_panels // self.columns)

    @property
    def width(self) -> int:
        return self.columns * self.panel_width + (self.columns + 1) * self.margin

    @property
    def height(self) -> int:
        row = self.label_height + self.panel_height + self.margin
        return self.title_height + self.margin + self.rows * row

    def panel_box(self, index: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of panel ``index`` (right/bottom exclusive)."""
        row, column = divmod(index, self.columns)
        left = self.margin + column * (self.panel_width + self.margin)
        top = (
            self.margin
            + self.title_height
            + row * (self.label_height + self.panel_height + self.margin)
            + self.label_height
        )
        return left, top, left + self.panel_width, top + self.panel_height


#: Panels are enlarged by a whole factor until they are at least this wide.
_MIN_PANEL = 128
#: Default strips have rows of at most this many panels.
_MAX_DEFAULT_COLUMNS = 10


def default_columns(n_panels: int) -> int:
    """Panels per row of a default strip: one row up to 10 panels, else the fewest rows of
    at most 10, filled evenly (11 panels: rows of 6 and 5)."""
    n_panels = check_int("n_panels", n_panels, 1)
    rows = -(-n_panels // _MAX_DEFAULT_COLUMNS)
    return -(-n_panels // rows)


def strip_layout(
    n_panels: int,
    shape: tuple[int, int],
    zoom: int | None = None,
    title: bool = True,
    columns: int | None = None,
) -> StripLayout:
    """The geometry :func:`save_strip` uses for ``n_panels`` pictures of ``shape = (H, W)``.

    ``columns``: panels per row (at most ``n_panels`` are used); ``None``:
    :func:`default_columns`.
    """
    n_panels = check_int("n_panels", n_panels, 1)
    height, width = shape
    if zoom is None:
        zoom = max(1, math.ceil(_MIN_PANEL / max(height, width)))
    zoom = check_int("zoom", zoom, 1)
    columns = default_columns(n_panels) if columns is None else check_int("columns", columns, 1)
    return StripLayout(
        n_panels=n_panels,
        zoom=zoom,
        panel_width=width * zoom,
        panel_height=height * zoom,
        margin=8,
        title_height=22 if title else 0,
        label_height=20,
        columns=min(columns, n_panels),
    )


def font(size: int):  # type: ignore[no-untyped-def]
    """Pillow's default font at ``size`` px (its one bitmap size on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _to_uint8(frame: np.ndarray, normalize: bool) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float64)
    if normalize:
        lo, hi = float(frame.min()), float(frame.max())
        frame = (frame - lo) / (hi - lo) if hi > lo else np.zeros_like(frame)
    return np.round(np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)


def _panel(frame: np.ndarray, zoom: int, normalize: bool):  # type: ignore[no-untyped-def]
    from PIL import Image

    pixels = _to_uint8(frame, normalize)
    if zoom > 1:
        pixels = pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return Image.fromarray(pixels)


def _check_frames(frames: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) == 0:
        raise ValueError(f"frames must have shape (F, H, W) with F >= 1, got {frames.shape}")
    if len(steps) != len(frames):
        raise ValueError(f"got {len(frames)} frames but {len(steps)} step labels")
    return frames


def save_strip(
    frames: np.ndarray,
    steps: Sequence[int],
    path: str | os.PathLike[str],
    title: str | None = None,
    zoom: int | None = None,
    normalize: bool = False,
    columns: int | None = None,
) -> StripLayout:
    """Draw ``frames`` ``(F, H, W)`` in rows of ``columns``, each labelled with its step.

    The format comes from ``path``'s extension (:data:`STRIP_FORMATS`; checked, with the
    directory, by :func:`check_output_path` before drawing). ``columns``: panels per row,
    ``None``: :func:`default_columns` (one row up to 10 frames). Values are shown on the
    fixed scale 0 = black .. 1 = white (clipped), so brightness changes stay visible;
    ``normalize=True`` stretches each frame to its own range. Returns the
    :class:`StripLayout` used.
    """
    from PIL import Image, ImageDraw

    frames = _check_frames(frames, steps)
    layout = strip_layout(
        len(frames), frames.shape[1:], zoom=zoom, title=title is not None, columns=columns
    )
    fmt = check_output_path(path)
    canvas = Image.new("L", (layout.width, layout.height), 255)
    draw = ImageDraw.Draw(canvas)
    if title is not None:
        draw.text((layout.margin, layout.margin), title, fill=0, font=font(14))
    label_font = font(12)
    for i, (frame, step) in enumerate(zip(frames, steps, strict=True)):
        left, top, _, _ = layout.panel_box(i)
        canvas.paste(_panel(frame, layout.zoom, normalize), (left, top))
        draw.text((left, top - layout.label_height + 3), f"step {step}", fill=0, font=label_font)
    canvas.save(os.fspath(path), format=fmt)
    return layout


def save_gif(
    frames: np.ndarray,
    steps: Sequence[int],
    path: str | os.PathLike[str],
    duration_ms: int = 120,
    zoom: int | None = None,
    normalize: bool = False,
) -> int:
    """Write ``frames`` ``(F, H, W)`` as a looping GIF, one labelled frame each.

    ``path`` must end in ``.gif`` (checked, with its directory, before drawing).
    Returns the number of frames written.
    """
    from PIL import Image, ImageDraw

    frames = _check_frames(frames, steps)
    duration_ms = check_int("duration_ms", duration_ms, 1)
    check_output_path(path, animation=True)
    layout = strip_layout(1, frames.shape[1:], zoom=zoom, title=False)
    label_font = font(12)
    images = []
    for frame, step in zip(frames, steps, strict=True):
        canvas = Image.new(
            "L", (layout.panel_width, layout.panel_height + layout.label_height), 255
        )
        canvas.paste(_panel(frame, layout.zoom, normalize), (0, layout.label_height))
        ImageDraw.Draw(canvas).text((4, 3), f"step {step}", fill=0, font=label_font)
        images.append(canvas)
    images[0].save(
        os.fspath(path),
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=0,
        disposal=1,
        optimize=False,
    )
    return len(images)
