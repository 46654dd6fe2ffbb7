"""The runner's multi-task machinery: the task signals C, E, S fed each step, the probes that
measure C, per-task evaluation, and the fork into per-task adapters (docs/design.md,
"Per-task adapters"; the signals are defined in ``ulora_remote.control.tasks``).

The runner owns the loop; this object owns what the tasks need from the backend. Its requests:

* a probe: ``forward(batch of step t+1)`` submitted after ``forward_backward(t)`` and before
  ``optim_step(t)``, so it scores batch t+1 on the weights before update t; the training of
  step t+1 scores the same examples after it. Their per-task losses give x_T for C. (On Tinker
  the probe travels in the clock cycle of step t. A step whose batch a guard cut has no x_T.)
* the fork: at the start of a step, once decided, with every earlier step read and confirmed.

Routing itself is the backend's (``AdapterBackend``): examples go to the adapter of their
``Example.task``, so any multi-task stream works.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ulora_remote.backend import (
    AdapterBackend,
    Example,
    ForwardBackwardResult,
    Future,
    TrainingBackend,
)
from ulora_remote.control.adapters import AdapterSwitch
from ulora_remote.control.policy import Decision, Signal
from ulora_remote.control.tasks import TaskSignals, task_error
from ulora_remote.errors import ConfigurationError
from ulora_remote.run.console import Console
from ulora_remote.run.steps import SubmittedStep
from ulora_remote.task import BatchSource, exact_match

__all__ = ["TaskParts", "TaskRouting", "check_routing", "stream_tasks", "task_sums"]

Sums = dict[str, tuple[float, float]]
Probe = tuple[tuple[str, ...], Future[ForwardBackwardResult]]


@dataclass(frozen=True)
class TaskParts:
    """What a multi-task run adds to the runner: the task signals and the adapter switch."""

    signals: TaskSignals
    switch: AdapterSwitch


def stream_tasks(source: BatchSource) -> tuple[str, ...]:
    """The tasks of a stream, in first-seen order of its clean evaluation set."""
    return tuple(dict.fromkeys(e.task for e in source.eval_examples(0)))


def task_sums(tasks: Sequence[str], result: ForwardBackwardResult) -> Sums:
    """``{task: (Σ nll, Σ weight)}`` over the examples of ``result``, summed in example order."""
    sums: dict[str, list[float]] = {}
    for task, nll, w in zip(tasks, result.nll_sums, result.weight_sums, strict=True):
        acc = sums.setdefault(task, [0.0, 0.0])
        acc[0] += nll
        acc[1] += w
    return {t: (nll, w) for t, (nll, w) in sums.items()}


def _loss(sums: Sums) -> dict[str, float]:
    return {t: nll / w for t, (nll, w) in sums.items() if w > 0}


class TaskRouting:
    """Feeds C, E, S to the policy and forks per-task adapters when the switch decides.

    Args:
        backend: the run's backend; an ``AdapterBackend`` unless the mode is ``"shared"``.
        source: the multi-task stream (its evaluation examples name every task).
        signals, switch: the task signals and the fork decision (restored from checkpoints).
        console: for the fork's line.
        timeout_s: the deadline of each wait (None: no deadline).

    Raises:
        ConfigurationError: a mode other than "shared" on a stream with fewer than two tasks or
            on a backend without per-task adapters.
    """

    def __init__(self, backend: TrainingBackend, source: BatchSource, signals: TaskSignals,
                 switch: AdapterSwitch, console: Console, *, steps: int,
                 timeout_s: float | None) -> None:
        self.backend, self.source, self.signals, self.switch = backend, source, signals, switch
        self.console, self.steps, self.timeout_s = console, steps, timeout_s
        self.tasks = stream_tasks(source)
        check_routing(switch.mode, self.tasks, backend)
        if isinstance(backend, AdapterBackend):  # C_w: each task's gradient (local backends)
            backend.measure_gradient_variance(True)
        self._probes: dict[int, Probe | Sums] = {}
        self._rows: dict[int, dict[str, Any]] = {}  # step → its row's adapters and event
        self._event = ""

    # -- the loop's hooks -------------------------------------------------------------------------
    def before_step(self, t: int, settle: Callable[[int], None]) -> None:
        """At the start of step t: carry out a decided fork (every step < t read first)."""
        missing = [task for task in self.tasks if task not in self._adapter_tasks()]
        if self.switch.forked and missing:
            settle(t)  # reads the probes too
            assert isinstance(self.backend, AdapterBackend)  # check_routing made sure
            self.backend.fork_adapters(missing)
            self._event = f"fork: {self.switch.reason}"
            self.console.line(f"[{t}] adapters: one per task ({', '.join(missing)}) forked from "
                              f"the shared adapter; {self.switch.reason}")
        self._rows[t] = {"adapters": self._adapter_count(), "adapter_event": self._event}
        self._event = ""

    def after_submit(self, t: int) -> None:
        """Once step t's training is submitted: the adapters it trained, counted again in case
        a guard's rollback restored a snapshot made before the fork (the fork is then made again
        at the next step)."""
        if t in self._rows:
            self._rows[t]["adapters"] = self._adapter_count()

    def probe(self, t: int) -> None:
        """Before ``optim_step(t − 1)``: score batch t on the weights that update is about to
        change (a multi-task stream only; nothing beyond the run)."""
        if len(self.tasks) > 1 and t < self.steps:
            examples = self.source.batch(t).examples
            self._probes[t] = (tuple(e.task for e in examples), self.backend.forward(examples))

    def signal(self, submitted: SubmittedStep, result: ForwardBackwardResult,
               base: Signal) -> Signal:
        """The policy's signal of a read step: E as its loss (unless skipped) and u."""
        u = submitted.step
        sums = task_sums(submitted.tasks, result)
        before = self._take_probe(u)
        changes: dict[str, float] = {}
        if before is not None and not submitted.skipped and submitted.kept == submitted.size:
            after, pre = _loss(sums), _loss(before)
            changes = {t: (after[t] - pre[t]) / pre[t] for t in after
                       if t in pre and pre[t] > 0}
        row = self._rows.setdefault(u, {"adapters": 1, "adapter_event": ""})
        shared = row["adapters"] < len(self.tasks)  # all forked at once: shared unless forked
        stress = self.signals.observe_step(changes, result.gradient_variance, shared=shared)
        error = task_error(sums)
        row.update(error=error, conflict=self.signals.conflicts.conflict,
                   conflict_w=self.signals.conflicts.weight_conflict,
                   stability=self.signals.stability.value, task_stress=stress)
        loss = base.loss if submitted.skipped or not math.isfinite(error) else error
        return replace(base, loss=loss, task_stress=stress)

    def after_decision(self, u: int, decision: Decision) -> None:
        reason = self.switch.observe(u, decision.phi, self.signals.conflict)
        if reason is not None:
            self.console.line(f"[{u}] adapters: per-task adapters from the next step ({reason})")

    def row(self, u: int) -> dict[str, Any]:
        """The step row's multi-task fields of step u (forgotten once written)."""
        return self._rows.pop(u, {})

    def observe_eval(self, examples: Sequence[Example], result: ForwardBackwardResult,
                     outputs: Sequence[str]) -> dict[str, Any]:
        """Per-task exact match and loss of a clean evaluation; updates S. Returns the details
        for eval_scores.jsonl."""
        tasks = [e.task for e in examples]
        em = {t: exact_match([o for o, x in zip(outputs, tasks, strict=True) if x == t],
                             [e for e in examples if e.task == t]) for t in self.tasks}
        self.signals.observe_eval(em)
        return {"task_exact_match": em, "task_eval_loss": _loss(task_sums(tasks, result)),
                "stability": self.signals.stability.value}

    def eval_details(self, details: Mapping[str, Any] | None, examples: Sequence[Example],
                     result: ForwardBackwardResult, outputs: Sequence[str]) -> dict[str, Any]:
        """An evaluation's ``eval_scores.jsonl`` details: the task's own (with each task's
        clean loss under ``"tasks"``, ``run/pertask.py``) plus ``observe_eval``'s. Each task's
        exact match also joins its entry under ``"tasks"`` where the task's scores have none, so
        that the console line and the summary's per-task metrics show it."""
        signals = self.observe_eval(examples, result, outputs)
        merged = dict(details or {})
        if "tasks" in merged:
            tasks = {name: dict(scores) for name, scores in merged["tasks"].items()}
            for name, em in signals["task_exact_match"].items():
                if name in tasks:
                    tasks[name].setdefault("exact_match", em)
            merged["tasks"] = tasks
        return {**merged, **signals}

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint at a boundary carries (the probe of the next step, read)."""
        self.read_probes()
        return {"multitask": {"signals": self.signals.state_dict(),
                              "switch": self.switch.state_dict(),
                              "probes": {str(k): v for k, v in self._probes.items()}}}

    def restore(self, record: Mapping[str, Any]) -> None:
        """Continue from a checkpoint record (``{}``: forget everything in flight)."""
        self._probes.clear()
        self._rows.clear()
        state = record.get("multitask")
        if state is None:
            return
        self.signals.load_state_dict(state["signals"])
        self.switch.load_state_dict(state["switch"])
        self._probes = {int(k): {t: (float(a), float(b)) for t, (a, b) in v.items()}
                        for k, v in state["probes"].items()}

    # -- internals --------------------------------------------------------------------------------
    def _adapter_tasks(self) -> tuple[str, ...]:
        return self.backend.adapter_tasks() if isinstance(self.backend, AdapterBackend) else ()

    def _adapter_count(self) -> int:
        routes = self._adapter_tasks()
        return len({task if task in routes else "" for task in self.tasks})

    def read_probes(self) -> None:
        """Read every submitted probe: before a checkpoint, and before the runner changes the
        weights or clients (a replaced Tinker client refuses the results of its futures). A
        rollback between a probe and its step spoils that one x_T; it is kept (one sample of
        the window)."""
        for k in list(self._probes):
            self._probes[k] = self._read(self._probes[k])

    def _read(self, probe: Probe | Sums) -> Sums:
        if isinstance(probe, dict):
            return probe
        tasks, future = probe
        return task_sums(tasks, future.result(self.timeout_s))

    def _take_probe(self, u: int) -> Sums | None:
        probe = self._probes.pop(u, None)
        return None if probe is None else self._read(probe)


def check_routing(mode: str, tasks: Sequence[str], backend: TrainingBackend | None) -> None:
    """Raises ConfigurationError when per-task adapters cannot run (see ``TaskRouting``)."""
    if mode == "shared":
        return
    if len(tasks) < 2:
        raise ConfigurationError(
            f"adapters.mode = {mode!r} needs a multi-task stream, but the task has "
            f"{len(tasks)} ({', '.join(map(repr, tasks)) or 'none'}); use a multi-task [task] "
            "(e.g. kind = \"rules\") or adapters.mode = \"shared\""
        )
    if backend is not None and not isinstance(backend, AdapterBackend):
        raise ConfigurationError(
            f"adapters.mode = {mode!r}: the {type(backend).__name__} cannot hold per-task "
            "adapters; use the local or tinker backend, or adapters.mode = \"shared\""
        )
