"""Scores of a binary classification run: accuracy, F1, and the majority-class baseline.

Pure Python (no torch, no numpy), so the runner, the summary and tests share one definition.
Predictions and gold labels are label *texts* ("1"/"0", "yes"/"no"); surrounding whitespace
is ignored, so a completion-style answer " yes" scores like "yes".

Conventions (those of scikit-learn with ``zero_division=0``):

* F1 is of the positive label: 2·TP / (2·TP + FP + FN); 0 when there is no TP.
* The majority baseline answers the most frequent gold label for every example (ties go to the
  positive label). With a share p of positives and p ≥ 1/2 it scores accuracy p and
  F1 = 2p / (1 + p): p = 0.646 gives accuracy 0.646 and F1 0.785.
* A prediction that is neither label counts as wrong, and as "not positive" for F1.
* ``one_class`` is true when every prediction is the same text: such a model has not learned
  to tell the classes apart, whatever its accuracy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ulora_remote.errors import InputError

__all__ = ["ClassificationScores", "f1_from_counts", "majority_label", "score_predictions"]


@dataclass(frozen=True)
class ClassificationScores:
    """Accuracy and F1 of predictions against gold labels, beside the majority baseline.

    ``positive_rate`` is the share of positive gold labels; ``predicted_positive_rate`` the
    share of positive predictions; ``invalid`` counts predictions that are neither label;
    ``one_class`` flags predictions that are all the same text (``one_class_label``).
    """

    n: int
    positive_label: str
    accuracy: float
    f1: float
    precision: float
    recall: float
    majority_label: str
    majority_accuracy: float
    majority_f1: float
    positive_rate: float
    predicted_positive_rate: float
    invalid: int
    one_class: bool
    one_class_label: str | None

    @property
    def beats_majority(self) -> bool:
        """Whether both accuracy and F1 exceed the majority baseline's."""
        return self.accuracy > self.majority_accuracy and self.f1 > self.majority_f1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (and ``beats_majority``)."""
        return {**asdict(self), "beats_majority": self.beats_majority}

    def describe(self) -> str:
        """One console line; ends with a warning when the predictions are all one class."""
        text = (f"accuracy={self.accuracy:.3f} F1={self.f1:.3f} | majority "
                f"{self.majority_label!r}: accuracy={self.majority_accuracy:.3f} "
                f"F1={self.majority_f1:.3f}")
        if self.one_class:
            text += (f" | WARNING: all {self.n} predictions are {self.one_class_label!r}: "
                     "the model answers one class and has not learned the task")
        return text


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """2·TP / (2·TP + FP + FN), and 0.0 when TP = 0 (no positive was found)."""
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def majority_label(gold: Sequence[str], labels: tuple[str, str]) -> str:
    """The more frequent of ``labels = (negative, positive)`` in ``gold``; a tie → positive."""
    counts = Counter(g.strip() for g in gold)
    negative, positive = labels
    return negative if counts[negative] > counts[positive] else positive


def score_predictions(
    predictions: Sequence[str], gold: Sequence[str], labels: tuple[str, str] = ("0", "1")
) -> ClassificationScores:
    """Score ``predictions`` against ``gold``, with the majority baseline of the same ``gold``.

    Args:
        predictions: predicted label texts (whitespace around them is ignored).
        gold: the true label texts, one per prediction, each one of ``labels``.
        labels: ``(negative, positive)`` label texts; F1 is of the positive one.

    Returns:
        The scores (see ``ClassificationScores``).

    Raises:
        InputError: no examples, lengths that differ, or a gold label outside ``labels``.
    """
    preds = [p.strip() for p in predictions]
    truth = [g.strip() for g in gold]
    _check(preds, truth, labels)
    negative, positive = labels
    tp = sum(p == positive and g == positive for p, g in zip(preds, truth, strict=True))
    fp = sum(p == positive and g == negative for p, g in zip(preds, truth, strict=True))
    fn = sum(p != positive and g == positive for p, g in zip(preds, truth, strict=True))
    n, n_pos = len(truth), truth.count(positive)
    majority = majority_label(truth, labels)
    distinct = set(preds)
    return ClassificationScores(
        n=n, positive_label=positive,
        accuracy=sum(p == g for p, g in zip(preds, truth, strict=True)) / n,
        f1=f1_from_counts(tp, fp, fn),
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / n_pos if n_pos else 0.0,
        majority_label=majority,
        majority_accuracy=truth.count(majority) / n,
        # All-positive: TP = n_pos, FP = n − n_pos, FN = 0. All-negative finds no positive.
        majority_f1=f1_from_counts(n_pos, n - n_pos, 0) if majority == positive else 0.0,
        positive_rate=n_pos / n,
        predicted_positive_rate=preds.count(positive) / n,
        invalid=sum(p not in labels for p in preds),
        one_class=len(distinct) == 1,
        one_class_label=next(iter(distinct)) if len(distinct) == 1 else None,
    )


def _check(preds: list[str], truth: list[str], labels: tuple[str, str]) -> None:
    if len(labels) != 2 or labels[0] == labels[1]:
        raise InputError(f"labels={labels!r}: give two different texts (negative, positive)")
    if not truth:
        raise InputError("no examples to score: pass at least one prediction and gold label")
    if len(preds) != len(truth):
        raise InputError(f"{len(preds)} predictions for {len(truth)} gold labels; "
                         "pass one prediction per example")
    unknown = sorted({g for g in truth if g not in labels})
    if unknown:
        raise InputError(f"gold labels {unknown!r} are not among labels={labels!r}; "
                         "pass the labels the data uses")
