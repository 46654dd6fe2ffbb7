"""`ulora serve` at the HTTP edge: auth, malformed input, ordering, clock cycles, faults.

Real HTTP on 127.0.0.1 with raw httpx calls, against a small numpy fake engine (a unigram
model trained by Adam) so that these tests need no torch and run in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("tinker")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from server_fakes import KEY, SESSION, VOCAB  # noqa: E402
from server_fakes import fwdbwd_body as _fwdbwd_body  # noqa: E402
from server_fakes import http_client as _http  # noqa: E402
from server_fakes import make_model as _model  # noqa: E402
from server_fakes import result_of as _result  # noqa: E402
from server_fakes import start_server as _start  # noqa: E402
from tinker.proto.response_conv import deserialize_forward_backward_output  # noqa: E402
from ulora_remote.backends.server import (  # noqa: E402
    FaultConfig,
    RunningServer,
)
from ulora_remote.backends.server.config import FaultInjector, is_loopback  # noqa: E402


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def server(tmp_path: Path, calls: list[str]) -> Iterator[RunningServer]:
    srv = _start(tmp_path, calls)
    yield srv
    srv.stop()


def _submit_fb(http: httpx.Client, model_id: str, seq_id: int) -> httpx.Response:
    headers = {"Content-Type": "application/x-protobuf"}
    return http.post(
        "/api/v1/forward_backward", content=_fwdbwd_body(model_id, seq_id), headers=headers
    )


def _submit_optim(http: httpx.Client, model_id: str, seq_id: int) -> httpx.Response:
    body = {"model_id": model_id, "seq_id": seq_id, "adam_params": {"learning_rate": 0.1}}
    return http.post("/api/v1/optim_step", json=body)


def test_api_key_is_checked(server: RunningServer) -> None:
    for key in (None, "tml-wrong-key"):
        with _http(server, key) as http:
            resp = http.post("/api/v1/create_session", json=SESSION)
            assert resp.status_code == 401
            assert "API key" in resp.json()["detail"]
            assert KEY not in resp.text
    with _http(server) as http:
        assert http.get("/api/v1/healthz").json() == {"status": "ok"}
        caps = http.get("/api/v1/get_server_capabilities").json()
        assert caps["supported_models"][0]["model_name"] == "fake/unigram"


def test_client_config_turns_pyqwest_off(server: RunningServer) -> None:
    with _http(server) as http:
        config = http.post("/api/v1/client/config", json={"sdk_version": "0.38.0"}).json()
    assert config["use_pyqwest_transport"] is False
    assert config["pjwt_auth_enabled"] is False


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        ("/api/v1/create_session", {"content": b"{not json"}, 400, "not valid JSON"),
        ("/api/v1/create_session", {"json": [1, 2]}, 400, "JSON object"),
        ("/api/v1/create_model", {"json": {"session_id": "x"}}, 400, "invalid request"),
        (
            "/api/v1/optim_step",
            {"json": {"model_id": "nope:train:0", "adam_params": {}}},
            404,
            "does not exist",
        ),
        (
            "/api/v1/forward_backward",
            {"content": b"\x08\x01garbage", "headers": {"Content-Type": "application/x-protobuf"}},
            400,
            "protobuf",
        ),
        ("/api/v1/forward_backward", {"json": {"model_id": "x"}}, 400, "protobuf body"),
        ("/api/v1/retrieve_future", {"json": {"request_id": "req-999999"}}, 404, "unknown"),
        (
            "/api/v1/load_weights",
            {
                "json": {
                    "session_id": "s1",
                    "model_seq_id": 1,
                    "path": "tinker://../../etc/weights/passwd",
                    "optimizer": True,
                }
            },
            400,
            "tinker://MODEL_ID",
        ),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_message(
    server: RunningServer, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    with _http(server) as http:
        resp = http.post(path, **kwargs)
        assert resp.status_code == status, resp.text
        assert fragment in resp.json()["detail"]
        assert http.get("/api/v1/healthz").status_code == 200  # still serving


def test_body_size_is_bounded(tmp_path: Path, calls: list[str]) -> None:
    srv = _start(tmp_path, calls, max_body_bytes=4096)
    try:
        with _http(srv) as http:
            resp = http.post("/api/v1/create_session", content=b"x" * 10_000)
            assert resp.status_code == 413
    finally:
        srv.stop()


def test_unserved_base_model_is_named_in_the_error(server: RunningServer) -> None:
    with _http(server) as http:
        sid = http.post("/api/v1/create_session", json=SESSION).json()["session_id"]
        body = {"session_id": sid, "model_seq_id": 0, "base_model": "meta-llama/Llama-3.2-1B"}
        resp = http.post("/api/v1/create_model", json=body)
    assert resp.status_code == 400
    assert "fake/unigram" in resp.json()["detail"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 200])
def test_checkpoint_names_cannot_escape(server: RunningServer, tmp_path: Path, name: str) -> None:
    with _http(server) as http:
        model_id = _model(http)
        resp = http.post(
            "/api/v1/save_weights", json={"model_id": model_id, "path": name, "seq_id": 1}
        )
        assert resp.status_code == 400, resp.text
        assert "checkpoint name" in resp.json()["detail"]
    outside = [p for p in tmp_path.rglob("*") if "ckpt" not in p.parts]
    assert outside == []


def test_requests_run_in_seq_id_order_and_exactly_once(
    server: RunningServer, calls: list[str]
) -> None:
    with _http(server) as http:
        model_id = _model(http)
        later = _submit_optim(http, model_id, 2).json()["request_id"]
        assert http.post("/api/v1/retrieve_future", json={"request_id": later}).status_code == 408
        first = _submit_fb(http, model_id, 1).json()["request_id"]
        again = _submit_fb(http, model_id, 1).json()["request_id"]  # a retried submit
        assert again == first
        assert _result(http, later).json()["metrics"]["grad_norm:mean"] > 0
        answer = _result(http, first)
        assert answer.headers["content-type"] == "application/x-protobuf"
        output = deserialize_forward_backward_output(answer.content)
        logprobs = output.loss_fn_outputs[0]["logprobs"].data
        assert len(logprobs) == 3
        assert output.metrics["loss:sum"] == pytest.approx(-sum(logprobs))
        stale = _submit_fb(http, model_id, 1).json()["request_id"]
        assert stale == first
    assert calls == ["forward_backward", "optim_step"]
    assert server.counters.get(model_id).forward_backward == 1
    assert server.counters.get(model_id).optim_step == 1


def test_clock_cycle_runs_pipelined_work_in_fewer_cycles(tmp_path: Path, calls: list[str]) -> None:
    srv = _start(tmp_path, calls, cycle_s=0.2)
    try:
        with _http(srv) as http:
            model_id = _model(http)
            start = srv.cycles
            for step in range(3):  # naive: wait for each request before the next
                _result(http, _submit_fb(http, model_id, 2 * step + 1).json()["request_id"])
                _result(http, _submit_optim(http, model_id, 2 * step + 2).json()["request_id"])
            naive = srv.cycles - start
            start = srv.cycles
            for step in range(3, 6):  # pipelined: both submitted before waiting
                fb = _submit_fb(http, model_id, 2 * step + 1).json()["request_id"]
                op = _submit_optim(http, model_id, 2 * step + 2).json()["request_id"]
                _result(http, fb), _result(http, op)
            pipelined = srv.cycles - start
    finally:
        srv.stop()
    assert naive == 6
    assert pipelined < naive


def test_fault_injector_is_seeded_and_bounded() -> None:
    def draws(seed: int) -> list[str | None]:
        inj = FaultInjector(FaultConfig(rate=0.3, seed=seed))
        return [inj.decide("/p", b"body", on_future=False) for _ in range(200)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    faults = [d for d in draws(1) if d is not None]
    assert 30 <= len(faults) <= 90
    assert "410" not in faults  # a submit never gets 410
    assert set(faults) <= {"429", "500", "408", "drop"}
    quiet = FaultInjector(FaultConfig(rate=0.0))
    assert all(quiet.decide("/p", b"x", on_future=True) is None for _ in range(50))
    with pytest.raises(ValueError, match="rate"):
        FaultConfig(rate=1.5)


def test_dropped_connection_on_submit_enqueues_nothing(tmp_path: Path, calls: list[str]) -> None:
    srv = _start(tmp_path, calls)
    try:
        with _http(srv) as http:
            model_id = _model(http)
        srv.faults.reconfigure(FaultConfig(rate=1.0, kinds=("drop",)))  # a storm from now on
        with _http(srv) as http, pytest.raises(httpx.RemoteProtocolError):
            _submit_fb(http, model_id, 1)
    finally:
        srv.stop()
    assert calls == []
    assert srv.counters.get(model_id).forward_backward == 0


def test_410_on_a_training_future_loses_the_model(tmp_path: Path, calls: list[str]) -> None:
    srv = _start(tmp_path, calls, faults=FaultConfig(rate=1.0, kinds=("410",)))
    try:
        with _http(srv) as http:
            model_id = _model(http)  # creation futures never get 410
            rid = _submit_fb(http, model_id, 1).json()["request_id"]  # submits never get 410
            assert http.post("/api/v1/retrieve_future", json={"request_id": rid}).status_code == 410
            assert _submit_optim(http, model_id, 2).status_code == 410
            counters = http.get("/ulora/v1/counters").json()
    finally:
        srv.stop()
    assert counters["models"][model_id]["lost"] is True
    assert counters["faults_injected"] == {"410": 1}


def test_zstd_encoded_forward_backward_is_accepted(server: RunningServer) -> None:
    import zstandard

    with _http(server) as http:
        model_id = _model(http)
        body = zstandard.ZstdCompressor().compress(_fwdbwd_body(model_id, 1))
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"}
        rid = http.post("/api/v1/forward_backward", content=body, headers=headers).json()
        output = deserialize_forward_backward_output(_result(http, rid["request_id"]).content)
        corrupt = http.post("/api/v1/forward_backward", content=b"\x28\xb5junk", headers=headers)
    assert output.metrics["loss:sum"] > 0
    assert corrupt.status_code == 400 and "zstd" in corrupt.json()["detail"]


def test_sessions_and_models_are_independent(server: RunningServer, calls: list[str]) -> None:
    with _http(server) as http:
        first, second = _model(http), _model(http)
        assert first.split(":")[0] != second.split(":")[0]  # two sessions
        pending = _submit_optim(http, first, 2).json()["request_id"]  # waits for seq 1
        done = _submit_fb(http, second, 1).json()["request_id"]
        assert _result(http, done).status_code == 200  # not blocked by the other model's gap
        _result(http, _submit_fb(http, first, 1).json()["request_id"])
        assert _result(http, pending).status_code == 200
    assert calls == ["forward_backward", "forward_backward", "optim_step"]
    assert server.counters.get(first).optim_step == 1
    assert server.counters.get(second).optim_step == 0


def test_finished_session_refuses_heartbeats_and_work(server: RunningServer) -> None:
    with _http(server) as http:
        model_id = _model(http)
        session_id = model_id.split(":")[0]
        assert http.post("/api/v1/session_heartbeat", json={"session_id": session_id}).is_success
        finish = {"reason": {"type": "success"}, "detail": None}
        assert http.post(f"/api/v1/sessions/{session_id}/finish", json=finish).is_success
        beat = http.post("/api/v1/session_heartbeat", json={"session_id": session_id})
        assert beat.status_code == 410  # the SDK stops its heartbeat loop on 410
        late = _submit_fb(http, model_id, 1)
        assert late.status_code == 410 and "finished" in late.json()["detail"]


def test_unsupported_lora_subsets_are_refused(server: RunningServer) -> None:
    with _http(server) as http:
        sid = http.post("/api/v1/create_session", json=SESSION).json()["session_id"]
        body = {"session_id": sid, "model_seq_id": 0, "base_model": "fake/unigram",
                "lora_config": {"rank": 4, "train_mlp": False}}  # fmt: skip
        resp = http.post("/api/v1/create_model", json=body)
    assert resp.status_code == 400 and "all linear layers" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("192.168.1.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_checkpoints_survive_a_restart_and_ids_stay_unique(
    tmp_path: Path, calls: list[str]
) -> None:
    srv = _start(tmp_path, calls)
    try:
        with _http(srv) as http:
            model_id = _model(http)
            _result(http, _submit_fb(http, model_id, 1).json()["request_id"])
            _result(http, _submit_optim(http, model_id, 2).json()["request_id"])
            save = {"model_id": model_id, "path": "after-1", "seq_id": 3}
            rid = http.post("/api/v1/save_weights", json=save).json()["request_id"]
            path = _result(http, rid).json()["path"]
    finally:
        srv.stop()
    srv = _start(tmp_path, calls)  # same checkpoint directory, fresh process state
    try:
        with _http(srv) as http:
            sid = http.post("/api/v1/create_session", json=SESSION).json()["session_id"]
            load = {"session_id": sid, "model_seq_id": 0, "path": path, "optimizer": True}
            rid = http.post("/api/v1/load_weights", json=load).json()["request_id"]
            loaded = _result(http, rid).json()
    finally:
        srv.stop()
    assert sid != model_id.split(":")[0]  # a new session can never overwrite old checkpoints
    assert loaded["model_id"] == f"{sid}:train:0"
    counts = srv.counters.get(loaded["model_id"])
    assert (counts.lineage_forward_backward, counts.lineage_optim_step) == (1, 1)
    assert counts.loaded_from == path


def _sample(http: httpx.Client, sampler: str, **params: object) -> httpx.Response:
    body = {
        "sampling_session_id": sampler,
        "seq_id": 0,
        "num_samples": params.pop("num_samples", 1),
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [2, 3, 4]}]},
        "sampling_params": {"max_tokens": 5, "temperature": 0.0, **params.pop("sp", {})},
        **params,
    }
    return http.post("/api/v1/asample", json=body)


def test_sampling_sessions_stop_tokens_and_prompt_logprobs(server: RunningServer) -> None:
    from tinker.proto.response_conv import deserialize_sample_response

    with _http(server) as http:
        sid = http.post("/api/v1/create_session", json=SESSION).json()["session_id"]
        session = {"session_id": sid, "sampling_session_seq_id": 0, "base_model": "fake/unigram"}
        sampler = http.post("/api/v1/create_sampling_session", json=session).json()
        sampler_id = sampler["sampling_session_id"]
        assert http.get(f"/api/v1/samplers/{sampler_id}").json()["base_model"] == "fake/unigram"

        sub = _sample(http, sampler_id, num_samples=2, sp={"stop": []}).json()
        assert sub["sample_sequence_ids"] == [f"{sub['request_id']}:{i}" for i in range(2)]
        free = deserialize_sample_response(_result(http, sub["request_id"]).content)
        stop_all = {"stop": list(range(VOCAB))}  # whatever comes first is a stop token
        sub = _sample(http, sampler_id, sp=stop_all, prompt_logprobs=True).json()
        stopped = deserialize_sample_response(_result(http, sub["request_id"]).content)
        refused = _sample(http, sampler_id, topk_prompt_logprobs=3)
        unknown = _sample(http, "s99999:sample:0")

    assert [len(s.tokens) for s in free.sequences] == [5, 5]
    assert [s.stop_reason for s in free.sequences] == ["length", "length"]
    assert len(stopped.sequences[0].tokens) == 1 and stopped.sequences[0].stop_reason == "stop"
    assert stopped.prompt_logprobs is not None and stopped.prompt_logprobs[0] is None
    assert all(lp is not None and lp < 0 for lp in stopped.prompt_logprobs[1:])
    assert refused.status_code == 400 and "topk_prompt_logprobs" in refused.json()["detail"]
    assert unknown.status_code == 404


POST_PATHS = [
    "create_session", "session_heartbeat", "create_model", "get_info", "forward_backward",
    "optim_step", "save_weights", "save_weights_for_sampler", "load_weights",
    "create_sampling_session", "asample", "retrieve_future", "telemetry", "client/config",
]  # fmt: skip


def test_fuzzed_bodies_never_get_a_5xx(server: RunningServer) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
        max_leaves=12,
    )
    with _http(server) as http:
        model_id = _model(http)
        fields = st.fixed_dictionaries(
            {"model_id": st.sampled_from([model_id, "x:train:0", ""])},
            optional={"seq_id": st.integers(-5, 5), "path": st.text(max_size=30),
                      "request_id": st.text(max_size=10), "session_id": st.text(max_size=10)},
        )  # fmt: skip
        bodies = (
            st.binary(max_size=200).map(lambda b: ("raw", b))
            | json_values.map(lambda v: ("json", v))
            | st.builds(lambda d, extra: ("json", {**extra, **d}), fields, st.dictionaries(
                st.sampled_from(["adam_params", "lora_config", "prompt", "optimizer"]),
                json_values, max_size=2))
        )  # fmt: skip

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(POST_PATHS), body=bodies, proto=st.booleans())
        def check(path: str, body: tuple[str, object], proto: bool) -> None:
            kind, value = body
            headers = {"Content-Type": "application/x-protobuf" if proto else "application/json"}
            content = value if kind == "raw" else json.dumps(value).encode()
            resp = http.post(f"/api/v1/{path}", content=content, headers=headers)  # type: ignore[arg-type]
            assert resp.status_code < 500, (path, body, resp.text)
            if resp.status_code >= 400 and resp.status_code != 408:
                assert resp.json()["detail"]

        check()
        assert http.get("/api/v1/healthz").json() == {"status": "ok"}
