"""The ``bertrt`` command: thin sub-commands over the library, one module each in ``bertrt.commands``.

How errors reach the user (``main``): every expected failure (``bertrt.errors.BertrtError``, an OS
error such as a full disk or a missing file, text that is not UTF-8, a missing optional package,
Ctrl-C) prints one line ``bertrt COMMAND: error: ...`` on stderr and exits non-zero (2 for bad input,
1 for the machine's errors, 130 when interrupted). Anything else is a bug: its traceback is printed,
followed by a line asking to report it. ``BERTRT_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

from bertrt.errors import EXIT_INPUT, EXIT_SYSTEM, BertrtWarning, UserError  # noqa: F401  (UserError re-exported)
from bertrt.errors import describe, exit_code

# Each module has ``register(subparsers)`` which adds its parser and sets ``func`` (args -> exit code).
COMMANDS = (
    "qa",
    "squad",
    "evaluate",
    "train",
    "loadgen",
    "build",
    "perf",
    "serve",
    "embed",
    "classify",
    "tag",
)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, pointing at --help instead of printing the usage."""

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _undecodable_argument(argv: list[str]) -> int | None:
    """Index of the first argument holding bytes that were not UTF-8 (Python keeps them as
    lone surrogates, which cannot be printed or written later), or None."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return i
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bad = _undecodable_argument(argv)
    if bad is not None:
        shown = argv[bad].encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        print(f"bertrt: error: argument {bad + 1} ({shown}) is not valid UTF-8: "
              "pass file names and text in UTF-8", file=sys.stderr)
        return EXIT_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    command = args.command
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", BertrtWarning)
            warnings.showwarning = _one_line_warnings(command, warnings.showwarning)
            if getattr(args, "device", None) is not None:  # a malformed device fails before anything loads
                from bertrt.device import check_device

                check_device(args.device)
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        print(f"bertrt {command}: interrupted", file=sys.stderr)
        if getattr(exc, "process_must_end", False):
            # Work that cannot be stopped (a LoadGen run) still holds threads: the interpreter's
            # normal shutdown would abort on them, so the process ends here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `bertrt ... | head`: the reader has gone; nothing more to say
        _silence_stdout()
        return EXIT_SYSTEM
    except Exception as exc:  # noqa: BLE001  (the one net: classify, then one line or a bug report)
        code = exit_code(exc)
        if code is None or os.environ.get("BERTRT_DEBUG"):
            if code is None:
                traceback.print_exc()
                print(f"bertrt {command}: internal error ({type(exc).__name__}): this is a bug in bertrt; "
                      "please report it to the bertrt developers with the traceback above", file=sys.stderr)
                return EXIT_SYSTEM
            raise
        print(f"bertrt {command}: error: {describe(exc)}", file=sys.stderr)
        return code


def _one_line_warnings(command: str, default):
    """``warnings.showwarning`` printing bertrt's own warnings as one line each."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BertrtWarning):
            print(f"bertrt {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
