"""One writer per run directory: ``ulora run --resume`` (and a sweep resuming a run) holds an
exclusive ``fcntl.flock`` on ``<run>/.ulora-lock`` while it writes.

A second process (or thread) that tries to continue the same run while the first one writes gets
a ``RunDirError`` at once, before it reads or changes anything. The kernel releases the lock
when its holder exits in any way (Ctrl-C, SIGTERM, SIGKILL, a crash), so a stale lock cannot
exist: the file that stays behind is empty of meaning and the next run simply locks it again.
The file holds the holder's pid, for the message only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ulora_remote.errors import RunDirError
from ulora_remote.run.storage import storage_error

__all__ = ["LOCK_NAME", "run_lock"]

LOCK_NAME = ".ulora-lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block (blocks never; see the module docstring).

    A folder nobody may write (read-only filesystem, no permission) is not locked: no writer
    can race there, and the resume's own checks then name the problem and the way out.

    Raises:
        RunDirError: another process or thread holds it (names the pid when it can).
        StorageError: the lock file cannot be opened for another reason.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield
            return
        raise storage_error(exc, "lock", path) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"process {holder}" if holder.isdigit() else "another ulora process"
            raise RunDirError(
                f"{run_dir} is being written by {who} right now (it holds {path.name}); two "
                "processes must not continue one run at once: wait for it to end or stop it, "
                "then resume. The lock goes with its process, so no stale lock needs removing"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
