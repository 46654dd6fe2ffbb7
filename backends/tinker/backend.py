"""``TinkerBackend``: the ``TrainingBackend`` protocol over the official ``tinker`` SDK.

Exactly-once rules (docs/design.md, "Backends"): ``forward_backward`` and ``optim_step`` are
submitted once and never again; the SDK's own retries (HTTP 429/5xx, submission for up to 300 s) are
the only retry layer. When a training future fails in a way that leaves the remote state unknown,
``StateLostError`` is raised, every later submission is refused, and the caller (the runner) calls
``load_state(last_checkpoint)``: that builds a NEW training client from the checkpoint with its
optimizer state (tenacity, bounded attempts, for this rebuild only) and then replays the steps after
the checkpoint itself. Requests run on the service in submission order (the SDK numbers them), so
the runner can submit fb_t, opt_t and fb_{t+1} before reading fb_t.

Per-task adapters (``AdapterBackend``): ``fork_adapters`` adds one training client per task, made
from the shared client's saved state with its optimizer; requests are split by client and put
back together (``adapters.py``), and a checkpoint saves every client once.

This module is longer than 300 lines on purpose: every protocol call and its exactly-once
bookkeeping (submit once, refuse after a loss, rebuild, replay) must read together; the futures,
session, rendering, checkpoints and adapters are already modules of their own.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import re
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ulora_remote.backend import (
    SHARED_ADAPTER,
    AdamParams,
    Datum,
    Example,
    ForwardBackwardResult,
    Future,
    OptimStepResult,
    adapter_groups,
    check_fork,
)
from ulora_remote.errors import (
    BackendError,
    ConfigurationError,
    InputError,
    RemoteTimeoutError,
    StateLostError,
    UloraError,
)

from .adapters import GatheredOptim, GatheredResult, composite_ref, parse_ref
from .checkpoints import load_training_client, save_checkpoint
from .futures import SdkFuture, call_with_deadline, map_sdk_error, scrub
from .render import (
    clean_completion,
    load_tokenizer,
    render_example,
    result_from_output,
    sampling_prompt,
    to_tinker_datum,
)
from .session import (
    check_base_model,
    import_tinker,
    probe_service,
    resolve_api_key,
    resolve_base_url,
    rest_client,
)
from .start import StartPolicy, start_client

__all__ = ["TinkerBackend"]

logger = logging.getLogger(__name__)

_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


def _grad_norm(response: Any) -> float | None:
    """The grad norm from ``OptimStepResponse.metrics`` (present only when clipping is on)."""
    for key, value in (getattr(response, "metrics", None) or {}).items():
        if "grad_norm" in key:
            return float(value)
    return None


class TinkerBackend:
    """Train a LoRA adapter on a Tinker service (hosted, or a compatible server).

    Args:
        base_model: a model the service offers, e.g. ``"meta-llama/Llama-3.2-1B"``.
        rank: LoRA rank.
        seed: adapter initialisation seed (None: the service picks).
        base_url: the service (else ``TINKER_BASE_URL``, else the hosted service).
        api_key: else ``TINKER_API_KEY``; must start with ``tml-``; never logged or shown.
        tokenizer: a local tokenizer directory (works offline); else the training client's
            ``get_tokenizer()`` (which downloads from the Hugging Face hub).
        timeout_s: the wall-clock deadline of every wait on the service (seconds).
        rebuild_attempts: attempts to build a training client from a checkpoint.
        run_name: prefix of checkpoint names (a random one by default), unique per run.
        save_check_s: while a save has not answered, look it up in the run's checkpoint
            list this often (a listed checkpoint is complete; see ``checkpoints.py``).
        connect_timeout_s: the deadline of the first contact (the model list) and of closing
            the session, so that an unreachable service fails fast; the SDK alone would retry
            for about 5 minutes. A refused local port (an IP address or ``localhost``) fails
            at once, before any session (``session.probe_service``).
        start_timeout_s: the longest the start of a training client (fresh, or from a
            checkpoint) may take; None (the default) waits as long as the service queues it at
            its limit of live LoRAs or refuses it with 429, retrying refusals with backoff
            (``start.py``). ``close()`` from another thread ends a waiting start.

    The key and the base model are checked here, before any step. The LoRA training client is
    created on first use (the first request, ``model_id`` or the tokenizer), or restored by a
    first ``load_state``, so resuming a run allocates no unused model on the service.

    Raises:
        ConfigurationError: no key or a malformed one, a key the service refuses, or a base
            model the service does not offer (the message lists the offered ones).
        MissingExtraError: the ``tinker`` extra is not installed.
        RemoteError, RemoteTimeoutError: the service could not be reached in time, or its
            local port refused the connection.
    """

    def __init__(
        self,
        base_model: str,
        *,
        rank: int = 32,
        seed: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        tokenizer: str | Path | None = None,
        timeout_s: float = 600.0,
        rebuild_attempts: int = 3,
        run_name: str | None = None,
        save_check_s: float = 30.0,
        connect_timeout_s: float = 60.0,
        start_timeout_s: float | None = None,
    ) -> None:
        self._tinker = import_tinker()
        self._key = resolve_api_key(api_key)
        if timeout_s <= 0:
            raise ConfigurationError(f"timeout_s={timeout_s!r} must be > 0 (seconds)")
        if start_timeout_s is not None and start_timeout_s <= 0:
            raise ConfigurationError(
                f"start_timeout_s={start_timeout_s!r} must be > 0 (seconds) or None (no limit)"
            )
        self._start_policy = StartPolicy(deadline_s=start_timeout_s)
        self.base_model = base_model
        self.rank = rank
        self.timeout_s = float(timeout_s)
        self.rebuild_attempts = rebuild_attempts
        self.save_check_s = float(save_check_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.run_name = _NAME_OK.sub("-", run_name) if run_name else f"ulora-{secrets.token_hex(4)}"
        self._closed = False
        self._generation = 0  # bumped whenever the training client is replaced
        self._lost: StateLostError | None = None
        # True while the client holds the fresh state of (base_model, rank, seed): nothing was
        # trained into it and nothing loaded. A state lost then is rebuilt by a new client.
        self._pristine = True
        # A closed local port fails here in milliseconds, before a session is opened.
        probe_service(resolve_base_url(base_url), self.connect_timeout_s)
        self._service = self._tinker.ServiceClient(base_url=base_url, api_key=self._key)
        _open_backends.add(self)
        #: Tokens per sequence the service allows for ``base_model`` (None: it does not say).
        self.max_context_length: int | None = None
        try:
            self.max_context_length = check_base_model(
                self._service,
                base_model,
                api_key=self._key,
                timeout_s=min(self.timeout_s, self.connect_timeout_s),
            )
            self._local_tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else None
        except BaseException:
            self.close()  # "errored", or "interrupted" on Ctrl-C
            raise
        # The LoRA client is created on first use, so that a resumed run, whose first call is
        # load_state, builds only the client restored from its checkpoint and no unused one.
        self._new_client = lambda: self._service.create_lora_training_client(
            base_model, rank=rank, seed=seed
        )
        self._client: Any = None
        self._tasks: dict[str, Any] = {}  # task → its own training client, in fork order
        self._stepped: list[str] = []  # adapters with gradients since the last optim_step
        self._eos: tuple[str | None] | None = None

    def _ensure_client(self) -> Any:
        if self._client is None:
            name = "create_lora_training_client"
            try:
                self._client = start_client(
                    self._new_client,
                    name,
                    policy=self._start_policy,
                    is_closed=lambda: self._closed,
                    submit_timeout_s=self.timeout_s,
                    secret=self._key,
                )
            except UloraError:
                raise
            except Exception as exc:  # noqa: BLE001 - the SDK's failure, translated
                raise self._translate(exc, name, training=False) from None
        return self._client

    @property
    def _tokenizer(self) -> Any:
        if self._local_tokenizer is None:
            self._local_tokenizer = self._ensure_client().get_tokenizer()
        return self._local_tokenizer

    @property
    def _eos_text(self) -> str | None:
        if self._eos is None:
            self._eos = (self._special_text("eos_token_id"),)
        return self._eos[0]

    @property
    def model_id(self) -> str:
        """The service's id of the current training client (it changes on ``load_state``)."""
        return str(self._ensure_client().model_id)

    # -- rendering -------------------------------------------------------------------------

    def render(self, example: Example) -> Datum:
        """Tokenize one example; see ``render.render_example``."""
        return render_example(self._tokenizer, example)

    def _render_batch(self, batch: Sequence[Example]) -> list[Datum]:
        if not batch:
            raise InputError("empty batch: pass at least one example")
        return [self.render(example) for example in batch]

    def _special_text(self, attribute: str) -> str | None:
        token_id = getattr(self._tokenizer, attribute, None)
        if not isinstance(token_id, int):
            return None
        return str(self._tokenizer.decode([token_id], skip_special_tokens=False)) or None

    # -- training requests -----------------------------------------------------------------

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        """Submit a forward-backward pass (``cross_entropy``, a sum), one request per adapter
        the batch's tasks use; returns at once."""
        return self._submit_fwd(batch, forward_only=False)

    def forward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        """Submit a forward pass: the same numbers, no gradients; returns at once."""
        return self._submit_fwd(batch, forward_only=True)

    def _submit_fwd(
        self, batch: Sequence[Example], *, forward_only: bool
    ) -> Future[ForwardBackwardResult]:
        data = self._render_batch(batch)
        self._live_client()
        if not forward_only:
            self._pristine = False
        parts = []
        for key, idx in adapter_groups(batch, tuple(self._tasks)):
            parts.append((idx, self._submit_part(key, [data[i] for i in idx], forward_only)))
            if not forward_only and key not in self._stepped:
                self._stepped.append(key)
        return parts[0][1] if len(parts) == 1 else GatheredResult(parts, len(data))

    def _submit_part(
        self, key: str, data: list[Datum], forward_only: bool
    ) -> SdkFuture[ForwardBackwardResult]:
        client = self._client_of(key)
        payload = [to_tinker_datum(d) for d in data]
        name = "forward" if forward_only else "forward_backward"
        method = client.forward if forward_only else client.forward_backward
        try:
            sdk_future = method(payload, "cross_entropy")
        except Exception as exc:  # noqa: BLE001 - submission errors are translated
            raise self._translate(exc, name, training=not forward_only) from None
        return self._wrap(
            sdk_future, name, lambda out: result_from_output(out, data), training=not forward_only
        )

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        """Submit one AdamW step with this step's parameters to every adapter that got a
        gradient since the last one (the shared one if none did); returns at once."""
        keys, self._stepped = self._stepped or [SHARED_ADAPTER], []
        parts = [self._optim_part(key, params) for key in keys]
        return parts[0] if len(parts) == 1 else GatheredOptim(parts)

    def _optim_part(self, key: str, params: AdamParams) -> SdkFuture[OptimStepResult]:
        types = self._tinker.types
        sdk_params = types.AdamParams(
            learning_rate=params.learning_rate,
            beta1=params.beta1,
            beta2=params.beta2,
            eps=params.eps,
            weight_decay=params.weight_decay,
            grad_clip_norm=params.grad_clip_norm,
        )
        self._live_client()
        self._pristine = False
        client = self._client_of(key)
        try:
            sdk_future = client.optim_step(sdk_params)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "optim_step", training=True) from None
        return self._wrap(
            sdk_future, "optim_step", lambda r: OptimStepResult(_grad_norm(r)), training=True
        )

    def _live_client(self) -> Any:
        if self._closed:
            raise BackendError("this TinkerBackend is closed; create a new one")
        if self._lost is not None and self._pristine and not self._tasks:
            # Lost before any update (the runner's step-0 evaluation or checkpoint): the state
            # was the fresh one of (base model, rank, seed), which a new client rebuilds exactly.
            logger.warning("state lost before any update (%s); creating a new training client",
                           self._lost)
            self._client = None
            self._generation += 1
            self._lost = None
        if self._lost is not None:
            raise StateLostError(
                f"the training client's state is lost ({self._lost}); call "
                "load_state(<last checkpoint>) before submitting again"
            )
        return self._ensure_client()

    def _client_of(self, key: str) -> Any:
        return self._ensure_client() if key == SHARED_ADAPTER else self._tasks[key]

    # -- per-task adapters (AdapterBackend) ------------------------------------------------

    def fork_adapters(self, tasks: Sequence[str]) -> None:
        """Give each task its own training client, created from the shared client's state
        saved now (weights and optimizer). Blocks; call it with no request in flight.

        Raises:
            InputError: see ``ulora_remote.backend.check_fork``.
            CheckpointError, StateLostError, RemoteError: the save or a client failed.
        """
        wanted = check_fork(tasks, tuple(self._tasks))
        path = self.save_state(f"fork{len(self._tasks):03d}")
        for task in wanted:
            self._tasks[task] = self._load_client(path)

    def adapter_tasks(self) -> tuple[str, ...]:
        """The tasks with their own training client, in fork order."""
        return tuple(self._tasks)

    def measure_gradient_variance(self, on: bool) -> None:
        """Ignored: the gradients stay on the service, so ``gradient_variance`` is None."""

    def _wrap(self, sdk_future: Any, name: str, convert: Any, *, training: bool) -> SdkFuture[Any]:
        generation = self._generation
        return SdkFuture(
            sdk_future,
            name,
            convert,
            deadline_s=self.timeout_s,
            training=training,
            secret=self._key,
            on_error=self._note_error,
            is_stale=lambda: self._generation != generation,
        )

    def _note_error(self, error: UloraError) -> None:
        if isinstance(error, StateLostError) and self._lost is None:
            self._lost = error
            logger.warning("Tinker training state lost: %s", error)

    def _translate(self, exc: BaseException, name: str, *, training: bool) -> UloraError:
        error = map_sdk_error(exc, name, training=training, secret=self._key)
        self._note_error(error)
        return error

    def _wait(self, submit: Any, name: str, *, training: bool = False) -> Any:
        """Submit with ``submit()`` and wait for the value under the deadline."""
        deadline = time.monotonic() + self.timeout_s
        try:
            # Creating the first client opens the session synchronously inside the SDK.
            sdk_future = call_with_deadline(submit, self.timeout_s, name)
        except RemoteTimeoutError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, name, training=training) from None
        future = self._wrap(sdk_future, name, lambda value: value, training=training)
        return future.result(timeout=max(0.0, deadline - time.monotonic()))

    # -- checkpoints -----------------------------------------------------------------------

    def save_state(self, name: str) -> str:
        """Save weights and optimizer state as ``<run_name>-<name>``; return its ``tinker://``
        path. A conflict (HTTP 409) on a save whose earlier try landed counts as success once
        the checkpoint is found in the run's checkpoint list; see ``checkpoints.py``.

        Raises:
            CheckpointError: the service reported the save failed and no checkpoint of that
                name exists; training can go on.
            StateLostError: the client's state was already lost, or the save got no answer and
                is not listed (the client is then abandoned; roll back to the last checkpoint).
        """
        client = self._live_client()
        full_name = f"{self.run_name}-{_NAME_OK.sub('-', name)}"
        shared = self._save_client(client, full_name)
        if not self._tasks:
            return shared
        return composite_ref(shared, {task: self._save_client(c, f"{full_name}-task{i}")
                                      for i, (task, c) in enumerate(self._tasks.items())})

    def _save_client(self, client: Any, full_name: str) -> str:
        try:
            return save_checkpoint(
                rest_client(self._service),  # built during check_base_model: no I/O here
                client,
                full_name,
                api_key=self._key,
                timeout_s=self.timeout_s,
                check_every_s=self.save_check_s,
            )
        except StateLostError as exc:
            self._note_error(exc)
            raise

    def load_state(self, ref: str) -> None:
        """Replace the training clients with new ones built from ``ref`` with their optimizer:
        the shared client, and one per task when ``ref`` is the reference of a forked backend's
        checkpoint (a plain path leaves the shared client alone).

        Outstanding futures of the old clients then refuse their results (``StateLostError``).

        Raises:
            CheckpointError: ``ref`` is neither form, or the service cannot load it.
            RemoteError: every rebuild attempt failed.
        """
        if self._closed:
            raise BackendError("this TinkerBackend is closed; create a new one")
        shared, tasks = parse_ref(ref)
        self._pristine = False
        self._client = self._load_client(shared)
        self._tasks = {task: self._load_client(path) for task, path in tasks.items()}
        self._stepped = []
        self._generation += 1
        self._lost = None

    def _load_client(self, path: str) -> Any:
        return load_training_client(
            self._service,
            path,
            attempts=self.rebuild_attempts,
            timeout_s=self.timeout_s,
            api_key=self._key,
            policy=self._start_policy,
            is_closed=lambda: self._closed,
        )

    # -- evaluation ------------------------------------------------------------------------

    def sample(
        self, examples: Sequence[Example], max_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        """Greedy (at temperature 0) generations from the current weights, one per example's
        prompt, each with its task's adapter.

        Saves sampler weights (``save_weights_and_get_sampling_client``) of every adapter used
        on every call, so call it at evaluation steps only. Each text is cut at EOS or the first
        newline.
        """
        if not examples:
            return []
        prompts = [sampling_prompt(self._tokenizer, e) for e in examples]
        self._live_client()
        types = self._tinker.types
        params = types.SamplingParams(max_tokens=max_tokens, temperature=temperature)
        pending: list[tuple[int, Any]] = []
        for key, idx in adapter_groups(examples, tuple(self._tasks)):
            sampler = self._wait(self._client_of(key).save_weights_and_get_sampling_client,
                                 "save_weights_for_sampler")
            for i in idx:
                model_input = types.ModelInput.from_ints(prompts[i][0])
                try:
                    pending.append((i, sampler.sample(prompt=model_input, num_samples=1,
                                                      sampling_params=params)))
                except Exception as exc:  # noqa: BLE001
                    raise self._translate(exc, "sample", training=False) from None
        texts = [""] * len(examples)
        for i, sdk_future in pending:
            response = self._wrap(sdk_future, "sample", lambda r: r, training=False).result()
            text = self._tokenizer.decode(list(response.sequences[0].tokens),
                                          skip_special_tokens=False)
            texts[i] = clean_completion(text, self._eos_text, prompts[i][1])
        return texts

    # -- lifetime --------------------------------------------------------------------------

    def close(self, status: Literal["success", "errored", "interrupted"] | None = None) -> None:
        """End the Tinker session (it bills while open). Idempotent; never raises.

        Args:
            status: what to report. By default it is read from the exception being handled
                when ``close`` runs (the runner closes in a ``finally``): none → "success",
                an ``Exception`` → "errored", ``KeyboardInterrupt``/``SystemExit`` →
                "interrupted".
        """
        if self._closed:
            return
        self._closed = True
        _open_backends.discard(self)
        if status is None:
            active = sys.exc_info()[0]
            if active is None:
                status = "success"
            else:
                status = "errored" if issubclass(active, Exception) else "interrupted"
        wait_s = min(self.timeout_s, self.connect_timeout_s, 30.0)
        try:
            # On a thread: the SDK's close waits on a lock that a client still connecting to an
            # unreachable service holds for minutes.
            call_with_deadline(
                lambda: self._service.close(status).result(timeout=wait_s), wait_s, "close"
            )
        except Exception as exc:  # noqa: BLE001 - closing must not mask the run's own error
            logger.warning("closing the Tinker session failed: %s", scrub(str(exc), self._key))

    def __enter__(self) -> TinkerBackend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, Exception):
            self.close("errored")
        else:  # KeyboardInterrupt, SystemExit
            self.close("interrupted")


_open_backends: weakref.WeakSet[TinkerBackend] = weakref.WeakSet()


def _close_open_backends() -> None:
    # An open session keeps billing: end the ones a crashed or interrupted run left behind.
    for backend in list(_open_backends):
        backend.close("interrupted")


# Registered with threading's exit hooks, which run before concurrent.futures stops its worker
# threads (last registered, first run), not with ``atexit``, which runs after: the SDK's close
# flushes its telemetry through its event loop's default executor, and from ``atexit`` (a sweep
# left at once by a second Ctrl-C, its run threads still in flight) that executor was already
# shut down, so every open session printed "RuntimeError: cannot schedule new futures after
# shutdown" on the way out.
# concurrent.futures imports its thread module (and registers its own hook) lazily, on the first
# ThreadPoolExecutor, often after this module: imported here so that its hook comes first and
# runs last.
importlib.import_module("concurrent.futures.thread")
_register_atexit: Any = getattr(threading, "_register_atexit", atexit.register)
_register_atexit(_close_open_backends)
