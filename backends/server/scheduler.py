"""Futures, per-model ``seq_id`` ordering and the simulated clock cycle.

Every submit becomes a job with a request id. Jobs of a training model run strictly in
``seq_id`` order (a chunked batch may arrive first chunk last; a gap waits); other jobs
(model creation, sampling) run in arrival order. With a clock cycle, work waits for the next
cycle boundary and one cycle runs all the work that is ready then, of every client and model
alike; work that arrives during a cycle waits for the next one, which is what makes pipelining
pay off on the hosted service. A job may carry a gate (model creation under a cap of live
models): it stays queued, its future reporting ``paused_rate_limit``, until its gate opens at a
boundary; ``wake()`` asks for a new look after something that may open a gate. Jobs with the
same batch key that one cycle collects (the greedy samples of one sampler) run as one batch.

All jobs run on one worker thread, so engines are never called concurrently; the scheduler's
own state lives on the event loop and is touched only there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ulora_remote.errors import BackendError, InputError

__all__ = ["Batch", "FutureRecord", "JobError", "ModelGone", "Outcome", "Scheduler"]

logger = logging.getLogger(__name__)

_MAX_DONE_FUTURES = 10_000
# A model's requests may arrive out of order (a chunked batch sends its first chunk last), but
# never this far ahead of the next one to run: that would be a gap that can never close.
MAX_SEQ_AHEAD = 1024


@dataclass(frozen=True)
class Outcome:
    """A finished job's answer: protobuf bytes or a JSON object."""

    body: bytes | dict[str, Any]

    @property
    def is_proto(self) -> bool:
        return isinstance(self.body, bytes)


class JobError(BackendError):
    """A job failed in a way the caller caused (category ``user``)."""


class ModelGone(InputError):
    """A request names a model that does not exist (404) or whose state was lost (410)."""

    def __init__(self, message: str, *, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost


@dataclass
class FutureRecord:
    """The server side of one future."""

    request_id: str
    model_id: str | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Outcome | None = None
    error: tuple[str, str] | None = None  # (message, category)
    cycle: int | None = None  # the clock cycle that ran it
    queue_state: str = "active"  # what a try_again answer reports while it waits
    kind: str | None = None  # the request kind (forward, optim_step, ...) faults may aim at


@dataclass(frozen=True)
class Batch:
    """How a job joins others of its cycle: jobs with equal ``key`` run as one call of
    ``run_many`` (any of theirs: equal keys mean the same work) on their ``item``s, which returns
    one outcome per item, in order. If that call fails, each job runs alone."""

    key: Hashable
    item: Any
    run_many: Callable[[list[Any]], list[Outcome]]


@dataclass
class _Job:
    record: FutureRecord
    run: Callable[[], Outcome]
    gate: Callable[[], bool] | None = None  # None: ready; else runs once it returns True
    batch: Batch | None = None


@dataclass
class _ModelQueue:
    next_seq: int = 1
    last_assigned: int = 0
    pending: dict[int, _Job] = field(default_factory=dict)
    by_seq: dict[int, str] = field(default_factory=dict)
    lost: bool = False


class Scheduler:
    """Queues jobs, runs them on one worker thread, and keeps their results for polling."""

    def __init__(self, cycle_s: float = 0.0) -> None:
        self.cycle_s = cycle_s
        self._queues: dict[str, _ModelQueue] = {}
        self._unordered: list[_Job] = []
        self._futures: OrderedDict[str, FutureRecord] = OrderedDict()
        self._counter = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ulora-serve")
        self._t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.cycles = 0  # cycles that ran work; benchmarks read it to count round trips
        self.wait_timeouts = 0  # long polls that ended unfinished (answered 408)
        # Compute per cycle (seconds of work a cycle ran): does the server's work fit its clock?
        self.busy_s_total = 0.0
        self.busy_s_max = 0.0
        self.cycles_overrun = 0  # cycles whose work took longer than cycle_s

    def start(self) -> None:
        """Start the dispatch loop (call on the server's event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def open_model(self, model_id: str) -> None:
        """Register a model whose ordered requests start at ``seq_id`` 1."""
        self._queues.setdefault(model_id, _ModelQueue())

    def _new_record(self, model_id: str | None) -> FutureRecord:
        self._counter += 1
        record = FutureRecord(f"req-{self._counter}", model_id)
        self._futures[record.request_id] = record
        return record

    def submit(self, run: Callable[[], Outcome], *, gate: Callable[[], bool] | None = None,
               batch: Batch | None = None) -> str:
        """Queue a job that is not ordered by a model's ``seq_id``; return its request id.

        Args:
            run: the job (called on the worker thread).
            gate: called on the event loop at each cycle boundary until it returns True; until
                then the job waits and its future reports ``paused_rate_limit``.
            batch: run it with the jobs of its cycle that share ``batch.key``.
        """
        record = self._new_record(None)
        self._unordered.append(_Job(record, run, gate, batch))
        self._wake.set()
        return record.request_id

    def wake(self) -> None:
        """Look at the queued work again at the next boundary (a gate may have opened)."""
        self._wake.set()

    def submit_ordered(self, model_id: str, seq_id: int | None, run: Callable[[], Outcome]) -> str:
        """Queue a model's job at ``seq_id``; a repeated ``seq_id`` returns the first request id
        (so a submit retried after its first try was enqueued never runs twice).

        Raises:
            ModelGone: unknown model (404) or lost state (410).
            InputError: ``seq_id`` already passed with no request recorded for it, or
                ``MAX_SEQ_AHEAD`` or more beyond the next one to run.
        """
        queue = self._queues.get(model_id)
        if queue is None:
            raise ModelGone(f"model {model_id!r} does not exist on this server", lost=False)
        if queue.lost:
            raise ModelGone(
                f"model {model_id!r} lost its state; create a training client from the last "
                "checkpoint",
                lost=True,
            )
        seq = seq_id if seq_id is not None else queue.last_assigned + 1
        if seq in queue.by_seq:
            return queue.by_seq[seq]
        if seq < queue.next_seq:
            raise InputError(
                f"seq_id {seq} of {model_id} is already past (next is {queue.next_seq})"
            )
        if seq >= queue.next_seq + MAX_SEQ_AHEAD:
            raise InputError(
                f"seq_id {seq} of {model_id} is too far ahead: the next to run is "
                f"{queue.next_seq}, and at most {MAX_SEQ_AHEAD} may wait for it"
            )
        record = self._new_record(model_id)
        queue.pending[seq] = _Job(record, run)
        queue.by_seq[seq] = record.request_id
        queue.last_assigned = max(queue.last_assigned, seq)
        self._wake.set()
        return record.request_id

    def get(self, request_id: str) -> FutureRecord | None:
        return self._futures.get(request_id)

    async def wait(self, record: FutureRecord, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``record``; True when it is done."""
        try:
            await asyncio.wait_for(record.done.wait(), timeout_s)
        except TimeoutError:
            self.wait_timeouts += 1
            return False
        return True

    def mark_lost(self, model_id: str) -> None:
        """Declare a model's state lost: its queued jobs fail and later submits get 410."""
        queue = self._queues.get(model_id)
        if queue is None or queue.lost:
            return
        queue.lost = True
        for job in queue.pending.values():
            self._finish(
                job.record, None, ("model state lost (410); rebuild from a checkpoint", "server")
            )
        queue.pending.clear()

    def is_lost(self, model_id: str) -> bool:
        queue = self._queues.get(model_id)
        return queue is not None and queue.lost

    def _finish(
        self, record: FutureRecord, outcome: Outcome | None, error: tuple[str, str] | None
    ) -> None:
        record.outcome, record.error = outcome, error
        record.done.set()
        if len(self._futures) > _MAX_DONE_FUTURES:
            for rid in [r for r, rec in self._futures.items() if rec.done.is_set()][:1000]:
                del self._futures[rid]

    def _collect(self) -> list[_Job]:
        jobs: list[_Job] = []
        held: list[_Job] = []
        for job in self._unordered:  # in arrival order, so a gate admits the oldest first
            if job.gate is None or job.gate():
                job.record.queue_state = "active"
                jobs.append(job)
            else:
                job.record.queue_state = "paused_rate_limit"
                held.append(job)
        self._unordered = held
        for queue in self._queues.values():
            while not queue.lost and queue.next_seq in queue.pending:
                jobs.append(queue.pending.pop(queue.next_seq))
                queue.next_seq += 1
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.cycle_s > 0:
                elapsed = time.monotonic() - self._t0
                boundary = (math.floor(elapsed / self.cycle_s) + 1) * self.cycle_s
                await asyncio.sleep(boundary - elapsed)
            jobs = self._collect()
            if not jobs:
                continue
            self.cycles += 1
            start = time.monotonic()
            for group in _batches(jobs):
                for job in group:
                    job.record.cycle = self.cycles
                if len(group) > 1:
                    await self._execute_batch(loop, group)
                    continue
                job = group[0]
                if job.record.model_id is not None and self.is_lost(job.record.model_id):
                    self._finish(job.record, None, ("model state lost (410)", "server"))
                    continue
                await self._execute(loop, job)
            self._account(time.monotonic() - start)

    def _account(self, busy_s: float) -> None:
        self.busy_s_total += busy_s
        self.busy_s_max = max(self.busy_s_max, busy_s)
        self.cycles_overrun += self.cycle_s > 0 and busy_s > self.cycle_s

    def cycle_stats(self) -> dict[str, float]:
        """Cycles that ran work, their compute (total, mean, max, in seconds) and how many took
        longer than the clock cycle."""
        return {"cycles": self.cycles, "cycle_s": self.cycle_s,
                "busy_s_total": round(self.busy_s_total, 4),
                "busy_s_mean": round(self.busy_s_total / max(1, self.cycles), 4),
                "busy_s_max": round(self.busy_s_max, 4), "overrun": self.cycles_overrun}

    async def _execute_batch(self, loop: asyncio.AbstractEventLoop, group: list[_Job]) -> None:
        batch = group[0].batch
        assert batch is not None
        items = [job.batch.item for job in group if job.batch is not None]
        try:
            outcomes = await loop.run_in_executor(self._executor, batch.run_many, items)
            if len(outcomes) != len(group):
                raise BackendError(f"a batch of {len(group)} returned {len(outcomes)} outcomes")
        except Exception:  # noqa: BLE001 - one bad request must not fail its batch-mates
            logger.info("a batch of %d failed; running its jobs one by one", len(group))
            for job in group:
                await self._execute(loop, job)
            return
        for job, outcome in zip(group, outcomes, strict=True):
            self._finish(job.record, outcome, None)

    async def _execute(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        try:
            outcome = await loop.run_in_executor(self._executor, job.run)
        except (InputError, JobError, BackendError) as exc:
            self._finish(job.record, None, (str(exc), "user"))
        except Exception as exc:  # a bug or engine crash must not stop the dispatch loop
            logger.exception("job %s failed", job.record.request_id)
            self._finish(job.record, None, (f"{type(exc).__name__}: {exc}", "server"))
        else:
            self._finish(job.record, outcome, None)


def _batches(jobs: list[_Job]) -> list[list[_Job]]:
    """The cycle's jobs in order, those sharing a batch key gathered at the first one's place."""
    groups: list[list[_Job]] = []
    by_key: dict[Hashable, list[_Job]] = {}
    for job in jobs:
        if job.batch is None:
            groups.append([job])
        elif job.batch.key in by_key:
            by_key[job.batch.key].append(job)
        else:
            by_key[job.batch.key] = [job]
            groups.append(by_key[job.batch.key])
    return groups
