"""The guard core shared by the proxy and the wrapper, without HTTP: per-example losses, the one
adapter into the guard, the plan of a step, the learning rate, and the records."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from ulora_remote.backends.proxy.core import GuardCore, StepRecords, example_loss, judge_losses

from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.policy import Signal
from ulora_remote.control.screen import ScreenConfig, ScreenGuard

SCREEN = ScreenConfig(z=1e-3, min_loss=2.0, min_history=4, window=16, trigger_steps=50)


def test_example_loss_is_the_mean_nll_per_weighted_token() -> None:
    assert example_loss([-1.0, -3.0, -9.0], [1.0, 1.0, 0.0]) == pytest.approx(2.0)
    assert math.isnan(example_loss([-1.0], [0.0]))


def test_the_adapter_gives_the_guard_the_losses_themselves() -> None:
    guard = ScreenGuard(SCREEN)
    judge_losses(guard, 0, [0.5, 0.6, 0.7, 0.8])  # the reference: 4 accepted
    verdict = judge_losses(guard, 1, [0.5, 9.0, math.nan])
    assert verdict.keep == (True, False, False)


def test_a_step_plan_its_learning_rate_and_its_records(tmp_path: Path) -> None:
    console = io.StringIO()
    core = GuardCore(StepRecords(tmp_path, "m", console), screen=SCREEN)
    plan = core.judge([1.0, 1.1, 1.2, 1.3])
    assert core.finish(plan, [1.0, 1.1, 1.2, 1.3], client_lr=1e-4) is None  # the client's
    plan = core.judge([1.0, 5.0])
    assert plan.rejected == (1,) and not plan.skip
    core.finish(plan, [1.0, 5.0], client_lr=1e-4)
    plan = core.judge([6.0, 7.0])
    assert plan.skip
    core.finish(plan, [6.0, 7.0], client_lr=1e-4)
    rows = list(csv.reader((tmp_path / "steps.csv").open()))
    assert rows[0] == ["step", "kept", "rejected", "event", "lr", "loss"]
    assert [r[:5] for r in rows[1:]] == [
        ["0", "4", "0", "", "0.0001"], ["1", "1", "1", "", "0.0001"], ["2", "0", "2", "", ""]]
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and metrics[2]["ulora/skipped"] is True
    assert metrics[1]["num_sequences"] == 1 and metrics[1]["train_mean_nll"] == 1.0
    assert console.getvalue() == ""  # no probation, shift or rollback: no console line


def test_with_the_controller_it_sets_the_learning_rate(tmp_path: Path) -> None:
    core = GuardCore(StepRecords(None, "m", io.StringIO()), screen=SCREEN, controller=True)
    twin = UnifiedController.from_preset("tinker")
    for losses in ([1.0, 1.1], [1.2, 1.0], [0.9, 0.8]):
        plan = core.judge(losses)
        lr = core.finish(plan, losses, client_lr=123.0)
        expected = twin.observe(Signal(loss=sum(losses) / 2, external_stress=0.0)).lr
        assert lr == expected and lr != 123.0
