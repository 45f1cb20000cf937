"""Limits, defaults and names of :mod:`symconv.viz`, shared by the library and its commands.

Imports nothing heavy, so that ``symconv flow --help`` and ``symconv filters --help`` need
no torch: the command line (:mod:`symconv.viz.cli`) takes its defaults and choices from
here, and so do :mod:`~symconv.viz.images`, :mod:`~symconv.viz.flow` and
:mod:`~symconv.viz.filters`.
"""

from __future__ import annotations

__all__ = [
    "ANIMATION_FORMATS",
    "CLI_MAX_FRAMES",
    "DEFAULT_PADDING",
    "DEFAULT_SIZE",
    "FILTER_MAX_IN",
    "FILTER_MAX_ROWS",
    "MAX_ABS_EPS",
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_SIZE",
    "MIN_SIZE",
    "PADDING_MODES",
    "PRESET_HELP",
    "STRIP_FORMATS",
]

#: Sizes (pixels) :func:`~symconv.viz.default_image` and :func:`~symconv.viz.resize_image`
#: accept: larger pictures take minutes to draw and flow, and gigabytes for a strip of frames.
MIN_SIZE, MAX_SIZE = 8, 1024
#: Side of :func:`~symconv.viz.default_image`, and what ``symconv flow`` resizes pictures to.
DEFAULT_SIZE = 128

#: Boundary handling, as in ``nn.Conv2d(padding_mode=...)``.
PADDING_MODES = ("zeros", "reflect", "replicate")
#: What enters the frame unless told otherwise: the edge pixels, smeared inwards.
DEFAULT_PADDING = "replicate"
#: Largest ``|eps|`` accepted: far beyond any useful flow (``eps = 1`` already moves a picture
#: 8 px per step) and far from overflowing the kernel entries (at most ``2 |eps|``).
MAX_ABS_EPS = 1000.0
#: :func:`~symconv.viz.flow_frames` keeps at most this many frames unless given ``max_frames``.
MAX_FRAMES = 1000
#: ``symconv flow --max-frames`` default: a strip with more frames than this is unreadable.
CLI_MAX_FRAMES = 100
#: ``symconv flow`` holds the frames of a run in memory together (then draws them); they may
#: take this many bytes.
MAX_FRAME_BYTES = 2 * 2**30

#: Formats :func:`~symconv.viz.save_strip` writes, by file extension (Pillow's names).
STRIP_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
#: Formats :func:`~symconv.viz.save_gif` writes (an animation), by file extension.
ANIMATION_FORMATS = {".gif": "GIF"}

#: The flow presets (:data:`symconv.viz.flow.PRESETS`, in the same order), in a line each.
PRESET_HELP = {
    "blur": "the Gaussian kernel [[1,2,1],[2,4,2],[1,2,1]]/16 (eps mixes it with the identity)",
    "translate-x": "I + eps*A (Sobel x): moves the picture 8*eps px left per step",
    "translate-y": "I + eps*B (Sobel y): moves the picture 8*eps px down per step",
    "translate-diag": "I + eps*(A+B): 8*eps px left and 8*eps px down per step",
    "rotate": "ConvTwist, twist kernels -eps*(B, A): 16*eps/W rad per step, counterclockwise",
    "scale": "ConvTwist, twist kernels eps*(-A, B): grows by 1/(1-16*eps/W) per step",
}

#: :func:`~symconv.viz.plot_filters` draws at most this many rows ...
FILTER_MAX_ROWS = 32
#: ... and this many input channels of each filter, unless told otherwise.
FILTER_MAX_IN = 8
