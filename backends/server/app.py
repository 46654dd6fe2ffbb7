"""The HTTP layer: a Starlette app speaking the Tinker SDK's wire protocol.

Each handler authenticates (constant-time), reads a bounded body within its deadline, maybe
injects a fault (before anything is enqueued), parses the body (JSON through ``limits``, then
the SDK's own types) and calls the service. Errors become 4xx answers with a clipped message:
400 malformed or absurd, 401 key, 404 unknown, 408 body too slow (the connection closes), 410 lost
state, 413 too large. A client that leaves mid-body is counted (``client_disconnects``), not
logged as an error. Submits answer ``{request_id}``; ``retrieve_future`` long-polls and answers
408 ``try_again`` when the result is not ready yet.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from tinker import types

from ulora_remote.errors import BackendError, InputError

from .config import FaultInjector, ServerConfig
from .limits import BodyTooLarge, clip, describe_validation_error, parse_json_object
from .scheduler import JobError, ModelGone
from .service import Service
from .wire import decode_forward_backward, decompress_body

__all__ = ["build_app"]

logger = logging.getLogger(__name__)

PROTO = "application/x-protobuf"
Handler = Callable[[Request, bytes], Awaitable[Response]]


class _BodyTimeout(InputError):
    """The body did not arrive within ``body_timeout_s`` (408, and the connection closes)."""


class _DropConnection(Response):
    """Start a response and never finish it: the server closes the connection mid-answer,
    which the client sees as a dropped connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]}
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    message = clip(message)  # a message may echo a caller's value of any length
    return JSONResponse({"detail": message, "error": message}, status_code=status, headers=headers)


# What the hosted service reports while a model creation waits for a free slot (the SDK's
# QueueStateLogger says "concurrent training clients rate limit hit" for this state).
PAUSED_REASON = "concurrent training clients rate limit hit"


def _try_again(request_id: str, queue_state: str) -> JSONResponse:
    body = {"type": "try_again", "request_id": request_id, "queue_state": queue_state}
    if queue_state == "paused_rate_limit":
        body["queue_state_reason"] = f"{PAUSED_REASON} (ulora serve --max-live-models)"
    return JSONResponse(body, status_code=408)


def _create_refused() -> JSONResponse:
    """HTTP 429, which the SDK retries with backoff (it honours retry-after-ms) 10 times."""
    message = "model creation rate limit hit (ulora serve --refuse-creates); retry later"
    return JSONResponse(
        {"detail": message, "error": message}, status_code=429, headers={"retry-after-ms": "100"}
    )


def fault_response(kind: str) -> Response:
    """The answer for an injected fault of ``kind`` (see ``FAULT_KINDS``)."""
    if kind == "drop":
        return _DropConnection()
    if kind == "408":
        return JSONResponse({"type": "try_again", "queue_state": "active"}, status_code=408)
    headers = {"retry-after-ms": "50"} if kind in ("429", "503") else None
    return JSONResponse(
        {"detail": f"injected fault {kind}"}, status_code=int(kind), headers=headers
    )


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout_s`` seconds of the headers.

    Raises:
        BodyTooLarge: over ``limit``. _BodyTimeout: too slow. ClientDisconnect: the client left.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(
            f"request body of {clip(declared, 40)} bytes exceeds the limit of {limit}"
        )
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
    except TimeoutError as exc:
        raise _BodyTimeout(
            f"request body not received within {timeout_s:g} s ({len(body)} bytes arrived); "
            "the connection is closed"
        ) from exc
    return bytes(body)


def _status_for(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, BodyTooLarge):
        return 413, str(exc)
    if isinstance(exc, _BodyTimeout):
        return 408, str(exc)
    if isinstance(exc, ModelGone):
        return (410 if exc.lost else 404), str(exc)
    if isinstance(exc, pydantic.ValidationError):
        return 400, describe_validation_error(exc)
    if isinstance(exc, InputError | JobError | BackendError):
        return 400, str(exc)
    logger.exception("unexpected error in a handler")
    return 500, f"internal error: {type(exc).__name__}: {exc}"


class Api:
    """The handlers, bound to one service, config and fault injector."""

    def __init__(self, service: Service, config: ServerConfig, faults: FaultInjector) -> None:
        self.service = service
        self.config = config
        self.faults = faults
        self._key = config.api_key.encode() if config.api_key else None
        self.client_disconnects = 0  # requests whose client left before its body arrived

    def _authorized(self, request: Request) -> bool:
        if self._key is None:
            return True
        given = request.headers.get("x-api-key", "").encode()
        return hmac.compare_digest(given, self._key)

    def route(self, handler: Handler, *, faults: bool = True, auth: bool = True,
              request_kind: str | None = None) -> Handler:
        """Wrap ``handler`` with latency, auth, the body limit, submit faults and error mapping
        (``request_kind``: what a fault aimed at request kinds calls this endpoint)."""

        async def wrapped(request: Request) -> Response:
            if self.config.latency_s > 0:
                await asyncio.sleep(self.config.latency_s)
            if auth and not self._authorized(request):
                return _error(401, "invalid or missing API key (send it in X-API-Key)")
            try:
                body = await _read_body(
                    request, self.config.max_body_bytes, self.config.body_timeout_s
                )
                if faults and (kind := self.faults.decide(request.url.path, body, on_future=False,
                                                          request=request_kind)):
                    return fault_response(kind)
                return await handler(request, body)
            except ClientDisconnect:
                # Nobody is left to answer: not an error of ours, and nothing was enqueued.
                self.client_disconnects += 1
                logger.debug("client left before sending the body of %s", request.url.path)
                return Response(status_code=499)
            except Exception as exc:
                status, message = _status_for(exc)
                close = {"connection": "close"} if isinstance(exc, _BodyTimeout) else None
                return _error(status, message, close)

        return wrapped  # type: ignore[return-value]

    # ---- service-level endpoints ---------------------------------------------------------

    async def client_config(self, request: Request, body: bytes) -> Response:
        return JSONResponse(
            {
                "pjwt_auth_enabled": False,
                "use_pyqwest_transport": self.config.use_pyqwest,
                "proto_compress_fwdbwd": False,
                "sample_use_retrieve_futures": False,
                "custom_loss_server_side": False,
                "sample_join_sampling_session": False,
            }
        )

    async def dynamic_config(self, request: Request, body: bytes) -> Response:
        return JSONResponse(types.ClientDynamicConfigResponse().model_dump(mode="json"))

    async def capabilities(self, request: Request, body: bytes) -> Response:
        return JSONResponse({"supported_models": self.service.served().capabilities()})

    async def healthz(self, request: Request, body: bytes) -> Response:
        return JSONResponse({"status": "ok"})

    async def telemetry(self, request: Request, body: bytes) -> Response:
        return JSONResponse({"status": "accepted"})

    async def create_session(self, request: Request, body: bytes) -> Response:
        types.CreateSessionRequest.model_validate(parse_json_object(body))
        session_id = self.service.create_session()
        return JSONResponse({"type": "create_session", "session_id": session_id})

    async def heartbeat(self, request: Request, body: bytes) -> Response:
        req = types.SessionHeartbeatRequest.model_validate(parse_json_object(body))
        self.service.session(req.session_id)
        return JSONResponse({"type": "session_heartbeat"})

    async def finish(self, request: Request, body: bytes) -> Response:
        self.service.finish_session(request.path_params["session_id"])
        return JSONResponse({})

    async def counters(self, request: Request, body: bytes) -> Response:
        return JSONResponse(
            {
                "models": self.service.counters.as_json(),
                "faults_injected": self.faults.injected,
                "cycles": self.service.scheduler.cycles,
                "long_poll_timeouts": self.service.scheduler.wait_timeouts,
                "client_disconnects": self.client_disconnects,
                "cycle_stats": self.service.scheduler.cycle_stats(),
                "creates_refused": self.service.creates_refused,
                "peak_live_models": self.service.peak_live_models,
            }
        )

    # ---- submits -------------------------------------------------------------------------

    def _submitted(self, request_id: str, model_id: str | None = None, *, kind: str,
                   **extra: Any) -> Response:
        record = self.service.scheduler.get(request_id)
        if record is not None:  # its future's polls draw faults aimed at ``kind``
            record.kind = kind
        return JSONResponse({"request_id": request_id, "model_id": model_id, **extra})

    async def create_model(self, request: Request, body: bytes) -> Response:
        req = types.CreateModelRequest.model_validate(parse_json_object(body))
        if self.service.refuse_create():
            return _create_refused()
        return self._submitted(self.service.create_model(req), kind="create")

    async def get_info(self, request: Request, body: bytes) -> Response:
        req = types.GetInfoRequest.model_validate(parse_json_object(body))
        return JSONResponse(self.service.get_info(req.model_id))

    async def forward_backward(self, request: Request, body: bytes) -> Response:
        if PROTO not in request.headers.get("content-type", ""):
            raise InputError(f"forward_backward takes a protobuf body (Content-Type: {PROTO})")
        raw = decompress_body(
            body, request.headers.get("content-encoding", ""), self.config.max_body_bytes
        )
        call = decode_forward_backward(raw)
        # Decided here, not in ``route``: forward and forward_backward share this endpoint.
        kind = "forward" if call.forward_only else "forward_backward"
        if fault := self.faults.decide(request.url.path, body, on_future=False, request=kind):
            return fault_response(fault)
        return self._submitted(self.service.forward_backward(call), call.model_id, kind=kind)

    async def optim_step(self, request: Request, body: bytes) -> Response:
        req = types.OptimStepRequest.model_validate(parse_json_object(body))
        return self._submitted(self.service.optim_step(req), req.model_id, kind="optim_step")

    async def save_weights(self, request: Request, body: bytes) -> Response:
        req = types.SaveWeightsRequest.model_validate(parse_json_object(body))
        return self._submitted(self.service.save_weights(req), req.model_id, kind="save_state")

    async def save_for_sampler(self, request: Request, body: bytes) -> Response:
        req = types.SaveWeightsForSamplerRequest.model_validate(parse_json_object(body))
        return self._submitted(self.service.save_weights_for_sampler(req), req.model_id,
                               kind="save_for_sampler")

    async def save_external(self, request: Request, body: bytes) -> Response:
        req = types.SaveWeightsExternalRequest.model_validate(parse_json_object(body))
        return self._submitted(self.service.save_weights_external(req), req.model_id,
                               kind="save_external")

    async def training_run(self, request: Request, body: bytes) -> Response:
        return JSONResponse(self.service.training_run(request.path_params["model_id"]))

    async def run_checkpoints(self, request: Request, body: bytes) -> Response:
        return JSONResponse(self.service.list_checkpoints(request.path_params["model_id"]))

    async def weights_info(self, request: Request, body: bytes) -> Response:
        path = parse_json_object(body).get("tinker_path")
        if not isinstance(path, str):
            raise InputError("weights_info needs a string tinker_path")
        return JSONResponse(self.service.weights_info(path))

    async def load_weights(self, request: Request, body: bytes) -> Response:
        req = types.LoadWeightsRequest.model_validate(parse_json_object(body))
        if req.session_id is not None and self.service.refuse_create():  # a model creation
            return _create_refused()
        return self._submitted(self.service.load_weights(req), req.model_id, kind="load_state")

    async def create_sampling_session(self, request: Request, body: bytes) -> Response:
        req = types.CreateSamplingSessionRequest.model_validate(parse_json_object(body))
        sampler_id = self.service.create_sampling_session(req)
        return JSONResponse({"type": "create_sampling_session", "sampling_session_id": sampler_id})

    async def get_sampler(self, request: Request, body: bytes) -> Response:
        return JSONResponse(self.service.get_sampler(request.path_params["sampler_id"]))

    async def asample(self, request: Request, body: bytes) -> Response:
        req = types.SampleRequest.model_validate(parse_json_object(body))
        request_id, sequence_ids = self.service.asample(req)
        return self._submitted(request_id, sample_sequence_ids=sequence_ids, kind="sample")

    # ---- futures -------------------------------------------------------------------------

    async def retrieve_future(self, request: Request, body: bytes) -> Response:
        req = types.FutureRetrieveRequest.model_validate(parse_json_object(body))
        scheduler = self.service.scheduler
        record = scheduler.get(req.request_id)
        if record is None:
            raise ModelGone(f"unknown request_id {req.request_id!r}", lost=False)
        model_id = record.model_id
        kind = self.faults.decide(request.url.path, body, on_future=True, request=record.kind,
                                  training=model_id is not None)
        if kind == "410" and model_id is not None:
            scheduler.mark_lost(model_id)
            self.service.counters.mark_lost(model_id)
        if kind is not None:
            return fault_response(kind)
        if not await scheduler.wait(record, self.config.long_poll_s):
            return _try_again(record.request_id, record.queue_state)
        if record.error is not None:
            if model_id is not None and scheduler.is_lost(model_id):
                return _error(410, record.error[0])
            return JSONResponse({"error": record.error[0], "category": record.error[1]})
        assert record.outcome is not None
        if record.outcome.is_proto:
            return Response(record.outcome.body, media_type=PROTO)  # type: ignore[arg-type]
        return JSONResponse(record.outcome.body)


def build_app(service: Service, config: ServerConfig, faults: FaultInjector) -> Starlette:
    """The ASGI app for ``service`` (the scheduler must be started on the serving loop)."""
    api = Api(service, config, faults)
    r = api.route
    post, get, both = ["POST"], ["GET"], ["GET", "POST"]
    v1 = "/api/v1"
    routes = [
        Route(f"{v1}/client/config", r(api.client_config), methods=both),
        Route(f"{v1}/client/dynamic_config", r(api.dynamic_config), methods=both),
        Route(f"{v1}/get_server_capabilities", r(api.capabilities), methods=both),
        Route(f"{v1}/healthz", r(api.healthz, faults=False, auth=False), methods=both),
        Route(f"{v1}/telemetry", r(api.telemetry), methods=post),
        Route(f"{v1}/create_session", r(api.create_session), methods=post),
        Route(f"{v1}/session_heartbeat", r(api.heartbeat), methods=post),
        Route(v1 + "/sessions/{session_id}/finish", r(api.finish), methods=post),
        Route(f"{v1}/create_model", r(api.create_model, request_kind="create"), methods=post),
        Route(f"{v1}/get_info", r(api.get_info), methods=post),
        # forward_backward draws its faults itself (it serves two request kinds).
        Route(f"{v1}/forward_backward", r(api.forward_backward, faults=False), methods=post),
        Route(f"{v1}/optim_step", r(api.optim_step, request_kind="optim_step"), methods=post),
        Route(f"{v1}/save_weights", r(api.save_weights, request_kind="save_state"),
              methods=post),
        Route(f"{v1}/save_weights_for_sampler", r(api.save_for_sampler), methods=post),
        Route(f"{v1}/load_weights", r(api.load_weights, request_kind="load_state"),
              methods=post),
        Route(f"{v1}/save_weights_external", r(api.save_external), methods=post),
        Route(v1 + "/training_runs/{model_id}", r(api.training_run), methods=get),
        Route(v1 + "/training_runs/{model_id}/checkpoints", r(api.run_checkpoints), methods=get),
        Route(f"{v1}/weights_info", r(api.weights_info), methods=post),
        Route(f"{v1}/create_sampling_session", r(api.create_sampling_session), methods=post),
        Route(v1 + "/samplers/{sampler_id}", r(api.get_sampler), methods=get),
        Route(f"{v1}/asample", r(api.asample, request_kind="sample"), methods=post),
        # retrieve_future draws its own faults: only there may a 410 hit a training future.
        Route(f"{v1}/retrieve_future", r(api.retrieve_future, faults=False), methods=post),
        Route("/ulora/v1/counters", r(api.counters, faults=False), methods=get),
    ]
    return Starlette(routes=routes)
