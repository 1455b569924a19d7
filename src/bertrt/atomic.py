"""Folders written whole or not at all: fill a temporary sibling, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder_atomically(out: str | Path, fill: Callable[[Path], None], *,
                            may_replace: Callable[[Path], bool] = lambda existing: True,
                            refuse_message: str = "exists and cannot be replaced") -> Path:
    """Create folder ``out`` with ``fill(tmp)``; an interrupted write never leaves a half-written
    folder, and an existing ``out`` is swapped out only once the new one is complete.

    Args:
        out: the folder to create or replace.
        fill: writes the folder's files into the temporary folder it is given.
        may_replace: whether an existing ``out`` may be replaced (raise ValueError otherwise).
        refuse_message: the reason given when it may not.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        _normal_permissions(tmp)
        if out.exists():
            if not may_replace(out):
                raise ValueError(f"{out}: {refuse_message}")
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out, backup)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes the folder private (0700); give it the permissions of a normal folder."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.iterdir():
        os.chmod(item, 0o666 & ~umask)


def write_file_atomically(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create or replace file ``out`` with ``fill(tmp)`` (which writes the temporary sibling it is
    given): readers see the old file or the whole new one, never part of it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        fill(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
