"""Atomic file writes: a temporary file in the same folder, then a rename.

An interrupted run never leaves a half-written model or result behind.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from core.errors import UserError


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuse, before long work starts, a file path whose result could not be
    written at the end: its folder is made if missing and must take a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder; give a file name, e.g. "
                        f"{str(path / 'results.json')!r}.")
    check_writable_folder(path.parent, what)


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Make `folder` if missing and check that a file can be written in it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{what}: cannot write in {str(folder)!r} ({e.strerror}); choose a "
                        "folder you can write to.") from None
