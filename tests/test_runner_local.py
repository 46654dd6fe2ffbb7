"""The runner end to end on the real local backend (built-in "small" model), through the API.

A 60-step scenario with one shock window [20, 30): the files, the exact columns, the shock flag,
and φ/Ê/mode/LR in steps.csv equal to a fresh controller replayed on the logged losses, for
lag 0, lag 1 and a warm-up. Also: refusing to overwrite a run, and ``load_run``.
"""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
from ulora_remote.scenarios import load_scenario

from ulora_remote import RunResult, load_run, run_scenario
from ulora_remote.errors import ConfigurationError
from ulora_remote.run.rundir import EVAL_COLUMNS, STEP_COLUMNS

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
torch.set_num_threads(1)

TINY = [
    'controller.method="seed"',  # the seed's controller, replayed exactly below
    "steps=60", "shocks.windows=[[20,30]]", 'backend.base_model="small"',
    "eval.every=20", "eval.size=8", "eval.max_tokens=12", "checkpoint.every=25",
]


def _run(tmp_path, *extra: str) -> RunResult:
    return run_scenario("pig-latin-shock", out=tmp_path / "run", overrides=[*TINY, *extra],
                        console=io.StringIO())


def _replayed_lrs(steps: pd.DataFrame, cfg_overrides: dict, lag: int, warmup: int,
                  warmup_lr: float) -> None:
    """Assert the logged controller state and applied LR equal a replay on the losses."""
    from ulora_remote.control.controller import UnifiedController

    replay = UnifiedController.from_preset("tinker", **cfg_overrides)
    decisions = [replay.decide(x) for x in steps["loss"]]
    decided = [d.lr for d in decisions]
    for row in steps.itertuples():
        d = decisions[row.step]
        assert (row.e_smooth, row.phi) == (d.e_smooth, d.phi), row.step
        # mode and switch: the decision that set this step's LR
        if row.step < warmup:
            setter = (-1, "warmup", False)
        elif row.step < lag:
            setter = (1, "Multi", False)
        else:
            s = decisions[row.step - lag]
            setter = (s.mode, s.mode_name, s.switched)
        assert (row.mode, row.mode_name, row.switched) == setter, row.step
    for t, lr in enumerate(steps["lr"]):
        if t < warmup:
            expected = warmup_lr
        elif t < lag:
            expected = replay.config.lr_multi
        else:
            expected = decided[t - lag]
        assert lr == expected, t


@pytest.mark.parametrize(
    ("lag", "warmup"), [(0, 0), (1, 0), (0, 15)], ids=["lag0", "lag1", "warmup15"]
)
def test_a_60_step_run_writes_every_file_and_replays_exactly(tmp_path, lag, warmup):
    result = _run(tmp_path, f"lag={lag}", f"warmup_steps={warmup}", "warmup_lr=1e-3",
                  "controller.cooldown=5")
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"config.json", "steps.csv", "evals.csv", "checkpoints.jsonl", "summary.json",
            "plot.png"} <= names
    steps, evals = result.steps, result.evals
    assert tuple(steps.columns) == STEP_COLUMNS
    assert tuple(evals.columns) == EVAL_COLUMNS
    assert list(steps["step"]) == list(range(60))
    assert list(steps["shock"]) == [20 <= t < 30 for t in range(60)]
    assert (steps["tokens"] > 0).all() and steps["loss"].map(math.isfinite).all()
    assert list(evals["step"]) == [0, 20, 40, 60]
    _replayed_lrs(steps, {"cooldown": 5}, lag, warmup, 1e-3)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert (config["lag"], config["warmup_steps"]) == (lag, warmup)
    assert config["scenario"]["controller"]["cooldown"] == 5
    assert "torch" in config["versions"]
    ckpts = [json.loads(line)["step"] for line in (result.run_dir / "checkpoints.jsonl").open()]
    assert ckpts == [0, 25, 50, 60]
    assert result.summary["finished"] and result.summary["steps"] == 60
    assert [(w["start"], w["end"]) for w in result.summary["windows"]] == [(20, 30)]


def test_a_finished_run_is_never_overwritten_without_force(tmp_path):
    first = _run(tmp_path, "steps=8", "shocks.windows=[[2,4]]", "eval.every=8")
    before = (first.run_dir / "steps.csv").read_text()
    with pytest.raises(ConfigurationError, match="finished run; pass --force"):
        _run(tmp_path, "steps=8", "shocks.windows=[[2,4]]", "eval.every=8")
    assert (first.run_dir / "steps.csv").read_text() == before
    again = run_scenario("pig-latin-shock", out=first.run_dir, force=True,
                         overrides=[*TINY, "steps=6", "shocks.windows=[[2,4]]", "eval.every=6"],
                         console=io.StringIO())
    assert len(again.steps) == 6
    loaded = load_run(first.run_dir)
    pd.testing.assert_frame_equal(loaded.steps, again.steps)
    assert loaded.summary == again.summary


def test_a_scenario_object_runs_with_a_given_backend(tmp_path):
    from ulora_remote.backends.local import LocalBackend

    scenario = load_scenario("pig-latin-shock", [*TINY, "steps=6", "shocks.windows=[[2,4]]"])
    backend = LocalBackend("small", rank=4, seed=3, checkpoint_dir=tmp_path / "ckpt")
    result = run_scenario(scenario, backend=backend, out=tmp_path / "obj", console=io.StringIO())
    assert list(result.steps["shock"]) == [False, False, True, True, False, False]
    assert result.config["scenario"]["steps"] == 6


def test_metrics_jsonl_is_the_runs_tables_in_the_cookbooks_format(tmp_path):
    result = _run(tmp_path, "lag=0")
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(61))  # 60 steps, then the final eval
    steps, evals = result.steps, result.evals
    for r in records[:60]:
        row = steps.iloc[r["step"]]
        assert r["train_mean_nll"] == pytest.approx(row["loss"])
        assert r["learning_rate"] == row["lr"] and r["ulora/phi"] == pytest.approx(row["phi"])
    by_step = {r["step"]: r for r in records}
    for row in evals.itertuples():
        assert by_step[row.step]["test/nll"] == pytest.approx(row.eval_loss)
    assert set(records[-1]) == {"step", "test/nll", "test/exact_match"}
