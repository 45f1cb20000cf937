"""Pictures to feed to :func:`symconv.viz.flow.flow_frames`.

- :func:`default_image`: a photograph-like gray test scene drawn procedurally (sky
  gradient, sun, hills, a house with an off-center door, a tree, textured ground). It is
  deterministic, resolution independent and asymmetric, so translation, rotation, scaling
  and reflection are all visible.
- :func:`load_image`: any file Pillow reads, converted to gray.
- :func:`mnist_digit`: a digit from the bundled MNIST subset ``symconv/data/mnist_5k.npz``.
- :func:`resize_image`: area/bilinear resizing with torch (no Pillow needed).

Every function returns a float32 numpy array ``(H, W)`` with values in ``[0, 1]``.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from symconv.core.validate import check_int
from symconv.viz.limits import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE

__all__ = ["MAX_SIZE", "MIN_SIZE", "default_image", "load_image", "mnist_digit", "resize_image"]

#: Samples per pixel along each axis when drawing the default scene (anti-aliasing).
_SUPERSAMPLE = 4
#: Output rows drawn at once: bounds the supersampled scratch arrays (a few MiB each).
_BAND_ROWS = 32


def _check_size(name: str, value: object) -> int:
    return check_int(name, value, MIN_SIZE, MAX_SIZE)


def _value_noise(u: np.ndarray, v: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """Smooth noise in ``[0, 1]`` at normalized coordinates, from a fixed random lattice."""
    lattice = np.random.default_rng(seed).random((cells + 1, cells + 1))
    x, y = np.clip(u, 0, 1) * cells, np.clip(v, 0, 1) * cells
    x0 = np.minimum(x.astype(np.int64), cells - 1)
    y0 = np.minimum(y.astype(np.int64), cells - 1)
    fx, fy = x - x0, y - y0
    # Smoothstep weights hide the lattice.
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = lattice[y0, x0] * (1 - fx) + lattice[y0, x0 + 1] * fx
    bottom = lattice[y0 + 1, x0] * (1 - fx) + lattice[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _scene(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The test scene's brightness at normalized coordinates ``u`` (right), ``v`` (down)."""
    # Sky: bright near the horizon, darker overhead, with soft clouds.
    img = 0.55 + 0.25 * v + 0.12 * (_value_noise(u * 0.7, v * 1.4, 6, seed=1) - 0.5)
    # Sun, upper left, with a glow.
    r_sun = np.hypot(u - 0.2, v - 0.18)
    img = np.where(r_sun < 0.08, 1.0, img + 0.25 * np.exp(-((r_sun / 0.12) ** 2)))
    # Two ranges of hills.
    far = 0.55 - 0.08 * np.sin(2 * np.pi * (u * 1.3 + 0.1)) - 0.03 * np.sin(9 * u)
    img = np.where(v > far, 0.45 + 0.1 * _value_noise(u, v, 16, seed=2), img)
    near = 0.68 - 0.05 * np.sin(2 * np.pi * (u * 0.8 + 0.55))
    ground = v > near
    texture = _value_noise(u, v, 48, seed=3)
    img = np.where(ground, 0.3 + 0.25 * texture + 0.15 * (v - near), img)
    # A path curving from the bottom edge towards the house.
    path = ground & (np.abs(u - (0.38 + 0.25 * (1 - v) ** 2 - 0.05 * (v - near))) < 0.03 + 0.1 * v)
    img = np.where(path, 0.75 + 0.1 * texture, img)

    # House, left of center: walls, a roof and an off-center door and window.
    x0, x1, y0, y1 = 0.2, 0.5, 0.5, 0.72
    walls = (u > x0) & (u < x1) & (v > y0) & (v < y1)
    img = np.where(walls, 0.85 - 0.06 * _value_noise(u, v, 64, seed=4), img)
    roof = (v <= y0) & (v > 0.33) & (np.abs(u - 0.35) < (v - 0.33) / 0.17 * 0.18)
    img = np.where(roof, 0.18 + 0.08 * ((v * 60).astype(np.int64) % 2), img)
    door = (u > 0.25) & (u < 0.31) & (v > 0.6) & (v < y1)
    img = np.where(door, 0.12, img)
    window = (u > 0.37) & (u < 0.46) & (v > 0.55) & (v < 0.63)
    bars = (np.abs(u - 0.415) < 0.006) | (np.abs(v - 0.59) < 0.006)
    img = np.where(window, np.where(bars, 0.85, 0.35), img)
    chimney = (u > 0.42) & (u < 0.46) & (v > 0.36) & (v < 0.45)
    img = np.where(chimney, 0.25, img)

    # Tree, right of center: trunk and a textured crown.
    trunk = (np.abs(u - 0.75) < 0.025) & (v > 0.45) & (v < 0.78)
    img = np.where(trunk, 0.2, img)
    crown = np.hypot((u - 0.75) / 0.14, (v - 0.38) / 0.17) < 1
    img = np.where(crown, 0.15 + 0.35 * _value_noise(u, v, 40, seed=5), img)
    # A small bird (a tilted "v") top right: a fine, asymmetric detail.
    wing = np.abs((v - 0.15) + 0.5 * np.abs(u - 0.62) - 0.01) < 0.006
    img = np.where(wing & (np.abs(u - 0.62) < 0.04), 0.1, img)

    return np.clip(img, 0.0, 1.0)


def default_image(size: int = DEFAULT_SIZE, height: int | None = None) -> np.ndarray:
    """The bundled test scene, ``(height or size, size)`` float32 in ``[0, 1]``.

    Drawn in normalized coordinates (``u`` right, ``v`` down, both in ``[0, 1]``), so any
    size shows the same scene. Deterministic: the same size gives the same array.
    """
    width = _check_size("size", size)
    height = width if height is None else _check_size("height", height)
    s = _SUPERSAMPLE
    u = (np.arange(width * s) + 0.5) / (width * s)
    v = (np.arange(height * s) + 0.5) / (height * s)
    img = np.empty((height, width))
    # Every sample depends on its own (u, v) only, so bands of rows give the same picture
    # as one pass while keeping the supersampled arrays small.
    for top in range(0, height, _BAND_ROWS):
        bottom = min(height, top + _BAND_ROWS)
        band = _scene(*np.meshgrid(u, v[top * s : bottom * s]))
        img[top:bottom] = band.reshape(bottom - top, s, width, s).mean(axis=(1, 3))
    # A touch of lens softness ([1, 2, 1] / 4 along each axis), as in a real photograph:
    # pixel-sharp edges would make the flows' ripples dominate the pictures.
    padded = np.pad(img, 1, mode="edge")
    img = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4
    return img.astype(np.float32)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any image Pillow can open, as gray ``(H, W)`` float32 in ``[0, 1]``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - Pillow is in the 'plot' extra
        raise ImportError("reading images needs Pillow: pip install 'symconv[plot]'") from err
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist or is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                return (arr / peak).astype(np.float32)
            if im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                return ((arr - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
            if "A" in im.getbands() or im.mode == "P":
                # Composite transparency over white rather than dropping it silently.
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            gray = im.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from err
    return np.asarray(gray, dtype=np.float32) / 255.0


def _mnist_path() -> resources.abc.Traversable:
    return resources.files("symconv") / "data" / "mnist_5k.npz"


def mnist_digit(index: int) -> np.ndarray:
    """Digit ``index`` of the bundled MNIST subset, ``(28, 28)`` float32 in ``[0, 1]``.

    The digits are numbered training split first, then test split.
    """
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"digit index must be an int, got {type(index).__name__}")
    if index < 0:
        raise ValueError(f"digit index {index} is out of range; it must be >= 0")
    path = _mnist_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled MNIST data {str(path)!r} is missing; reinstall symconv or pass an "
            "image with --image"
        )
    with resources.as_file(path) as real, np.load(real) as data:
        # Either one 'images' array, or a train/test split indexed train first.
        keys = [k for k in ("images", "train_images", "test_images") if k in data.files]
        if not keys:
            raise ValueError(
                f"the bundled MNIST data {str(path)!r} has no 'images' or 'train_images' array "
                f"(found {data.files})"
            )
        if keys[0] == "images":
            keys = ["images"]
        # Read only the split that holds the digit (members are decompressed whole).
        total = 0
        for key in keys:
            split = data[key]
            if index < total + len(split):
                return split[int(index) - total].astype(np.float32) / 255.0
            total += len(split)
        raise ValueError(
            f"digit index {index} is out of range; the bundled data has {total} digits "
            f"(0..{total - 1})"
        )


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is ``size`` pixels, keeping the aspect ratio.

    Shrinking averages (antialiased bilinear), enlarging interpolates bilinearly.
    """
    size = _check_size("size", size)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    h, w = image.shape
    scale = size / max(h, w)
    out_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    if out_hw == (h, w):
        return image.copy()
    x = torch.from_numpy(image)[None, None]
    y = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=scale < 1)
    return y[0, 0].clamp(0, 1).numpy()
