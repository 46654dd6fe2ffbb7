"""The task contract: deterministic batches by step, clean evaluation examples, the task's own
scoring; and the runner's view of a task with its shock schedule (``BatchSource``).

A task is pure Python: every batch is a function of ``(seed, step)`` only, so a resumed or
replayed run renders the same batches without any saved random state. Tasks live in
``ulora_remote.scenarios`` (one module each); docs/extending.md shows how to add one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ulora_remote.backend import Example

__all__ = ["Batch", "BatchSource", "Record", "RecordSource", "Scores", "Task", "exact_match"]


@dataclass(frozen=True)
class Scores:
    """One evaluation's scores.

    Attributes:
        exact_match: share of generations equal to the reference completion (surrounding
            whitespace ignored), in [0, 1]; every task reports it (``evals.csv``).
        details: further task-specific scores (accuracy, F1, ...) for ``eval_scores.jsonl``, or
            None when the task has none.
        summary: a one-line description of ``details`` for the console ("" when none).
    """

    exact_match: float
    details: Mapping[str, Any] | None = None
    summary: str = ""


def exact_match(outputs: Sequence[str], examples: Sequence[Example]) -> float:
    """Share of ``outputs`` equal to their example's completion, whitespace-stripped; NaN for no
    examples."""
    if not examples:
        return float("nan")
    hits = sum(o.strip() == e.completion.strip() for o, e in zip(outputs, examples, strict=True))
    return hits / len(examples)


@runtime_checkable
class Task(Protocol):
    """A task: clean and shock batches by step, clean evaluation examples and their scoring.

    Pure and deterministic; nothing blocks. ``shock_kinds`` lists the corruptions
    ``shock_batch`` accepts (the scenario is validated against it).
    """

    shock_kinds: tuple[str, ...]

    def train_batch(self, step: int, size: int) -> list[Example]:
        """The clean batch of training step ``step`` (0-based); ``size`` ≥ 1 examples.

        Raises:
            InputError: a negative step or a size below 1.
        """
        ...

    def shock_batch(self, step: int, size: int, kind: str, fraction: float) -> list[Example]:
        """The batch of ``step`` with ``max(1, round(fraction·size))`` examples corrupted by
        ``kind`` (one of ``shock_kinds``), at positions drawn from the step's own seed.

        Raises:
            InputError: ``fraction`` outside (0, 1].
            ConfigurationError: a kind this task does not support.
        """
        ...

    def eval_examples(self) -> list[Example]:
        """The clean held-out examples, the same on every call; none is ever trained on."""
        ...

    def score(self, outputs: Sequence[str]) -> Scores:
        """Score greedy generations, one per ``eval_examples()`` example, in order."""
        ...


@dataclass(frozen=True)
class Batch:
    """One step's examples and whether the step lies in a shock window.

    ``corrupted`` flags, per example, the ones a shock changed (empty: none), so that a run
    can report how many corrupted examples its guard kept out.
    """

    examples: list[Example] = field(default_factory=list)
    shock: bool = False
    corrupted: tuple[bool, ...] = ()


class BatchSource(Protocol):
    """What the runner needs: the batch of each step, the clean evaluation set and its scoring.

    ``batch`` is a pure function of the step. ``eval_examples(k)`` is the clean evaluation set
    at step boundary k (the same list for every k while the task's rule holds; the new rule's
    after a shift), and ``score(k, outputs)`` scores generations for it. Nothing blocks.
    """

    def batch(self, step: int) -> Batch:
        ...

    def eval_examples(self, step: int) -> Sequence[Example]:
        ...

    def score(self, step: int, outputs: Sequence[str]) -> Scores:
        ...


@dataclass(frozen=True)
class Record:
    """An example read from a user's file, and where: what a run checks before it starts.

    Attributes:
        example: the example as the task trains or evaluates it.
        where: how messages name it (``"data/train.jsonl line 12"``).
        evaluated: an evaluation record (it is also sampled from, after its prompt).
    """

    example: Example
    where: str
    evaluated: bool = False


@runtime_checkable
class RecordSource(Protocol):
    """A task (or shock source) whose examples come from files: ``records()`` yields each one
    once, so that a run can render every record with its backend, and refuse one that does not
    fit the model, before anything is written."""

    def records(self) -> Iterator[Record]:
        ...
