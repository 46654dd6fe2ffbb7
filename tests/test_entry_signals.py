"""SIGTERM to an entry point that starts worker processes leaves no worker alive: the study
scripts stop like ``ulora compare --concurrency 2`` (their sweep stops its workers, then the
parent exits). Workers are detected by polling /proc, never by sleeping a fixed time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = ["--set", 'backend.base_model="small"', "--set", "eval.every=50",
         "--set", "eval.size=4", "--set", "eval.max_tokens=6", "--set", "checkpoint.every=50"]


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # it ended while we looked
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":  # a zombie has ended; only its parent's wait is missing
                out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return pids & set(_parents())


def _wait_for(condition, what: str, timeout_s: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _started_runs(out: Path) -> int:
    return sum(1 for p in out.rglob("steps.csv") if p.stat().st_size > 0)


@pytest.fixture(scope="module")
def small_model() -> None:
    from ulora_remote.backends.local import build_builtin_model

    build_builtin_model("small")  # cached for the workers: they start training at once


@pytest.mark.parametrize("script", ["study", "adapters_study"])
def test_sigterm_to_a_study_leaves_no_worker_alive(small_model: None, tmp_path: Path,
                                                   script: str) -> None:
    out = tmp_path / "out"
    if script == "study":
        args = ["--out", str(out), "--scenarios", "pig-latin-shock", "--seeds", "0,1",
                "--methods", "seed", "--no-shock", "", "--concurrency", "2", *SMALL]
    else:
        args = ["--out", str(out), "--scenarios", "rules-conflict", "--modes", "shared",
                "--seeds", "0,1", "--jobs", "2", *SMALL]
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
                            env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen: set[int] = set()

        def workers_running() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            seen.update(descendants(proc.pid))
            return len(seen) >= 2 and _started_runs(out) >= 1

        _wait_for(workers_running, "two workers and a started run")
        seen.update(descendants(proc.pid))
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
        _wait_for(lambda: not alive(seen), f"workers {sorted(alive(seen))} to end", 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in alive(seen):  # what a failing case left behind: not ours to keep
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143, output
    assert "Traceback" not in output, output
