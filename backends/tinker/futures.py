"""Futures over the SDK's own futures, and the mapping of SDK exceptions to ours.

The SDK's ``TrainingClient`` methods return an ``APIFuture`` at once: submission, its HTTP
retries and the polling of ``/retrieve_future`` run on the SDK's event-loop thread. So wrapping
that future adds no blocking at submit time; ``result()`` adds the wall-clock deadline the SDK
does not have and turns SDK exceptions into this package's (``errors.py``).

What counts as a lost training state (``StateLostError``, the runner then reloads the last
checkpoint and replays): a 410 on the future (the SDK raises ``RetryableException``, "promise
expired"), the SDK's retries exhausted on a transient status or connection error, or a failure of
unknown cause. A failure the service attributes to the user (category ``user``, 4xx other than
408/409/410/429) is deterministic and is a ``BackendError``: replaying it would fail again.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ulora_remote.errors import (
    BackendError,
    ConfigurationError,
    RemoteError,
    RemoteTimeoutError,
    StateLostError,
    UloraError,
)

__all__ = ["SdkFuture", "call_with_deadline", "map_sdk_error", "scrub"]

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408, 409, 429})


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by a fixed marker."""
    if secret and secret in text:
        return text.replace(secret, "tml-<redacted>")
    return text


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def map_sdk_error(
    exc: BaseException, request: str, *, training: bool, secret: str | None
) -> UloraError:
    """Translate an exception raised by the SDK for ``request`` into ours.

    Args:
        exc: what the SDK raised.
        request: a human name for the request, e.g. ``"forward_backward (step 12)"``.
        training: the request changes training state (forward_backward, optim_step, save):
            an unknown outcome then means the state is lost.
        secret: the API key, removed from every message.

    Returns:
        The exception to raise (the caller chains it).
    """
    from tinker import APIConnectionError, APIStatusError, RequestFailedError
    from tinker.lib.retryable_exception import RetryableException

    detail = scrub(f"{type(exc).__name__}: {exc}", secret)
    status = _status_of(exc)
    if isinstance(exc, UloraError):
        return exc
    if status in (401, 403):
        return ConfigurationError(
            f"the Tinker service refused the API key during {request} (HTTP {status}); check "
            "that TINKER_API_KEY holds a valid, unrevoked key for this service "
            f"({detail.split(' - ', 1)[0]})"
        )
    if isinstance(exc, RetryableException) or status == 410:
        return StateLostError(
            f"{request}: the service no longer holds this request (HTTP 410, promise expired); "
            f"reload the last checkpoint and replay ({detail})"
        )
    transient = isinstance(exc, APIConnectionError) or (
        status is not None and (status in _TRANSIENT_STATUS or status >= 500)
    )
    if isinstance(exc, RequestFailedError):
        category = str(getattr(exc, "category", "")).lower()
        if "user" in category:
            return BackendError(f"{request} was rejected by the service: {detail}")
        transient = True  # a server-side failure of unknown effect
    poisoned = isinstance(exc, RuntimeError) and "poisoned" in str(exc)
    if training and (transient or poisoned):
        return StateLostError(
            f"{request}: the outcome is unknown after the SDK's retries ({detail}); nothing is "
            "resubmitted: reload the last checkpoint and replay"
        )
    if transient or isinstance(exc, APIStatusError):
        return RemoteError(f"{request} failed: {detail}")
    return BackendError(f"{request} failed: {detail}")


class SdkFuture(Generic[T]):
    """Our ``Future`` over an SDK ``APIFuture``: a deadline on every wait, our exceptions.

    Args:
        sdk_future: the SDK's future (anything with ``result(timeout)``).
        request: the request's name for messages.
        convert: turns the SDK's value into ours.
        deadline_s: the longest any single ``result()`` waits.
        training: see ``map_sdk_error``.
        secret: the API key to keep out of messages.
        on_error: called with our exception before it is raised (the backend marks its
            client dead on a ``StateLostError``).
        is_stale: returns True when the client that ran this request has been replaced; the
            result then belongs to discarded state and is refused.
    """

    def __init__(
        self,
        sdk_future: Any,
        request: str,
        convert: Callable[[Any], T],
        *,
        deadline_s: float,
        training: bool,
        secret: str | None,
        on_error: Callable[[UloraError], None] | None = None,
        is_stale: Callable[[], bool] | None = None,
    ) -> None:
        self._sdk_future = sdk_future
        self._request = request
        self._convert = convert
        self._deadline_s = deadline_s
        self._training = training
        self._secret = secret
        self._on_error = on_error
        self._is_stale = is_stale
        self._value: T | None = None
        self._done = False

    def result(self, timeout: float | None = None) -> T:
        """Wait at most ``min(timeout, deadline_s)`` seconds; see ``backend.Future``.

        Raises:
            RemoteTimeoutError: the wait passed its deadline (the request may still run).
            StateLostError: the training state is lost, or this request ran on a client
                that has since been replaced.
            BackendError, RemoteError, ConfigurationError: the request failed.
        """
        if self._done:
            return self._value  # type: ignore[return-value]
        if self._is_stale is not None and self._is_stale():
            raise StateLostError(
                f"{self._request} ran on a training client that has been replaced; its result "
                "belongs to discarded state"
            )
        wait_s = self._deadline_s if timeout is None else min(timeout, self._deadline_s)
        try:
            raw = self._sdk_future.result(timeout=wait_s)
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            raise RemoteTimeoutError(
                f"{self._request} did not finish within {wait_s:g} s (wall clock); it may still "
                "run on the service"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - every SDK failure is translated
            error = map_sdk_error(exc, self._request, training=self._training, secret=self._secret)
            if self._on_error is not None:
                self._on_error(error)
            clean = scrub(str(exc), self._secret) == str(exc)
            raise error from (exc if clean else None)
        self._value = self._convert(raw)
        self._done = True
        return self._value

    def cancel(self) -> None:
        """Stop waiting for the SDK future (the SDK cancels its task, which frees its turn)."""
        inner = getattr(self._sdk_future, "future", None)
        if callable(inner):
            inner().cancel()


def call_with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run a blocking SDK call under a wall-clock deadline.

    Some SDK calls block the caller before they return a future: building a client fetches
    ``/client/config`` and opens the session synchronously, retrying connection errors for up
    to 300 s. They run on a daemon thread here, so that an unreachable service fails within
    ``timeout_s`` (the thread is abandoned and cannot keep the process alive at exit).

    Raises:
        RemoteTimeoutError: ``fn`` did not return within ``timeout_s``.
        Exception: whatever ``fn`` raised.
    """
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.set_exception(exc)

    threading.Thread(target=run, name=f"ulora-tinker-{what}", daemon=True).start()
    try:
        return outcome.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError as exc:
        if outcome.done():  # fn itself raised a TimeoutError
            raise
        raise RemoteTimeoutError(
            f"{what} did not finish within {timeout_s:g} s (wall clock); is the Tinker service "
            "reachable (base_url / TINKER_BASE_URL)?"
        ) from exc
