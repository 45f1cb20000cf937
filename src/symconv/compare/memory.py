"""Memory of a ``symconv compare`` run: the peak it reached, and glibc's allocator tuning."""

from __future__ import annotations

import sys

import torch

__all__ = ["keep_freed_memory", "malloc_tuned", "peak_memory", "reset_peak_memory"]

_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep big freed blocks for reuse (Linux only; process-wide).

    By default glibc serves blocks over a (dynamic, at most 32 MiB) threshold with
    ``mmap`` and unmaps them on ``free``, so every training step on the CPU page-faults
    its activation buffers in again. Raising the mmap and trim thresholds to 1 GiB makes
    freed buffers reusable, so CPU steps stop paying those page faults (what that saves:
    benchmarks/README.md, "symconv compare on the CPU"); the price is that the process
    keeps its peak heap.
    Called by the ``symconv compare`` command, not by the library functions.
    """
    global _MALLOC_TUNED
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _MALLOC_TUNED = ok
    return ok


def malloc_tuned() -> bool:
    """Whether :func:`keep_freed_memory` has tuned this process's allocator."""
    return _MALLOC_TUNED


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring :func:`peak_memory` afresh."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: writing 5 resets the process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> tuple[float, str]:
    """``(megabytes, what was measured)`` since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "process peak RSS (VmHWM) during the run"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    divisor = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return peak / divisor, "process peak RSS since start (getrusage)"
