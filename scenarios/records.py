"""Reading a JSONL data file into examples, every problem named by file and line.

One JSON object per line, in one of two shapes (docs/your-data.md)::

    {"prompt": "reverse: stone", "completion": " enots"}
    {"messages": [{"role": "user", "content": "upper: stone"},
                  {"role": "assistant", "content": "STONE"}]}

Either may carry ``"task": "name"`` (a multi-task stream; names are letters, digits, ``.``, ``_``
and ``-``). Other keys are ignored, so files with ids or metadata read as they are. Blank lines
are skipped (line numbers still count them). A prompt/completion record becomes a plain
``Example``; a conversation becomes ``ulora_remote.chat.chat_example`` (loss on every assistant
turn; the last message must be the assistant's, its reference answer).

The seeded split (``split_records``) and the leak count (``count_leaks``) compare records by
their *content*: the prompt and completion, or the messages (the task name too), so two
identical lines always fall on the same side of a split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulora_remote.backend import Example, Message
from ulora_remote.chat import chat_example
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.task import Record

__all__ = ["FileRecord", "count_leaks", "read_jsonl", "read_shock_records", "record_key",
           "split_records"]

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class FileRecord:
    """One record of a data file: its example and where it came from."""

    example: Example
    path: str
    line: int

    @property
    def where(self) -> str:
        """``"data/train.jsonl line 12"``: how messages name the record."""
        return f"{self.path} line {self.line}"


def read_jsonl(path: str | Path, *, key: str) -> list[FileRecord]:
    """Every record of the JSONL file ``path``, in file order.

    Args:
        path: the file.
        key: the scenario key that named it (``task.train``), for messages about the file.

    Raises:
        ConfigurationError: the file is missing or unreadable.
        InputError: a line that is not a JSON object of one of the two shapes (the message
            names the file, the line and the fix), text that is not UTF-8, or no record at all.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{key} = {str(path)!r}: cannot read the data file "
                                 f"({exc.strerror}); check the path (relative paths are "
                                 "relative to the scenario file)") from None
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{file} line {number}: not UTF-8 text (byte {exc.start} of the "
                             "line); save the file as UTF-8") from None
        line = line.removeprefix("\ufeff") if number == 1 else line  # a BOM some editors add
        if line.strip():
            records.append(FileRecord(parse_record(line, f"{file} line {number}"), str(file),
                                  number))
    if not records:
        raise InputError(f"{file} holds no records; put one JSON object per line, e.g. "
                         '{"prompt": "2+2=", "completion": " 4"}')
    return records


def parse_record(line: str, where: str) -> Example:
    """One line as an ``Example``.

    Raises:
        InputError: naming ``where``, the problem and the fix.
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each "
                         "line must be one JSON object") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise InputError(f"{where}: the JSON is nested too deeply to read; a record is a "
                         "flat {\"prompt\": ..., \"completion\": ...} or "
                         "{\"messages\": [...]}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a record must be a JSON object, not "
                         f"{type(obj).__name__}; write {{\"prompt\": ..., \"completion\": ...}} "
                         "or {\"messages\": [...]}")
    task = _task_name(obj, where)
    if "messages" in obj:
        if "prompt" in obj or "completion" in obj:
            raise InputError(f"{where}: the record has both messages and prompt/completion; "
                             "give one shape per record")
        messages = _messages(obj["messages"], where)
        try:
            return chat_example(messages, task)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    missing = [k for k in ("prompt", "completion") if k not in obj]
    if missing:
        raise InputError(f"{where}: the record has no {' and no '.join(missing)}; a record is "
                         "{\"prompt\": ..., \"completion\": ...} or {\"messages\": [...]}")
    prompt, completion = _text(obj, "prompt", where), _text(obj, "completion", where)
    if not completion.strip():
        raise InputError(f"{where}: the completion is empty; every record needs a target")
    return Example(prompt=prompt, completion=completion, task=task)


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: {key} is {type(value).__name__} ({_short(value)}); it must "
                         "be a string — quote it")
    return value


def _task_name(obj: dict[str, Any], where: str) -> str:
    if "task" not in obj:
        return ""
    task = obj["task"]
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise InputError(f"{where}: task = {_short(task)} is not a task name; use 1-64 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    return task


def _messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: messages must be a non-empty list of "
                         "{\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: message {i} must be an object with role and content, "
                             f"got {_short(m)}")
        for key in ("role", "content"):
            if not isinstance(m[key], str):
                raise InputError(f"{where}: message {i} has a {key} of type "
                                 f"{type(m[key]).__name__}; it must be a string")
        out.append(Message(m["role"], m["content"]))
    return out


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def record_key(example: Example) -> str:
    """The content of a record as a string: equal for identical records."""
    if example.messages:
        body: Any = [[m.role, m.content] for m in example.messages]
    else:
        body = [example.prompt, example.completion]
    return json.dumps([example.task, body], ensure_ascii=False)


def split_records(records: Sequence[FileRecord], eval_fraction: float,
                  seed: int) -> tuple[list[FileRecord], list[FileRecord]]:
    """The seeded split of one file: ``(train, eval)``, each in file order.

    Distinct record contents are ranked by SHA-256 of ``f"{seed}:{record_key}"``; the first
    ``max(1, round(eval_fraction · distinct))`` go to evaluation, with every copy of them, so no
    evaluation record also occurs in training. The split depends on ``seed`` and the contents
    only (not on the run's seed, the order of lines, or other records).

    Raises:
        InputError: fewer than two distinct records (one for each side).
    """
    keys = {record_key(r.example) for r in records}
    if len(keys) < 2:
        raise InputError(f"{records[0].path if records else 'the file'} has {len(keys)} "
                         "distinct record(s); a split needs at least two (give task.eval, or "
                         "more records)")
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    count = min(len(keys) - 1, max(1, round(eval_fraction * len(keys))))
    held = set(ranked[:count])
    train = [r for r in records if record_key(r.example) not in held]
    evals = [r for r in records if record_key(r.example) in held]
    return train, evals


def count_leaks(train: Sequence[FileRecord], evals: Sequence[FileRecord]) -> int:
    """How many evaluation records also occur (with the same content) in training."""
    seen = {record_key(r.example) for r in train}
    return sum(record_key(r.example) in seen for r in evals)


def read_shock_records(path: str | Path) -> list[Record]:
    """The records of a ``from-file`` shock (``shocks.source``), as training records.

    Raises:
        ConfigurationError, InputError: as ``read_jsonl``.
    """
    return [Record(r.example, r.where) for r in read_jsonl(path, key="shocks.source")]
