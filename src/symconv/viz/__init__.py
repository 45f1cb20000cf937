"""Pictures: what convolutions do to an image (``symconv flow``) and the filters a model
learned (``symconv filters``).

Exports are loaded on first use (PEP 562), so ``import symconv.viz`` (and with it the
``symconv`` command's ``--help``) imports no torch; torch and numpy load with the first
function used, Pillow when a file is read or written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from symconv._lazy import lazy_exports

_EXPORTS = {
    "FilterFigure": "symconv.viz.filters",
    "load_checkpoint": "symconv.viz.filters",
    "plot_filters": "symconv.viz.filters",
    "PRESETS": "symconv.viz.flow",
    "flow_frames": "symconv.viz.flow",
    "flow_operator": "symconv.viz.flow",
    "frame_steps": "symconv.viz.flow",
    "load_kernel": "symconv.viz.flow",
    "save_gif": "symconv.viz.flow",
    "save_strip": "symconv.viz.flow",
    "default_image": "symconv.viz.images",
    "load_image": "symconv.viz.images",
    "mnist_digit": "symconv.viz.images",
    "resize_image": "symconv.viz.images",
}

__all__ = [
    "PRESETS",
    "FilterFigure",
    "default_image",
    "flow_frames",
    "flow_operator",
    "frame_steps",
    "load_checkpoint",
    "load_image",
    "load_kernel",
    "mnist_digit",
    "plot_filters",
    "resize_image",
    "save_gif",
    "save_strip",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from symconv.viz.filters import FilterFigure, load_checkpoint, plot_filters
    from symconv.viz.flow import (
        PRESETS,
        flow_frames,
        flow_operator,
        frame_steps,
        load_kernel,
        save_gif,
        save_strip,
    )
    from symconv.viz.images import default_image, load_image, mnist_digit, resize_image
