"""Configuration of ``ulora serve`` and its seeded fault injector.

The knobs exist for tests and benchmarks: a simulated clock cycle (training work waits for the
next cycle boundary, as on the hosted service), an added latency per HTTP answer, and faults
injected by rate and kind. Faults on a *submit* are decided before the request is enqueued, so
the SDK's retry of that submit is safe; a ``410`` is only ever injected on a future and, on a
training model's future, means the model's state is lost.

Faults can be aimed at one request kind (``FaultConfig.requests``: forward, forward_backward,
optim_step, save_state, load_state, sample, create) and at the n-th eligible request of it
(``skip``, ``limit``), so a test puts a fault exactly where it wants it, never by timing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ulora_remote.errors import ConfigurationError

if TYPE_CHECKING:
    from ulora_remote.backends.server.engine import Engine, EngineSpec

__all__ = [
    "FAULT_KINDS",
    "FaultConfig",
    "FaultInjector",
    "FaultKind",
    "REQUEST_KINDS",
    "RequestKind",
    "ServerConfig",
    "is_loopback",
]

FaultKind = Literal["429", "500", "503", "408", "410", "drop"]
FAULT_KINDS: tuple[FaultKind, ...] = ("429", "500", "503", "408", "410", "drop")
# What a storm draws from when no kinds are named (the kinds of earlier releases, so that a
# seed gives the same storm as before).
DEFAULT_KINDS: tuple[FaultKind, ...] = ("429", "500", "408", "410", "drop")

# 410 means "this request's promise is gone": only a future may get it (a submit gets the other
# kinds, which the SDK retries without re-executing anything). By default only a training
# model's future gets it; a config aimed at request kinds may put it on any future.
SUBMIT_KINDS: frozenset[str] = frozenset({"429", "500", "503", "408", "drop"})
FUTURE_KINDS: frozenset[str] = frozenset(FAULT_KINDS)

RequestKind = Literal[
    "forward", "forward_backward", "optim_step", "save_state", "load_state", "sample", "create"
]
REQUEST_KINDS: tuple[RequestKind, ...] = (
    "forward", "forward_backward", "optim_step", "save_state", "load_state", "sample", "create"
)


@dataclass(frozen=True)
class FaultConfig:
    """Which faults to inject, how often, and under which seed.

    Args:
        rate: probability in [0, 1] that an eligible request gets a fault.
        kinds: the kinds to draw from (uniformly, among those eligible for the request).
        seed: the same seed and the same request sequence give the same faults.
        requests: only requests of these kinds are eligible, at their submit and at each poll
            of their future (None: every request, and 410 only on a training future).
        on: where a fault may land: ``"submit"``, ``"future"`` (a poll) or ``"any"``.
        skip: let this many distinct eligible requests through (a submit and a future count
            apart; a retry or re-poll of one is the same request) before the first fault.
        limit: inject at most this many faults (None: no limit).
    """

    rate: float = 0.0
    kinds: tuple[FaultKind, ...] = DEFAULT_KINDS
    seed: int = 0
    requests: tuple[RequestKind, ...] | None = None
    on: Literal["any", "submit", "future"] = "any"
    skip: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigurationError(f"fault rate={self.rate!r} must be in [0, 1]")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise ConfigurationError(
                f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}"
            )
        bad = [r for r in self.requests or () if r not in REQUEST_KINDS]
        if bad:
            raise ConfigurationError(
                f"unknown request kinds {bad}; choose from {', '.join(REQUEST_KINDS)}"
            )
        if self.on not in ("any", "submit", "future"):
            raise ConfigurationError(f"fault on={self.on!r} must be any, submit or future")
        if self.skip < 0 or (self.limit is not None and self.limit < 0):
            raise ConfigurationError(f"fault skip={self.skip} and limit={self.limit} must be ≥ 0")


class _Rule:
    """One ``FaultConfig`` with the state its ``skip`` and ``limit`` need."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.passed: set[str] = set()  # requests let through by ``skip``
        self.injected = 0


class FaultInjector:
    """Decides, per request, whether to inject a fault (thread-safe, deterministic).

    A decision depends on the seed, the endpoint, the request body and how many identical
    requests came before (so a retried request draws again and eventually gets through), never
    on wall-clock time or on unrelated traffic such as heartbeats. Several configs may apply at
    once (a storm and one aimed fault); the first that injects decides.
    """

    def __init__(self, config: FaultConfig, *more: FaultConfig) -> None:
        self._rules = [_Rule(c) for c in (config, *more)]
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}
        #: faults injected per (request kind, fault kind); request kind "other" when unknown
        self.injected_at: dict[tuple[str, str], int] = {}

    def reconfigure(self, config: FaultConfig, *more: FaultConfig) -> None:
        """Switch to ``config`` (and ``more``) from the next request on (e.g. start a storm
        mid-run); ``skip`` and ``limit`` count afresh."""
        rules = [_Rule(c) for c in (config, *more)]
        with self._lock:
            self._rules = rules

    def decide(self, path: str, body: bytes, *, on_future: bool,
               request: str | None = None, training: bool = False) -> str | None:
        """Return the fault kind to inject for this request, or None.

        Args:
            path: the request path (part of the key, so endpoints draw independently).
            body: the raw request body.
            on_future: True for a poll of a future (``retrieve_future``).
            request: the request kind (``REQUEST_KINDS``), None for other endpoints.
            training: the future belongs to a training model (a 410 then loses its state).
        """
        rules = self._rules
        if all(r.config.rate <= 0.0 for r in rules):
            return None
        key = f"{path}|{hashlib.sha256(body).hexdigest()}"  # retries and re-polls: equal bodies
        with self._lock:
            if len(self._attempts) > 200_000:  # bounded memory on long benchmark runs
                self._attempts.clear()
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        for rule in rules:
            kind = self._draw(rule, key, attempt, on_future=on_future, request=request,
                              training=training)
            if kind is not None:
                return kind
        return None

    def _draw(self, rule: _Rule, key: str, attempt: int, *, on_future: bool,
              request: str | None, training: bool) -> str | None:
        cfg = rule.config
        if cfg.requests is not None and request not in cfg.requests:
            return None
        if cfg.on != "any" and (cfg.on == "future") != on_future:
            return None
        aimed = cfg.requests is not None
        allowed = FUTURE_KINDS if on_future and (training or aimed) else SUBMIT_KINDS
        kinds = [k for k in cfg.kinds if k in allowed]
        if cfg.rate <= 0.0 or not kinds:
            return None
        with self._lock:
            if cfg.limit is not None and rule.injected >= cfg.limit:
                return None
            if key in rule.passed:
                return None
            if len(rule.passed) < cfg.skip:
                rule.passed.add(key)
                return None
        draw = hashlib.sha256(f"{cfg.seed}|{key}|{attempt}".encode()).digest()
        if int.from_bytes(draw[:8], "big") / 2**64 >= cfg.rate:
            return None
        kind = kinds[draw[8] % len(kinds)]
        with self._lock:
            if cfg.limit is not None and rule.injected >= cfg.limit:
                return None
            rule.injected += 1
            self.injected[kind] = self.injected.get(kind, 0) + 1
            at = (request or "other", kind)
            self.injected_at[at] = self.injected_at.get(at, 0) + 1
        return kind


# (field, lowest, highest), in seconds. The SDK's client-side timeout for one poll is 45 s,
# hence long_poll_s ≤ 40.
_SECONDS = (
    ("cycle_s", 0.0, 3600.0),
    ("latency_s", 0.0, 600.0),
    ("long_poll_s", 1e-3, 40.0),
    ("header_timeout_s", 1e-3, 3600.0),
    ("body_timeout_s", 1e-3, 3600.0),
)


def is_loopback(host: str) -> bool:
    """True when ``host`` names only the local machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``ulora serve`` needs; validated at construction.

    Args:
        host: interface to bind; loopback unless said otherwise (then an API key is required
            and a warning is logged).
        port: TCP port; 0 picks a free one.
        base_model: "small", "medium" or a local Hugging Face model directory.
        checkpoint_dir: where checkpoints and the checkpoint index live.
        api_key: when set, every request must carry it in ``X-API-Key``.
        cycle_s: simulated clock cycle; 0 runs work as soon as it is ready.
        latency_s: added to every HTTP answer (simulated network latency).
        faults: the fault injector's configuration.
        long_poll_s: how long ``retrieve_future`` holds a request before answering 408.
        max_body_bytes: larger request bodies get 413.
        header_timeout_s: a request's line and headers must arrive within this many seconds of
            its first byte (or of the connection opening); else 408 and the connection closes.
        body_timeout_s: its body must then arrive within this many seconds; else 408 and the
            connection closes. Idle keep-alive connections close after 30 s.
        lora_alpha: LoRA alpha of every model (the SDK does not send one).
        threads: torch threads per engine (None: torch's default, one per core). 1 by default:
            engines run one job at a time beside the HTTP loop, and on a shared 2-core machine
            torch's default made a burst of 50 evaluation requests take 11-24 s with 408s on its
            long polls, against 2-3 s with one thread (benchmarks/serve_eval_burst.py).
        use_pyqwest: tell clients to use the SDK's pyqwest transport (off: plain httpx, which
            respx and proxies can see).
        engine_factory: builds an engine; None uses the local backend (the default).
        max_live_models: at most this many training models are live at once (None: no cap);
            a further model creation waits, and its future answers ``try_again`` with
            ``queue_state = "paused_rate_limit"``, as the hosted service does at its cap of
            concurrent LoRAs, until a session with a live model finishes.
        refuse_creates: the first N model creations (``create_model``, or a client created
            from a checkpoint) are refused with HTTP 429, the hosted service's rate-limit answer,
            before anything is enqueued.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    base_model: str = "small"
    checkpoint_dir: Path = Path("ulora-serve-checkpoints")
    api_key: str | None = None
    cycle_s: float = 0.0
    latency_s: float = 0.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    long_poll_s: float = 10.0
    max_body_bytes: int = 64 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    lora_alpha: float = 16.0
    threads: int | None = 1
    use_pyqwest: bool = False
    engine_factory: Callable[[EngineSpec], Engine] | None = None
    max_live_models: int | None = None
    refuse_creates: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port={self.port} must be in [0, 65535]")
        for name, low, high in _SECONDS:
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigurationError(
                    f"{name}={value!r} must be a number of seconds in [{low:g}, {high:g}]"
                )
        if not 1024 <= self.max_body_bytes <= 2**30:
            raise ConfigurationError(
                f"max_body_bytes={self.max_body_bytes} must be in [1024, {2**30}]"
            )
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ConfigurationError(f"threads={self.threads} must be in [1, 1024] (or None)")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigurationError(f"lora_alpha={self.lora_alpha!r} must be finite and > 0")
        if self.max_live_models is not None and self.max_live_models < 1:
            raise ConfigurationError(
                f"max_live_models={self.max_live_models} must be ≥ 1 (omit it for no cap)"
            )
        if self.refuse_creates < 0:
            raise ConfigurationError(f"refuse_creates={self.refuse_creates} must be ≥ 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigurationError("api_key is empty; omit it to serve without a key")
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigurationError(
                f"host={self.host!r} is reachable from other machines; serving there without "
                "an API key would let any of them train and read checkpoints: set api_key "
                "(--api-key or $ULORA_SERVE_API_KEY), or bind to 127.0.0.1"
            )
        object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
