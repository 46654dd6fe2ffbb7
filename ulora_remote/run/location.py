"""Where a run directory may go, checked before anything is written, and the names derived
from it.

Any folder name the filesystem accepts is a valid run folder (spaces, ``+``, non-ASCII letters
included); what is refused up front, with the fix in the message: the filesystem root, control
characters, a name over 255 bytes or a path too long for the files inside, a parent that is a
file, a place that is not writable. Checkpoint names are derived with ``checkpoint_prefix``,
which maps any folder name to the letters, digits, ``_``, ``-`` and ``.`` every backend accepts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ulora_remote.errors import RunDirError

__all__ = ["check_location", "checkpoint_prefix", "safe_folder_name"]

NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096
# The longest path ulora writes inside a run directory, beyond the checkpoint prefix:
# "/checkpoints/.<prefix>-step000000.tmp-<8 random characters>/optimizer.safetensors" and the like.
_LONGEST_INSIDE = 160
_PREFIX_MAX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_location(path: Path, *, flag: str = "--out") -> None:
    """Raise unless a run directory can be made at ``path`` (absolute).

    Nothing is created. An existing ``path`` must be a writable folder; otherwise its nearest
    existing ancestor must be a writable folder.

    Raises:
        RunDirError: the message names the problem and says to choose another ``flag``.
    """
    name = path.name
    if not name:
        raise RunDirError(f"{flag} {path} is the filesystem root: give a folder for the run, "
                          f"e.g. {flag} runs/my-run")
    if _CONTROL.search(name):
        raise RunDirError(f"{flag} {name!r}: the folder name contains a control character "
                          f"(a newline or tab); choose another {flag}")
    if len(os.fsencode(name)) > NAME_MAX:
        raise RunDirError(f"{flag} ...{name[-40:]!r}: the folder name is "
                          f"{len(os.fsencode(name))} bytes, over the limit of {NAME_MAX}; choose "
                          f"a shorter {flag} (a default name comes from the scenario's name)")
    if len(os.fsencode(str(path))) + _PREFIX_MAX + _LONGEST_INSIDE > PATH_MAX:
        raise RunDirError(f"{flag} {str(path)[:60]}...: the path is too long for the files a "
                          f"run writes inside it; choose a shorter {flag}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == path else \
            f"cannot be made: {existing} is a file, not a folder"
        raise RunDirError(f"{flag} {path} {what}; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is where it would be made)"
        raise RunDirError(f"{flag} {path}: {existing} is not writable (a read-only filesystem "
                          f"or no permission){where}; choose another {flag}")


def checkpoint_prefix(folder_name: str) -> str:
    """A checkpoint name prefix that every backend accepts, from a run folder's name.

    ``"my run+é"`` → ``"my-run-"``; at most 100 characters; ``"run"`` when nothing is left.
    """
    safe = _UNSAFE.sub("-", folder_name)
    safe = re.sub(r"\.{2,}", ".", safe).lstrip(".-")[:_PREFIX_MAX]
    return safe or "run"


def safe_folder_name(text: str, limit: int = 120) -> str:
    """One path component from free text (a scenario's name): separators, ``..``, control
    characters and leading dots replaced, at most ``limit`` characters (a default run folder
    then always stays inside its parent)."""
    name = re.sub(r"[/\\\x00-\x1f\x7f]+", "-", text)
    name = re.sub(r"\.{2,}", "-", name).lstrip(".-")[:limit]
    return name or "run"
