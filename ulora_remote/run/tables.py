"""steps.csv and evals.csv: appended row by row during a run, read back strictly.

Writing: ``CsvAppender`` writes the header to a new file and flushes every row, so a kill or a
full disk can cut at most the last line. Reading: ``read_table`` accepts exactly that damage (a
last line without its newline is ignored) and nothing else; any other line that does not parse,
a wrong header, a value of the wrong type, or steps out of order raise ``RunDirError`` naming the
file, the line and the fix. ``check_rows`` makes sure the rows before a checkpoint's step are
all there before ``truncate_table`` drops the later ones, so a resume never continues over a gap.
"""

from __future__ import annotations

import csv
import io
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ulora_remote.errors import RunDirError
from ulora_remote.run.steps import MULTITASK_STEP_COLUMNS, STEP_COLUMNS, StepRow
from ulora_remote.run.storage import storage_error, write_atomic

__all__ = [
    "EVAL_COLUMNS",
    "STEP_COLUMNS",
    "CsvAppender",
    "Table",
    "check_rows",
    "read_table",
    "step_columns",
    "truncate_table",
]

EVAL_COLUMNS: tuple[str, ...] = ("step", "eval_loss", "exact_match")

_INT = re.compile(r"-?\d+")


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError("an integer")
    return int(text)


def _parse_bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError("True or False")
    return text == "True"


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("a number") from None


_PARSERS: Mapping[type, Callable[[str], Any]] = {
    int: _parse_int, bool: _parse_bool, str: str, float: _parse_float,
}
# Each steps.csv column is read as its StepRow field's type (evals.csv: step, then numbers).
_KINDS: Mapping[str, Callable[[str], Any]] = {
    name: _PARSERS[kind] for name, kind in typing.get_type_hints(StepRow).items()
    if kind is not float
}


class CsvAppender:
    """Appends rows to a CSV file with a fixed header and flushes every ``flush_every`` rows.

    The header is written when the file is new or empty. Rows are dicts keyed by the columns.

    Raises:
        StorageError: (any method) the file could not be written; the message names it and the
            fix.
    """

    def __init__(self, path: Path, columns: Sequence[str], flush_every: int = 1) -> None:
        self.path, self.columns, self.flush_every = path, tuple(columns), max(1, flush_every)
        self._failed = False
        self._unflushed = 0
        try:
            fresh = not path.exists() or path.stat().st_size == 0
            self._fh: TextIO = path.open("a", newline="", encoding="utf-8")
        except OSError as exc:
            raise storage_error(exc, "open", path) from exc
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, lineterminator="\n")
        if fresh:
            self._guarded(self._writer.writeheader)
            self.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._guarded(lambda: self._writer.writerow({c: _fmt(row[c]) for c in self.columns}))
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._fh.closed:
            self._guarded(self._fh.flush)
            self._unflushed = 0

    def close(self) -> None:
        """Flush and close. After a failed write the file is closed without another attempt
        (the error was raised already; the cut row is ignored by readers)."""
        if self._fh.closed:
            return
        if self._failed:
            try:
                self._fh.close()
            except OSError:
                pass  # the buffered row again: already reported by the failed write
            return
        try:
            self.flush()
        finally:
            if not self._fh.closed:
                try:
                    self._fh.close()
                except OSError:
                    pass

    def _guarded(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except OSError as exc:
            self._failed = True
            raise storage_error(exc, "write", self.path) from exc


def _fmt(value: Any) -> Any:
    # repr() of a float round-trips exactly, so a resumed run's CSV can be compared bit for bit.
    return repr(value) if isinstance(value, float) else value


@dataclass(frozen=True)
class Table:
    """The complete rows of a table file, validated: ``lines`` are the raw text lines (header
    first), ``steps`` the step of each data row."""

    path: Path
    columns: tuple[str, ...]
    lines: list[str]
    steps: list[int]

    @property
    def rows(self) -> int:
        return len(self.steps)

    def text(self, below: int | None = None) -> str:
        """The header and the rows (those with ``step < below`` when given) as CSV text."""
        keep = [line for line, s in zip(self.lines[1:], self.steps, strict=True)
                if below is None or s < below]
        return "\n".join([",".join(self.columns), *keep]) + "\n"

    def frame(self) -> Any:
        """The rows as a pandas DataFrame (the dtypes ``pandas.read_csv`` gives the file)."""
        import pandas as pd

        return pd.read_csv(io.StringIO(self.text()))


def step_columns(path: Path, *, multitask: bool = False) -> tuple[str, ...]:
    """The columns of the steps.csv at ``path``: ``MULTITASK_STEP_COLUMNS`` when its header
    is that one (a run with ``[adapters]``), ``STEP_COLUMNS`` when it is that one; for a missing,
    empty or unreadable file, those of ``multitask`` (``read_table`` then reports any damage)."""
    try:
        with path.open("rb") as fh:
            header = fh.readline().rstrip(b"\n")
    except OSError:
        header = b""
    for columns in (MULTITASK_STEP_COLUMNS, STEP_COLUMNS):
        if header == ",".join(columns).encode():
            return columns
    return MULTITASK_STEP_COLUMNS if multitask else STEP_COLUMNS


def read_table(path: Path, columns: Sequence[str], *, fix: str) -> Table:
    """Read a table written by ``CsvAppender``; a missing or empty file has no rows.

    Args:
        path: the file.
        columns: the header it must have.
        fix: what the user can do when the file is damaged (ends every error message).

    Raises:
        RunDirError: not UTF-8, a wrong header, a damaged line other than a cut last one, a value
            of the wrong type, or a step not after the one before it.
        StorageError: the file could not be read.
    """
    columns = tuple(columns)
    try:
        raw = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path} is not UTF-8 text (byte {exc.start} is not): the file is "
                          f"damaged; {fix}") from None
    lines = text.split("\n")
    lines = lines[:-1]  # after the last newline: "" or a line cut by a kill (ignored)
    if not lines:
        return Table(path, columns, [",".join(columns)], [])
    if lines[0] != ",".join(columns):
        raise RunDirError(f"{path}, line 1: expected the header {','.join(columns)!r}, found "
                          f"{_clip(lines[0])!r}: this is not the table ulora wrote, or it was "
                          f"edited; {fix}")
    steps = [_parse_line(path, n, line, columns, fix) for n, line in enumerate(lines[1:], 2)]
    for n, (before, after) in enumerate(zip(steps, steps[1:], strict=False), 3):
        if after <= before:
            raise RunDirError(f"{path}, line {n}: step {after} follows step {before}; the rows "
                              f"must go up step by step (the file was edited); {fix}")
    return Table(path, columns, lines, steps)


def _parse_line(path: Path, n: int, line: str, columns: tuple[str, ...], fix: str) -> int:
    values = next(csv.reader([line]), [])
    if len(values) != len(columns):
        raise RunDirError(f"{path}, line {n}: {len(values)} fields where the header has "
                          f"{len(columns)} ({_clip(line)!r}): the line is damaged; {fix}")
    for column, value in zip(columns, values, strict=True):
        try:
            _KINDS.get(column, _parse_float)(value)
        except ValueError as exc:
            raise RunDirError(f"{path}, line {n}: {column} = {_clip(value)!r} is not {exc}: "
                              f"the line is damaged; {fix}") from None
    step = int(values[0])
    if step < 0:
        raise RunDirError(f"{path}, line {n}: step {step} is negative: the line is damaged; {fix}")
    return step


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_rows(table: Table, k: int, expected: Sequence[int] | None, *, what: str,
               fix: str) -> None:
    """Raise unless the rows with ``step < k`` are exactly ``expected``.

    Args:
        table: the file as read by ``read_table``.
        k: the checkpoint's step.
        expected: the steps that must be there below ``k`` (0..k-1 for steps.csv); None
            checks nothing beyond ``read_table``'s order.
        what: how messages name the checkpoint, e.g. ``"the checkpoint at step 150"``.
        fix: ends the error message.

    Raises:
        RunDirError: rows below ``k`` are missing or extra.
    """
    have = [s for s in table.steps if s < k]
    if expected is None or have == list(expected):
        return
    missing = sorted(set(expected) - set(have))
    extra = sorted(set(have) - set(expected))
    problem = (f"steps {_ranges(missing)} are missing" if missing
               else f"it has rows for steps {_ranges(extra)} that no run writes")
    raise RunDirError(f"{table.path}: {what} needs the rows of steps {_ranges(expected)}, "
                      f"but {problem} (the file was cut or edited); {fix}")


def truncate_table(table: Table, k: int) -> None:
    """Rewrite the file with the rows ``step < k`` only (a temporary file and a rename).

    Raises:
        StorageError: the file could not be rewritten (the old one is unchanged).
    """
    write_atomic(table.path, table.text(below=k))


def _ranges(steps: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2, 5, 7-8"`` (``"none"`` when empty)."""
    if not steps:
        return "none"
    parts: list[str] = []
    start = prev = steps[0]
    for s in [*steps[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    if len(parts) > 6:
        parts = [*parts[:3], "...", *parts[-2:]]
    return ", ".join(parts)
