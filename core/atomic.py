"""Atomic file writes: a temporary file in the same folder, then a rename.

An interrupted run never leaves a half-written model or result behind, and a full
disk is reported as which file could not be written and how much space is left.
"""
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files get the permissions any other file the user writes gets (mkstemp's are 0600).
FILE_MODE = 0o666 & ~_umask()


def is_disk_full(error: OSError) -> bool:
    return error.errno in DISK_FULL


def disk_full(path: str | os.PathLike | None, error: OSError) -> UserError:
    """The error a user sees for a full disk or quota: the file and the space left."""
    where = Path(path) if path else Path.cwd()
    folder = next((p for p in (where, *where.parents) if p.exists()), Path.cwd())
    free = shutil.disk_usage(folder).free
    what = f"writing {str(where)!r}" if path else "writing a file"
    return UserError(f"no space left on the device ({error.strerror}) {what}: {_size(free)} free "
                     f"on that file system. Free some space or choose another folder, then rerun "
                     "the same command to resume.")


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} bytes"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} GiB"


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
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(path, e) from None
        raise
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
