"""A fault storm behind ``ulora proxy``: ``ulora serve`` injects 429, 500, 408, 410 and dropped
connections into 10% of requests, the proxy's own included. The unmodified SDK, recovering as
test_server_sdk's run does (a 410 rebuilds from the last checkpoint), must execute every step
exactly once and get the fault-free run's losses (the guard keeps every example while it builds
its reference, so a proxied run trains exactly as a direct one)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tinker")
pytest.importorskip("torch")
pytest.importorskip("uvicorn")

import tinker  # noqa: E402
import torch  # noqa: E402
from test_server_sdk import KEY, _base_model, _server, run_with_recovery  # noqa: E402
from ulora_remote.backends.proxy import ProxyConfig, proxy_in_thread  # noqa: E402
from ulora_remote.backends.server import FaultConfig  # noqa: E402

pytestmark = pytest.mark.slow


def test_fault_storm_through_the_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    clean = _server(tmp_path / "clean", api_key=KEY)
    try:
        direct = tinker.ServiceClient(base_url=clean.base_url, api_key=KEY)
        base = _base_model(clean.base_url)
        reference, _, _ = run_with_recovery(direct, base, 15)
        direct.close("success").result(timeout=60)
    finally:
        clean.stop()

    srv = _server(tmp_path / "storm", api_key=KEY, faults=FaultConfig(rate=0.1, seed=1),
                  long_poll_s=2.0)
    proxy = proxy_in_thread(ProxyConfig(upstream=srv.base_url, out=tmp_path / "records"))
    try:
        client = tinker.ServiceClient(base_url=proxy.base_url, api_key=KEY)
        losses, model_id, rebuilds = run_with_recovery(client, base, 15)
        client.close("success").result(timeout=60)
        counts = srv.counters.snapshot()
    finally:
        proxy.stop()
        srv.stop()
    assert losses == reference
    upstream = proxy.proxy.lanes[model_id].upstream_id
    final = counts[upstream]
    assert (final.lineage_forward_backward, final.lineage_optim_step) == (15, 15)
    for c in counts.values():  # no model ever ran a step twice
        assert c.forward_backward == c.optim_step or c.lost
    assert sum(srv.faults.injected.values()) >= 3, srv.faults.injected
