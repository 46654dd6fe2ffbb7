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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import Any

from ulora_remote.study.progress import SweepProgress
from ulora_remote.study.sweep_run import (
    Action,
    RunOutcome,
    RunSpec,
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


class StopValue:
    """The local sweep's stop flag: one shared byte, read without a lock.

    A ``multiprocessing.Event`` takes a lock even to read; a worker killed (SIGKILL) while it
    held it would leave every other worker blocked on its next request. A byte cannot be held.
    """

    def __init__(self, context: Any) -> None:
        self.value = context.RawValue("b", 0)

    def set(self) -> None:
        self.value.value = 1

    def is_set(self) -> bool:
        return bool(self.value.value)


def _init_worker(log_path: str | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops runs through `stop`
    if log_path is not None:
        sys.stderr = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        import torch
    except ModuleNotFoundError:
        return
    torch.set_num_threads(1)


def _worker_main(conn: Connection, stop: StopValue, log_path: str | None) -> None:
    """A worker: runs what the parent sends on its own pipe until it sends ``None`` or goes.

    Each worker has a pipe of its own (no queue shared with the others), so a worker killed in
    the middle of a message damages no other worker's channel.
    """
    _init_worker(log_path)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        spec, action = task
        conn.send(("started", None))  # the parent shows it as running from now on
        with open_log(spec) as log:
            conn.send(("ended", run_logged(spec, action, stop, log)))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    spec: RunSpec | None = None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class ProcessPool:
    """At most ``concurrency`` spawned worker processes (one torch thread each), each fed one
    run at a time on its own pipe; SIGINT is ignored there, the parent stops them through a
    shared ``StopValue``.

    A worker that dies in a run (SIGKILL, the kernel's OOM killer) fails that run alone, with a
    message that says so; the other workers go on, and a new worker takes the runs still to do.
    The dead run's directory holds it up to its last checkpoint: the sweep's continue command
    (or ``ulora run --resume``) resumes it.
    """

    def __init__(self, specs: Sequence[RunSpec], actions: dict[RunSpec, Action],
                 concurrency: int, progress: SweepProgress, log_path: Path | None) -> None:
        self.specs, self.actions, self.progress = list(specs), actions, progress
        self.context = multiprocessing.get_context("spawn")  # no torch state shared by a fork
        self.stop = StopValue(self.context)
        self.concurrency, self.log_path = concurrency, log_path
        self.workers: list[_Worker] = []

    def run(self, outcomes: list[RunOutcome]) -> None:
        todo = list(self.specs)
        try:
            try:
                while todo or self._busy():
                    self._assign(todo)
                    self._watch(outcomes)
            except KeyboardInterrupt:
                self.stop.set()
                todo.clear()  # not started: the continue command starts them
                self.progress.line("sweep: stopping: every run stops at its next request and "
                                   "stays resumable")
                while self._busy():
                    self._watch(outcomes)
                raise
        finally:
            self._close()

    def _busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.spec is not None]

    def _assign(self, todo: list[RunSpec]) -> None:
        for worker in list(self.workers):
            if worker.spec is None and not worker.process.is_alive():  # died between two runs
                self._drop(worker)
        for worker in list(self.workers):
            if worker.spec is None and todo:
                self._send(worker, todo)
        while todo and len(self.workers) < self.concurrency:
            parent, child = self.context.Pipe()
            log = str(self.log_path) if self.log_path is not None else None
            process = self.context.Process(target=_worker_main, args=(child, self.stop, log),
                                           name=f"ulora-sweep-{len(self.workers)}")
            process.start()
            child.close()  # only the worker holds its end: a dead worker reads as EOF here
            worker = _Worker(process, parent)
            self.workers.append(worker)
            self._send(worker, todo)

    def _send(self, worker: _Worker, todo: list[RunSpec]) -> None:
        """The next run of ``todo`` to ``worker``; back to ``todo`` if the worker is gone."""
        spec = todo.pop(0)
        try:
            worker.conn.send((spec, self.actions[spec]))
        except OSError:  # BrokenPipeError: it died before it took the run, which never began
            todo.insert(0, spec)
            self._drop(worker)
            return
        worker.spec = spec

    def _drop(self, worker: _Worker) -> None:
        worker.process.join()
        worker.conn.close()
        self.workers.remove(worker)  # a new worker takes the runs still to do

    def _watch(self, outcomes: list[RunOutcome]) -> None:
        busy = self._busy()
        ready = set(connection_wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                    timeout=0.5))
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                self._read(worker, outcomes)
        self.progress.tick()

    def _read(self, worker: _Worker, outcomes: list[RunOutcome]) -> None:
        spec = worker.spec
        assert spec is not None
        try:
            while worker.conn.poll():
                kind, payload = worker.conn.recv()
                if kind == "started":
                    if self.progress.state[spec] == "waiting":
                        self.progress.set(spec, "running")
                    continue
                state, wall_s, error = payload
                self._ended(worker, RunOutcome(spec, state, wall_s, error), outcomes)
                return
        except (EOFError, OSError):
            pass
        if worker.process.is_alive():
            return
        worker.process.join()
        error = (f"its worker process (pid {worker.process.pid}) "
                 f"{_death(worker.process.exitcode)} during the run; the run directory holds it "
                 "up to its last checkpoint")
        self._ended(worker, RunOutcome(spec, "failed", 0.0, error), outcomes)
        self._drop(worker)

    def _ended(self, worker: _Worker, outcome: RunOutcome, outcomes: list[RunOutcome]) -> None:
        worker.spec = None
        self.progress.set(outcome.spec, outcome.status)  # type: ignore[arg-type]
        self.progress.ended_line(outcome.spec, outcome.status,  # type: ignore[arg-type]
                                 outcome.wall_s, outcome.error)
        outcomes.append(outcome)

    def _close(self) -> None:
        """Every worker told to leave, then joined; one that does not leave is terminated."""
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            for worker in self.workers:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        finally:  # a second Ctrl-C while waiting: leave now, no worker left behind
            for worker in self.workers:
                if worker.process.is_alive():
                    worker.process.terminate()
                    worker.process.join()
                worker.conn.close()
            self.workers = []
