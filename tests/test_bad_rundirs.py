"""The bad-input table, part 2: damaged, edited, moved and copied run directories given to
`ulora run --resume` and `ulora report`.

A damaged or inconsistent directory must be refused with one `ulora: error: ...` that names the
file and how to recover, and left exactly as it was (nothing truncated, nothing cleaned). A
moved, copied or interrupted directory must resume from its own files, from any working folder,
to the same tables as the uninterrupted run. The runs are real (built-in "small" model); an
unfinished run is a finished one cut back to what a SIGKILL at step 10 leaves (fault_table.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_table import (
    KILLED_AT,
    as_killed,
    assert_clear_error,
    can_mount,
    judge_success,
    make_run,
    remount,
    same_run,
    snapshot,
    tmpfs,
    ulora,
)

from ulora_remote.run.steps import STEP_COLUMNS

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("A"), "run1")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """Another run of the same name and shape, with another seed, in another project folder."""
    return make_run(tmp_path_factory.mktemp("B"), "run1", "--seed", "5")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _edit_lines(name: str, edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).write_text("".join(edit(_lines(run / name))))
    return damage


def _field(line: str, index: int, value: str) -> str:
    fields = line.rstrip("\n").split(",")
    fields[index] = value
    return ",".join(fields) + "\n"


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(data)


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"run1-step{step:06d}"


def _flip(step: int, file: str, offset: int) -> Callable[[Path], None]:
    """XOR one byte of a checkpoint file (offset < 0 counts from the end)."""
    def damage(run: Path) -> None:
        path = _ckpt(run, step) / file
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    return damage


def _edit_config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(edit(config)))
    return damage


def _set_steps(value: int) -> Callable[[dict], dict]:
    def edit(config: dict) -> dict:
        config["scenario"]["steps"] = value
        return config
    return edit


def _edit_record(line: int, edit: Callable[[dict], dict]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        lines = _lines(run / "checkpoints.jsonl")
        lines[line] = json.dumps(edit(json.loads(lines[line]))) + "\n"
        (run / "checkpoints.jsonl").write_text("".join(lines))
    return damage


def _del(path: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return damage


# (case, damage to an interrupted run, words the refusal of `--resume` must hold)
RESUME_CASES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("steps.csv cut by hand", _edit_lines("steps.csv", lambda ls: ls[:6]),
     ["steps.csv", "steps 5-7 are missing", "resume from there", "step 4"]),
    ("steps.csv emptied", _write("steps.csv", b""), ["steps.csv", "steps 0-7 are missing"]),
    ("steps.csv binary garbage", _write("steps.csv", b"\x00\xff\xfe garbage\n"),
     ["steps.csv is not UTF-8"]),
    ("steps.csv text garbage", _write("steps.csv", b"hello\nworld\n"),
     ["steps.csv, line 1: expected the header"]),
    ("steps.csv line cut in the middle",
     _edit_lines("steps.csv", lambda ls: [*ls[:4], ls[4][:9] + "\n", *ls[5:]]),
     ["steps.csv, line 5", f"fields where the header has {len(STEP_COLUMNS)}"]),
    ("steps.csv row repeated", _edit_lines("steps.csv", lambda ls: [*ls[:4], *ls[3:]]),
     ["steps.csv, line 5: step 2 follows step 2"]),
    ("steps.csv row removed", _edit_lines("steps.csv", lambda ls: [*ls[:4], *ls[5:]]),
     ["steps 3 are missing"]),
    ("steps.csv loss not a number", _edit_lines("steps.csv", lambda ls: [*ls[:3], _field(ls[3], 2,
                                                                               "abc"), *ls[4:]]),
     ["steps.csv, line 4: loss = 'abc' is not a number"]),
    ("steps.csv rows swapped", _edit_lines("steps.csv", lambda ls: [ls[0], ls[2], ls[1], *ls[3:]]),
     ["step 0 follows step 1"]),
    ("evals.csv emptied", _write("evals.csv", b""), ["evals.csv", "steps 0, 4 are missing"]),
    ("evals.csv garbage", _write("evals.csv", b"\x89PNG\r\n"), ["evals.csv is not UTF-8"]),
    ("evals.csv row removed", _edit_lines("evals.csv", lambda ls: [ls[0], ls[1], *ls[3:]]),
     ["evals.csv", "steps 4 are missing"]),
    ("checkpoints.jsonl garbage line",
     _edit_lines("checkpoints.jsonl", lambda ls: [ls[0], "{{garbage\n", *ls[1:]]),
     ["checkpoints.jsonl, line 2 is not valid JSON"]),
    ("checkpoints.jsonl emptied but rows remain", _write("checkpoints.jsonl", b""),
     ["lists no checkpoint", "steps.csv holds 10 rows"]),
    ("checkpoint ref edited outside the run",
     _edit_record(2, lambda r: {**r, "ref": "../../elsewhere/run1-step000008"}),
     ["outside the run directory", "checkpoints.jsonl was edited"]),
    ("checkpoint record without policy state",
     _edit_record(2, lambda r: {k: v for k, v in r.items() if k != "policy"}),
     ["checkpoints.jsonl, line 3: not a checkpoint record"]),
    ("checkpoint records out of order",
     _edit_lines("checkpoints.jsonl", lambda ls: [ls[0], ls[2], ls[1]]),
     ["line 3: step 4 follows step 8"]),
    ("flipped byte in a checkpoint tensor", _flip(8, "adapter.safetensors", -3),
     ["adapter.safetensors does not match the SHA-256", "damaged", "step 4"]),
    ("damaged safetensors header", _flip(8, "optimizer.safetensors", 12),
     ["optimizer.safetensors does not match the SHA-256"]),
    ("checkpoint file truncated",
     lambda run: (_ckpt(run, 8) / "rng.safetensors").write_bytes(
         (_ckpt(run, 8) / "rng.safetensors").read_bytes()[:50]),
     ["rng.safetensors does not match"]),
    ("checkpoint manifest edited",
     lambda run: (_ckpt(run, 8) / "manifest.json").write_text("{}"),
     ["manifest.json does not match"]),
    ("checkpoint file deleted", _del("checkpoints/run1-step000008/optimizer.safetensors"),
     ["incomplete", "optimizer.safetensors missing"]),
    ("checkpoint folder deleted", _del("checkpoints/run1-step000008"),
     ["the checkpoint of step 8 is missing", "delete the last line of checkpoints.jsonl"]),
    ("config.json garbage", _write("config.json", b"{not json"),
     ["config.json is damaged (not valid JSON"]),
    ("config.json empty", _write("config.json", b""), ["config.json is damaged (it is empty)"]),
    ("config.json binary", _write("config.json", b"\xff\xfe\x00\x01"), ["config.json is damaged"]),
    ("config.json a list", _write("config.json", b"[1, 2]"),
     ["does not hold a run's configuration"]),
    ("config.json edited", _edit_config(_set_steps(14)),
     ["config.json changed since the checkpoint at step 8", "Undo the edit"]),
    ("config.json deleted", _del("config.json"), ["holds no config.json"]),
    ("marker deleted", _del("ulora-run.json"), ["is not a run directory (no ulora-run.json)"]),
]


@pytest.mark.parametrize(("case", "damage", "needles"), RESUME_CASES,
                         ids=[c[0] for c in RESUME_CASES])
def test_a_damaged_run_is_not_resumed_and_not_touched(tmp_path, finished, case, damage, needles):
    run = as_killed(finished, tmp_path / "run1")
    damage(run)
    before = snapshot(tmp_path)
    outcome = ulora("run", "--resume", str(run), cwd=tmp_path)
    assert_clear_error(case, outcome, needles, before, snapshot(tmp_path))


@pytest.mark.parametrize(("case", "target", "needles"), [
    ("resume a finished run", "finished", ["holds a finished run; nothing to resume"]),
    ("resume a folder that does not exist", "missing", ["does not exist"]),
    ("resume a file", "file", ["is not a run directory"]),
    ("resume the user's folder", "user", ["is not a run directory", "holds a config.json"]),
])
def test_resume_of_something_else_is_refused(tmp_path, finished, case, target, needles):
    if target == "finished":
        shutil.copytree(finished, tmp_path / "finished")
    elif target == "file":
        (tmp_path / "file").write_text("x")
    elif target == "user":
        (tmp_path / "user").mkdir()
        for name in ("config.json", "steps.csv", "plot.png"):
            (tmp_path / "user" / name).write_text("{}")
    before = snapshot(tmp_path)
    outcome = ulora("run", "--resume", target, cwd=tmp_path)
    assert_clear_error(case, outcome, needles, before, snapshot(tmp_path))


# (case, damage to a finished run, words the refusal of `ulora report` must hold)
REPORT_CASES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("report: config.json garbage", _write("config.json", b"\x00garbage"),
     ["config.json is damaged"]),
    ("report: config.json empty", _write("config.json", b""), ["it is empty"]),
    ("report: steps.csv garbage", _write("steps.csv", b"a,b\n1,2\n"), ["expected the header"]),
    ("report: steps.csv empty", _write("steps.csv", b""), ["holds no rows yet"]),
    ("report: steps.csv header only",
     _edit_lines("steps.csv", lambda ls: ls[:1]), ["holds no rows yet"]),
    ("report: evals.csv garbage", _write("evals.csv", b"\xff\x00"), ["evals.csv is not UTF-8"]),
    ("report: steps.csv with a gap",
     _edit_lines("steps.csv", lambda ls: [*ls[:4], *ls[8:]]), ["rows of steps 3-6 are missing"]),
    ("report: config without scenario.name",
     _edit_config(lambda c: {**c, "scenario": {k: v for k, v in c["scenario"].items()
                                               if k != "name"}}),
     ["scenario.name should be a string"]),
    ("report: config with bad windows",
     _edit_config(lambda c: {**c, "scenario": {**c["scenario"], "shocks": {"windows": "x"}}}),
     ["scenario.shocks.windows"]),
    ("report: more rows than steps", _edit_config(_set_steps(8)),
     ["holds 12 rows but the run has 8 steps"]),
    ("report: marker deleted", _del("ulora-run.json"), ["is not a run directory"]),
]


@pytest.mark.parametrize(("case", "damage", "needles"), REPORT_CASES,
                         ids=[c[0] for c in REPORT_CASES])
def test_report_of_a_damaged_run_is_refused_and_writes_nothing(tmp_path, finished, case, damage,
                                                               needles):
    run = tmp_path / "run1"
    shutil.copytree(finished, run)
    damage(run)
    before = snapshot(tmp_path)
    outcome = ulora("report", str(run), cwd=tmp_path)
    assert_clear_error(case, outcome, needles, before, snapshot(tmp_path))


def test_report_never_overwrites_the_users_plot(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text(json.dumps({"scenario": {"name": "x"}}))
    (user / "steps.csv").write_text("step\n0\n")
    (user / "plot.png").write_text("my own picture")
    before = snapshot(tmp_path)
    outcome = ulora("report", str(user), cwd=tmp_path)
    assert_clear_error("report on the user's folder", outcome, ["is not a run directory"],
                       before, snapshot(tmp_path))


def test_a_record_pointed_at_another_runs_checkpoint_is_refused(tmp_path, finished, other):
    run = as_killed(finished, tmp_path / "run1")
    foreign = str(other / "checkpoints" / "run1-step000008")
    _edit_record(2, lambda r: {**r, "ref": foreign})(run)
    before = snapshot(tmp_path)
    outcome = ulora("run", "--resume", str(run), cwd=tmp_path)
    assert_clear_error("checkpoint ref edited to another run's checkpoint", outcome,
                       ["does not match the SHA-256", foreign], before, snapshot(tmp_path))


def test_a_moved_run_resumes_from_its_own_files(tmp_path, finished):
    moved = as_killed(finished, tmp_path / "old" / "run1")
    moved = Path(shutil.move(moved, tmp_path / "new-place"))
    outcome = ulora("run", "--resume", str(moved), cwd=tmp_path)
    judge_success("moved run resumes", same_run(finished, moved), outcome)


def test_a_copy_resumes_from_its_own_checkpoints_not_the_originals(tmp_path, finished):
    original = as_killed(finished, tmp_path / "orig" / "run1")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    for ckpt in (original / "checkpoints").iterdir():  # the original's weights become garbage
        for f in ckpt.iterdir():
            f.write_bytes(b"\x00" * f.stat().st_size)
    outcome = ulora("run", "--resume", "copy", cwd=tmp_path)
    judge_success("copied run resumes from its own files", same_run(finished, copy), outcome)


def test_resume_from_another_working_folder_with_a_relative_path(tmp_path, finished):
    run = as_killed(finished, tmp_path / "project" / "runs" / "run1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outcome = ulora("run", "--resume", "../project/runs/run1", cwd=elsewhere)
    judge_success("resume from another folder", same_run(finished, run), outcome)


def test_two_runs_of_one_name_each_resume_their_own(tmp_path, finished, other):
    """The issue's case: run1 in two project folders, `--resume <first>/run1` from the second
    folder once continued from the second run's weights and exited 0."""
    first = as_killed(finished, tmp_path / "A" / "run1")
    shutil.copytree(other, tmp_path / "B" / "run1")
    outcome = ulora("run", "--resume", "../A/run1", cwd=tmp_path / "B")
    judge_success("same-named run in another folder", same_run(finished, first), outcome)
    assert same_run(other, tmp_path / "B" / "run1")  # the other run is untouched


def test_leftovers_of_a_killed_checkpoint_write_are_removed(tmp_path, finished):
    run = as_killed(finished, tmp_path / "run1")
    tmp_dir = run / "checkpoints" / ".run1-step000012.tmp-k1ll3d"
    tmp_dir.mkdir()
    (tmp_dir / "adapter.safetensors").write_bytes(b"half")
    (run / "summary.json.tmp").write_text("{")
    (run / "notes.txt").write_text("mine")
    outcome = ulora("run", "--resume", str(run), cwd=tmp_path)
    ok = (same_run(finished, run) and not tmp_dir.exists()
          and not (run / "summary.json.tmp").exists())
    judge_success("leftover .tmp folders cleaned", ok, outcome,
                  kept=(run / "notes.txt").read_text() == "mine")


def test_a_checkpoint_line_cut_by_a_kill_resumes_from_the_one_before(tmp_path, finished):
    run = as_killed(finished, tmp_path / "run1")
    lines = _lines(run / "checkpoints.jsonl")
    (run / "checkpoints.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    outcome = ulora("run", "--resume", str(run), cwd=tmp_path)
    ok = same_run(finished, run) and "resuming from the checkpoint at step 4" in outcome.out
    judge_success("cut checkpoint line", ok, outcome)


def test_a_read_only_run_is_refused_with_the_way_out(tmp_path, finished):
    reason = can_mount(tmp_path)
    if reason:
        pytest.skip(f"needs a tmpfs: {reason}")
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        run = as_killed(finished, mnt / "run1")
        remount(mnt, "ro")
        before = snapshot(mnt)
        outcome = ulora("run", "--resume", str(run), cwd=tmp_path)
        assert_clear_error("resume on a read-only filesystem", outcome,
                           ["is not writable", "copy the folder somewhere writable"], before,
                           snapshot(mnt))
        remount(mnt, "rw")
        assert KILLED_AT == 10
