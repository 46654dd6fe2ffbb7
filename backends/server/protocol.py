"""uvicorn's HTTP/1.1 protocol with a deadline on reading each request's headers.

uvicorn closes idle keep-alive connections, but a connection that sends nothing, or sends its
request line and headers a byte at a time, is held for ever (a "slowloris"). This protocol arms
a timer when a connection opens and whenever the first bytes of a new request arrive, and
disarms it once the headers are complete (uvicorn then starts the request's cycle). When it
fires, the client gets a 408 with a message and the connection is closed. The body has its own
deadline, enforced by the app (``app._read_body``).

h11 is uvicorn's pure-Python protocol and a dependency of uvicorn itself, so this is always
available; the ``httptools`` variant is not used.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["header_timeout_protocol"]

logger = logging.getLogger(__name__)


def _timeout_answer(timeout_s: float) -> bytes:
    message = f"request headers not received within {timeout_s:g} s; the connection is closed"
    body = json.dumps({"detail": message, "error": message}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol plus the header deadline of the module docstring."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._cycle_at_arm: object = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of a new request
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._cycle_at_arm:
            self._disarm()  # its headers are complete: uvicorn started a new cycle

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._cycle_at_arm = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.cycle is not self._cycle_at_arm:
            return
        logger.debug("closed a connection: no request headers in %g s", self.header_timeout_s)
        self.transport.write(_timeout_answer(self.header_timeout_s))
        self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type(
        "HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s}
    )
