"""A two-or-more-task stream of word rules: each task ("part") applies its own rule to words, and
every example carries its part's name in ``Example.task`` (docs/design.md, "Per-task adapters").

The prompts never name the task (``"{word} ->"``, as in the Pig Latin task), so parts whose rules
differ on the same words *conflict*: a shared adapter sees one prompt with two targets and can
only tell them apart through the routing of per-task adapters. Parts with one rule over
disjoint words *help* each other: each part's data teaches the other's rule.

A step's batch interleaves the parts: position p = step·size + i of the stream belongs to part
p mod n, which takes the next word of its own seeded order (a fresh permutation each epoch), so
every batch is a pure function of (seed, step) and the parts are balanced. Evaluation: the first
``eval_size // n`` words per part of the Pig Latin task's held-out pool (the same 500 words for
every seed, never trained on), the same words for every part (``words = "same"``) or disjoint
ones (``"split"``).

This is the minimal multi-task source of docs/design.md, "Per-task adapters"; a general ``[task]
kind = "mix"`` over any tasks routes the same way, since routing reads ``Example.task`` only. """

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, Strict, model_validator
from ulora_remote.scenarios.pig_latin import EVAL_POOL_SIZE, RULES, load_words
from ulora_remote.scenarios.pig_latin import _split as split_eval_pool
from ulora_remote.scenarios.shocks import SHOCK_KINDS, corrupt_answer, shock_positions

from ulora_remote.backend import Example
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.sections import STRICT
from ulora_remote.task import Scores, exact_match

__all__ = ["RulePart", "RulesSection", "RulesTask"]

Words = Literal["same", "split"]


class RulesTask:
    """Word rules as tasks of one stream (a ``ulora_remote.task.Task``).

    Args:
        seed: the run's seed (word orders, shock corruption).
        eval_size: held-out examples in all, ``eval_size // len(parts)`` per part (≥ 1 each).
        parts: ``(task name, rule)`` pairs, rules from ``ulora_remote.scenarios.pig_latin.RULES``.
        words: ``"same"``: every part over all training words; ``"split"``: part j over every
            n-th word from the j-th (disjoint training and evaluation words).

    Raises:
        ConfigurationError: fewer than two parts, a repeated name, an unknown rule or words
            mode, or too few evaluation examples for the parts.
    """

    def __init__(self, seed: int, eval_size: int, parts: Sequence[tuple[str, str]],
                 words: Words = "same") -> None:
        names = [name for name, _ in parts]
        if len(parts) < 2 or len(set(names)) != len(names) or "" in names:
            raise ConfigurationError(f"task parts {names}: give two or more distinct names")
        unknown = sorted({rule for _, rule in parts} - set(RULES))
        if unknown or words not in ("same", "split"):
            raise ConfigurationError(f"rules {unknown} / words {words!r}: rules are "
                                     f"{sorted(RULES)}, words 'same' or 'split'")
        n = len(parts)
        per_part = eval_size // n
        if per_part < 1 or (words == "split" and per_part > EVAL_POOL_SIZE // n):
            most = EVAL_POOL_SIZE // n
            raise ConfigurationError(f"eval_size={eval_size}: {n} parts need 1..{most} held-out "
                                     f"words each; choose eval.size in {n}..{most * n}")
        self.seed, self.shock_kinds = seed, SHOCK_KINDS
        self.parts = [(name, RULES[rule]) for name, rule in parts]
        eval_pool, train = split_eval_pool(load_words())
        split = words == "split"
        self._train = [train[j::n] if split else train for j in range(n)]
        self._eval = [(eval_pool[j::n] if split else eval_pool)[:per_part] for j in range(n)]

    def train_batch(self, step: int, size: int) -> list[Example]:
        """The clean batch of ``step``: positions interleaved over the parts (module docstring).

        Raises:
            InputError: a negative step or a size below 1.
        """
        if step < 0 or size < 1:
            raise InputError(f"step={step}, batch_size={size}: need step >= 0, size >= 1")
        n = len(self.parts)
        batch = []
        for p in range(step * size, (step + 1) * size):
            j, k = p % n, p // n
            words = self._train[j]
            word = _order(tuple(words), self.seed, j, k // len(words))[k % len(words)]
            batch.append(self._example(j, word, self.parts[j][1](word)))
        return batch

    def shock_batch(self, step: int, size: int, kind: str, fraction: float = 1.0
                    ) -> list[Example]:
        """The batch of ``step`` with ``max(1, round(fraction·size))`` targets corrupted.

        Raises:
            InputError: ``fraction`` outside (0, 1], or as ``train_batch``.
            ConfigurationError: an unknown kind.
        """
        rng, positions = shock_positions("rules", self.seed, step, size, fraction)
        batch = self.train_batch(step, size)
        for i in positions:
            e = batch[i]
            word = e.prompt.removesuffix(" ->")
            wrong = corrupt_answer(kind, word, e.completion.strip(), rng, _donors(tuple(batch)))
            batch[i] = Example(e.prompt, f" {wrong}", task=e.task)
        return batch

    def eval_examples(self) -> list[Example]:
        """Each part's held-out words with its rule's answers, tagged with the part's name."""
        return [self._example(j, w, self.parts[j][1](w))
                for j in range(len(self.parts)) for w in self._eval[j]]

    def score(self, outputs: Sequence[str]) -> Scores:
        """Exact match over every part's held-out examples (per-task scores: the runner's)."""
        return Scores(exact_match=exact_match(outputs, self.eval_examples()))

    def _example(self, j: int, word: str, answer: str) -> Example:
        return Example(prompt=f"{word} ->", completion=f" {answer}", task=self.parts[j][0])


@lru_cache(maxsize=16)
def _order(words: tuple[str, ...], seed: int, part: int, epoch: int) -> tuple[str, ...]:
    order = list(words)
    random.Random(f"rules:{seed}:part:{part}:epoch:{epoch}").shuffle(order)
    return tuple(order)


def _donors(batch: tuple[Example, ...]) -> list[tuple[str, str]]:
    return [(e.prompt.removesuffix(" ->"), e.completion.strip()) for e in batch]


class RulePart(BaseModel):
    """One task of ``[task] kind = "rules"``: its name (``Example.task``) and its rule."""

    model_config = STRICT
    name: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    rule: Literal["pig-latin", "reversed"]


class RulesSection(BaseModel):
    """``[task] kind = "rules"``: two or more word rules as the tasks of one stream, over the
    same words (they conflict when the rules differ) or disjoint ones (``words = "split"``)."""

    model_config = STRICT
    kind: Literal["rules"]
    parts: Annotated[tuple[RulePart, ...], Strict(False)] = Field(min_length=2, max_length=8)
    words: Words = "same"
    max_eval_size: ClassVar[int] = EVAL_POOL_SIZE
    shock_kinds: ClassVar[tuple[str, ...]] = SHOCK_KINDS
    shift_rules: ClassVar[tuple[str, ...]] = ()
    needs_classifier: ClassVar[bool] = False

    @model_validator(mode="after")
    def _distinct(self) -> RulesSection:
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"task.parts names {names} repeat; give each part its own name")
        return self

    def build(self, *, seed: int, eval_size: int, rule: str | None = None) -> RulesTask:
        return RulesTask(seed, eval_size, [(p.name, p.rule) for p in self.parts], self.words)
