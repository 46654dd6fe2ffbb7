"""Run the proxy: in a background thread (tests, benchmarks) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from dataclasses import dataclass

import uvicorn
from ulora_remote.backends.server.protocol import header_timeout_protocol
from ulora_remote.backends.server.runner import _bind

from ulora_remote.errors import BackendError

from .app import Proxy, ProxyConfig, build_proxy_app

__all__ = ["RunningProxy", "proxy_forever", "proxy_in_thread"]

logger = logging.getLogger(__name__)


@dataclass
class RunningProxy:
    """A proxy serving in a background thread: ``base_url`` for the client, ``proxy`` for tests
    that look inside (its lanes and their guards), ``stop()``."""

    base_url: str
    proxy: Proxy
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _prepare(config: ProxyConfig, host: str, port: int,
             header_timeout_s: float) -> tuple[uvicorn.Server, Proxy, tuple[str, int], object]:
    app, proxy = build_proxy_app(config)
    sock = _bind(host, port)
    uv_config = uvicorn.Config(app, http=header_timeout_protocol(header_timeout_s),
                               log_level="warning", lifespan="off", timeout_keep_alive=30,
                               timeout_graceful_shutdown=5)
    return uvicorn.Server(uv_config), proxy, sock.getsockname()[:2], sock


async def _serve(server: uvicorn.Server, proxy: Proxy, sock: object) -> None:
    try:
        await server.serve(sockets=[sock])  # type: ignore[list-item]
    finally:
        await proxy.upstream.close()


def proxy_in_thread(config: ProxyConfig, *, host: str = "127.0.0.1", port: int = 0,
                    header_timeout_s: float = 10.0, start_timeout_s: float = 30.0) -> RunningProxy:
    """Start a proxy in a daemon thread and return once it accepts connections.

    Raises:
        BackendError: it did not start within ``start_timeout_s``.
    """
    server, proxy, (bound, bound_port), sock = _prepare(config, host, port, header_timeout_s)
    thread = threading.Thread(target=lambda: asyncio.run(_serve(server, proxy, sock)),
                              name=f"ulora-proxy-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise BackendError(f"ulora proxy did not start on {bound}:{bound_port}")
        time.sleep(0.02)
    return RunningProxy(f"http://{bound}:{bound_port}", proxy, server, thread)


def proxy_forever(config: ProxyConfig, *, host: str, port: int,
                  header_timeout_s: float = 10.0) -> None:
    """Serve in the foreground until interrupted, saying what it does on stdout."""
    say = functools.partial(print, "ulora proxy:", flush=True)
    server, proxy, (bound, bound_port), sock = _prepare(config, host, port, header_timeout_s)
    out = f"records in {config.out}" if config.out else "no records (--out not given)"
    lr = "the controller sets the learning rate" if config.controller else \
        "the client's learning rate stands"
    say(f"guarding http://{bound}:{bound_port} -> {config.upstream}; {lr}; {out}; "
        "Ctrl-C stops it")
    try:
        asyncio.run(_serve(server, proxy, sock))
    finally:
        say(f"stopped; {len(proxy.lanes)} training model(s) were guarded")
