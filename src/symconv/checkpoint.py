"""Checkpoint files: written atomically, read with trust checks, and the compare format.

:func:`atomic_write` is how every file of ``symconv compare`` (checkpoints, results,
tables, plots) reaches the disk. :func:`load` is the one place a checkpoint is read:
``torch.load`` with ``weights_only=True`` unless the caller trusts the file (a pickled
``nn.Module`` runs code from the file when it is loaded).

A ``symconv compare`` checkpoint (``<out>/checkpoints/<variant>-run<k>.pt``, format
:data:`COMPARE_FORMAT`) is a dict of plain values and tensors:

``format``, ``variant``, ``run``, ``seed``
    what it is; ``seed`` is the run's seed.
``config``
    the options that determine the run's numbers (its identity).
``build``
    the keyword arguments of :func:`symconv.compare.variants.build_variant` that make its
    network: model, width, spec, input channels, classes, image side.
``epoch``, ``finished``, ``history``, ``train_seconds``, ``images_seen``
    how far it got.
``model``
    the network's ``state_dict``.
``rng``
    :func:`rng_state` of every process, by rank.
``optimizer``, ``scheduler``
    their ``state_dict`` (while unfinished).
``result``
    the run's result record (once finished).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "COMPARE_FORMAT",
    "CheckpointError",
    "atomic_write",
    "check_compare_format",
    "compare_model",
    "is_compare_checkpoint",
    "load",
    "rng_state",
    "save",
    "set_rng_state",
]

#: Format of ``symconv compare`` checkpoints. 2: they record the options (``config``) and
#: the network (``build``) they were made with.
COMPARE_FORMAT = 2


class CheckpointError(ValueError):
    """A file that is not a checkpoint this version can use (unreadable, wrong kind, old)."""


# -- writing ---------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(fh)`` into a temporary file beside ``path``, flush it to the disk, then rename
    it over ``path``: a reader, or a machine that loses power, never sees a half-written
    file (the folder is made; the temporary never stays).

    An ``OSError`` without a file name (a full disk reports none) gets ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            # Data first, then the rename: otherwise a crash can leave `path` empty.
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the data is synced
        pass
    finally:
        os.close(fd)


def save(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda fh: torch.save(state, fh))


# -- reading ---------------------------------------------------------------------------------


def load(
    path: str | os.PathLike[str], *, trust: bool = False, trust_hint: str | None = None
) -> Any:
    """What ``path`` holds, loaded on the CPU.

    ``weights_only`` unless ``trust``: tensors and plain Python values only. A file that
    pickles other objects raises :class:`CheckpointError`, which names ``trust_hint`` (how
    the caller's user can allow it, e.g. ``'trust=True (--trust)'``) when one is given.
    ``OSError`` when the file cannot be read; :class:`CheckpointError` when it is no torch
    file.
    """
    try:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except OSError as err:
        if err.filename is not None:  # the file system's error (missing, no permission)
            raise
        if err.errno == errno.EIO:  # the device failed to read it: name the file
            raise OSError(err.errno, err.strerror, os.fspath(path)) from err
        # torch's zip reader on a truncated file: the file's fault, not the system's.
        raise CheckpointError(_damaged(path, err.strerror or str(err))) from err
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = str(err)
        unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        if not trust and unpickler and "Unsupported global" in unpickler.group(1):
            # A sound pickle that names other Python objects: only trust can load it.
            hint = f"; pass {trust_hint} if you trust the file" if trust_hint is not None else ""
            raise CheckpointError(
                f"cannot read checkpoint {path}: it pickles Python objects (e.g. a whole "
                f"nn.Module){hint}: {_first_sentence(unpickler.group(1))}"
            ) from err
        cause = unpickler.group(1) if unpickler else (text.splitlines() or [repr(err)])[0]
        raise CheckpointError(_damaged(path, _first_sentence(cause))) from err


def _damaged(path: str | os.PathLike[str], cause: str) -> str:
    return f"cannot read checkpoint {path}: not a torch checkpoint, or a damaged one ({cause})"


def _first_sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".")


def is_compare_checkpoint(obj: object) -> bool:
    """Whether ``obj`` (what :func:`load` returned) says it is a ``symconv compare`` one."""
    return isinstance(obj, Mapping) and "variant" in obj and "format" in obj


def check_compare_format(state: object, path: Path) -> dict[str, Any]:
    """``state`` itself, once it is a compare checkpoint of :data:`COMPARE_FORMAT`.

    Says nothing about whether it is the checkpoint a run expects
    (:func:`symconv.compare.checkpoints.check_checkpoint` does).
    """
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a symconv compare checkpoint")
    if state["format"] != COMPARE_FORMAT:
        raise CheckpointError(
            f"{path} is a symconv compare checkpoint of format {state['format']!r}; this "
            f"version reads format {COMPARE_FORMAT} (older ones do not record their "
            "settings): start a new run in another --out"
        )
    return state


def compare_model(state: Mapping[str, Any], path: Path) -> nn.Module:
    """The network of a compare checkpoint, rebuilt from its ``build`` entry, weights loaded.

    Raises :class:`CheckpointError` when the checkpoint does not record its network or
    its weights do not fit the network that entry describes.
    """
    build = state.get("build")
    if not isinstance(build, Mapping):
        raise CheckpointError(
            f"{str(path)!r} is a symconv compare checkpoint (format {state.get('format')!r}) "
            "that does not record the settings its network was built with ('build'); "
            f"symconv compare writes them from checkpoint format {COMPARE_FORMAT} on"
        )
    from symconv.compare.variants import build_variant

    try:
        built = build_variant(state["variant"], **build)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r}: cannot rebuild variant {state['variant']!r} from the recorded "
            f"settings {dict(build)}: {err}"
        ) from err
    try:
        built.model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{str(path)!r}: the weights do not fit the network its settings describe: "
            f"{str(err).splitlines()[0]}"
        ) from err
    return built.model


# -- random number generators ------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain Python values (bytes, ints): safe for ``weights_only``
    loading and for ``all_gather_object``."""
    # numpy's legacy global generator: compare itself does not draw from it, but user
    # hooks might, and resuming must restore every source of randomness.
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": bytes(torch.get_rng_state().numpy()),
        "cuda": [bytes(t.numpy()) for t in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(b) for b in state["cuda"]])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(state["python"])
