"""Your own data: a task read from JSONL files (``[task] kind = "jsonl"``; docs/your-data.md).

``task.train`` (and optionally ``task.eval``) name JSONL files of prompt/completion or
``messages`` records (``ulora_remote.scenarios.records``). Without ``task.eval`` the training
file is split: a seeded share ``eval_fraction`` of its distinct records is held out
(``records.split_records``: by content, so no evaluation record is ever trained on). With
``task.eval``, evaluation records that also occur in training are counted and warned about.

Records with a ``task`` field make a multi-task stream: one ``JsonlTask`` per task name, mixed by
``task.weights`` (default: in proportion to each task's training records) in a
``ulora_remote.scenarios.mixing.MixTask``, and evaluated per task. Each task is scored by
``task.scorers.NAME``, else ``task.scorer`` (exact match by default; see ``scorers.py``). Shocks
are the generic ones (``corruption.py``) and, for every task, records from a file
(``shocks.source``).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from ulora_remote.scenarios.corruption import GENERIC_SHOCKS, answer_pool, corrupt_example
from ulora_remote.scenarios.mixing import MixTask
from ulora_remote.scenarios.records import FileRecord, count_leaks, read_jsonl, split_records
from ulora_remote.scenarios.scorers import (
    ExactMatchSection,
    LabelsSection,
    Scorer,
    ScorerSection,
)

from ulora_remote.backend import Example
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.sections import STRICT
from ulora_remote.task import Record, Scores, Task, exact_match

__all__ = ["JsonlSection", "JsonlTask", "build_jsonl_task", "resolve_path"]

TaskName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class JsonlTask:
    """One task's records (a ``Task`` and a ``RecordSource``).

    Training walks through the training records in a fresh seeded order each epoch, so every
    batch is a function of ``(seed, step)``. A shock batch corrupts ``max(1,
    round(fraction·size))`` examples at positions drawn from the step's own seed.

    Args:
        train: the training records (none only for a task that is never trained on).
        evals: the evaluation records; the first ``eval_size`` are used.
        name: the task name ("" for a single-task file), put in every ``Example.task``.
        scorer: scores the generations (its references are checked here).
        seed: the run's seed.
        eval_size: how many evaluation records to use at most.
        labels: the label set for ``shuffled-labels`` (the labels scorer's), or None.

    Raises:
        ConfigurationError: no evaluation record, or a reference the scorer cannot score
            (naming the record).
    """

    def __init__(self, train: Sequence[FileRecord], evals: Sequence[FileRecord], *, name: str,
                 scorer: Scorer, seed: int, eval_size: int,
                 labels: Sequence[str] | None = None) -> None:
        if not evals:
            raise ConfigurationError(f"task {name or 'of the file'!r} has no evaluation record; "
                                     "give it records in task.eval (or raise eval_fraction)")
        checked = [*evals[:eval_size], *(train if labels else ())]
        for r in checked:  # labels: training answers are labels too (for shuffled-labels)
            problem = scorer.check_reference(r.example.completion)
            if problem is not None:
                raise ConfigurationError(f"{r.where}: {problem}")
        self.name, self.scorer, self.seed = name, scorer, seed
        self._train = tuple(replace(r.example, task=name) for r in train)
        self._train_where = tuple(r.where for r in train)
        self._eval_records = tuple(evals[:eval_size])
        self._eval = [replace(r.example, task=name) for r in self._eval_records]
        self.pool = answer_pool(self._train, labels, f"{name}:{seed}")
        self.shock_kinds = self.pool.kinds if self._train else ()
        self._orders: dict[int, list[int]] = {}

    def train_batch(self, step: int, size: int) -> list[Example]:
        if step < 0 or size < 1:
            raise InputError(f"step={step}, size={size}: need step >= 0, size >= 1")
        n, first = len(self._train), step * size
        if n == 0:
            raise ConfigurationError(f"task {self.name!r} has no training record")
        return [self._train[self._order(i // n)[i % n]] for i in range(first, first + size)]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self._train)))
            random.Random(f"jsonl:{self.name}:{self.seed}:epoch:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time: batches rarely straddle two
        return self._orders[epoch]

    def shock_batch(self, step: int, size: int, kind: str, fraction: float) -> list[Example]:
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"fraction={fraction}: the corrupted share must lie in (0, 1]")
        batch = self.train_batch(step, size)
        rng = random.Random(f"jsonl:{self.name}:{self.seed}:shock:{step}")
        for i in sorted(rng.sample(range(size), max(1, round(fraction * size)))):
            batch[i] = corrupt_example(batch[i], kind, rng, self.pool)
        return batch

    def eval_examples(self) -> list[Example]:
        return self._eval

    def score(self, outputs: Sequence[str]) -> Scores:
        """Exact match, and the scorer's details unless it is exact match itself."""
        em = exact_match(outputs, self._eval)
        if self.scorer.kind == "exact-match":
            return Scores(em)
        details = self.scorer.score(outputs, [e.completion for e in self._eval])
        return Scores(em, details, f"{self.scorer.kind} score {details['score']:.3f}")

    def records(self) -> Iterator[Record]:
        for example, where in zip(self._train, self._train_where, strict=True):
            yield Record(example, where)
        for example, r in zip(self._eval, self._eval_records, strict=True):
            yield Record(example, r.where, evaluated=True)


def resolve_path(path: str, info: ValidationInfo) -> str:
    """``path`` made absolute against the scenario file's folder (the validation context's
    ``base_dir``; without one, the working directory at build time)."""
    base = (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None
    expanded = Path(path).expanduser()
    if base is None or expanded.is_absolute():
        return str(expanded)
    joined = Path(base) / expanded
    try:
        return str(joined.resolve())
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError on a symlink loop
        key = f"shocks.{info.field_name}" if info.field_name == "source" else \
            f"task.{info.field_name}"
        raise ValueError(f"{key} = {path!r} cannot be resolved ({joined} is a loop of symbolic "
                         f"links or unreadable: {exc}); point it at the data file itself") from None


class JsonlSection(BaseModel):
    """``[task] kind = "jsonl"``: records from JSONL files (see the module docstring).

    ``train``: the training file; ``eval``: the evaluation file (absent: the seeded split of
    ``train`` by ``eval_fraction`` and ``split_seed``); ``weights``: task name -> mixing weight
    (records with a ``task`` field); ``scorer`` / ``scorers.NAME``: how evaluations are scored.
    Relative paths are relative to the scenario file.
    """

    model_config = STRICT
    kind: Literal["jsonl"]
    train: str = Field(min_length=1)
    eval: str | None = Field(default=None, min_length=1)
    eval_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    split_seed: int = Field(default=0, ge=0, le=2**32 - 1)
    weights: dict[TaskName, Annotated[float, Field(ge=0.0, le=1e6)]] = Field(default_factory=dict)
    scorer: ScorerSection = Field(default_factory=ExactMatchSection)
    scorers: dict[TaskName, ScorerSection] = Field(default_factory=dict)
    max_eval_size: ClassVar[int | None] = None
    shock_kinds: ClassVar[tuple[str, ...]] = GENERIC_SHOCKS
    shift_rules: ClassVar[tuple[str, ...]] = ()
    needs_classifier: ClassVar[bool] = False

    @field_validator("train", "eval")
    @classmethod
    def _resolve(cls, path: str | None, info: ValidationInfo) -> str | None:
        return None if path is None else resolve_path(path, info)

    @model_validator(mode="after")
    def _check(self) -> JsonlSection:
        if self.eval is not None and "eval_fraction" in self.model_fields_set:
            raise ValueError("task.eval_fraction splits task.train when there is no task.eval; "
                             "remove one of the two")
        if self.weights and not any(self.weights.values()):
            raise ValueError("task.weights are all 0; give at least one task a weight above 0")
        return self

    def build(self, *, seed: int, eval_size: int, rule: str | None = None) -> Task:
        """Read, check and split the data (see ``build_jsonl_task``)."""
        return build_jsonl_task(self, seed=seed, eval_size=eval_size)


def build_jsonl_task(section: JsonlSection, *, seed: int, eval_size: int) -> Task:
    """The task of ``section``: one ``JsonlTask``, or a ``MixTask`` of one per task name.

    Raises:
        ConfigurationError, InputError: unreadable or bad data (file and line named), tasks
            without records, weights or scorers naming tasks the data does not have.
    """
    train = read_jsonl(section.train, key="task.train")
    if section.eval is not None:
        evals = read_jsonl(section.eval, key="task.eval")
        leaks = count_leaks(train, evals)
        if leaks:
            warnings.warn(f"{leaks} of the {len(evals)} evaluation records of {section.eval} "
                          f"also occur in {section.train}: the evaluation partly measures "
                          "memorised training records; remove them from one of the files, or "
                          "drop task.eval to let the seeded split hold records out",
                          UserWarning, stacklevel=2)
    else:
        train, evals = split_records(train, section.eval_fraction, section.split_seed)
    names = _task_names([*train, *evals])
    if names == [""]:
        if section.weights or section.scorers:
            raise ConfigurationError(f"task.weights and task.scorers name tasks, but no record "
                                     f"of {section.train} has a task field; remove them or "
                                     "tag the records")
        return _part(section, "", train, evals, seed, eval_size)
    _check_names(section, names, train)
    weights = dict(section.weights) or {n: float(sum(r.example.task == n for r in train))
                                        for n in names}
    parts = {n: _part(section, n, [r for r in train if r.example.task == n],
                      [r for r in evals if r.example.task == n], seed, eval_size) for n in names}
    return MixTask(parts, weights, seed)


def _part(section: JsonlSection, name: str, train: list[FileRecord], evals: list[FileRecord],
          seed: int, eval_size: int) -> JsonlTask:
    scoring = section.scorers.get(name, section.scorer)
    labels = scoring.labels if isinstance(scoring, LabelsSection) else None
    return JsonlTask(train, evals, name=name, scorer=scoring.build(), seed=seed,
                     eval_size=eval_size, labels=labels)


def _task_names(records: Sequence[FileRecord]) -> list[str]:
    names = list(dict.fromkeys(r.example.task for r in records))
    if "" in names and len(names) > 1:
        untagged = next(r for r in records if not r.example.task)
        raise InputError(f"{untagged.where}: the record has no task field, but other records "
                         f"do ({', '.join(n for n in names if n)}); give every record a task, "
                         "or none")
    return names


def _check_names(section: JsonlSection, names: list[str], train: list[FileRecord]) -> None:
    unknown = sorted(set(section.weights) - set(names)) + sorted(
        set(section.scorers) - set(names))
    if unknown:
        raise ConfigurationError(f"task.weights/task.scorers name {unknown}, which no record "
                                 f"has; the data's tasks are {names}")
    if section.weights and set(section.weights) != set(names):
        missing = sorted(set(names) - set(section.weights))
        raise ConfigurationError(f"task.weights gives no weight to {missing}; give every task "
                                 f"of the data a weight (0 keeps a task out of training)")
    for n in names:
        trained = section.weights.get(n, 1.0) > 0
        if trained and not any(r.example.task == n for r in train):
            raise ConfigurationError(f"task {n!r} has no training record; add some, or give "
                                     "it weight 0 in task.weights to only evaluate it")
