"""The ``symconv`` command: ``compare``, ``flow`` and ``filters`` subcommands.

Each subcommand lives beside the code it drives and registers itself through an
``add_parser(subparsers)`` function that sets ``func`` (called with the parsed args,
returning an exit code). Heavy imports happen inside ``func``, so ``symconv --help``
is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from symconv import __version__


def build_parser() -> argparse.ArgumentParser:
    from symconv.compare import cli as compare_cli
    from symconv.viz import cli as viz_cli

    parser = argparse.ArgumentParser(
        prog="symconv",
        description="Convolution layers with geometric priors: train, compare and visualise.",
    )
    parser.add_argument("--version", action="version", version=f"symconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    compare_cli.add_parser(sub)
    viz_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as err:
        # Bad input: one clear line, not a traceback.
        print(f"symconv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
