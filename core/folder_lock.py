"""One process at a time in a run folder.

An flock on <folder>/.edgepipe.lock: the kernel drops it when the holder exits,
however it exits, so a killed run never leaves a stale lock behind. The file names
the holder (pid, host, command, start time) for the message a second run shows.
flock is per host: two machines sharing a folder over NFS are not kept apart.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from core.atomic import FILE_MODE
from core.errors import UserError

LOCK_NAME = ".edgepipe.lock"


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `folder`'s lock for the block; refuse with the holder named if another
    process holds it. `what` names the folder in the message (e.g. "output_dir")."""
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{what} {str(folder)!r} is in use by another edgepipe run "
                            f"({_holder(fd)}); wait for it to finish, stop it, or choose another "
                            f"{what}.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me()).encode())
        yield
    finally:
        os.close(fd)


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says (empty while the holder is just starting)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
    except json.JSONDecodeError:
        holder = None
    if not isinstance(holder, dict):
        return "a process that is just starting"
    return (f"process {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')}: {holder.get('command')}")
