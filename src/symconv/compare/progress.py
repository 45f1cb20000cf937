"""How far a ``symconv compare`` job has got: the job's ETA line and the progress bars."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["JobProgress", "clock", "progress_bar"]


class JobProgress:
    """Where the whole job stands: variant i of n, run, epochs done of all, elapsed, ETA.

    The ETA assumes the epochs still to come take as long as those done so far in this
    invocation. With ``bar`` (and tqdm installed) a progress bar shows the same above the
    per-epoch bar.
    """

    def __init__(self, total_epochs: int, variants: int, runs: int, bar: bool = False) -> None:
        self.total = total_epochs
        self.variants, self.runs = variants, runs
        self.variant_index, self.run_index, self.done = 0, 0, 0
        self.started = time.perf_counter()
        self.bar = progress_bar(bar, total=total_epochs, desc="job", unit="epoch", position=0)

    def start(self, variant: str, variant_index: int, run_index: int) -> None:
        self.variant_index, self.run_index = variant_index, run_index
        if self.bar is not None:
            self.bar.set_description(
                f"job: {variant} (variant {variant_index + 1}/{self.variants}), "
                f"run {run_index + 1}/{self.runs}"
            )

    def epoch_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def describe(self) -> str:
        elapsed = time.perf_counter() - self.started
        text = (
            f"variant {self.variant_index + 1}/{self.variants}, job epoch {self.done}/"
            f"{self.total}, {clock(elapsed)} elapsed"
        )
        if self.done:
            text += f", ETA {clock(elapsed / self.done * (self.total - self.done))}"
        return text

    def skip(self, epochs: int) -> None:
        """``epochs`` of the job that will not be trained (a run that diverged)."""
        self.total -= epochs
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def clock(seconds: float) -> str:
    """``'m:ss'``, or ``'h:mm:ss'`` from an hour on."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_bar(enabled: bool, **kwargs: Any):  # type: ignore[no-untyped-def]
    """A tqdm bar on stderr, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(leave=False, dynamic_ncols=True, file=sys.stderr, **kwargs)
