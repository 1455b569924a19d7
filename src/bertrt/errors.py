"""The errors bertrt expects: each is a problem with the user's input or machine, not a bug.

This module imports nothing from bertrt, so every layer (config, weights, harness, commands) can raise
these and the command line (``bertrt.cli``) can catch them all with one ``except BertrtError``: the
user sees one line naming the flag or file and what to do, never a traceback.
"""

from __future__ import annotations

import errno

EXIT_INPUT = 2  # bad arguments or input files
EXIT_SYSTEM = 1  # the machine's errors (disk full, permissions) and bugs


class BertrtError(Exception):
    """Base of every expected error: printed as one line by the ``bertrt`` command."""


class UserError(BertrtError):
    """A bad argument, a bad file or an unusable destination; the message says what to do."""


class ConfigError(BertrtError, ValueError):
    """A config that does not describe a BERT encoder bertrt can run."""


class CheckpointError(BertrtError, ValueError):
    """A checkpoint that cannot be loaded; the message names what is wrong."""


class DeviceError(BertrtError, ValueError):
    """A device string that is not 'auto', 'cpu', 'cuda' or 'cuda:N', or names a device not present."""


class BertrtWarning(UserWarning):
    """bertrt changed what was asked (cut a question, dropped a duplicate, clamped a window): the
    ``bertrt`` command prints it as one line ``bertrt COMMAND: warning: ...`` on stderr."""


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected error, or None for a bug."""
    if isinstance(exc, BertrtError):
        return getattr(exc, "exit_code", EXIT_INPUT)
    if isinstance(exc, (UnicodeDecodeError, ValueError, RecursionError)):
        return EXIT_INPUT
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return EXIT_INPUT
    if isinstance(exc, (OSError, MemoryError)):
        return EXIT_SYSTEM
    if isinstance(exc, ImportError) and exc.name and exc.name.split(".")[0] != "bertrt":
        return EXIT_SYSTEM  # an optional package that is not installed (bertrt's own imports failing are bugs)
    return None


def describe(exc: BaseException) -> str:
    """One line for an expected error."""
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller batch or model"
    if isinstance(exc, ImportError):
        return f"the optional package {exc.name!r} is not installed (pip install it, or the bertrt extra that needs it)"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        advice = {errno.ENOSPC: " (free some space or write elsewhere)",
                  errno.EACCES: " (choose a folder you can write to)",
                  errno.EROFS: " (choose a writable folder)"}.get(exc.errno, "")
        return f"{exc.strerror}{where}{advice}"
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__
