"""Two writers on one run directory: while one process continues a run, a second
``ulora run --resume`` of it refuses at once with a clear error and changes nothing; the lock
goes with its process (no stale lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fault_table import as_killed, assert_clear_error, make_run, snapshot, ulora
from ulora_remote.run.runlock import LOCK_NAME, run_lock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    return as_killed(make_run(root, "done"), root / "killed")


def test_a_resume_while_another_writer_holds_the_run_refuses(killed: Path,
                                                             tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(killed, tmp_path / "run"))
    with run_lock(run):  # another writer, as far as the second one can tell
        before = snapshot(run)
        out = ulora("run", "--resume", str(run))
        assert_clear_error("two resumes at once", out, ["being written by", str(os.getpid())],
                           before, snapshot(run))
    done = ulora("run", "--resume", str(run))  # released: the same command now continues it
    assert done.rc == 0, done.err[-2000:]


def test_two_resume_processes_at_once_one_refuses_one_finishes(killed: Path,
                                                               tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(killed, tmp_path / "run"))
    cmd = [sys.executable, "-m", "ulora_remote.cli", "run", "--resume", str(run)]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        lock = run / LOCK_NAME
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the first resume never took the lock"
            time.sleep(0.05)
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
    # The first may have finished before the second looked: then the second finds a finished
    # run (also a clear refusal). Either way exactly one wrote.
    assert second.returncode == 2, second.stdout + second.stderr
    assert ("being written by" in second.stderr or "finished run" in second.stderr), second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, output
    assert ulora("report", str(run)).rc == 0
