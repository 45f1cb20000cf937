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
    GROUP_VARIANTS,
    GROUP_WIDTHS,
    INVARIANT_KEYS,
    MIN_LIMIT,
    MIN_SIZE,
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
  symconv compare                                   # MNIST subset, cnn, default variants
  symconv compare --variants plain,twist --runs 3
  symconv compare --data animals --model resnet --epochs 10
  symconv compare --data ~/data/imagenette2-160 --size 96 --model resnet --device cuda
  torchrun --nproc_per_node 4 -m symconv compare --data ~/data/imagewoof2 --size 128
  symconv compare --resume --out symconv-runs/mnist-cnn-20250101-120000

variants: plain (as built); sym (convert(model, 'symmetric', symmetry=--symmetry));
sym-inv (every conv symmetric with orbit pooling: exactly invariant to the
--invariant-to flips); twist (3x3 convs converted to ConvTwist); p4, p4m
(convert(model, 'group', group='r'/'hr'): group convolutions, exactly invariant to
quarter turns, and for p4m to flips; not in the default list:
--variants plain,sym,sym-inv,twist,p4,p4m).
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
_image_side = _number(int, MIN_SIZE, strict=False)
_image_limit = _number(int, MIN_LIMIT, strict=False)
_non_negative = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)
_config = partial(field_default, CompareConfig)
_settings = partial(field_default, TrainSettings)


#: Field name -> its command-line flag, filled as the parser is built.
_FLAGS: dict[str, str] = {}


def _add(
    group: Any, flag: str, owner: type, help: str, *, dest: str | None = None, **kwargs: Any
) -> None:
    """Add ``flag`` with the default of the field ``dest`` (the flag's name) of ``owner``."""
    dest = dest or flag.lstrip("-").replace("-", "_")
    _FLAGS[dest] = flag
    group.add_argument(flag, dest=dest, default=field_default(owner, dest), help=help, **kwargs)


def _in_flag_words(message: str) -> str:
    """A check's ``'field=value ...'`` message as ``'--flag=value ...'`` (the option the
    user typed); other messages unchanged."""
    name, sep, rest = message.partition("=")
    flag = _FLAGS.get(name)
    return f"{flag}={rest}" if sep and flag else message


def _option_group_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    c = CompareConfig
    _add(
        g,
        "--data",
        c,
        "mnist (bundled 5k subset, default), digits (scikit-learn), animals "
        "(animal-shape-mnist), or a folder with train/ and val/ class folders",
    )
    _add(g, "--size", c, "image side in pixels (default: the dataset's own; 64 for folders)",
         type=_image_side)  # fmt: skip
    _add(g, "--color", c, "channels (default %(default)s: gray built-ins, RGB folders)",
         choices=COLORS)  # fmt: skip
    _add(g, "--limit", c, "use at most N images per split (stratified), for quick runs",
         type=_image_limit, metavar="N")  # fmt: skip
    _add(g, "--workers", c, "threads decoding an image folder (default %(default)s: one per "
         "CPU, at most 8)", type=_non_negative)  # fmt: skip


def _option_group_models(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    t = TrainSettings
    _add(g, "--model", t, "cnn: small 3-layer CNN; resnet: ResNet-18-style net (default "
         "%(default)s)", choices=MODELS)  # fmt: skip
    widths = ", ".join(f"{w} for {m}" for m, w in DEFAULT_WIDTH.items())
    _add(g, "--width", t, f"channels of the first stage (default {widths})", type=_positive)
    g.add_argument(
        "--variants",
        default=",".join(field_default(CompareConfig, "variants")),
        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: %(default)s)",
    )
    _add(g, "--symmetry", t, "spec for the sym variant, e.g. 'hv:50%%' or 'h:25%%,v:25%%' "
         "(default %(default)s)")  # fmt: skip
    _add(g, "--invariant-to", t, "flips the sym-inv variant is invariant to (default "
         "%(default)s)", dest="invariant_key", choices=INVARIANT_KEYS)  # fmt: skip
    _add(g, "--group-width", t, "p4/p4m: 'channels' keeps the channel counts (a plain net's "
         "cost, about 1/|G| of its parameters), 'params' widens to its parameter count (about "
         "|G| times the cost) (default %(default)s)", choices=GROUP_WIDTHS)  # fmt: skip


def _option_group_training(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    t, c = TrainSettings, CompareConfig
    _add(g, "--epochs", t, "epochs per run (default %(default)s)", type=_positive)
    _add(g, "--batch-size", t, "global batch size, split between DDP processes (default "
         "%(default)s)", type=_positive)  # fmt: skip
    _add(g, "--lr", t, "peak learning rate of the one-cycle AdamW schedule (default "
         "%(default)s)", type=_positive_float)  # fmt: skip
    _add(g, "--weight-decay", t, "AdamW weight decay (default %(default)s)", type=float)
    _add(g, "--label-smoothing", t, "default %(default)s", type=float)
    _add(g, "--augment", t, "random shifts, +-10 degree rotations and 0.9-1.1x scaling while "
         "training (never flips); off by default so robustness comes from the layers alone",
         action="store_true")  # fmt: skip
    _add(g, "--runs", c, "runs per variant with seeds seed, seed+1, ...; mean and std "
         "reported", type=_positive)  # fmt: skip
    _add(g, "--seed", c, "first seed (default %(default)s)", type=_non_negative)
    g.add_argument(
        "--transforms",
        default="all",
        help="comma-separated test transformations, or 'all' (default)",
    )


def _option_group_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    c = CompareConfig
    _add(g, "--device", c, "auto (default): CUDA when available (bf16 autocast, "
         "channels_last), else CPU", choices=DEVICES)  # fmt: skip
    _add(g, "--threads", c, "CPU threads (default %(default)s: the idle cores, by the load "
         "average; OMP_NUM_THREADS wins when set)", type=_non_negative)  # fmt: skip
    _add(g, "--out", c, "output folder (default symconv-runs/<data>-<model>-<time>)",
         metavar="DIR")  # fmt: skip
    _add(g, "--resume", c, "continue the run in --out (default: the latest matching run) "
         "from its last checkpoint", action="store_true")  # fmt: skip
    _add(g, "--no-progress", c, "no progress bars (automatic when stderr is not a terminal)",
         dest="progress", action="store_false")  # fmt: skip
    _add(g, "--no-plots", c, "skip the PNG plots", dest="plots", action="store_false")
    # Stops after N epochs as if interrupted (for testing --resume).
    _add(g, "--max-epochs-this-run", c, argparse.SUPPRESS, type=_positive)


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
        config = CompareConfig(**options, settings=settings)
    except ValueError as err:  # the options' own checks: a bad value the user gave
        raise UsageError(_in_flag_words(str(err))) from err
    _check_options_reach_a_variant(config)
    return config


#: Options that shape one family of variants: (TrainSettings field, its variants).
_VARIANT_OPTIONS = (
    ("symmetry", ("sym",)),
    ("invariant_key", ("sym-inv",)),
    ("group_width", tuple(GROUP_VARIANTS)),
)


def _check_options_reach_a_variant(config: CompareConfig) -> None:
    """A non-default variant option with none of its variants selected is a mistake
    (the run would silently ignore it)."""
    from symconv.cli import UsageError

    for name, users in _VARIANT_OPTIONS:
        value = getattr(config.settings, name)
        if value != _settings(name) and not set(users) & set(config.variants):
            raise UsageError(
                f"{_FLAGS[name]}={value!r} shapes the {'/'.join(users)} variant"
                f"{'s' if len(users) > 1 else ''} only, and --variants="
                f"{','.join(config.variants)} has none of them"
            )


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
