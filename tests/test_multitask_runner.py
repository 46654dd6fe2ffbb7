"""Multi-task runs on the local backend: C, E, S and φ logged every step, the switch into
per-task adapters with its reason, per-task evaluation, the one-task reduction to the seed's
controller, and resume with several adapters equal to the uninterrupted run."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.scenarios import load_scenario  # noqa: E402

from ulora_remote.backend import (  # noqa: E402
    AdapterBackend,
    Example,
    ForwardBackwardResult,
    Future,
)
from ulora_remote.delegate import DelegatingAdapterBackend  # noqa: E402
from ulora_remote.errors import ConfigurationError  # noqa: E402
from ulora_remote.run.api import resume_run, run_scenario  # noqa: E402
from ulora_remote.run.builders import build_backend  # noqa: E402
from ulora_remote.run.rundir import RunDir  # noqa: E402
from ulora_remote.run.steps import MULTITASK_STEP_COLUMNS, STEP_COLUMNS  # noqa: E402

SMALL = ['backend.base_model="small"', "backend.rank=2", "eval.size=8", "eval.max_tokens=12"]
SIGNALS = ["error", "conflict", "conflict_w", "stability", "task_stress", "phi"]


def _conflict(steps: int, *extra: str) -> list[str]:
    return [*SMALL, f"steps={steps}", "eval.every=10", "checkpoint.every=10", *extra]


def _eval_scores(run_dir: Path) -> list[dict[str, object]]:
    return RunDir(run_dir).eval_scores()  # a step evaluated again on resume: its last record


def test_a_switching_run_forks_with_its_reason_and_logs_c_e_s_phi(tmp_path: Path) -> None:
    console = io.StringIO()
    # theta0 0.05 puts phi in the Multi band from the start and the conflict is not required,
    # so the fork comes after patience (the shipped scenario's own fork: the slow test below)
    result = run_scenario("rules-conflict", out=tmp_path / "run", console=console, log_every=0,
                          overrides=_conflict(40, "controller.theta0=0.05",
                                              "adapters.patience=5",
                                              "adapters.require_conflict=false"))
    steps = result.steps
    assert steps[SIGNALS].notna().all().all()
    assert steps["stability"].between(0, 1).all() and steps["task_stress"].between(0, 1).all()
    assert steps["conflict"].between(0, 1).all() and steps["conflict_w"].between(0, 1).all()
    events = steps.loc[steps["adapter_event"].notna(), ["step", "adapter_event"]]
    assert len(events) == 1
    fork_step, reason = int(events["step"].iloc[0]), events["adapter_event"].iloc[0]
    assert reason == "fork: phi " + reason.split("phi ")[1] and "for 5 steps" in reason
    assert steps["adapters"].tolist() == [1] * fork_step + [2] * (40 - fork_step)
    assert "adapters: one per task (pig-latin, reversed) forked" in console.getvalue()
    scores = _eval_scores(result.run_dir)
    assert [s["step"] for s in scores] == [0, 10, 20, 30, 40]
    assert all(set(s["task_exact_match"]) == {"pig-latin", "reversed"} for s in scores)


def test_one_task_without_conflict_or_forgetting_keeps_the_seeds_phi(tmp_path: Path) -> None:
    common = [*SMALL, "steps=40", "eval.every=10", "shocks.windows=[[15,25]]"]
    plain = run_scenario("pig-latin-shock", out=tmp_path / "plain", overrides=common,
                         console=io.StringIO())
    tasks = run_scenario("pig-latin-shock", out=tmp_path / "tasks", console=io.StringIO(),
                         overrides=[*common, 'adapters.mode="shared"', "adapters.stability_gain=0"])
    same = ["loss", "e_smooth", "phi", "mode", "lr", "kept", "tokens"]
    pd.testing.assert_frame_equal(plain.steps[same], tasks.steps[same])
    trained = ~tasks.steps["skipped"]
    assert (tasks.steps.loc[trained, "error"] == tasks.steps.loc[trained, "loss"]).all()
    assert (tasks.steps["conflict"] == 0).all() and (tasks.steps["task_stress"] == 0).all()
    assert tuple(plain.steps.columns) == STEP_COLUMNS  # no [adapters]: the table as ever
    assert tuple(tasks.steps.columns) == MULTITASK_STEP_COLUMNS


def test_per_task_adapters_need_a_multi_task_stream(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="multi-task stream"):
        run_scenario("pig-latin-shock", out=tmp_path / "run",
                     overrides=[*SMALL, "steps=5", "shocks.windows=[]", 'adapters.mode="switch"'])
    assert not (tmp_path / "run").exists()  # refused before the directory was made


class _StopAt(DelegatingAdapterBackend):
    """An AdapterBackend that passes every call on and raises KeyboardInterrupt at the n-th
    ``forward_backward`` (as a Ctrl-C would)."""

    def __init__(self, backend: AdapterBackend, n: int) -> None:
        super().__init__(backend)
        self.n = n

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().forward_backward(batch)


@pytest.mark.parametrize("lag", [0, 1])
def test_resume_with_several_adapters_equals_the_uninterrupted_run(tmp_path: Path,
                                                                   lag: int) -> None:
    overrides = _conflict(50, f"lag={lag}", "controller.theta0=0.05", "adapters.patience=5",
                          "adapters.require_conflict=false")
    reference = run_scenario("rules-conflict", out=tmp_path / "ref", overrides=overrides,
                             console=io.StringIO())
    scenario = load_scenario("rules-conflict", overrides)
    rd = RunDir(tmp_path / "cut")
    backend = build_backend(scenario, rd.checkpoint_dir)
    assert isinstance(backend, AdapterBackend)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, backend=_StopAt(backend, 37), out=rd.path, console=io.StringIO())
    record = json.loads((rd.path / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 30 and record["multitask"]["switch"]["decided_step"] is not None
    manifest = json.loads((rd.path / record["ref"] / "manifest.json").read_text())
    assert manifest["task_adapters"] == {"pig-latin": "task0", "reversed": "task1"}

    resumed = resume_run(rd.path, console=io.StringIO())
    pd.testing.assert_frame_equal(reference.steps.drop(columns="wall_s"),
                                  resumed.steps.drop(columns="wall_s"))
    pd.testing.assert_frame_equal(reference.evals, resumed.evals)
    assert _eval_scores(reference.run_dir) == _eval_scores(resumed.run_dir)


@pytest.mark.slow
def test_ulora_run_on_the_conflict_scenario_switches_to_per_task_adapters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped scenario as it is (medium model, 600 steps): the conflict C, not a forced
    threshold, drives φ into Multi and the run forks."""
    from ulora_remote.cli import main

    assert main(["run", "rules-conflict", "--out", str(tmp_path / "run"), "--log-every", "0"]) == 0
    steps = pd.read_csv(tmp_path / "run" / "steps.csv", dtype={"adapter_event": str})
    assert steps[SIGNALS].notna().all().all()
    forks = steps[steps["adapter_event"].notna()]
    assert len(forks) == 1 and "with conflict C > 0" in forks["adapter_event"].iloc[0]
    k = int(forks["step"].iloc[0])
    assert steps.loc[k - 30:k - 1, "phi"].between(0.4, 0.7).all()  # 30 steps in Multi
    assert (steps.loc[k - 30:k - 1, "conflict"] > 0).all()  # ... with the tasks in conflict
    assert (steps.loc[k:, "adapters"] == 2).all() and (steps.loc[k:, "conflict"] == 0).all()
    assert "adapters: one per task (pig-latin, reversed) forked" in capsys.readouterr().out


# The screening guard (main's default method) with per-task adapters: each example is judged
# against its own task's reference, and a probation's snapshot, rollback and the checkpoints
# carry every adapter. Strict screening (z 1, no loss floor) so that 60 steps on the small model
# reach a probation and its rollback.
GUARDED = ['controller={method="guarded", guard={z=1.0, min_loss=0.0, min_history=16, '
           'window=64, trigger_steps=2, probation_steps=6, judge_steps=2}}',
           'shocks={kind="random-letters", windows=[[30,45]]}', 'adapters.mode="separate"']


def test_the_screening_guard_and_per_task_adapters_run_together(tmp_path: Path) -> None:
    console = io.StringIO()
    overrides = [*SMALL, "steps=60", "eval.every=20", "checkpoint.every=20", *GUARDED]
    reference = run_scenario("rules-conflict", out=tmp_path / "ref", overrides=overrides,
                             console=console, log_every=0)
    steps = reference.steps
    assert {"probation", "rollback"} <= set(steps["event"].dropna())
    assert "of task 'pig-latin'" in console.getvalue() or "of task 'reversed'" in console.getvalue()
    assert (steps["kept"] < 8).any() and (steps["adapters"] == 2).all()
    assert steps[SIGNALS].notna().all().all()
    scores = _eval_scores(reference.run_dir)
    for record in scores:  # per-task losses and scores (main) and the task signals, one line
        assert set(record["tasks"]) == set(record["task_exact_match"]) == {"pig-latin",
                                                                           "reversed"}
        assert all(record["tasks"][t]["exact_match"] == record["task_exact_match"][t]
                   for t in record["tasks"])
        assert "stability" in record and "task_eval_loss" in record
    lines = [line for line in console.getvalue().splitlines() if "pig-latin: loss" in line]
    assert [line.split("]")[0] for line in lines] == ["[0", "[20", "[40", "[60"]

    scenario = load_scenario("rules-conflict", overrides)
    rd = RunDir(tmp_path / "cut")
    backend = build_backend(scenario, rd.checkpoint_dir)
    assert isinstance(backend, AdapterBackend)
    with pytest.raises(KeyboardInterrupt):  # during the probation: resumed from step 20
        run_scenario(scenario, backend=_StopAt(backend, 35), out=rd.path, console=io.StringIO())
    resumed = resume_run(rd.path, console=io.StringIO())
    own = ["wall_s", "snapshot"]  # the snapshot's path names the run directory
    pd.testing.assert_frame_equal(steps.drop(columns=own), resumed.steps.drop(columns=own))
    pd.testing.assert_frame_equal(reference.evals, resumed.evals)
    assert _eval_scores(reference.run_dir) == _eval_scores(resumed.run_dir)


def test_steps_csv_keeps_the_columns_it_was_begun_with(tmp_path: Path) -> None:
    """A run without [adapters] writes the table it always did; a begun file keeps its own
    columns, and both read back (run directories made before the multi-task columns too)."""
    from ulora_remote.run.steps import StepRow

    row = StepRow(step=0, shock=False, loss=1.0, e_smooth=1.0, phi=0.5, mode=1,
                  mode_name="Multi", lr=5e-4, switched=False, kept=4, skipped=False,
                  tokens=9.0, wall_s=0.1).as_dict()
    for multitask, columns in ((False, STEP_COLUMNS), (True, MULTITASK_STEP_COLUMNS)):
        rd = RunDir(tmp_path / str(multitask))
        rd.path.mkdir()
        table = rd.steps_appender(multitask=multitask)
        table.write(row)
        table.close()
        assert rd.steps_path.read_text().splitlines()[0] == ",".join(columns)
        again = rd.steps_appender(multitask=not multitask)  # a resume: the file's columns
        again.write({**row, "step": 1})
        again.close()
        assert rd.read_steps().columns == columns and rd.read_steps().rows == 2
