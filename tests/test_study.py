"""The study command on a tiny configuration: runs, reuse, and tables computed from the files."""

from __future__ import annotations

import io
import runpy
from pathlib import Path

import pandas as pd
import pytest

from ulora_remote.errors import ConfigurationError
from ulora_remote.study.plan import StudyPlan, best_fixed_lr, method_specs, run_study

pytest.importorskip("torch")
pytest.importorskip("peft")

TINY = ("steps=30", "shocks.windows=[[12,20]]", "eval.every=4", "eval.size=4",
        "eval.max_tokens=6", 'backend.base_model="small"', "checkpoint.every=0",
        "baselines.fixed_lrs=[2e-3,5e-4]")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "study.py"
    main = runpy.run_path(str(script))["main"]
    args = ["--out", str(out), "--concurrency", "1", "--scenarios", "pig-latin-shock",
            "--seeds", "0,1", "--methods", "zskip,v1", "--no-shock", "fixed"]
    for override in TINY:
        args += ["--set", override]
    assert main(args) == 0
    return out


def test_study_runs_every_method_and_condition(study: Path) -> None:
    shock = sorted(p.name for p in (study / "pig-latin-shock" / "shock").iterdir() if p.is_dir())
    noshock = sorted(p.name for p in (study / "pig-latin-shock" / "noshock").iterdir()
                     if p.is_dir())
    assert shock == ["fixed-2e-3-s0", "fixed-2e-3-s1", "fixed-5e-4-s0", "fixed-5e-4-s1",
                     "v1-s0", "v1-s1", "zskip-s0", "zskip-s1"]
    assert noshock == ["fixed-2e-3-s0", "fixed-2e-3-s1", "fixed-5e-4-s0", "fixed-5e-4-s1"]
    report = (study / "REPORT.md").read_text()
    assert "Best fixed LR" in report and "Preset check" in report
    assert (study / "shock_recovery.png").stat().st_size > 0


def test_best_fixed_lr_and_zskip_lr_come_from_the_runs_files(study: Path) -> None:
    finals: dict[float, list[float]] = {}
    for lr, label in ((2e-3, "fixed-2e-3"), (5e-4, "fixed-5e-4")):
        for seed in (0, 1):
            evals = pd.read_csv(study / "pig-latin-shock" / "shock" / f"{label}-s{seed}" /
                                "evals.csv")
            finals.setdefault(lr, []).append(float(evals["eval_loss"].iloc[-1]))
    by_hand = min(finals, key=lambda lr: sum(finals[lr]) / 2)
    runs = sorted(p for p in (study / "pig-latin-shock" / "shock").glob("fixed-*") if p.is_dir())
    assert best_fixed_lr(runs) == by_hand
    config = (study / "pig-latin-shock" / "shock" / "zskip-s0" / "config.json").read_text()
    assert f'"lr": {by_hand!r}' in config


def test_table_metrics_match_a_hand_computation_from_evals_csv(study: Path) -> None:
    per_run = pd.read_csv(study / "study_runs.csv")
    evals = pd.read_csv(study / "pig-latin-shock" / "shock" / "v1-s1" / "evals.csv")
    start, end, run_end = 12, 20, 30
    level = evals[evals["step"] <= start]["eval_loss"].tail(3).mean()  # W = 3
    after = evals[(evals["step"] > start) & (evals["step"] <= min(end + 200, run_end))]
    peak_damage = after["eval_loss"].max() - level
    excess_area = (after["eval_loss"] - level).clip(lower=0).sum()

    def value(window: str, metric: str) -> float:
        row = per_run[(per_run["method"] == "v1") & (per_run["seed"] == 1)
                      & (per_run["condition"] == "shock") & (per_run["window"] == window)
                      & (per_run["metric"] == metric)]
        assert len(row) == 1
        return float(row["value"].iloc[0])

    assert value("shock 12-20", "peak_damage") == pytest.approx(peak_damage, abs=1e-9)
    assert value("shock 12-20", "excess_area") == pytest.approx(excess_area, abs=1e-9)
    assert value("all shocks", "excess_area") == pytest.approx(excess_area, abs=1e-9)
    assert value("final", "final_eval_loss") == pytest.approx(evals["eval_loss"].iloc[-1])


def test_a_second_invocation_reuses_the_finished_runs(study: Path) -> None:
    plan = StudyPlan(scenarios=("pig-latin-shock",), seeds=(0, 1), methods=("zskip", "v1"),
                     no_shock=("fixed",), overrides=TINY)
    log = io.StringIO()
    runs = run_study(plan, study, concurrency=1, console=log)
    # Phase 1: the 4 fixed runs with and the 4 without shocks; phase 2: z-skip and v1.
    assert "8 runs: 8 reused, 0 to start, 0 to resume" in log.getvalue()
    assert "4 runs: 4 reused, 0 to start, 0 to resume" in log.getvalue()
    assert len(runs.specs["pig-latin-shock"]["shock"]) == 8


def test_the_plan_rejects_unknown_methods_and_a_single_seed() -> None:
    with pytest.raises(ConfigurationError, match="unknown study method"):
        StudyPlan(methods=("adaptive",))
    with pytest.raises(ConfigurationError, match="2 seeds"):
        StudyPlan(seeds=(0,))


def test_no_shock_specs_clear_the_windows_and_label_the_method(tmp_path: Path) -> None:
    plan = StudyPlan(scenarios=("pig-latin-shock",), seeds=(3, 4), no_shock=("v2",))
    specs = method_specs(plan, tmp_path, "pig-latin-shock", "noshock", 5e-4)
    assert [s.run_dir.name for s in specs] == ["v2-s3", "v2-s4"]
    assert "shocks.windows=[]" in specs[0].overrides
    assert 'controller.label="v2"' in specs[0].overrides
