"""Runs on your own data, end to end on the built-in "small" model: a multi-task JSONL stream
with both record shapes and shocks from a file, evaluated per task; every bad record refused
before anything is written; the shipped example; a killed run resumed from another folder."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.scenarios import load_scenario  # noqa: E402
from ulora_remote.scenarios.word_tasks import DATA_DIR, noisy_records, records  # noqa: E402

from ulora_remote import run_scenario  # noqa: E402
from ulora_remote.errors import InputError  # noqa: E402
from ulora_remote.run.builders import build_source  # noqa: E402
from ulora_remote.run.rundir import EVAL_COLUMNS, STEP_COLUMNS  # noqa: E402

torch.set_num_threads(1)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _words(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct three-letter words."""
    return [LETTERS[(i // 26 + offset) % 26] + LETTERS[i % 26] + LETTERS[(i * 7) % 26]
            for i in range(n)]


def make_data(folder: Path) -> Path:
    """Two tasks in both shapes, a file of bad records and a scenario that uses them, with
    paths relative to the scenario file."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"{w} ->", "completion": f" {w}", "task": "copy"} for w in _words(60)]
    rows += [{"messages": [{"role": "user", "content": f"{w} <-"},
                           {"role": "assistant", "content": w[::-1]}], "task": "flip"}
             for w in _words(60, offset=5)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = [{"prompt": "zzz ->", "completion": " qqq"},
           {"messages": [{"role": "user", "content": "abc <-"},
                         {"role": "assistant", "content": "abc"}], "task": "flip"}]
    (folder / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    scenario = folder / "mine.toml"
    scenario.write_text('''name = "mine"
steps = 40
batch_size = 8
[task]
kind = "jsonl"
train = "data.jsonl"
eval_fraction = 0.2
[task.weights]
copy = 0.5
flip = 0.5
[shocks]
source = "bad.jsonl"
windows = [[15, 25]]
fraction = 0.5
[eval]
every = 10
size = 6
max_tokens = 8
[backend]
base_model = "small"
[controller]
method = "seed"
[checkpoint]
every = 10
''')
    return scenario


def test_a_multi_task_jsonl_run_reports_every_task(tmp_path):
    scenario = make_data(tmp_path / "data")
    result = run_scenario(scenario, out=tmp_path / "run", console=io.StringIO())
    assert tuple(result.steps.columns) == STEP_COLUMNS
    assert tuple(result.evals.columns) == EVAL_COLUMNS  # overall numbers, columns unchanged
    assert result.steps["shock"].tolist() == [15 <= t < 25 for t in range(40)]
    scores = [json.loads(line) for line in (result.run_dir / "eval_scores.jsonl").open()]
    assert [s["step"] for s in scores] == result.evals["step"].tolist() == [0, 10, 20, 30, 40]
    for record in scores:
        assert set(record["tasks"]) == {"copy", "flip"}
        assert all({"eval_loss", "exact_match"} <= set(t) for t in record["tasks"].values())
    # the per-task losses weigh up to the overall one (6 + 6 examples, per-token means)
    first = scores[0]["tasks"]
    assert min(first["copy"]["eval_loss"], first["flip"]["eval_loss"]) <= \
        result.evals["eval_loss"][0] <= max(first["copy"]["eval_loss"], first["flip"]["eval_loss"])
    tasks = result.summary["tasks"]
    assert set(tasks) == {"copy", "flip"}
    assert tasks["flip"]["final"] == {**scores[-1]["tasks"]["flip"], "step": 40}
    assert [(w["start"], w["end"]) for w in tasks["copy"]["windows"]] == [(15, 25)]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["scenario"]["task"]["train"] == str(tmp_path / "data" / "data.jsonl")


def _with_record(folder: Path, record: dict[str, object], evaluated: bool) -> Path:
    """The scenario of ``make_data`` with ``record`` appended to the training file, or put
    into an evaluation file (with one good record of each task)."""
    scenario = make_data(folder)
    data = folder / "data.jsonl"
    if not evaluated:
        data.write_text(data.read_text() + json.dumps(record) + "\n")
        return scenario
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[1:60] + lines[61:]))
    (folder / "eval.jsonl").write_text(lines[0] + lines[60] + json.dumps(record) + "\n")
    scenario.write_text(scenario.read_text().replace("eval_fraction = 0.2", 'eval = "eval.jsonl"')
                        .replace("max_tokens = 8", "max_tokens = 24"))
    return scenario


BAD_RECORDS = [
    ({"prompt": "x" * 70, "completion": " y", "task": "copy"}, False,
     "data.jsonl line 121: the record renders to 73 tokens, but the model holds 64"),
    ({"messages": [{"role": "user", "content": "café"}, {"role": "assistant", "content": "x"}],
      "task": "flip"}, False, r"data.jsonl line 121: character 'é' \(U\+00E9\) at position 3 of "
                              r"the message 0 \(user\)"),
    ({"prompt": "p" * 50, "completion": " q", "task": "copy"}, True,
     r"eval.jsonl line 3: evaluating this record needs its 51-token prompt plus eval.max_tokens "
     r"= 24 - 1 = 74 tokens, but the model holds 64"),
]


@pytest.mark.parametrize(("record", "evaluated", "message"), BAD_RECORDS,
                         ids=["too-long", "character", "no-room-to-sample"])
def test_a_bad_record_stops_the_run_before_anything_is_written(tmp_path, record, evaluated,
                                                                message):
    scenario = _with_record(tmp_path / "data", record, evaluated)
    with pytest.raises(InputError, match=message):
        run_scenario(scenario, out=tmp_path / "run", console=io.StringIO())
    assert not (tmp_path / "run").exists()


def test_the_cli_names_a_malformed_line_and_writes_nothing(tmp_path):
    scenario = make_data(tmp_path / "data")
    with (tmp_path / "data" / "data.jsonl").open("a") as fh:
        fh.write('{"prompt": "a", "completion": \n')
    proc = subprocess.run([sys.executable, "-m", "ulora_remote.cli", "run", str(scenario),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "data.jsonl line 121: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_the_shipped_example_is_made_in_code_and_validates():
    assert (DATA_DIR / "word-tasks.jsonl").read_text() == "".join(
        json.dumps(r) + "\n" for r in records())
    assert (DATA_DIR / "word-tasks-noisy.jsonl").read_text() == "".join(
        json.dumps(r) + "\n" for r in noisy_records())
    scenario = load_scenario("word-tasks")
    task = build_source(scenario).task
    assert set(task.names) == {"reverse", "rotate", "vowel"}
    assert all(len(e.prompt) + 2 * len(e.completion) < 128 for e in task.eval_examples())
    source = load_scenario("word-tasks", ["shocks.source=data/word-tasks-noisy.jsonl",
                                          'shocks.kind="from-file"'])
    assert build_source(source).batch(350).shock


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _ulora(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ulora_remote.cli", *args], env=ENV,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(path: Path) -> int:
    return max(0, path.read_text().count("\n") - 1) if path.exists() else 0


@pytest.mark.slow
def test_a_killed_jsonl_run_resumed_from_another_folder_equals_the_uninterrupted_one(tmp_path):
    scenario = make_data(tmp_path / "data")
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    ref = _ulora("run", str(scenario), "--out", str(tmp_path / "ref"), cwd=here)
    assert ref.wait(timeout=300) == 0, ref.communicate()[0]
    out = tmp_path / "run"
    proc = _ulora("run", str(scenario), "--out", str(out), cwd=here)
    deadline = time.monotonic() + 300
    while _rows(out / "steps.csv") < 23:  # past the checkpoint at 20, inside the shock
        assert proc.poll() is None and time.monotonic() < deadline, "no kill point reached"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    resumed = _ulora("run", "--resume", str(out), cwd=elsewhere)  # data paths are absolute
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resuming from the checkpoint at step 20" in log, log
    a, b = pd.read_csv(tmp_path / "ref" / "steps.csv"), pd.read_csv(out / "steps.csv")
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ref" / "evals.csv"),
                                  pd.read_csv(out / "evals.csv"))
    ref_scores = (tmp_path / "ref" / "eval_scores.jsonl").read_text().splitlines()
    scores = (out / "eval_scores.jsonl").read_text().splitlines()
    by_step = {json.loads(line)["step"]: line for line in scores}  # a resume rewrites step 20
    assert [by_step[json.loads(line)["step"]] for line in ref_scores] == ref_scores
