"""One run of a sweep: the run specification, the one rule (reuse, resume or start), and a backend
that a sweep can stop between two requests.

``execute`` is a plain top-level function so that both a sweep's threads (Tinker) and its worker
processes (local) call it. A stop is a ``KeyboardInterrupt`` raised inside the run's own thread
at its next request: the runner then flushes its files and leaves the run resumable from its
last checkpoint, exactly as on Ctrl-C in ``ulora run``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from ulora_remote.backend import (
    AdamParams,
    AdapterBackend,
    Example,
    ForwardBackwardResult,
    Future,
    OptimStepResult,
    TrainingBackend,
)
from ulora_remote.delegate import DelegatingAdapterBackend, DelegatingBackend
from ulora_remote.run.rundir import RunDir

__all__ = [
    "LOG_SUFFIX",
    "RunOutcome",
    "log_path",
    "RunSpec",
    "State",
    "StopFlag",
    "StoppableAdapterBackend",
    "StoppableBackend",
    "execute",
    "open_log",
    "plan_action",
    "run_logged",
    "stoppable",
]

#: Each run's console log lies beside its run directory, ``<run directory>.log``: the run
#: directory itself holds only what a run writes (a folder ulora did not make is never touched).
LOG_SUFFIX = ".log"


def log_path(spec: RunSpec) -> Path:
    """Where the console of ``spec``'s run goes: ``<run directory>.log``."""
    run_dir = Path(spec.run_dir)
    return run_dir.with_name(run_dir.name + LOG_SUFFIX)

Action = Literal["reuse", "resume", "start"]
#: A run's state in a sweep's progress.
State = Literal["waiting", "running", "finished", "failed", "interrupted"]


@dataclass(frozen=True)
class RunSpec:
    """One run: which scenario, with which overrides, into which directory.

    ``label`` and ``seed`` name the run in progress lines and tables (the method and its seed).
    """

    scenario: str
    label: str
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.label} s{self.seed}"


@dataclass(frozen=True)
class RunOutcome:
    """How one run of a sweep ended: ``reused``, ``finished``, ``failed``, ``interrupted`` (it
    stopped, resumable) or ``not started`` (the sweep stopped first)."""

    spec: RunSpec
    status: str
    wall_s: float = 0.0
    error: str | None = None


class StopFlag(Protocol):
    """A ``threading.Event`` or a ``multiprocessing`` event: set once the sweep stops."""

    def is_set(self) -> bool: ...


def plan_action(spec: RunSpec) -> Action:
    """The one rule of compare and the study: a finished run is reused, a started one (it has
    config.json) resumed from its last checkpoint, any other started from step 0."""
    rd = RunDir(spec.run_dir)
    if rd.finished:
        return "reuse"
    return "resume" if rd.started else "start"


class StoppableBackend(DelegatingBackend):
    """A ``TrainingBackend`` that raises ``KeyboardInterrupt`` at the first request after
    ``stop`` is set, and tells whether its run got past the start (a first answered request).

    Args:
        inner: the run's own backend; every call is delegated to it.
        stop: the sweep's stop flag.
    """

    def __init__(self, inner: TrainingBackend, stop: StopFlag) -> None:
        super().__init__(inner)
        self.stop = stop
        self.started = False

    def _check(self) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # handled by the runner as Ctrl-C: flush, stay resumable

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        self._check()
        future = super().forward_backward(batch)
        self.started = True
        return future

    def forward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        self._check()
        future = super().forward(batch)
        self.started = True
        return future

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self._check()
        return super().optim_step(params)

    def save_state(self, name: str) -> str:
        self._check()
        return super().save_state(name)

    def load_state(self, ref: str) -> None:
        self._check()
        super().load_state(ref)
        self.started = True

    def sample(self, examples: Sequence[Example], max_tokens: int,
               temperature: float = 0.0) -> list[str]:
        self._check()
        return super().sample(examples, max_tokens, temperature)


class StoppableAdapterBackend(StoppableBackend, DelegatingAdapterBackend):
    """A ``StoppableBackend`` around an ``AdapterBackend``: its per-task adapters pass through,
    so that a sweep runs ``[adapters]`` scenarios (a fork is a request: a stop is checked
    first)."""

    def __init__(self, inner: AdapterBackend, stop: StopFlag) -> None:
        super().__init__(inner, stop)

    def fork_adapters(self, tasks: Sequence[str]) -> None:
        self._check()
        super().fork_adapters(tasks)


def stoppable(inner: TrainingBackend, stop: StopFlag) -> StoppableBackend:
    """``inner`` made stoppable, an ``AdapterBackend`` still when ``inner`` is one."""
    if isinstance(inner, AdapterBackend):
        return StoppableAdapterBackend(inner, stop)
    return StoppableBackend(inner, stop)


def execute(spec: RunSpec, action: Action, *, stop: StopFlag, console: TextIO,
            on_backend: Callable[[StoppableBackend], None] | None = None) -> float:
    """Run ``spec`` from step 0 (``"start"``) or from its last checkpoint (``"resume"``).

    Args:
        on_backend: called with the run's backend before its first request (a sweep keeps it
            to end a start that waits for the service when it stops).

    Returns:
        The wall time in seconds.

    Raises:
        KeyboardInterrupt: the sweep stopped (the run is resumable).
        UloraError: the run failed (its directory stays consistent and resumable).
    """
    from ulora_remote.run.api import resume_run, run_scenario
    from ulora_remote.run.builders import build_backend
    from ulora_remote.scenarios import Scenario, load_scenario

    t0 = time.monotonic()
    rd = RunDir(spec.run_dir)
    if action == "start":
        scenario: Any = load_scenario(spec.scenario, spec.overrides)
    else:
        scenario = Scenario.model_validate(rd.read_config()["scenario"])
    backend = stoppable(build_backend(scenario, rd.checkpoint_dir), stop)
    if on_backend is not None:
        on_backend(backend)
    if action == "start":
        run_scenario(scenario, backend=backend, out=rd.path, console=console)
    else:
        resume_run(rd.path, backend=backend, console=console)
    return time.monotonic() - t0


def open_log(spec: RunSpec) -> TextIO:
    """The run's console log (``log_path``), appended to."""
    path = log_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def run_logged(spec: RunSpec, action: Action, stop: Any, console: TextIO,
                on_backend: Any = None) -> tuple[State, float, str | None]:
    """Execute one run; the outcome as (state, wall_s, error). A traceback goes to its log;
    an exception of the run never escapes (one failed run must not stop the others)."""
    t0 = time.monotonic()
    try:
        execute(spec, action, stop=stop, console=console, on_backend=on_backend)
        return "finished", time.monotonic() - t0, None
    except KeyboardInterrupt:
        return "interrupted", time.monotonic() - t0, None
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others
        if stop.is_set():  # the sweep closed its backend while it waited to start
            return "interrupted", time.monotonic() - t0, None
        console.write(traceback.format_exc())
        return "failed", time.monotonic() - t0, _describe(exc)
