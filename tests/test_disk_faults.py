"""The fault table, part 3: a full disk, a read-only or failing filesystem, while a run writes.

A real small filesystem (tmpfs, sized so that the disk fills at each kind of write: the marker's
companions, the tables' headers, each checkpoint, the picture) where this sandbox may mount one,
and OSErrors injected at the operating-system calls the run directory uses (os.replace,
os.fsync, os.mkdir) everywhere. Each fault must end as one `ulora: error: ...` naming the path
and what to do, and leave the run directory so that, once the cause is gone, the same command,
`--resume` or `ulora report` finishes it with the tables of an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_table import (
    RUN_ARGS,
    Outcome,
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

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("ref"), "run1")


@pytest.fixture(scope="module")
def mountable(tmp_path_factory) -> None:
    reason = can_mount(tmp_path_factory.mktemp("probe"))
    if reason:
        pytest.skip(f"a small real filesystem needs `mount -t tmpfs` (root): {reason}")


def _recover(run: Path, cwd: Path) -> Outcome:
    """What the user does once space is free: resume, report, or run the same command again."""
    if (run / "summary.json").exists():
        return ulora("report", str(run), cwd=cwd)
    if (run / "config.json").exists():
        return ulora("run", "--resume", str(run), cwd=cwd)
    return ulora("run", "--out", str(run), *RUN_ARGS, cwd=cwd)


# Sizes at which the disk fills during: config.json, steps.csv's header, evals.csv's first row,
# the checkpoints of steps 0, 4, 8 and 12, and plot.png (measured on this machine's tmpfs).
SIZES = {"4k": "config.json", "8k": "steps.csv", "12k": "evals.csv", "24k": "step000000",
         "128k": "step000004", "400k": "step000008", "640k": "step000012", "880k": "plot.png"}


@pytest.mark.parametrize("size", list(SIZES), ids=[f"{k}-{v}" for k, v in SIZES.items()])
def test_a_full_disk_is_a_clear_error_and_the_run_finishes_later(tmp_path, finished, mountable,
                                                                 size):
    with tmpfs(tmp_path / "mnt", size) as mnt:
        run = mnt / "run1"
        outcome = ulora("run", "--out", str(run), *RUN_ARGS, cwd=tmp_path)
        case = f"disk full at {size} ({SIZES[size]})"
        assert_clear_error(case, outcome, [str(run), "No space left on device",
                                           "free some space"], {}, {})
        leftovers = [p.name for p in run.rglob("*") if ".tmp" in p.name]
        assert leftovers == []
        remount(mnt, "size=16m")
        again = _recover(run, tmp_path)
        judge_success(f"{case}: finished after freeing space", same_run(finished, run)
                      and (run / "summary.json").exists() and (run / "plot.png").exists(), again)


def test_the_disk_fills_up_while_the_run_writes_rows(tmp_path, mountable):
    """Another program fills the disk mid-run: the next write to need a new block fails."""
    args = [*RUN_ARGS, "--steps", "120", "--set", "checkpoint.every=40", "--set",
            "shocks.windows=[[30,50]]", "--set", "eval.every=20"]
    reference = make_run(tmp_path / "ref", "run1", "--steps", "120", "--set",
                         "checkpoint.every=40", "--set", "shocks.windows=[[30,50]]", "--set",
                         "eval.every=20")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tmpfs(tmp_path / "mnt", "8m") as mnt:
        run = mnt / "run1"
        proc = subprocess.Popen([sys.executable, "-m", "ulora_remote.cli", "run", "--out",
                                 str(run), *args], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while _rows(run / "steps.csv") < 45:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        filler = mnt / "filler"
        with filler.open("wb", buffering=0) as fh:  # fill every free block
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        out, err = proc.communicate(timeout=240)
        outcome = Outcome(proc.returncode, out, err)
        assert_clear_error("disk filled by another program mid-run", outcome,
                           ["No space left on device", "free some space"], {}, {})
        assert "ulora run --resume" in out
        filler.unlink()
        again = ulora("run", "--resume", str(run), cwd=tmp_path)
        judge_success("disk filled mid-run: resumed after freeing space",
                      same_run(reference, run), again)


def _rows(path: Path) -> int:
    try:
        return max(0, path.read_text().count("\n") - 1)
    except (FileNotFoundError, UnicodeDecodeError):
        return 0


def _failing(real, name: str, code: int, monkeypatch, *, times: int = 1):
    """Make ``os.<name>`` fail with ``code`` the first ``times`` calls on a path named like
    ``target`` (set on the returned object), like a failing disk would."""
    state = {"left": times, "target": ""}

    def call(*args, **kwargs):
        path = str(args[1] if name == "replace" else args[0])
        if state["left"] and os.path.basename(path).startswith(state["target"]):
            state["left"] -= 1
            raise OSError(code, os.strerror(code), path)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, call)
    return state


@pytest.mark.parametrize(("case", "call", "target", "code", "needles"), [
    ("rename of config.json fails: disk full", "replace", "config.json", errno.ENOSPC,
     ["config.json", "free some space"]),
    ("rename of summary.json fails: read-only", "replace", "summary.json", errno.EROFS,
     ["summary.json", "read-only", "ulora report"]),
    ("rename of plot.png fails: I/O error", "replace", "plot.png", errno.EIO,
     ["plot.png", "check the disk", "ulora report"]),
    ("rename of a truncated steps.csv fails on resume", "replace", "steps.csv", errno.ENOSPC,
     ["steps.csv", "free some space"]),
    ("making the run folder is not permitted", "mkdir", "run1", errno.EACCES,
     ["run1", "permission denied"]),
])
def test_an_injected_os_error_is_a_clear_error_and_nothing_is_lost(
        tmp_path, finished, monkeypatch, case, call, target, code, needles):
    from fault_table import as_killed

    resume = target == "steps.csv"
    if resume:
        as_killed(finished, tmp_path / "run1")
    state = _failing(getattr(os, call), call, code, monkeypatch)
    state["target"] = target
    before = snapshot(tmp_path)
    argv = ["run", "--resume", "run1"] if resume else ["run", "--out", "run1", *RUN_ARGS]
    outcome = ulora(*argv, cwd=tmp_path)
    after = snapshot(tmp_path)
    assert_clear_error(case, outcome, needles, before if resume else {}, after)
    assert state["left"] == 0  # the fault did happen
    monkeypatch.undo()
    again = _recover(tmp_path / "run1", tmp_path)
    judge_success(f"{case}: finished once the fault is gone",
                  same_run(finished, tmp_path / "run1"), again)


def test_a_failed_fsync_of_a_checkpoint_line_leaves_a_resumable_run(tmp_path, finished,
                                                                   monkeypatch):
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):  # the third checkpoint line (step 8) cannot be made durable
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name == "checkpoints.jsonl":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc to tell which file an fsync is for")
    monkeypatch.setattr(os, "fsync", fsync)
    outcome = ulora("run", "--out", "run1", *RUN_ARGS, cwd=tmp_path)
    assert_clear_error("fsync of checkpoints.jsonl fails", outcome,
                       ["checkpoints.jsonl", "check the disk"], {}, {})
    assert "ulora run --resume" in outcome.out
    monkeypatch.undo()
    again = ulora("run", "--resume", "run1", cwd=tmp_path)
    judge_success("fsync failure: resumed", same_run(finished, tmp_path / "run1"), again)
