"""What a convolution does to a whole image: apply a near-identity kernel many times.

A 3x3 kernel close to the identity, applied over and over, moves the whole picture: the
Gaussian kernel blurs it, ``I + eps * A`` (``A``, ``B`` the Sobel kernels) translates it,
and a :class:`symconv.ConvTwist` whose twist kernels are Sobel kernels rotates or scales
it about a center (:mod:`symconv.viz.presets` derives why). :func:`flow_frames` returns
the frames as arrays (for notebooks); :func:`save_strip` and :func:`save_gif`
(:mod:`symconv.viz.drawing`) draw them; ``symconv flow`` wraps all three.
:func:`flow_frames` checks every argument before the first step (:func:`plan_flow`) and
keeps at most :data:`MAX_FRAMES` frames unless told otherwise: they are returned in one
array.

The presets, kernels and drawing functions are importable from here too.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from symconv.core.validate import check_int
from symconv.viz.drawing import (
    ANIMATION_FORMATS,
    STRIP_FORMATS,
    StripLayout,
    check_output_path,
    default_columns,
    save_gif,
    save_strip,
    strip_layout,
)
from symconv.viz.limits import MAX_ABS_EPS, MAX_FRAMES, PADDING_MODES
from symconv.viz.presets import (
    GAUSSIAN,
    MAX_DEFAULT_STEPS,
    PRESETS,
    SOBEL_X,
    SOBEL_Y,
    FlowPreset,
    KernelFlow,
    check_eps,
    check_padding,
    flow_operator,
    get_preset,
    load_kernel,
    validate_kernel,
)

__all__ = [
    "ANIMATION_FORMATS",
    "GAUSSIAN",
    "MAX_ABS_EPS",
    "MAX_DEFAULT_STEPS",
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
    "get_preset",
    "load_kernel",
    "min_every",
    "plan_flow",
    "save_gif",
    "save_strip",
    "strip_layout",
    "validate_kernel",
]


def count_frames(steps: int, every: int) -> int:
    """``len(frame_steps(steps, every))``, without building the list."""
    steps = check_int("steps", steps, 0)
    every = check_int("every", every, 1)
    return steps // every + 1 + (steps % every != 0)


def min_every(steps: int, max_frames: int) -> int | None:
    """The smallest ``every`` that keeps at most ``max_frames`` frames of a ``steps`` run;
    ``None`` when no ``every`` does (``max_frames = 1`` and ``steps > 0``)."""
    steps = check_int("steps", steps, 0)
    max_frames = check_int("max_frames", max_frames, 1)
    if steps == 0:
        return 1
    return None if max_frames == 1 else max(1, math.ceil(steps / (max_frames - 1)))


def frame_steps(steps: int, every: int) -> list[int]:
    """Step counts of the frames: ``0, every, 2 every, ...`` and always ``steps`` itself."""
    steps = check_int("steps", steps, 0)
    every = check_int("every", every, 1)
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
            f"image must be a gray picture of shape (H, W), H, W >= 1, got {tuple(pic.shape)}"
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
    padding = check_padding(padding)
    if eps is not None:
        eps = check_eps(eps)
    if isinstance(preset_or_kernel, str):
        preset = get_preset(preset_or_kernel)
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
        max_frames = check_int("max_frames", max_frames, 1)
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
    *args: Any,
    **kwargs: Any,
) -> np.ndarray:
    """Apply a flow ``steps`` times; the picture after each step in :func:`frame_steps`.

    Takes :func:`plan_flow`'s arguments (the same signature) and runs the plan.

    Args:
        image: gray picture ``(H, W)``; values are used as given (the pictures of
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
    return plan_flow(image, preset_or_kernel, *args, **kwargs).run()


flow_frames.__signature__ = inspect.signature(plan_flow).replace(  # type: ignore[attr-defined]
    return_annotation=np.ndarray
)
