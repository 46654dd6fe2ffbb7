"""The `ulora` command in-process: scenarios, errors as one line with status 2, compare, report."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ulora_remote.cli import main
from ulora_remote.run.console import format_lr
from ulora_remote.run.rundir import RunDir, scrub_secrets
from ulora_remote.run.steps import StepRow


def test_scenarios_lists_the_shipped_names(capsys):
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in ("pig-latin-shock", "pig-latin-v2", "pig-latin-readme", "llama32-1b-tinker"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "no-such-scenario"], "no-such-scenario"),
        (["run", "--set", "shocks.windows=[[250,350],[200,300]]"], "overlap"),
        (["run", "--steps", "0"], "steps"),
        (["report", "/nonexistent/run"], "not a run directory"),
        (["run", "--resume", "/nonexistent/run"], "not a run directory"),
        (["run", "--resume", "/x", "--steps", "5"], "give only --resume"),
        (["compare", "pig-latin-shock", "--seeds", "a,b"], "--seeds"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ulora: error: ") and needle in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_an_unfinished_run_directory_names_the_flags(tmp_path, capsys):
    rd = RunDir(tmp_path)
    rd.prepare_new(force=False)
    rd.write_config({"scenario": {}})
    assert main(["run", "--out", str(tmp_path)]) == 2
    assert f"ulora run --resume {tmp_path}" in capsys.readouterr().err


def test_secrets_never_reach_config_json():
    cfg = {"backend": {"api_key": "tml-test-not-a-real-key", "tokenizer": "/tok",
                       "auth_token": "x", "base_url": "http://127.0.0.1"},
           "eval": {"max_tokens": 24}, "client_secret": "s"}
    assert scrub_secrets(cfg) == {"backend": {"tokenizer": "/tok", "base_url": "http://127.0.0.1"},
                                  "eval": {"max_tokens": 24}}


def test_cut_lines_are_ignored_and_truncation_keeps_rows_before_k(tmp_path):
    rd = RunDir(tmp_path)
    steps = rd.steps_appender()
    for t in range(5):
        steps.write(StepRow(step=t, shock=False, loss=1.0 / (t + 1), e_smooth=1.0, phi=0.5,
                            mode=1, mode_name="Multi", lr=5e-4, switched=False, kept=4,
                            skipped=False, tokens=9.0, wall_s=0.1).as_dict())
    steps.close()
    with rd.steps_path.open("a") as fh:
        fh.write("5,False,0.3")  # a row cut by SIGKILL
    rd.append_checkpoint({"step": 3, "ref": "r3", "policy": {}})
    with rd.checkpoints_path.open("a") as fh:
        fh.write('{"step": 4, "ref"')
    assert rd.last_checkpoint()["ref"] == "r3"
    rd.append_checkpoint({"step": 4, "ref": "r4", "policy": {}})  # after the cut line
    assert [c["ref"] for c in rd.checkpoints()] == ["r3", "r4"]
    rd.truncate_tables(3)
    table = pd.read_csv(rd.steps_path)
    assert list(table["step"]) == [0, 1, 2] and table["loss"][1] == 0.5


@pytest.mark.parametrize(("lr", "text"), [(1e-4, "1e-4"), (5e-4, "5e-4"), (2e-3, "2e-3"),
                                          (2.5e-3, "2.5e-3"), (0.0, "0")])
def test_learning_rates_print_like_the_seed(lr, text):
    assert format_lr(lr) == text


def test_compare_two_seeds_builds_the_table_from_the_runs_files(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    torch.set_num_threads(1)
    argv = ["compare", "pig-latin-shock", "--seeds", "0,1", "--out", str(tmp_path)]
    for kv in ("steps=30", "shocks.windows=[[10,15]]", 'backend.base_model="small"',
               "eval.every=5", "eval.size=8", "eval.max_tokens=12", "baselines.fixed_lrs=[2e-3]",
               "checkpoint.every=0"):
        argv += ["--set", kv]
    assert main(argv) == 0
    assert "peak_damage" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "compare.csv")
    assert set(table["method"]) == {"guarded", "seed", "fixed-2e-3"}
    md = (tmp_path / "compare.md").read_text()
    assert "| metric | guarded | seed | fixed-2e-3 |" in md

    damages = []
    # peak damage by hand (docs/design.md, "Recovery metrics"): W = 3, horizon to the run's end
    for seed in (0, 1):
        ev = pd.read_csv(tmp_path / f"guarded-s{seed}" / "evals.csv")
        pre = ev[ev["step"] <= 10]["eval_loss"].tail(3).mean()
        damages.append(ev[(ev["step"] > 10) & (ev["step"] <= 30)]["eval_loss"].max() - pre)
    row = table[(table["method"] == "guarded") & (table["metric"] == "peak_damage")].iloc[0]
    mean = sum(damages) / 2
    half = 12.706204736 * abs(damages[0] - damages[1]) / math.sqrt(2) / math.sqrt(2)
    assert row["n"] == 2
    assert row["mean"] == pytest.approx(mean, rel=1e-9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half), rel=1e-6)

    summary_path = tmp_path / "guarded-s0" / "summary.json"
    summary_path.unlink()
    (tmp_path / "guarded-s0" / "plot.png").unlink()
    assert main(["report", str(tmp_path / "guarded-s0")]) == 0
    assert json.loads(summary_path.read_text())["steps"] == 30
    assert (tmp_path / "guarded-s0" / "plot.png").stat().st_size > 10_000


def test_commands_other_than_serve_import_neither_torch_nor_tinker():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ulora_remote.cli import main\n"
        "assert main(['scenarios']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'tinker', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
