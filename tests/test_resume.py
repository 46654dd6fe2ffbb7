"""Resume: a `ulora run` subprocess killed with SIGKILL (or stopped with Ctrl-C) mid-run and
resumed ends with the same steps.csv and evals.csv as an uninterrupted run (all but wall_s).

Every run here is a subprocess with one thread, so the uninterrupted reference and the
interrupted run compute with the same floating-point reductions.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

ARGS = [
    "--set", "steps=120", "--set", "shocks.windows=[[30,50]]",
    "--set", 'backend.base_model="small"', "--set", "lag=1",
    "--set", "eval.every=20", "--set", "eval.size=8", "--set", "eval.max_tokens=12",
    "--set", "checkpoint.every=20", "--log-every", "0",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _ulora(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "ulora_remote.cli", *args]
    # A shell that starts the tests in the background (`.ci/run &`) hands its children SIGINT
    # ignored, and Python then never installs its Ctrl-C handler: give the child the default.
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _rows(path: Path) -> int:
    try:
        return max(0, path.read_text().count("\n") - 1)
    except FileNotFoundError:
        return 0


def _interrupt(out: Path, sig: int, min_rows: int, cwd: Path | None = None) -> tuple[int, str]:
    """Start a run, send ``sig`` once steps.csv has ``min_rows`` rows; return (rc, output).
    ``out`` may be relative to ``cwd``."""
    proc = _ulora("run", "--out", str(out), *ARGS, cwd=cwd)
    out = (cwd or Path.cwd()) / out
    deadline = time.monotonic() + 240
    while _rows(out / "steps.csv") < min_rows:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    proc.send_signal(sig)
    return _finish(proc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    rc, log = _finish(_ulora("run", "--out", str(out), *ARGS))
    assert rc == 0, log
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    sa, sb = pd.read_csv(a / "steps.csv"), pd.read_csv(b / "steps.csv")
    assert list(sb["step"]) == list(range(120))
    # A guard's snapshot is a path inside its own run directory, named after the run:
    # compare what follows the run's name ("probation000036").
    for table in (sa, sb):
        table["snapshot"] = table["snapshot"].map(
            lambda x: Path(x).name.rsplit("-", 1)[-1] if isinstance(x, str) else x)
    pd.testing.assert_frame_equal(sa.drop(columns="wall_s"), sb.drop(columns="wall_s"))
    pd.testing.assert_frame_equal(pd.read_csv(a / "evals.csv"), pd.read_csv(b / "evals.csv"))


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "run"
    rc, log = _interrupt(out, signal.SIGKILL, min_rows=47)  # past the checkpoint at 40
    assert rc == -signal.SIGKILL, log
    assert not (out / "summary.json").exists()
    from ulora_remote.cli import main

    assert main(["report", str(out)]) == 0  # an unfinished run gets a plot, no summary.json
    assert (out / "plot.png").exists() and not (out / "summary.json").exists()
    rc, log = _finish(_ulora("run", "--out", str(out), *ARGS))
    assert rc == 2 and "--resume" in log  # an unfinished run is not silently overwritten
    rc, log = _finish(_ulora("run", "--resume", str(out)))
    assert rc == 0, log
    assert "resuming from the checkpoint at step" in log
    _assert_same_run(reference, out)


def test_ctrl_c_leaves_a_resumable_directory(tmp_path, reference):
    out = tmp_path / "run"
    rc, log = _interrupt(out, signal.SIGINT, min_rows=25)
    assert rc == 130, log
    assert f"ulora run --resume {out}" in log and "Traceback" not in log
    rc, log = _finish(_ulora("run", "--resume", str(out)))
    assert rc == 0, log
    _assert_same_run(reference, out)
    rc, log = _finish(_ulora("run", "--resume", str(out)))
    assert rc == 2 and "finished run" in log and "Traceback" not in log


def _hint(log: str) -> list[str]:
    """The resume command the run printed, split as a shell would."""
    line = next(x for x in log.splitlines() if "Continue with: " in x)
    return shlex.split(line.split("Continue with: ", 1)[1])


def test_the_ctrl_c_hint_works_from_any_folder(tmp_path, reference):
    project, elsewhere = tmp_path / "my project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    rc, log = _interrupt(Path("runs") / "run 1", signal.SIGINT, min_rows=25, cwd=project)
    assert rc == 130, log
    command = _hint(log)
    assert command[:3] == ["ulora", "run", "--resume"]
    assert command[3] == str(project / "runs" / "run 1")  # absolute, quoted for the shell
    rc, log = _finish(_ulora(*command[1:], cwd=elsewhere))
    assert rc == 0, log
    _assert_same_run(reference, project / "runs" / "run 1")


def test_sigterm_stops_like_ctrl_c_with_the_resume_hint(tmp_path, reference):
    out = tmp_path / "run"
    rc, log = _interrupt(out, signal.SIGTERM, min_rows=25)
    assert rc == 128 + signal.SIGTERM, log
    assert "Traceback" not in log and _hint(log) == ["ulora", "run", "--resume", str(out)]
    rc, log = _finish(_ulora("run", "--resume", str(out)))
    assert rc == 0, log
    _assert_same_run(reference, out)
