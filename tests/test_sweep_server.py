"""Sweeps on Tinker through ``ulora serve`` (real HTTP on 127.0.0.1, the "small" model): runs in
flight together equal the same runs made alone, a fault storm loses or doubles no step, a start
the service queues or refuses waits and then runs, and Ctrl-C leaves a sweep that one printed
command continues. Exactly-once is checked on the server's own counters.
"""

from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn")
torch.set_num_threads(1)

from ulora_remote.study.compare import compare_scenario  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "tml-test-not-a-real-key"
STEPS = 12
SEEDS = (0, 1)  # × (guarded, seed, fixed 2e-3): six runs
METHODS = ("guarded", "seed", "fixed-2e-3")  # what ulora compare runs
N = len(SEEDS) * len(METHODS)
COLUMNS = ["step", "loss", "phi", "lr"]


def overrides(url: str, model: str) -> list[str]:
    """The shipped default scenario, shortened and moved to Tinker (only backend keys change)."""
    return [f"steps={STEPS}", "batch_size=4", "shocks.windows=[[4,8]]", "eval.every=6",
            "eval.size=4", "eval.max_tokens=8", "checkpoint.every=4",
            "baselines.fixed_lrs=[2e-3]", 'backend.kind="tinker"',
            f'backend.base_model="{model}"', f'backend.base_url="{url}"', "backend.rank=4"]


def serve(tmp: Path, **kw: Any) -> Any:
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    return serve_in_thread(ServerConfig(port=0, base_model="small", checkpoint_dir=tmp,
                                        api_key=KEY, threads=1, **kw))


@pytest.fixture(scope="module", autouse=True)
def env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("TINKER_API_KEY", "TINKER_TELEMETRY")}
    os.environ.update(TINKER_API_KEY=KEY, TINKER_TELEMETRY="0")
    yield
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = serve(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def solo(server: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six runs made alone, one after the other (concurrency 1)."""
    out = tmp_path_factory.mktemp("solo")
    term = io.StringIO()
    compare_scenario("pig-latin-shock", seeds=SEEDS, out=out, console=term,
                     overrides=overrides(server.base_url, server.service.base_model_name))
    assert term.getvalue().count("== ") == N  # a header per method and seed
    return out


def steps(root: Path, run: str) -> pd.DataFrame:
    return pd.read_csv(root / run / "steps.csv")[COLUMNS]


RUNS = [f"{m}-s{s}" for m in METHODS for s in SEEDS]


def assert_same_runs(root: Path, reference: Path) -> None:
    for run in RUNS:
        pd.testing.assert_frame_equal(steps(root, run), steps(reference, run), check_exact=True)


def finals(counts: dict[str, Any], before: set[str]) -> list[Any]:
    """The non-lost models of this test whose state holds every step of a run."""
    new = [c for m, c in counts.items() if m not in before]
    assert all(c.lineage_optim_step <= STEPS for c in new), "a step ran twice"
    return [c for c in new if not c.lost
            and (c.lineage_forward_backward, c.lineage_optim_step) == (STEPS, STEPS)]


@pytest.mark.parametrize("concurrency", [4, N])
def test_runs_in_flight_together_equal_the_runs_made_alone(
    server: Any, solo: Path, tmp_path: Path, concurrency: int
) -> None:
    term = io.StringIO()
    before = set(server.counters.snapshot())
    compare_scenario("pig-latin-shock", seeds=SEEDS, out=tmp_path, console=term,
                     concurrency=concurrency,
                     overrides=overrides(server.base_url, server.service.base_model_name))
    assert_same_runs(tmp_path, solo)
    assert term.getvalue().count(" finished in ") == N  # one summary line per run
    for run in RUNS:
        assert "eval loss=" in (tmp_path / f"{run}.log").read_text()
    assert len(finals(server.counters.snapshot(), before)) == N
    again = io.StringIO()
    compare_scenario("pig-latin-shock", seeds=SEEDS, out=tmp_path, console=again, concurrency=N,
                     overrides=overrides(server.base_url, server.service.base_model_name))
    assert f"{N} runs: {N} reused, 0 to start, 0 to resume" in again.getvalue()


def test_sixteen_runs_in_flight_equal_the_runs_made_alone(server: Any, tmp_path: Path) -> None:
    """18 tiny runs (6 seeds × 3 methods) on 16 threads, each against itself made alone."""
    seeds = tuple(range(6))
    tiny = [*overrides(server.base_url, server.service.base_model_name), "steps=3",
            "shocks.windows=[[1,2]]", "eval.every=3", "checkpoint.every=3"]
    alone, together = tmp_path / "alone", tmp_path / "together"
    compare_scenario("pig-latin-shock", seeds=seeds, out=alone, console=io.StringIO(),
                     overrides=tiny)
    term = io.StringIO()
    compare_scenario("pig-latin-shock", seeds=seeds, out=together, console=term, concurrency=16,
                     overrides=tiny)
    assert "concurrency 16" in term.getvalue()
    runs = [f"{m}-s{s}" for m in METHODS for s in seeds]
    for run in runs:
        mine, solo = steps(together, run), steps(alone, run)
        assert len(mine) == 3, run
        pd.testing.assert_frame_equal(mine, solo, check_exact=True, obj=run)


def test_a_fault_storm_loses_or_doubles_no_step(server: Any, solo: Path, tmp_path: Path) -> None:
    """429 and 500 on 15% of all requests of six runs in flight, plus 410s (lost models) aimed
    by request kind and count, never by timing: one on a forward_backward after the first
    round of steps, one on a save_state after the step-0 checkpoints (a checkpoint save mid-run),
    one on the first save_state (before anything is trained). The SDK absorbs the first kind,
    the runs recover from every 410."""
    from ulora_remote.backends.server import FaultConfig

    storm = FaultConfig(rate=0.15, kinds=("429", "500"), seed=5)
    lost = [FaultConfig(rate=1.0, kinds=("410",), requests=(kind,), on="future", skip=skip,
                        limit=1)
            for kind, skip in (("forward_backward", N * 3), ("save_state", N + 2),
                               ("save_state", 0))]
    before = set(server.counters.snapshot())
    at0 = dict(server.faults.injected_at)
    injected0 = dict(server.faults.injected)
    server.faults.reconfigure(*lost, storm)
    try:
        compare_scenario("pig-latin-shock", seeds=SEEDS, out=tmp_path, console=io.StringIO(),
                         concurrency=N,
                         overrides=overrides(server.base_url, server.service.base_model_name))
    finally:
        server.faults.reconfigure(FaultConfig(rate=0.0))
    injected = {k: v - injected0.get(k, 0) for k, v in server.faults.injected.items()}
    landed = {k: v - at0.get(k, 0) for k, v in server.faults.injected_at.items()}
    assert landed.get(("forward_backward", "410")) == 1
    assert landed.get(("save_state", "410")) == 2
    assert injected.get("429", 0) + injected.get("500", 0) >= 10
    assert_same_runs(tmp_path, solo)  # every step logged once, with the fault-free numbers
    counts = server.counters.snapshot()
    assert len(finals(counts, before)) == N
    assert sum(c.lost for m, c in counts.items() if m not in before) >= 2  # 410s recovered


def test_a_start_the_service_queues_or_refuses_waits_then_runs(
    solo: Path, tmp_path: Path
) -> None:
    # 64 refusals > 6 clients × 10 SDK retries: some start gives up in the SDK and is asked again.
    srv = serve(tmp_path / "server", max_live_models=1, refuse_creates=64)
    try:
        term = io.StringIO()
        compare_scenario("pig-latin-shock", seeds=SEEDS, out=tmp_path / "runs", console=term,
                         concurrency=N,
                         overrides=overrides(srv.base_url, srv.service.base_model_name))
        counts = srv.counters.snapshot()
    finally:
        srv.stop()
    assert srv.service.creates_refused == 64
    assert srv.service.peak_live_models == 1  # the other starts queued behind the cap
    assert "refused the start" in (tmp_path / "runs" / "sweep.log").read_text()
    assert "FAILED" not in term.getvalue()
    assert_same_runs(tmp_path / "runs", solo)
    assert len(finals(counts, set())) == N


def test_ctrl_c_leaves_every_run_resumable_and_one_command_continues(
    solo: Path, tmp_path: Path
) -> None:
    srv = serve(tmp_path / "server", cycle_s=0.25)  # slow enough to interrupt mid-run
    root = tmp_path / "runs"
    try:
        argv = ["compare", "pig-latin-shock", "--seeds", "0,1", "--out", str(root),
                "--concurrency", str(N)]
        for kv in overrides(srv.base_url, srv.service.base_model_name):
            argv += ["--set", kv]
        first = _cli(argv, interrupt_when=lambda: _rows(root) >= N * 5)
        assert first.returncode == 130, first.stdout + first.stderr
        assert "Continue the whole sweep with:" in first.stdout
        command = first.stdout.split("Continue the whole sweep with:\n", 1)[1].splitlines()[0]
        assert any(0 < len(pd.read_csv(root / r / "steps.csv")) < STEPS for r in RUNS)
        again = shlex.split(command)
        assert again[:2] == ["ulora", "compare"] and "--force" not in again
        second = _cli(again[1:])
        assert second.returncode == 0, second.stdout + second.stderr
        counts = srv.counters.snapshot()
    finally:
        srv.stop()
    assert "to resume" in second.stdout and "written:" in second.stdout
    assert_same_runs(root, solo)
    assert len(finals(counts, set())) == N  # each run's final model holds every step once
    assert any(c.loaded_from for c in finals(counts, set()))  # some run resumed mid-way


def _rows(root: Path) -> int:
    total = 0
    for run in RUNS:
        path = root / run / "steps.csv"
        total += max(0, path.read_text().count("\n") - 1) if path.exists() else 0
    return total


def _cli(argv: list[str], interrupt_when: Any = None) -> subprocess.CompletedProcess[str]:
    """``ulora`` in a child process; with ``interrupt_when``, Ctrl-C (SIGINT) once it holds."""
    cmd = [sys.executable, "-m", "ulora_remote.cli", *argv]
    # A shell that starts the tests in the background (`.ci/run &`) hands its children SIGINT
    # ignored, and Python then never installs its Ctrl-C handler: give the child the default.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if interrupt_when is not None:
        deadline = time.monotonic() + 120
        while not interrupt_when() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
