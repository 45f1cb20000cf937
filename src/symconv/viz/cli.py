"""``symconv flow`` and ``symconv filters``: the command-line side of :mod:`symconv.viz`.

Only :mod:`argparse` and :mod:`symconv.viz.limits` (the defaults, choices and limits this
module shares with the library) are imported at module level; torch, Pillow and the
drawing code load when a command runs, so ``symconv --help`` stays fast. Mistakes in the options are
:class:`symconv.cli.UsageError` (one line, exit code 2), found before anything is computed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from symconv.viz.limits import (
    CLI_MAX_FRAMES,
    DEFAULT_PADDING,
    DEFAULT_SIZE,
    FILTER_MAX_IN,
    FILTER_MAX_ROWS,
    MAX_ABS_EPS,
    MAX_FRAME_BYTES,
    MAX_SIZE,
    MIN_SIZE,
    PADDING_MODES,
    PRESET_HELP,
    STRIP_FORMATS,
)

__all__ = ["add_parser", "run_filters", "run_flow"]


def _preset_list() -> str:
    return "\n".join(f"  {name:<15} {text}" for name, text in PRESET_HELP.items())


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``flow`` and ``filters`` subcommands."""
    _add_flow_parser(subparsers)
    _add_filters_parser(subparsers)


def _add_flow_parser(subparsers: argparse._SubParsersAction) -> None:
    flow = subparsers.add_parser(
        "flow",
        help="show what a convolution applied many times does to a picture",
        description=(
            "Apply a near-identity convolution (a preset or your kernel) to a picture many "
            "times and draw the picture after 0, M, 2M, ..., N steps side by side. The "
            "frames are the arrays symconv.viz.flow_frames returns."
        ),
        epilog=(
            "presets (eps = multiple of the Sobel generators; W = picture width):\n"
            f"{_preset_list()}\n\n"
            "Padding decides what enters the frame: replicate (default) smears the edge\n"
            "pixels inwards, reflect brings in a mirror image, zeros brings in black (as\n"
            "nn.Conv2d does) and with it stripes from the sharp black edge."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = flow.add_mutually_exclusive_group()
    what.add_argument("--preset", metavar="NAME", help="a preset (see --list-presets)")
    what.add_argument(
        "--kernel", metavar="FILE", help="JSON file with a k x k list of numbers, k odd"
    )
    what.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    flow.add_argument(
        "--eps",
        type=_float,
        default=None,
        help=(
            f"strength of the preset, |eps| <= {MAX_ABS_EPS:g} (default: the preset's; twist "
            "presets: 0.4 / W)"
        ),
    )
    flow.add_argument(
        "--steps", type=int, default=None, help="applications N (default: per preset)"
    )
    flow.add_argument(
        "--every", type=int, default=None, help="draw a frame every M steps (default: N / 6)"
    )
    flow.add_argument(
        "--max-frames",
        type=int,
        default=CLI_MAX_FRAMES,
        metavar="F",
        help=(
            f"refuse a run that keeps more than F frames (default: {CLI_MAX_FRAMES}); "
            "all frames are held in memory, 8 bytes a pixel, at most 2 GiB in all"
        ),
    )
    flow.add_argument(
        "--columns",
        type=int,
        default=None,
        metavar="C",
        help="frames per row of the picture (default: one row up to 10 frames, else rows "
        "of at most 10)",
    )
    _add_picture_options(flow)
    flow.set_defaults(func=run_flow)


def _add_picture_options(flow: argparse.ArgumentParser) -> None:
    """The options of ``symconv flow`` about the picture: input, size, padding, output."""
    src = flow.add_mutually_exclusive_group()
    src.add_argument("--image", metavar="PATH", help="any picture Pillow reads (made gray)")
    src.add_argument(
        "--digit", type=int, metavar="INDEX", help="a digit from the bundled MNIST data"
    )
    flow.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"resize so the longer side is SIZE px, {MIN_SIZE} to {MAX_SIZE} "
        f"(default: {DEFAULT_SIZE}; digits stay 28)",
    )
    flow.add_argument(
        "--padding",
        choices=PADDING_MODES,
        default=DEFAULT_PADDING,
        help="boundary handling: what enters the frame (default: %(default)s)",
    )
    flow.add_argument(
        "--out",
        default=None,
        help="output picture, its format from the extension: "
        f"{', '.join(ext.lstrip('.') for ext in STRIP_FORMATS)} (default: flow_<preset>.png)",
    )
    flow.add_argument(
        "--gif",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="also write an animation, FILE.gif (default name: --out's with .gif)",
    )
    flow.add_argument(
        "--normalize", action="store_true", help="stretch each frame to its own range"
    )
    flow.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _add_filters_parser(subparsers: argparse._SubParsersAction) -> None:
    filters = subparsers.add_parser(
        "filters",
        help="draw a trained model's filters, each orbit of a symmetric layer in one row",
        description=(
            "Draw the filters of one convolution layer of a checkpoint. CHECKPOINT is a "
            "torch.save'd nn.Module, a dict whose 'model' entry is an nn.Module or a "
            "state_dict, or a bare state_dict. Symmetric layers are recognized from the "
            "module, or for a state_dict from a 'symmetry' entry {layer: spec} and an "
            "'out_channels' entry {layer: count}; other layers are drawn one filter per row."
        ),
    )
    filters.add_argument("checkpoint", metavar="CHECKPOINT")
    filters.add_argument(
        "--layer", default=None, help="layer name (default: the first convolution)"
    )
    filters.add_argument(
        "--out",
        default="filters.png",
        help="output picture, format from the extension: .png, .jpg, ... (default: filters.png)",
    )
    filters.add_argument(
        "--max-rows",
        type=int,
        default=FILTER_MAX_ROWS,
        help="draw at most this many rows: orbits, then plain filters 8 a row "
        "(default: %(default)s)",
    )
    filters.add_argument(
        "--max-in",
        type=int,
        default=FILTER_MAX_IN,
        help="draw at most this many input channels (default: %(default)s)",
    )
    filters.add_argument(
        "--list-layers", action="store_true", help="list the drawable layers and exit"
    )
    filters.add_argument(
        "--trust",
        action="store_true",
        help="allow a checkpoint that pickles a whole nn.Module (runs code from the file)",
    )
    filters.set_defaults(func=run_filters)


def _check_options(args: argparse.Namespace) -> None:
    """The checks that need nothing but the numbers given."""
    from symconv.cli import UsageError

    if args.steps is not None and args.steps < 0:
        raise UsageError(f"--steps {args.steps} is not allowed; give 0 or more")
    if args.every is not None and args.every <= 0:
        raise UsageError(f"--every {args.every} is not allowed; give 1 or more")
    if args.size is not None and not MIN_SIZE <= args.size <= MAX_SIZE:
        raise UsageError(
            f"--size {args.size} is not allowed; give {MIN_SIZE} to {MAX_SIZE} (pixels)"
        )
    if args.eps is not None and abs(args.eps) > MAX_ABS_EPS:
        raise UsageError(f"--eps {args.eps:g} is not allowed; give |eps| <= {MAX_ABS_EPS:g}")
    if args.max_frames < 1:
        raise UsageError(f"--max-frames {args.max_frames} is not allowed; give 1 or more")
    if args.columns is not None and args.columns < 1:
        raise UsageError(f"--columns {args.columns} is not allowed; give 1 or more")


def _check_output(option: str, path: str, animation: bool = False) -> None:
    """:func:`symconv.viz.drawing.check_output_path` as a one-line ``UsageError`` naming
    ``option``."""
    from symconv.cli import UsageError, describe_os_error
    from symconv.viz import drawing

    try:
        drawing.check_output_path(path, animation=animation)
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None
    except OSError as err:
        raise UsageError(f"{option}: {describe_os_error(err)}") from None


def _output_paths(args: argparse.Namespace, name: str) -> tuple[str, str | None]:
    """``(--out, --gif or None)`` with their defaults, checked: format and directory."""
    from symconv.cli import UsageError

    out = args.out or f"flow_{name}.png"
    gif = None if args.gif is None else args.gif or os.path.splitext(out)[0] + ".gif"
    for option, path in (("--out", out), ("--gif", gif)):
        if path is not None:
            _check_output(option, path, animation=option == "--gif")
    if gif is not None and os.path.abspath(gif) == os.path.abspath(out):
        raise UsageError(f"--gif {gif} would overwrite --out; give another name")
    return out, gif


def _load_picture(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from symconv.cli import UsageError
    from symconv.viz import images

    if args.image is not None:
        try:
            pic = images.load_image(args.image)
        # Not a picture, or no such file (as in `filters`); an unreadable one stays an OSError.
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(str(err)) from None
        return images.resize_image(pic, args.size or DEFAULT_SIZE), os.path.basename(args.image)
    if args.digit is not None:
        try:
            pic = images.mnist_digit(args.digit)
        except ValueError as err:
            raise UsageError(f"--digit: {err}") from None
        return (pic if args.size is None else images.resize_image(pic, args.size)), (
            f"digit {args.digit}"
        )
    return images.default_image(args.size or DEFAULT_SIZE), "default picture"


def _device(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import torch

    from symconv.cli import UsageError

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UsageError(f"--device {args.device!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device!r}: CUDA is not available here")
    return device


def _flow_source(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """``(preset or None, preset name or kernel array, name for the output)``."""
    from symconv.cli import UsageError
    from symconv.viz import flow as flow_mod

    if args.preset is not None:
        try:
            preset = flow_mod.get_preset(args.preset)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return preset, args.preset, args.preset
    if args.eps is not None:
        raise UsageError("--eps applies to presets only; scale your kernel file instead")
    try:
        kernel = flow_mod.load_kernel(args.kernel)
    # Malformed, or no such file; an unreadable one stays an OSError.
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    return None, kernel, "kernel"


def _run_length(
    args: argparse.Namespace,
    preset,
    shape: tuple[int, int],
    name: str,  # type: ignore[no-untyped-def]
) -> tuple[float | None, int, int]:
    """``(eps, steps, every)``: a preset's own run (7 frames reaching a visible change)
    unless given; for a kernel, 12 steps and a frame every N / 6."""
    from symconv.cli import UsageError
    from symconv.viz import flow as flow_mod

    if preset is not None:
        eps = preset.default_eps(shape) if args.eps is None else args.eps
        if args.steps is None:
            try:
                _, steps, default_every = preset.defaults(shape, eps)
            except ValueError:
                given = (
                    f"--eps {args.eps:g}"
                    if args.eps is not None
                    else f"the default eps on a {shape[1]} px wide picture"
                )
                raise UsageError(
                    f"{given} moves the picture too little for a default run of {name} "
                    f"(over {flow_mod.MAX_DEFAULT_STEPS} steps); give --steps and --every"
                ) from None
        else:
            steps, default_every = args.steps, max(1, args.steps // 6)
    else:
        eps = None
        steps = 12 if args.steps is None else args.steps
        default_every = max(1, steps // 6)
    return eps, steps, default_every if args.every is None else args.every


def _plan(args: argparse.Namespace, pic, what, eps, steps: int, every: int, device):  # type: ignore[no-untyped-def]
    """The checked :class:`~symconv.viz.flow.FlowPlan`, its frames within the limits."""
    from symconv.cli import UsageError
    from symconv.viz import flow as flow_mod

    n_frames = flow_mod.count_frames(steps, every)
    if n_frames > args.max_frames:
        least = flow_mod.min_every(steps, args.max_frames)
        fix = f"give --every {least} or more, or " if least is not None else ""
        raise UsageError(
            f"{steps} steps with a frame every {every} give {n_frames} frames, more than "
            f"--max-frames {args.max_frames}; {fix}raise --max-frames"
        )
    try:
        plan = flow_mod.plan_flow(
            pic, what, steps, every, padding=args.padding, eps=eps, device=device
        )
    except ValueError as err:  # what only the picture can tell, e.g. too small to reflect
        raise UsageError(str(err)) from None
    if plan.frame_bytes > MAX_FRAME_BYTES:
        raise UsageError(
            f"{n_frames} frames of {pic.shape[1]}x{pic.shape[0]} px take "
            f"{plan.frame_bytes / 2**30:.1f} GiB, over the {MAX_FRAME_BYTES / 2**30:g} GiB "
            "limit; lower --size or --max-frames, or raise --every"
        )
    return plan


def run_flow(args: argparse.Namespace) -> int:
    """Run ``symconv flow``; returns the exit code.

    Every option is checked (and the output paths too) before the flow is computed.
    """
    from symconv.cli import UsageError

    if args.list_presets:
        print(_preset_list())
        return 0
    if args.preset is None and args.kernel is None:
        raise UsageError("give --preset NAME or --kernel FILE (see --list-presets)")
    _check_options(args)
    device = _device(args)
    preset, what, name = _flow_source(args)
    out, gif = _output_paths(args, name)
    pic, source = _load_picture(args)
    eps, steps, every = _run_length(args, preset, pic.shape, name)
    plan = _plan(args, pic, what, eps, steps, every, device)

    from symconv.viz import flow as flow_mod

    frames = plan.run()
    kept = list(plan.kept)
    label = (
        f"{name} eps={eps:.4g}" if eps is not None else f"kernel {os.path.basename(args.kernel)}"
    )
    title = f"{label}, {source} {pic.shape[1]}x{pic.shape[0]}, {args.padding} padding"
    layout = flow_mod.save_strip(
        frames, kept, out, title=title, normalize=args.normalize, columns=args.columns
    )
    message = (
        f"wrote {out} ({layout.n_panels} frames in {layout.rows} row"
        f"{'s' if layout.rows > 1 else ''}, steps {kept[0]}..{kept[-1]})"
    )
    if preset is not None:
        rate = preset.rate(eps, pic.shape)
        message += f"; {preset.unit} per step: {rate:.4g}, total {rate * steps:.4g}"
        if preset.unit == "rad":
            message += f" ({math.degrees(rate * steps):.1f} degrees)"
    if gif is not None:
        n = flow_mod.save_gif(frames, kept, gif, normalize=args.normalize)
        message += f"; wrote {gif} ({n} frames)"
    if not all(map(math.isfinite, (float(frames.min()), float(frames.max())))):
        print("warning: the frames contain inf/NaN: the flow blew up", file=sys.stderr)
    print(message)
    return 0


def run_filters(args: argparse.Namespace) -> int:
    """Run ``symconv filters``; returns the exit code."""
    from symconv.cli import UsageError
    from symconv.viz import filters as filters_mod

    for flag, value in (("--max-rows", args.max_rows), ("--max-in", args.max_in)):
        if value < 1:
            raise UsageError(f"{flag} {value} is not allowed; give 1 or more")
    _check_output("--out", args.out)  # before the checkpoint is read: no wasted work
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint {args.checkpoint!r} does not exist or is not a file")
    try:
        # Its ValueErrors are all about the file: unreadable, pickled, of another kind.
        model = filters_mod.load_checkpoint(args.checkpoint, trust=args.trust)
        layers = filters_mod.layers_of(model)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.list_layers:
        for name, info in layers.items():
            print(f"{name}: {info.describe()}")
        return 0
    if not layers:
        raise UsageError(f"{args.checkpoint!r} holds no 2-D convolution to draw")
    if args.layer is not None and args.layer not in layers:
        raise UsageError(
            f"layer {args.layer!r} is not a 2-D convolution here; choose one of "
            f"{', '.join(map(repr, layers))}"
        )
    result = filters_mod.plot_filters(
        layers, args.out, layer=args.layer, max_rows=args.max_rows, max_in=args.max_in
    )
    print(f"wrote {args.out} (layer {result.layer}: {result.describe()})")
    return 0
