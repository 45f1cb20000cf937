"""The test-time transformations ``symconv compare`` measures robustness under.

All functions take and return float images ``(N, C, H, W)`` with pixel values in
``[0, 1]`` (before normalization, so the zero fill of rotations and rescaling is black,
the background of the bundled digits). Flips and 90-degree rotations are exact
(``torch.flip``/``torch.rot90``); small rotations and rescaling resample bilinearly about
the image center with ``affine_grid``/``grid_sample``, filling with zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from symconv.compare.config import TRANSFORM_NAMES, parse_transforms

__all__ = [
    "TRANSFORMS",
    "Transform",
    "affine",
    "affine_theta",
    "hflip",
    "parse_transforms",
    "rot90",
    "vflip",
]


def hflip(images: Tensor) -> Tensor:
    """Mirror left-right (the width axis)."""
    return images.flip(-1)


def vflip(images: Tensor) -> Tensor:
    """Mirror top-bottom (the height axis)."""
    return images.flip(-2)


def rot90(images: Tensor, k: int = 1) -> Tensor:
    """Rotate by ``k`` quarter turns counter-clockwise as displayed (row 0 at the top)."""
    return torch.rot90(images, k, dims=(-2, -1))


def affine_theta(
    cos: Tensor, sin: Tensor, scale: Tensor | float, h: int, w: int, shift: Tensor | None = None
) -> Tensor:
    """``affine_grid`` matrices ``(..., 2, 3)`` for an ``h x w`` image: output pixel ``(x, y)``
    (centered, x right, y down) samples the input at ``(cos x - sin y, sin x + cos y) / scale``
    plus ``shift`` ``(..., 2)``. affine_grid works in coordinates normalized by the
    half-sizes, hence the ``h / w`` ratios (a true rotation on non-square images too)."""
    c, s = cos / scale, sin / scale
    tx, ty = (torch.zeros_like(c),) * 2 if shift is None else shift.unbind(-1)
    return torch.stack(
        [torch.stack([c, -s * h / w, tx], -1), torch.stack([s * w / h, c, ty], -1)], -2
    )


def affine(images: Tensor, degrees: float = 0.0, scale: float = 1.0) -> Tensor:
    """Rotate by ``degrees`` counter-clockwise (as displayed), zoom by ``scale``, about the center.

    ``scale > 1`` enlarges the content (the borders leave the frame), ``scale < 1`` shrinks
    it (zeros fill the frame's border). The rotation is a true rotation in pixel units for
    non-square images too; with ``degrees`` a multiple of 90 on a square image the sample
    points fall on pixel centers, so it matches :func:`rot90` up to rounding.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not scale > 0:
        raise ValueError(f"scale={scale!r} must be positive")
    n, _, h, w = images.shape
    rad = math.radians(degrees)
    cos, sin = (torch.tensor(v, dtype=torch.float64) for v in (math.cos(rad), math.sin(rad)))
    # For 90 degrees the map is (-y, x), torch.rot90's. Formed in float64, rounded once.
    theta = affine_theta(cos, sin, scale, h, w).to(
        dtype=images.dtype if images.is_floating_point() else torch.float32,
        device=images.device,
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, 1, h, w], align_corners=False)
    return F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )


@dataclass(frozen=True)
class Transform:
    """A named test-time transformation ``(N, C, H, W) -> (N, C, H, W)``."""

    name: str
    description: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, images: Tensor) -> Tensor:
        return self.fn(images)


def _rotate(deg: float) -> Callable[[Tensor], Tensor]:
    return lambda x: affine(x, degrees=deg)


def _zoom(scale: float) -> Callable[[Tensor], Tensor]:
    return lambda x: affine(x, scale=scale)


#: What each transformation does and how, by name.
_SUITE: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "clean": ("the test split as is", lambda x: x),
    "hflip": ("mirrored left-right", hflip),
    "vflip": ("mirrored top-bottom", vflip),
    "rot90": ("rotated 90 degrees counter-clockwise", rot90),
    "rot+15": ("rotated 15 degrees counter-clockwise", _rotate(15.0)),
    "rot-15": ("rotated 15 degrees clockwise", _rotate(-15.0)),
    "scale0.8": ("shrunk to 0.8x about the center", _zoom(0.8)),
    "scale1.2": ("enlarged to 1.2x about the center", _zoom(1.2)),
}
#: The evaluation suite, in the table order of :data:`~symconv.compare.config.TRANSFORM_NAMES`;
#: ``clean`` is the untouched test split.
TRANSFORMS: dict[str, Transform] = {
    name: Transform(name, *_SUITE[name]) for name in TRANSFORM_NAMES
}
