"""Pure parts of the Tinker backend: error mapping, key scrubbing, text cleaning, the extra."""

from __future__ import annotations

import socket
import sys

import httpx
import pytest

from ulora_remote.errors import (
    BackendError,
    ConfigurationError,
    MissingExtraError,
    RemoteError,
    RemoteTimeoutError,
    StateLostError,
)

tinker = pytest.importorskip("tinker")

from ulora_remote.backends.tinker.futures import map_sdk_error, scrub  # noqa: E402
from ulora_remote.backends.tinker.render import clean_completion  # noqa: E402
from ulora_remote.backends.tinker.session import resolve_api_key  # noqa: E402

FAKE_KEY = "tml-test-not-a-real-key"
REQUEST = httpx.Request("POST", "http://tinker.test/api/v1/forward_backward")


def status_error(status: int, text: str = "") -> Exception:
    response = httpx.Response(status, request=REQUEST, json={"detail": text})
    return tinker.APIStatusError(f"Error code: {status} - {text}", response=response, body=None)


def test_a_410_or_an_expired_promise_is_state_lost() -> None:
    from tinker.lib.retryable_exception import RetryableException

    expired = RetryableException("Promise expired/broken for request req-1")
    assert isinstance(
        map_sdk_error(expired, "forward_backward", training=True, secret=None), StateLostError
    )
    assert isinstance(
        map_sdk_error(status_error(410), "optim_step", training=True, secret=None), StateLostError
    )


@pytest.mark.parametrize(
    "exc", [status_error(503), status_error(429), tinker.APIConnectionError(request=REQUEST)]
)
def test_exhausted_retries_lose_training_state_but_not_other_requests(exc: Exception) -> None:
    assert isinstance(map_sdk_error(exc, "optim_step", training=True, secret=None), StateLostError)
    other = map_sdk_error(exc, "get_info", training=False, secret=None)
    assert isinstance(other, RemoteError) and not isinstance(other, StateLostError)


def test_a_failure_the_service_blames_on_the_user_is_not_replayed() -> None:
    user = tinker.RequestFailedError("bad tokens", request_id="r", category="user")
    server = tinker.RequestFailedError("worker died", request_id="r", category="server")
    error = map_sdk_error(user, "forward_backward", training=True, secret=None)
    assert isinstance(error, BackendError) and not isinstance(error, RemoteError)
    assert isinstance(
        map_sdk_error(server, "forward_backward", training=True, secret=None), StateLostError
    )


def test_a_refused_key_is_a_configuration_error_without_the_key() -> None:
    error = map_sdk_error(
        status_error(401, f"bad key {FAKE_KEY}"), "create_session", training=False, secret=FAKE_KEY
    )
    assert isinstance(error, ConfigurationError) and "TINKER_API_KEY" in str(error)
    assert FAKE_KEY not in str(error)
    assert scrub(f"x {FAKE_KEY} y", FAKE_KEY) == "x tml-<redacted> y"


def test_key_resolution_checks_the_prefix_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    assert resolve_api_key(None) == FAKE_KEY
    with pytest.raises(ConfigurationError, match="must start with 'tml-'") as caught:
        resolve_api_key("sk-abcdef")
    assert "sk-abcdef" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "eos", "expected"),
    [("atcay</s>junk", "</s>", "atcay"), (" eggway\nnext", "</s>", "eggway"), ("ay", None, "ay")],
)
def test_generations_are_cut_at_eos_or_newline(text: str, eos: str | None, expected: str) -> None:
    assert clean_completion(text, eos) == expected


def test_a_missing_tinker_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ulora_remote.backends.tinker import TinkerBackend

    monkeypatch.setitem(sys.modules, "tinker", None)  # import tinker now raises ImportError
    with pytest.raises(MissingExtraError, match=r"ulora-remote\[tinker\]"):
        TinkerBackend("meta-llama/Llama-3.2-1B", api_key=FAKE_KEY)


def test_a_closed_local_port_fails_before_any_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from ulora_remote.backends.tinker import TinkerBackend

    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The default first-contact deadline (60 s) stays: the probe must answer long before it.
    with pytest.raises(RemoteError, match=rf"nothing accepts connections at http://127.0.0.1:{port}"
                       r" \(Connection refused\).*ulora serve.*backend.base_url") as caught:
        TinkerBackend("meta-llama/Llama-3.2-1B", base_url=f"http://127.0.0.1:{port}",
                      api_key=FAKE_KEY)
    assert not isinstance(caught.value, RemoteTimeoutError)
    assert FAKE_KEY not in str(caught.value)


def test_a_silent_service_fails_at_the_first_contacts_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ulora_remote.backends.tinker import TinkerBackend

    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    # A socket that listens and never answers: connections are accepted by the kernel, the
    # requests wait forever; the SDK alone would retry for about 5 minutes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        with pytest.raises(RemoteTimeoutError, match="get_server_capabilities did not finish"):
            TinkerBackend(
                "meta-llama/Llama-3.2-1B",
                base_url=f"http://127.0.0.1:{port}",
                api_key=FAKE_KEY,
                connect_timeout_s=1.0,
            )
