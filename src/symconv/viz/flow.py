"""What a convolution does to a whole image: apply a near-identity kernel many times.

A 3x3 kernel close to the identity, applied over and over, moves the whole picture: the
Gaussian kernel blurs it, ``I + eps * A`` (``A``, ``B`` the Sobel kernels) translates it,
and a :class:`symconv.ConvTwist` whose twist kernels are Sobel kernels rotates or scales
it about a centre. :func:`flow_frames` returns the frames as arrays (for notebooks);
:func:`save_strip` and :func:`save_gif` draw them; ``symconv flow`` wraps all three.
:func:`flow_frames` checks every argument before the first step (:func:`plan_flow`) and
keeps at most :data:`MAX_FRAMES` frames unless told otherwise: they are returned in one array.

Why the presets move the picture the way they do (torch convolutions are
cross-correlations, ``out[i, j] = sum_ab K[a, b] x[i + a - 1, j + b - 1]``; ``i`` is the
row, growing downwards, ``j`` the column, growing to the right)::

    A = [[-1, 0, 1],       conv(x, A) = 8 d/dj x + O(h^3)
         [-2, 0, 2],
         [-1, 0, 1]]
    B = [[ 1,  2,  1],     conv(x, B) = -8 d/di x + O(h^3)
         [ 0,  0,  0],
         [-1, -2, -1]]

so one step of ``I + eps * A`` maps ``f(i, j)`` to ``f(i, j) + 8 eps df/dj ~ f(i, j + 8 eps)``:
the picture moves 8 * eps pixels to the *left* per step. This rate is exact for the
centroid of anything away from the border: the kernel sums to 1 and its first moment
along ``j`` is ``8 eps``. Likewise ``I + eps * B`` moves it ``8 eps`` pixels *down*.

The twist presets use ``ConvTwist``: ``out = x + (X - cx) conv(x, Kx) + (Y - cy) conv(x, Ky)``
with ``X = 2 j / W``, ``Y = 2 i / H`` and the centre ``(cx, cy)`` at the image centre. The post
pairs ``(Kx, Ky) = (A, B)`` for scaling and ``(-B, A)`` for rotation, thinking of ``y`` as
pointing up; rows grow downwards, so here the ``y`` kernel's sign is flipped:

- ``scale``: ``(Kx, Ky) = eps * (-A, (H / W) B)``, i.e. ``f(p) -> f(p - s (p - c))`` with
  ``s = 16 eps / W``: the picture grows by ``1 / (1 - s)`` per step (``eps > 0``) or
  shrinks (``eps < 0``);
- ``rotate``: ``(Kx, Ky) = -eps * (B, (H / W) A)``, a rotation by ``16 eps / W`` radians per
  step, anticlockwise on screen for ``eps > 0``.

The ``H / W`` factor undoes ConvTwist's separate scaling of ``X`` and ``Y`` so that a
non-square picture turns rigidly. Explicit (Euler) steps of a transport equation amplify
the finest detail a little each step (by at most ``sqrt(1 + (8 eps')^2)``, ``eps'`` the local
rate in pixels / 8), so many small steps give cleaner pictures than a few large ones.

Boundary handling decides what enters the frame: ``'replicate'`` (the default) smears
the edge pixels inwards, ``'reflect'`` brings in a mirror image of the border, ``'zeros'``
(what ``nn.Conv2d`` does) brings in black. The jump from picture to black is a sharp
edge, and sharp edges are what the Sobel generators transport worst: fine detail moves
slower than the picture (the centred difference underestimates its derivative), and the
finest ripples even travel backwards, so zero padding fills the frame with stripes from
its border.
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ANIMATION_FORMATS",
    "GAUSSIAN",
    "MAX_ABS_EPS",
    "MAX_FRAMES",
    "PADDING_MODES",
    "PRESETS",
    "SOBEL_X",
    "SOBEL_Y",
    "STRIP_FORMATS",
    "FlowPlan",
    "FlowPreset",
    "KernelFlow",
    "StripLayout",
    "check_output_path",
    "count_frames",
    "default_columns",
    "flow_frames",
    "flow_operator",
    "frame_steps",
    "load_kernel",
    "min_every",
    "plan_flow",
    "save_gif",
    "save_strip",
    "strip_layout",
    "validate_kernel",
]

#: Sobel kernel ``A``: ``conv(x, A) ~ 8 d/dx`` (x = column, to the right).
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
#: Sobel kernel ``B``: ``conv(x, B) ~ -8 d/dy`` (y = row, downwards), i.e. ``8 d/dy`` upwards.
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
#: The Gaussian (binomial) blur kernel; its variance is 1/2 pixel^2 along each axis.
GAUSSIAN = tuple(tuple(v / 16 for v in row) for row in ((1, 2, 1), (2, 4, 2), (1, 2, 1)))
_IDENTITY = ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))

#: Boundary handling, as in ``nn.Conv2d(padding_mode=...)``.
PADDING_MODES = ("zeros", "reflect", "replicate")
_F_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}


#: Largest ``|eps|`` accepted: far beyond any useful flow (``eps = 1`` already moves a picture
#: 8 px per step) and far from overflowing the kernel entries (at most ``2 |eps|``).
MAX_ABS_EPS = 1000.0
#: :func:`flow_frames` keeps at most this many frames unless given ``max_frames``.
MAX_FRAMES = 1000

#: Frames a preset's default run shows: steps 0, N/6, 2N/6, ..., N.
_DEFAULT_PANELS = 7
#: Default runs never exceed this many steps (tiny |eps| must then be given with steps).
_MAX_DEFAULT_STEPS = 20000


@dataclass(frozen=True)
class FlowPreset:
    """A named flow and the default run that shows it well.

    ``eps`` is the strength (the multiple of the generator in the kernels); ``None``
    means ``eps_per_width / W`` for a picture ``W`` pixels wide, which keeps the twist
    flows' per-step motion, and hence their accuracy, the same at every resolution. A
    default run takes as many steps as reach ``total * W ** width_power`` (in the unit of
    :meth:`rate`), so it shows the same change on a picture of any size.
    """

    name: str
    kind: str  # 'conv' (a plain kernel) or 'twist' (a ConvTwist)
    summary: str
    eps: float | None
    eps_per_width: float
    total: float
    width_power: int
    unit: str

    def default_eps(self, shape: tuple[int, int]) -> float:
        return self.eps if self.eps is not None else self.eps_per_width / shape[1]

    def rate(self, eps: float, shape: tuple[int, int]) -> float:
        """Motion per step: px (translate), px^2 of variance (blur), rad or log-scale (twist)."""
        if self.name == "blur":
            return 0.5 * eps
        if self.kind == "conv":
            return 8.0 * eps
        return 16.0 * eps / shape[1]

    def defaults(self, shape: tuple[int, int], eps: float | None = None) -> tuple[float, int, int]:
        """``(eps, steps, every)`` of the default run on a picture of ``shape = (H, W)``."""
        eps = self.default_eps(shape) if eps is None else _check_eps(eps)
        rate = abs(self.rate(eps, shape))
        target = self.total * shape[1] ** self.width_power
        if rate == 0 or target / rate > _MAX_DEFAULT_STEPS:
            raise ValueError(
                f"eps={eps!r} moves the picture too little for a default run of preset "
                f"{self.name!r}; give the number of steps explicitly"
            )
        per_panel = max(1, math.ceil(target / rate / (_DEFAULT_PANELS - 1)))
        return eps, per_panel * (_DEFAULT_PANELS - 1), per_panel


PRESETS: dict[str, FlowPreset] = {
    p.name: p
    for p in (
        FlowPreset(
            "blur",
            "conv",
            "(1 - eps) I + eps G, G = [[1,2,1],[2,4,2],[1,2,1]] / 16; adds eps / 2 px^2 of "
            "variance per step",
            eps=1.0,
            eps_per_width=0.0,
            total=1 / 1600,
            width_power=2,
            unit="px^2",
        ),
        FlowPreset(
            "translate-x",
            "conv",
            "I + eps A (Sobel x); moves the picture 8 eps px LEFT per step",
            eps=0.01,
            eps_per_width=0.0,
            total=0.15,
            width_power=1,
            unit="px",
        ),
        FlowPreset(
            "translate-y",
            "conv",
            "I + eps B (Sobel y); moves the picture 8 eps px DOWN per step",
            eps=0.01,
            eps_per_width=0.0,
            total=0.15,
            width_power=1,
            unit="px",
        ),
        FlowPreset(
            "translate-diag",
            "conv",
            "I + eps (A + B); moves the picture 8 eps px left and 8 eps px down per step",
            eps=0.01,
            eps_per_width=0.0,
            total=0.15,
            width_power=1,
            unit="px",
        ),
        FlowPreset(
            "rotate",
            "twist",
            "ConvTwist with twist kernels -eps (B, A); turns the picture 16 eps / W rad per "
            "step about its centre, anticlockwise for eps > 0",
            eps=None,
            eps_per_width=0.4,
            total=math.pi / 6,
            width_power=0,
            unit="rad",
        ),
        FlowPreset(
            "scale",
            "twist",
            "ConvTwist with twist kernels eps (-A, B); grows the picture about its centre by "
            "1 / (1 - 16 eps / W) per step (shrinks it for eps < 0)",
            eps=None,
            eps_per_width=0.4,
            total=math.log(1.5),
            width_power=0,
            unit="log-scale",
        ),
    )
}


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a number, got {type(eps).__name__} {eps!r}")
    if not (math.isfinite(eps) and abs(eps) <= MAX_ABS_EPS):
        raise ValueError(
            f"eps={eps!r} is not allowed; give a finite number with |eps| <= {MAX_ABS_EPS:g}"
        )
    return float(eps)


def _get_preset(name: str) -> FlowPreset:
    preset = PRESETS.get(name)
    if preset is None:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return preset


def _check_padding(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"padding={padding!r} is not allowed; choose one of {PADDING_MODES}")
    return padding


def validate_kernel(kernel: object, source: str = "kernel") -> np.ndarray:
    """Check a custom kernel: a square ``k x k`` array of finite numbers with ``k`` odd.

    ``source`` names the kernel in error messages (a file name, for instance).
    Returns it as a float64 array.
    """
    if isinstance(kernel, np.ndarray | Tensor):
        rows = np.asarray(kernel.tolist() if isinstance(kernel, Tensor) else kernel).tolist()
    else:
        rows = kernel
    if not isinstance(rows, list | tuple) or not rows:
        raise ValueError(f"{source}: a kernel must be a non-empty list of rows, got {rows!r}")
    k = len(rows)
    for r, row in enumerate(rows):
        if not isinstance(row, list | tuple):
            raise ValueError(f"{source}: row {r} is {row!r}, not a list of numbers")
        if len(row) != k:
            raise ValueError(
                f"{source}: the kernel must be square k x k; row {r} has {len(row)} entries, "
                f"expected {k}"
            )
        for c, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{source}: entry [{r}][{c}] = {value!r} is not a number")
            if not math.isfinite(float(value)):
                raise ValueError(f"{source}: entry [{r}][{c}] = {value!r} is not finite")
    if k % 2 == 0:
        raise ValueError(
            f"{source}: kernel size {k} x {k} is even; the flow needs an odd size (3, 5, ...) "
            "so the kernel has a centre pixel"
        )
    return np.asarray(rows, dtype=np.float64)


def load_kernel(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a custom kernel from a JSON file holding a ``k x k`` list of numbers, ``k`` odd."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"kernel file {path!r} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"kernel file {path!r} is not valid JSON: {err}") from err
    return validate_kernel(data, source=f"kernel file {path!r}")


class KernelFlow(nn.Module):
    """One flow step with a fixed ``k x k`` kernel: ``F.conv2d`` on a padded picture.

    Shapes: ``(N, 1, H, W) -> (N, 1, H, W)``.
    """

    def __init__(self, kernel: np.ndarray | Tensor, padding: str = "replicate") -> None:
        super().__init__()
        kernel = torch.as_tensor(validate_kernel(kernel))
        self.padding = _check_padding(padding)
        self.register_buffer("kernel", kernel[None, None])

    def forward(self, x: Tensor) -> Tensor:
        p = self.kernel.shape[-1] // 2
        x = F.pad(x, (p, p, p, p), mode=_F_PAD_MODE[self.padding])
        return F.conv2d(x, self.kernel)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel.shape[-1]}, padding={self.padding!r}"


def _conv_preset_kernel(name: str, eps: float) -> np.ndarray:
    identity, a, b = np.array(_IDENTITY), np.array(SOBEL_X), np.array(SOBEL_Y)
    if name == "blur":
        return (1 - eps) * identity + eps * np.array(GAUSSIAN)
    generator = {"translate-x": a, "translate-y": b, "translate-diag": a + b}[name]
    return identity + eps * generator


def _twist_flow(
    name: str, eps: float, shape: tuple[int, int], padding: str, dtype: torch.dtype
) -> nn.Module:
    from symconv.nn.twist import ConvTwist

    height, width = shape
    a = torch.tensor(SOBEL_X, dtype=dtype)
    b = torch.tensor(SOBEL_Y, dtype=dtype)
    aspect = height / width  # undoes ConvTwist's separate X = 2j/W, Y = 2i/H scaling
    if name == "rotate":
        kx, ky = -eps * b, -eps * aspect * a
    else:  # scale
        kx, ky = -eps * a, eps * aspect * b
    layer = ConvTwist(1, 1, kernel_size=3, bias=False, padding_mode=padding, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(_IDENTITY, dtype=dtype)[None, None])
        # Pixel centres run 0..W-1, so the image centre (W-1)/2 is X = (W-1)/W.
        layer.center_x.fill_((width - 1) / width)
        layer.center_y.fill_((height - 1) / height)
    layer.set_twist_kernels(kx[None, None], ky[None, None])
    return layer


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} is not allowed; it must be >= {minimum}")
    return int(value)


def flow_operator(
    preset_or_kernel: str | np.ndarray | Tensor | Sequence[Sequence[float]],
    shape: tuple[int, int],
    eps: float | None = None,
    padding: str = "replicate",
    dtype: torch.dtype = torch.float64,
) -> nn.Module:
    """The module that performs one step of a flow on ``(N, 1, H, W)`` pictures of ``shape``.

    ``preset_or_kernel`` is a name from :data:`PRESETS` or a ``k x k`` kernel (``k`` odd).
    ``eps`` (presets only) overrides the preset's strength; ``shape = (H, W)`` places the
    twist presets' centre at the picture's centre.
    """
    padding = _check_padding(padding)
    height, width = (_check_int("shape[0]", shape[0], 1), _check_int("shape[1]", shape[1], 1))
    if isinstance(preset_or_kernel, str):
        preset = _get_preset(preset_or_kernel)
        if eps is None:
            eps = preset.default_eps((height, width))
        eps = _check_eps(eps)
        if preset.kind == "twist":
            op = _twist_flow(preset.name, float(eps), (height, width), padding, dtype)
        else:
            op = KernelFlow(_conv_preset_kernel(preset.name, float(eps)), padding)
        k = 3
    else:
        if eps is not None:
            raise ValueError("eps applies to presets only; scale a custom kernel yourself")
        op = KernelFlow(validate_kernel(preset_or_kernel), padding)
        k = op.kernel.shape[-1]
    if padding == "reflect" and min(height, width) <= k // 2:
        raise ValueError(
            f"reflect padding needs a picture larger than {k // 2} pixels on each side, got "
            f"{height} x {width}"
        )
    return op.to(dtype)


def count_frames(steps: int, every: int) -> int:
    """``len(frame_steps(steps, every))``, without building the list."""
    steps = _check_int("steps", steps, 0)
    every = _check_int("every", every, 1)
    return steps // every + 1 + (steps % every != 0)


def min_every(steps: int, max_frames: int) -> int | None:
    """The smallest ``every`` that keeps at most ``max_frames`` frames of a ``steps`` run;
    ``None`` when no ``every`` does (``max_frames = 1`` and ``steps > 0``)."""
    steps = _check_int("steps", steps, 0)
    max_frames = _check_int("max_frames", max_frames, 1)
    if steps == 0:
        return 1
    return None if max_frames == 1 else max(1, math.ceil(steps / (max_frames - 1)))


def frame_steps(steps: int, every: int) -> list[int]:
    """Step counts of the frames: ``0, every, 2 every, ...`` and always ``steps`` itself."""
    steps = _check_int("steps", steps, 0)
    every = _check_int("every", every, 1)
    out = list(range(0, steps + 1, every))
    if out[-1] != steps:
        out.append(steps)
    return out


@dataclass(frozen=True)
class FlowPlan:
    """A checked flow run, ready to compute: see :func:`plan_flow`.

    ``image`` is the picture ``(1, 1, H, W)`` on the device in the working dtype,
    ``operator`` one step ``(N, 1, H, W) -> (N, 1, H, W)``, ``kept`` the steps whose
    pictures :meth:`run` returns.
    """

    image: Tensor
    operator: nn.Module
    steps: int
    kept: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the picture."""
        return tuple(self.image.shape[-2:])  # type: ignore[return-value]

    @property
    def frame_bytes(self) -> int:
        """Size in bytes of the array :meth:`run` returns."""
        height, width = self.shape
        return len(self.kept) * height * width * self.image.element_size()

    def run(self) -> np.ndarray:
        """Apply the operator ``steps`` times; the frames ``(len(kept), H, W)`` on the CPU."""
        height, width = self.shape
        frames = torch.empty((len(self.kept), height, width), dtype=self.image.dtype)
        x, slot = self.image, 0
        with torch.no_grad():
            for step in range(self.steps + 1):
                if step:
                    x = self.operator(x)
                if step == self.kept[slot]:
                    frames[slot].copy_(x[0, 0])  # device to host when on a GPU
                    slot += 1
        return frames.numpy()


def _check_image(image: object) -> Tensor:
    if isinstance(image, Tensor):
        pic = image.detach()
    else:
        arr = np.asarray(image)
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                f"image must be an array of numbers, got {type(image).__name__} of dtype "
                f"{arr.dtype}"
            )
        pic = torch.as_tensor(arr)
    if pic.ndim != 2 or pic.numel() == 0:
        raise ValueError(
            f"image must be a grey picture of shape (H, W), H, W >= 1, got {tuple(pic.shape)}"
        )
    return pic


def plan_flow(
    image: np.ndarray | Tensor,
    preset_or_kernel: str | np.ndarray | Tensor | Sequence[Sequence[float]],
    steps: int | None = None,
    every: int | None = None,
    padding: str = "replicate",
    eps: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    max_frames: int | None = MAX_FRAMES,
) -> FlowPlan:
    """Check the arguments of :func:`flow_frames` and build its operator; computes nothing.

    Every argument is checked here (``TypeError`` for a wrong type, ``ValueError`` for a
    bad value, each naming the argument), so a mistake surfaces before a long run starts.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available here")
    pic = _check_image(image).to(dtype)
    if not torch.isfinite(pic).all():
        raise ValueError("image contains NaN or infinite values")
    shape = (pic.shape[0], pic.shape[1])
    padding = _check_padding(padding)
    if eps is not None:
        eps = _check_eps(eps)
    if isinstance(preset_or_kernel, str):
        preset = _get_preset(preset_or_kernel)
        if steps is None or every is None:
            _, default_steps, default_every = preset.defaults(shape, eps)
            steps = default_steps if steps is None else steps
            every = default_every if every is None else every
    elif steps is None:
        raise ValueError("steps must be given for a custom kernel")
    elif every is None:
        every = 1
    n_frames = count_frames(steps, every)
    if max_frames is not None:
        max_frames = _check_int("max_frames", max_frames, 1)
        if n_frames > max_frames:
            least = min_every(steps, max_frames)
            fix = f"raise every to {least} or more, or " if least is not None else ""
            raise ValueError(
                f"steps={steps} with every={every} keeps {n_frames} frames, more than "
                f"max_frames={max_frames}; {fix}raise max_frames"
            )
    op = flow_operator(preset_or_kernel, shape, eps=eps, padding=padding, dtype=dtype)
    return FlowPlan(
        image=pic.to(device)[None, None],
        operator=op.to(device),
        steps=int(steps),
        kept=tuple(frame_steps(steps, every)),
    )


def flow_frames(
    image: np.ndarray | Tensor,
    preset_or_kernel: str | np.ndarray | Tensor | Sequence[Sequence[float]],
    steps: int | None = None,
    every: int | None = None,
    padding: str = "replicate",
    eps: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    max_frames: int | None = MAX_FRAMES,
) -> np.ndarray:
    """Apply a flow ``steps`` times; the picture after each step in :func:`frame_steps`.

    Args:
        image: grey picture ``(H, W)``; values are used as given (the pictures of
            :mod:`symconv.viz.images` lie in ``[0, 1]``, the range :func:`save_strip` shows).
        preset_or_kernel: a preset name (see :data:`PRESETS`) or a ``k x k`` kernel.
        steps: number of applications (``>= 0``); ``None``: the preset's default run
            (:meth:`FlowPreset.defaults`).
        every: keep a frame every ``every`` steps (``>= 1``; the last step is always
            kept); ``None``: the preset's default, or every step for a custom kernel.
        padding: ``'replicate'`` (default), ``'reflect'`` or ``'zeros'``: what enters the
            frame (see the module docstring).
        eps: strength of a preset (default: the preset's own; ``|eps| <=`` :data:`MAX_ABS_EPS`);
            not for custom kernels.
        device, dtype: where and in what precision to compute.
        max_frames: refuse runs that keep more frames than this (default :data:`MAX_FRAMES`;
            the frames are returned in one array); ``None``: no limit.

    Returns:
        ``(len(frame_steps(steps, every)), H, W)`` array of ``dtype``, frame 0 the input.

    Raises:
        TypeError, ValueError: for a bad argument, before anything is computed
            (see :func:`plan_flow`).
    """
    return plan_flow(
        image, preset_or_kernel, steps, every, padding, eps, device, dtype, max_frames
    ).run()


# -- drawing ------------------------------------------------------------------------------


#: Formats :func:`save_strip` writes, by file extension (Pillow's format names).
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
#: Formats :func:`save_gif` writes (an animation), by file extension.
ANIMATION_FORMATS = {".gif": "GIF"}


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
    n_panels = _check_int("n_panels", n_panels, 1)
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
    n_panels = _check_int("n_panels", n_panels, 1)
    height, width = shape
    if zoom is None:
        zoom = max(1, math.ceil(_MIN_PANEL / max(height, width)))
    zoom = _check_int("zoom", zoom, 1)
    columns = default_columns(n_panels) if columns is None else _check_int("columns", columns, 1)
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


def _font(size: int):  # type: ignore[no-untyped-def]
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
        draw.text((layout.margin, layout.margin), title, fill=0, font=_font(14))
    label_font = _font(12)
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
    duration_ms = _check_int("duration_ms", duration_ms, 1)
    check_output_path(path, animation=True)
    layout = strip_layout(1, frames.shape[1:], zoom=zoom, title=False)
    font = _font(12)
    images = []
    for frame, step in zip(frames, steps, strict=True):
        canvas = Image.new(
            "L", (layout.panel_width, layout.panel_height + layout.label_height), 255
        )
        canvas.paste(_panel(frame, layout.zoom, normalize), (0, layout.label_height))
        ImageDraw.Draw(canvas).text((4, 3), f"step {step}", fill=0, font=font)
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
