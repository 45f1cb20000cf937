"""The flows of ``symconv flow``: presets, custom kernels, and the one-step operator.

A 3x3 kernel close to the identity, applied over and over, moves the whole picture: the
Gaussian kernel blurs it, ``I + eps * A`` (``A``, ``B`` the Sobel kernels) translates it,
and a :class:`symconv.ConvTwist` whose twist kernels are Sobel kernels rotates or scales
it about a center. :func:`flow_operator` builds one step; :mod:`symconv.viz.flow` applies
it many times.

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
with ``X = 2 j / W``, ``Y = 2 i / H`` and the center ``(cx, cy)`` at the image center. The post
pairs ``(Kx, Ky) = (A, B)`` for scaling and ``(-B, A)`` for rotation, thinking of ``y`` as
pointing up; rows grow downwards, so here the ``y`` kernel's sign is flipped:

- ``scale``: ``(Kx, Ky) = eps * (-A, (H / W) B)``, i.e. ``f(p) -> f(p - s (p - c))`` with
  ``s = 16 eps / W``: the picture grows by ``1 / (1 - s)`` per step (``eps > 0``) or
  shrinks (``eps < 0``);
- ``rotate``: ``(Kx, Ky) = -eps * (B, (H / W) A)``, a rotation by ``16 eps / W`` radians per
  step, counterclockwise on screen for ``eps > 0``.

The ``H / W`` factor undoes ConvTwist's separate scaling of ``X`` and ``Y`` so that a
non-square picture turns rigidly. Explicit (Euler) steps of a transport equation amplify
the finest detail a little each step (by at most ``sqrt(1 + (8 eps')^2)``, ``eps'`` the local
rate in pixels / 8), so many small steps give cleaner pictures than a few large ones.

Boundary handling decides what enters the frame: ``'replicate'`` (the default) smears
the edge pixels inwards, ``'reflect'`` brings in a mirror image of the border, ``'zeros'``
(what ``nn.Conv2d`` does) brings in black. The jump from picture to black is a sharp
edge, and sharp edges are what the Sobel generators transport worst: fine detail moves
slower than the picture (the centered difference underestimates its derivative), and the
finest ripples even travel backwards, so zero padding fills the frame with stripes from
its border.
"""

from __future__ import annotations

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

from symconv.core.validate import check_int
from symconv.viz.limits import MAX_ABS_EPS, PADDING_MODES

__all__ = [
    "GAUSSIAN",
    "IDENTITY",
    "MAX_DEFAULT_STEPS",
    "PRESETS",
    "SOBEL_X",
    "SOBEL_Y",
    "FlowPreset",
    "KernelFlow",
    "check_eps",
    "check_padding",
    "flow_operator",
    "get_preset",
    "load_kernel",
    "validate_kernel",
]

#: Sobel kernel ``A``: ``conv(x, A) ~ 8 d/dx`` (x = column, to the right).
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
#: Sobel kernel ``B``: ``conv(x, B) ~ -8 d/dy`` (y = row, downwards), i.e. ``8 d/dy`` upwards.
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
#: The Gaussian (binomial) blur kernel; its variance is 1/2 pixel^2 along each axis.
GAUSSIAN = tuple(tuple(v / 16 for v in row) for row in ((1, 2, 1), (2, 4, 2), (1, 2, 1)))
#: The identity kernel: one step of it changes nothing.
IDENTITY = ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))
_F_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}

#: Frames a preset's default run shows: steps 0, N/6, 2N/6, ..., N.
_DEFAULT_PANELS = 7
#: Default runs never exceed this many steps (tiny |eps| must then be given with steps).
MAX_DEFAULT_STEPS = 20000


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
        eps = self.default_eps(shape) if eps is None else check_eps(eps)
        rate = abs(self.rate(eps, shape))
        target = self.total * shape[1] ** self.width_power
        if rate == 0 or target / rate > MAX_DEFAULT_STEPS:
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
            "step about its center, counterclockwise for eps > 0",
            eps=None,
            eps_per_width=0.4,
            total=math.pi / 6,
            width_power=0,
            unit="rad",
        ),
        FlowPreset(
            "scale",
            "twist",
            "ConvTwist with twist kernels eps (-A, B); grows the picture about its center by "
            "1 / (1 - 16 eps / W) per step (shrinks it for eps < 0)",
            eps=None,
            eps_per_width=0.4,
            total=math.log(1.5),
            width_power=0,
            unit="log-scale",
        ),
    )
}


def check_eps(eps: object) -> float:
    """``eps`` as a float once it is a finite number with ``|eps| <=`` :data:`MAX_ABS_EPS`."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a number, got {type(eps).__name__} {eps!r}")
    if not (math.isfinite(eps) and abs(eps) <= MAX_ABS_EPS):
        raise ValueError(
            f"eps={eps!r} is not allowed; give a finite number with |eps| <= {MAX_ABS_EPS:g}"
        )
    return float(eps)


def get_preset(name: str) -> FlowPreset:
    """The preset ``name`` of :data:`PRESETS`; ``ValueError`` naming the choices otherwise."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return preset


def check_padding(padding: str) -> str:
    """``padding`` once it is one of :data:`PADDING_MODES`."""
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
            "so the kernel has a center pixel"
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
    except OSError as err:
        if err.filename is None:  # a failed read names no file; the message must
            raise OSError(err.errno, f"cannot read kernel file ({err.strerror})", path) from err
        raise
    return validate_kernel(data, source=f"kernel file {path!r}")


class KernelFlow(nn.Module):
    """One flow step with a fixed ``k x k`` kernel: ``F.conv2d`` on a padded picture.

    Shapes: ``(N, 1, H, W) -> (N, 1, H, W)``.
    """

    def __init__(self, kernel: np.ndarray | Tensor, padding: str = "replicate") -> None:
        super().__init__()
        kernel = torch.as_tensor(validate_kernel(kernel))
        self.padding = check_padding(padding)
        self.register_buffer("kernel", kernel[None, None])

    def forward(self, x: Tensor) -> Tensor:
        p = self.kernel.shape[-1] // 2
        x = F.pad(x, (p, p, p, p), mode=_F_PAD_MODE[self.padding])
        return F.conv2d(x, self.kernel)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel.shape[-1]}, padding={self.padding!r}"


def _conv_preset_kernel(name: str, eps: float) -> np.ndarray:
    identity, a, b = np.array(IDENTITY), np.array(SOBEL_X), np.array(SOBEL_Y)
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
        layer.weight.copy_(torch.tensor(IDENTITY, dtype=dtype)[None, None])
        # Pixel centers run 0..W-1, so the image center (W-1)/2 is X = (W-1)/W.
        layer.center_x.fill_((width - 1) / width)
        layer.center_y.fill_((height - 1) / height)
    layer.set_twist_kernels(kx[None, None], ky[None, None])
    return layer


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
    twist presets' center at the picture's center.
    """
    padding = check_padding(padding)
    height, width = (check_int("shape[0]", shape[0], 1), check_int("shape[1]", shape[1], 1))
    if isinstance(preset_or_kernel, str):
        preset = get_preset(preset_or_kernel)
        if eps is None:
            eps = preset.default_eps((height, width))
        eps = check_eps(eps)
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
