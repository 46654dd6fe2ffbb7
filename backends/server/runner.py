"""Run the server: in a background thread (tests, benchmarks) or in the foreground (CLI).

``serve_in_thread(config)`` builds the service (loading the served model once, so a bad
``base_model`` fails right here), binds the socket (port 0 picks a free one) and returns a
``RunningServer`` with ``base_url``, ``counters`` and ``stop()``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from ulora_remote.errors import BackendError

from ..catalog import WHEEL_MODELS
from .app import build_app
from .config import FaultInjector, ServerConfig, is_loopback
from .counters import Counters
from .protocol import header_timeout_protocol
from .scheduler import Scheduler
from .service import Service

__all__ = ["RunningServer", "serve_forever", "serve_in_thread"]

logger = logging.getLogger(__name__)

_DROP_MESSAGE = "ASGI callable returned without completing response"


class _HideInjectedDrops(logging.Filter):
    """Injected dropped connections are deliberate; keep them out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROP_MESSAGE)


@dataclass
class RunningServer:
    """A server running in a background thread.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:54321``; pass it to ``tinker.ServiceClient``.
        counters: executed forward_backward / optim_step / forward per model (live view).
        faults: the fault injector (``faults.injected`` counts injected faults by kind).
        service: the server's state, for tests that look inside.
    """

    base_url: str
    counters: Counters
    faults: FaultInjector
    service: Service
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def cycles(self) -> int:
        """Clock cycles that ran work so far (one per dispatch round when ``cycle_s`` is 0)."""
        return self.service.scheduler.cycles

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for the thread to end (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only when it does, and
    # without it Nagle plus delayed ACKs cost ~40 ms per request (measured 47 ms vs 1 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def _prepare(config: ServerConfig) -> tuple[Service, FaultInjector, uvicorn.Server, socket.socket]:
    if not is_loopback(config.host):  # ServerConfig refuses it without an API key
        logger.warning(
            "ulora serve is listening on %s, reachable from other machines; bind to 127.0.0.1 "
            "unless you mean it",
            config.host,
        )
    scheduler = Scheduler(config.cycle_s)
    service = Service(config, scheduler)
    service.served()  # load the served model now: a bad base_model fails before binding
    faults = FaultInjector(config.faults)
    sock = _bind(config.host, config.port)
    app = build_app(service, config, faults)
    uv_config = uvicorn.Config(
        app,
        http=header_timeout_protocol(config.header_timeout_s),
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    uv_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideInjectedDrops) for f in uv_log.filters):
        uv_log.addFilter(_HideInjectedDrops())
    return service, faults, uvicorn.Server(uv_config), sock


async def _serve(server: uvicorn.Server, service: Service, sock: socket.socket) -> None:
    service.scheduler.start()
    try:
        await server.serve(sockets=[sock])
    finally:
        await service.scheduler.stop()
        service.close()


def serve_in_thread(config: ServerConfig, *, start_timeout_s: float = 30.0) -> RunningServer:
    """Start a server in a daemon thread and return once it accepts connections.

    Raises:
        MissingExtraError: the engine's extra is not installed.
        BackendError: the server did not start within ``start_timeout_s``.
    """
    service, faults, server, sock = _prepare(config)
    host, port = sock.getsockname()[:2]
    thread = threading.Thread(
        target=lambda: asyncio.run(_serve(server, service, sock)),
        name=f"ulora-serve-{port}",
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise BackendError(f"ulora serve did not start on {host}:{port}")
        time.sleep(0.02)
    url_host = f"[{host}]" if ":" in host else host
    return RunningServer(
        f"http://{url_host}:{port}", service.counters, faults, service, server, thread
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_forever(config: ServerConfig) -> None:
    """Serve in the foreground until interrupted (Ctrl-C), saying what it does on stdout."""
    say = functools.partial(print, "ulora serve:", flush=True)
    note = ("" if "/" in config.base_model else
            " (converted from its wheel on first use, then cached)"
            if config.base_model in WHEEL_MODELS else
            " (built in: pre-trained on first use, then cached)")
    say(f"loading the base model {config.base_model!r}{note}")
    service, _, server, sock = _prepare(config)
    host, port = sock.getsockname()[:2]
    served = service.served()
    auth = "API key required" if config.api_key else "no API key"
    say(f"serving {served.name!r} ({served.max_context_length or '?'} positions) on "
        f"http://{host}:{port}, {auth}; checkpoints in {service.index.root}; Ctrl-C stops it")
    named = WHEEL_MODELS.get(config.base_model)
    renderer = f", renderer_name={named.cookbook_renderer!r}" if named is not None else ""
    say(f"tinker-cookbook: model_name={served.tokenizer_name!r} (its tokenizer, offline)"
        f"{renderer}")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it; by default that would end the
    # process before the line below, so make it end like Ctrl-C instead.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(_serve(server, service, sock))
    finally:
        n = server.server_state.total_requests
        say(f"stopped after {n} request{'' if n == 1 else 's'}; checkpoints stay in "
            f"{service.index.root}")
