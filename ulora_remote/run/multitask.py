"""What a run's tasks add to the loop, pure: the task signals C, E, S fed each step, per-task
evaluation details, and the decision to fork per-task adapters (docs/design.md, "Per-task
adapters"; the signals are defined in ``ulora_remote.control.task_signals``).

The runner sends every request and hands this module numbers. Its requests for a multi-task
run (``StepTasks.probes``):

* a probe: ``forward(batch of step t+1)`` submitted after ``forward_backward(t)`` and before
  ``optim_step(t)``, so it scores batch t+1 on the weights before update t; the training of
  step t+1 scores the same examples after it. Their per-task losses give x_T for C. (On Tinker
  the probe travels in the clock cycle of step t. A step whose batch a guard cut has no x_T.)
* the fork: at the start of a step, once decided, with every earlier step read and confirmed.

Routing examples to adapters is the backend's (``AdapterBackend``): examples go to the adapter
of their ``Example.task``, so any multi-task stream works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ulora_remote.backend import AdapterBackend, Example, TrainingBackend
from ulora_remote.control.adapters import AdapterSwitch
from ulora_remote.control.policy import Decision, Signal
from ulora_remote.control.task_signals import TaskSignals, task_error
from ulora_remote.errors import ConfigurationError
from ulora_remote.losses import BatchLosses
from ulora_remote.run.steps import SubmittedStep
from ulora_remote.task import BatchSource, exact_match

__all__ = ["MultiTask", "SingleTask", "StepTasks", "TaskParts", "check_routing", "stream_tasks",
           "task_sums"]

Sums = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class TaskParts:
    """What a multi-task run adds to the runner: the task signals and the adapter switch."""

    signals: TaskSignals
    switch: AdapterSwitch


def stream_tasks(source: BatchSource) -> tuple[str, ...]:
    """The tasks of a stream, in first-seen order of its clean evaluation set."""
    return tuple(dict.fromkeys(e.task for e in source.eval_examples(0)))


def task_sums(tasks: Sequence[str], losses: BatchLosses) -> Sums:
    """``{task: (Σ nll, Σ weight)}`` over the examples of ``losses``, summed in example order."""
    sums: dict[str, list[float]] = {}
    for task, nll, w in zip(tasks, losses.nll_sums, losses.weight_sums, strict=True):
        acc = sums.setdefault(task, [0.0, 0.0])
        acc[0] += nll
        acc[1] += w
    return {t: (nll, w) for t, (nll, w) in sums.items()}


def _loss(sums: Sums) -> dict[str, float]:
    return {t: nll / w for t, (nll, w) in sums.items() if w > 0}


class StepTasks(Protocol):
    """The loop's one extension: what a run's tasks add to each step. Pure; never blocks.

    ``SingleTask`` adds nothing; ``MultiTask`` feeds C, E, S to the policy and decides the
    fork. The runner calls each method at the point of docs/design.md's loop named in it.
    """

    #: steps.csv carries the multi-task columns (``run.steps.TASK_STEP_COLUMNS``).
    multitask: bool
    #: The runner submits a probe of batch t+1 before ``optim_step(t)``, and hands its per-task
    #: sums to ``probe_read``.
    probes: bool

    def fork_due(self, routed: Sequence[str]) -> tuple[str, ...]:
        """At the start of a step: the tasks to fork an adapter for now (``routed``: the tasks
        the backend already routes to their own adapter)."""
        ...

    def forked(self, t: int, tasks: Sequence[str]) -> str:
        """The fork of ``tasks`` was made before step t; returns the console line."""
        ...

    def submitted(self, t: int, routed: Sequence[str]) -> None:
        """Step t's training was submitted with these adapters routed."""
        ...

    def probe_read(self, t: int, sums: Sums) -> None:
        """The probe of batch t was read (per-task sums)."""
        ...

    def signal(self, step: SubmittedStep, trained: BatchLosses,
               gradient_variance: float | None, base: Signal) -> Signal:
        """The policy's signal of a read step, from its training losses."""
        ...

    def decided(self, u: int, decision: Decision) -> str | None:
        """The policy decided after step u; returns a console line, or None."""
        ...

    def row(self, u: int) -> dict[str, Any]:
        """The step row's multi-task fields of step u (forgotten once written)."""
        ...

    def eval_details(self, details: Mapping[str, Any] | None, examples: Sequence[Example],
                     losses: BatchLosses, outputs: Sequence[str]) -> Mapping[str, Any] | None:
        """An evaluation's ``eval_scores.jsonl`` details (None: nothing to write)."""
        ...

    def state(self) -> dict[str, Any]:
        """What a checkpoint carries (merged into its record)."""
        ...

    def restore(self, record: Mapping[str, Any]) -> None:
        """Continue from a checkpoint record (``{}``: forget everything in flight)."""
        ...


class SingleTask:
    """A run without ``[adapters]``: the loop as the policy alone sees it."""

    multitask = False
    probes = False

    def fork_due(self, routed: Sequence[str]) -> tuple[str, ...]:
        return ()

    def forked(self, t: int, tasks: Sequence[str]) -> str:
        return ""

    def submitted(self, t: int, routed: Sequence[str]) -> None:
        return None

    def probe_read(self, t: int, sums: Sums) -> None:
        return None

    def signal(self, step: SubmittedStep, trained: BatchLosses,
               gradient_variance: float | None, base: Signal) -> Signal:
        return base

    def decided(self, u: int, decision: Decision) -> str | None:
        return None

    def row(self, u: int) -> dict[str, Any]:
        return {}

    def eval_details(self, details: Mapping[str, Any] | None, examples: Sequence[Example],
                     losses: BatchLosses, outputs: Sequence[str]) -> Mapping[str, Any] | None:
        return details

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, record: Mapping[str, Any]) -> None:
        return None


class MultiTask:
    """Feeds C, E, S to the policy and decides when to fork per-task adapters.

    Args:
        tasks: the stream's tasks (``stream_tasks``).
        signals, switch: the task signals and the fork decision (restored from checkpoints).
        steps: the run's length (no probe beyond it).
    """

    multitask = True

    def __init__(self, tasks: Sequence[str], signals: TaskSignals, switch: AdapterSwitch) -> None:
        self.tasks, self.signals, self.switch = tuple(tasks), signals, switch
        self.probes = len(self.tasks) > 1
        self._probes: dict[int, Sums] = {}
        self._rows: dict[int, dict[str, Any]] = {}  # step → its row's adapters and event
        self._event = ""

    def fork_due(self, routed: Sequence[str]) -> tuple[str, ...]:
        if not self.switch.forked:
            return ()
        return tuple(task for task in self.tasks if task not in routed)

    def forked(self, t: int, tasks: Sequence[str]) -> str:
        self._event = f"fork: {self.switch.reason}"
        return (f"[{t}] adapters: one per task ({', '.join(tasks)}) forked from the shared "
                f"adapter; {self.switch.reason}")

    def submitted(self, t: int, routed: Sequence[str]) -> None:
        """Counted once step t is submitted, in case a guard's rollback restored a snapshot
        made before the fork (the fork is then made again at the next step)."""
        adapters = len({task if task in routed else "" for task in self.tasks})
        self._rows[t] = {"adapters": adapters, "adapter_event": self._event}
        self._event = ""

    def probe_read(self, t: int, sums: Sums) -> None:
        self._probes[t] = sums

    def signal(self, step: SubmittedStep, trained: BatchLosses,
               gradient_variance: float | None, base: Signal) -> Signal:
        """E as the step's loss (unless skipped), and u from C."""
        u = step.step
        sums = task_sums(step.tasks, trained)
        before = self._probes.pop(u, None)
        changes: dict[str, float] = {}
        if before is not None and not step.skipped and step.kept == step.size:
            after, pre = _loss(sums), _loss(before)
            changes = {t: (after[t] - pre[t]) / pre[t] for t in after
                       if t in pre and pre[t] > 0}
        row = self._rows.setdefault(u, {"adapters": 1, "adapter_event": ""})
        shared = row["adapters"] < len(self.tasks)  # all forked at once: shared unless forked
        stress = self.signals.observe_step(changes, gradient_variance, shared=shared)
        error = task_error(sums)
        row.update(error=error, conflict=self.signals.conflicts.conflict,
                   conflict_w=self.signals.conflicts.weight_conflict,
                   stability=self.signals.stability.value, task_stress=stress)
        loss = base.loss if step.skipped or not math.isfinite(error) else error
        return replace(base, loss=loss, task_stress=stress)

    def decided(self, u: int, decision: Decision) -> str | None:
        reason = self.switch.observe(u, decision.phi, self.signals.conflict)
        return None if reason is None else (
            f"[{u}] adapters: per-task adapters from the next step ({reason})")

    def row(self, u: int) -> dict[str, Any]:
        return self._rows.pop(u, {})

    def eval_details(self, details: Mapping[str, Any] | None, examples: Sequence[Example],
                     losses: BatchLosses, outputs: Sequence[str]) -> Mapping[str, Any] | None:
        """The task's own details (with each task's clean loss under ``"tasks"``,
        ``run/pertask.py``) plus each task's exact match and loss and S; updates S. Each task's
        exact match also joins its entry under ``"tasks"`` where the task's scores have none, so
        that the console line and the summary's per-task metrics show it."""
        names = [e.task for e in examples]
        em = {t: exact_match([o for o, x in zip(outputs, names, strict=True) if x == t],
                             [e for e in examples if e.task == t]) for t in self.tasks}
        self.signals.observe_eval(em)
        merged = dict(details or {})
        if "tasks" in merged:
            tasks = {name: dict(scores) for name, scores in merged["tasks"].items()}
            for name, value in em.items():
                if name in tasks:
                    tasks[name].setdefault("exact_match", value)
            merged["tasks"] = tasks
        return {**merged, "task_exact_match": em,
                "task_eval_loss": _loss(task_sums(names, losses)),
                "stability": self.signals.stability.value}

    def state(self) -> dict[str, Any]:
        """The runner reads every submitted probe before a checkpoint."""
        return {"multitask": {"signals": self.signals.state_dict(),
                              "switch": self.switch.state_dict(),
                              "probes": {str(k): v for k, v in self._probes.items()}}}

    def restore(self, record: Mapping[str, Any]) -> None:
        self._probes.clear()
        self._rows.clear()
        state = record.get("multitask")
        if state is None:
            return
        self.signals.load_state_dict(state["signals"])
        self.switch.load_state_dict(state["switch"])
        self._probes = {int(k): {t: (float(a), float(b)) for t, (a, b) in v.items()}
                        for k, v in state["probes"].items()}


def check_routing(mode: str, tasks: Sequence[str], backend: TrainingBackend | None) -> None:
    """Raises ConfigurationError when per-task adapters cannot run: a mode other than "shared"
    on a stream with fewer than two tasks or on a backend without per-task adapters."""
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
