"""Saving and restoring Tinker training state, exactly once.

Saving. Names are unique per run and step (``<run_name>-<name>``), and the save is sent with
``overwrite=True``: the SDK retries a save submission on a lost answer, and the service executes
requests of a model in order, so a repeated save of the same name writes the same state again.
A service that still answers 409 Conflict (the save of that name already landed) makes the SDK
retry the submission for up to 300 s, so this module stops waiting on a conflict or at the
deadline, cancels the SDK's future (which frees the client's request turn) and asks the service
whether the checkpoint exists (``RestClient.list_checkpoints(model_id)``: ``checkpoint_id`` is
``weights/<name>``). If it does, the save counts as success and its ``tinker_path`` is returned.

Restoring. Loading is allowed only as a model's first request, so a rollback is a NEW training
client: ``ServiceClient.create_training_client_from_state_with_optimizer(path)`` (weights and Adam
moments). Building a client changes no training state, so trying again is safe: a start the
service queues or refuses at its limit of live LoRAs is waited for and retried with backoff
(``start.py``), and other transient failures get bounded attempts here (tenacity).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tenacity import (
    RetryError,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ulora_remote.errors import (
    CheckpointError,
    ConfigurationError,
    RemoteError,
    RemoteTimeoutError,
    StateLostError,
    UloraError,
)

from .futures import SdkFuture, map_sdk_error
from .start import StartPolicy, start_client

__all__ = ["find_checkpoint", "load_training_client", "save_checkpoint"]

logger = logging.getLogger(__name__)


def _is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "409" in text or "conflict" in text or "already exists" in text


def find_checkpoint(
    rest: Any, model_id: str, name: str, *, api_key: str, timeout_s: float
) -> str | None:
    """The ``tinker://`` path of training checkpoint ``name`` of ``model_id``, or None.

    Args:
        rest: a ``tinker.RestClient``.
    """
    try:
        listing = rest.list_checkpoints(model_id).result(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001
        raise map_sdk_error(exc, "list_checkpoints", training=False, secret=api_key) from None
    for checkpoint in listing.checkpoints:
        if checkpoint.checkpoint_type == "training" and checkpoint.checkpoint_id in (
            f"weights/{name}",
            name,
        ):
            return str(checkpoint.tinker_path)
    return None


def save_checkpoint(
    rest: Any,
    client: Any,
    name: str,
    *,
    api_key: str,
    timeout_s: float,
    check_every_s: float = 30.0,
) -> str:
    """Save ``client``'s weights and optimizer state as ``name``; return the ``tinker://`` path.

    Waits at most ``timeout_s`` in all. Every ``check_every_s`` without an answer, and on a
    conflict, it asks the service whether the checkpoint exists: a listed checkpoint is complete,
    so the save is done even if the SDK is still retrying a 409 it cannot resolve.

    Raises:
        CheckpointError: the service answered that the save failed, and no checkpoint ``name``
            exists (the client stays usable: the service did process the request).
        StateLostError: no answer within ``timeout_s``, or the service no longer holds the
            request (HTTP 410), and the checkpoint is not listed: the client is abandoned, the
            caller rolls back to its last checkpoint and replays.
    """
    request = f"save_state({name!r})"
    future: SdkFuture[Any] = SdkFuture(
        client.save_state(name, overwrite=True),
        request,
        lambda r: str(r.path),
        deadline_s=check_every_s,
        training=False,
        secret=api_key,
    )
    model_id = str(client.model_id)
    deadline = time.monotonic() + timeout_s

    def listed() -> str | None:
        return find_checkpoint(rest, model_id, name, api_key=api_key, timeout_s=timeout_s)

    while True:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except RemoteTimeoutError as exc:
            path = listed()
            if path is not None:
                future.cancel()  # frees the client's request turn held by the SDK's retries
                logger.info("checkpoint %s is listed; the save counts as done", name)
                return path
            if time.monotonic() >= deadline:
                # The service runs a model's requests in seq_id order. A save that was never
                # accepted leaves a gap that later requests would wait behind forever, so this
                # client cannot be trusted any more: roll back like any lost state.
                future.cancel()
                raise StateLostError(
                    f"{request} did not finish within {timeout_s:g} s and the service does not "
                    "list it; the client is abandoned: load_state(<last checkpoint>) and replay"
                ) from exc
        except UloraError as exc:
            # A save changes no training state, so a failed one is a CheckpointError: the run
            # goes on and the next save tries again.
            path = listed() if _is_conflict(exc) or isinstance(exc, StateLostError) else None
            if path is None and isinstance(exc, StateLostError):
                # A 410: the service dropped the request, and with it (on Tinker) the model's
                # state. Not a failed save but a lost client: roll back like any lost state.
                raise
            if path is None:
                raise CheckpointError(f"{request} failed: {exc}") from exc
            logger.info("checkpoint %s exists after a conflict; the save counts as done", name)
            return path


def load_training_client(
    service: Any,
    path: str,
    *,
    attempts: int,
    timeout_s: float,
    api_key: str,
    policy: StartPolicy | None = None,
    is_closed: Any = lambda: False,
) -> Any:
    """A new training client from checkpoint ``path``, with its optimizer state.

    Args:
        policy: how a start the service queues or refuses is waited for (``start.py``).
        is_closed: returns True once the backend is closed, which ends a waiting start.

    Raises:
        CheckpointError: the service cannot load ``path`` (not retried).
        RemoteError: all ``attempts`` failed on transient errors.
        BackendError: the backend was closed while the start waited.
    """
    start_policy = policy or StartPolicy()

    @retry(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=0.5, max=10),
        retry=retry_if_exception_type(RemoteError),
        reraise=False,
    )
    def build() -> Any:
        request = f"create_training_client_from_state_with_optimizer({path!r})"
        try:
            return start_client(
                lambda: service.create_training_client_from_state_with_optimizer(path),
                request,
                policy=start_policy,
                is_closed=is_closed,
                submit_timeout_s=timeout_s,
                secret=api_key,
            )
        except (CheckpointError, ConfigurationError):
            raise
        except UloraError as exc:
            if is_closed():
                raise
            raise _load_error(exc, request, api_key) from None
        except Exception as exc:  # noqa: BLE001 - the SDK's failure, translated
            raise _load_error(exc, request, api_key) from None

    try:
        return build()
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise RemoteError(
            f"could not rebuild the training client from {path} in {attempts} attempts: {last}"
        ) from last


def _load_error(exc: BaseException, request: str, api_key: str) -> UloraError:
    error = map_sdk_error(exc, request, training=False, secret=api_key)
    status = getattr(exc, "status_code", None)
    text = str(exc).lower()
    if status in (400, 404, 422) or "not found" in text or "rejected by the service" in text:
        return CheckpointError(f"{request}: the service cannot load this checkpoint: {error}")
    if isinstance(error, RemoteError):
        return error
    return RemoteError(str(error))
