"""The task signals C, E, S, the task stress u and φ = f(C, E, S, ΔC, ΔE, ΔS) on hand-computed
sequences, and the reduction to the seed's controller with one task and C = S = 0."""

from __future__ import annotations

import math
import random

import pytest

from ulora_remote.control.adapters import AdaptersSection, AdapterSwitch
from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.policy import Signal
from ulora_remote.control.stress import RatioStress
from ulora_remote.control.task_signals import (
    ConflictMeter,
    StabilityMeter,
    TaskSignals,
    TaskSignalsConfig,
    task_error,
    task_stress,
)
from ulora_remote.errors import ConfigurationError, InputError


def test_the_correlation_follows_the_exponentially_weighted_moments_by_hand() -> None:
    meter = ConflictMeter(window=0.5, warmup=1)
    meter.observe({"a": 1.0, "b": 2.0}, None)  # sets the means
    meter.observe({"a": 3.0, "b": 0.0}, None)
    pair = meter.pairs["a\tb"]
    # d = (2, -2); m = (2, 1); v = 0.5·(0 + 0.5·4) = 1 each; c = 0.5·(0.5·(-4)) = -1
    assert (pair.m_a, pair.m_b, pair.v_a, pair.v_b, pair.c_ab) == (2.0, 1.0, 1.0, 1.0, -1.0)
    assert meter.correlation(pair) == -1.0
    meter.observe({"a": 2.0, "b": 2.0}, None)
    # d = (0, 1); m = (2, 1.5); v = (0.5, 0.75); c = 0.5·(-1 + 0) = -0.5
    assert (pair.v_a, pair.v_b, pair.c_ab) == (0.5, 0.75, -0.5)
    assert meter.correlation(pair) == pytest.approx(-0.5 / math.sqrt(0.375), abs=1e-15)


def test_conflict_is_the_negative_correlation_beyond_the_dead_zone() -> None:
    meter = ConflictMeter(window=0.9, warmup=3)
    for i in range(4):  # perfectly opposed changes
        meter.observe({"a": float(i % 2), "b": -float(i % 2)}, None)
    zone = 2 * math.sqrt(0.1 / 1.9)
    assert meter.dead_zone == pytest.approx(zone)
    assert meter.conflict == pytest.approx(1.0 - zone)
    helping = ConflictMeter(window=0.9, warmup=3)
    for i in range(4):  # changes that move together: no conflict
        helping.observe({"a": float(i % 2), "b": 2.0 * (i % 2)}, None)
    assert helping.conflict == 0.0


def test_conflict_waits_for_the_warmup_and_needs_two_tasks() -> None:
    meter = ConflictMeter(window=0.9, warmup=10)
    for i in range(9):
        meter.observe({"a": float(i % 2), "b": -float(i % 2)}, None)
    assert meter.conflict == 0.0  # 9 samples < warm-up
    one = ConflictMeter(window=0.9, warmup=1)
    one.observe({"a": 1.0}, None)
    one.observe({"a": 2.0, "b": math.nan}, None)  # a NaN change does not count
    assert one.pairs == {} and one.conflict == 0.0


def test_weight_conflict_smooths_the_gradient_variance() -> None:
    meter = ConflictMeter(window=0.5, warmup=1)
    meter.observe({}, 0.9)  # V̄ = 0.5·0.5 + 0.5·0.9 = 0.7
    assert meter.variance == pytest.approx(0.7)
    assert meter.weight_conflict == pytest.approx(0.4)  # max(0, 2·0.7 − 1)
    meter.observe({}, 0.1)  # V̄ = 0.4 → orthogonal-or-aligned: no conflict
    assert meter.weight_conflict == 0.0
    meter.observe({}, 0.9, shared=False)  # own adapters: nothing to interfere with
    assert (meter.variance, meter.weight_conflict, meter.pairs) == (0.5, 0.0, {})


def test_stability_is_the_mean_drop_below_each_tasks_best() -> None:
    s = StabilityMeter()
    s.observe({"a": 0.5, "b": 0.2})
    assert (s.value, s.rate) == (0.0, 0.0)
    s.observe({"a": 0.25, "b": 0.5})  # a dropped 0.25 below its best, b is at its best
    assert (s.value, s.rate) == (0.125, 0.125)
    s.observe({"a": 0.5, "b": 0.25})  # a back at its best, b 0.25 below
    assert (s.value, s.rate) == (0.125, 0.0)
    s.observe({"a": 0.75, "b": 0.5})
    assert (s.value, s.rate) == (0.0, -0.125)


def test_task_error_is_the_mean_of_the_tasks_losses() -> None:
    assert task_error({"a": (6.0, 3.0), "b": (1.0, 4.0)}) == (2.0 + 0.25) / 2
    assert task_error({"": (7.3, 3.0)}) == 7.3 / 3.0  # one task: exactly its loss
    assert math.isnan(task_error({"a": (0.0, 0.0)}))


def test_task_stress_combines_conflict_and_stability_by_hand() -> None:
    cfg = TaskSignalsConfig(conflict_gain=3.0, conflict_rate_gain=2.0, stability_gain=1.0,
                            stability_rate_gain=4.0)
    # c = σ(3·0.2 + 2·0.05) = 0.7/1.7; s = σ(1·0.1 + 4·max(0, −0.02)) = 0.1/1.1
    c, s = 0.7 / 1.7, 0.1 / 1.1
    u = task_stress(cfg, conflict=0.2, conflict_rate=0.05, stability=0.1,
                    stability_rate=-0.02)
    assert u == pytest.approx(1 - (1 - c) * (1 - s), abs=1e-15)
    assert task_stress(cfg, conflict=0.0, conflict_rate=0.0, stability=0.0,
                       stability_rate=0.0) == 0.0


def test_phi_with_a_task_stress_on_a_hand_computed_sequence() -> None:
    ctl = UnifiedController(alpha=0.1, beta=0.9, theta0=0.3, theta1=0.7)
    # t0: Ê = 0.9·1 + 0.1·1 = 1, d = 1/2, D = d + (1 − d)·u = 0.5 + 0.5·0.5 = 0.75,
    #     φ = 0.9·0.5 + 0.1·0.75 = 0.525
    first = ctl.observe(Signal(1.0, task_stress=0.5))
    assert first.phi == pytest.approx(0.525, abs=1e-15)
    # t1: Ê = 0.9·1 + 0.1·3 = 1.2, d = 1.2/2.2, u = 0.2 → D = d + (1 − d)·0.2
    d = 1.2 / 2.2
    second = ctl.observe(Signal(3.0, task_stress=0.2))
    assert second.e_smooth == pytest.approx(1.2, abs=1e-15)
    assert second.phi == pytest.approx(0.9 * 0.525 + 0.1 * (d + (1 - d) * 0.2), abs=1e-15)
    # t2: u = 0 is the seed's update
    third = ctl.observe(Signal(3.0))
    e = 0.9 * 1.2 + 0.3
    assert third.phi == pytest.approx(0.9 * second.phi + 0.1 * e / (1 + e), abs=1e-15)


def test_the_task_stress_enters_after_the_derivative_reaction() -> None:
    ctl = UnifiedController(alpha=0.5, beta=0.5, derivative_gain=2.0)
    ctl.observe(Signal(1.0))  # Ê = 1, d = 1/2, φ = 0.5
    out = ctl.observe(Signal(3.0, task_stress=0.25))
    d = 2.0 / 3.0  # Ê = 2
    fed = min(1.0, d + 2.0 * (d - 0.5))  # = 1: the derivative reaction saturates
    assert out.phi == pytest.approx(0.5 * 0.5 + 0.5 * (fed + (1 - fed) * 0.25), abs=1e-15)


def test_signals_and_phi_end_to_end_by_hand() -> None:
    cfg = TaskSignalsConfig(window=0.5, warmup=1, conflict_gain=3.0, stability_gain=1.0)
    signals, ctl = TaskSignals(cfg), UnifiedController(alpha=0.1, beta=0.9)
    signals.observe_eval({"a": 0.5, "b": 0.5})
    signals.observe_eval({"a": 0.25, "b": 0.5})  # S = 0.125
    u0 = signals.observe_step({"a": 1.0, "b": -1.0}, None)  # one sample: C = 0
    assert u0 == pytest.approx(0.125 / 1.125)
    u1 = signals.observe_step({"a": -1.0, "b": 1.0}, None)  # ρ = −1: C = 1 − δ(0.5) < 0 → 0
    assert signals.conflict == 0.0 and u1 == pytest.approx(u0)
    phi = ctl.observe(Signal(1.0, task_stress=u1)).phi
    assert phi == pytest.approx(0.9 * 0.5 + 0.1 * (0.5 + 0.5 * u1), abs=1e-15)


@pytest.mark.parametrize("stress", ["ema", "ratio", "derivative"])
def test_one_task_with_no_conflict_and_no_forgetting_is_the_seeds_controller(stress: str) -> None:
    rng = random.Random(7)
    losses = [rng.uniform(0.05, 4.0) for _ in range(300)] + [math.nan, 2.0, 0.0]

    def build() -> UnifiedController:
        if stress == "ratio":
            return UnifiedController.from_preset("tinker", stress=RatioStress(), cooldown=0)
        gain = 0.5 if stress == "derivative" else 0.0
        return UnifiedController.from_preset("tinker", derivative_gain=gain, cooldown=5)

    seed, multi = build(), build()
    signals = TaskSignals()
    for t, loss in enumerate(losses):
        nll, w = loss * 7.0, 7.0
        error = task_error({"": (nll, w)})
        u = signals.observe_step({"": 0.01 * t}, None)  # one task: no pair, C = 0
        assert u == 0.0
        a, b = seed.observe(Signal(nll / w)), multi.observe(Signal(error, task_stress=u))
        assert repr(a) == repr(b)  # every field bit for bit (NaN losses included)


def test_the_controller_refuses_a_task_stress_outside_zero_one() -> None:
    ctl = UnifiedController()
    for bad in (-0.1, 1.0, math.nan):
        with pytest.raises(InputError, match="task_stress"):
            ctl.observe(Signal(1.0, task_stress=bad))


def test_the_switch_forks_after_patience_steps_in_multi_with_conflict() -> None:
    switch = AdapterSwitch("switch", 3, 0.3, 0.7)
    seq = [(0.5, 0.1), (0.5, 0.1), (0.8, 0.1), (0.4, 0.1), (0.2, 0.1), (0.35, 0.1),
           (0.36, 0.0), (0.4, 0.2), (0.5, 0.2)]  # Mirror, Single and C = 0 break the streak
    assert [switch.observe(t, phi, c) for t, (phi, c) in enumerate(seq)] == [None] * 9
    assert not switch.forked
    reason = switch.observe(9, 0.69, 0.25)
    assert reason == ("phi 0.690 in Multi [0.3, 0.7) with conflict C > 0 (now 0.250) for 3 "
                      "steps") and switch.decided_step == 9
    assert switch.observe(10, 0.5, 0.3) is None  # decided once
    again = AdapterSwitch("switch", 3, 0.3, 0.7)
    again.load_state_dict(switch.state_dict())
    assert again == switch
    loose = AdapterSwitch("switch", 2, 0.3, 0.7, require_conflict=False)
    assert [loose.observe(t, 0.5, 0.0) for t in range(2)] == [None, "phi 0.500 in Multi "
                                                              "[0.3, 0.7) for 2 steps"]


def test_shared_and_separate_never_switch() -> None:
    shared, separate = AdapterSwitch("shared", 1, 0.3, 0.7), AdapterSwitch("separate", 1, 0.3, 0.7)
    assert shared.observe(0, 0.5, 1.0) is None and not shared.forked
    assert separate.forked and separate.decided_step == -1 and "separate" in separate.reason


def test_the_section_validates_and_builds_the_signals() -> None:
    section = AdaptersSection(mode="switch", conflict_gain=4.0)
    cfg = section.signals_config()
    assert (cfg.conflict_gain, cfg.window, cfg.conflict) == (4.0, 0.98, "loss")
    with pytest.raises(ConfigurationError, match="window"):
        TaskSignalsConfig(window=1.0)
    with pytest.raises(ConfigurationError, match="gain"):
        TaskSignalsConfig(stability_gain=-1.0)
