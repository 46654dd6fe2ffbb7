"""More hostile inputs, each judged like the bad-input table (``fault_table``): a clear error
that changes nothing, or the right result. A secret in backend.base_url, JSON nested 200,000
deep, a symlink loop as task.train, a user's folder where a sweep's run goes, a user's
compare.md, a user's checkpoint-like folder under --force, an emptied evals.csv under
``ulora report``, a 10 MB description, a seed given twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fault_table import (
    RUN_ARGS,
    TINY,
    assert_clear_error,
    judge_success,
    make_run,
    snapshot,
    ulora,
)

SECRET = "sk-not-a-real-secret-4242"
COMPARE = ["--seeds", "0", *(a for kv in [*TINY, "steps=4", "eval.every=2",
                                          "shocks.windows=[[1,2]]", "baselines.fixed_lrs=[2e-3]",
                                          "checkpoint.every=2"] for a in ("--set", kv))]


@pytest.mark.parametrize("url", [f"http://user:{SECRET}@127.0.0.1:9",
                                 f"http://127.0.0.1:9/?api_key={SECRET}"],
                         ids=["userinfo", "query"])
def test_a_secret_in_base_url_is_refused_and_never_shown_or_stored(tmp_path: Path,
                                                                   url: str) -> None:
    before = snapshot(tmp_path)
    out = ulora("run", "pig-latin-shock", "--out", str(tmp_path / "run"), "--set",
                'backend.kind="tinker"', "--set", f'backend.base_url="{url}"')
    assert_clear_error("base_url secret", out, ["backend.base_url", "TINKER_API_KEY"],
                       before, snapshot(tmp_path))
    assert SECRET not in out.err + out.out
    assert not (tmp_path / "run").exists()


def _word_tasks(tmp_path: Path, train: str) -> Path:
    src = Path(__file__).resolve().parents[1] / "scenarios" / "files" / "word-tasks.toml"
    text = src.read_text().replace('train = "data/word-tasks.jsonl"', f'train = "{train}"')
    assert f'train = "{train}"' in text
    scenario = tmp_path / "data-run.toml"
    scenario.write_text(text)
    return scenario


def test_jsonl_nested_200000_deep_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "deep.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    scenario = _word_tasks(tmp_path, "deep.jsonl")
    before = snapshot(tmp_path)
    out = ulora("run", str(scenario), "--out", str(tmp_path / "run"))
    assert_clear_error("jsonl nested", out, ["deep.jsonl line 1", "nested too deeply"], before,
                       snapshot(tmp_path))


def test_a_task_train_symlink_loop_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "loop.jsonl").symlink_to("loop.jsonl")
    scenario = _word_tasks(tmp_path, "data/loop.jsonl")
    runs = tmp_path / "runs"
    runs.mkdir()
    before = snapshot(runs)  # the loop itself cannot be read, so not snapshot
    out = ulora("run", str(scenario), "--out", str(runs / "run"))
    assert_clear_error("train symlink loop", out, ["task.train", "loop.jsonl"], before,
                       snapshot(runs))


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_compare_refuses_a_users_folder_where_a_run_goes_before_running(
        tmp_path: Path, concurrency: str) -> None:
    (tmp_path / "guarded-s0").mkdir()
    (tmp_path / "guarded-s0" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    out = ulora("compare", "pig-latin-shock", "--out", str(tmp_path), "--concurrency",
                concurrency, *COMPARE)
    assert_clear_error("compare into a user's folder", out,
                       ["guarded-s0", "not a run directory"], before, snapshot(tmp_path))
    assert "--resume" not in out.err  # no advice that cannot work on a folder that is no run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guarded-s0"]  # nothing ran


def test_compare_keeps_a_users_compare_md(tmp_path: Path) -> None:
    (tmp_path / "compare.md").write_text("my own notes\n")
    before = snapshot(tmp_path)
    out = ulora("compare", "pig-latin-shock", "--out", str(tmp_path), *COMPARE)
    assert_clear_error("compare over a user's compare.md", out, ["compare.md", "--force"],
                       before, snapshot(tmp_path))


def test_compare_rewrites_its_own_compare_md(tmp_path: Path) -> None:
    first = ulora("compare", "pig-latin-shock", "--out", str(tmp_path), *COMPARE)
    assert first.rc == 0, first.err[-2000:]
    again = ulora("compare", "pig-latin-shock", "--out", str(tmp_path), *COMPARE)
    judge_success("compare again into its own folder", again.rc == 0, again)


def test_run_force_removes_only_the_runs_own_checkpoints(tmp_path: Path) -> None:
    run = make_run(tmp_path, "D")
    mine = run / "checkpoints" / "best-model-step000999"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"precious")
    out = ulora("run", "--out", str(run), "--force", *RUN_ARGS)
    judge_success("run --force next to a user's checkpoint-like folder",
                  (mine / "weights.bin").exists(), out, kept=(mine / "weights.bin").exists())
    assert not (run / "checkpoints" / "D-step000999").exists()


def test_report_refuses_an_emptied_evals_csv_and_keeps_summary(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    header = (run / "evals.csv").read_text().splitlines()[0]
    (run / "evals.csv").write_text(header + "\n")
    before = snapshot(tmp_path)
    out = ulora("report", str(run))
    assert_clear_error("report on an emptied evals.csv", out, ["evals.csv", "no rows"], before,
                       snapshot(tmp_path))


def test_a_10_mb_description_is_not_echoed_in_full(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "scenarios" / "files" / "pig-latin-shock.toml"
    big = tmp_path / "big.toml"
    text = src.read_text()
    start = text.index("description = ")
    end = text.index("\n", start)
    big.write_text(text[:start] + 'description = "' + "x" * 10_000_000 + '"' + text[end:])
    before = snapshot(tmp_path)
    out = ulora("run", str(big), "--out", str(tmp_path / "run"))
    assert_clear_error("10 MB description", out, ["description"], before, snapshot(tmp_path))
    assert len(out.err) < 2_000


def test_a_seed_given_twice_is_named(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    out = ulora("compare", "pig-latin-shock", "--out", str(tmp_path / "c"), "--seeds", "0,0")
    assert_clear_error("seed twice", out, ["seed 0 is given twice"], before, snapshot(tmp_path))


def test_a_sweep_with_one_run_directory_twice_is_refused(tmp_path: Path) -> None:
    from ulora_remote.errors import ConfigurationError
    from ulora_remote.study.sweep import RunSpec, run_sweep

    spec = RunSpec("pig-latin-shock", "seed", 0, (), tmp_path / "r")
    with pytest.raises(ConfigurationError, match="two runs"):
        run_sweep([spec, spec])
    assert not (tmp_path / "r").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
