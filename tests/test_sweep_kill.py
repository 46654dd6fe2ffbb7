"""A local sweep's worker killed with SIGKILL in the middle of a run: that run alone fails, with a
message that names the kill, the other runs finish, and the same command again resumes the killed
run to the steps.csv of an uninterrupted run. The worker and its run are found by polling /proc
(the run's open ``.log``) and the run's checkpoint record, never by sleeping a fixed time."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS = 30
OVERRIDES = [f"steps={STEPS}", "shocks.windows=[[4,6]]", 'backend.base_model="small"',
             "eval.every=10", "eval.size=4", "eval.max_tokens=6", "baselines.fixed_lrs=[2e-3]",
             "checkpoint.every=5"]
COLUMNS = ["step", "loss", "lr"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # it ended while we looked
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _open_run(pid: int, out: Path) -> Path | None:
    """The run directory whose ``<run>.log`` process ``pid`` holds open, if any."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return None
    for link in links:
        if link.startswith(str(out)) and link.endswith(".log") and link != str(out / "sweep.log"):
            return Path(link[: -len(".log")])
    return None


def _checkpointed(run: Path) -> bool:
    path = run / "checkpoints.jsonl"
    return path.exists() and path.read_text().count("\n") >= 1


def _compare(out: Path) -> list[str]:
    argv = [sys.executable, "-c", "import sys; from ulora_remote.cli import main; "
            "sys.exit(main(sys.argv[1:]))", "compare", "pig-latin-shock", "--seeds", "0",
            "--out", str(out), "--concurrency", "2"]
    for kv in OVERRIDES:
        argv += ["--set", kv]
    return argv


def test_a_killed_worker_fails_its_run_alone_and_the_sweep_resumes_it(tmp_path: Path) -> None:
    from ulora_remote.backends.local import build_builtin_model

    from ulora_remote.study.compare import compare_specs
    from ulora_remote.study.sweep_run import execute

    build_builtin_model("small")  # cached for the workers: they start training at once
    out = tmp_path / "sweep"
    proc = subprocess.Popen(_compare(out), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    victim: tuple[int, Path] | None = None
    deadline = time.monotonic() + 600
    try:
        while victim is None:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no worker reached a checkpoint"
            for pid in _children(proc.pid):
                run = _open_run(pid, out)
                if run is not None and _checkpointed(run):
                    victim = pid, run
                    break
            else:
                time.sleep(0.05)
        os.kill(victim[0], signal.SIGKILL)
        console, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    pid, killed = victim
    assert proc.returncode != 0, console
    assert "1 of 3 runs failed" in console, console
    assert f"(pid {pid}) killed by SIGKILL" in console
    assert f"ulora run --resume {killed}" in console
    assert "Traceback" not in console
    assert not (killed / "summary.json").exists()  # the kill landed in the run
    others = [p for p in out.iterdir() if p.is_dir() and p != killed]
    assert len(others) == 2 and all((p / "summary.json").exists() for p in others)
    assert not _children(proc.pid)  # no worker left behind

    again = subprocess.run(_compare(out), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 runs: 2 reused, 0 to start, 1 to resume" in again.stdout

    # The same run alone and uninterrupted, in this process.
    _, specs = compare_specs("pig-latin-shock", seeds=(0,), out=tmp_path / "solo",
                             overrides=OVERRIDES)
    spec = next(s for s in specs if s.run_dir.name == killed.name)
    execute(spec, "start", stop=threading.Event(), console=io.StringIO())
    resumed = pd.read_csv(killed / "steps.csv")
    solo = pd.read_csv(spec.run_dir / "steps.csv")
    assert resumed["step"].is_unique and resumed["step"].max() == solo["step"].max()
    pd.testing.assert_frame_equal(resumed[COLUMNS], solo[COLUMNS])
