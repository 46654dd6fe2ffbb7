"""A multi-task stream: several named tasks mixed by weight, evaluated per task.

``MixTask`` is a ``Task`` over named parts (each any ``Task``). The batch of step t holds
``n_p`` examples of part p, where ``n_p`` is ``⌊size·w_p⌋`` or one more: the leftover slots
``size − Σ⌊size·w_p⌋`` go to parts by *systematic sampling* over the fractional parts
``size·w_p − ⌊size·w_p⌋`` (one uniform draw u, slots at u, u+1, ...), so each part's expected
share is exactly ``w_p``, and the standard deviation of its realised share over T steps is at
most ``1/(2·size·√T)``. The slots are then shuffled. Everything is drawn from
``random.Random(f"mix:{seed}:step:{t}")``: batches are a pure function of (seed, step).

Part p's examples of step t are the first ``n_p`` of ``part.train_batch(t, ⌊size·w_p⌋ + 1)``,
so each part walks its own data in its own order. Every example carries its part's name in
``Example.task`` (per-task adapters route on it; evaluation is reported per task). A weight of
0 keeps a part out of training but in the evaluation (a held-out task: what the others do to
it).

Shocks: a shock batch corrupts ``max(1, round(fraction·size))`` slots drawn over the whole batch;
a corrupted slot of part p is that example as ``part.shock_batch(t, cap, kind, 1.0)`` corrupts it
(with fraction 1.0 a task corrupts every example of its clean batch, in place). The kinds are
those every trained part (weight above 0) supports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from ulora_remote.backend import Example
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.task import Record, RecordSource, Scores, Task, exact_match

__all__ = ["MixTask"]


class MixTask:
    """Named tasks mixed by weight (see the module docstring).

    Args:
        parts: name -> task, in a fixed order (the order of the scenario or the data file).
        weights: name -> weight ≥ 0 for every part; at least one above 0 (normalised here).
        seed: the run's seed.

    Raises:
        ConfigurationError: no parts, weights that do not name exactly the parts, a negative
            or non-finite weight, or all weights 0.
    """

    def __init__(self, parts: Mapping[str, Task], weights: Mapping[str, float],
                 seed: int) -> None:
        if not parts:
            raise ConfigurationError("a mix needs at least one task")
        if set(weights) != set(parts):
            raise ConfigurationError(
                f"mixing weights name {sorted(weights)} but the tasks are {sorted(parts)}; "
                "give one weight per task")
        bad = [n for n, w in weights.items() if not (math.isfinite(w) and w >= 0)]
        total = sum(weights.values())
        if bad or total <= 0:
            raise ConfigurationError(
                f"mixing weights {dict(weights)}: each must be ≥ 0 and at least one above 0")
        self.parts = dict(parts)
        self.names = tuple(parts)
        self.weights = {n: weights[n] / total for n in self.names}
        self.seed = seed
        trained = [self.parts[n] for n in self.names if self.weights[n] > 0]
        self.shock_kinds = tuple(k for k in trained[0].shock_kinds
                                 if all(k in p.shock_kinds for p in trained))
        self._eval: list[Example] | None = None
        self._eval_sizes: dict[str, int] = {}

    # -- composition -------------------------------------------------------------------------
    def counts(self, step: int, size: int) -> dict[str, int]:
        """How many examples of each part the batch of ``step`` holds (they sum to ``size``)."""
        return dict.fromkeys(self.names, 0) | _count(self.composition(step, size))

    def composition(self, step: int, size: int) -> list[str]:
        """The part of each slot of the batch of ``step``, in batch order.

        Raises:
            InputError: a negative step or a size below 1.
        """
        if step < 0 or size < 1:
            raise InputError(f"step={step}, size={size}: need step >= 0, size >= 1")
        rng = random.Random(f"mix:{self.seed}:step:{step}")
        quotas = [size * self.weights[n] for n in self.names]
        counts = [math.floor(q) for q in quotas]
        fractions = [q - c for q, c in zip(quotas, counts, strict=True)]
        extra = size - sum(counts)
        if extra > 0:
            u, cumulative, slot = rng.random(), 0.0, 0
            scale = extra / sum(fractions)
            for i, f in enumerate(fractions):
                cumulative += f * scale
                while slot < extra and u + slot < cumulative:
                    counts[i] += 1
                    slot += 1
            if slot < extra:  # rounding left the last slot unassigned
                counts[max(range(len(fractions)), key=fractions.__getitem__)] += extra - slot
        names = [n for n, c in zip(self.names, counts, strict=True) for _ in range(c)]
        rng.shuffle(names)
        return names

    def _cap(self, name: str, size: int) -> int:
        return math.floor(size * self.weights[name]) + 1

    def _part_examples(self, name: str, step: int, size: int, count: int,
                       shock: tuple[str, float] | None = None) -> list[Example]:
        part, cap = self.parts[name], self._cap(name, size)
        batch = (part.train_batch(step, cap) if shock is None
                 else part.shock_batch(step, cap, shock[0], shock[1]))
        return [replace(e, task=name) for e in batch[:count]]

    # -- the Task protocol -------------------------------------------------------------------
    def train_batch(self, step: int, size: int) -> list[Example]:
        names = self.composition(step, size)
        counts = _count(names)
        pools = {n: iter(self._part_examples(n, step, size, c)) for n, c in counts.items()}
        return [next(pools[n]) for n in names]

    def shock_batch(self, step: int, size: int, kind: str, fraction: float) -> list[Example]:
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"fraction={fraction}: the corrupted share must lie in (0, 1]")
        if kind not in self.shock_kinds:
            raise ConfigurationError(f"shock kind {kind!r} does not apply to every task of the "
                                     f"mix; choose one of {list(self.shock_kinds)}")
        names = self.composition(step, size)
        rng = random.Random(f"mix:{self.seed}:shock:{step}")
        hit = set(rng.sample(range(size), max(1, round(fraction * size))))
        counts = _count(names)
        clean = {n: iter(self._part_examples(n, step, size, c)) for n, c in counts.items()}
        bad = {n: iter(self._part_examples(n, step, size, c, (kind, 1.0)))
               for n, c in counts.items()}
        batch = []
        for slot, n in enumerate(names):
            good, wrong = next(clean[n]), next(bad[n])
            batch.append(wrong if slot in hit else good)
        return batch

    def eval_examples(self) -> list[Example]:
        """Every part's evaluation examples, part after part, each tagged with its part."""
        if self._eval is None:
            self._eval = []
            for name, part in self.parts.items():
                examples = [replace(e, task=name) for e in part.eval_examples()]
                self._eval_sizes[name] = len(examples)
                self._eval.extend(examples)
        return self._eval

    def score(self, outputs: Sequence[str]) -> Scores:
        """Exact match over all parts; per part, its own scores under ``details["tasks"]``."""
        examples = self.eval_examples()
        tasks: dict[str, dict[str, object]] = {}
        start = 0
        for name, part in self.parts.items():
            end = start + self._eval_sizes[name]
            scores = part.score(outputs[start:end])
            tasks[name] = {"exact_match": scores.exact_match, **(scores.details or {})}
            start = end
        summary = " | ".join(f"{n}: EM {d['exact_match']:.3f}" for n, d in tasks.items())
        return Scores(exact_match(outputs, examples), {"tasks": tasks}, summary)

    def records(self) -> Iterator[Record]:
        """The records of the parts read from files (see ``ulora_remote.task.RecordSource``)."""
        for part in self.parts.values():
            if isinstance(part, RecordSource):
                yield from part.records()


def _count(names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return counts
