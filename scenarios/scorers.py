"""Scorers of a data file's evaluation: exact match, a regex extract, accuracy over labels.

A scenario names one per task (``[task.scorer]``, or per task name in ``[task.scorers.NAME]``)::

    kind = "exact-match"                          # the generation equals the reference
    kind = "regex"    pattern = "= *(-?\\d+)"      # the extracted parts are equal
    kind = "labels"   labels = ["yes", "no"]      # accuracy of the predicted label

Every scorer compares a greedy generation with the record's reference answer (its completion, or
the last assistant message), both with surrounding whitespace ignored, and returns JSON-able
details with ``score`` in [0, 1]; ``evals.csv`` keeps the strict exact match whatever the scorer.

* ``regex``: the first match of ``pattern`` in each text, its first group when it has groups,
  else the whole match; an output without a match is wrong. Every reference must match
  (checked when the data is read).
* ``labels``: the predicted label is the one the output equals or starts with (ignoring case,
  the longest such label, followed by a non-letter/digit), else none (``invalid``). Every
  reference must be one of the labels. Details add the majority label's accuracy, the
  baseline a model that learned nothing reaches.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field, Strict, field_validator

from ulora_remote.sections import STRICT

__all__ = ["ExactMatchScorer", "LabelsScorer", "RegexScorer", "Scorer", "ScorerSection"]


class Scorer(Protocol):
    """Scores generations against references. Pure; nothing blocks."""

    kind: str

    def check_reference(self, reference: str) -> str | None:
        """None when ``reference`` can be scored, else what is wrong with it."""
        ...

    def score(self, outputs: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        """``{"scorer": kind, "score": share in [0, 1], ...}``, one output per reference."""
        ...


class ExactMatchScorer:
    """The share of outputs equal to their reference, whitespace-stripped."""

    kind = "exact-match"

    def check_reference(self, reference: str) -> str | None:
        return None

    def score(self, outputs: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        hits = sum(o.strip() == r.strip() for o, r in zip(outputs, references, strict=True))
        return {"scorer": self.kind, "score": hits / len(references)}


class RegexScorer:
    """Equal extracts of ``pattern`` (its first group, else the whole match)."""

    kind = "regex"

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)

    def extract(self, text: str) -> str | None:
        found = self.pattern.search(text.strip())
        if found is None:
            return None
        return found.group(1) if self.pattern.groups else found.group(0)

    def check_reference(self, reference: str) -> str | None:
        if self.extract(reference) is None:
            return (f"the reference {reference.strip()!r} has no match of the scorer's pattern "
                    f"{self.pattern.pattern!r}; fix the pattern or the record")
        return None

    def score(self, outputs: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        extracted = [self.extract(o) for o in outputs]
        hits = sum(e is not None and e == self.extract(r)
                   for e, r in zip(extracted, references, strict=True))
        return {"scorer": self.kind, "score": hits / len(references),
                "unmatched": sum(e is None for e in extracted)}


class LabelsScorer:
    """Accuracy of the label each output names, beside the majority label's."""

    kind = "labels"

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._longest_first = sorted(self.labels, key=len, reverse=True)

    def predict(self, output: str) -> str | None:
        text = output.strip().lower()
        for label in self._longest_first:
            low = label.lower()
            if text == low or (text.startswith(low) and not text[len(low)].isalnum()):
                return label
        return None

    def check_reference(self, reference: str) -> str | None:
        if reference.strip() not in self.labels:
            return (f"the reference {reference.strip()!r} is not one of the scorer's labels "
                    f"{list(self.labels)}; fix the record or the labels")
        return None

    def score(self, outputs: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        gold = [r.strip() for r in references]
        predicted = [self.predict(o) for o in outputs]
        majority, count = Counter(gold).most_common(1)[0]
        return {
            "scorer": self.kind,
            "score": sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold),
            "invalid": sum(p is None for p in predicted),
            "predicted": {label: predicted.count(label) for label in self.labels},
            "majority_label": majority,
            "majority_accuracy": count / len(gold),
        }


class ExactMatchSection(BaseModel):
    """``kind = "exact-match"`` (the default)."""

    model_config = STRICT
    kind: Literal["exact-match"] = "exact-match"

    def build(self) -> Scorer:
        return ExactMatchScorer()


class RegexSection(BaseModel):
    """``kind = "regex"``: compare what ``pattern`` extracts (Python ``re`` syntax)."""

    model_config = STRICT
    kind: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=1000)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a regular expression ({exc}); fix "
                             "it (TOML: write backslashes twice, or use a 'literal' string)"
                             ) from None
        return pattern

    def build(self) -> Scorer:
        return RegexScorer(self.pattern)


class LabelsSection(BaseModel):
    """``kind = "labels"``: accuracy over ``labels`` (two or more distinct texts)."""

    model_config = STRICT
    kind: Literal["labels"]
    labels: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Strict(False)] = Field(
        min_length=2, max_length=1000)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        stripped = [label.strip() for label in labels]
        if len(set(stripped)) != len(stripped) or not all(stripped):
            raise ValueError(f"labels {list(labels)} must be distinct, non-blank texts")
        return tuple(stripped)

    def build(self) -> Scorer:
        return LabelsScorer(self.labels)


ScorerSection = Annotated[ExactMatchSection | RegexSection | LabelsSection,
                          Field(discriminator="kind")]
