"""Where a sweep's runs go when several run at once: threads (Tinker) or worker processes (local).

Both report each run's end as a ``RunOutcome`` and its state to ``SweepProgress``; both stop on
Ctrl-C by setting a stop flag that every run's ``StoppableBackend`` checks at its next request.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from ulora_remote.study.progress import SweepProgress
from ulora_remote.study.sweep_run import (
    Action,
    RunOutcome,
    RunSpec,
    State,
    StoppableBackend,
    open_log,
    run_logged,
)

__all__ = ["ProcessPool", "ThreadPool"]

#: How long a stopping sweep waits for its runs to reach their next request.
STOP_GRACE_S = 120.0


# -- Tinker: threads in this process ----------------------------------------------------------


class ThreadPool:
    """``concurrency`` daemon threads take runs from a queue; this thread shows progress."""

    def __init__(self, specs: Sequence[RunSpec], actions: dict[RunSpec, Action],
                 concurrency: int, progress: SweepProgress) -> None:
        self.specs, self.actions, self.progress = list(specs), actions, progress
        self.stop = threading.Event()
        self.todo: queue.Queue[RunSpec] = queue.Queue()
        for spec in self.specs:
            self.todo.put(spec)
        self.ended: queue.Queue[RunOutcome] = queue.Queue()
        self.backends: dict[RunSpec, StoppableBackend] = {}
        self.threads = [threading.Thread(target=self._worker, name=f"ulora-sweep-{i}", daemon=True)
                        for i in range(min(concurrency, len(self.specs)))]

    def _worker(self) -> None:
        while not self.stop.is_set():
            try:
                spec = self.todo.get_nowait()
            except queue.Empty:
                return
            self.progress.set(spec, "waiting")
            with open_log(spec) as log:
                state, wall_s, error = run_logged(
                    spec, self.actions[spec], self.stop, log,
                    on_backend=lambda b, s=spec: self.backends.__setitem__(s, b))
            self.ended.put(RunOutcome(spec, state, wall_s, error))

    def run(self, outcomes: list[RunOutcome]) -> None:
        for thread in self.threads:
            thread.start()
        remaining = len(self.specs)
        try:
            while remaining:
                remaining -= self._drain(outcomes, timeout_s=0.5)
                for spec, backend in list(self.backends.items()):
                    if self.progress.state[spec] == "waiting" and backend.started:
                        self.progress.set(spec, "running")
                self.progress.tick()
        except KeyboardInterrupt:
            self._stop(outcomes)
            raise

    def _drain(self, outcomes: list[RunOutcome], timeout_s: float) -> int:
        try:
            outcome = self.ended.get(timeout=timeout_s)
        except queue.Empty:
            return 0
        self.progress.set(outcome.spec, outcome.status)  # type: ignore[arg-type]
        self.progress.ended_line(outcome.spec, outcome.status,  # type: ignore[arg-type]
                                 outcome.wall_s, outcome.error)
        outcomes.append(outcome)
        return 1

    def _stop(self, outcomes: list[RunOutcome]) -> None:
        self.stop.set()
        self.progress.line("sweep: stopping: every run stops at its next request and stays "
                           "resumable (Ctrl-C again to quit at once)")
        for backend in list(self.backends.values()):
            if not backend.started:  # still waiting for the service to start its client
                backend.close()
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
                self._drain(outcomes, timeout_s=0.2)
            while self._drain(outcomes, timeout_s=0.0):
                pass
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: leave now; the files are consistent at any point


# -- local: worker processes ------------------------------------------------------------------

_STOP: Any = None
_STARTED: Any = None


def _init_worker(stop: Any, started: Any, log_path: str | None) -> None:
    global _STOP, _STARTED
    _STOP, _STARTED = stop, started
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops runs through `stop`
    if log_path is not None:
        sys.stderr = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        import torch
    except ModuleNotFoundError:
        return
    torch.set_num_threads(1)


def _process_entry(spec: RunSpec, action: Action) -> tuple[State, float, str | None]:
    _STARTED.put(str(spec.run_dir))  # the parent shows it as running from now on
    with open_log(spec) as log:
        return run_logged(spec, action, _STOP, log)


class ProcessPool:
    """``concurrency`` spawned worker processes (one torch thread each); SIGINT is ignored there,
    the parent stops them through a shared event."""

    def __init__(self, specs: Sequence[RunSpec], actions: dict[RunSpec, Action],
                 concurrency: int, progress: SweepProgress, log_path: Path | None) -> None:
        self.specs, self.actions, self.progress = list(specs), actions, progress
        self.context = multiprocessing.get_context("spawn")  # no torch state shared by a fork
        self.stop = self.context.Event()
        self.started = self.context.Queue()
        self.concurrency, self.log_path = concurrency, log_path

    def run(self, outcomes: list[RunOutcome]) -> None:
        log = str(self.log_path) if self.log_path is not None else None
        with ProcessPoolExecutor(self.concurrency, mp_context=self.context,
                                 initializer=_init_worker,
                                 initargs=(self.stop, self.started, log)) as ex:
            futures = {ex.submit(_process_entry, s, self.actions[s]): s for s in self.specs}
            try:
                self._watch(futures, outcomes)
            except KeyboardInterrupt:
                self.stop.set()
                for future in futures:
                    future.cancel()
                self.progress.line("sweep: stopping: every run stops at its next request and "
                                   "stays resumable")
                self._watch({f: s for f, s in futures.items() if not f.cancelled()}, outcomes)
                raise

    def _watch(self, futures: dict[Future[Any], RunSpec], outcomes: list[RunOutcome]) -> None:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                spec = futures[future]
                state, wall_s, error = future.result()
                self.progress.set(spec, state)
                self.progress.ended_line(spec, state, wall_s, error)
                outcomes.append(RunOutcome(spec, state, wall_s, error))
            self._mark_started(futures.values())
            self.progress.tick()

    def _mark_started(self, specs: Any) -> None:
        by_dir = {str(s.run_dir): s for s in specs}
        while True:
            try:
                run_dir = self.started.get_nowait()
            except queue.Empty:
                return
            spec = by_dir.get(run_dir)
            if spec is not None and self.progress.state[spec] == "waiting":
                self.progress.set(spec, "running")
