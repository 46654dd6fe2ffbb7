"""Recovery metrics on hand-made evaluation curves with known damage and time to recover."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from ulora_remote.errors import InputError
from ulora_remote.run.metrics import RecoveryParams, recovery_metrics, recovery_metrics_from_frame

STEPS = list(range(0, 310, 10))  # evaluations every 10 steps, 0..300


def _curve(points: dict[int, float], base: float) -> list[float]:
    return [points.get(t, base) for t in STEPS]


# One shock [100, 150): the loss climbs to 3.0, is back within L̄ + ε = 1.12 at 170 and 180,
# then bumps to 1.3 at 220 (post-recovery overshoot 0.18).
LOSS_A = _curve(
    {110: 2.0, 120: 3.0, 130: 3.0, 140: 2.5, 150: 2.0, 160: 1.5, 170: 1.05, 180: 1.08, 220: 1.3},
    1.0,
)
EM_A = _curve({110: 0.5, 120: 0.2, 130: 0.1, 140: 0.3, 150: 0.4, 160: 0.6, 170: 0.7}, 0.8)


def test_known_damage_recovery_overshoot_area_and_forgetting() -> None:
    run = recovery_metrics(STEPS, LOSS_A, EM_A, [(100, 150)])
    (w,) = run.windows
    assert (w.start, w.end, w.horizon_end) == (100, 150, 300)  # e + H = 350, capped by the run
    assert w.pre_loss == pytest.approx(1.0) and w.pre_exact_match == pytest.approx(0.8)
    assert w.tolerance == pytest.approx(0.12)  # 0.1·1.0 + 0.02
    assert w.peak_loss == 3.0 and w.peak_damage == pytest.approx(2.0)
    assert w.recovered and w.recover_step == 170 and w.time_to_recover_steps == 20
    assert w.overshoot == pytest.approx(0.18)
    # 1 + 2 + 2 + 1.5 + 1 + 0.5 + 0.05 + 0.08 + 0.3, one term per evaluation in (100, 300].
    assert w.excess_area == pytest.approx(8.43)
    assert w.min_exact_match == pytest.approx(0.1) and w.forgetting == pytest.approx(0.7)
    assert (run.final_step, run.final_loss, run.final_exact_match) == (300, 1.0, 0.8)


def test_pre_shock_level_is_the_mean_of_the_last_w_evaluations_up_to_start() -> None:
    loss = _curve({70: 3.0, 80: 1.2, 90: 1.0, 100: 0.8, 110: 5.0}, 0.8)
    run = recovery_metrics(STEPS, loss, [0.5] * len(STEPS), [(100, 150)])
    assert run.windows[0].pre_loss == pytest.approx((1.2 + 1.0 + 0.8) / 3)
    wide = recovery_metrics(
        STEPS, loss, [0.5] * len(STEPS), [(100, 150)], params=RecoveryParams(pre_evals=4)
    )
    assert wide.windows[0].pre_loss == pytest.approx((3.0 + 1.2 + 1.0 + 0.8) / 4)


def test_one_good_evaluation_is_not_a_recovery_with_m_2() -> None:
    loss = _curve({110: 3.0, 150: 2.0, 160: 1.1, 170: 1.5, 180: 1.1, 190: 1.0}, 1.0)
    (w,) = recovery_metrics(STEPS, loss, [0.5] * len(STEPS), [(100, 150)]).windows
    assert w.recover_step == 180 and w.time_to_recover_steps == 30
    (single,) = recovery_metrics(
        STEPS, loss, [0.5] * len(STEPS), [(100, 150)], params=RecoveryParams(consecutive=1)
    ).windows
    assert single.recover_step == 160 and single.time_to_recover_steps == 10


def test_censored_recovery_is_reported_as_such() -> None:
    loss = _curve({t: 1.5 for t in range(110, 310, 10)}, 1.0)
    params = RecoveryParams(horizon_steps=100)
    (w,) = recovery_metrics(STEPS, loss, [0.5] * len(STEPS), [(100, 150)], params=params).windows
    assert w.horizon_end == 250
    assert not w.recovered and w.recover_step is None
    assert w.time_to_recover_steps == 100  # censored at H
    assert math.isnan(w.overshoot)  # nothing comes "after" a recovery that never happened
    assert w.excess_area == pytest.approx(0.5 * 15)  # evaluations 110..250
    assert w.peak_damage == pytest.approx(0.5)


def test_recovery_right_at_the_end_of_the_window_counts_as_zero() -> None:
    loss = _curve({110: 2.0, 120: 1.5}, 1.0)
    (w,) = recovery_metrics(STEPS, loss, [0.5] * len(STEPS), [(100, 150)]).windows
    assert w.recovered and w.time_to_recover_steps == 0 and w.overshoot == 0.0


def test_the_next_window_caps_the_horizon_of_the_previous_one() -> None:
    loss = _curve({110: 2.0, 150: 1.5, 160: 1.5, 190: 1.6, 210: 4.0, 220: 4.0}, 1.0)
    run = recovery_metrics(STEPS, loss, [0.5] * len(STEPS), [(200, 250), (100, 150)])
    first, second = run.windows
    assert (first.start, first.horizon_end, second.start, second.horizon_end) == (
        100,
        200,
        200,
        300,
    )
    # The second shock's 4.0 does not leak into the first window's damage or area.
    assert first.peak_damage == pytest.approx(1.0)
    assert first.excess_area == pytest.approx(1.0 + 0.5 + 0.5 + 0.6)
    assert first.recover_step == 170
    assert second.pre_loss == pytest.approx((1.0 + 1.6 + 1.0) / 3)  # evals 180, 190, 200


def test_no_evaluation_before_the_shock_leaves_level_metrics_undefined() -> None:
    steps = list(range(60, 310, 10))
    loss = [2.0 if t < 120 else 1.0 for t in steps]
    (w,) = recovery_metrics(steps, loss, [0.5] * len(steps), [(50, 100)]).windows
    for value in (w.pre_loss, w.peak_damage, w.excess_area, w.forgetting, w.time_to_recover_steps):
        assert math.isnan(value)
    assert not w.recovered and w.peak_loss == 2.0


def test_a_diverged_evaluation_is_the_worst_loss() -> None:
    loss = _curve({120: math.nan}, 1.0)
    (w,) = recovery_metrics(STEPS, loss, [0.5] * len(STEPS), [(100, 150)]).windows
    assert w.peak_damage == math.inf and w.excess_area == math.inf
    assert w.recovered and w.recover_step == 150


def test_summary_dict_names_units_and_is_json_ready() -> None:
    run = recovery_metrics(STEPS, LOSS_A, EM_A, [(100, 150)])
    data = run.to_dict()
    assert data["units"]["excess_area"] == "nats x evaluations"
    assert data["final"] == {"step": 300, "eval_loss": 1.0, "exact_match": 0.8}
    assert data["windows"][0]["time_to_recover_steps"] == 20
    assert data["params"]["consecutive"] == 2


def test_from_frame_matches_sequences() -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"step": STEPS, "eval_loss": LOSS_A, "exact_match": EM_A})
    assert recovery_metrics_from_frame(frame, [(100, 150)]) == recovery_metrics(
        STEPS, LOSS_A, EM_A, [(100, 150)]
    )


@pytest.mark.parametrize(
    ("steps", "loss", "em", "message"),
    [
        ([], [], [], "non-zero lengths"),
        ([0, 10], [1.0], [0.5, 0.5], "equal"),
        ([0, 10, 10], [1.0] * 3, [0.5] * 3, "strictly increasing"),
    ],
)
def test_bad_series_are_rejected(
    steps: list[int], loss: list[float], em: list[float], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        recovery_metrics(steps, loss, em, [(0, 5)])


def test_bad_params_are_rejected() -> None:
    with pytest.raises(InputError, match="consecutive"):
        RecoveryParams(consecutive=0)
    with pytest.raises(InputError, match="horizon_steps"):
        RecoveryParams(horizon_steps=-1)


def test_metrics_import_neither_torch_nor_pandas() -> None:
    code = (
        "import sys, ulora_remote.run.metrics; "
        "print('torch' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
