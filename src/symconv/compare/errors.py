"""The error ``symconv compare`` raises for a problem with what it was given."""

from __future__ import annotations

from symconv.cli import UsageError

__all__ = ["CompareError"]


class CompareError(UsageError, ValueError):
    """A problem with the options, the data, the output folder or its checkpoints.

    A ``ValueError`` for Python callers of :func:`~symconv.compare.run_compare`, and a
    :class:`~symconv.cli.UsageError` for the command line (one line, exit code 2).
    """
