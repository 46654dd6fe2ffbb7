"""Per-task adapters through the unmodified tinker SDK against ``ulora serve`` over real HTTP on
127.0.0.1: one training client per task made from the shared client's saved state, routing by
task (checked on the server's per-model counters), composite checkpoints, and a switching run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402

from ulora_remote.backend import AdamParams, AdapterBackend, Example  # noqa: E402
from ulora_remote.errors import CheckpointError  # noqa: E402
from ulora_remote.run.api import run_scenario  # noqa: E402

FAKE_KEY = "tml-test-not-a-real-key"
A = [Example("abc ->", " bcaay", task="a"), Example("cat ->", " atcay", task="a")]
B = [Example("dog ->", " god", task="b")]
STEP = AdamParams(learning_rate=1e-2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    serve = pytest.importorskip("ulora_remote.backends.server")
    running = serve.serve_in_thread(serve.ServerConfig(
        port=0, base_model="small", checkpoint_dir=tmp_path_factory.mktemp("server"),
        api_key=FAKE_KEY, threads=1))
    yield running
    running.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)


def _new_models(server: Any, before: set[str]) -> list[str]:
    return sorted(set(server.counters.snapshot()) - before,
                  key=lambda m: (m.split(":")[0], int(m.split(":")[-1])))


@pytest.mark.slow
def test_one_client_per_task_forked_routed_and_checkpointed(server: Any, env: None) -> None:
    known = set(server.counters.snapshot())
    model = server.service.base_model_name
    backend = TinkerBackend(model, rank=4, seed=0, base_url=server.base_url)
    assert isinstance(backend, AdapterBackend)
    backend.forward_backward(A + B).result()
    backend.optim_step(STEP).result()
    loss_a, loss_b = backend.forward(A).result(), backend.forward(B).result()
    backend.fork_adapters(["a", "b"])
    assert backend.adapter_tasks() == ("a", "b")
    # each client starts equal to the shared one (the same requests give the same numbers)
    assert (backend.forward(A).result(), backend.forward(B).result()) == (loss_a, loss_b)

    backend.forward_backward(A).result()  # task a only
    backend.optim_step(STEP).result()
    assert backend.forward(B).result() == loss_b  # b's client is untouched
    assert backend.forward(A).result() != loss_a
    shared_id, a_id, b_id = _new_models(server, known)
    counts = server.counters.snapshot()
    assert (counts[shared_id].forward_backward, counts[shared_id].optim_step) == (1, 1)
    assert (counts[a_id].forward_backward, counts[a_id].optim_step) == (1, 1)
    assert (counts[b_id].forward_backward, counts[b_id].optim_step) == (0, 0)
    assert counts[a_id].lineage_optim_step == 2 and counts[b_id].lineage_optim_step == 1

    ref = backend.save_state("two-tasks")
    assert ref.startswith("tinker-adapters:")
    outputs = backend.forward(A + B).result()
    other = TinkerBackend(model, rank=4, seed=1, base_url=server.base_url)
    other.load_state(ref)  # every client rebuilt from its own state
    assert other.adapter_tasks() == ("a", "b")
    assert other.forward(A + B).result() == outputs
    assert other.sample(A + B, 6) == backend.sample(A + B, 6)
    with pytest.raises(CheckpointError, match="per-task adapters"):
        other.load_state("tinker-adapters:{not json")
    backend.close()
    other.close()


@pytest.mark.slow
def test_a_switching_run_over_ulora_serve(server: Any, env: None, tmp_path: Path) -> None:
    known = set(server.counters.snapshot())
    model = server.service.base_model_name
    backend = TinkerBackend(model, rank=4, seed=0, base_url=server.base_url)
    steps = 12
    result = run_scenario("rules-conflict", backend=backend, out=tmp_path / "run", overrides=[
        "backend.kind=tinker", f"backend.base_model={model}",
        f"backend.base_url={server.base_url}", "backend.rank=4", f"steps={steps}",
        "eval.every=6", "eval.size=4", "eval.max_tokens=8", "checkpoint.every=4",
        "controller.theta0=0.05", "adapters.patience=3", "adapters.require_conflict=false"])
    adapters = result.steps["adapters"].tolist()
    fork = adapters.index(2)
    assert adapters == [1] * fork + [2] * (steps - fork) and 0 < fork < steps
    assert result.steps[["error", "conflict", "stability", "phi"]].notna().all().all()
    shared_id, *task_ids = _new_models(server, known)
    counts = server.counters.snapshot()
    assert counts[shared_id].optim_step == fork  # nothing trains the shared client after
    for task_id in task_ids:  # each task's client holds every step exactly once
        assert counts[task_id].lineage_optim_step == steps
