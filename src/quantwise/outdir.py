"""Output folders that never destroy what quantwise did not write.

Every folder quantwise writes whole carries a marker file (:data:`MARKER`). A folder is
replaced only when it is empty or carries the marker; anything else is refused with one line.
The working folder, its ancestors, the home folder and ``/`` are never an output. A run that
writes into a folder over time (``compare``) holds a lock on it.

Example:
    >>> out = check_out("runs/mnist", overwrite=False, flag="--out")
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quantwise.errors import UserError

MARKER = ".quantwise-out"
LOCK = ".quantwise-lock"
_OWN_SIGNS = (MARKER, "quantwise.json")  # quantwise.json: a saved QuantizedModel folder


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a folder quantwise wrote (it carries the marker)."""
    return path.is_dir() and any((path / s).is_file() for s in _OWN_SIGNS)


def _is_empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be an output folder, or None."""
    p = path.resolve()
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        return "is the current folder or one of its parents"
    if p == Path.home().resolve() or p == Path(p.anchor):
        return "is the home folder or the file-system root"
    return None


def check_out(path: str | os.PathLike[str], overwrite: bool = False, flag: str = "--out", resume: bool = False) -> Path:
    """Validate an output folder before any work; returns it as a Path.

    Refuses (one line, exit 2): the working folder or an ancestor, home or ``/``; a path that is
    a file; a non-empty folder quantwise did not write; a folder quantwise wrote, unless
    ``overwrite`` (or ``resume``, for a run that continues its own folder); a parent that
    cannot be written.
    """
    p = Path(path)
    if str(path).strip() == "":
        raise UserError(f"{flag} is empty: name a folder to write, e.g. {flag} quantwise-out")
    if why := _protected(p):
        raise UserError(f"{flag} {path} {why}: name a new folder, e.g. {flag} {p / 'quantwise-out'}")
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: name a new folder")
    for q in p.resolve().parents:
        if q.exists() and not q.is_dir():
            raise UserError(f"{flag} {path}: {q} is a file, not a folder: name a new folder")
    if p.is_dir() and not _is_empty(p):
        if not is_ours(p):
            raise UserError(
                f"{flag} {path} holds files quantwise did not write: choose a new or empty folder "
                "(quantwise never deletes files it did not write)"
            )
        if not (overwrite or resume):
            raise UserError(
                f"{flag} {path} holds an earlier quantwise output: pass --overwrite to replace it, "
                "or choose another folder"
            )
    parent = _existing_parent(p)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {parent} (permission denied): choose a folder you can write")
    return p


def _existing_parent(p: Path) -> Path:
    q = p.resolve()
    while not q.exists():
        q = q.parent
    return q if q.is_dir() else q.parent


def mark(path: Path) -> None:
    """Write the marker that says quantwise wrote ``path``."""
    (path / MARKER).write_text("written by quantwise; the folder may be replaced by quantwise with --overwrite\n")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it replaces ``path`` whole when the block
    succeeds and is removed if it fails, so ``path`` is never left half-written.

    ``path`` is replaced only if it is absent, empty, or a folder quantwise wrote; anything
    else is refused before any work (:func:`check_out` gives the caller's flag in the message).
    """
    if path.exists() and not (path.is_dir() and (_is_empty(path) or is_ours(path))):
        raise UserError(f"{path} exists and was not written by quantwise: it is never replaced; choose a new folder")
    if why := _protected(path):
        raise UserError(f"{path} {why}: choose a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        mark(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")  # atomic: path never holds a mix of old and new
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def locked_out(path: Path) -> Iterator[Path]:
    """Hold an exclusive lock on output folder ``path`` (created, marked) for a run's duration.

    A second run on the same folder is refused with the holder's process id.
    """
    path.mkdir(parents=True, exist_ok=True)
    mark(path)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"{path} is in use by another quantwise run (pid {holder}): wait for it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)


def clear_previous_run(path: Path, names: tuple[str, ...]) -> None:
    """Remove the files of an earlier run that quantwise wrote in ``path`` (only those ``names``),
    each moved aside first so that no reader sees a half-removed folder."""
    for name in names:
        p = path / name
        if not p.exists():
            continue
        aside = path / f".{name}.old"
        if aside.exists():
            shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
        os.replace(p, aside)
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
