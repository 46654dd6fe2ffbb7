"""The Tinker backend's start on a service at its limits: a creation queued at the cap of live
LoRAs is waited for (and ``close()`` from another thread ends the wait), a refusal the SDK gives
up on is asked again with backoff. Real HTTP against ``ulora serve`` with the numpy fake engine
of ``test_server_protocol`` (no torch)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("tinker")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from server_fakes import KEY  # noqa: E402
from server_fakes import start_server as _start  # noqa: E402
from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402
from ulora_remote.backends.tinker.start import StartPolicy, is_refusal  # noqa: E402

from ulora_remote.errors import BackendError, ConfigurationError  # noqa: E402


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)


def _backend(url: str, **kw: object) -> TinkerBackend:
    return TinkerBackend("fake/unigram", rank=4, seed=0, base_url=url, api_key=KEY,
                         timeout_s=30, **kw)  # type: ignore[arg-type]


def test_a_queued_start_waits_for_a_free_slot_and_close_ends_the_wait(tmp_path: Path) -> None:
    srv = _start(tmp_path, [], max_live_models=1)
    try:
        first = _backend(srv.base_url)
        assert first.model_id  # the only slot
        second = _backend(srv.base_url)
        started: list[str] = []
        waiter = threading.Thread(target=lambda: started.append(second.model_id), daemon=True)
        waiter.start()
        waiter.join(1.5)
        assert waiter.is_alive() and not started  # queued: paused_rate_limit, no deadline
        first.close()  # its session ends, the slot frees
        waiter.join(30)
        assert started and started[0].endswith(":train:0")
        second.close()

        third, fourth = _backend(srv.base_url), _backend(srv.base_url)
        assert third.model_id
        errors: list[BaseException] = []

        def start_fourth() -> None:
            try:
                fourth.model_id  # noqa: B018 - the start itself is the point
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        waiter = threading.Thread(target=start_fourth, daemon=True)
        waiter.start()
        time.sleep(1.0)
        fourth.close("interrupted")  # a sweep stopping on Ctrl-C
        waiter.join(10)
        third.close()
    finally:
        srv.stop()
    assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], BackendError)
    assert "closed while the start waited" in str(errors[0])


def test_a_refusal_the_sdk_gives_up_on_is_asked_again(tmp_path: Path, caplog) -> None:
    srv = _start(tmp_path, [], refuse_creates=13)  # the SDK tries 11 times, then we ask again
    try:
        backend = _backend(srv.base_url)
        with caplog.at_level("WARNING", logger="ulora_remote.backends.tinker.start"):
            assert backend.model_id
        backend.close()
    finally:
        srv.stop()
    assert srv.service.creates_refused == 13
    assert "refused the start" in caplog.text and "429" in caplog.text


def test_what_counts_as_a_refusal() -> None:
    import httpx
    from tinker import RateLimitError, RequestFailedError
    from tinker.types import RequestErrorCategory

    request = httpx.Request("POST", "http://x/api/v1/create_model")
    limited = RateLimitError("rate limited", response=httpx.Response(429, request=request),
                             body=None)
    assert is_refusal(limited)
    full = RequestFailedError("max number of clients reached", request_id="r",
                              category=RequestErrorCategory.Unknown)
    assert is_refusal(full)
    bad = RequestFailedError("rate limit field is invalid", request_id="r",
                             category=RequestErrorCategory.User)
    assert not is_refusal(bad)  # the service blames the request: asking again cannot help
    assert not is_refusal(ValueError("rate limit"))
    delays = [StartPolicy().delay(n) for n in range(1, 10)]
    assert 0.75 <= delays[0] <= 1.25 and all(d <= 60 * 1.25 for d in delays)
    with pytest.raises(ConfigurationError, match="start_timeout_s"):
        _backend("http://127.0.0.1:1", start_timeout_s=0)
