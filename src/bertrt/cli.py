"""The ``bertrt`` command: thin sub-commands over the library, one module each in ``bertrt.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module has ``register(subparsers)`` which adds its parser and sets ``func`` (args -> exit code).
COMMANDS = (
    "qa",
    "squad",
    "evaluate",
    "train",
    "loadgen",
    "build",
    "perf",
    "embed",
    "classify",
    "tag",
)


class UserError(Exception):
    """An error caused by the user's input: printed as one line, never as a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertrt",
        description="Fast inference for BERT encoders: load any checkpoint, answer questions, "
                    "score SQuAD, fine-tune, build GPU engines and benchmark them.",
        epilog="Errors in your input print one line; set BERTRT_DEBUG=1 to see the full traceback.",
    )
    from bertrt import __version__

    parser.add_argument("--version", action="version", version=f"bertrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bertrt.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from bertrt.config import ConfigError
    from bertrt.weights.schema import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (UserError, CheckpointError, ConfigError, FileNotFoundError, IsADirectoryError,
            PermissionError, UnicodeDecodeError, ValueError) as exc:
        if os.environ.get("BERTRT_DEBUG"):  # developers: the whole traceback
            raise
        print(f"bertrt {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertrt {args.command}: interrupted", file=sys.stderr)
        return 130


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
