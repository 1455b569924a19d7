"""Outputs written whole or not at all, into destinations checked before any work.

- ``check_destination`` refuses, with one line naming the flag, an output that would destroy
  something: the input itself, another output of the same run, a path under a regular file, an
  unwritable folder, or an existing file or folder that bertrt did not write (unless ``overwrite``).
- A folder bertrt writes carries a marker file (``MARKER``) naming its kind; a marked folder of
  the same kind (or an empty one) may be replaced, anything else only with ``overwrite``.
- ``write_folder_atomically`` / ``write_file_atomically`` / ``write_text_atomically`` fill a temporary
  sibling and rename it into place, so an interrupted or failed write leaves the old output intact
  and no partial file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from bertrt.errors import UserError

MARKER = ".bertrt-output"


def marker_text(kind: str) -> str:
    """The content of the marker file of a folder of ``kind`` ("model", "loadgen", ...)."""
    return json.dumps({"written_by": "bertrt", "kind": kind}) + "\n"


# Folders bertrt wrote before it marked them, recognised by the files only it writes together.
_UNMARKED = {"model": ("config.json", "training_log.json"),
             "loadgen": ("report.json", "batches.json", "mlperf_log_summary.txt")}


def folder_kind(folder: Path) -> str | None:
    """The kind recorded in ``folder``'s marker, or None when bertrt did not write it."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return next((kind for kind, names in _UNMARKED.items() if all((folder / n).is_file() for n in names)), None)
    return data.get("kind") if isinstance(data, dict) and data.get("written_by") == "bertrt" else None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(child: Path, parent: Path) -> bool:
    try:
        return child.resolve().is_relative_to(parent.resolve())
    except OSError:
        return False


def check_destination(path: str | Path, *, flag: str = "--out", folder: bool = False, kind: str | None = None,
                      inputs: Iterable[tuple[str, str | Path | None]] = (),
                      siblings: Iterable[tuple[str, str | Path | None]] = (),
                      overwrite: bool | None = False, replaceable: Callable[[Path], bool] | None = None) -> Path:
    """Check, before any work, that ``path`` can be written without destroying anything.

    Args:
        path: the file (or, with ``folder``, the folder) the command will write.
        flag: the option that named it, for messages.
        folder: ``path`` is a folder (replaced whole); otherwise one file.
        kind: the marker kind of a folder bertrt may replace without ``overwrite``.
        inputs: (flag, path) of what the run reads: the output may not be, or contain, any of them.
        siblings: (name, path) of the run's other outputs: none may be the same path.
        overwrite: the user passed ``--overwrite``: replace an existing output bertrt did not write
            (None: the command has no ``--overwrite``, and its messages do not offer one).
        replaceable: for outputs that carry their own mark instead of ``MARKER`` (an engine's
            engine.json): whether an existing folder may be replaced.

    Returns:
        ``path`` as a Path.

    Raises:
        UserError: one line naming ``flag``, the path and what to do.
    """
    raw = str(path)
    if not raw.strip():
        raise UserError(f"{flag}: the path is empty")
    out = Path(raw).expanduser()
    for name, item in inputs:
        if item is None or not str(item):
            continue
        item = Path(item).expanduser()
        if _same(out, item):
            raise UserError(f"{flag} {out}: that is the input given by {name}; choose another output path")
        if folder and out.is_dir() and item.exists() and _inside(item, out):
            raise UserError(f"{flag} {out}: the input {item} ({name}) is inside it; choose another output folder")
    for name, item in siblings:
        if item is not None and _same(out, Path(item)):
            raise UserError(f"{flag} {out}: the run also writes its {name} there; choose another name")
    # The nearest existing ancestor must be a folder we can write into.
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            raise UserError(f"{flag} {out}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: cannot write in {parent} (permission denied); choose another place")
    if out.is_symlink() and not out.exists():
        raise UserError(f"{flag} {out}: a broken link; remove it or choose another path")
    if not out.exists():
        return out
    if folder:
        if not out.is_dir():
            raise UserError(f"{flag} {out}: exists and is a file, not a folder; choose another path")
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {out}: cannot write in it (permission denied)")
        if (overwrite or not any(out.iterdir()) or (kind is not None and folder_kind(out) == kind)
                or (replaceable is not None and replaceable(out))):
            return out
        what = f"a {folder_kind(out)} folder" if folder_kind(out) else "files bertrt did not write"
        hint = "" if overwrite is None else ", or pass --overwrite to replace it (everything in it is deleted)"
        raise UserError(f"{flag} {out}: exists and holds {what}; choose a new folder{hint}")
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; give a file name")
    if not overwrite:
        hint = "" if overwrite is None else ", or pass --overwrite to replace it"
        raise UserError(f"{flag} {out}: exists; choose another name{hint}")
    if not os.access(out, os.W_OK):
        raise UserError(f"{flag} {out}: cannot replace it (permission denied)")
    return out


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling and a rename (``write_file_atomically``)."""
    def fill(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write_file_atomically(path, fill)


def write_folder_atomically(out: str | Path, fill: Callable[[Path], None], *,
                            may_replace: Callable[[Path], bool] = lambda existing: True,
                            refuse_message: str = "exists and cannot be replaced",
                            kind: str | None = None) -> Path:
    """Create folder ``out`` with ``fill(tmp)``; an interrupted write never leaves a half-written
    folder, and an existing ``out`` is swapped out only once the new one is complete.

    Args:
        out: the folder to create or replace.
        fill: writes the folder's files into the temporary folder it is given.
        may_replace: whether an existing ``out`` may be replaced (raise ValueError otherwise).
        refuse_message: the reason given when it may not.
        kind: write the marker file of this kind into the folder (see ``check_destination``).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        if kind is not None:
            (tmp / MARKER).write_text(marker_text(kind), encoding="utf-8")
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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes the folder private (0700); give it the permissions of a normal folder."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.iterdir():
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def write_file_atomically(out: str | Path, fill: Callable[[Path], None], *, keep_suffix: bool = False) -> Path:
    """Create or replace file ``out`` with ``fill(tmp)`` (which writes the temporary sibling it is
    given): readers see the old file or the whole new one, never part of it.

    ``keep_suffix``: the temporary file ends like ``out`` (for writers that pick the format from
    the name, such as matplotlib's ``savefig``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix if keep_suffix else ".tmp", dir=out.parent)
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
