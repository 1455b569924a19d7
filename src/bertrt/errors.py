"""The errors bertrt expects: each is a problem with the user's input or machine, not a bug.

This module imports nothing from bertrt, so every layer (config, weights, harness, commands) can raise
these and the command line (``bertrt.cli``) can catch them all with one ``except BertrtError``: the
user sees one line naming the flag or file and what to do, never a traceback.
"""

from __future__ import annotations


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
