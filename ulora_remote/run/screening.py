"""The runner's guard machinery: screening forwards submitted one step ahead, the verdicts of
every guard, and the probation a guard opens (snapshot, rollback, shift); docs/design.md,
"Guards".

The runner owns the loop and its files; this object owns what the guards need from the backend.
It never changes the order of requests the runner relies on: the screen of step u goes out right
after ``optim_step(u−1)``, so it runs on the weights step u trains, in the same Tinker clock cycle
as step u−1's requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from ulora_remote.backend import Completed, ForwardBackwardResult, Future, TrainingBackend
from ulora_remote.control.guard import Guard, Verdict
from ulora_remote.control.policy import LrPolicy
from ulora_remote.errors import CheckpointError
from ulora_remote.run.console import Console
from ulora_remote.run.steps import Probation, SubmittedStep
from ulora_remote.task import Batch, BatchSource

__all__ = ["Screening"]


class Screening:
    """Submits each step's training request behind the guards.

    Args:
        backend, policy, source, console: the runner's.
        guards: may be empty: then every example is trained on and nothing is screened.
        run_name: prefixes the names of probation snapshots.
        steps: the run's length (no screen is submitted beyond it).
        timeout_s: the deadline of each wait (None: no deadline).
    """

    def __init__(self, backend: TrainingBackend, policy: LrPolicy, guards: Sequence[Guard],
                 source: BatchSource, console: Console, *, run_name: str, steps: int,
                 timeout_s: float | None) -> None:
        self.backend, self.policy, self.guards = backend, policy, list(guards)
        self.source, self.console = source, console
        self.run_name, self.steps, self.timeout_s = run_name, steps, timeout_s
        self.probation: Probation | None = None
        # What the policy observes for a step whose examples were all rejected: the loss of the
        # last examples trained on (rejected data never reaches the policy; E_t says it was).
        self.last_trained_loss = math.nan
        self._next: tuple[int, Batch, Future[ForwardBackwardResult]] | None = None

    # -- state carried in checkpoints -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"guards": [g.state_dict() for g in self.guards],
                "probation": asdict(self.probation) if self.probation else None,
                "last_trained_loss": self.last_trained_loss}

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from a checkpoint record (``{}``: forget the screen submitted ahead)."""
        if "guards" in record:
            for guard, state in zip(self.guards, record["guards"], strict=True):
                guard.load_state_dict(state)
        probation = record.get("probation")
        self.probation = Probation(**probation) if probation else None
        self.last_trained_loss = float(record.get("last_trained_loss", math.nan))
        self._next = None

    # -- submission -------------------------------------------------------------------------------
    def submit(self, t: int, settle: Callable[[int], None]) -> SubmittedStep:
        """Judge step t's batch with the guards and submit the ``forward_backward`` of the
        examples they keep; a step with none kept is skipped. A guard's action (probation,
        rollback, shift) is carried out first; ``settle(t)`` reads and confirms every step
        before t, as a snapshot or a rollback needs."""
        batch, screen = self._batch_and_screen(t)
        examples, size = batch.examples, len(batch.examples)
        if screen is None:
            return SubmittedStep(t, batch.shock, size, size,
                                 self.backend.forward_backward(examples),
                                 tasks=tuple(e.task for e in examples))
        screened = screen.result(self.timeout_s)
        verdict = self._judge(t, screened)
        note, event, snapshot = verdict.note, "", ""
        if verdict.action == "rollback":
            settle(t)
            snapshot = self._roll_back(t)
            screened = self.backend.forward(examples).result(self.timeout_s)
            verdict, event = self._judge(t, screened), "rollback"
        if verdict.action == "probation":
            settle(t)
            snapshot = self.backend.save_state(f"{self.run_name}-probation{t:06d}")
            self.probation = Probation(t, snapshot, self.policy.state_dict(),
                                       self.last_trained_loss)
            event = "probation"
        elif verdict.action == "shift":
            snapshot = self.probation.ref if self.probation else ""
            self.probation, event = None, "shift"
        if event:
            self.console.line(f"[{t}] {note or event}" + (f" ({snapshot})" if snapshot else ""))
        kept = [e for e, k in zip(examples, verdict.keep, strict=True) if k]
        result = (self.backend.forward_backward(kept) if kept
                  else Completed[ForwardBackwardResult](screened))
        return SubmittedStep(t, batch.shock, size, len(kept), result, guard_lr=verdict.lr,
                             rebase=verdict.action == "shift", event=event, snapshot=snapshot,
                             tasks=tuple(e.task for e in (kept or examples)))

    def observed_loss(self, submitted: SubmittedStep, loss: float) -> float:
        """The loss the policy observes for a read step (see ``last_trained_loss``)."""
        if not submitted.skipped:
            self.last_trained_loss = loss
            return loss
        return self.last_trained_loss if math.isfinite(self.last_trained_loss) else loss

    def screen_ahead(self, u: int) -> None:
        """Submit step u's screening forward now, with step u−1's requests, so that screening
        costs no clock cycle of its own on Tinker."""
        if self.guards and u < self.steps:
            batch = self.source.batch(u)
            self._next = (u, batch, self.backend.forward(batch.examples))

    def drop_screen_ahead(self) -> None:
        """Read and drop the submitted screen before the weights change under it (a Tinker
        client replaced by a load must leave no future unread)."""
        if self._next is not None:
            self._next[2].result(self.timeout_s)
            self._next = None

    def undo_probation(self) -> Probation:
        """Restore what the open probation changed: the snapshot's weights, and the policy as
        it was then (it observed the data on trial). Returns the closed probation."""
        probation = self.probation
        if probation is None:
            raise CheckpointError("a guard asked for a rollback, but no probation is open")
        self.drop_screen_ahead()
        self.backend.load_state(probation.ref)
        self.policy.load_state_dict(probation.policy)
        self.last_trained_loss = probation.last_trained_loss
        self.probation = None
        return probation

    # -- internals --------------------------------------------------------------------------------
    def _batch_and_screen(self, t: int) -> tuple[Batch, Future[ForwardBackwardResult] | None]:
        pending, self._next = self._next, None
        if pending is not None and pending[0] == t:
            return pending[1], pending[2]
        batch = self.source.batch(t)
        return batch, self.backend.forward(batch.examples) if self.guards else None

    def _roll_back(self, t: int) -> str:
        try:
            return self.undo_probation().ref
        except CheckpointError as exc:
            raise CheckpointError(f"[{t}] {exc}") from None

    def _judge(self, t: int, screened: ForwardBackwardResult) -> Verdict:
        """Every guard's verdict on step t: kept where all keep, the first action, the lowest
        learning rate a guard sets. Only one guard may ask for actions (a rollback is judged
        again by all)."""
        verdicts = [g.judge(t, screened) for g in self.guards]
        if any(v.action == "rollback" for v in verdicts):
            return next(v for v in verdicts if v.action == "rollback")
        keep = tuple(all(flags) for flags in zip(*(v.keep for v in verdicts), strict=True))
        lrs = [v.lr for v in verdicts if v.lr is not None]
        action = next((v.action for v in verdicts if v.action != "none"), "none")
        note = "; ".join(v.note for v in verdicts if v.note)
        return Verdict(keep=keep, note=note, action=action, lr=min(lrs) if lrs else None)
