"""File operations of the run directory that never leave a file half-written, and the one place
where an ``OSError`` becomes a ``StorageError`` whose message names the path and the fix.

* ``write_atomic``: a temporary sibling, fsync'ed, renamed over the target; on failure the
  temporary file is removed and the old target is untouched.
* ``append_line``: one line appended and fsync'ed; a line cut by a kill or a full disk is the
  file's last, without its newline (readers ignore it; ``cut_partial_line`` removes it).
* ``digest_tree``: SHA-256 of every file under a checkpoint, to verify it before a resume.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ulora_remote.errors import StorageError

__all__ = [
    "advice",
    "append_line",
    "cut_partial_line",
    "digest_tree",
    "resume_command",
    "storage_error",
    "write_atomic",
]

_ADVICE: Mapping[int, str] = {
    errno_codes.ENOSPC: "the disk is full: free some space",
    errno_codes.EDQUOT: "the disk quota is used up: free some space",
    errno_codes.EROFS: "the filesystem is read-only: choose a writable folder",
    errno_codes.EACCES: "permission denied: choose a folder you may write to, or fix its "
                        "permissions",
    errno_codes.EPERM: "the operation is not permitted there: choose another folder",
    errno_codes.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno_codes.EISDIR: "it is a folder, not a file: choose another path",
    errno_codes.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno_codes.EFBIG: "the file reached the size limit (ulimit -f): raise the limit",
    errno_codes.ENOENT: "it does not exist: check the path",
    errno_codes.EIO: "the disk reported an I/O error: check the disk",
}


def resume_command(run_dir: Path) -> str:
    """``ulora run --resume '<absolute path>'``: works from any working directory."""
    return f"ulora run --resume {shlex.quote(str(Path(os.path.abspath(run_dir))))}"


def advice(code: int | None) -> str:
    """What to do about an OSError's errno ``code`` (a generic hint when it is unusual)."""
    return _ADVICE.get(code or -1, "check the path and the disk")


def storage_error(exc: OSError, doing: str, path: Path | str) -> StorageError:
    """A ``StorageError`` for ``exc``: ``could not <doing> <path>: <cause>; <advice>``.

    Args:
        exc: the OSError (its ``filename`` is used when it names a more precise path).
        doing: the action, e.g. ``"write"`` or ``"create the folder"``.
        path: the file or folder concerned.
    """
    if isinstance(exc, StorageError):
        return exc
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else str(path)
    cause = exc.strerror or str(exc) or type(exc).__name__
    message = f"could not {doing} {where}: {cause}; {advice(exc.errno)}"
    return StorageError(message, errno=exc.errno, filename=where)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically (a reader sees the old or the new file).

    Raises:
        StorageError: the file could not be written; the old file (if any) is unchanged and no
            temporary file is left behind.
    """
    tmp = path.with_name(f"{path.name}.tmp")
    blob = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with tmp.open("wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise storage_error(exc, "write", path) from exc


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (no newline in it) plus a newline and fsync; a partial last line left by a
    kill is removed first, so every complete line stays parseable.

    Raises:
        StorageError: the line could not be written (it may be left cut, which readers ignore).
    """
    try:
        cut_partial_line(path)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise storage_error(exc, "append to", path) from exc


def cut_partial_line(path: Path) -> None:
    """Truncate ``path`` after its last newline (a no-op when it ends with one or is absent)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        keep = _last_newline_end(fh, size)
        if keep != size:
            fh.truncate(keep)


def _last_newline_end(fh: BinaryIO, size: int) -> int:
    """The offset just after the file's last newline (0 when there is none)."""
    chunk = 4096
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        fh.seek(start)
        block = fh.read(pos - start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def digest_tree(path: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``path`` keyed by its POSIX path relative to ``path``
    (a single file is keyed ``"."``).

    Raises:
        OSError: a file could not be read.
    """
    if path.is_file():
        return {".": _sha256(path)}
    return {
        p.relative_to(path).as_posix(): _sha256(p)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # the original error is the one to report
