"""The baselines and variants inside the runner: skipped steps, plateau LRs, Mirror rollback."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pytest
from runner_fakes import FakeBackend, FakeSource

from ulora_remote.backend import Example
from ulora_remote.control.config import ControllerConfig
from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.guard import Guard, ZScoreGuard
from ulora_remote.control.policies import FixedPolicy, PlateauPolicy, PlateauRule
from ulora_remote.control.policy import Decision, Signal
from ulora_remote.run.rundir import RunDir
from ulora_remote.run.runner import Runner, RunSettings
from ulora_remote.task import Batch


def _run(tmp_path, policy: Any, backend: Any = None, source: Any = None,
         guards: tuple[Guard, ...] = (), **kw: Any) -> tuple[pd.DataFrame, Any]:
    rd = RunDir(tmp_path)
    rd.prepare_new(force=True)
    backend = backend or FakeBackend()
    settings = RunSettings(**{"run_name": "p", "steps": 40, "eval_every": 10,
                              "checkpoint_every": 0, "log_every": 100, **kw})
    Runner(backend, policy, guards, source or FakeSource(), settings, rd,
           out=io.StringIO()).run()
    return pd.read_csv(rd.steps_path), backend


def _fixed(lr: float) -> FixedPolicy:
    return FixedPolicy(lr, UnifiedController.from_preset("tinker"))


def _plateau(rule: PlateauRule) -> PlateauPolicy:
    return PlateauPolicy(rule, UnifiedController.from_preset("tinker"))


class ShockSource(FakeSource):
    """Clean batches all map to one target (a low, steady loss); shock batches to another."""

    def batch(self, step: int) -> Batch:
        shock = any(s <= step < e for s, e in self.windows)
        text = "shock" if shock else "clean"
        return Batch([Example(text, " x") for _ in range(self.batch_size)], shock)


@pytest.mark.parametrize("lag", [0, 1])
def test_zskip_skips_the_shock_steps_logs_them_and_never_updates_on_them(tmp_path, lag) -> None:
    guard = ZScoreGuard(z=3.0, window=10, min_history=5)
    steps, backend = _run(tmp_path, _fixed(1e-3), source=ShockSource([(20, 30)]), lag=lag,
                          guards=(guard,))
    skipped = steps[steps["lr"] == 0.0]
    assert list(skipped["step"]) == list(range(20, 30))  # every shock step, nothing else
    assert list(steps.loc[steps["skipped"], "step"]) == list(range(20, 30))
    assert set(steps.loc[steps["skipped"], "kept"]) == {0}
    assert set(steps.loc[~steps["skipped"], "kept"]) == {4}
    assert (skipped["loss"] > steps.loc[steps["step"] == 19, "loss"].iloc[0]).all()
    assert len(steps) == 40 and steps["phi"].notna().all()  # a skipped step still logs its loss
    updates = [lr for kind, lr in backend.calls if kind == "opt"]
    assert len(updates) == 30 and set(updates) == {1e-3}
    assert sum(kind == "fb" for kind, _ in backend.calls) == 30


def test_plateau_lowers_the_lr_the_runner_applies(tmp_path) -> None:
    rule = PlateauRule(1e-3, factor=0.5, patience=3, threshold=0.0)
    steps, backend = _run(tmp_path, _plateau(rule), source=ShockSource([(20, 30)]))
    replay = PlateauRule(1e-3, factor=0.5, patience=3, threshold=0.0)
    expected = [replay.step(x) for x in steps["loss"]]
    assert list(steps["lr"]) == pytest.approx(expected)
    assert [lr for kind, lr in backend.calls if kind == "opt"] == pytest.approx(expected)
    assert min(expected) < 1e-3  # the rule did act on this run


@pytest.mark.parametrize("lag", [0, 1])
def test_plateau_first_lr_at_lag_one_is_the_rules_start(tmp_path, lag) -> None:
    steps, _ = _run(tmp_path, _plateau(PlateauRule(7e-4, patience=100)), lag=lag, steps=5)
    assert list(steps["lr"]) == pytest.approx([7e-4] * 5)


class ScriptedController:
    """Multi until ``mirror_at``, then Mirror: a controller whose switch time is known."""

    def __init__(self, mirror_at: int) -> None:
        self.config = ControllerConfig.preset("tinker")
        self.mirror_at, self.mode, self.n = mirror_at, 1, 0

    def initial_decision(self) -> Decision:
        return Decision(-1, float("nan"), 1.0, 0.5, 1, "Multi", self.config.lrs[1], False)

    def observe(self, signal: Signal) -> Decision:
        loss = signal.loss
        mode = 2 if self.n >= self.mirror_at else 1
        switched, self.mode = mode != self.mode, mode
        d = Decision(self.n, loss, loss, 0.5, mode, "x", self.config.lrs[mode], switched)
        self.n += 1
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.mode = state["n"], state["mode"]


class RecordingFake(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    def load_state(self, ref: str) -> None:
        super().load_state(ref)
        self.loaded.append(ref)


@pytest.mark.parametrize("lag", [0, 1])
def test_entering_mirror_rolls_back_to_the_oldest_snapshot(tmp_path, lag) -> None:
    backend = RecordingFake()
    _run(tmp_path, ScriptedController(mirror_at=12), backend=backend, lag=lag,
         snapshot_every=5, snapshot_keep=2)
    snaps = sorted(name for name in backend.saved if "snap" in name)  # beside p-step* checkpoints
    assert snaps == ["p-snap000000", "p-snap000005", "p-snap000010"]
    assert backend.loaded == ["fake://p-snap000005"]
    # After the rollback the next forward pass starts from the snapshot's weight.
    fbs = [w for kind, w in backend.calls if kind == "fb"]
    assert fbs[13 + lag] == backend.saved["p-snap000005"][0]


def test_rollback_restores_weights_and_optimizer_state_exactly_on_the_local_backend(
    tmp_path,
) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    torch.set_num_threads(1)
    from local_recording import Recording
    from ulora_remote.scenarios.pig_latin import PigLatinTask
    from ulora_remote.scenarios.shocks import ShockStream

    Source = lambda: ShockStream(PigLatinTask(seed=0, eval_size=4), batch_size=4)  # noqa: E731

    backend = Recording("small", seed=0, checkpoint_dir=tmp_path / "ckpt")
    _run(tmp_path / "run", ScriptedController(mirror_at=7), backend=backend, source=Source(),
         steps=10, eval_every=10, eval_max_tokens=4, snapshot_every=3, snapshot_keep=2,
         optimizer={"beta1": 0.9, "beta2": 0.95})
    ref, restored = backend.loads[-1]
    assert ref.endswith("p-snap000003")  # snapshots 3 and 6 kept; Mirror at 7 → the older one
    saved = backend.at_save[ref]
    later = backend.at_save[next(r for r in backend.at_save if r.endswith("p-snap000006"))]
    assert any(not torch.equal(later["weights"][n], w) for n, w in saved["weights"].items())
    for name, tensor in saved["weights"].items():
        assert torch.equal(restored["weights"][name], tensor), name
    assert saved["optim"].keys() == restored["optim"].keys()
    assert all(len(state) == 3 for state in saved["optim"].values())  # step, exp_avg, exp_avg_sq
    for name, state in saved["optim"].items():
        for key, value in state.items():
            other = restored["optim"][name][key]
            assert torch.equal(other, value) if torch.is_tensor(value) else other == value


@pytest.mark.parametrize("kind", ["plateau", "zskip", "scale-free"])
def test_recovery_from_a_checkpoint_replays_a_policy_run_identically(tmp_path, kind) -> None:
    from ulora_remote.control.stress import RatioStress

    def make() -> tuple[Any, tuple[Guard, ...]]:
        if kind == "plateau":
            return _plateau(PlateauRule(1e-3, patience=3, threshold=0.0)), ()
        if kind == "zskip":
            return _fixed(1e-3), (ZScoreGuard(window=10, min_history=5),)
        config = ControllerConfig.preset("tinker", cooldown=0)
        return UnifiedController(config, stress=RatioStress()), ()

    source = ShockSource([(20, 30)])
    policy, guards = make()
    straight, _ = _run(tmp_path / "a", policy, source=source, checkpoint_every=15, guards=guards)
    # The fake loses its state on its 25th forward_backward; the runner reloads step 15's
    # checkpoint (backend, policy and guard state) and replays.
    policy, guards = make()
    recovered, _ = _run(tmp_path / "b", policy, backend=FakeBackend(lose_state_at_fb=[25]),
                        source=source, checkpoint_every=15, guards=guards)
    columns = ["step", "loss", "phi", "mode", "lr"]
    pd.testing.assert_frame_equal(straight[columns], recovered[columns])


def test_at_lag_one_one_forward_screens_three_steps_and_judges_each_alone(tmp_path) -> None:
    # Pipelined (lag 1), the screens go out before the step's own requests, three steps a
    # forward (ulora_remote.run.runner.BLOCK): fewer requests a step, the same verdicts.
    from ulora_remote.run.runner import BLOCK

    guard = ZScoreGuard(z=3.0, window=10, min_history=5)
    steps, backend = _run(tmp_path, _fixed(1e-3), source=ShockSource([(20, 30)]), lag=1,
                          guards=(guard,))
    screens = [n for kind, n in backend.calls if kind == "fwd" and n != 4.0 * 1]
    block = [n for n in screens if n == 4.0 * BLOCK]  # 4 examples a batch
    assert len(block) >= (40 - 2) // BLOCK - 1  # nearly every screen covers three steps
    assert list(steps.loc[steps["skipped"], "step"]) == list(range(20, 30))
