"""Generic shocks: corruptions of any example's answer, for tasks read from data files.

A corruption keeps an example's input and replaces its target: the completion of a
prompt/completion example, every assistant turn of a conversation. Three kinds, each a pure
function of the ``random.Random`` passed in and the task's ``AnswerPool``:

* ``random-chars``: random noise of the target's length: every character that is not
  whitespace is replaced by one drawn from the characters of the task's own training targets
  (so any tokenizer that reads the data reads the noise; for the built-in character models one
  character is one token). Whitespace stays, so the words keep their lengths.
* ``swapped-answer``: another record's answer (the last assistant turn or completion of another
  training record; a fluent but wrong target).
* ``shuffled-labels``: a fixed derangement of the task's label set (the ``labels`` scorer's):
  every label is replaced by another one, the same way in every shock batch of a run, as if the
  annotation scheme had been permuted. Only a task scored by labels offers it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ulora_remote.backend import Example, Message
from ulora_remote.chat import chat_example
from ulora_remote.errors import ConfigurationError, InputError

__all__ = ["GENERIC_SHOCKS", "AnswerPool", "answer_pool", "corrupt_example", "derangement",
           "random_chars"]

GENERIC_SHOCKS: tuple[str, ...] = ("random-chars", "swapped-answer", "shuffled-labels")


@dataclass(frozen=True)
class AnswerPool:
    """What a task's corruptions draw from.

    Attributes:
        alphabet: the characters of the training targets that are not whitespace, sorted.
        answers: the distinct answers of the training records (donors of ``swapped-answer``).
        label_map: label -> another label (``shuffled-labels``), or None without labels.
    """

    alphabet: str
    answers: tuple[str, ...]
    label_map: dict[str, str] | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The generic kinds this pool supports."""
        kinds = ["random-chars"] if self.alphabet else []
        if len(self.answers) >= 2:
            kinds.append("swapped-answer")
        if self.label_map:
            kinds.append("shuffled-labels")
        return tuple(kinds)


def answer_pool(examples: Sequence[Example], labels: Sequence[str] | None,
                seed: int | str) -> AnswerPool:
    """The pool of a task's training examples; ``labels`` (or None) for ``shuffled-labels``."""
    targets = [m.content for e in examples for m in e.messages if m.role == "assistant"]
    targets += [e.completion for e in examples if not e.messages]
    alphabet = "".join(sorted({ch for t in targets for ch in t if not ch.isspace()}))
    answers = tuple(dict.fromkeys(e.completion for e in examples))
    label_map = derangement(labels, random.Random(f"labels:{seed}")) if labels else None
    return AnswerPool(alphabet, answers, label_map)


def derangement(labels: Sequence[str], rng: random.Random) -> dict[str, str]:
    """A permutation of ``labels`` that moves every label (two or more distinct labels)."""
    if len(set(labels)) < 2:
        raise InputError(f"labels {list(labels)}: a shuffle needs two or more distinct labels")
    while True:  # a random permutation is a derangement with probability about 1/e
        order = list(labels)
        rng.shuffle(order)
        if all(a != b for a, b in zip(labels, order, strict=True)):
            return dict(zip(labels, order, strict=True))


def random_chars(text: str, alphabet: str, rng: random.Random) -> str:
    """``text`` with every non-whitespace character replaced by one drawn from ``alphabet``."""
    return "".join(ch if ch.isspace() else rng.choice(alphabet) for ch in text)


def corrupt_example(example: Example, kind: str, rng: random.Random,
                    pool: AnswerPool) -> Example:
    """``example`` with its target(s) corrupted by ``kind`` (see the module docstring).

    Raises:
        ConfigurationError: a kind ``pool`` does not support.
        InputError: ``swapped-answer`` finds no answer other than the example's own.
    """
    if kind not in pool.kinds:
        raise ConfigurationError(f"shock kind {kind!r} does not apply to this data; choose one "
                                 f"of {list(pool.kinds)}")
    change = _changer(kind, rng, pool)
    if not example.messages:
        return replace(example, completion=change(example.completion))
    messages = [Message(m.role, change(m.content)) if m.role == "assistant" else m
                for m in example.messages]
    return chat_example(messages, example.task)


def _changer(kind: str, rng: random.Random, pool: AnswerPool) -> Callable[[str], str]:
    if kind == "random-chars":
        return lambda text: random_chars(text, pool.alphabet, rng)
    if kind == "swapped-answer":
        return lambda text: _other_answer(text, rng, pool.answers)
    label_map = pool.label_map or {}

    def relabel(text: str) -> str:
        label = text.strip()
        return text.replace(label, label_map[label], 1) if label in label_map else text

    return relabel


def _other_answer(text: str, rng: random.Random, answers: Sequence[str]) -> str:
    # Rejection sampling, bounded: with two or more distinct answers a draw differs from
    # `text` with probability at least 1/2.
    for _ in range(64):
        donor = answers[rng.randrange(len(answers))]
        if donor.strip() != text.strip():
            return donor
    raise InputError(f"swapped-answer found no answer other than {text!r} in 64 draws; the "
                     "task needs more distinct answers")
