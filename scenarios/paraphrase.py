"""Sentence-pair paraphrase tasks: the pair type, its two renderings, a generated offline set,
and the pair task (with label-flip shocks and classification scoring).

Two renderings of a pair (``render_pair``):

* ``"classifier"``: ``Example(inputs=(<sentence 1>, <sentence 2>), completion="1" | "0")`` for
  a sequence classifier (``ulora_remote.backends.classify``), which hands the two sentences to
  its tokenizer as a text pair (the prompt also holds them, one per line);
* ``"completion"``: a question for a causal LM with the answer ``" yes"`` / ``" no"`` (Tinker).

The generated set (``generate_pairs``) needs no download. Sentence 1 is
``<subject> <verb> <object> <time> .`` from small synonym groups. A paraphrase rewrites every slot
with a synonym of the same group (and may move the time to the front). A non-paraphrase changes
the meaning: half of them negate the verb with "never" (a lexical cue a tiny model finds
quickly), the other half take one slot from another group (which needs comparing the two
sentences). ``positive_rate`` of the pairs are paraphrases (0.6 by default).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from ulora_remote.backend import Example
from ulora_remote.classification import ClassificationScores, score_predictions
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.task import Scores, exact_match

__all__ = [
    "LABEL_TEXTS",
    "PAIR_SHOCK",
    "PairFormat",
    "PairTask",
    "SentencePair",
    "generate_pairs",
    "render_pair",
    "vocabulary",
]

PairFormat = Literal["classifier", "completion"]
#: The shock kind of the pair tasks: flip the label.
PAIR_SHOCK = "flipped-label"
#: (negative, positive) label texts of each rendering.
LABEL_TEXTS: dict[str, tuple[str, str]] = {"classifier": ("0", "1"), "completion": (" no", " yes")}

_SUBJECTS = (("the company", "the firm"), ("the bank", "the lender"), ("the city", "the town"),
             ("the team", "the squad"), ("the minister", "the official"),
             ("the court", "the tribunal"), ("the school", "the academy"),
             ("the hospital", "the clinic"))
_VERBS = (("bought", "purchased"), ("sold", "offloaded"), ("closed", "shut"),
          ("opened", "launched"), ("approved", "accepted"), ("rejected", "refused"),
          ("fixed", "repaired"), ("started", "began"))
_OBJECTS = (("the factory", "the plant"), ("the deal", "the agreement"), ("the road", "the street"),
            ("the plan", "the proposal"), ("the report", "the study"), ("the store", "the shop"))
_TIMES = (("on monday", "on monday"), ("last year", "a year ago"), ("yesterday", "the day before"),
          ("this week", "in recent days"), ("in march", "in march"))
_SLOTS = (_SUBJECTS, _VERBS, _OBJECTS, _TIMES)


@dataclass(frozen=True)
class SentencePair:
    """Two sentences and whether the second is a paraphrase of the first (label 1) or not (0)."""

    sentence1: str
    sentence2: str
    label: int


def render_pair(pair: SentencePair, fmt: str) -> Example:
    """The pair as an ``Example`` in the ``"classifier"`` or ``"completion"`` rendering.

    Raises:
        ConfigurationError: an unknown format.
    """
    if fmt not in LABEL_TEXTS:
        raise ConfigurationError(f"pair format {fmt!r}: choose one of {sorted(LABEL_TEXTS)}")
    answer = LABEL_TEXTS[fmt][pair.label]
    if fmt == "classifier":
        return Example(prompt=f"{pair.sentence1}\n{pair.sentence2}", completion=answer,
                       inputs=(pair.sentence1, pair.sentence2))
    # One line: the built-in character model has no newline token, and Llama reads it as well.
    prompt = (f"Sentence 1: {pair.sentence1} | Sentence 2: {pair.sentence2} | "
              "Do both sentences say the same thing? Answer:")
    return Example(prompt=prompt, completion=answer)


def vocabulary() -> tuple[str, ...]:
    """Every word and punctuation token of the generated set, sorted (for a word tokenizer)."""
    words = {"never", ",", "."}
    for slot in _SLOTS:
        for group in slot:
            for phrase in group:
                words.update(phrase.split())
    return tuple(sorted(words))


def generate_pairs(n: int, seed: int | str, positive_rate: float = 0.6) -> list[SentencePair]:
    """``n`` generated pairs, a pure function of ``(n, seed, positive_rate)``.

    Raises:
        InputError: ``n`` < 1 or ``positive_rate`` outside (0, 1).
    """
    if n < 1 or not 0.0 < positive_rate < 1.0:
        raise InputError(f"n={n}, positive_rate={positive_rate}: need n ≥ 1 and 0 < rate < 1")
    rng = random.Random(f"paraphrase:{seed}")
    return [_one_pair(rng, rng.random() < positive_rate) for _ in range(n)]


def _one_pair(rng: random.Random, positive: bool) -> SentencePair:
    groups = [rng.randrange(len(slot)) for slot in _SLOTS]
    s1 = _sentence([rng.choice(slot[g]) for slot, g in zip(_SLOTS, groups, strict=True)])
    negate = False
    if not positive:
        negate = rng.random() < 0.5
        if not negate:  # move one of subject, verb, object to another group
            k = rng.randrange(3)
            groups[k] = (groups[k] + rng.randrange(1, len(_SLOTS[k]))) % len(_SLOTS[k])
    words = [rng.choice(slot[g]) for slot, g in zip(_SLOTS, groups, strict=True)]
    if negate:
        words[1] = f"never {words[1]}"
    s2 = _sentence(words, time_first=rng.random() < 0.5)
    return SentencePair(s1, s2, int(positive))


def _sentence(words: list[str], time_first: bool = False) -> str:
    subject, verb, obj, time = words
    if time_first:
        return f"{time} , {subject} {verb} {obj} ."
    return f"{subject} {verb} {obj} {time} ."


class PairTask:
    """A sentence-pair classification task (a ``ulora_remote.task.Task``) with label-flip shocks.

    Training walks through ``train`` in a fresh seeded permutation each epoch, so every batch is
    a function of ``(seed, step)``. A shock batch flips the labels of ``max(1,
    round(fraction·size))`` examples, chosen by the step's own seeded generator. Scores are
    exact match plus accuracy, F1 and the majority baseline (``ClassificationScores``).

    Args:
        train: training pairs (at least one).
        eval_pairs: held-out pairs, scored at every evaluation (at least one).
        fmt: ``"classifier"`` or ``"completion"`` (see ``render_pair``).
        seed: the run's seed.

    Raises:
        ConfigurationError: empty data or an unknown format.
    """

    shock_kinds: tuple[str, ...] = (PAIR_SHOCK,)

    def __init__(self, train: Sequence[SentencePair], eval_pairs: Sequence[SentencePair], *,
                 fmt: str, seed: int) -> None:
        if not train or not eval_pairs:
            raise ConfigurationError(f"{len(train)} training and {len(eval_pairs)} evaluation "
                                     "pairs: both sets need at least one pair")
        render_pair(train[0], fmt)  # raises ConfigurationError on an unknown format
        self.labels = LABEL_TEXTS[fmt]
        self.train, self.eval_pairs = tuple(train), tuple(eval_pairs)
        self.fmt, self.seed = fmt, seed
        self._eval = [render_pair(p, fmt) for p in self.eval_pairs]

    def train_batch(self, step: int, size: int) -> list[Example]:
        return [render_pair(p, self.fmt) for p in self._pairs(step, size)]

    def shock_batch(self, step: int, size: int, kind: str, fraction: float) -> list[Example]:
        if kind != PAIR_SHOCK:
            raise ConfigurationError(f"shock kind {kind!r}: sentence pairs take {PAIR_SHOCK!r}")
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"fraction={fraction}: the corrupted share must lie in (0, 1]")
        pairs = self._pairs(step, size)
        rng = random.Random(f"paraphrase:{self.seed}:shock:{step}")
        for i in rng.sample(range(size), max(1, round(fraction * size))):
            p = pairs[i]
            pairs[i] = SentencePair(p.sentence1, p.sentence2, 1 - p.label)
        return [render_pair(p, self.fmt) for p in pairs]

    def _pairs(self, step: int, size: int) -> list[SentencePair]:
        if step < 0 or size < 1:
            raise InputError(f"step={step}, size={size}: need step >= 0, size >= 1")
        n, first = len(self.train), step * size
        return [_permutation(self.train, self.seed, i // n)[i % n]
                for i in range(first, first + size)]

    def eval_examples(self) -> list[Example]:
        """The held-out examples, the same list on every call."""
        return self._eval

    def score(self, outputs: Sequence[str]) -> Scores:
        scores = self.classification_scores(outputs)
        return Scores(exact_match=exact_match(outputs, self._eval), details=scores.to_dict(),
                      summary=scores.describe())

    def classification_scores(self, outputs: Sequence[str]) -> ClassificationScores:
        """Accuracy, F1 and the majority baseline of ``outputs`` (one per eval example)."""
        negative, positive = self.labels
        if self.fmt == "completion":  # a causal LM may go on after its answer: "Yes." → "yes"
            outputs = [_first_word(o) for o in outputs]
        return score_predictions(outputs, [e.completion for e in self._eval],
                                 (negative.strip(), positive.strip()))


def _first_word(text: str) -> str:
    words = text.split()
    return words[0].strip(".,;:!?\"'").lower() if words else ""


@lru_cache(maxsize=8)
def _permutation(pairs: tuple[Any, ...], seed: int, epoch: int) -> tuple[Any, ...]:
    # A string seed is hashed with SHA-512 by `random`: the same order in every process.
    order = list(pairs)
    random.Random(f"paraphrase:{seed}:epoch:{epoch}").shuffle(order)
    return tuple(order)
