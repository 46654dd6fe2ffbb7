"""The screening guard around a Tinker SDK training client, in process (docs/proxy.md)::

    from ulora_remote.tinker import guard

    tc = guard(service.create_lora_training_client(base_model=...).result(),
               service_client=service, out="guard-records")
    fb = tc.forward_backward(data, "cross_entropy")    # a future, as the SDK's
    opt = tc.optim_step(types.AdamParams(learning_rate=1e-4))
    fb.result(); opt.result()                          # or await them

It is ``ulora proxy``'s guard without the HTTP: the same ``GuardCore`` judges each step's
supervised ``cross_entropy`` passes from their own outputs, cancels the rejected examples with a
``forward_backward`` of negated weights before the ``optim_step``, sends no ``optim_step`` when
nothing is kept, runs the probation on a snapshot (``save_state``) and, on a rollback, swaps the
training client for one created from that snapshot with its optimizer state (which needs
``service_client``).

Calls return at once, in order: one worker thread submits them to the SDK in the order they were
made, and waits only where a judgement needs a pass's outputs (at an ``optim_step``), so a script
that submits ahead pays no extra clock cycle. Every other method goes to the SDK unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["GuardedFuture", "GuardedTrainingClient", "guard"]


class GuardedFuture:
    """The answer of a guarded call: ``result(timeout)``, ``await``, ``result_async()``."""

    def __init__(self, future: cf.Future[Any]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(self._future), timeout)

    def done(self) -> bool:
        return self._future.done()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()


def guard(training_client: Any, *, service_client: Any = None, out: str | Path | None = None,
          controller: bool = False, console: TextIO | None = None,
          screen: Any = None) -> GuardedTrainingClient:
    """Wrap an SDK ``TrainingClient`` in the screening guard.

    Args:
        training_client: the SDK's training client (not its future: call ``.result()``).
        service_client: the ``ServiceClient`` that made it; a rollback creates the new training
            client from the snapshot through it. None: a rollback raises ``BackendError``.
        out: a folder for the records (``steps.csv``, ``metrics.jsonl``); None: console only.
        controller: the seed's controller sets the learning rate (else the script's stands).
        console: where the probation/shift/rollback lines go (default stderr).
        screen: the guard's parameters (``ulora_remote.control.screen.ScreenConfig``); None:
            the defaults of ``ulora run``.
    """
    return GuardedTrainingClient(training_client, service_client=service_client,
                                 out=Path(out) if out is not None else None,
                                 controller=controller, console=console, screen=screen)


class GuardedTrainingClient:
    """A training client's methods, sync and async, with the guard between (module doc)."""

    def __init__(self, training_client: Any, *, service_client: Any, out: Path | None,
                 controller: bool, console: TextIO | None, screen: Any = None) -> None:
        from ulora_remote.backends.proxy.core import GuardCore, StepRecords, folder_name

        self._tc = training_client
        self._service = service_client
        model_id = str(training_client.model_id)
        records = StepRecords(out / folder_name(model_id) if out else None, model_id, console)
        self.core = GuardCore(records, screen=screen, controller=controller)
        self._step: list[tuple[list[Any], Any]] = []  # the step's (data, SDK future) passes
        self._snapshot: Any = None
        self._ops: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._waiters = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ulora-guard")
        self._worker = threading.Thread(target=self._work, name="ulora-guard", daemon=True)
        self._worker.start()

    @property
    def training_client(self) -> Any:
        """The SDK client in use now (a new one after a rollback)."""
        return self._tc

    @property
    def model_id(self) -> Any:
        return self._tc.model_id

    # -- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while (op := self._ops.get()) is not None:
            op()

    def _call(self, submit: Callable[[], Any]) -> GuardedFuture:
        """Run ``submit`` on the worker, in call order; the answer is its SDK future's result."""
        future: cf.Future[Any] = cf.Future()

        def op() -> None:
            try:
                self._chain(submit(), future)
            except BaseException as exc:  # noqa: BLE001 - it belongs to the caller's future
                future.set_exception(exc)

        self._ops.put(op)
        return GuardedFuture(future)

    def _chain(self, sdk_future: Any, future: cf.Future[Any]) -> None:
        def wait() -> None:
            try:
                future.set_result(sdk_future.result())
            except BaseException as exc:  # noqa: BLE001
                future.set_exception(exc)

        self._waiters.submit(wait)

    def close(self) -> None:
        """Stop the worker once the calls made so far are submitted (the SDK client stays)."""
        self._ops.put(None)
        self._worker.join()
        self._waiters.shutdown(wait=True)

    # -- training ---------------------------------------------------------------------------
    def forward_backward(self, data: Sequence[Any], loss_fn: str,
                         loss_fn_config: Mapping[str, Any] | None = None) -> GuardedFuture:
        data = list(data)

        def submit() -> Any:
            sdk = self._tc.forward_backward(data, loss_fn, loss_fn_config)
            if loss_fn == "cross_entropy":
                self._step.append((data, sdk))
            return sdk

        return self._call(submit)

    def optim_step(self, adam_params: Any) -> GuardedFuture:
        future: cf.Future[Any] = cf.Future()

        def op() -> None:
            try:
                sdk = self._optim(adam_params)
                if sdk is None:
                    from tinker import types

                    future.set_result(types.OptimStepResponse(metrics={}))
                else:
                    self._chain(sdk, future)
            except BaseException as exc:  # noqa: BLE001
                future.set_exception(exc)

        self._ops.put(op)
        return GuardedFuture(future)

    def _optim(self, adam_params: Any) -> Any:
        """Judge the step, cancel what was rejected, and submit the optim_step (None: nothing
        was kept, so none is sent)."""
        from ulora_remote.backends.proxy.core import example_loss

        if not self._step:
            return self._tc.optim_step(adam_params)
        passes, self._step = self._step, []

        def losses_of(runs: list[tuple[list[Any], Any]]) -> list[float]:
            out = []
            for data, sdk in runs:
                result = sdk.result()
                for datum, lo in zip(data, result.loss_fn_outputs, strict=True):
                    out.append(example_loss(lo["logprobs"].tolist(), _weights(datum)))
            return out

        losses = losses_of(passes)
        plan = self.core.judge(losses)
        if plan.action == "probation":
            self._snapshot = self._tc.save_state(f"ulora-guard-snapshot-{self.core.step}")
        elif plan.action == "rollback":
            self._rollback()
            passes = [(data, self._tc.forward_backward(data, "cross_entropy"))
                      for data, _ in passes]
            losses = losses_of(passes)
            plan = self.core.judge(losses)
        flags = iter(plan.keep)
        for data, _ in passes:
            rejected = [_negated(d) for d in data if not next(flags)]
            if rejected:
                self._tc.forward_backward(rejected, "cross_entropy")
        lr = self.core.finish(plan, losses, adam_params.learning_rate)
        if plan.skip:
            return None
        if lr is not None:
            adam_params = adam_params.model_copy(update={"learning_rate": lr})
        return self._tc.optim_step(adam_params)

    def _rollback(self) -> None:
        from ulora_remote.errors import BackendError

        if self._service is None or self._snapshot is None:
            raise BackendError("the guard must roll back to its snapshot, which needs the "
                               "service client: pass guard(..., service_client=service)")
        path = self._snapshot.result().path
        made = self._service.create_training_client_from_state_with_optimizer(path)
        self._tc = made.result()
        self._snapshot = None

    def forward(self, data: Sequence[Any], loss_fn: str,
                loss_fn_config: Mapping[str, Any] | None = None) -> GuardedFuture:
        data = list(data)
        return self._call(lambda: self._tc.forward(data, loss_fn, loss_fn_config))

    # -- everything else, unchanged and in order ----------------------------------------------
    def save_state(self, name: str, **kw: Any) -> GuardedFuture:
        return self._call(lambda: self._tc.save_state(name, **kw))

    def save_weights_for_sampler(self, name: str, **kw: Any) -> GuardedFuture:
        return self._call(lambda: self._tc.save_weights_for_sampler(name, **kw))

    def save_weights_and_get_sampling_client(self, name: str | None = None,
                                             **kw: Any) -> GuardedFuture:
        return self._call(lambda: self._tc.save_weights_and_get_sampling_client(name, **kw))

    def create_sampling_client(self, model_path: str, **kw: Any) -> Any:
        return self._tc.create_sampling_client(model_path, **kw)

    def get_info(self) -> Any:
        return self._tc.get_info()

    def get_tokenizer(self) -> Any:
        return self._tc.get_tokenizer()

    # -- async spellings (the SDK's: an async def that returns the future) ---------------------
    async def forward_backward_async(self, data: Sequence[Any], loss_fn: str,
                                     loss_fn_config: Mapping[str, Any] | None = None
                                     ) -> GuardedFuture:
        return self.forward_backward(data, loss_fn, loss_fn_config)

    async def optim_step_async(self, adam_params: Any) -> GuardedFuture:
        return self.optim_step(adam_params)

    async def forward_async(self, data: Sequence[Any], loss_fn: str,
                            loss_fn_config: Mapping[str, Any] | None = None) -> GuardedFuture:
        return self.forward(data, loss_fn, loss_fn_config)

    async def save_state_async(self, name: str, **kw: Any) -> GuardedFuture:
        return self.save_state(name, **kw)

    async def save_weights_and_get_sampling_client_async(self, name: str | None = None,
                                                         **kw: Any) -> Any:
        return await self.save_weights_and_get_sampling_client(name, **kw)


def _weights(datum: Any) -> list[float]:
    w = datum.loss_fn_inputs.get("weights")
    if w is None:
        return [1.0] * len(datum.loss_fn_inputs["target_tokens"].tolist())
    return [float(x) for x in w.tolist()]


def _negated(datum: Any) -> Any:
    """``datum`` with its weights negated (float32)."""
    import numpy as np
    from tinker import types

    weights = -np.asarray(_weights(datum), dtype=np.float32)
    inputs = {**datum.loss_fn_inputs, "weights": types.TensorData.from_numpy(weights)}
    return types.Datum(model_input=datum.model_input, loss_fn_inputs=inputs)
