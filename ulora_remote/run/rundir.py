"""The run directory: every file a run leaves behind, how it is written, checked and truncated.

Layout (docs/design.md, "The run directory"; docs/running.md, "What a run leaves behind")::

    ulora-run.json     the marker, written first: only a folder holding it is a run directory
    config.json        resolved scenario, lag, warm-up, versions; never a secret
    steps.csv          one row a step, append-only during a run, flushed as it goes
    evals.csv          one row an evaluation (step = optimizer steps applied so far)
    eval_scores.jsonl  task-specific scores of an evaluation (only tasks that have some)
    checkpoints.jsonl  one line a checkpoint, appended and fsync'ed after the save returned
    checkpoints/       the local backends' checkpoint folders
    metrics.jsonl      the same tables in tinker-cookbook's format
    summary.json       written last: its presence marks a finished run
    plot.png           the picture of the run

Ownership: ``--force`` replaces only a folder that holds the marker, and removes only the files
above and the checkpoints in ``checkpoints/``; any other file stays. A folder without the marker
is used only when it is empty or absent. Every check runs before anything is written.

Crash safety: a SIGKILL or a full disk can cut the last line of an append-only file; readers
ignore it. JSON files and rewritten tables go through a temporary file and a rename. Resume
(``prepare_resume``) first checks everything it relies on (the marker, config.json unchanged
since the checkpoint, the checkpoint's files against their SHA-256, every row before the
checkpoint present) and only then removes what a kill left behind and truncates the tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ulora_remote.errors import RunDirError
from ulora_remote.run import newrun, records, resumecheck
from ulora_remote.run.location import checkpoint_prefix
from ulora_remote.run.storage import append_line, storage_error, write_atomic
from ulora_remote.run.tables import (
    EVAL_COLUMNS,
    STEP_COLUMNS,
    CsvAppender,
    Table,
    read_table,
    step_columns,
    truncate_table,
)

__all__ = ["EVAL_COLUMNS", "MARKER", "STEP_COLUMNS", "CsvAppender", "RunDir", "scrub_secrets"]

MARKER = "ulora-run.json"
_FORMAT = {"format": "ulora-run", "version": 1}

_SECRET_KEY = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)
# Names that contain "token" but hold no secret: the tokenizer directory and token counts.
_NOT_SECRET = frozenset({"tokenizer", "tokens", "max_tokens"})


def scrub_secrets(value: Any) -> Any:
    """Return ``value`` with every mapping key that looks like a secret removed, recursively.

    A key is dropped when its name contains key/token/secret/password/credential (any case),
    except the harmless names in ``_NOT_SECRET`` such as ``max_tokens``.
    """
    if isinstance(value, Mapping):
        return {
            k: scrub_secrets(v)
            for k, v in value.items()
            if str(k) in _NOT_SECRET or not _SECRET_KEY.search(str(k))
        }
    if isinstance(value, list | tuple):
        return [scrub_secrets(v) for v in value]
    return value


class RunDir:
    """Paths and file operations of one run directory.

    Args:
        path: the directory (made absolute, so messages and checkpoint references do not depend
            on the working directory); created by ``prepare_new``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.marker_path = self.path / MARKER
        self.config_path = self.path / "config.json"
        self.steps_path = self.path / "steps.csv"
        self.evals_path = self.path / "evals.csv"
        self.checkpoints_path = self.path / "checkpoints.jsonl"
        self.eval_scores_path = self.path / "eval_scores.jsonl"  # classification tasks only
        self.summary_path = self.path / "summary.json"
        self.plot_path = self.path / "plot.png"
        self.checkpoint_dir = self.path / "checkpoints"

    @property
    def checkpoint_prefix(self) -> str:
        """The run's checkpoint names start with this (any folder name maps to a safe one)."""
        return checkpoint_prefix(self.path.name)

    # -- state of the directory ---------------------------------------------------------------
    @property
    def is_run(self) -> bool:
        """The folder holds our marker. Raises RunDirError when the marker is damaged."""
        if not self.marker_path.is_file():
            return False
        try:
            marker = json.loads(self.marker_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{self.marker_path} is damaged ({exc}); if {self.path} is a run "
                              "directory, write it again as "
                              f"{json.dumps(_FORMAT)}; otherwise choose another folder") from None
        return isinstance(marker, dict) and marker.get("format") == _FORMAT["format"]

    @property
    def finished(self) -> bool:
        return self.is_run and self.summary_path.exists()

    @property
    def started(self) -> bool:
        return self.is_run and self.config_path.exists()

    def require_run(self) -> None:
        """Raise RunDirError unless the folder holds our marker."""
        if self.is_run:
            return
        if not self.path.exists():
            raise RunDirError(f"{self.path} is not a run directory (it does not exist); give "
                              "the directory that `ulora run` wrote")
        legacy = " (it holds a config.json, but ulora did not mark it as a run directory)" \
            if self.config_path.exists() else ""
        raise RunDirError(f"{self.path} is not a run directory (no {MARKER}){legacy}; give "
                          "the directory that `ulora run` wrote")

    # -- a new run, a resume ------------------------------------------------------------------
    def refuse_existing(self, *, force: bool) -> None:
        """Check that a new run may be written here; nothing is created or removed.

        Raises:
            RunDirError: see ``ulora_remote.run.newrun.check_new``.
        """
        newrun.check_new(self, force=force)

    def prepare_new(self, *, force: bool) -> None:
        """Check, remove an earlier run's files (ours only), create the folder, write the marker.

        Raises:
            RunDirError, StorageError: see ``ulora_remote.run.newrun.make_new``.
        """
        newrun.make_new(self, force=force, marker=dict(_FORMAT))

    def prepare_resume(self) -> dict[str, Any] | None:
        """Check everything a resume relies on, then remove a kill's leftovers; returns the
        last checkpoint (verified) or None. See ``ulora_remote.run.resumecheck``."""
        return resumecheck.prepare_resume(self)

    def start_over_hint(self) -> str:
        """The end of a message about a damaged file: how to recover."""
        return (f"restore it from a copy, or start the run over with "
                f"`ulora run --force --out {shlex.quote(str(self.path))}` and its scenario")

    # -- config and summary -------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        write_atomic(self.config_path, json.dumps(scrub_secrets(config), indent=2,
                                                  sort_keys=True) + "\n")

    def read_config(self) -> dict[str, Any]:
        """The run's config.json.

        Raises:
            RunDirError: not a run directory, no config.json, or one that is not a JSON object
                with a ``scenario`` table.
        """
        self.require_run()
        if not self.config_path.exists():
            raise RunDirError(f"{self.path} holds no config.json: the run was stopped before "
                              "it started; start it again with "
                              f"`ulora run --force --out {shlex.quote(str(self.path))}`")
        config = self._load_json(self.config_path)
        if not isinstance(config, dict) or not isinstance(config.get("scenario"), dict):
            raise RunDirError(f"{self.config_path} does not hold a run's configuration (a JSON "
                              f"object with a 'scenario' table); {self.start_over_hint()}")
        return config

    def config_sha256(self) -> str | None:
        """Digest of config.json's content (key order and spacing ignored); None if absent."""
        if not self.config_path.exists():
            return None
        canonical = json.dumps(self._load_json(self.config_path), sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def _load_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise storage_error(exc, "read", path) from exc
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            reason = ("it is empty" if not path.stat().st_size else "nested too deeply"
                      if isinstance(exc, RecursionError) else f"not valid JSON: {exc}")
            raise RunDirError(f"{path} is damaged ({reason}); {self.start_over_hint()}") from None

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        summary = self._load_json(self.summary_path)
        if not isinstance(summary, dict):
            raise RunDirError(f"{self.summary_path} is not a JSON object; rewrite it with "
                              f"`ulora report {shlex.quote(str(self.path))}`")
        return summary

    # -- tables -------------------------------------------------------------------------------
    def steps_appender(self, flush_every: int = 1, *, multitask: bool = False) -> CsvAppender:
        """steps.csv, appended to: with the multi-task columns for a run with ``[adapters]``
        (a file already begun keeps its own columns)."""
        columns = step_columns(self.steps_path, multitask=multitask)
        return CsvAppender(self.steps_path, columns, flush_every)

    def evals_appender(self) -> CsvAppender:
        return CsvAppender(self.evals_path, EVAL_COLUMNS, 1)

    def read_steps(self) -> Table:
        """steps.csv, checked: every step from 0 on, in order, each row whole.

        Raises:
            RunDirError: the file is damaged, or rows are missing in between.
        """
        table = read_table(self.steps_path, step_columns(self.steps_path),
                           fix=self.start_over_hint())
        if table.steps != list(range(table.rows)):
            gap = next(i for i, s in enumerate(table.steps) if s != i)
            raise RunDirError(f"{self.steps_path}: the rows of steps {gap}-{table.steps[gap] - 1} "
                              f"are missing (the file was cut or edited); {self.start_over_hint()}")
        return table

    def read_evals(self) -> Table:
        """evals.csv, checked (steps in increasing order, each row whole)."""
        return read_table(self.evals_path, EVAL_COLUMNS, fix=self.start_over_hint())

    def truncate_tables(self, step: int) -> None:
        """Keep only the rows with ``step < step`` in steps.csv and evals.csv (atomic rename),
        after checking they are all there.

        Raises:
            RunDirError: rows before ``step`` are missing or damaged; nothing was changed.
        """
        steps, evals = resumecheck.check_tables(self, step)
        truncate_table(steps, step)
        truncate_table(evals, step)

    # -- task scores (classification) -------------------------------------------------------
    def append_eval_scores(self, record: Mapping[str, Any]) -> None:
        """Append one evaluation's task scores (a JSON line with its ``step``)."""
        append_line(self.eval_scores_path, json.dumps(record, sort_keys=True))

    def eval_scores(self) -> list[dict[str, Any]]:
        """One record per evaluation step, sorted by step; a step written again after a resume
        keeps its last record, and a last line cut by a kill is ignored.

        Raises:
            RunDirError: a damaged line other than a cut last one.
        """
        if not self.eval_scores_path.exists():
            return []
        by_step: dict[int, dict[str, Any]] = {}
        text = self.eval_scores_path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.split("\n")[:-1], 1):
            try:
                record = json.loads(line)
                by_step[int(record["step"])] = record
            except (json.JSONDecodeError, TypeError, KeyError, ValueError, RecursionError):
                raise RunDirError(f"{self.eval_scores_path}, line {n} is damaged; "
                                  f"{self.start_over_hint()}") from None
        return [by_step[k] for k in sorted(by_step)]

    # -- checkpoints --------------------------------------------------------------------------
    def append_checkpoint(self, record: Mapping[str, Any]) -> None:
        """Append one checkpoint line and fsync it, so a later SIGKILL cannot lose it.

        A ``ref`` that is a path on disk is stored relative to the run directory (absolute when
        outside it) with the SHA-256 of its files; the config's digest is added (see
        ``ulora_remote.run.records``).
        """
        line = dict(record)
        line.update(records.localize(str(record["ref"]), self.path))
        config_sha256 = self.config_sha256()
        if config_sha256 is not None:
            line["config_sha256"] = config_sha256
        append_line(self.checkpoints_path, json.dumps(line, sort_keys=True))

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every complete checkpoint record as stored, oldest first; a cut last line is ignored.

        Raises:
            RunDirError: a damaged line elsewhere, or a record that is not a checkpoint's.
        """
        return records.read_records(self.checkpoints_path, fix=self.start_over_hint())

    def last_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint's record, verified, with ``ref`` as the backend loads it.

        Raises:
            RunDirError, CheckpointError: see ``ulora_remote.run.records.verify``.
        """
        return resumecheck.last_verified(self)
