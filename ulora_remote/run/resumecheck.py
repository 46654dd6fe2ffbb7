"""What a resume checks before it changes anything: the marker and config.json, the last
checkpoint (its files against their SHA-256, the config it was made with), and every row
before it in steps.csv and evals.csv. A failed check is a ``RunDirError`` or
``CheckpointError`` that says what is wrong and how to recover; nothing is dropped or replayed
silently.

Functions of a ``RunDir``; ``RunDir.prepare_resume``, ``last_checkpoint`` and
``truncate_tables`` call them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ulora_remote.errors import RunDirError
from ulora_remote.run import records
from ulora_remote.run.newrun import remove_leftovers
from ulora_remote.run.tables import EVAL_COLUMNS, Table, check_rows, read_table, step_columns

if TYPE_CHECKING:
    from ulora_remote.run.rundir import RunDir

__all__ = ["check_tables", "last_verified", "prepare_resume"]


def prepare_resume(rd: RunDir) -> dict[str, Any] | None:
    """Check that the run in ``rd`` can continue exactly at its last checkpoint, then remove
    what an interrupted write left behind. Nothing is changed when a check fails.

    Returns:
        The last checkpoint's record with ``ref`` resolved (None: no checkpoint yet; the run
        starts again from step 0).

    Raises:
        RunDirError: not a run directory, a damaged or edited file, config.json changed since
            the checkpoint, rows before the checkpoint missing, a folder that is not writable.
        CheckpointError: the checkpoint is missing, incomplete or damaged.
    """
    rd.read_config()
    if not os.access(rd.path, os.W_OK | os.X_OK):
        raise RunDirError(f"{rd.path} is not writable (a read-only filesystem or no "
                          "permission), so the run cannot go on there; copy the folder "
                          "somewhere writable and resume the copy (a copy resumes from its "
                          "own files)")
    checkpoint = last_verified(rd)
    steps, evals = check_tables(rd, checkpoint["step"] if checkpoint else 0)
    if checkpoint is None and (steps.rows or [s for s in evals.steps if s > 0]):
        # A run stopped before its step-0 checkpoint has no rows but maybe the step-0 eval.
        raise RunDirError(f"{rd.steps_path.name} holds {steps.rows} rows but "
                          f"{rd.checkpoints_path.name} lists no checkpoint to continue from: "
                          f"{rd.checkpoints_path} was emptied or removed; {rd.start_over_hint()}")
    remove_leftovers(rd)
    return checkpoint


def last_verified(rd: RunDir) -> dict[str, Any] | None:
    """The last checkpoint's record, verified (``records.verify``), ``ref`` ready to load."""
    found = rd.checkpoints()
    if not found:
        return None
    last = found[-1]
    fix = rd.start_over_hint()
    if len(found) > 1:
        fix = (f"restore it from a copy, or delete the last line of {rd.checkpoints_path.name} "
               f"to resume from the checkpoint at step {found[-2]['step']} (the steps after "
               "it are trained again)")
    ref = records.verify(last, rd.path, config_sha256=rd.config_sha256(), fix=fix)
    return {**last, "ref": ref}


def check_tables(rd: RunDir, k: int) -> tuple[Table, Table]:
    """Both tables, checked to hold exactly the rows a run writes before step ``k``.

    Raises:
        RunDirError: a damaged table, or rows below ``k`` missing or extra.
    """
    what = f"the checkpoint at step {k}" if k else "a restart from step 0"
    fix = rd.start_over_hint()
    steps = read_table(rd.steps_path, step_columns(rd.steps_path), fix=fix)
    evals = read_table(rd.evals_path, EVAL_COLUMNS, fix=fix)
    earlier = _earlier_checkpoint(rd, steps, k)
    if earlier is not None:
        fix += (f", or delete the lines after step {earlier} from {rd.checkpoints_path.name} "
                "to resume from there")
    check_rows(steps, k, list(range(k)), what=what, fix=fix)
    check_rows(evals, k, _expected_evals(rd, k), what=what, fix=rd.start_over_hint())
    return steps, evals


def _earlier_checkpoint(rd: RunDir, steps: Table, k: int) -> int | None:
    """The last checkpoint before ``k`` whose rows are all there (a way to recover)."""
    whole = next((i for i, s in enumerate(steps.steps) if s != i), steps.rows)
    options = [r["step"] for r in rd.checkpoints() if r["step"] < k and r["step"] <= whole]
    return options[-1] if options else None


def _expected_evals(rd: RunDir, k: int) -> list[int] | None:
    """Evaluation steps below k: 0 and every ``eval.every`` (None: the config does not say)."""
    try:
        every = rd.read_config()["scenario"]["eval"]["every"]
    except (RunDirError, KeyError, TypeError):
        return None
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        return None
    return list(range(0, k, every))
