"""The training loop: batches in, guards and policy decisions, one row a step, evaluations,
checkpoints (docs/design.md, "The runner").

One loop over futures covers every control lag L ≥ 0 and pipelines on Tinker for free::

    for t in range(start, steps):
        guards judge batch_t (screening forward)       # only when the run has guards
        submit forward_backward(kept examples of t)     # may run ahead of reading
        read every unread step u ≤ t − L, in order:     # loss_u → policy → row u
        submit optim_step(lr_t)                         # lr_t set by the decision after t − L

With L = 0 that is the seed's quick start; with L = 1 the next batch is submitted before the
current loss is read (one Tinker clock cycle a step). ``lr_t`` is ``warmup_lr`` for
``t < warmup_steps``, else the ``lr`` of the policy's decision after step ``t − L`` (its
``initial_decision()`` while ``t < L``). The policy observes every loss, warm-up included.

Boundaries. At a step boundary k (k optimizer steps applied) every submitted step is read and
its optimizer step confirmed, then the clean evaluation runs (k = 0, every ``eval_every``, and
k = steps), then a checkpoint is saved (k = 0, every ``checkpoint_every`` when > 0, and
k = steps). An evaluation row's ``step`` is k: the model after k updates. The step-0 checkpoint
makes in-process recovery possible before the first periodic one.

Resume and recovery restore the last checkpoint k (backend state, policy, guards, the decisions
that set the LRs of steps k..k+L−1), truncate the tables to rows < k and replay from k. Batches
are a function of (seed, step), so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import TextIO

from ulora_remote.backend import AdamParams, ForwardBackwardResult, TrainingBackend
from ulora_remote.control.guard import Guard
from ulora_remote.control.policy import Decision, LrPolicy, Signal
from ulora_remote.control.snapshots import SnapshotKeeper
from ulora_remote.errors import BackendError, CheckpointError, StateLostError
from ulora_remote.run.console import Console
from ulora_remote.run.multitask import TaskParts, TaskRouting
from ulora_remote.run.pertask import task_line, with_task_losses
from ulora_remote.run.rundir import CsvAppender, RunDir
from ulora_remote.run.screening import Screening
from ulora_remote.run.steps import RunSettings, StepRow, SubmittedStep, warmup_decision
from ulora_remote.task import BatchSource

__all__ = ["RunSettings", "Runner"]


class Runner:
    """Runs one scenario's steps on a backend and writes the run directory's tables.

    Args:
        backend: any ``TrainingBackend``; closed when ``run`` returns or raises.
        policy: sets the learning rate (restored from the checkpoint on resume).
        guards: judge each batch before it is trained on (empty: no screening forward).
        source: batches, eval examples and their scoring.
        settings: the loop's parameters.
        rundir: where tables and checkpoint records go (config.json is the caller's job).
        out: the console stream (stdout by default).
        tasks: the task signals and adapter switch of a multi-task run
            (``ulora_remote.run.multitask``), or None.
    """

    def __init__(self, backend: TrainingBackend, policy: LrPolicy, guards: Sequence[Guard],
                 source: BatchSource, settings: RunSettings, rundir: RunDir,
                 out: TextIO | None = None, tasks: TaskParts | None = None) -> None:
        self.backend, self.policy, self.guards = backend, policy, list(guards)
        self.source, self.s, self.rundir = source, settings, rundir
        self.console = Console(out or sys.stdout, settings.steps)
        self.recoveries = 0
        self._decisions: dict[int, Decision] = {}  # decision after step u, kept while needed
        self._unread: deque[SubmittedStep] = deque()  # submitted, loss not read yet
        self._unconfirmed: deque[SubmittedStep] = deque()  # optim_step not awaited yet
        self.screening = Screening(backend, policy, guards, source, self.console,
                                   run_name=settings.run_name, steps=settings.steps,
                                   timeout_s=settings.result_timeout_s, lag=settings.lag)
        self._wall_offset_s = 0.0
        self._t0 = time.monotonic()
        self._rows_written = 0
        self._steps_csv: CsvAppender | None = None
        self._evals_csv: CsvAppender | None = None
        self._snapshots = self._new_snapshot_keeper()
        self.routing = None if tasks is None else TaskRouting(
            backend, source, tasks.signals, tasks.switch, self.console, steps=settings.steps,
            timeout_s=settings.result_timeout_s)

    def _new_snapshot_keeper(self) -> SnapshotKeeper | None:
        if self.s.snapshot_every <= 0:
            return None
        return SnapshotKeeper(self.s.snapshot_every, self.s.snapshot_keep,
                              mode=self.policy.initial_decision().mode)

    # -- entry point ------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> None:
        """Train from step 0, or from the last checkpoint when ``resume``; always closes.

        Raises:
            BackendError: the backend failed, or lost its state more than ``max_recoveries``
                times.
            KeyboardInterrupt: after flushing the files and printing how to resume.
        """
        try:
            start = self._restore(required=False) if resume else 0
            while True:
                try:
                    self._train_from(start)
                    return
                except StateLostError as exc:
                    start = self._recover(exc)
        except KeyboardInterrupt:
            self._close_tables()
            self.console.interrupted(self._rows_written, self.rundir.path)
            raise
        except Exception:
            self._close_tables()
            self.console.stopped(self._rows_written, self.rundir.path)
            raise
        finally:
            self._close_tables()
            self.backend.close()

    def _recover(self, exc: StateLostError) -> int:
        self.recoveries += 1
        if self.recoveries > self.s.max_recoveries:
            raise BackendError(
                f"the backend lost its training state {self.recoveries} times "
                f"(limit {self.s.max_recoveries}); last error: {exc}. The run directory is "
                f"consistent: continue later with `ulora run --resume {self.rundir.path}`"
            ) from exc
        self.console.line(f"state lost ({exc}); reloading the last checkpoint "
                          f"(recovery {self.recoveries}/{self.s.max_recoveries})")
        return self._restore(required=True)

    def _restore(self, *, required: bool) -> int:
        """Load the last checkpoint into backend, policy and guards, truncate tables; return k."""
        self._close_tables()
        self._unread.clear()
        self._unconfirmed.clear()
        self.screening.restore({})
        if self.routing is not None:
            self.routing.restore({})
        ckpt = self.rundir.last_checkpoint()
        if ckpt is None:
            if required:
                raise CheckpointError(
                    f"no checkpoint in {self.rundir.checkpoints_path} to recover from"
                )
            # Killed before the step-0 checkpoint: nothing was trained yet, start over.
            self.rundir.truncate_tables(0)
            return 0
        k = int(ckpt["step"])
        self.backend.load_state(str(ckpt["ref"]))
        self.policy.load_state_dict(ckpt["policy"])
        self.screening.restore(ckpt)
        if self.routing is not None:
            self.routing.restore(ckpt)
        self._decisions = {int(u): Decision(**d) for u, d in ckpt.get("decisions", {}).items()}
        self._wall_offset_s = float(ckpt.get("wall_s", 0.0))
        self._t0 = time.monotonic()
        self.rundir.truncate_tables(k)
        self._snapshots = self._new_snapshot_keeper()  # snapshots after k belong to the past run
        self.console.line(f"resuming from the checkpoint at step {k}")
        return k

    # -- the loop ---------------------------------------------------------------------------------
    def _train_from(self, start: int) -> None:
        self._open_tables()
        self._rows_written = start
        for t in range(start, self.s.steps):
            if self.routing is not None:
                self.routing.before_step(t, self._settle)
            self._boundary(t, skip_checkpoint=(t == start and t > 0))
            self._snapshot_or_rollback(t)
            submitted = self.screening.submit(t, self._settle)
            if self.routing is not None:
                self.routing.after_submit(t)
            self._unread.append(submitted)
            self._drain(t - self.s.lag)
            if not submitted.skipped:
                if self.routing is not None:
                    self.routing.probe(t + 1)  # batch t+1 before update t (conflict C)
                params = AdamParams(learning_rate=self._setter(submitted).lr,
                                    **self.s.optimizer)
                submitted.optim = self.backend.optim_step(params)
                self._unconfirmed.append(submitted)
            self.screening.screen_ahead(t + 1)
        self._boundary(self.s.steps, skip_checkpoint=(start == self.s.steps))
        self.console.done()

    def _setter(self, submitted: SubmittedStep) -> Decision:
        """The decision that sets a submitted step's LR: the policy's, or a guard's probation
        rate, which is Mirror's business (snapshot and trial) and logged as mode 2."""
        setter = self._lr_decision(submitted.step)
        if submitted.guard_lr is None:
            return setter
        return replace(setter, lr=submitted.guard_lr, mode=2, mode_name="Mirror",
                       switched=False, reason="probation")

    def _drain(self, limit: int) -> None:
        """Read steps up to ``limit`` in order: loss → policy → row. A read step's optimizer
        steps (and those before it) are confirmed before its row is written."""
        while self._unread and self._unread[0].step <= limit:
            submitted = self._unread.popleft()
            u = submitted.step
            result = submitted.result.result(self.s.result_timeout_s)
            stress = submitted.rejected_fraction if self.guards else None
            loss = self.screening.observed_loss(submitted, float(result.mean_loss))
            signal = Signal(loss, stress, rebase=submitted.rebase)
            if self.routing is not None:
                signal = self.routing.signal(submitted, result, signal)
            decision = self.policy.observe(signal)
            if self.routing is not None:
                self.routing.after_decision(u, decision)
            self._decisions[u] = decision
            if self._snapshots is not None:
                self._snapshots.observe(decision)
            self._confirm(u)
            self._write_row(submitted, decision, result)

    def _confirm(self, limit: int) -> None:
        while self._unconfirmed and self._unconfirmed[0].step <= limit:
            optim = self._unconfirmed.popleft().optim
            if optim is not None:
                optim.result(self.s.result_timeout_s)

    def _write_row(self, submitted: SubmittedStep, seen: Decision,
                   result: ForwardBackwardResult) -> None:
        u, tokens = submitted.step, float(result.tokens)
        setter = self._setter(submitted)
        row = StepRow(
            step=u, shock=submitted.shock, loss=float(result.mean_loss), e_smooth=seen.e_smooth,
            phi=seen.phi,
            mode=setter.mode, mode_name=setter.mode_name,
            lr=0.0 if submitted.skipped else setter.lr, switched=setter.switched,
            kept=submitted.kept, skipped=submitted.skipped, tokens=tokens,
            wall_s=round(self._wall_s(), 4), reason=setter.reason, event=submitted.event,
            snapshot=submitted.snapshot, corrupted=submitted.corrupted,
            corrupted_rejected=submitted.corrupted_rejected,
            **(self.routing.row(u) if self.routing else {}),
        )
        assert self._steps_csv is not None
        self._steps_csv.write(row.as_dict())
        self._rows_written = u + 1
        self._decisions.pop(u - self.s.lag - 1, None)  # no later step's LR comes from it
        self.console.step(row, self.s.log_every)

    def _lr_decision(self, t: int) -> Decision:
        """The decision that sets step t's learning rate (see the module docstring)."""
        if t < self.s.warmup_steps:
            return warmup_decision(self.s.warmup_lr)
        source = t - self.s.lag
        return self._decisions[source] if source >= 0 else self.policy.initial_decision()

    def _settle(self, k: int) -> None:
        """Read every step before boundary k and confirm every optimizer step (and read the
        probe submitted for step k: the weights may change next)."""
        self._drain(k - 1)
        self._confirm(k - 1)
        if self.routing is not None:
            self.routing.read_probes()

    def _boundary(self, k: int, *, skip_checkpoint: bool) -> None:
        last = k == self.s.steps
        eval_due = last or k % self.s.eval_every == 0
        ckpt_due = not skip_checkpoint and (
            k == 0 or last or (self.s.checkpoint_every > 0 and k % self.s.checkpoint_every == 0)
        )
        if not (eval_due or ckpt_due):
            return
        self._settle(k)
        if last and self.screening.probation is not None:
            self._close_probation(k)
        if eval_due:
            protected = self.screening.probation is not None
            self._evaluate_protected(k) if protected else self._evaluate(k)
        if ckpt_due:
            self._checkpoint(k)

    def _close_probation(self, k: int) -> None:
        """A probation still open when the run ends is rolled back: the run keeps the weights
        it can vouch for (the snapshot's)."""
        closed = self.screening.undo_probation()
        self.console.line(f"[{k}] the run ends during a probation: rolled back to the snapshot "
                          f"of step {closed.step} ({closed.ref})")

    def _evaluate_protected(self, k: int) -> None:
        """During a probation the weights on trial are not the run's model yet: the evaluation
        scores the snapshot (what the run would keep if it stopped now), then training goes on
        from the probation weights."""
        probation = self.screening.probation
        assert probation is not None
        self.screening.drop_screen_ahead()
        held = self.backend.save_state(f"{self.s.run_name}-probation-eval{k:06d}")
        self.backend.load_state(probation.ref)
        self.console.line(f"[{k}] evaluating the snapshot of step {probation.step} "
                          "(the weights on probation are not the run's model yet)")
        self._evaluate(k)
        self.backend.load_state(held)

    def _snapshot_or_rollback(self, t: int) -> None:
        """At boundary t: restore the oldest stability snapshot after a switch into Mirror, or
        save one while stable (docs/design.md, "Mirror: stability snapshots"). Every submitted
        step is read and confirmed first, as at an evaluation boundary: a snapshot then holds
        every step < t, a rollback is not undone by an update in flight, and no future of a
        replaced Tinker client is left unread (it would refuse its result with
        StateLostError)."""
        keeper = self._snapshots
        if keeper is None or not (keeper.pending or keeper.due(t)):
            return
        self._settle(t)
        if keeper.pending:
            target = keeper.take_rollback()
            if target is not None:
                self.screening.drop_screen_ahead()
                self.backend.load_state(target[1])
                self.console.line(f"[{t}] Mirror: rolled back to the snapshot of step {target[0]}")
        else:
            keeper.add(t, self.backend.save_state(f"{self.s.run_name}-snap{t:06d}"))

    # -- evaluation and checkpoints ---------------------------------------------------------------
    def _evaluate(self, k: int) -> None:
        examples = list(self.source.eval_examples(k))
        result = self.backend.forward(examples).result(self.s.result_timeout_s)
        outputs = self.backend.sample(examples, self.s.eval_max_tokens)
        scores = self.source.score(k, outputs)
        row = {"step": k, "eval_loss": float(result.mean_loss), "exact_match": scores.exact_match}
        assert self._evals_csv is not None
        self._evals_csv.write(row)
        self.console.eval(row)
        # A multi-task stream: each task's clean loss joins its scores (run/pertask.py); with
        # [adapters], the task signals' per-task exact match and loss and S join them too.
        details = with_task_losses(scores.details, examples, result)
        if self.routing is not None:
            details = self.routing.eval_details(details, examples, result, outputs)
        if details is not None:
            self.rundir.append_eval_scores({"step": k, **details})
            line = task_line(details) if "tasks" in details else scores.summary
            if self.routing is not None:
                line = " | ".join(p for p in (line, f"S {details['stability']:.3f}") if p)
            self.console.line(f"[{k}] {line}")

    def _checkpoint(self, k: int) -> None:
        assert self._steps_csv is not None and self._evals_csv is not None
        self._steps_csv.flush()
        self._evals_csv.flush()
        # A resume screens step k afresh on the checkpoint's weights (screens in flight are not
        # saved); so does the uninterrupted run, or at lag ≥ 1 its screens, sent a few steps
        # ahead on older weights, could judge differently from the resumed run's.
        self.screening.drop_screen_ahead()
        ref = self.backend.save_state(f"{self.s.run_name}-step{k:06d}")
        # The LRs of steps k..k+L-1 come from the decisions after steps k-L..k-1.
        carried = {str(u): asdict(self._decisions[u]) for u in range(max(0, k - self.s.lag), k)}
        self.rundir.append_checkpoint({
            "step": k, "ref": ref, "policy": self.policy.state_dict(), "rows": k,
            "decisions": carried, "wall_s": round(self._wall_s(), 4), **self.screening.state(),
            **(self.routing.state() if self.routing is not None else {}),
        })

    # -- files ------------------------------------------------------------------------------------
    def _wall_s(self) -> float:
        return self._wall_offset_s + (time.monotonic() - self._t0)

    def _open_tables(self) -> None:
        self._close_tables()
        self._steps_csv = self.rundir.steps_appender(multitask=self.routing is not None)
        self._evals_csv = self.rundir.evals_appender()

    def _close_tables(self) -> None:
        for table in (self._steps_csv, self._evals_csv):
            if table is not None:
                table.close()
        self._steps_csv = self._evals_csv = None
