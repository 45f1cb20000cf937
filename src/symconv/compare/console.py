"""What ``symconv compare`` prints: lines that survive a closed stdout and progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["console", "print_line"]

_STDOUT_CLOSED = False


def print_line(message: str) -> None:
    """Print ``message`` to stdout now; if stdout is closed (``symconv compare | head``),
    stop printing instead of failing: the run goes on and writes its files."""
    global _STDOUT_CLOSED
    if _STDOUT_CLOSED:
        return
    try:
        print(message, flush=True)
    except BrokenPipeError:
        _STDOUT_CLOSED = True
        # Later writes, and the flush at exit, go nowhere instead of failing again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
            pass


def console(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """``log``, or :func:`print_line` kept clear of progress bars (tqdm redraws them)."""
    if log is not None:
        return log
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return print_line

    def say(message: str) -> None:
        if not getattr(tqdm, "_instances", None):
            print_line(message)
            return
        with tqdm.external_write_mode(file=sys.stdout):
            print_line(message)

    return say
