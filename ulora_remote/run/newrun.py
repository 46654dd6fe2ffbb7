"""Starting a run in a folder: the checks before anything is written, and what ``--force``
removes (the earlier run's files and checkpoints, never anything else).

Functions of a ``RunDir``; ``RunDir.refuse_existing`` and ``RunDir.prepare_new`` call them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from typing import TYPE_CHECKING

from ulora_remote.errors import RunDirError
from ulora_remote.run.location import check_location
from ulora_remote.run.storage import resume_command, storage_error, write_atomic

if TYPE_CHECKING:
    from ulora_remote.run.rundir import RunDir

__all__ = ["OURS", "check_new", "make_new", "remove_leftovers"]

# Our files besides the marker; "--force" removes these (and their ".tmp" siblings) only.
OURS = ("config.json", "steps.csv", "evals.csv", "checkpoints.jsonl", "eval_scores.jsonl",
        "summary.json", "plot.png", "metrics.jsonl")
# Checkpoint folders the runner names, and the temporary ones of an interrupted write
# (backends/local/checkpoint.py: ".<name>.tmp-<random>" and ".<name>.old-<random>"): steps,
# Mirror's snapshots, a guard's probation snapshots and the weights held during their evaluation.
# Only names with this run's prefix (``RunDir.checkpoint_prefix``): a user's folder that merely
# looks like one (``best-model-step000999``) is not ours to remove.
_CHECKPOINT_KINDS = r"-(step|snap|probation|probation-eval)\d{6}"
_LEFTOVER = re.compile(r"\..+\.(tmp|old)-.+")


def check_new(rd: RunDir, *, force: bool) -> None:
    """Check that a new run may be written in ``rd``; nothing is created or removed.

    Raises:
        RunDirError: a bad place or name (``location.check_location``); a run is there and
            ``force`` is false (the message names the flag to use); or the folder holds files
            but no marker (refused even with ``force``, which replaces only runs).
    """
    check_location(rd.path)
    if not rd.path.exists():
        return
    if rd.is_run:
        if rd.started and not force:
            _refuse_run(rd)
        return
    entries = sorted(p.name for p in rd.path.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirError(
            f"{rd.path} already exists and is not a run directory (no {rd.marker_path.name}); "
            f"it holds {shown}. --force replaces only a run directory ulora wrote, so nothing "
            "there is touched: choose a new --out, or an empty folder"
        )


def _refuse_run(rd: RunDir) -> None:
    if rd.finished:
        raise RunDirError(f"{rd.path} already holds a finished run; pass --force to "
                          "overwrite it or --out to write somewhere else")
    raise RunDirError(f"{rd.path} holds an unfinished run; continue it with "
                      f"`{resume_command(rd.path)}` or start over with --force")


def make_new(rd: RunDir, *, force: bool, marker: dict[str, object]) -> None:
    """Check (``check_new``), remove an earlier run's files (ours only), create the folder and
    write ``marker``.

    Raises:
        RunDirError: see ``check_new``.
        StorageError: the folder or the marker could not be written; a folder made here is
            removed again.
    """
    check_new(rd, force=force)
    if rd.is_run:
        _remove_earlier_run(rd)
    created = not rd.path.exists()
    try:
        rd.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, "create the folder", rd.path) from exc
    stamped = {**marker, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        write_atomic(rd.marker_path, json.dumps(stamped, indent=2) + "\n")
    except OSError:
        if created:
            shutil.rmtree(rd.path, ignore_errors=True)  # only the empty folder made just now
        raise


def _remove_earlier_run(rd: RunDir) -> None:
    """Remove an earlier run's files and checkpoints; leave every other file."""
    try:
        for name in OURS:
            for p in (rd.path / name, rd.path / f"{name}.tmp"):
                p.unlink(missing_ok=True)
        ours = re.compile(re.escape(rd.checkpoint_prefix) + _CHECKPOINT_KINDS)
        leftover = re.compile(r"\." + re.escape(rd.checkpoint_prefix) + r"-.+\.(tmp|old)-.+")
        if rd.checkpoint_dir.is_dir():
            for entry in rd.checkpoint_dir.iterdir():
                if entry.is_dir() and (ours.fullmatch(entry.name)
                                       or leftover.fullmatch(entry.name)):
                    shutil.rmtree(entry)
            if not any(rd.checkpoint_dir.iterdir()):
                rd.checkpoint_dir.rmdir()
    except OSError as exc:
        raise storage_error(exc, "remove the earlier run's files in", rd.path) from exc


def remove_leftovers(rd: RunDir) -> None:
    """Remove the temporary files and checkpoint folders an interrupted write left behind.

    Raises:
        StorageError: something could not be removed.
    """
    try:
        for name in (rd.marker_path.name, *OURS):
            (rd.path / f"{name}.tmp").unlink(missing_ok=True)
        if rd.checkpoint_dir.is_dir():
            for entry in rd.checkpoint_dir.iterdir():
                if entry.is_dir() and _LEFTOVER.fullmatch(entry.name):
                    shutil.rmtree(entry)
    except OSError as exc:
        raise storage_error(exc, "clean up", rd.path) from exc
