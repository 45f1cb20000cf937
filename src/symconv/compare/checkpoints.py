"""The checkpoints of a ``symconv compare`` run: where they live and which ones may be used.

``<out>/checkpoints/<variant>-run<k>.pt``, in the format of :mod:`symconv.checkpoint`,
replaced atomically after every epoch. A checkpoint is continued or reported only when it
holds the variant, run and seed its name and the run expect, and was made with the same
options and network (:func:`check_checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from symconv import checkpoint
from symconv.compare.config import VARIANTS
from symconv.compare.errors import CompareError

__all__ = ["CheckpointStore", "check_checkpoint", "differences", "scan_checkpoints"]

_NAME = re.compile(r"^(?P<variant>.+)-run(?P<run>\d+)\.pt$")


class CheckpointStore:
    """``<out>/checkpoints/<variant>-run<k>.pt``, replaced atomically after every epoch."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, variant: str, run: int) -> Path:
        return self.folder / f"{variant}-run{run}.pt"

    def load(self, variant: str, run: int) -> dict[str, Any] | None:
        """The checkpoint of ``(variant, run)``, None if there is none.

        ``OSError`` when it cannot be read; :class:`CompareError` when it is not a
        checkpoint of this symconv version (which does not say it is the right one: see
        :func:`check_checkpoint`).
        """
        return self.read(self.path(variant, run))

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            return checkpoint.check_compare_format(checkpoint.load(path), path)
        except checkpoint.CheckpointError as err:
            raise CompareError(str(err)) from err

    def save(self, variant: str, run: int, state: dict[str, Any]) -> None:
        checkpoint.save(self.path(variant, run), state)


def differences(was: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> str:
    """``'key: was X, now Y; ...'`` for every key whose value differs; nested mappings
    name the differing entries (``'settings.epochs: was 1, now 2'``), not whole dicts."""
    parts = []
    for k in sorted(set(was) | set(now)):
        a, b = was.get(k), now.get(k)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            parts.append(differences(a, b, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}: was {a!r}, now {b!r}")
    return "; ".join(parts)


def check_checkpoint(
    state: Mapping[str, Any],
    path: Path,
    variant: str,
    run: int,
    seed: int,
    identity: Mapping[str, Any],
    build: Mapping[str, Any] | None = None,
) -> None:
    """Raise :class:`CompareError` unless ``state`` is the checkpoint of ``(variant, run)``
    made with ``seed``, the options ``identity`` and (when given) the network ``build``.

    A checkpoint copied or renamed from another variant or run, or made with other
    options, is refused rather than continued or reported as this one.
    """
    got = (state.get("variant"), state.get("run"), state.get("seed"))
    if got != (variant, run, seed):
        raise CompareError(
            f"{path} holds {got[0]!r} run {got[1]} (seed {got[2]}), not {variant!r} run {run} "
            f"(seed {seed}): a copied or renamed checkpoint? Move it away to train this run "
            "again"
        )
    if state.get("config") != dict(identity):
        raise CompareError(
            f"{path} was made with other options than this run: "
            f"{differences(state.get('config') or {}, identity)}"
        )
    if build is not None and state.get("build") != dict(build):
        raise CompareError(
            f"{path} holds a different network than the data and options give now (has the "
            f"data changed?): {differences(state.get('build') or {}, build)}"
        )


def scan_checkpoints(
    store: CheckpointStore, first_seed: int, identity: Mapping[str, Any]
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """Every checkpoint in ``store``, checked: ``{(variant, run): state}`` without the
    weights, and notes on files that were passed over.

    Each must hold the variant and run its name says, the seed of that run
    (``first_seed + run``) and the options ``identity``; otherwise :class:`CompareError`
    says which file and why.
    """
    found: dict[tuple[str, int], dict[str, Any]] = {}
    notes = []
    if not store.folder.is_dir():
        return found, notes
    for path in sorted(store.folder.iterdir()):
        if path.name.startswith("."):  # a temporary file of an interrupted write
            continue
        m = _NAME.match(path.name)
        if m is None or m["variant"] not in VARIANTS:
            notes.append(f"note: {path} is not a name symconv compare gives a checkpoint; ignored")
            continue
        variant, run = m["variant"], int(m["run"])
        state = store.read(path)
        if state is None:  # removed since it was listed
            continue
        check_checkpoint(state, path, variant, run, first_seed + run, identity)
        found[(variant, run)] = {k: state[k] for k in ("epoch", "finished", "result") if k in state}
    return found, notes
