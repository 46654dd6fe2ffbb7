"""``ulora serve``'s hostile-request table, sent through ``ulora proxy``: every row must get the
status and message it gets directly, with no traceback logged, no key in any answer or log, and
nothing run upstream; the proxied model still trains afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest.importorskip("tinker")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("zstandard")

import httpx  # noqa: E402
from server_fakes import KEY, fwdbwd_body, make_model, result_of, start_server  # noqa: E402
from test_server_hostile import CASES, PROTO, Case, Served  # noqa: E402
from ulora_remote.backends.proxy import ProxyConfig, RunningProxy, proxy_in_thread  # noqa: E402
from ulora_remote.backends.server.limits import MAX_MESSAGE_CHARS  # noqa: E402


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, RunningProxy]]:
    calls: list[str] = []
    srv = start_server(tmp_path_factory.mktemp("hostile"), calls, header_timeout_s=0.5,
                       body_timeout_s=0.5)
    proxy = proxy_in_thread(ProxyConfig(upstream=srv.base_url,
                                        out=tmp_path_factory.mktemp("records"),
                                        body_timeout_s=0.5), header_timeout_s=0.5)
    with _client(proxy) as http:
        model_id = make_model(http)
    yield Served(srv, model_id, calls), proxy
    proxy.stop()
    srv.stop()


def _client(proxy: RunningProxy) -> httpx.Client:
    return httpx.Client(base_url=proxy.base_url, headers={"X-API-Key": KEY}, timeout=30)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_through_the_proxy(
    proxied: tuple[Served, RunningProxy], case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    served, proxy = proxied
    srv = served.server
    calls, counts = list(served.calls), srv.counters.snapshot()
    with caplog.at_level(logging.DEBUG), _client(proxy) as http:
        resp = http.request(case.method, f"/api/v1/{case.path}", content=case.body(served),
                            headers=case.headers)
    assert resp.status_code == case.status, resp.text[:500]
    detail = resp.json()["detail"]
    assert case.fragment in detail and len(detail) <= MAX_MESSAGE_CHARS + 40
    assert KEY not in resp.text
    assert served.calls == calls and srv.counters.snapshot() == counts  # nothing ran upstream
    # The proxy's and the server's own loggers (an SDK client of another test, still sending
    # heartbeats to a proxy that test stopped, may log its connection errors meanwhile).
    ours = [r for r in caplog.records if r.name.startswith(("ulora_remote", "uvicorn",
                                                            "starlette"))]
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in ours)
    assert "Traceback" not in logged
    assert KEY not in "\n".join(r.getMessage() for r in caplog.records)
    assert [r for r in ours if r.levelno >= logging.ERROR] == []


def test_the_model_still_trains_through_the_proxy(
    proxied: tuple[Served, RunningProxy]
) -> None:
    """The refused requests left no gap in the model's seq_ids, on either side of the proxy."""
    served, proxy = proxied
    with _client(proxy) as http:
        lane = proxy.proxy.lanes[served.model_id]
        seq = lane.next_seq
        sent = http.post("/api/v1/forward_backward", content=fwdbwd_body(served.model_id, seq),
                         headers=PROTO)
        assert sent.status_code == 200, sent.text
        assert result_of(http, sent.json()["request_id"]).status_code == 200
    assert served.server.counters.get(served.model_id).forward_backward == 1
