"""Every benchmark that README.md or benchmarks/RESULTS.md quotes runs in its smoke mode (a few
steps, numbers meaningless), so that a console or API change cannot break one silently. Each
checks that the script ends with status 0 and prints its result lines; no timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tinker")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "TINKER_TELEMETRY": "0"}

# script, extra arguments, words its output must hold
CASES = [
    ("sweep.py", [], ["runs at once", "equal to the same run alone: 2/2"]),
    ("guard_cycles.py", [], ["guarded / unguarded ="]),
    ("local_overhead.py", [], ["ratio backend/bare"]),
    ("pipelining.py", [], ["steps/s"]),
    ("serve_eval_burst.py", [], ["burst of 3"]),
    ("study.py", ["--out", "{tmp}/study"], ["study: done"]),
    ("adapters_study.py", ["--out", "{tmp}/adapters"], ["adapters study: done"]),
]


@pytest.fixture(scope="module")
def small_model() -> None:
    from ulora_remote.backends.local import build_builtin_model

    build_builtin_model("small")  # cached once for every script (ULORA_CACHE_DIR is shared)


@pytest.mark.parametrize(("script", "extra", "needles"), CASES, ids=[c[0] for c in CASES])
def test_the_benchmark_runs_in_smoke_mode(small_model: None, tmp_path: Path, script: str,
                                          extra: list[str], needles: list[str]) -> None:
    args = [a.format(tmp=tmp_path) for a in extra]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args],
                          env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    for needle in needles:
        assert needle in output, output[-4000:]



def test_the_ready_line_gives_the_url_whatever_comes_before_it() -> None:
    from ulora_remote.backends.server import ready_url

    assert ready_url("ulora serve: ready http://127.0.0.1:41234\n") == "http://127.0.0.1:41234"
    # the human lines (a comma right after the URL broke benchmarks/sweep.py) are not parsed
    assert ready_url("ulora serve: serving 'small' on http://127.0.0.1:41234, no API key\n") is None
    assert ready_url("ulora serve: loading the base model 'small'\n") is None
