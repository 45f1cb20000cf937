"""The ``symconv`` command: ``compare``, ``flow`` and ``filters`` subcommands.

Each subcommand lives beside the code it drives and registers itself through an
``add_parser(subparsers)`` function that sets ``func`` (called with the parsed args,
returning an exit code). Heavy imports happen inside ``func``, so ``symconv --help``
is fast.

Errors: a :class:`UsageError` (a mistake in what the user asked for, including an input
file that does not exist) is one line and exit code 2; an :class:`OSError` (a path that
exists but cannot be read, one that cannot be written, a full disk) is one
line naming the path and the cause, exit code 1. Anything else is a bug in symconv and
keeps its traceback. Subcommands turn the library's ``ValueError`` about user input into a
``UsageError`` where they validate that input, not around whole runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from symconv import __version__

__all__ = ["UsageError", "build_parser", "describe_os_error", "main"]


class UsageError(Exception):
    """A mistake in a command's arguments or inputs: reported in one line, exit code 2."""


def describe_os_error(err: OSError) -> str:
    """``err`` as one line: the path(s), then the cause (``No space left on device``...)."""
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    cause = err.strerror or str(err)
    return f"{' -> '.join(map(str, paths))}: {cause}" if paths else cause


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (an unknown option, a bad value for a typed or
    choice option) are one line and exit 2, like the commands' own checks."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from symconv.compare import cli as compare_cli
    from symconv.viz import cli as viz_cli

    parser = OneLineErrorParser(
        prog="symconv",
        description="Convolution layers with geometric priors: train, compare and visualize.",
    )
    parser.add_argument("--version", action="version", version=f"symconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    compare_cli.add_parser(sub)
    viz_cli.add_parser(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``command``."""
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        parser.print_help()
        return 2
    if extras:  # the subcommand's parser names itself and its own --help
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"symconv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (`symconv flow --list-presets | head -1`): what it
        # wanted it has; stdout now goes nowhere, so the exit's flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f"symconv {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Before a subcommand has anything to save (while it imports torch, say): one line,
        # the shell's code for SIGINT. Subcommands that checkpoint catch it themselves.
        print(f"\nsymconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
