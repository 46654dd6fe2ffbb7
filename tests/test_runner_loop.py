"""The runner's loop on a fake backend: lag, warm-up, replay, resume, recovery, Ctrl-C."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from runner_fakes import FakeBackend, FakeSource

from ulora_remote.control.controller import UnifiedController
from ulora_remote.errors import BackendError
from ulora_remote.run.rundir import EVAL_COLUMNS, STEP_COLUMNS, RunDir
from ulora_remote.run.runner import Runner, RunSettings


def _settings(**kw) -> RunSettings:
    base = dict(run_name="t", steps=40, eval_every=10, checkpoint_every=15, log_every=10)
    base.update(kw)
    return RunSettings(**base)


def _run(tmp_path, backend=None, resume=False, source=None, **kw) -> tuple[RunDir, FakeBackend]:
    rd = RunDir(tmp_path)
    if not resume:
        rd.prepare_new(force=True)
    backend = backend or FakeBackend()
    runner = Runner(backend, UnifiedController.from_preset("tinker"), (),
                    source or FakeSource(), _settings(**kw), rd, out=io.StringIO())
    runner.run(resume=resume)
    return rd, backend


def _expected_lrs(steps: pd.DataFrame, lag: int, warmup: int, warmup_lr: float) -> list[float]:
    replay = UnifiedController.from_preset("tinker")
    decided = [replay.decide(x).lr for x in steps["loss"]]
    lrs = []
    for t in range(len(steps)):
        if t < warmup:
            lrs.append(warmup_lr)
        else:
            lrs.append(decided[t - lag] if t >= lag else replay.config.lr_multi)
    return lrs


@pytest.mark.parametrize(("lag", "warmup"), [(0, 0), (1, 0), (1, 5), (2, 3)])
def test_rows_match_a_replayed_controller_and_the_applied_lr(tmp_path, lag, warmup):
    rd, backend = _run(tmp_path, lag=lag, warmup_steps=warmup, warmup_lr=7e-4)
    steps = pd.read_csv(rd.steps_path)
    assert tuple(steps.columns) == STEP_COLUMNS
    assert list(steps["step"]) == list(range(40))
    assert list(steps["shock"]) == [20 <= t < 30 for t in range(40)]
    replay = UnifiedController.from_preset("tinker")
    decisions = [replay.decide(x) for x in steps["loss"]]
    for row in steps.itertuples():
        d = decisions[row.step]
        assert (row.phi, row.e_smooth) == (d.phi, d.e_smooth)
        # mode and switch: the decision that set this step's LR (lag steps earlier)
        if row.step < warmup:
            assert (row.mode, row.mode_name, row.switched) == (-1, "warmup", False)
        elif row.step < lag:
            assert (row.mode, row.mode_name, row.switched) == (1, "Multi", False)
        else:
            setter = decisions[row.step - lag]
            assert (row.mode, row.switched) == (setter.mode, setter.switched)
    assert list(steps["lr"]) == _expected_lrs(steps, lag, warmup, 7e-4)
    applied = [lr for kind, lr in backend.calls if kind == "opt"]
    assert applied == list(steps["lr"])
    assert backend.closed


def test_lag_one_submits_the_next_batch_before_reading(tmp_path):
    rd, backend = _run(tmp_path, lag=1, steps=3, eval_every=100, checkpoint_every=0)
    kinds = [k for k, _ in backend.calls if k != "fwd"]  # evaluations aside
    assert kinds == ["fb", "opt", "fb", "opt", "fb", "opt"]


def test_evals_at_zero_every_k_and_at_the_end(tmp_path):
    rd, _ = _run(tmp_path, steps=35, eval_every=10)
    evals = pd.read_csv(rd.evals_path)
    assert tuple(evals.columns) == EVAL_COLUMNS
    assert list(evals["step"]) == [0, 10, 20, 30, 35]
    assert [c["step"] for c in rd.checkpoints()] == [0, 15, 30, 35]


def test_resume_after_interrupt_reproduces_the_uninterrupted_run(tmp_path):
    full, _ = _run(tmp_path / "full", lag=1)

    class Interrupting(FakeSource):
        def batch(self, step):
            if step == 23:
                raise KeyboardInterrupt
            return super().batch(step)

    backend = FakeBackend()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", backend=backend, source=Interrupting(), lag=1)
    assert len(pd.read_csv(tmp_path / "cut" / "steps.csv")) == 22  # row 22 awaits step 23
    second = FakeBackend()
    second.saved = backend.saved  # the checkpoints outlive the process
    cut, _ = _run(tmp_path / "cut", backend=second, resume=True, lag=1)
    a, b = pd.read_csv(full.steps_path), pd.read_csv(cut.steps_path)
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))
    pd.testing.assert_frame_equal(pd.read_csv(full.evals_path), pd.read_csv(cut.evals_path))


def test_state_lost_reloads_the_checkpoint_and_replays(tmp_path):
    clean, _ = _run(tmp_path / "clean", lag=1)
    lossy, backend = _run(tmp_path / "lossy", backend=FakeBackend(lose_state_at_fb=[25]), lag=1)
    a, b = pd.read_csv(clean.steps_path), pd.read_csv(lossy.steps_path)
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))


def test_too_many_state_losses_fail_with_a_clear_error(tmp_path):
    backend = FakeBackend(lose_state_at_fb=[20, 30, 40])
    with pytest.raises(BackendError, match="lost its training state 3 times.*--resume"):
        _run(tmp_path, backend=backend, max_recoveries=2)
    assert backend.closed
