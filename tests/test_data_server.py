"""Your own data through the Tinker SDK against ``ulora serve`` over real HTTP on 127.0.0.1:
chat and prompt/completion records rendered by the Tinker backend (its tokenizer from the
server) train and evaluate exactly as on the local backend, and the service's context length
refuses an over-long record before the run directory is written."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from test_data_runs import make_data  # noqa: E402

from ulora_remote.errors import InputError  # noqa: E402
from ulora_remote.run.api import run_scenario  # noqa: E402

FAKE_KEY = "tml-test-not-a-real-key"


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


def _on_server(server: Any) -> list[str]:
    return ["backend.kind=tinker", f"backend.base_model={server.service.base_model_name}",
            f"backend.base_url={server.base_url}", "checkpoint.every=20"]


@pytest.mark.slow
def test_a_jsonl_run_through_the_sdk_equals_the_local_run(server, env, tmp_path):
    scenario = make_data(tmp_path / "data")
    remote = run_scenario(scenario, out=tmp_path / "remote", console=io.StringIO(),
                          overrides=_on_server(server))
    local = run_scenario(scenario, out=tmp_path / "local", console=io.StringIO(),
                         overrides=["lag=1", "checkpoint.every=20"])
    assert remote.steps["loss"].tolist() == pytest.approx(local.steps["loss"].tolist(),
                                                          rel=1e-4)
    assert remote.evals["eval_loss"].tolist() == pytest.approx(
        local.evals["eval_loss"].tolist(), rel=1e-4)
    # the same answers: the SDK path cuts at the newline that ends a plain-template turn
    assert remote.evals["exact_match"].tolist() == local.evals["exact_match"].tolist()
    scores = [json.loads(line) for line in (remote.run_dir / "eval_scores.jsonl").open()]
    local_scores = [json.loads(line) for line in (local.run_dir / "eval_scores.jsonl").open()]
    assert [{n: t["exact_match"] for n, t in s["tasks"].items()} for s in scores] == [
        {n: t["exact_match"] for n, t in s["tasks"].items()} for s in local_scores]
    assert set(remote.summary["tasks"]) == {"copy", "flip"}


def test_the_services_context_length_refuses_a_long_record(server, env, tmp_path):
    scenario = make_data(tmp_path / "data")
    data = tmp_path / "data" / "data.jsonl"
    data.write_text(data.read_text() + json.dumps(
        {"prompt": "x" * 70, "completion": " y", "task": "copy"}) + "\n")
    with pytest.raises(InputError, match="data.jsonl line 121: the record renders to 73 tokens, "
                                         "but the model holds 64"):
        run_scenario(scenario, out=tmp_path / "run", console=io.StringIO(),
                     overrides=_on_server(server))
    assert not (tmp_path / "run").exists()
