"""`ulora serve` with many clients: one clock cycle runs every client's ready work, and the
service's model-creation limits (a cap of live LoRAs that queues creations, and 429 refusals).

Raw HTTP on 127.0.0.1 against the numpy fake engine of ``test_server_protocol`` (no torch).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytest.importorskip("tinker")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from server_fakes import KEY, SESSION, FakeEngine  # noqa: E402
from server_fakes import make_model as _model  # noqa: E402
from server_fakes import result_of as _result  # noqa: E402
from server_fakes import start_server as _start  # noqa: E402
from test_server_protocol import _sample, _submit_fb  # noqa: E402

from ulora_remote.errors import ConfigurationError  # noqa: E402


def _http(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"X-API-Key": KEY}, timeout=10)


def _create(http: httpx.Client) -> tuple[str, httpx.Response]:
    """A new session and a create_model submit in it: (session id, the submit's answer)."""
    sid = http.post("/api/v1/create_session", json=SESSION).json()["session_id"]
    body = {"session_id": sid, "model_seq_id": 0, "base_model": "fake/unigram",
            "lora_config": {"rank": 4, "seed": 1}}
    return sid, http.post("/api/v1/create_model", json=body)


def _finish(http: httpx.Client, session_id: str) -> None:
    finish = {"reason": {"type": "success"}, "detail": None}
    assert http.post(f"/api/v1/sessions/{session_id}/finish", json=finish).is_success


def test_one_cycle_runs_the_ready_work_of_every_client(tmp_path: Path) -> None:
    calls: list[str] = []
    srv = _start(tmp_path, calls, cycle_s=0.5)
    try:
        with _http(srv.base_url) as http:
            # Four clients (sessions). The last creation's answer comes right after a boundary,
            # so the four submits below land well inside one cycle.
            models = [_model(http) for _ in range(4)]
            ids = [_submit_fb(http, m, 1).json()["request_id"] for m in models]
            for rid in ids:
                assert _result(http, rid).status_code == 200
            cycles = {srv.service.scheduler.get(rid).cycle for rid in ids}
    finally:
        srv.stop()
    assert len(cycles) == 1, cycles  # all four forward_backward passes ran in one cycle
    assert calls == ["forward_backward"] * 4


class BatchingFake(FakeEngine):
    """The fake engine with batched greedy sampling; records each batch's size."""

    batches: list[int] = []

    def sample_tokens_batch(self, prompts, max_tokens, stop_tokens=()):
        self.batches.append(len(prompts))
        return [self.sample_tokens(p, max_tokens, 0.0, stop_tokens) for p in prompts]


def test_a_cycles_greedy_samples_of_one_sampler_run_as_one_batch(tmp_path: Path) -> None:
    from tinker.proto.response_conv import deserialize_sample_response
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    BatchingFake.batches = []
    srv = serve_in_thread(ServerConfig(
        port=0, checkpoint_dir=tmp_path, api_key=KEY, long_poll_s=0.5, cycle_s=0.5,
        engine_factory=lambda spec: BatchingFake(spec, [])))  # type: ignore[arg-type,return-value]
    try:
        with _http(srv.base_url) as http:
            sid = http.post("/api/v1/create_session", json=SESSION).json()["session_id"]
            session = {"session_id": sid, "sampling_session_seq_id": 0,
                       "base_model": "fake/unigram"}
            sampler = http.post("/api/v1/create_sampling_session", json=session).json()
            sampler_id = sampler["sampling_session_id"]
            alone = _result(http, _sample(http, sampler_id).json()["request_id"])  # a boundary
            ids = [_sample(http, sampler_id).json()["request_id"] for _ in range(6)]
            sampled = _sample(http, sampler_id, sp={"temperature": 1.0}).json()["request_id"]
            answers = [_result(http, rid) for rid in [*ids, sampled]]
    finally:
        srv.stop()
    assert BatchingFake.batches == [6]  # the lone first request ran alone, unbatched
    one = deserialize_sample_response(alone.content).sequences[0].tokens
    for answer in answers[:6]:
        assert deserialize_sample_response(answer.content).sequences[0].tokens == one
    assert answers[6].status_code == 200  # a non-greedy request runs alone, beside the batch


def test_a_creation_beyond_the_live_model_cap_queues_then_starts(tmp_path: Path) -> None:
    srv = _start(tmp_path, [], max_live_models=1)
    try:
        with _http(srv.base_url) as http:
            first_session, first = _create(http)
            assert "model_id" in _result(http, first.json()["request_id"]).json()
            _, second = _create(http)
            waiting = http.post("/api/v1/retrieve_future",
                                json={"request_id": second.json()["request_id"]})
            assert waiting.status_code == 408
            body = waiting.json()
            assert body["type"] == "try_again" and body["queue_state"] == "paused_rate_limit"
            assert "concurrent training clients rate limit" in body["queue_state_reason"]
            _finish(http, first_session)  # frees the only slot
            started = _result(http, second.json()["request_id"])
            counters = http.get("/ulora/v1/counters").json()
    finally:
        srv.stop()
    assert started.status_code == 200 and "model_id" in started.json()
    assert counters["peak_live_models"] == 1


def test_the_first_creations_are_refused_with_429(tmp_path: Path) -> None:
    srv = _start(tmp_path, [], refuse_creates=2)
    try:
        with _http(srv.base_url) as http:
            answers = [_create(http)[1] for _ in range(3)]
            counters = http.get("/ulora/v1/counters").json()
    finally:
        srv.stop()
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after-ms"] == "100"
    assert "rate limit" in answers[0].json()["detail"]
    assert counters["creates_refused"] == 2


def test_limits_are_validated() -> None:
    from ulora_remote.backends.server import ServerConfig

    with pytest.raises(ConfigurationError, match="max_live_models"):
        ServerConfig(max_live_models=0)
    with pytest.raises(ConfigurationError, match="refuse_creates"):
        ServerConfig(refuse_creates=-1)
