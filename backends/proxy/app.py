"""The proxy's HTTP layer: every request of the Tinker API, forwarded or guarded.

A request that names a training model and carries a ``seq_id`` (``forward_backward``,
``optim_step``, saves and loads of that model) goes to the model's ``Lane``; ``retrieve_future``
of a request id the proxy handed out waits for it here and is then forwarded; everything else
(sessions, sampling, checkpoints listings, telemetry, capabilities, ...) goes upstream as it came
and its answer comes back as it went, status, body and headers. Bodies are bounded and read
within a deadline exactly as ``ulora serve`` bounds them (``backends/server/app.py``); a body the
proxy cannot parse is forwarded unchanged, so the upstream answers it as it would directly.

The client's ``X-API-Key`` goes upstream in the same header. It is never logged (no header is)
and never written anywhere. With ``client_key`` set (a non-loopback bind), the client must send
that key instead, and the proxy sends ``upstream_key`` upstream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tinker.proto import tinker_public_pb2 as pb
from ulora_remote.backends.server.app import _BodyTimeout, _read_body
from ulora_remote.backends.server.limits import BodyTooLarge, clip, parse_json_object
from ulora_remote.backends.server.wire import decompress_body

from ulora_remote.control.screen import ScreenConfig
from ulora_remote.errors import InputError

from .core import GuardCore, StepRecords, folder_name
from .lane import MAX_SEQ_AHEAD, Item, Lane, LocalFuture
from .upstream import PROTO, REQUEST_HOP_HEADERS, Reply, Upstream

__all__ = ["ProxyConfig", "build_proxy_app"]

logger = logging.getLogger(__name__)

MAX_LOCAL_FUTURES = 10_000
_INT62 = 2**62


@dataclass(frozen=True)
class ProxyConfig:
    """What ``ulora proxy`` needs.

    Attributes:
        upstream: the service's base URL (hosted Tinker, or ``ulora serve``).
        out: the folder for the guard's records (one sub-folder per model id), or None.
        controller: the seed's controller sets the learning rate (else the client's stands).
        screen: the screening guard's parameters (None: ``ScreenConfig()``).
        client_key: the key clients must send (a non-loopback bind); None: any, forwarded.
        upstream_key: the key sent upstream when ``client_key`` is set.
        max_body_bytes, body_timeout_s: as in ``ulora serve``.
        long_poll_s: how long a poll of a proxy future waits before answering 408.
    """

    upstream: str
    out: Path | None = None
    controller: bool = False
    screen: ScreenConfig | None = None
    client_key: str | None = None
    upstream_key: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 30.0
    long_poll_s: float = 10.0


def _error(status: int, message: str) -> Response:
    message = clip(message)
    return JSONResponse({"detail": message, "error": message}, status_code=status)


def _response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))


class Proxy:
    """The handlers and the lanes of one proxy."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.upstream = Upstream(config.upstream)
        self.lanes: dict[str, Lane] = {}
        self.futures: OrderedDict[str, LocalFuture] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client_key = config.client_key.encode() if config.client_key else None
        # Training models created through this proxy (``{session}:train:{seq}``, as the SDK
        # and the service derive them). Only those get a lane: after a restart the proxy cannot
        # know where an older model's seq_ids stand upstream (docs/proxy.md, "Restarts").
        self.known: set[str] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def lane(self, model_id: str) -> Lane:
        if model_id not in self.lanes:
            out = self.config.out
            records = StepRecords(out / folder_name(model_id) if out else None, model_id)
            core = GuardCore(records, screen=self.config.screen,
                             controller=self.config.controller)
            self.lanes[model_id] = Lane(model_id, self.upstream, core, self.spawn)
        return self.lanes[model_id]

    def _headers(self, request: Request) -> dict[str, str] | None:
        """The headers to send upstream; None when a client key is required and missing."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_HOP_HEADERS}
        if self._client_key is not None:
            given = request.headers.get("x-api-key", "").encode()
            if not hmac.compare_digest(given, self._client_key):
                return None
            headers = {k: v for k, v in headers.items() if k.lower() != "x-api-key"}
            if self.config.upstream_key:
                headers["x-api-key"] = self.config.upstream_key
        return headers

    async def handle(self, request: Request) -> Response:
        headers = self._headers(request)
        if headers is None:
            return _error(401, "invalid or missing proxy key (send it in X-API-Key)")
        try:
            body = await _read_body(request, self.config.max_body_bytes,
                                    self.config.body_timeout_s)
        except ClientDisconnect:
            return Response(status_code=499)
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except _BodyTimeout as exc:
            response = _error(408, str(exc))
            response.headers["connection"] = "close"
            return response
        path = request.url.path
        try:
            if request.method == "POST":
                reply = await self._post(path, body, headers)
            else:
                reply = await self._forward(request.method, self._mapped_path(path), body,
                                            headers, request.url.query)
        except Exception as exc:  # noqa: BLE001 - a clear 500, never a traceback to the client
            logger.exception("proxy error on %s", clip(path, 120))
            return _error(500, f"ulora proxy internal error: {type(exc).__name__}")
        return _response(reply)

    async def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str],
                       query: str = "") -> Reply:
        target = f"{path}?{query}" if query else path
        return await self.upstream.request(method, target, body, headers)

    def _mapped_path(self, path: str) -> str:
        """``/training_runs/{model_id}...`` of a swapped model names its upstream model."""
        for model_id, lane in self.lanes.items():
            if lane.upstream_id != model_id and f"/{model_id}" in path:
                return path.replace(f"/{model_id}", f"/{lane.upstream_id}")
        return path

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        if path == "/api/v1/retrieve_future":
            return await self._retrieve(body, headers)
        if path == "/api/v1/forward_backward":
            msg = self._fwdbwd(body, headers)
            if msg is not None and self._in_window(msg.model_id, msg.seq_id):
                headers = {k: v for k, v in headers.items() if k.lower() != "content-encoding"}
                return await self._submit(Item(msg.seq_id, path, headers, proto=msg),
                                          msg.model_id)
            return await self._forward("POST", path, body, headers)
        data = _json(body)
        if data is None:
            return await self._forward("POST", path, body, headers)
        session, model_seq = data.get("session_id"), data.get("model_seq_id")
        creates = path in ("/api/v1/create_model", "/api/v1/load_weights")
        if creates and isinstance(session, str) and (model_seq == 0 or _is_seq(model_seq)):
            self.known.add(f"{session}:train:{model_seq}")
        model_id, seq = data.get("model_id"), data.get("seq_id")
        if isinstance(model_id, str) and isinstance(seq, int) and self._in_window(model_id, seq):
            return await self._submit(Item(seq, path, headers, body=data), model_id)
        lane = self.lanes.get(model_id) if isinstance(model_id, str) else None
        if lane is not None and lane.upstream_id != model_id:
            body = json.dumps({**data, "model_id": lane.upstream_id}).encode()
        return await self._forward("POST", path, body, headers)

    def _in_window(self, model_id: str, seq: object) -> bool:
        """A request for a lane: a positive seq_id of a model the proxy guards, or of a new one
        that can start at it (anything else the upstream answers as it would directly)."""
        if not _is_seq(seq):
            return False
        # A lane orders every seq_id of its model (a stale or far one gets its answer there:
        # forwarded with the client's numbering, it could run out of order upstream).
        return model_id in self.lanes or int(seq) < MAX_SEQ_AHEAD  # type: ignore[call-overload]

    def _fwdbwd(self, body: bytes, headers: dict[str, str]) -> pb.ForwardBackwardRequest | None:
        if PROTO not in headers.get("content-type", ""):
            return None
        try:
            raw = decompress_body(body, headers.get("content-encoding", ""),
                                  self.config.max_body_bytes)
            msg = pb.ForwardBackwardRequest()
            msg.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - not ours to judge: the upstream answers it
            return None
        return msg if msg.model_id and msg.data else None

    async def _submit(self, item: Item, model_id: str) -> Reply:
        if model_id not in self.lanes and model_id not in self.known:
            message = (f"ulora proxy does not know training model {clip(model_id, 80)}: it was "
                       "created before the proxy (re)started, so where its requests stand "
                       "upstream is lost; resume from your last checkpoint (a new training "
                       "client through this proxy)")
            return Reply.of_json(410, {"detail": message, "error": message})
        lane = self.lane(model_id)
        reply = await lane.submit(item)
        if item.local is not None and item.local.request_id not in self.futures:
            self.futures[item.local.request_id] = item.local
            while len(self.futures) > MAX_LOCAL_FUTURES:
                self.futures.popitem(last=False)
        return reply

    async def _retrieve(self, body: bytes, headers: dict[str, str]) -> Reply:
        data = _json(body)
        rid = data.get("request_id") if data is not None else None
        future = self.futures.get(rid) if isinstance(rid, str) else None
        if future is None or data is None:
            return await self._forward("POST", "/api/v1/retrieve_future", body, headers)
        try:
            await asyncio.wait_for(future.done.wait(), self.config.long_poll_s)
        except TimeoutError:
            return Reply.of_json(408, {"type": "try_again", "request_id": rid,
                                       "queue_state": "active"})
        if future.reply is not None:
            return future.reply
        forwarded = json.dumps({**data, "request_id": future.upstream_id}).encode()
        return await self._forward("POST", "/api/v1/retrieve_future", forwarded, headers)


def _json(body: bytes) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        return parse_json_object(body)
    except InputError:
        return None


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < _INT62


def build_proxy_app(config: ProxyConfig) -> tuple[Starlette, Proxy]:
    """The ASGI app of a proxy for ``config``, and the proxy (tests look inside)."""
    proxy = Proxy(config)
    routes = [Route("/{path:path}", proxy.handle, methods=["GET", "POST", "PUT", "DELETE"])]
    return Starlette(routes=routes), proxy
