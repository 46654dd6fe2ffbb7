"""The run directory: every file a run leaves behind, and how it is written and truncated.

Layout (docs/design.md, "The run directory")::

    config.json        resolved scenario, lag, warm-up, versions; never a secret
    steps.csv          one row a step, append-only during a run, flushed as it goes
    evals.csv          one row an evaluation (step = optimizer steps applied so far)
    checkpoints.jsonl  one line a checkpoint, appended and fsync'ed after the save returned
    summary.json       written last: its presence marks a finished run
    plot.png           the picture of the run

Crash safety: a SIGKILL can cut the last line of any append-only file. Readers ignore a
partial last line; resume truncates the CSV files to the rows before the checkpoint's step by
writing a temporary file and renaming it over the old one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ulora_remote.errors import CheckpointError, ConfigurationError
from ulora_remote.run.steps import STEP_COLUMNS

__all__ = [
    "EVAL_COLUMNS",
    "STEP_COLUMNS",
    "CsvAppender",
    "RunDir",
    "scrub_secrets",
]

EVAL_COLUMNS: tuple[str, ...] = ("step", "eval_loss", "exact_match")

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


class CsvAppender:
    """Appends rows to a CSV file with a fixed header and flushes every ``flush_every`` rows.

    The header is written when the file is new or empty. Rows are dicts keyed by the columns.
    """

    def __init__(self, path: Path, columns: Sequence[str], flush_every: int = 1) -> None:
        self.path, self.columns, self.flush_every = path, tuple(columns), max(1, flush_every)
        fresh = not path.exists() or path.stat().st_size == 0
        self._fh: TextIO = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, lineterminator="\n")
        self._unflushed = 0
        if fresh:
            self._writer.writeheader()
            self._fh.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({c: _fmt(row[c]) for c in self.columns})
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._unflushed = 0

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()


def _fmt(value: Any) -> Any:
    # repr() of a float round-trips exactly, so a resumed run's CSV can be compared bit for bit.
    return repr(value) if isinstance(value, float) else value


class RunDir:
    """Paths and file operations of one run directory.

    Args:
        path: the directory; created by ``prepare``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.steps_path = self.path / "steps.csv"
        self.evals_path = self.path / "evals.csv"
        self.checkpoints_path = self.path / "checkpoints.jsonl"
        self.eval_scores_path = self.path / "eval_scores.jsonl"  # classification tasks only
        self.summary_path = self.path / "summary.json"
        self.plot_path = self.path / "plot.png"
        self.checkpoint_dir = self.path / "checkpoints"

    # -- state of the directory ---------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.summary_path.exists()

    @property
    def started(self) -> bool:
        return self.config_path.exists()

    def prepare_new(self, *, force: bool) -> None:
        """Make the directory ready for a fresh run.

        Raises:
            ConfigurationError: it already holds a run and ``force`` is false; the message
                names the flag to use.
        """
        self.refuse_existing(force=force)
        for p in (self.steps_path, self.evals_path, self.checkpoints_path, self.eval_scores_path,
                  self.summary_path, self.plot_path, self.config_path):
            p.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def refuse_existing(self, *, force: bool) -> None:
        """Raise ConfigurationError if the directory holds a run and ``force`` is false."""
        if self.started and not force:
            if self.finished:
                raise ConfigurationError(
                    f"{self.path} already holds a finished run; pass --force to overwrite it "
                    "or --out to write somewhere else"
                )
            raise ConfigurationError(
                f"{self.path} holds an unfinished run; continue it with "
                f"`ulora run --resume {self.path}` or start over with --force"
            )

    # -- config and summary -------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        _write_json_atomic(self.config_path, scrub_secrets(config))

    def read_config(self) -> dict[str, Any]:
        """Raises ConfigurationError when the directory holds no run."""
        if not self.config_path.exists():
            raise ConfigurationError(
                f"{self.path} is not a run directory (no config.json); "
                "give the directory that `ulora run` wrote"
            )
        return dict(json.loads(self.config_path.read_text(encoding="utf-8")))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _write_json_atomic(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        return dict(json.loads(self.summary_path.read_text(encoding="utf-8")))

    # -- tables -------------------------------------------------------------------------------
    def steps_appender(self, flush_every: int = 1) -> CsvAppender:
        return CsvAppender(self.steps_path, STEP_COLUMNS, flush_every)

    def evals_appender(self) -> CsvAppender:
        return CsvAppender(self.evals_path, EVAL_COLUMNS, 1)

    def truncate_tables(self, step: int) -> None:
        """Keep only the rows with ``step < step`` in steps.csv and evals.csv (atomic rename)."""
        _truncate_csv(self.steps_path, STEP_COLUMNS, step)
        _truncate_csv(self.evals_path, EVAL_COLUMNS, step)

    # -- task scores (classification) -------------------------------------------------------
    def append_eval_scores(self, record: Mapping[str, Any]) -> None:
        """Append one evaluation's task scores (a JSON line with its ``step``)."""
        with self.eval_scores_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def eval_scores(self) -> list[dict[str, Any]]:
        """One record per evaluation step, sorted by step; a step written again after a resume
        keeps its last record, and a line cut by a kill is ignored."""
        if not self.eval_scores_path.exists():
            return []
        by_step: dict[int, dict[str, Any]] = {}
        for line in self.eval_scores_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_step[int(record["step"])] = record
        return [by_step[k] for k in sorted(by_step)]

    # -- checkpoints --------------------------------------------------------------------------
    def append_checkpoint(self, record: Mapping[str, Any]) -> None:
        """Append one checkpoint line and fsync it, so a later SIGKILL cannot lose it."""
        line = json.dumps(record, sort_keys=True) + "\n"
        if _ends_mid_line(self.checkpoints_path):
            line = "\n" + line  # a kill cut the last line: keep the new one whole and parseable
        with self.checkpoints_path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every complete checkpoint line, oldest first; a cut last line is ignored."""
        if not self.checkpoints_path.exists():
            return []
        records = []
        for line in self.checkpoints_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the tail of a line cut by a kill
        for r in records:
            if not {"step", "ref", "policy"} <= set(r):
                raise CheckpointError(
                    f"{self.checkpoints_path}: a record lacks step/ref/policy: {sorted(r)}"
                )
        return records

    def last_checkpoint(self) -> dict[str, Any] | None:
        records = self.checkpoints()
        return records[-1] if records else None


def _ends_mid_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _truncate_csv(path: Path, columns: Sequence[str], step: int) -> None:
    rows = list(_complete_rows(path, columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(r for r in rows if int(r[0]) < step)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def _complete_rows(path: Path, columns: Sequence[str]) -> Iterable[list[str]]:
    """Data rows with every column present; the header and a cut last line are skipped."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # the last line was cut mid-write
    rows = list(csv.reader(line for line in lines if line))
    return [r for r in rows[1:] if len(r) == len(columns)]
