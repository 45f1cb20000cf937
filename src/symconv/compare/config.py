"""What ``symconv compare`` can be asked to do: the names it knows and its two option sets.

:class:`TrainSettings` (everything that determines a run's numbers) and
:class:`CompareConfig` (the whole command) are the single source of the options' defaults
and allowed values; the command line (:mod:`symconv.compare.cli`) is derived from them.
Imports nothing heavy at module level, so ``symconv compare --help`` needs no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from symconv.core.validate import check_int

__all__ = [
    "BUILTIN_DATA",
    "COLORS",
    "DEFAULT_WIDTH",
    "DEFAULT_VARIANTS",
    "DEVICES",
    "GROUP_VARIANTS",
    "GROUP_WIDTHS",
    "INVARIANT_KEYS",
    "MODELS",
    "RESUMABLE",
    "TRANSFORM_NAMES",
    "VARIANTS",
    "CompareConfig",
    "TrainSettings",
    "field_default",
    "fingerprint",
    "parse_transforms",
    "parse_variants",
]

#: The datasets ``--data`` names besides a folder path (see :mod:`symconv.compare.data`).
BUILTIN_DATA = ("mnist", "digits", "animals")
#: The layer variants, in table order (see :mod:`symconv.compare.variants`).
VARIANTS = ("plain", "sym", "sym-inv", "twist", "p4", "p4m")
#: The variants a plain ``symconv compare`` trains: the group networks double the default
#: job's run time on a 2-core CPU, so they are asked for by name (``--variants``).
DEFAULT_VARIANTS = ("plain", "sym", "sym-inv", "twist")
#: The group-equivariant variants and their groups (``convert(model, 'group', group=...)``).
GROUP_VARIANTS = {"p4": "r", "p4m": "hr"}
#: How the group variants size their layers (``convert``'s ``width``).
GROUP_WIDTHS = ("channels", "params")
#: The base networks (see :mod:`symconv.compare.models`).
MODELS = ("cnn", "resnet")
#: Channels of the first stage when none is given. The small CNN's is sized for the default
#: job's run time on a 2-core CPU (benchmarks/README.md, "symconv compare on the CPU").
DEFAULT_WIDTH = {"cnn": 16, "resnet": 32}
#: The flips the ``sym-inv`` variant can be made invariant to.
INVARIANT_KEYS = ("h", "v", "hv")
#: Channel choices of the data (``auto``: gray built-ins, RGB folders).
COLORS = ("auto", "gray", "rgb")
#: The smallest image side (pixels) and per-split image limit a run accepts.
MIN_SIZE = 4
MIN_LIMIT = 2
#: Where to train (``auto``: CUDA when torch sees it).
DEVICES = ("auto", "cpu", "cuda")
#: The test-time transformations, in table order (see :mod:`symconv.compare.transforms`).
TRANSFORM_NAMES = ("clean", "hflip", "vflip", "rot90", "rot+15", "rot-15", "scale0.8", "scale1.2")
#: :class:`CompareConfig` fields that may change between an interrupted run and its
#: ``--resume``: they do not change the numbers.
RESUMABLE = (
    "out",
    "resume",
    "device",
    "workers",
    "progress",
    "plots",
    "max_epochs_this_run",
    "variants",
    "runs",
)


def parse_variants(text: str) -> list[str]:
    """``'plain,sym'`` -> ``['plain', 'sym']``, rejecting unknown or repeated names."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ValueError(f"--variants {text!r} names no variant; allowed: {', '.join(VARIANTS)}")
    for name in names:
        if name not in VARIANTS:
            raise ValueError(
                f"unknown variant {name!r} in --variants; allowed: {', '.join(VARIANTS)}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"--variants {text!r} repeats a variant")
    return names


def parse_transforms(text: str | None) -> list[str]:
    """``'hflip,rot90'`` -> ``['clean', 'hflip', 'rot90']`` (``clean`` always first)."""
    if text is None or text.strip().lower() == "all":
        return list(TRANSFORM_NAMES)
    names = ["clean"]
    if not text.replace(",", "").strip():
        raise ValueError(
            f"--transforms {text!r} names no transform; allowed: 'all' or a comma list of "
            f"{', '.join(TRANSFORM_NAMES)} ('clean' alone: no robustness columns)"
        )
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item not in TRANSFORM_NAMES:
            raise ValueError(
                f"unknown transform {item!r} in --transforms; allowed: {', '.join(TRANSFORM_NAMES)}"
            )
        if item not in names:
            names.append(item)
    return names


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a run's numbers (recorded in ``results.json``)."""

    model: str = "cnn"
    width: int | None = None
    symmetry: str = "hv:50%"
    invariant_key: str = "hv"
    group_width: str = "channels"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: bool = False
    eval_batch_size: int = 500
    transforms: tuple[str, ...] = TRANSFORM_NAMES

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not (isinstance(self.lr, float | int) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r} must be a positive number")
        if not (isinstance(self.weight_decay, float | int) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        if self.group_width not in GROUP_WIDTHS:
            raise ValueError(
                f"group_width={self.group_width!r} is not allowed; it must be one of {GROUP_WIDTHS}"
            )
        for t in self.transforms:
            if t not in TRANSFORM_NAMES:
                raise ValueError(f"unknown transform {t!r}; allowed: {', '.join(TRANSFORM_NAMES)}")
        from symconv.symmetry import make_plan

        # A bad spec fails here, not after the first variants have trained.
        make_plan(self.symmetry, 64, 2)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), as in ``results.json`` and the checkpoints."""
        d = dataclasses.asdict(self)
        d["transforms"] = list(self.transforms)
        return d


@dataclass
class CompareConfig:
    """What ``symconv compare`` was asked to do (its command-line options)."""

    data: str = "mnist"
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    runs: int = 1
    seed: int = 0
    size: int | None = None
    color: str = "auto"
    limit: int | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    out: str | None = None
    resume: bool = False
    device: str = "auto"
    workers: int = 0
    progress: bool | None = None  # None: a bar when stderr is a terminal
    plots: bool = True
    max_epochs_this_run: int | None = None
    threads: int = 0  # 0: auto_threads()

    def __post_init__(self) -> None:
        if isinstance(self.variants, str):
            self.variants = tuple(parse_variants(self.variants))
        else:
            self.variants = tuple(parse_variants(",".join(self.variants)))
        check_int("runs", self.runs, 1)
        check_int("seed", self.seed, 0)
        check_int("threads", self.threads, 0)  # 0: automatic
        if self.max_epochs_this_run is not None:
            check_int("max_epochs_this_run", self.max_epochs_this_run, 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = list(self.variants)
        d["settings"] = self.settings.to_dict()
        return d


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (its factory's value, if any)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def fingerprint(config: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The options that determine the numbers (``config`` as :meth:`CompareConfig.to_dict`
    gives it, less :data:`RESUMABLE`): what a resumed run and its checkpoints must share."""
    d = {k: v for k, v in config.items() if k not in RESUMABLE}
    d["world_size"] = world_size
    return d
