"""``symconv compare``: the command-line front end of :func:`run_compare`.

Kept free of heavy imports (:mod:`symconv.compare.config` imports none): the training code
loads only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import Any

from symconv.compare.config import (
    COLORS,
    DEFAULT_WIDTH,
    DEVICES,
    INVARIANT_KEYS,
    MODELS,
    TRANSFORM_NAMES,
    VARIANTS,
    CompareConfig,
    TrainSettings,
    field_default,
    parse_transforms,
)

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
transforms: {transforms}.
""".format(transforms=", ".join(TRANSFORM_NAMES))


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
_config = partial(field_default, CompareConfig)
_settings = partial(field_default, TrainSettings)


def _option_group_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=_config("data"),
        help="mnist (bundled 5k subset, default), digits (scikit-learn), animals "
        "(animal-shape-mnist), or a folder with train/ and val/ class folders",
    )
    g.add_argument(
        "--size",
        type=_positive,
        default=_config("size"),
        help="image side in pixels (default: the dataset's own; 64 for folders)",
    )
    g.add_argument(
        "--color",
        choices=COLORS,
        default=_config("color"),
        help="channels (default %(default)s: gray built-ins, RGB folders)",
    )
    g.add_argument(
        "--limit",
        type=_positive,
        default=_config("limit"),
        metavar="N",
        help="use at most N images per split (stratified), for quick runs",
    )
    g.add_argument(
        "--workers",
        type=_non_negative,
        default=_config("workers"),
        help="threads decoding an image folder (default %(default)s: one per CPU, at most 8)",
    )


def _option_group_models(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        choices=MODELS,
        default=_settings("model"),
        help="cnn: small 3-layer CNN; resnet: ResNet-18-style net (default %(default)s)",
    )
    widths = ", ".join(f"{w} for {m}" for m, w in DEFAULT_WIDTH.items())
    g.add_argument(
        "--width",
        type=_positive,
        default=_settings("width"),
        help=f"channels of the first stage (default {widths})",
    )
    g.add_argument(
        "--variants",
        default=",".join(_config("variants")),
        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: %(default)s)",
    )
    g.add_argument(
        "--symmetry",
        default=_settings("symmetry"),
        help="spec for the sym variant, e.g. 'hv:50%%' or 'h:25%%,v:25%%' (default %(default)s)",
    )
    g.add_argument(
        "--invariant-to",
        dest="invariant_key",
        choices=INVARIANT_KEYS,
        default=_settings("invariant_key"),
        help="flips the sym-inv variant is invariant to (default %(default)s)",
    )


def _option_group_training(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=_positive,
        default=_settings("epochs"),
        help="epochs per run (default %(default)s)",
    )
    g.add_argument(
        "--batch-size",
        type=_positive,
        default=_settings("batch_size"),
        help="global batch size, split between DDP processes (default %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=_positive_float,
        default=_settings("lr"),
        help="peak learning rate of the one-cycle AdamW schedule (default %(default)s)",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=_settings("weight_decay"),
        help="AdamW weight decay (default %(default)s)",
    )
    g.add_argument(
        "--label-smoothing",
        type=float,
        default=_settings("label_smoothing"),
        help="default %(default)s",
    )
    g.add_argument(
        "--augment",
        action="store_true",
        default=_settings("augment"),
        help="random shifts, +-10 degree rotations and 0.9-1.1x scaling while "
        "training (never flips); off by default so robustness comes from the "
        "layers alone",
    )
    g.add_argument(
        "--runs",
        type=_positive,
        default=_config("runs"),
        help="runs per variant with seeds seed, seed+1, ...; mean and std reported",
    )
    g.add_argument(
        "--seed",
        type=_non_negative,
        default=_config("seed"),
        help="first seed (default %(default)s)",
    )
    g.add_argument(
        "--transforms",
        default="all",
        help="comma-separated test transformations, or 'all' (default)",
    )


def _option_group_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--device",
        choices=DEVICES,
        default=_config("device"),
        help="auto (default): CUDA when available (bf16 autocast, channels_last), else CPU",
    )
    g.add_argument(
        "--threads",
        type=_non_negative,
        default=_config("threads"),
        help="CPU threads (default %(default)s: the idle cores, by the load average; "
        "OMP_NUM_THREADS wins when set)",
    )
    g.add_argument(
        "--out",
        default=_config("out"),
        metavar="DIR",
        help="output folder (default symconv-runs/<data>-<model>-<time>)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        default=_config("resume"),
        help="continue the run in --out (default: the latest matching run) from "
        "its last checkpoint",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=_config("progress"),
        help="no progress bars (automatic when stderr is not a terminal)",
    )
    g.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        default=_config("plots"),
        help="skip the PNG plots",
    )
    # Stops after N epochs as if interrupted (for testing --resume).
    g.add_argument(
        "--max-epochs-this-run",
        type=_positive,
        default=_config("max_epochs_this_run"),
        help=argparse.SUPPRESS,
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare`` on the ``symconv`` command's subparsers.

    Every option's default and choices come from :class:`CompareConfig` and
    :class:`TrainSettings` (and the names in :mod:`symconv.compare.config`).
    """
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
    _option_group_data(p)
    _option_group_models(p)
    _option_group_training(p)
    _option_group_run(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The :class:`CompareConfig` for parsed arguments: every option is the field of
    :class:`CompareConfig` or :class:`TrainSettings` of the same name (``--transforms``
    parsed, ``'all'`` for every transform).

    Raises :class:`~symconv.cli.UsageError` for a bad value (``--symmetry``,
    ``--variants``, ``--transforms``, ...).
    """
    from symconv.cli import UsageError

    given = vars(args)
    try:
        settings = TrainSettings(
            **{
                f.name: given[f.name]
                for f in fields(TrainSettings)
                if f.name in given and f.name != "transforms"
            },
            transforms=tuple(parse_transforms(args.transforms)),
        )
        options = {f.name: given[f.name] for f in fields(CompareConfig) if f.name in given}
        return CompareConfig(**options, settings=settings)
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

    from symconv.compare.memory import keep_freed_memory
    from symconv.compare.runner import run_compare

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
