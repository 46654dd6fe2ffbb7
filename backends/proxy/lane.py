"""One training model as the client sees it: its requests in ``seq_id`` order, the guard's
step, and the upstream model behind it (docs/proxy.md).

Every request of a training model carries the client's ``seq_id``. The lane takes them in that
order (a chunked batch sends its first chunk last, so later ones wait in ``pending``) and sends
each upstream at once with the lane's own upstream ``seq_id``: the proxy inserts requests of its
own (cancelling ``forward_backward`` calls, snapshots) and, after a rollback, talks to a new
upstream model whose count starts again at 1.

An ``optim_step`` that follows screened ``forward_backward`` calls waits until their outputs are
back and judged (``core.GuardCore``); everything after it waits behind it. Such a request is
*deferred*: the client gets a request id of the proxy's at once and polls it as any future, so a
client that submits ahead keeps submitting, and when the judgement is made the cancel, the
``optim_step`` and the next batch's ``forward_backward`` leave together, in one clock cycle of
the upstream. A request that can go upstream at once is sent by its own handler and answered
with the upstream's reply, unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.response_conv import deserialize_forward_backward_output

from .core import GuardCore, StepPlan, example_loss
from .upstream import PollFailed, Reply, Upstream

__all__ = ["MAX_SEQ_AHEAD", "Item", "Lane", "LocalFuture"]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)
# Upstream models the proxy creates on a rollback are numbered far above the client's own.
ROLLBACK_SEQ_BASE = 1_000_000
# As ulora serve's scheduler: a seq_id this far ahead of the next is a gap that never closes.
MAX_SEQ_AHEAD = 1024


@dataclass
class LocalFuture:
    """A future the proxy answered with its own request id: it resolves to an upstream request
    id (the client's poll is then forwarded there) or to a final reply."""

    request_id: str = field(default_factory=lambda: f"ulora-proxy-{next(_ids)}")
    done: asyncio.Event = field(default_factory=asyncio.Event)
    upstream_id: str | None = None
    reply: Reply | None = None

    def resolve(self, reply: Reply) -> None:
        """From an upstream submit answer: its request id, or the failure itself."""
        rid = _request_id(reply) if reply.status == 200 else None
        if rid is not None:
            self.upstream_id = rid
        else:
            self.reply = reply
        self.done.set()

    def finish(self, reply: Reply) -> None:
        """A final answer of the proxy's own (a step with nothing kept sends no optim_step)."""
        self.reply = reply
        self.done.set()


@dataclass
class Item:
    """One request of a training model."""

    seq: int
    path: str
    headers: dict[str, str]
    proto: pb.ForwardBackwardRequest | None = None  # forward_backward
    body: dict[str, Any] | None = None  # every other request
    up_seq: int | None = None
    sent: asyncio.Task[Reply] | None = None
    local: LocalFuture | None = None

    @property
    def screened(self) -> bool:
        """A supervised training pass: the guard judges its examples."""
        p = self.proto
        return p is not None and p.loss_fn == "cross_entropy" and not p.forward_only

    @property
    def is_optim(self) -> bool:
        return self.path.endswith("/optim_step")


def _request_id(reply: Reply) -> str | None:
    try:
        data = reply.json()
    except ValueError:
        return None
    rid = data.get("request_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) else None


def _weights(datum: pb.Datum) -> np.ndarray:
    """A datum's weights as float64 (ones when absent, as the server reads them)."""
    n = sum(len(c.encoded_text.tokens) // 4 for c in datum.model_input)
    if "weights" not in datum.loss_fn_inputs:
        return np.ones(n)
    t = datum.loss_fn_inputs["weights"]
    dtype = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64}.get(t.dtype, np.float32)
    return np.frombuffer(t.dense, dtype=dtype).astype(np.float64)


def _negated(datum: pb.Datum) -> pb.Datum:
    """``datum`` with every weight negated (float32, as the SDK sends them)."""
    out = pb.Datum()
    out.CopyFrom(datum)
    w = (-_weights(datum)).astype(np.float32)
    out.loss_fn_inputs["weights"].CopyFrom(pb.Tensor(dense=w.tobytes(), dtype=pb.DTYPE_FLOAT32,
                                                      shape=[len(w)]))
    return out


def _losses(item: Item, reply: Reply) -> list[float]:
    assert item.proto is not None
    out = deserialize_forward_backward_output(reply.body)
    losses = []
    for datum, result in zip(item.proto.data, out.loss_fn_outputs, strict=True):
        lp = result["logprobs"].data
        w = _weights(datum)
        losses.append(example_loss(lp, w.tolist()) if len(lp) == len(w) else math.nan)
    return losses


Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]


class Lane:
    """The requests of one client model id (module docstring)."""

    def __init__(self, model_id: str, upstream: Upstream, core: GuardCore, spawn: Spawn) -> None:
        self.model_id = model_id
        self.upstream_id = model_id
        self.upstream = upstream
        self.core = core
        self.spawn = spawn
        self.next_seq = 1
        self.up_seq = 0
        self.pending: dict[int, Item] = {}
        self.done: dict[int, Item] = {}  # by client seq, for a retried submit
        self.blocked = False
        self.step: list[tuple[Item, asyncio.Task[Reply]]] = []  # screened passes and results
        self.snapshot: asyncio.Task[Reply] | None = None
        self.rollbacks = 0
        self.headers: dict[str, str] = {}  # the last client's auth headers, in memory only

    # -- intake -----------------------------------------------------------------------------------
    async def submit(self, item: Item) -> Reply:
        """Take one client request; answer with the upstream's reply when it could go at once,
        else with a request id of the proxy's (``LocalFuture``)."""
        self.headers = {k: v for k, v in item.headers.items() if k.lower() == "x-api-key"}
        if item.seq < self.next_seq:
            return await self._retried(item)
        if item.seq >= self.next_seq + MAX_SEQ_AHEAD:
            message = (f"seq_id {item.seq} is too far ahead of this model's next "
                       f"({self.next_seq}); send requests in order")
            return Reply.of_json(400, {"detail": message, "error": message})
        if item.seq in self.pending:
            return Reply.of_json(400, {"detail": f"seq_id {item.seq} was already submitted",
                                       "error": f"seq_id {item.seq} was already submitted"})
        self.pending[item.seq] = item
        self.pump()
        if item.sent is not None and item.local is None:
            reply = await item.sent
            if reply.status != 200:
                self._undo(item)
            return reply
        if item.local is None:
            item.local = LocalFuture()
        return Reply.of_json(200, {"request_id": item.local.request_id,
                                   "model_id": self.model_id})

    def _undo(self, item: Item) -> None:
        """The upstream refused a request before taking it (a 4xx, or 408/429/5xx that the SDK
        retries with the same seq_id): give its seq_id back on both sides when nothing was sent
        after it, so that a retry, or the client's next request, follows on without a gap."""
        if self.blocked or item.up_seq != self.up_seq or item.seq != self.next_seq - 1:
            return
        self.up_seq -= 1
        self.next_seq -= 1
        self.done.pop(item.seq, None)
        self.step = [(i, t) for i, t in self.step if i is not item]

    async def _retried(self, item: Item) -> Reply:
        """A seq_id already taken: the SDK submits again what it did not hear the answer of."""
        prev = self.done.get(item.seq)
        if prev is not None and prev.local is None and prev.sent is not None:
            last = await prev.sent
            if last.status == 200:
                return last
        message = f"seq_id {item.seq} is behind this model's next ({self.next_seq})"
        return Reply.of_json(400, {"detail": message, "error": message})

    def pump(self) -> None:
        """Send every request that may go now, in order (synchronous: no other coroutine runs
        in between, so upstream seq_ids follow client seq_ids)."""
        while not self.blocked and self.next_seq in self.pending:
            item = self.pending.pop(self.next_seq)
            self.done[self.next_seq] = item
            self.done.pop(self.next_seq - 64, None)
            self.next_seq += 1
            if item.is_optim and self.step:
                self.blocked = True
                item.local = item.local or LocalFuture()  # deferred already: keep its id
                self.spawn(self._judge_then_step(item))
                return
            self._launch(item)

    def _launch(self, item: Item) -> None:
        self.up_seq += 1
        item.up_seq = self.up_seq
        logger.debug("%s: seq %d -> upstream seq %d (%s)", self.model_id, item.seq, item.up_seq,
                     item.path.rsplit("/", 1)[-1])
        item.sent = self.spawn(self._send(item))
        if item.local is not None:
            self.spawn(self._resolve_later(item))
        if item.screened:
            task = self.spawn(self._result(item))
            task.add_done_callback(_quiet)  # its failure is the client's to hear, not a log's
            self.step.append((item, task))

    def _encoded(self, item: Item) -> tuple[bytes, dict[str, str]]:
        headers = dict(item.headers)
        if item.proto is not None:
            msg = pb.ForwardBackwardRequest()
            msg.CopyFrom(item.proto)
            msg.model_id, msg.seq_id = self.upstream_id, item.up_seq or 0
            headers["content-type"] = "application/x-protobuf"
            return msg.SerializeToString(), headers
        assert item.body is not None
        body = {**item.body, "model_id": self.upstream_id, "seq_id": item.up_seq}
        headers["content-type"] = "application/json"
        return types_json(body), headers

    async def _send(self, item: Item) -> Reply:
        body, headers = self._encoded(item)
        if item.local is not None:  # the proxy owns this submit: it retries as the SDK would
            return await self.upstream.submit(item.path, body, headers)
        reply = await self.upstream.request("POST", item.path, body, headers)
        return self._client_view(reply)

    def _client_view(self, reply: Reply) -> Reply:
        """A submit answer names the upstream model; the client knows it by its own id."""
        if self.upstream_id == self.model_id or reply.status != 200:
            return reply
        return Reply(reply.status, reply.body.replace(self.upstream_id.encode(),
                                                      self.model_id.encode()), reply.headers)

    async def _resolve_later(self, item: Item) -> None:
        assert item.sent is not None and item.local is not None
        item.local.resolve(await item.sent)

    async def _result(self, item: Item) -> Reply:
        assert item.sent is not None
        reply = await item.sent
        rid = _request_id(reply) if reply.status == 200 else None
        if rid is None:
            raise PollFailed(reply)
        return await self.upstream.poll(rid, self.headers, proto=True)

    # -- the step ---------------------------------------------------------------------------------
    async def _judge_then_step(self, optim: Item) -> None:
        assert optim.local is not None
        try:
            await self._step(optim)
        except Exception as exc:  # noqa: BLE001 - the client must hear of it, and the lane go on
            logger.warning("guard step of %s failed: %s; the optim_step goes up unjudged",
                           self.model_id, type(exc).__name__)
            self.step.clear()
            self._launch(optim)
        finally:
            self.blocked = False
            self.pump()

    async def _step(self, optim: Item) -> None:
        passes = [item for item, _ in self.step]
        try:
            replies = [await task for _, task in self.step]
        except PollFailed:  # the client's own pass failed: it hears so from its own future
            self.step.clear()
            self._launch(optim)
            return
        self.step.clear()
        losses = [x for item, r in zip(passes, replies, strict=True) for x in _losses(item, r)]
        plan = self.core.judge(losses)
        if plan.action == "probation":
            self.snapshot = self._own("/api/v1/save_weights", {
                "path": f"ulora-proxy-snapshot-{self.rollbacks}-{self.core.step}",
                "type": "save_weights"})
        elif plan.action == "rollback":
            losses = await self._rollback(passes)
            plan = self.core.judge(losses)
        self._cancel(passes, plan)
        client_lr = _client_lr(optim.body)
        lr = self.core.finish(plan, losses, client_lr)
        if plan.skip:
            assert optim.local is not None
            optim.local.finish(Reply.of_json(200, {"metrics": {}}))
            return
        if lr is not None and optim.body is not None:
            params = dict(optim.body.get("adam_params") or {})
            params["learning_rate"] = lr
            optim.body = {**optim.body, "adam_params": params}
        self._launch(optim)

    def _cancel(self, passes: list[Item], plan: StepPlan) -> None:
        """A forward_backward of the rejected examples with negated weights, per pass."""
        flags = iter(plan.keep)
        for item in passes:
            assert item.proto is not None
            rejected = [d for d in item.proto.data if not next(flags)]
            if not rejected:
                continue
            msg = pb.ForwardBackwardRequest()
            msg.CopyFrom(item.proto)
            del msg.data[:]
            msg.data.extend(_negated(d) for d in rejected)
            cancel = Item(seq=-1, path="/api/v1/forward_backward", headers=dict(self.headers),
                          proto=msg, local=LocalFuture())
            self._launch_own(cancel)

    def _launch_own(self, item: Item) -> asyncio.Task[Reply]:
        """Send a request of the proxy's own (not screened, not the client's) and return a
        task that ends with its result."""
        self.up_seq += 1
        item.up_seq = self.up_seq
        item.sent = self.spawn(self._send(item))

        async def result() -> Reply:
            assert item.sent is not None
            reply = await item.sent
            rid = _request_id(reply) if reply.status == 200 else None
            if rid is None:
                raise PollFailed(reply)
            return await self.upstream.poll(rid, self.headers, proto=item.proto is not None)

        task = self.spawn(result())
        task.add_done_callback(_log_failure(self.model_id, item.path))
        return task

    def _own(self, path: str, body: dict[str, Any]) -> asyncio.Task[Reply]:
        return self._launch_own(Item(seq=-1, path=path, headers=dict(self.headers), body=body,
                                     local=LocalFuture()))

    async def _rollback(self, passes: list[Item]) -> list[float]:
        """Swap the upstream model for a new one loaded from the snapshot (weights and Adam
        state), run the step's passes again on it, and return their losses."""
        if self.snapshot is None:
            raise RuntimeError("rollback without a snapshot")
        path = (await self.snapshot).json()["path"]
        self.rollbacks += 1
        session = self.model_id.split(":train:")[0]
        load = types.LoadWeightsRequest(session_id=session, path=path, optimizer=True,
                                        model_seq_id=ROLLBACK_SEQ_BASE + self.rollbacks)
        body = types_json(load.model_dump(mode="json", exclude_none=True))
        headers = {**self.headers, "content-type": "application/json"}
        reply = await self.upstream.submit("/api/v1/load_weights", body, headers)
        rid = _request_id(reply) if reply.status == 200 else None
        if rid is None:
            raise PollFailed(reply)
        created = (await self.upstream.poll(rid, self.headers)).json()
        self.upstream_id, self.up_seq = created["model_id"], 0
        self.snapshot = None
        again = []
        for item in passes:
            assert item.proto is not None
            copy = Item(seq=-1, path=item.path, headers=dict(self.headers), proto=item.proto,
                        local=LocalFuture())
            again.append((copy, self._launch_own(copy)))
        return [x for copy, task in again for x in _losses(copy, await task)]


def _client_lr(body: dict[str, Any] | None) -> float | None:
    params = (body or {}).get("adam_params")
    lr = params.get("learning_rate") if isinstance(params, dict) else None
    return float(lr) if isinstance(lr, int | float) else None


def _log_failure(model_id: str, path: str) -> Callable[[asyncio.Task[Reply]], None]:
    def check(task: asyncio.Task[Reply]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.warning("the proxy's own %s for %s failed: %s", path.rsplit("/", 1)[-1],
                           model_id, task.exception())
    return check


def _quiet(task: asyncio.Task[Reply]) -> None:
    if not task.cancelled():
        task.exception()


def types_json(body: dict[str, Any]) -> bytes:
    """A JSON request body."""
    return json.dumps(body).encode()
