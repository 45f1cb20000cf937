"""Pictures: what convolutions do to an image (``symconv flow``) and the filters a model
learned (``symconv filters``).

Only torch and numpy load with this package; Pillow is imported when a file is read or
written.
"""

from __future__ import annotations

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
