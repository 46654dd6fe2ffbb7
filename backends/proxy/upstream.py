"""The proxy's side of the upstream service: raw requests, the proxy's own submits with the
SDK's retry rule, and polling a future to its end.

``Reply`` is an upstream answer as it arrived (status, headers, body), so that a pass-through
answer reaches the client byte for byte. Requests the proxy makes on its own (a deferred submit,
a cancelling ``forward_backward``, a snapshot) are retried as the SDK retries a submit: on a
connection error, 408, 429 and 5xx, with backoff that honours ``retry-after-ms``. Polls repeat on
408 (not ready) and on those same transient failures. Nothing here logs a header: the client's
key travels in them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["HOP_HEADERS", "REQUEST_HOP_HEADERS", "PollFailed", "Reply", "Upstream"]

logger = logging.getLogger(__name__)

PROTO = "application/x-protobuf"
# Headers that describe one hop, never the message: not copied in either direction.
HOP_HEADERS = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
    "accept-encoding", "content-encoding", "proxy-authorization", "proxy-connection", "date",
    "server",
})
# A request body goes on as it came, so its Content-Encoding goes with it (a response body is
# decoded by httpx, so its Content-Encoding is dropped above).
REQUEST_HOP_HEADERS = HOP_HEADERS - {"content-encoding"}
SUBMIT_TRIES = 10
POLL_S = 30.0


@dataclass(frozen=True)
class Reply:
    """One upstream answer (or one the proxy made up: ``synthetic``)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    synthetic: bool = False

    @classmethod
    def of_json(cls, status: int, data: Mapping[str, Any]) -> Reply:
        return cls(status, json.dumps(data).encode(), (("content-type", "application/json"),),
                   synthetic=True)

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "content-type"), "")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def transient(self) -> bool:
        """What the SDK retries: 408, 409 (a lost race), 429 and 5xx."""
        return self.status in (408, 409, 429) or self.status >= 500


class PollFailed(Exception):
    """A future the proxy waited on ended in an error (the reply says which)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"upstream future failed with HTTP {reply.status}")
        self.reply = reply


@dataclass
class Upstream:
    """An HTTP client for the upstream base URL (``http://host:port``)."""

    base_url: str
    timeout_s: float = 60.0
    _client: httpx.AsyncClient | None = field(default=None, repr=False)

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url.rstrip("/"), timeout=self.timeout_s,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def request(self, method: str, path: str, body: bytes,
                      headers: Mapping[str, str]) -> Reply:
        """One request, answered as it came; a connection failure is a 502 made up here."""
        try:
            r = await self.client().request(method, path, content=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            return Reply.of_json(502, {"detail": f"upstream unreachable: {type(exc).__name__}",
                                       "error": "upstream unreachable"})
        kept = tuple((k, v) for k, v in r.headers.items() if k.lower() not in HOP_HEADERS)
        return Reply(r.status_code, r.content, kept)

    async def submit(self, path: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """A submit the proxy owns, retried as the SDK retries one (module docstring)."""
        delay = 0.25
        reply = await self.request("POST", path, body, headers)
        for _ in range(SUBMIT_TRIES - 1):
            if not reply.transient:
                return reply
            await asyncio.sleep(_retry_after(reply, delay))
            delay = min(delay * 2, 8.0)
            reply = await self.request("POST", path, body, headers)
        return reply

    async def poll(self, request_id: str, headers: Mapping[str, str], *,
                   proto: bool = False) -> Reply:
        """Wait for future ``request_id`` and return its successful result.

        Raises:
            PollFailed: the future failed (``{"error"}``), or the upstream answered a
            non-transient error (410 lost state, 404 unknown id, ...).
        """
        body = json.dumps({"request_id": request_id}).encode()
        hdrs = {**headers, "content-type": "application/json"}
        if proto:
            hdrs["accept"] = PROTO
        delay = 0.25
        while True:
            reply = await self.request("POST", "/api/v1/retrieve_future", body, hdrs)
            if reply.status == 408:
                continue  # a long poll that ended before the result: ask again
            if reply.transient:
                await asyncio.sleep(_retry_after(reply, delay))
                delay = min(delay * 2, 8.0)
                continue
            if reply.status != 200:
                raise PollFailed(reply)
            if PROTO in reply.content_type:
                return reply
            data = reply.json()
            if isinstance(data, dict) and data.get("type") == "try_again":
                continue
            if isinstance(data, dict) and "error" in data:
                raise PollFailed(reply)
            return reply


def _retry_after(reply: Reply, default: float) -> float:
    for k, v in reply.headers:
        if k.lower() == "retry-after-ms":
            try:
                return min(max(float(v) / 1000, 0.0), 30.0)
            except ValueError:
                return default
    return default
