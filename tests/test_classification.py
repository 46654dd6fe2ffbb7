"""Classification scores against hand-computed values, incl. the all-one-class case (docs/design.md,
"Scenarios")."""

from __future__ import annotations

import math

import pytest

from ulora_remote.classification import f1_from_counts, majority_label, score_predictions
from ulora_remote.errors import InputError


def test_mixed_predictions_match_hand_counts() -> None:
    # gold 1 0 0 1 1, predicted 1 1 0 0 1: TP 2 (#0, #4), FP 1 (#1), FN 1 (#3), TN 1 (#2).
    s = score_predictions(["1", "1", "0", "0", "1"], ["1", "0", "0", "1", "1"])
    assert s.accuracy == pytest.approx(3 / 5)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert (s.precision, s.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    # Majority of gold is "1" (3 of 5): accuracy 3/5, F1 = 2·3 / (2·3 + 2 + 0) = 0.75.
    assert (s.majority_label, s.majority_accuracy) == ("1", pytest.approx(0.6))
    assert s.majority_f1 == pytest.approx(0.75)
    assert not s.one_class and s.one_class_label is None and s.invalid == 0
    assert not s.beats_majority  # equal accuracy is not better
    assert "WARNING" not in s.describe()


def test_the_seeds_numbers_are_the_all_paraphrase_answer_and_are_flagged() -> None:
    gold = ["1"] * 646 + ["0"] * 354  # 64.6 % positives
    s = score_predictions(["1"] * 1000, gold)
    assert s.accuracy == pytest.approx(0.646)
    assert s.f1 == pytest.approx(2 * 0.646 / (1 + 0.646))
    assert round(s.f1, 3) == 0.785  # the seed's F1
    assert (s.accuracy, s.f1) == (s.majority_accuracy, s.majority_f1)
    assert s.one_class and s.one_class_label == "1" and not s.beats_majority
    line = s.describe()
    assert "WARNING: all 1000 predictions are '1'" in line and "has not learned" in line
    assert s.to_dict()["one_class"] is True and s.to_dict()["beats_majority"] is False


def test_all_negative_predictions_score_f1_zero_and_are_flagged() -> None:
    s = score_predictions(["0", "0", "0", "0"], ["0", "0", "0", "1"])
    assert (s.accuracy, s.f1, s.recall, s.precision) == (0.75, 0.0, 0.0, 0.0)
    assert (s.majority_label, s.majority_accuracy, s.majority_f1) == ("0", 0.75, 0.0)
    assert s.one_class and s.one_class_label == "0"


def test_text_labels_whitespace_and_invalid_answers() -> None:
    # " yes" (a completion) equals "yes"; "maybe" is neither label: wrong, and not positive.
    s = score_predictions([" yes", "no\n", "maybe", "yes"], ["yes", "no", "yes", "no"],
                          labels=("no", "yes"))
    assert s.invalid == 1 and s.accuracy == pytest.approx(0.5)
    assert s.f1 == pytest.approx(f1_from_counts(tp=1, fp=1, fn=1))
    assert s.predicted_positive_rate == pytest.approx(0.5) and s.positive_rate == 0.5
    assert s.majority_label == "yes"  # a tie goes to the positive label


def test_helpers() -> None:
    assert f1_from_counts(0, 5, 5) == 0.0 and math.isclose(f1_from_counts(3, 1, 0), 6 / 7)
    assert majority_label(["0", "0", "1"], ("0", "1")) == "0"
    assert majority_label(["0", "1"], ("0", "1")) == "1"


@pytest.mark.parametrize(
    ("preds", "gold", "labels", "match"),
    [
        ([], [], ("0", "1"), "no examples"),
        (["1"], ["1", "0"], ("0", "1"), "1 predictions for 2 gold"),
        (["1"], ["2"], ("0", "1"), r"gold labels \['2'\]"),
        (["1"], ["1"], ("1", "1"), "two different texts"),
    ],
)
def test_bad_inputs_say_what_is_wrong(preds: list[str], gold: list[str],
                                      labels: tuple[str, str], match: str) -> None:
    with pytest.raises(InputError, match=match):
        score_predictions(preds, gold, labels)


def test_summary_rows_and_console_line_carry_the_majority_comparison() -> None:
    from ulora_remote.run.summary import METRIC_NAMES, classification_line, run_metrics_rows

    scores = score_predictions(["1"] * 4, ["1", "1", "1", "0"]).to_dict()
    summary = {"method": "controller", "seed": 0, "windows": [], "final": {},
               "classification": {"step": 10, **scores}}
    rows = {r["metric"]: r["value"] for r in run_metrics_rows(summary)}
    assert rows == {"final_accuracy": 0.75, "final_f1": pytest.approx(6 / 7),
                    "final_majority_accuracy": 0.75, "final_majority_f1": pytest.approx(6 / 7),
                    "final_one_class": 1.0}
    assert set(rows) <= set(METRIC_NAMES)  # so `ulora compare` puts them in compare.md
    line = classification_line(summary)
    assert line is not None and "NOT above the majority class" in line
    assert "WARNING: all 4 final predictions are '1'" in line
    assert classification_line({"final": {}}) is None
