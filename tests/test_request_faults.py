"""The fault table by request kind: one fault of each kind (408, 429, 500, 503, 410, a dropped
connection) aimed at one request of each kind (forward, forward_backward, optim_step,
save_state, load_state, sample, create) of a short Tinker run through ``ulora serve`` over real
HTTP. Injection is by request kind and count (``FaultConfig.requests/on/skip/limit``), never by
timing, so each cell is deterministic.

Each cell must end "recovered": the run finishes, its steps.csv equals the fault-free run's, and
the server's counters show the final model holding exactly STEPS updates with no model of the
run holding more (nothing lost, nothing done twice). With ``ULORA_FAULT_TABLE=<file>`` each
verdict is appended there as a JSON line (docs/faults.md is counted from it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn")
torch.set_num_threads(1)

from ulora_remote.backends.server import FaultConfig, ServerConfig, serve_in_thread  # noqa: E402
from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402

from ulora_remote.run.api import resume_run, run_scenario  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "tml-test-not-a-real-key"
STEPS = 8
COLUMNS = ["step", "loss", "phi", "lr", "mode"]
FAULTS = ("408", "429", "500", "503", "410", "drop")
REQUESTS = ("forward", "forward_backward", "optim_step", "save_state", "load_state", "sample",
            "create")


def overrides(url: str, model: str) -> list[str]:
    return ['controller.method="seed"', f"steps={STEPS}", "batch_size=4",
            "shocks.windows=[[2,4]]", "eval.every=4", "eval.size=4", "eval.max_tokens=6",
            "checkpoint.every=4", "backend.kind=tinker", f"backend.base_model={model}",
            f"backend.base_url={url}", "backend.rank=4"]


@pytest.fixture(scope="module", autouse=True)
def env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("TINKER_API_KEY", "TINKER_TELEMETRY",
                                            "TINKER_BASE_URL")}
    os.environ.update(TINKER_API_KEY=KEY, TINKER_TELEMETRY="0")
    os.environ.pop("TINKER_BASE_URL", None)
    yield
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = serve_in_thread(ServerConfig(port=0, base_model="small", api_key=KEY, threads=1,
                                       checkpoint_dir=tmp_path_factory.mktemp("server")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clean(server: Any, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("clean") / "run"
    run_scenario("pig-latin-shock", out=out, log_every=0,
                 overrides=overrides(server.base_url, server.service.base_model_name))
    return pd.read_csv(out / "steps.csv")[COLUMNS]


class InterruptAt:
    """A TinkerBackend that raises KeyboardInterrupt (Ctrl-C) at its n-th forward_backward."""

    def __init__(self, inner: TinkerBackend, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0

    def forward_backward(self, batch: Any) -> Any:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.inner.forward_backward(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def aimed(fault: str, request: str, *, on: str, skip: int) -> FaultConfig:
    return FaultConfig(rate=1.0, kinds=(fault,), requests=(request,), on=on,  # type: ignore[arg-type]
                       skip=skip, limit=1)


def record(cell: dict[str, Any]) -> None:
    table = os.environ.get("ULORA_FAULT_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as f:
            f.write(json.dumps(cell) + "\n")


def run_cell(server: Any, tmp_path: Path, config: FaultConfig) -> tuple[Path, list[str]]:
    """One run under ``config`` (for load_state: a run stopped by Ctrl-C at step 6, resumed
    under it, since only a restore loads state); return its directory and its models."""
    model = server.service.base_model_name
    url = server.base_url
    out = tmp_path / "run"
    models: list[str] = []
    if config.requests == ("load_state",):
        first = TinkerBackend(model, rank=4, seed=0, base_url=url)
        with pytest.raises(KeyboardInterrupt):
            run_scenario("pig-latin-shock", backend=InterruptAt(first, 7),  # type: ignore[arg-type]
                         out=out, log_every=0, overrides=overrides(url, model))
        models.append(first.model_id)
    backend = TinkerBackend(model, rank=4, seed=0, base_url=url)
    server.faults.reconfigure(config)
    try:
        if config.requests == ("load_state",):
            resume_run(out, backend=backend, log_every=0)
        else:
            run_scenario("pig-latin-shock", backend=backend, out=out, log_every=0,
                         overrides=overrides(url, model))
    finally:
        server.faults.reconfigure(FaultConfig(rate=0.0))
    return out, models


CELLS = [(r, f, on) for r in REQUESTS for f in FAULTS
         for on in (("future",) if f == "410" else ("submit", "future"))]


@pytest.mark.parametrize(("request_kind", "fault", "on"), CELLS,
                         ids=[f"{r}-{f}-{on}" for r, f, on in CELLS])
def test_one_fault_at_one_request_kind_is_recovered_exactly_once(
        server: Any, clean: pd.DataFrame, tmp_path: Path, request_kind: str, fault: str,
        on: str) -> None:
    # The second request of its kind where there is one (a 410 on save_state then lands on the
    # step-4 checkpoint, after training began); the first for create and load_state.
    skip = 0 if request_kind in ("create", "load_state") else 1
    before = set(server.counters.snapshot())
    landed0 = server.faults.injected_at.get((request_kind, fault), 0)
    out, _ = run_cell(server, tmp_path, aimed(fault, request_kind, on=on, skip=skip))
    landed = server.faults.injected_at.get((request_kind, fault), 0) - landed0
    counts = {m: c for m, c in server.counters.snapshot().items() if m not in before}
    steps = pd.read_csv(out / "steps.csv")[COLUMNS]
    same = steps.equals(clean)
    finals = [c for c in counts.values() if not c.lost and c.lineage_optim_step == STEPS]
    doubled = [m for m, c in counts.items() if c.lineage_optim_step > STEPS]
    record({"area": "request", "request": request_kind, "fault": fault, "on": on,
            "landed": landed, "verdict": "recovered" if same and finals and not doubled
            else "silent" if not same else "lost"})
    assert landed == 1, "the fault must land on the request it is aimed at"
    assert doubled == [], "an update ran twice"
    assert len(finals) == 1, counts
    pd.testing.assert_frame_equal(steps, clean, check_exact=True)


@pytest.mark.parametrize("fault_seed", [1, 2, 3])
def test_a_410_before_the_first_checkpoint_starts_over_from_step_0(
        server: Any, clean: pd.DataFrame, tmp_path: Path, fault_seed: int) -> None:
    """The step-0 evaluation's forward, its sample or the step-0 save loses the model: nothing
    was trained yet, so the run starts over from step 0 instead of stopping."""
    request = ("forward", "sample", "save_state")[fault_seed - 1]
    before = set(server.counters.snapshot())
    out, _ = run_cell(server, tmp_path, aimed("410", request, on="future", skip=0))
    assert server.faults.injected_at.get((request, "410"), 0) >= 1
    pd.testing.assert_frame_equal(pd.read_csv(out / "steps.csv")[COLUMNS], clean,
                                  check_exact=True)
    counts = {m: c for m, c in server.counters.snapshot().items() if m not in before}
    assert [c.lineage_optim_step for c in counts.values() if not c.lost] == [STEPS]
