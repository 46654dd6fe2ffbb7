"""Hostile requests against ``ulora serve``: one table, each row a request an attacker or a broken
client might send, with the status and message it must get, and proof that nothing was lost.

Every row checks: the status; a message that names the problem (and is clipped, so no caller
value comes back at length); no API key in the answer; no engine call and no counter change (the
request changed nothing); no error logged; and the server still answers. Connection-level abuse
(slow headers, a stalled body, a client that leaves mid-body, a silent connection) follows the
table. Real HTTP on 127.0.0.1 against the numpy fake engine of ``server_fakes``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("tinker")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
zstandard = pytest.importorskip("zstandard")

from server_fakes import KEY, SESSION, fwdbwd_body, http_client, make_model, result_of, start_server  # noqa: E402  # noqa: E402
from ulora_remote.backends.server import RunningServer  # noqa: E402
from ulora_remote.backends.server.limits import MAX_MESSAGE_CHARS  # noqa: E402

PROTO = {"Content-Type": "application/x-protobuf"}
TIMEOUT_S = 0.5  # header and body deadlines of the server under test


@dataclass(frozen=True)
class Served:
    server: RunningServer
    model_id: str
    calls: list[str]

    @property
    def session_id(self) -> str:
        return self.model_id.split(":")[0]


@dataclass(frozen=True)
class Case:
    """One hostile request: ``body(served)`` builds it; the answer must match."""

    name: str
    path: str
    body: Callable[[Served], bytes]
    status: int
    fragment: str
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    method: str = "POST"


def j(value: object) -> Callable[[Served], bytes]:
    return lambda s: json.dumps(value).encode()


def raw(text: bytes) -> Callable[[Served], bytes]:
    return lambda s: text


def optim(**adam: object) -> Callable[[Served], bytes]:
    params = {"learning_rate": 1e-3, **adam}
    return lambda s: json.dumps(
        {"model_id": s.model_id, "seq_id": 1, "adam_params": params}
    ).encode()


def optim_raw(adam: str, seq: str = "1") -> Callable[[Served], bytes]:
    return lambda s: (
        f'{{"model_id": "{s.model_id}", "seq_id": {seq}, "adam_params": {adam}}}'.encode()
    )


def create(**fields: object) -> Callable[[Served], bytes]:
    def build(s: Served) -> bytes:
        body = {"session_id": s.session_id, "model_seq_id": 7, "base_model": "fake/unigram"}
        return json.dumps({**body, **fields}).encode()

    return build


def sample(tokens: list[int], **params: object) -> Callable[[Served], bytes]:
    def build(s: Served) -> bytes:
        # A copy: the table is built again by other suites (the proxy's), and a pop from the
        # captured dict would leave the second build without its num_samples.
        sampling = dict(params)
        body = {
            "base_model": "fake/unigram",
            "num_samples": sampling.pop("num_samples", 1),
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": tokens}]},
            "sampling_params": {"max_tokens": 4, **sampling},
        }
        return json.dumps(body).encode()

    return build


def fwdbwd(tokens: list[int]) -> Callable[[Served], bytes]:
    return lambda s: fwdbwd_body(s.model_id, 1, tokens)


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> Callable[[Served], bytes]:
    return raw(b'{"session_id": ' + opener * depth + closer * depth + b"}")


ZSTD = {**PROTO, "Content-Encoding": "zstd"}
BOMB = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024 + 1))

CASES = [
    # ---- malformed or absurd JSON --------------------------------------------------------
    Case("deep-array-100k", "create_session", nested(100_000), 400, "nests deeper than 32"),
    Case("deep-object-5k", "create_session", raw(b'{"a":' * 5000 + b"1" + b"}" * 5000), 400,
         "nests deeper than 32"),
    Case("deep-array-40", "create_session", nested(40), 400, "levels at $.session_id"),
    Case("int-5000-digits", "create_model", raw(
        b'{"session_id": "s", "model_seq_id": ' + b"9" * 5000 + b', "base_model": "x"}'),
         400, "5000 digits"),
    Case("int-30-digits-seq", "optim_step", optim_raw('{"learning_rate": 0.1}', "9" * 30), 400,
         "30 digits"),
    Case("int-over-int64", "optim_step", optim_raw('{"learning_rate": 0.1}', str(2**63)), 400,
         "fit in 64 bits"),
    Case("float-overflow", "optim_step", optim_raw('{"learning_rate": 1e999}'), 400,
         "overflows a 64-bit float"),
    Case("nan-literal", "optim_step", optim_raw('{"learning_rate": NaN}'), 400,
         "NaN is not a JSON number"),
    Case("infinity-literal", "optim_step", optim_raw('{"learning_rate": -Infinity}'), 400,
         "-Infinity is not a JSON number"),
    Case("string-100k", "create_model", create(session_id="x" * 100_000), 400,
         "has 100000 characters"),
    Case("body-9MB", "create_session", raw(b'{"x": "' + b"y" * (9 * 1024 * 1024) + b'"}'),
         413, "exceeds the limit"),
    Case("array-300k", "asample", sample([2] * 300_000), 400, "has 300000 items"),
    Case("object-5k-keys", "create_model", create(user_metadata={str(i): "v" for i in range(5000)}),
         400, "5000 keys"),
    Case("not-utf8", "create_session", raw(b'{"x": "\xff\xfe"}'), 400, "not valid JSON"),
    Case("not-json", "create_session", raw(b"{'single': 'quotes'}"), 400, "not valid JSON"),
    Case("json-string", "create_session", raw(b'"hello"'), 400, "not a JSON str"),
    Case("json-null", "create_session", raw(b"null"), 400, "not a JSON NoneType"),
    # ---- wrong types and missing fields ----------------------------------------------------
    Case("session-id-int", "create_model", create(session_id=5), 400, "session_id"),
    Case("seq-id-text", "create_model", create(model_seq_id="abc"), 400, "model_seq_id"),
    Case("lora-config-list", "create_model", create(lora_config=[1, 2]), 400, "lora_config"),
    Case("empty-body", "create_model", raw(b""), 400, "invalid request"),
    Case("adam-params-string", "optim_step", optim_raw('"fast"'), 400, "adam_params"),
    Case("weights-info-no-path", "weights_info", j({"tinker_path": 5}), 400,
         "string tinker_path"),
    # ---- absurd values ----------------------------------------------------------------------
    Case("seq-id-zero", "optim_step", optim_raw('{"learning_rate": 0.1}', "0"), 400,
         "already past"),
    Case("seq-id-negative", "optim_step", optim_raw('{"learning_rate": 0.1}', "-5"), 400,
         "already past"),
    Case("seq-id-far-ahead", "optim_step", optim_raw('{"learning_rate": 0.1}', "1025"), 400,
         "too far ahead"),
    Case("lr-negative", "optim_step", optim(learning_rate=-1.0), 400,
         "adam_params.learning_rate=-1.0"),
    Case("beta1-one", "optim_step", optim(beta1=1.0), 400, "adam_params.beta1=1.0"),
    Case("eps-zero", "optim_step", optim(eps=0.0), 400, "adam_params.eps=0.0"),
    Case("weight-decay-negative", "optim_step", optim(weight_decay=-0.1), 400,
         "adam_params.weight_decay"),
    Case("rank-2^40", "create_model", create(lora_config={"rank": 2**40}), 400, "[1, 1024]"),
    Case("rank-zero", "create_model", create(lora_config={"rank": 0}), 400, "[1, 1024]"),
    Case("num-samples-1e6", "asample", sample([2, 3], num_samples=1_000_000), 400,
         "num_samples"),
    Case("max-tokens-1e9", "asample", sample([2, 3], max_tokens=10**9), 400, "max_tokens"),
    Case("temperature-negative", "asample", sample([2, 3], temperature=-1.0), 400,
         "temperature"),
    Case("prompt-over-context", "asample", sample([2] * 70), 400, "has 64"),
    Case("prompt-plus-tokens-over-context", "asample", sample([2] * 60, max_tokens=10), 400,
         "needs 69 positions"),
    Case("token-id-outside-vocab", "asample", sample([2, 99]), 400, "token ids must be in"),
    Case("unserved-base-model", "create_model", create(base_model="meta-llama/Llama-3.2-1B"),
         400, "not served here"),
    # ---- protobuf forward_backward ------------------------------------------------------------
    Case("fb-datum-over-context", "forward_backward", fwdbwd([2] * 65), 400,
         "needs 65 positions", headers=PROTO),
    Case("fb-token-outside-vocab", "forward_backward", fwdbwd([2, 3, 10**6]), 400,
         "token ids must be in", headers=PROTO),
    Case("fb-garbage", "forward_backward", raw(b"\x0a\xff\xff\xff\xff\x0f"), 400, "protobuf",
         headers=PROTO),
    Case("fb-zstd-bomb", "forward_backward", raw(BOMB), 400, "decompressed body exceeds",
         headers=ZSTD),
    Case("fb-gzip", "forward_backward", fwdbwd([2, 3]), 400, "Content-Encoding",
         headers={**PROTO, "Content-Encoding": "gzip"}),
    Case("fb-as-json", "forward_backward", j({"model_id": "x"}), 400, "protobuf body"),
    # ---- names, paths and ids -----------------------------------------------------------------
    Case("sampler-id-5k", "samplers/" + "z" * 5000, raw(b""), 404, "characters cut",
         method="GET"),
    Case("finish-unknown-5k", "sessions/" + "q" * 5000 + "/finish", j({}), 404,
         "characters cut"),
    Case("training-run-unknown", "training_runs/s99:train:0", raw(b""), 404, "not known",
         method="GET"),
    Case("weights-info-traversal", "weights_info",
         j({"tinker_path": "tinker://../../etc/weights/passwd"}), 400, "tinker://MODEL_ID"),
    Case("export-traversal", "save_weights_external",
         lambda s: json.dumps({"model_id": s.model_id, "path": "../../x", "seq_id": 1}).encode(),
         400, "checkpoint name"),
    Case("export-encrypted", "save_weights_external",
         lambda s: json.dumps({"model_id": s.model_id, "path": "x", "seq_id": 1,
                               "age_encryption_recipients": ["age1xyz"]}).encode(),
         400, "does not encrypt"),
    Case("future-unknown", "retrieve_future", j({"request_id": "req-999999"}), 404, "unknown"),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    calls: list[str] = []
    srv = start_server(
        tmp_path_factory.mktemp("hostile"),
        calls,
        header_timeout_s=TIMEOUT_S,
        body_timeout_s=TIMEOUT_S,
    )
    with http_client(srv) as http:
        model_id = make_model(http)
    yield Served(srv, model_id, calls)
    srv.stop()


def _send(served: Served, case: Case) -> tuple[int, str, dict]:
    body = case.body(served)
    with http_client(served.server) as http:
        resp = http.request(case.method, f"/api/v1/{case.path}", content=body, headers=case.headers)
        return resp.status_code, resp.text, dict(resp.headers)


def _ours(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The records this module's tests answer for. They speak raw HTTP and start no SDK client,
    so a record of the SDK's own loggers ("tinker.…") is another test's session heartbeat, still
    running after its server has gone (pytest's log capture sees every thread)."""
    return [r for r in records if not r.name.startswith("tinker.")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_refused_and_changes_nothing(
    served: Served, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    srv = served.server
    calls, counts, cycles = list(served.calls), srv.counters.snapshot(), srv.cycles
    with caplog.at_level(logging.WARNING):
        status, text, _ = _send(served, case)
    assert status == case.status, text[:500]
    detail = json.loads(text)["detail"]
    assert case.fragment in detail
    assert len(detail) <= MAX_MESSAGE_CHARS + 40  # clipped: nothing echoed at length
    assert KEY not in text
    assert served.calls == calls  # no engine call ran
    assert srv.counters.snapshot() == counts and srv.cycles == cycles
    assert [r for r in _ours(caplog.records) if r.levelno >= logging.WARNING] == []
    with http_client(srv) as http:
        assert http.get("/api/v1/healthz").json() == {"status": "ok"}


def test_the_model_still_trains_after_the_table(served: Served) -> None:
    """Nothing the table sent was queued: seq_id 1 is still the next to run, and runs once."""
    with http_client(served.server) as http:
        rid = http.post(
            "/api/v1/forward_backward", content=fwdbwd_body(served.model_id, 1), headers=PROTO
        ).json()["request_id"]
        assert result_of(http, rid).status_code == 200
    assert served.calls.count("forward_backward") == 1
    assert served.server.counters.get(served.model_id).forward_backward == 1


# ---- connection-level abuse ------------------------------------------------------------------


def _connect(srv: RunningServer) -> socket.socket:
    host, port = srv.base_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _counter(srv: RunningServer, name: str) -> int:
    with http_client(srv) as http:
        return int(http.get("/ulora/v1/counters").json()[name])


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000,
        b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Length: -5",
        b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4",
        b"GARBAGE",
    ],
    ids=["content-length-5000-digits", "content-length-negative", "content-length-list", "junk"],
)
def test_broken_http_framing_gets_400_and_the_server_goes_on(served: Served, head: bytes) -> None:
    with _connect(served.server) as sock:
        sock.sendall(head + b"\r\n\r\n{}")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400")
    with http_client(served.server) as http:
        assert http.get("/api/v1/healthz").status_code == 200


def test_slow_headers_get_408_and_the_connection_closes(served: Served) -> None:
    with _connect(served.server) as sock:
        sock.sendall(b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.monotonic()
        answer = _read_all(sock)  # returns when the server closes the connection
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request headers not received within 0.5 s" in answer
    assert TIMEOUT_S * 0.5 < waited < 10  # closed by the deadline, not by a test timeout


def test_a_silent_connection_is_closed(served: Served) -> None:
    with _connect(served.server) as sock:
        assert b"408" in _read_all(sock)


def test_a_stalled_body_gets_408_and_nothing_runs(served: Served) -> None:
    calls = list(served.calls)
    with _connect(served.server) as sock:
        head = (
            "POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\n"
            f"X-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"tags": [')  # 10 of the 100 bytes promised
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request body not received within 0.5 s (10 bytes arrived)" in answer
    assert KEY.encode() not in answer
    assert served.calls == calls


def test_a_client_leaving_mid_body_is_counted_not_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    before = _counter(served.server, "client_disconnects")
    with caplog.at_level(logging.DEBUG, logger="ulora_remote"):
        for _ in range(5):
            with _connect(served.server) as sock:
                head = (
                    "POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\n"
                    f"X-API-Key: {KEY}\r\nContent-Length: 100\r\n\r\n"
                )
                sock.sendall(head.encode() + b'{"tags"')
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while _counter(served.server, "client_disconnects") < before + 5:
            assert time.monotonic() < deadline, "the disconnects were not seen"
            time.sleep(0.05)
    assert [r for r in _ours(caplog.records) if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in _ours(caplog.records))  # no traceback
    with http_client(served.server) as http:
        assert http.post("/api/v1/create_session", json=SESSION).status_code == 200


def test_wrong_keys_are_never_echoed_or_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "tml-wrong-" + "k" * 40
    with caplog.at_level(logging.DEBUG):
        for key in (wrong, KEY[:-1], ""):
            with http_client(served.server, key or None) as http:
                resp = http.post("/api/v1/create_session", json=SESSION)
            assert resp.status_code == 401
            assert "API key" in resp.json()["detail"]
            assert wrong not in resp.text and KEY not in resp.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert wrong not in logged and KEY not in logged


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--api-key", ""], {}, "--api-key is empty"),
        (["--api-key", "   "], {}, "--api-key is empty"),
        ([], {"ULORA_SERVE_API_KEY": ""}, "ULORA_SERVE_API_KEY is empty"),
        (["--host", "0.0.0.0"], {}, "without an API key"),
        (["--header-timeout-s", "inf"], {}, "header_timeout_s=inf"),
        (["--body-timeout-s", "0"], {}, "body_timeout_s=0.0"),
        (["--cycle-s", "nan"], {}, "cycle_s=nan"),
        (["--threads", "0"], {}, "threads=0"),
        (["--fault-rate", "2"], {}, "fault rate=2.0"),
    ],
)
def test_serve_refuses_unsafe_options_before_loading_anything(
    argv: list[str],
    env: dict[str, str],
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ulora_remote.cli import main

    monkeypatch.delenv("ULORA_SERVE_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(["serve", "--port", "0", "--checkpoint-dir", str(tmp_path / "c"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert not (tmp_path / "c").exists()  # refused before anything was created


def test_serve_without_the_extra_prints_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from ulora_remote.cli import main

    monkeypatch.setitem(sys.modules, "starlette", None)  # as if starlette were not installed
    for name in [m for m in sys.modules if m.startswith("ulora_remote.backends.server")]:
        monkeypatch.delitem(sys.modules, name)
    code = main(["serve", "--port", "8000", "--help"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'ulora-remote[server,local]'" in err
    assert "starlette is not installed" in err
    assert "invalid choice" not in err
