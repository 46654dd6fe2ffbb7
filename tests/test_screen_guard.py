"""The screening guard on hand-made per-example loss sequences (pure Python, no model)."""

from __future__ import annotations

import math
import random

import pytest

from ulora_remote.control.guard import Guard
from ulora_remote.control.screen import ScreenConfig, ScreenGuard
from ulora_remote.errors import ConfigurationError
from ulora_remote.losses import BatchLosses

CFG = ScreenConfig(window=80, min_history=40, trigger_steps=3, probation_steps=10,
                   judge_steps=3, backoff_steps=20)


def _batch(losses: list[float]) -> BatchLosses:
    """Examples of 4 target tokens each with the given mean losses (nats per token)."""
    return BatchLosses(tuple(4 * x for x in losses), (4.0,) * len(losses))


def _clean(rng: random.Random, n: int = 8) -> list[float]:
    return [abs(rng.gauss(0.2, 0.08)) for _ in range(n)]


def _warm(guard: ScreenGuard, rng: random.Random, steps: int = 10) -> int:
    for t in range(steps):
        assert guard.judge(t, _batch(_clean(rng))).keep == (True,) * 8
    return steps


def test_every_finite_example_is_kept_until_the_history_is_long_enough() -> None:
    guard = ScreenGuard(CFG)
    assert isinstance(guard, Guard) and guard.threshold() == math.inf
    verdict = guard.judge(0, _batch([0.1, 9.0, 0.2, math.nan]))
    assert verdict.keep == (True, True, True, False)  # non-finite: always rejected


def test_outliers_get_weight_zero_and_clean_examples_of_the_same_batch_are_kept() -> None:
    rng = random.Random(0)
    guard = ScreenGuard(CFG)
    t = _warm(guard, rng)
    tau = guard.threshold()
    assert CFG.min_loss <= tau < 2.0  # robust statistics of clean losses, floored at min_loss
    losses = _clean(rng, 6) + [4.5, math.inf]
    verdict = guard.judge(t, _batch(losses))
    assert verdict.keep == (True,) * 6 + (False, False)
    assert verdict.action == "none" and verdict.kept == 6
    assert guard.threshold() == pytest.approx(tau, rel=0.2)  # outliers never enter the window


def test_the_step_is_skipped_only_when_every_example_is_rejected() -> None:
    rng = random.Random(1)
    guard = ScreenGuard(CFG)
    t = _warm(guard, rng)
    assert guard.judge(t, _batch([5.0] * 8)).kept == 0


def _sustained(guard: ScreenGuard, t: int, loss: float = 6.0) -> tuple[int, float]:
    """Reject whole batches until the guard asks for a probation; return its step and τ."""
    tau = guard.threshold()
    for _ in range(CFG.trigger_steps - 1):
        assert guard.judge(t, _batch([loss] * 8)).kept == 0
        t += 1
    verdict = guard.judge(t, _batch([loss] * 8))
    assert verdict.action == "probation" and verdict.keep == (True,) * 8
    assert verdict.lr == CFG.probation_lr and guard.phase == "probation"
    return t, tau


def test_a_learnable_shift_is_admitted_and_becomes_the_new_reference() -> None:
    rng = random.Random(2)
    guard = ScreenGuard(CFG)
    start, tau = _sustained(guard, _warm(guard, rng))
    # On probation the new data is learnt gradually, as measured: one more example of the
    # batch below τ each step.
    actions = []
    for j in range(1, CFG.probation_steps):
        verdict = guard.judge(start + j, _batch([0.5] * min(j, 8) + [3.0] * (8 - min(j, 8))))
        actions.append(verdict.action)
        if verdict.action == "shift":
            break
    assert actions[-1] == "shift" and "rollback" not in actions
    assert guard.phase == "normal" and len(actions) < CFG.probation_steps
    # The reference restarted from the new data: no screening until min_history again.
    assert guard.threshold() == math.inf
    assert tau < math.inf


def test_unlearnable_noise_is_rolled_back_and_not_tried_again_during_the_backoff() -> None:
    rng = random.Random(3)
    guard = ScreenGuard(CFG)
    start, _ = _sustained(guard, _warm(guard, rng))
    verdicts = [guard.judge(start + j, _batch([5.5 - 0.05 * j] * 8))
                for j in range(1, CFG.probation_steps + 1)]
    assert [v.action for v in verdicts[:-1]] == ["none"] * (CFG.probation_steps - 1)
    assert verdicts[-1].action == "rollback" and guard.phase == "backoff"
    # The runner restores the snapshot and judges the same step again: now rejected, no action.
    end = start + CFG.probation_steps
    again = guard.judge(end, _batch([6.0] * 8))
    assert again.kept == 0 and again.action == "none"
    for t in range(end + 1, end + CFG.backoff_steps):
        assert guard.judge(t, _batch([6.0] * 8)).action == "none"  # no probation in backoff
    # The rejection went on all along: the first step after the backoff starts a new probation.
    assert guard.judge(end + CFG.backoff_steps, _batch([6.0] * 8)).action == "probation"


def test_a_burst_that_ends_during_probation_is_rolled_back() -> None:
    rng = random.Random(4)
    guard = ScreenGuard(CFG)
    start, _ = _sustained(guard, _warm(guard, rng))
    assert guard.judge(start + 1, _batch([6.0] * 8)).action == "none"
    back = guard.judge(start + 2, _batch(_clean(rng)))  # the old data at once
    assert back.action == "rollback" and guard.phase == "normal"


def test_state_round_trip_mid_probation_continues_identically() -> None:
    rng = random.Random(5)
    a = ScreenGuard(CFG)
    start, _ = _sustained(a, _warm(a, rng))
    a.judge(start + 1, _batch([4.0] * 8))
    b = ScreenGuard(CFG)
    b.load_state_dict(a.state_dict())
    for j in range(2, 8):
        batch = _batch([4.0 - 0.5 * j + 0.01 * i for i in range(8)])
        assert a.judge(start + j, batch) == b.judge(start + j, batch)
    with pytest.raises(ConfigurationError, match="other parameters"):
        ScreenGuard().load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs", [{"z": 0.0}, {"min_history": 500}, {"pass_share": 0.0},
                                    {"judge_steps": 70}, {"probation_lr": math.inf}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        ScreenConfig(**kwargs)  # type: ignore[arg-type]


def test_each_task_of_a_mix_is_judged_against_its_own_losses() -> None:
    # Task "b" is still learning (losses near 2.5) while "a" is nearly done (near 0.2): judged
    # against one shared reference, "b" would be rejected as outliers.
    rng = random.Random(6)
    guard = ScreenGuard(CFG)
    tasks = ["a"] * 4 + ["b"] * 4
    for t in range(20):
        losses = _clean(rng, 4) + [2.5 + rng.uniform(-0.3, 0.3) for _ in range(4)]
        assert guard.judge(t, _batch(losses), tasks).keep == (True,) * 8
    assert guard.threshold("a") < 2.0 < guard.threshold("b")
    mixed = guard.judge(20, _batch([0.2, 0.2, 9.0, 0.2, 2.4, 2.6, 12.0, 2.5]), tasks)
    assert mixed.keep == (True, True, False, True, True, True, False, True)


def test_a_lasting_change_of_one_task_opens_a_probation_for_that_task_alone() -> None:
    rng = random.Random(7)
    guard = ScreenGuard(CFG)
    tasks = ["a"] * 4 + ["b"] * 4
    for t in range(20):
        guard.judge(t, _batch(_clean(rng, 8)), tasks)
    verdicts = [guard.judge(20 + j, _batch(_clean(rng, 4) + [6.0] * 4), tasks)
                for j in range(CFG.trigger_steps)]
    assert verdicts[-1].action == "probation" and "task 'b'" in verdicts[-1].note
    assert verdicts[0].keep == (True,) * 4 + (False,) * 4  # "a" kept while "b" is rejected
    assert verdicts[-1].keep == (True,) * 8  # "b" admitted on probation
    # "a" goes on being screened during b's probation.
    during = guard.judge(26, _batch([0.2, 0.2, 0.2, 9.0] + [5.0] * 4), tasks)
    assert during.keep == (True, True, True, False) + (True,) * 4
