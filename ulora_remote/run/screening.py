"""The runner's guard machinery: screening forwards submitted one step ahead, the verdicts of
every guard, and the probation a guard opens (snapshot, rollback, shift); docs/design.md,
"Guards".

The runner owns the loop and its files; this object owns what the guards need from the backend.
The screen of step u goes out with step u−1's requests, so that it costs no clock cycle of its
own on Tinker:

- at lag 0 (local): right after ``optim_step(u−1)``, so it runs on the weights step u trains;
- at lag ≥ 1 (pipelined): before step t's own requests, and ``BLOCK`` = 3 steps in one
  ``forward``: when the screen of step t+1 is not out yet, one request screens the batches of
  steps t+1 .. t+3. A Tinker client sends its requests one after another, each answered after
  the network latency, so a step's requests cost their number times the latency; at a 0.3 s
  cycle and 0.1 s latency (``benchmarks/guard_cycles.py``) a screen sent after the optimizer
  step made every step take two cycles (0.59 s a step against 0.30 s), one screen a step sent
  before the step's requests still 1.25x, and three requests a step (screen, forward_backward,
  optim_step) could not fit one cycle. One screen for three steps averages 2.33 requests a step.
  The screen of step u then runs on the weights of step u−2 to u−4 (two to four updates older
  than those step u trains): the guard judges with weights a few steps old.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from ulora_remote.backend import Completed, Example, ForwardBackwardResult, Future, TrainingBackend
from ulora_remote.control.contrast import contrast_batch, contrast_result
from ulora_remote.control.guard import Action, ContrastGuard, Guard, Verdict
from ulora_remote.control.policy import LrPolicy
from ulora_remote.errors import CheckpointError
from ulora_remote.run.console import Console
from ulora_remote.run.steps import Probation, SubmittedStep
from ulora_remote.task import Batch, BatchSource

__all__ = ["BLOCK", "Screening"]

#: Steps screened by one forward at lag ≥ 1 (module docstring).
BLOCK = 3


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
                 timeout_s: float | None, lag: int = 0) -> None:
        self.backend, self.policy, self.guards = backend, policy, list(guards)
        self.source, self.console = source, console
        self.run_name, self.steps, self.timeout_s = run_name, steps, timeout_s
        #: At lag ≥ 1 the screens go out before a step's own requests, ``BLOCK`` steps in one
        #: forward (module docstring); at lag 0 the screen of step t+1 goes out after them.
        self.screens_first = lag >= 1
        self.block = BLOCK if self.screens_first else 1
        #: Whether a guard reads contrast pairs: then each screen also holds the batch's
        #: mismatched pairs (``ulora_remote.control.contrast``), after the batch's own examples.
        self.contrast = any(isinstance(g, ContrastGuard) and g.uses_contrast for g in guards)
        self.probation: Probation | None = None
        # What the policy observes for a step whose examples were all rejected: the loss of the
        # last examples trained on (rejected data never reaches the policy; E_t says it was).
        self.last_trained_loss = math.nan
        # Screens submitted ahead, oldest first: (step, batch, forward future).
        self._ahead: deque[tuple[int, Batch, Future[ForwardBackwardResult]]] = deque()

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
        self._ahead.clear()

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
                                 tasks=tuple(e.task for e in examples),
                                 corrupted=sum(batch.corrupted))
        screened, contrast = self._split(examples, screen.result(self.timeout_s))
        tasks = [e.task for e in examples]
        verdict = self._judge(t, screened, tasks, contrast)
        note, event, snapshot = verdict.note, "", ""
        if verdict.action == "rollback":
            settle(t)
            snapshot = self._roll_back(t)
            screened, contrast = self._split(
                examples, self._screen_forward(examples).result(self.timeout_s))
            verdict, event = self._judge(t, screened, tasks, contrast), "rollback"
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
        if self.screens_first:
            self._submit_screens(t)
        result = (self.backend.forward_backward(kept) if kept
                  else Completed[ForwardBackwardResult](screened))
        return SubmittedStep(t, batch.shock, size, len(kept), result, guard_lr=verdict.lr,
                             rebase=verdict.action == "shift", event=event, snapshot=snapshot,
                             tasks=tuple(e.task for e in (kept or examples)),
                             corrupted=sum(batch.corrupted),
                             corrupted_rejected=sum(c and not k for c, k in zip(
                                 batch.corrupted, verdict.keep, strict=False)))

    def observed_loss(self, submitted: SubmittedStep, loss: float) -> float:
        """The loss the policy observes for a read step (see ``last_trained_loss``)."""
        if not submitted.skipped:
            self.last_trained_loss = loss
            return loss
        return self.last_trained_loss if math.isfinite(self.last_trained_loss) else loss

    def screen_ahead(self, u: int) -> None:
        """After step u−1's optimizer step: submit step u's screening forward (at lag 0; at
        lag ≥ 1 ``submit`` sent the screens before step u−1's requests)."""
        if not self.screens_first:
            self._submit_screens(u - 1)

    def _submit_screens(self, t: int) -> None:
        """Make sure the screen of step t+1 is out: when it is not, submit one forward for the
        batches of the next ``block`` steps (each step reads its slice of the result)."""
        if not self.guards or (self._ahead and self._ahead[-1][0] > t):
            return
        first = self._ahead[-1][0] + 1 if self._ahead else t + 1
        steps = range(first, min(first + self.block, self.steps))
        if not steps:
            return
        batches = [self.source.batch(u) for u in steps]
        block = self.backend.forward([e for b in batches for e in self._screened(b.examples)])
        start = 0
        for u, batch in zip(steps, batches, strict=True):
            end = start + len(self._screened(batch.examples))
            self._ahead.append((u, batch, _Slice(block, start, end)))
            start = end

    def drop_screen_ahead(self) -> None:
        """Read and drop the submitted screen before the weights change under it (a Tinker
        client replaced by a load must leave no future unread)."""
        while self._ahead:
            self._ahead.popleft()[2].result(self.timeout_s)

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
        while self._ahead and self._ahead[0][0] < t:
            self._ahead.popleft()  # a screen of a step that a restore made run again
        if self._ahead and self._ahead[0][0] == t:
            _, batch, screen = self._ahead.popleft()
            return batch, screen
        batch = self.source.batch(t)
        return batch, self._screen_forward(batch.examples) if self.guards else None

    # The one place where a screen's examples are built: the batch, then (when a guard reads
    # them) its contrast pairs; ``_split`` takes the result apart again.
    def _screened(self, examples: list[Example]) -> list[Example]:
        return examples + contrast_batch(examples) if self.contrast else examples

    def _screen_forward(self, examples: list[Example]) -> Future[ForwardBackwardResult]:
        return self.backend.forward(self._screened(examples))

    def _split(self, examples: list[Example], whole: ForwardBackwardResult
               ) -> tuple[ForwardBackwardResult, ForwardBackwardResult | None]:
        """The batch's own screen, and its contrast (None when no guard reads one)."""
        n = len(examples)
        own = ForwardBackwardResult(whole.nll_sums[:n], whole.weight_sums[:n])
        if not self.contrast:
            return own, None
        pairs = ForwardBackwardResult(whole.nll_sums[n:], whole.weight_sums[n:])
        return own, contrast_result(examples, pairs)

    def _roll_back(self, t: int) -> str:
        try:
            return self.undo_probation().ref
        except CheckpointError as exc:
            raise CheckpointError(f"[{t}] {exc}") from None

    def _judge(self, t: int, screened: ForwardBackwardResult, tasks: list[str],
               contrast: ForwardBackwardResult | None = None) -> Verdict:
        """Every guard's verdict on step t: kept where all keep, the first action, the lowest
        learning rate a guard sets. Only one guard may ask for actions (a rollback is judged
        again by all)."""
        verdicts = [g.judge(t, screened, tasks, contrast) if isinstance(g, ContrastGuard)
                    else g.judge(t, screened, tasks) for g in self.guards]
        if any(v.action == "rollback" for v in verdicts):
            return next(v for v in verdicts if v.action == "rollback")
        keep = tuple(all(flags) for flags in zip(*(v.keep for v in verdicts), strict=True))
        lrs = [v.lr for v in verdicts if v.lr is not None]
        action: Action = next((v.action for v in verdicts if v.action != "none"), "none")
        note = "; ".join(v.note for v in verdicts if v.note)
        return Verdict(keep=keep, note=note, action=action, lr=min(lrs) if lrs else None)


class _Slice:
    """The part of a block screen that belongs to one step: examples ``start:end``."""

    def __init__(self, block: Future[ForwardBackwardResult], start: int, end: int) -> None:
        self.block, self.start, self.end = block, start, end

    def result(self, timeout: float | None = None) -> ForwardBackwardResult:
        whole = self.block.result(timeout)
        return ForwardBackwardResult(whole.nll_sums[self.start:self.end],
                                     whole.weight_sums[self.start:self.end])
