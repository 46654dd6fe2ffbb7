"""End to end: a short Pig Latin scenario through TinkerBackend and the unmodified SDK against
``ulora serve`` over real HTTP on 127.0.0.1, clean and under injected faults (429/500/408,
dropped connections and 410 on training futures), with exactly-once checked on the server's
counters. Also the ``integration`` test on the hosted service (needs TINKER_API_KEY).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402

from ulora_remote.run.api import run_scenario  # noqa: E402
from ulora_remote.run.rundir import EVAL_COLUMNS, STEP_COLUMNS  # noqa: E402

FAKE_KEY = "tml-test-not-a-real-key"
STEPS = 12


def short_pig_latin(server_url: str, model: str) -> list[str]:
    """Overrides that shrink the shipped local scenario and move it to Tinker: the backend keys
    change (kind, base model, URL), and the seed's controller (no screening forwards) keeps the
    request sequence these fault tests were seeded for."""
    return [
        'controller.method="seed"',
        f"steps={STEPS}",
        "batch_size=4",
        "shocks.windows=[[4,8]]",
        "eval.every=6",
        "eval.size=4",
        "eval.max_tokens=8",
        "checkpoint.every=4",
        "backend.kind=tinker",
        f"backend.base_model={model}",
        f"backend.base_url={server_url}",
        "backend.rank=4",
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    serve = pytest.importorskip("ulora_remote.backends.server")
    running = serve.serve_in_thread(
        serve.ServerConfig(
            port=0,
            base_model="small",
            checkpoint_dir=tmp_path_factory.mktemp("server"),
            api_key=FAKE_KEY,
            threads=1,
        )
    )
    yield running
    running.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)


@pytest.mark.slow
def test_short_pig_latin_run_on_the_local_server(server: Any, env: None, tmp_path: Path) -> None:
    model = server.service.base_model_name
    backend = TinkerBackend(model, rank=4, seed=0, base_url=server.base_url)
    result = run_scenario(
        "pig-latin-shock",
        backend=backend,
        out=tmp_path / "run",
        overrides=short_pig_latin(server.base_url, model),
    )
    assert tuple(result.steps.columns) == STEP_COLUMNS  # the local backend's table
    assert tuple(result.evals.columns) == EVAL_COLUMNS
    assert result.steps["step"].tolist() == list(range(STEPS))
    assert result.steps["shock"].tolist() == [4 <= t < 8 for t in range(STEPS)]
    assert result.steps["loss"].gt(0).all() and result.steps["tokens"].gt(0).all()
    assert result.evals["step"].tolist() == [0, 6, 12]
    counts = server.counters.get(backend.model_id)
    assert (counts.forward_backward, counts.optim_step) == (STEPS, STEPS)
    assert FAKE_KEY not in "".join(
        p.read_text()
        for p in (tmp_path / "run").rglob("*.*")
        if p.suffix in (".csv", ".json", ".jsonl", ".txt", ".toml")
    )


@pytest.mark.slow
def test_faults_are_absorbed_or_recovered_exactly_once(
    server: Any, env: None, tmp_path: Path
) -> None:
    serve = pytest.importorskip("ulora_remote.backends.server")
    model = server.service.base_model_name
    clean = run_scenario(
        "pig-latin-shock",
        out=tmp_path / "clean",
        overrides=short_pig_latin(server.base_url, model),
    )
    server.faults.reconfigure(
        serve.FaultConfig(rate=0.12, kinds=("429", "500", "408", "410"), seed=3)
    )
    try:
        backend = TinkerBackend(model, rank=4, seed=0, base_url=server.base_url)
        faulty = run_scenario(
            "pig-latin-shock",
            backend=backend,
            out=tmp_path / "faulty",
            overrides=short_pig_latin(server.base_url, model),
        )
    finally:
        server.faults.reconfigure(serve.FaultConfig(rate=0.0))
    assert server.faults.injected.get("410", 0) >= 1, "the seed must exercise a recovery"
    # Every step logged once, in order, and the final model holds exactly STEPS optimizer steps
    # (its own plus those of the checkpoint it was rebuilt from): none lost, none doubled.
    assert faulty.steps["step"].tolist() == list(range(STEPS))
    lineage = server.counters.get(backend.model_id)
    assert lineage.loaded_from is not None
    assert lineage.lineage_optim_step == STEPS
    # Replaying from a checkpoint reproduces the uninterrupted run.
    assert faulty.steps["loss"].tolist() == pytest.approx(clean.steps["loss"].tolist(), rel=1e-4)


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


@pytest.mark.slow
def test_resume_after_ctrl_c_continues_exactly_once(server: Any, env: None, tmp_path: Path) -> None:
    from ulora_remote.run.api import resume_run

    model = server.service.base_model_name
    first = TinkerBackend(model, rank=4, seed=0, base_url=server.base_url)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(
            "pig-latin-shock",
            backend=InterruptAt(first, n=7),  # type: ignore[arg-type]
            out=tmp_path / "run",
            overrides=short_pig_latin(server.base_url, model),
        )
    second = TinkerBackend(model, rank=4, seed=0, base_url=server.base_url)
    result = resume_run(tmp_path / "run", backend=second)
    assert result.steps["step"].tolist() == list(range(STEPS))
    counts = server.counters.get(second.model_id)
    assert counts.loaded_from is not None and counts.lineage_optim_step == STEPS


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="needs TINKER_API_KEY")
def test_five_steps_of_llama32_1b_on_the_hosted_service(tmp_path: Path) -> None:
    if os.environ["TINKER_API_KEY"] == FAKE_KEY:
        pytest.skip("TINKER_API_KEY holds the tests' fake key")
    result = run_scenario(
        "llama32-1b-tinker",
        out=tmp_path / "run",
        overrides=["steps=5", "eval.every=5", "eval.size=8", "checkpoint.every=5"],
    )
    assert result.steps["step"].tolist() == list(range(5))
    assert result.steps["loss"].gt(0).all()
