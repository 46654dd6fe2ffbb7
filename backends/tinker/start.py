"""Starting a training client on a service that may queue or refuse the start.

The hosted service caps how many LoRAs a user has live at once. At the cap a model creation is
queued, not failed: its future answers ``try_again`` with ``queue_state = "paused_rate_limit"``
(``tinker.types.TryAgainResponse``; the SDK keeps polling and its ``QueueStateLogger`` warns
"concurrent training clients rate limit hit" only after 15 minutes) until a slot frees. Users of
tinker-cookbook running many experiments meet it as "paused ... concurrent LoRA rate limit hit"
(tinker-cookbook issues #55 and #730). Model creation can also be rate-limited with HTTP 429,
which the SDK's HTTP layer retries 10 times (honouring ``retry-after``) before it raises.

So a start here, of a fresh client or of one built from a checkpoint:

- waits for a queued creation without a wall-clock deadline by default (``StartPolicy``),
  in short slices, so that ``close()`` from another thread (a sweep stopping on Ctrl-C) ends it;
- when the SDK gives up on a refusal (a 429, or a creation the service failed with a message
  that names a rate limit or its capacity), waits with exponential backoff and asks again.
  Creating a client changes no training state, and a refused creation was never enqueued, so
  asking again is safe. Training requests are never resubmitted (they are not started here).

Every other failure is raised as the SDK raised it, for the caller to translate.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ulora_remote.errors import BackendError, RemoteTimeoutError

from .futures import call_with_deadline, scrub

__all__ = ["StartPolicy", "is_refusal", "start_client"]

logger = logging.getLogger(__name__)

# Messages of a creation the service failed because of a limit, not because of the request.
_LIMIT_TEXT = re.compile(r"rate.?limit|capacity|concurrent|too many|max number of", re.I)


@dataclass(frozen=True)
class StartPolicy:
    """How long a start may take and how refusals are retried.

    Attributes:
        deadline_s: the longest a start may take in all, queued time and retries included
            (seconds); None waits as long as the service keeps queueing or refusing.
        first_delay_s: the wait after the first refusal; doubled after each further one.
        max_delay_s: the longest wait between two tries.
        slice_s: how often a waiting start checks whether its backend was closed.
        report_every_s: how often a long wait is logged (INFO).
    """

    deadline_s: float | None = None
    first_delay_s: float = 1.0
    max_delay_s: float = 60.0
    slice_s: float = 1.0
    report_every_s: float = 60.0

    def delay(self, refusals: int) -> float:
        """The wait after the ``refusals``-th refusal: exponential, capped, ±25% jitter."""
        base = min(self.max_delay_s, self.first_delay_s * 2 ** max(0, refusals - 1))
        return float(base * (0.75 + 0.5 * random.random()))


def is_refusal(exc: BaseException) -> bool:
    """True when the service turned the start away for a limit, so asking again later is right:
    HTTP 429, or a failed creation (``RequestFailedError``) whose message names a rate limit or
    capacity. A failure the service blames on the request itself is not a refusal."""
    if getattr(exc, "status_code", None) == 429:
        return True
    from tinker import RequestFailedError

    if isinstance(exc, RequestFailedError):
        user = "user" in str(getattr(exc, "category", "")).lower()
        return not user and bool(_LIMIT_TEXT.search(str(exc)))
    return False


def start_client(
    submit: Callable[[], Any],
    what: str,
    *,
    policy: StartPolicy,
    is_closed: Callable[[], bool],
    submit_timeout_s: float,
    secret: str | None,
) -> Any:
    """Submit a client creation with ``submit()`` and return the client once the service has
    started it, retrying refusals with backoff (see the module docstring).

    Args:
        submit: returns the SDK's future of the client (it may block while the SDK opens the
            session; that part gets ``submit_timeout_s``).
        what: the request's name for messages.
        policy: deadline and backoff.
        is_closed: True once the backend is closed; the start then stops.
        submit_timeout_s: the deadline of ``submit()`` itself.
        secret: the API key, kept out of messages.

    Raises:
        BackendError: the backend was closed while the start waited.
        RemoteTimeoutError: ``policy.deadline_s`` passed.
        Exception: any failure that is not a refusal, as the SDK raised it.
    """
    t0 = time.monotonic()
    refusals = 0
    while True:
        try:
            sdk_future = call_with_deadline(submit, submit_timeout_s, what)
            return _wait(sdk_future, what, t0, policy, is_closed)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            refusals += 1
            delay = policy.delay(refusals)
            detail = scrub(f"{type(exc).__name__}: {exc}", secret).splitlines()[0][:200]
            logger.warning("%s: the service refused the start (%s); asking again in %.1f s "
                           "(refusal %d)", what, detail, delay, refusals)
            _pause(delay, what, t0, policy, is_closed)


def _wait(sdk_future: Any, what: str, t0: float, policy: StartPolicy,
          is_closed: Callable[[], bool]) -> Any:
    """The future's value; waits in slices with no deadline but the policy's."""
    reported = time.monotonic()
    while True:
        try:
            return sdk_future.result(timeout=policy.slice_s)
        except TimeoutError:
            pass  # concurrent.futures.TimeoutError is TimeoutError since Python 3.11
        except Exception:
            _check(what, t0, policy, is_closed)  # a failure caused by closing reads as closed
            raise
        _check(what, t0, policy, is_closed)
        if time.monotonic() - reported >= policy.report_every_s:
            reported = time.monotonic()
            logger.info("%s: still waiting for the service to start the training client "
                        "(%.0f s; it may be queued at the limit of concurrent LoRAs)",
                        what, reported - t0)


def _pause(delay_s: float, what: str, t0: float, policy: StartPolicy,
           is_closed: Callable[[], bool]) -> None:
    end = time.monotonic() + delay_s
    while (left := end - time.monotonic()) > 0:
        _check(what, t0, policy, is_closed)
        time.sleep(min(left, policy.slice_s))
    _check(what, t0, policy, is_closed)


def _check(what: str, t0: float, policy: StartPolicy, is_closed: Callable[[], bool]) -> None:
    if is_closed():
        raise BackendError(f"{what}: the backend was closed while the start waited")
    waited = time.monotonic() - t0
    if policy.deadline_s is not None and waited > policy.deadline_s:
        raise RemoteTimeoutError(
            f"{what}: the service did not start the training client within "
            f"{policy.deadline_s:g} s (queued or refused all along); raise start_timeout_s "
            "or try later"
        )

