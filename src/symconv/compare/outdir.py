"""The output folder of ``symconv compare``: unique default names, an exclusive lock, and
the checks that it may be used (:func:`open_out`).

A run holds ``<out>/.lock`` locked (``fcntl.flock``; ``filelock`` where there is no
``fcntl``) from before it checks the folder until it ends, so two runs never write into
one folder: the second is refused. The operating system drops the lock when the process
ends in any way, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import IO, Any

from symconv.compare.checkpoints import differences
from symconv.compare.config import BUILTIN_DATA, CompareConfig, fingerprint
from symconv.compare.errors import CompareError

__all__ = ["DEFAULT_ROOT", "FolderLock", "latest_run", "new_run_folder", "open_out"]

#: Where runs without ``--out`` go: ``<DEFAULT_ROOT>/<data>-<model>-<time>``.
DEFAULT_ROOT = Path("symconv-runs")

_STAMP = re.compile(r"(\d{8}-\d{6})(?:-(\d+))?$")


def _now() -> _dt.datetime:
    return _dt.datetime.now()


def new_run_folder(root: Path, prefix: str) -> Path:
    """Create and return ``root/<prefix><YYYYmmdd-HHMMSS>[-n]``, a folder no one else has.

    ``mkdir`` fails when the folder exists, so runs started in the same second (even in
    parallel) get ``-2``, ``-3``, ... rather than sharing a folder.
    """
    stamp = _now().strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = root / (f"{prefix}{stamp}" if n == 1 else f"{prefix}{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            n += 1
            continue
        return path


def latest_run(root: Path, prefix: str) -> Path | None:
    """The newest ``root/<prefix>*`` folder holding a run (a ``config.json``), or None."""

    def key(p: Path) -> tuple[str, int]:
        m = _STAMP.search(p.name)
        return (m.group(1), int(m.group(2) or 1)) if m else (p.name, 0)

    runs = [p for p in root.glob(prefix + "*") if (p / "config.json").is_file()]
    return max(runs, key=key) if runs else None


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (the file ``folder/.lock``).

    ``acquire`` raises :class:`CompareError` naming the holder's process id when another
    process (or another lock object in this one) holds it; ``OSError`` when the lock file
    cannot be created (a read-only folder, for instance).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._fh: IO[str] | None = None
        self._other: Any = None  # a filelock.FileLock where there is no fcntl

    def acquire(self) -> FolderLock:
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            held = not self._lock(fh)
        except BaseException:
            fh.close()
            raise
        if held:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise CompareError(
                f"{self.folder} is in use by another symconv compare (process {holder}); "
                "wait for it to end or choose another --out"
            )
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def _lock(self, fh: IO[str]) -> bool:
        """Lock ``fh``; False when someone else holds the lock."""
        try:
            import fcntl
        except ImportError:
            return self._lock_with_filelock()
        try:
            # flock locks belong to the open file, so a second open in this same process
            # conflicts too; the kernel releases them when the process ends.
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _lock_with_filelock(self) -> bool:
        try:
            import filelock
        except ImportError:
            raise CompareError(
                "cannot lock the output folder: this platform has no fcntl and the filelock "
                "package is not installed (pip install filelock)"
            ) from None
        lock = filelock.FileLock(str(self.folder / ".lock.filelock"), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            return False
        self._other = lock
        return True

    def release(self) -> None:
        if self._other is not None:
            self._other.release()
            self._other = None
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _slug(data: str) -> str:
    name = data if data.lower() in BUILTIN_DATA else (Path(data).resolve().name or "data")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _read_run_config(path: Path) -> dict[str, Any]:
    """A run's ``config.json``; :class:`CompareError` naming it when it is damaged."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CompareError(f"--resume: {path} is damaged ({err}); it cannot be resumed") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
        raise CompareError(
            f"--resume: {path} is damaged (not a compare run's configuration); it cannot be resumed"
        )
    return saved


def open_out(config: CompareConfig, identity: dict[str, Any]) -> tuple[Path, FolderLock]:
    """The output folder, created if new and locked against other runs, checked against
    ``--resume`` (its ``config.json`` must give the same :func:`fingerprint` as
    ``identity``); raises :class:`CompareError` (or ``OSError``) when it cannot be used."""
    prefix = f"{_slug(config.data)}-{config.settings.model}-"
    if config.out is not None:
        out = Path(config.out)
        if out.exists() and not out.is_dir():
            raise CompareError(f"--out {out} is a file, not a folder")
        if not config.resume:
            out.mkdir(parents=True, exist_ok=True)
    elif config.resume:
        latest = latest_run(DEFAULT_ROOT, prefix)
        if latest is None:
            raise CompareError(
                f"--resume without --out looks for the latest {DEFAULT_ROOT}/{prefix}* run, "
                "and there is none; pass --out DIR"
            )
        out = latest
    else:
        out = new_run_folder(DEFAULT_ROOT, prefix)
    cfg_path = out / "config.json"
    if config.resume and not cfg_path.is_file():
        raise CompareError(f"--resume: {out} holds no run to continue (no {cfg_path.name})")
    # Everything below happens under the lock: no other run can start or change the
    # folder between the checks and the training.
    lock = FolderLock(out).acquire()
    try:
        if config.resume:
            saved = _read_run_config(cfg_path)
            previous = fingerprint(saved.get("config", {}), saved.get("world_size", 1))
            differ = differences(previous, identity)
            if differ:
                raise CompareError(f"--resume: the options differ from the run in {out}: {differ}")
        elif cfg_path.is_file() or (out / "checkpoints").is_dir():
            raise CompareError(
                f"--out {out} already holds a compare run; pass --resume to continue it or "
                "choose another folder"
            )
    except BaseException:
        lock.release()
        raise
    return out, lock
