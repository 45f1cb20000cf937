"""Pictures: what convolutions do to an image (``symconv flow``) and the filters a model
learned (``symconv filters``).

Exports are loaded on first use (PEP 562), so ``import symconv.viz`` (and with it the
``symconv`` command's ``--help``) imports no torch; torch and numpy load with the first
function used, Pillow when a file is read or written.
"""

from __future__ import annotations

from symconv._lazy import lazy_exports

_EXPORTS = {
    "symconv.viz.filters": ("FilterFigure", "load_checkpoint", "plot_filters"),
    "symconv.viz.flow": (
        "PRESETS",
        "flow_frames",
        "flow_operator",
        "frame_steps",
        "load_kernel",
        "save_gif",
        "save_strip",
    ),
    "symconv.viz.images": ("default_image", "load_image", "mnist_digit", "resize_image"),
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
