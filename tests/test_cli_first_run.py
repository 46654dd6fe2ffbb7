"""The first run as a new user meets it: --version, the default scenario, what report wrote,
what the closing times measure, and a warning when a shock has too few evaluations before it."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from ulora_remote.scenarios import DEFAULT_SCENARIO

from ulora_remote.cli import main
from ulora_remote.run.metrics import recovery_metrics
from ulora_remote.run.rundir import RunDir
from ulora_remote.run.summary import summary_warnings


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"ulora {importlib.metadata.version('ulora-remote')}"


def test_scenarios_marks_the_default_once(capsys):
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if "(default)" in line]
    assert len(marked) == 1 and marked[0].startswith(f"{DEFAULT_SCENARIO} (default)")


@pytest.mark.parametrize(("eval_steps", "warned"), [((0, 4), True), ((0, 2, 4, 6), False),
                                                    ((8,), True)])
def test_a_shock_with_too_few_evaluations_before_it_is_flagged(eval_steps, warned):
    steps = list(eval_steps) + [9, 12]
    loss = [3.0 - 0.2 * i for i in range(len(steps))]  # still falling fast: damage < 0
    summary = recovery_metrics(steps, loss, [0.0] * len(steps), [(6, 9)], run_end=12).to_dict()
    window = summary["windows"][0]
    assert window["pre_evals"] == min(3, sum(1 for s in eval_steps if s <= 6))  # W = 3
    lines = summary_warnings(summary)
    assert bool(lines) is warned
    if warned and window["pre_evals"]:
        assert "shock 6-9" in lines[0] and f"{window['peak_damage']:+.4f}" in lines[0]
    if warned and not window["pre_evals"]:
        assert "undefined" in lines[0]


def _short_run(out, capsys) -> str:
    pytest.importorskip("torch")
    import torch

    torch.set_num_threads(1)
    argv = ["run", "--out", str(out), "--log-every", "100"]
    for kv in ("steps=12", "shocks.windows=[[6,9]]", 'backend.base_model="small"',
               "eval.every=4", "eval.size=4", "eval.max_tokens=12", "checkpoint.every=0"):
        argv += ["--set", kv]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_a_short_run_says_what_its_times_measure_and_warns(tmp_path, capsys):
    out = _short_run(tmp_path / "run", capsys)
    m = re.search(r"training steps ([\d.]+) s of ([\d.]+) s for the whole command", out)
    assert m, out
    assert float(m.group(1)) <= float(m.group(2))
    # evaluations at 0 and 4 precede the shock at 6: two, where the level wants three
    assert "WARNING: shock 6-9: the pre-shock level averages 2 evaluation(s), not 3" in out

    rd = RunDir(tmp_path / "run")
    assert main(["report", str(rd.path)]) == 0
    said = capsys.readouterr().out
    wrote = said.splitlines()[-1]
    assert wrote.startswith("wrote: ") and str(rd.summary_path) in wrote
    assert "WARNING: shock 6-9" in said
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert str(rd.plot_path) not in wrote
    else:
        assert str(rd.plot_path) in wrote


def test_report_on_an_unfinished_run_says_summary_waits(tmp_path, capsys):
    rd = RunDir(tmp_path / "run")
    _short_run(rd.path, capsys)
    rd.summary_path.unlink()
    rd.truncate_tables(5)
    assert main(["report", str(rd.path)]) == 0
    said = capsys.readouterr().out
    assert "not finished (5 steps)" in said and f"ulora run --resume {rd.path}" in said
    assert str(rd.summary_path) not in said.splitlines()[-1]
    assert not rd.summary_path.exists()


def test_the_readmes_output_folders_are_ignored_by_git():
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout: nothing to ignore")
    # runs/ from `ulora run`, ckpt/ from the README's `ulora serve --checkpoint-dir ./ckpt`
    for path in ("runs/x/steps.csv", "ckpt/step-1/manifest.json"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
        assert done.returncode == 0, f"{path} is not ignored by .gitignore"
