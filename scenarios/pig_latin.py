"""The Pig Latin task: English word -> Pig Latin, with clean, shock and evaluation batches.

The word list ``words.txt`` ships in the package. It was generated once from Debian's
``wamerican`` package (``/usr/share/dict/american-english``, 2020.12.07-2): entries made only of
lowercase ASCII letters, 3-10 long, holding a vowel (``aeiou``, or ``y`` after the first
letter); the 4,000 first by SHA-256 of the word, then sorted alphabetically.

Examples are ``Example(prompt=f"{word} ->", completion=f" {pig}")``: the leading space is part
of the completion, so the loss falls on it too. With ``system`` set (``[task] system = "..."``)
they are chat records instead: the system message, the word as the user's turn and its Pig
Latin as the assistant's, rendered by the backend through the model's chat template (a real
model's; an explicit system message also replaces a template's long default one).

The held-out evaluation pool is the ``EVAL_POOL_SIZE`` words first in SHA-256 order of
``"eval:" + word``. It does not depend on the seed, so every seed and method is scored on the same
words, and no pool word is ever rendered into a training or shock batch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import cache, lru_cache
from importlib import resources
from typing import ClassVar, Literal

from pydantic import BaseModel
from ulora_remote.scenarios.shocks import SHOCK_KINDS, corrupt_answer, shock_positions

from ulora_remote.backend import Example, Message
from ulora_remote.chat import chat_example
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.sections import STRICT
from ulora_remote.task import Scores, exact_match

__all__ = ["EVAL_POOL_SIZE", "RULES", "PigLatinSection", "PigLatinTask", "load_words",
           "to_pig_latin"]

EVAL_POOL_SIZE = 500
_VOWELS = frozenset("aeiou")


def to_pig_latin(word: str) -> str:
    """Translate one lowercase word to Pig Latin.

    The consonant cluster before the first vowel moves to the end, followed by ``"ay"``
    (``"string" -> "ingstray"``); a vowel-initial word gets ``"way"`` (``"eat" -> "eatway"``).
    ``y`` is a consonant as the first letter and a vowel elsewhere (``"yellow" -> "ellowyay"``,
    ``"rhythm" -> "ythmrhay"``); ``qu`` stays together (``"square" -> "aresquay"``). A word
    without any vowel just gets ``"ay"``.

    Raises:
        InputError: the word is empty or not made of lowercase ASCII letters.
    """
    if not word or not word.isascii() or not word.isalpha() or not word.islower():
        raise InputError(f"{word!r}: Pig Latin needs a non-empty word of lowercase letters a-z")
    if word[0] in _VOWELS:
        return word + "way"
    cut = _first_vowel(word)
    if word[cut - 1 : cut + 1] == "qu":
        cut += 1
    return word[cut:] + word[:cut] + "ay"


def _reversed(word: str) -> str:
    return word[::-1]


#: Target rules: the task's own, and the learnable shifts a scenario's ``[shift]`` may name.
RULES = {"pig-latin": to_pig_latin, "reversed": _reversed}


def _first_vowel(word: str) -> int:
    for i, letter in enumerate(word):
        if letter in _VOWELS or (letter == "y" and i > 0):
            return i
    return len(word)


@cache
def load_words() -> tuple[str, ...]:
    """The shipped word list (``words.txt``), in file order."""
    text = resources.files("ulora_remote.scenarios").joinpath("words.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _split(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ranked = sorted(words, key=lambda w: hashlib.sha256(f"eval:{w}".encode()).hexdigest())
    return tuple(ranked[:EVAL_POOL_SIZE]), tuple(sorted(ranked[EVAL_POOL_SIZE:]))


class PigLatinTask:
    """The Pig Latin task (a ``ulora_remote.task.Task``): deterministic batches, scored by exact
    match.

    Every batch is a function of ``(seed, step)`` only, so a resumed or replayed run renders the
    same batches without any saved random state. Training walks through the training words in a
    fresh seeded permutation each epoch.

    Args:
        seed: the run's seed (training order and shock corruption).
        eval_size: how many held-out words ``eval_examples`` returns, 1..``EVAL_POOL_SIZE``.
        rule: the target rule, ``"pig-latin"`` or another of ``RULES`` (a learnable shift:
            ``"reversed"``, the word spelled backwards).

    Raises:
        ConfigurationError: ``eval_size`` outside 1..``EVAL_POOL_SIZE`` or an unknown rule.
    """

    def __init__(self, seed: int, eval_size: int, rule: str = "pig-latin",
                 system: str | None = None) -> None:
        if not 1 <= eval_size <= EVAL_POOL_SIZE:
            raise ConfigurationError(
                f"eval_size={eval_size}: the held-out pool has {EVAL_POOL_SIZE} words; "
                f"choose 1..{EVAL_POOL_SIZE}"
            )
        if rule not in RULES:
            raise ConfigurationError(f"rule {rule!r}: choose one of {sorted(RULES)}")
        self.seed = seed
        self.system = system
        self.eval_size = eval_size
        self.rule = RULES[rule]
        self.shock_kinds = SHOCK_KINDS
        eval_pool, self.train_words = _split(load_words())
        self.eval_words = eval_pool[:eval_size]
        self._answers = {w: self.rule(w) for w in self.train_words}
        self._donors = tuple(self._answers.items())

    def train_batch(self, step: int, batch_size: int) -> list[Example]:
        """The clean batch of training step ``step`` (0-based).

        Raises:
            InputError: a negative step or a batch size < 1.
        """
        if step < 0 or batch_size < 1:
            raise InputError(f"step={step}, batch_size={batch_size}: need step >= 0, size >= 1")
        return [self._example(w, self._answers[w]) for w in self._words(step, batch_size)]

    def shock_batch(
        self, step: int, batch_size: int, kind: str, fraction: float = 1.0
    ) -> list[Example]:
        """The batch of step ``step`` with ``round(fraction·batch_size)`` targets corrupted
        (at least one), at positions drawn from the step's own seeded generator.

        Args:
            kind: a shock kind of ``ulora_remote.scenarios.shocks.SHOCK_KINDS``.
            fraction: share of the batch that is corrupted, in (0, 1].

        Raises:
            InputError: ``fraction`` outside (0, 1], or as ``train_batch``.
            ConfigurationError: an unknown kind.
        """
        rng, positions = shock_positions("pig-latin", self.seed, step, batch_size, fraction)
        batch = self.train_batch(step, batch_size)
        words = self._words(step, batch_size)
        for i in positions:
            word = words[i]
            wrong = corrupt_answer(kind, word, self._answers[word], rng, self._donors)
            batch[i] = self._example(word, wrong)
        return batch

    def eval_examples(self) -> list[Example]:
        """The clean held-out examples; none of their words is ever in a training batch."""
        return [self._example(w, self.rule(w)) for w in self.eval_words]

    def score(self, outputs: Sequence[str]) -> Scores:
        """Exact match of the generations against the held-out words' Pig Latin."""
        return Scores(exact_match=exact_match(outputs, self.eval_examples()))

    def _words(self, step: int, batch_size: int) -> list[str]:
        n = len(self.train_words)
        return [self._epoch_order(i // n)[i % n]
                for i in range(step * batch_size, (step + 1) * batch_size)]

    def _example(self, word: str, answer: str) -> Example:
        if self.system is None:
            return _example(word, answer)
        return chat_example((Message("system", self.system), Message("user", word),
                             Message("assistant", answer)))

    def _epoch_order(self, epoch: int) -> tuple[str, ...]:
        return _permutation(self.train_words, self.seed, epoch)


@lru_cache(maxsize=8)
def _permutation(words: tuple[str, ...], seed: int, epoch: int) -> tuple[str, ...]:
    # A string seed is hashed with SHA-512 by `random`, so the order is the same in every
    # process (unlike hash(), which is salted per process).
    order = list(words)
    random.Random(f"pig-latin:{seed}:epoch:{epoch}").shuffle(order)
    return tuple(order)


def _example(word: str, answer: str) -> Example:
    return Example(prompt=f"{word} ->", completion=f" {answer}")


class PigLatinSection(BaseModel):
    """``[task] kind = "pig-latin"``: English word -> Pig Latin over the shipped word list."""

    model_config = STRICT
    kind: Literal["pig-latin"] = "pig-latin"
    max_eval_size: ClassVar[int] = EVAL_POOL_SIZE
    shock_kinds: ClassVar[tuple[str, ...]] = SHOCK_KINDS
    shift_rules: ClassVar[tuple[str, ...]] = ("reversed",)
    needs_classifier: ClassVar[bool] = False
    #: Chat records with this system message (module docstring); None: plain prompts.
    system: str | None = None

    def build(self, *, seed: int, eval_size: int, rule: str | None = None) -> PigLatinTask:
        return PigLatinTask(seed, eval_size, rule or "pig-latin", self.system)
