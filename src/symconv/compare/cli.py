"""``symconv compare``: the command-line front end of :func:`run_compare`.

Kept free of heavy imports: the training code loads only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_parser", "config_from_args", "run"]

_EPILOG = """\
examples:
  symconv compare                                   # MNIST subset, cnn, all variants
  symconv compare --variants plain,twist --runs 3
  symconv compare --data animals --model resnet --epochs 10
  symconv compare --data ~/data/imagenette2-160 --size 96 --model resnet --device cuda
  torchrun --nproc_per_node 4 -m symconv compare --data ~/data/imagewoof2 --size 128
  symconv compare --resume --out symconv-runs/mnist-cnn-20250101-120000

variants: plain (as built); sym (convert(model, 'symmetric', symmetry=--symmetry));
sym-inv (every conv symmetric with orbit pooling: exactly invariant to the
--invariant-to flips); twist (3x3 convs converted to ConvTwist).
transforms: clean, hflip, vflip, rot90, rot+15, rot-15, scale0.8, scale1.2.
"""


def _number(kind: type, minimum: float, strict: bool) -> Callable[[str], Any]:
    """An argparse ``type`` parsing ``kind`` and requiring ``> minimum`` (strict) or ``>=``."""
    noun = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    return parse


_positive = _number(int, 1, strict=False)
_non_negative = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare`` on the ``symconv`` command's subparsers."""
    p = subparsers.add_parser(
        "compare",
        help="train layer variants on real data and compare accuracy, robustness and cost",
        description=(
            "Train plain, symmetric, flip-invariant and twisted versions of one network on the "
            "same data with the same seeds, then compare clean accuracy, accuracy under flips, "
            "rotations and rescaling, parameters, throughput and memory. Writes results.json, "
            "results.csv, plots and per-epoch checkpoints to --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="mnist",
        help="mnist (bundled 5k subset, default), digits (scikit-learn), animals "
        "(animal-shape-mnist), or a folder with train/ and val/ class folders",
    )
    g.add_argument(
        "--size",
        type=_positive,
        default=None,
        help="image side in pixels (default: the dataset's own; 64 for folders)",
    )
    g.add_argument(
        "--color",
        choices=("auto", "gray", "rgb"),
        default="auto",
        help="channels (default: greyscale built-ins, RGB folders)",
    )
    g.add_argument(
        "--limit",
        type=_positive,
        default=None,
        metavar="N",
        help="use at most N images per split (stratified), for quick runs",
    )
    g.add_argument(
        "--workers",
        type=_non_negative,
        default=0,
        help="threads decoding an image folder (0: one per CPU, at most 8)",
    )

    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        choices=("cnn", "resnet"),
        default="cnn",
        help="small 3-layer CNN (default) or ResNet-18-style net",
    )
    g.add_argument(
        "--width",
        type=_positive,
        default=None,
        help="channels of the first stage (default 16 for cnn, 32 for resnet)",
    )
    g.add_argument(
        "--variants",
        default="plain,sym,sym-inv,twist",
        help="comma-separated subset of plain, sym, sym-inv, twist (default: all four)",
    )
    g.add_argument(
        "--symmetry",
        default="hv:50%",
        help="spec for the sym variant, e.g. 'hv:50%%' or 'h:25%%,v:25%%' (default hv:50%%)",
    )
    g.add_argument(
        "--invariant-to",
        dest="invariant_key",
        choices=("h", "v", "hv"),
        default="hv",
        help="flips the sym-inv variant is invariant to (default hv)",
    )

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive, default=3, help="epochs per run (default 3)")
    g.add_argument(
        "--batch-size",
        type=_positive,
        default=64,
        help="global batch size, split between DDP processes (default 64)",
    )
    g.add_argument(
        "--lr",
        type=_positive_float,
        default=4e-3,
        help="peak learning rate of the one-cycle AdamW schedule (default 4e-3)",
    )
    g.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    g.add_argument(
        "--augment",
        action="store_true",
        help="random shifts, +-10 degree rotations and 0.9-1.1x scaling while "
        "training (never flips); off by default so robustness comes from the "
        "layers alone",
    )
    g.add_argument(
        "--runs",
        type=_positive,
        default=1,
        help="runs per variant with seeds seed, seed+1, ...; mean and std reported",
    )
    g.add_argument("--seed", type=_non_negative, default=0, help="first seed (default 0)")
    g.add_argument(
        "--transforms",
        default="all",
        help="comma-separated test transformations, or 'all' (default)",
    )

    g = p.add_argument_group("run")
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when available (bf16 autocast, channels_last), else CPU",
    )
    g.add_argument(
        "--threads",
        type=_non_negative,
        default=0,
        help="CPU threads (default 0: the idle cores, by the load average; OMP_NUM_THREADS "
        "wins when set)",
    )
    g.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default symconv-runs/<data>-<model>-<time>)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (default: the latest matching run) from "
        "its last checkpoint",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (automatic when stderr is not a terminal)",
    )
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    # Stops after N epochs as if interrupted (for testing --resume).
    g.add_argument("--max-epochs-this-run", type=_positive, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The :class:`~symconv.compare.runner.CompareConfig` for parsed arguments.

    Raises :class:`~symconv.cli.UsageError` for a bad value (``--symmetry``,
    ``--variants``, ``--transforms``, ...).
    """
    from symconv.cli import UsageError
    from symconv.compare.runner import CompareConfig
    from symconv.compare.train import TrainSettings
    from symconv.compare.transforms import parse_transforms

    try:
        settings = TrainSettings(
            model=args.model,
            width=args.width,
            symmetry=args.symmetry,
            invariant_key=args.invariant_key,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            augment=args.augment,
            transforms=tuple(parse_transforms(args.transforms)),
        )
        return CompareConfig(
            data=args.data,
            variants=args.variants,
            runs=args.runs,
            seed=args.seed,
            size=args.size,
            color=args.color,
            limit=args.limit,
            settings=settings,
            out=args.out,
            resume=args.resume,
            device=args.device,
            workers=args.workers,
            progress=args.progress,
            plots=args.plots,
            max_epochs_this_run=args.max_epochs_this_run,
            threads=args.threads,
        )
    except ValueError as err:  # the options' own checks: a bad value the user gave
        raise UsageError(str(err)) from err


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, ``kill``), handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``symconv compare``; returns the exit code (128 + the signal number
    after an interruption: 130 for Ctrl-C, 143 for SIGTERM)."""
    import signal
    import threading

    config = config_from_args(args)

    from symconv.compare.runner import run_compare
    from symconv.compare.train import keep_freed_memory

    keep_freed_memory()  # this process is ours: trade peak-heap retention for speed
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        results = run_compare(config, command=list(sys.argv))
    except KeyboardInterrupt as err:
        out = getattr(err, "out", None) or config.out
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        print(
            f"\nsymconv compare: interrupted ({signal.Signals(signum).name}); finished epochs "
            "are checkpointed, continue with --resume" + (f" --out {out}" if out else ""),
            file=sys.stderr,
        )
        return 128 + int(signum)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0 if results["status"] in ("complete", "interrupted") else 1
