"""Shock kinds and schedules: how a shock batch corrupts its targets, and when shocks happen.

A shock keeps each example's prompt and replaces its completion with a wrong target
(docs/design.md, "Scenarios"). Three kinds, all deterministic given the ``random.Random`` passed in:

* ``random-letters``: random lowercase letters, the length of the true answer ± 1;
* ``reversed``: the word spelled backwards (``"pig" -> "gip"``);
* ``swapped-answer``: the correct answer of another word (a fluent but wrong target).

Tasks read from data files take the generic kinds of ``corruption.py`` instead. Every task also
takes ``from-file`` shocks: the corrupted examples are replaced by records of the user's own file
of bad records (``shocks.source``), drawn by the step's seed.

A ``Schedule`` holds the shock windows ``[start, end)`` in steps and answers ``is_shock(step)``;
``ShockStream`` puts a task and a schedule together as the runner's ``BatchSource``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from ulora_remote.scenarios.mixing import MixTask

from ulora_remote.backend import Example
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.task import Batch, Record, RecordSource, Scores, Task

__all__ = ["FROM_FILE", "SHOCK_KINDS", "Schedule", "ShockKind", "ShockStream", "corrupt_answer",
           "shock_positions"]

ShockKind = Literal["random-letters", "reversed", "swapped-answer"]
SHOCK_KINDS: tuple[str, ...] = get_args(ShockKind)
#: The shock kind that takes its examples from a file of bad records (any task).
FROM_FILE = "from-file"


def shock_positions(name: str, seed: int, step: int, size: int,
                    fraction: float) -> tuple[random.Random, list[int]]:
    """The generator of a task's shock at ``step`` (seeded by ``name``, ``seed`` and ``step``)
    and the sorted positions of the ``max(1, round(fraction·size))`` examples it corrupts, drawn
    from it first.

    Raises:
        InputError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction={fraction}: the corrupted share must lie in (0, 1]")
    rng = random.Random(f"{name}:{seed}:shock:{step}")
    return rng, sorted(rng.sample(range(size), max(1, round(fraction * size))))


def corrupt_answer(
    kind: str,
    word: str,
    answer: str,
    rng: random.Random,
    donors: Sequence[tuple[str, str]] = (),
) -> str:
    """A wrong target for ``word`` (whose true answer is ``answer``), without the leading space.

    Args:
        kind: one of ``SHOCK_KINDS``.
        word: the source word of the example.
        answer: its correct answer.
        rng: the only source of randomness, so the result is fixed by the caller's seed.
        donors: ``(word, answer)`` pairs to take another word's answer from
            (``swapped-answer`` only); at least one donor must differ from ``word``.

    Returns:
        The corrupted completion text.

    Raises:
        ConfigurationError: an unknown kind.
        InputError: ``swapped-answer`` without a donor other than ``word``.
    """
    if kind == "random-letters":
        length = max(1, len(answer) + rng.randint(-1, 1))
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
    if kind == "reversed":
        return word[::-1]
    if kind == "swapped-answer":
        return _other_answer(word, rng, donors)
    raise ConfigurationError(f"unknown shock kind {kind!r}; choose one of {list(SHOCK_KINDS)}")


def _other_answer(word: str, rng: random.Random, donors: Sequence[tuple[str, str]]) -> str:
    # Rejection sampling: with thousands of donors a repeat of `word` is rare, and the bound
    # keeps a degenerate pool (only `word` itself) from looping forever.
    for _ in range(64):
        if not donors:
            break
        donor_word, donor_answer = donors[rng.randrange(len(donors))]
        if donor_word != word:
            return donor_answer
    raise InputError(
        f"swapped-answer shock for {word!r} needs a donor word other than itself; "
        "pass a larger donor list"
    )


@dataclass(frozen=True, init=False)
class Schedule:
    """Shock windows ``[start, end)`` in steps, sorted, non-overlapping.

    Args:
        windows: pairs ``(start, end)`` with ``0 <= start < end``, in any order.

    Raises:
        InputError: a window is not a pair of integers with ``0 <= start < end``, or two
            windows overlap. (Scenario files are checked earlier, with the file and key named.)
    """

    windows: tuple[tuple[int, int], ...]

    def __init__(self, windows: Iterable[Sequence[int]] = ()) -> None:
        pairs = sorted(_as_pair(w) for w in windows)
        for (s0, e0), (s1, e1) in zip(pairs, pairs[1:], strict=False):
            if s1 < e0:
                raise InputError(f"shock windows [{s0}, {e0}) and [{s1}, {e1}) overlap")
        object.__setattr__(self, "windows", tuple(pairs))

    def is_shock(self, step: int) -> bool:
        """Whether training step ``step`` (0-based) gets a shock batch."""
        return self.window_index(step) is not None

    def window_index(self, step: int) -> int | None:
        """The index of the window containing ``step``, or None for a clean step."""
        for i, (start, end) in enumerate(self.windows):
            if start <= step < end:
                return i
        return None


def _as_pair(window: Sequence[int]) -> tuple[int, int]:
    if len(window) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in window):
        raise InputError(f"shock window {window!r} must be a pair of integers [start, end)")
    start, end = int(window[0]), int(window[1])
    if not 0 <= start < end:
        raise InputError(f"shock window [{start}, {end}) needs 0 <= start < end")
    return start, end


class ShockStream:
    """A task's batches with its shock schedule and an optional shift: the runner's
    ``BatchSource``.

    Steps inside a window get ``task.shock_batch(step, batch_size, kind, fraction)``, the others
    ``task.train_batch(step, batch_size)``. With ``kind = "from-file"`` a shock batch is the
    clean batch with ``max(1, round(fraction·batch_size))`` examples, at positions drawn from
    ``random.Random(f"shock-source:{seed}:{step}")``, replaced by records of ``noisy`` drawn
    from the same generator (a record without a task name takes the replaced example's).

    From ``shift_start`` on, ``shifted`` (the same task under a new, learnable rule) replaces
    ``task`` for good, in training and in evaluation; its scores then also report
    ``retention``: the exact match of the same generations under the old rule. Evaluation sets
    are read once and kept.

    Args:
        task: any ``ulora_remote.task.Task``.
        batch_size: examples per step (≥ 1).
        schedule: the shock windows (empty: no shocks).
        kind: the shock kind (one of ``task.shock_kinds``); None means no shocks.
        fraction: share of a shock batch that is corrupted, in (0, 1].
        shift: ``(shift_start, shifted)``, or None for no shift.
        noisy: the records of a ``from-file`` shock.
        seed: the run's seed (``from-file`` draws).

    Raises:
        ConfigurationError: a kind the task does not support, ``from-file`` without records,
            or a record naming a task the stream does not have.
    """

    def __init__(self, task: Task, *, batch_size: int, schedule: Schedule | None = None,
                 kind: str | None = None, fraction: float = 1.0,
                 shift: tuple[int, Task] | None = None, noisy: Sequence[Record] = (),
                 seed: int = 0) -> None:
        if kind == FROM_FILE:
            _check_noisy(task, noisy)
        elif kind is not None and kind not in task.shock_kinds:
            raise ConfigurationError(
                f"shock kind {kind!r} does not apply to this task; choose one of "
                f"{list((*task.shock_kinds, FROM_FILE))}"
            )
        self.task, self.batch_size = task, batch_size
        self.schedule = schedule if schedule is not None else Schedule()
        self.kind, self.fraction, self.shift = kind, fraction, shift
        self.noisy, self.seed = tuple(noisy), seed
        self._evals: dict[int, list[Example]] = {}

    def _task_at(self, step: int) -> Task:
        if self.shift is not None and step >= self.shift[0]:
            return self.shift[1]
        return self.task

    def batch(self, step: int) -> Batch:
        task = self._task_at(step)
        clean = task.train_batch(step, self.batch_size)
        if self.kind is None or not self.schedule.is_shock(step):
            return Batch(clean, shock=False)
        examples = (self._from_file(task, step) if self.kind == FROM_FILE
                    else task.shock_batch(step, self.batch_size, self.kind, self.fraction))
        # An example is corrupted when the shock changed it (batches are pure functions of
        # the step, so the clean batch of the same step is the reference).
        flags = tuple(e != c for e, c in zip(examples, clean, strict=True))
        return Batch(examples, shock=True, corrupted=flags)

    def _from_file(self, task: Task, step: int) -> list[Example]:
        batch = task.train_batch(step, self.batch_size)
        rng = random.Random(f"shock-source:{self.seed}:{step}")
        count = max(1, round(self.fraction * self.batch_size))
        for i in sorted(rng.sample(range(self.batch_size), count)):
            bad = self.noisy[rng.randrange(len(self.noisy))].example
            batch[i] = bad if bad.task else replace(bad, task=batch[i].task)
        return batch

    def records(self) -> Iterator[Record]:
        """The records read from files: the task's (when it reads any) and the shock file's."""
        if isinstance(self.task, RecordSource):
            yield from self.task.records()
        yield from self.noisy

    def eval_examples(self, step: int) -> list[Example]:
        task = self._task_at(step)
        key = id(task)
        if key not in self._evals:
            self._evals[key] = list(task.eval_examples())
        return self._evals[key]

    def score(self, step: int, outputs: Sequence[str]) -> Scores:
        task = self._task_at(step)
        scores = task.score(outputs)
        if task is self.task:
            return scores
        old = self.task.score(outputs).exact_match
        details = {**(scores.details or {}), "retention": old}
        summary = f"retention (the old rule's exact match) {old:.3f}"
        return Scores(scores.exact_match, details, f"{scores.summary}; {summary}".lstrip("; "))


def _check_noisy(task: Task, noisy: Sequence[Record]) -> None:
    if not noisy:
        raise ConfigurationError(f'shocks.kind = "{FROM_FILE}" needs records: set shocks.source '
                                 "to a JSONL file of bad records")
    names = set(task.names) if isinstance(task, MixTask) else set()
    for record in noisy:
        if record.example.task and record.example.task not in names:
            known = ", ".join(sorted(names)) or "none: the task is not a mix"
            raise ConfigurationError(f"{record.where}: task {record.example.task!r} is not a "
                                     f"task of this scenario ({known}); fix the task field or "
                                     "remove it")
