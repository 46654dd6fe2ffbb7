"""The training loop: batches in, guards and policy decisions, one row a step, evaluations,
checkpoints (docs/design.md, "The runner").

The runner sends every backend request, in one loop over futures that covers every control lag
L ≥ 0 and pipelines on Tinker for free (``_train_from`` reads as this)::

    for t in range(start, steps):
        fork per-task adapters, once decided            # [adapters]; every step < t read first
        boundary(t): read every step < t; evaluate and checkpoint when due
        guards judge batch_t (screening forward)        # only when the run has guards
        submit forward_backward(kept examples of t)     # may run ahead of reading
        read every unread step u ≤ t − L, in order:     # loss_u → policy → row u
        submit forward(batch_{t+1})                     # [adapters]: the probe of C
        submit optim_step(lr_t)                         # lr_t set by the decision after t − L
        submit the screen of batch_{t+1}                # lag 0; at lag ≥ 1 before step t's

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
are a function of (seed, step), so a resumed run reproduces the uninterrupted one. A checkpoint
record is written in ``_checkpoint`` and read in ``_restore``, nowhere else.

The guards (``run/screening.py``) and the task signals (``run/multitask.py``) are pure: the
runner hands them losses and carries out what they decide. This module is longer than 300
lines because every request is in it: the order of requests, which Tinker pipelining depends
on, reads in one file.

Screens cost no clock cycle of their own on Tinker: the screen of step u goes out with step
u−1's requests. At lag 0 (local) right after ``optim_step(u−1)``, so it runs on the weights
step u trains; at lag ≥ 1 (pipelined) before step t's own requests, ``BLOCK`` = 3 steps in one
``forward``: when the screen of step t+1 is not out yet, one request screens the batches of
steps t+1 .. t+3. A Tinker client sends its requests one after another, each answered after
the network latency; at a 0.3 s cycle and 0.1 s latency (``benchmarks/guard_cycles.py``) a
screen sent after the optimizer step made every step take two cycles (0.59 s a step against
0.30 s), one screen a step sent before the step's requests still 1.25x, and three requests a
step (screen, forward_backward, optim_step) could not fit one cycle. One screen for three steps
averages 2.33 requests a step; the guard then judges with weights two to four updates old.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import TextIO

from ulora_remote.backend import (
    AdamParams,
    AdapterBackend,
    Completed,
    ForwardBackwardResult,
    Future,
    TrainingBackend,
)
from ulora_remote.control.guard import Guard
from ulora_remote.control.policy import Decision, LrPolicy, Signal
from ulora_remote.control.snapshots import SnapshotKeeper
from ulora_remote.errors import BackendError, CheckpointError, StateLostError
from ulora_remote.run.console import Console
from ulora_remote.run.multitask import (
    MultiTask,
    SingleTask,
    StepTasks,
    TaskParts,
    check_routing,
    stream_tasks,
    task_sums,
)
from ulora_remote.run.pertask import task_line, with_task_losses
from ulora_remote.run.rundir import CsvAppender, RunDir
from ulora_remote.run.screening import Screening
from ulora_remote.run.steps import (
    Probation,
    RunSettings,
    ScreenSlice,
    StepRow,
    SubmittedStep,
    warmup_decision,
)
from ulora_remote.task import Batch, BatchSource

__all__ = ["BLOCK", "RunSettings", "Runner"]

#: Steps screened by one forward at lag ≥ 1 (module docstring).
BLOCK = 3


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
        tasks: the task signals and adapter switch of a multi-task run, or None.

    Raises:
        ConfigurationError: per-task adapters asked of a stream or backend that cannot hold
            them (``run.multitask.check_routing``).
    """

    def __init__(self, backend: TrainingBackend, policy: LrPolicy, guards: Sequence[Guard],
                 source: BatchSource, settings: RunSettings, rundir: RunDir,
                 out: TextIO | None = None, tasks: TaskParts | None = None) -> None:
        self.backend, self.policy, self.source = backend, policy, source
        self.settings, self.rundir = settings, rundir
        self.console = Console(out or sys.stdout, settings.steps)
        self.recoveries = 0
        self.screening = Screening(guards)
        self.tasks: StepTasks = SingleTask()
        if tasks is not None:
            names = stream_tasks(source)
            check_routing(tasks.switch.mode, names, backend)
            self.tasks = MultiTask(names, tasks.signals, tasks.switch)
            if isinstance(backend, AdapterBackend):  # C_w: each task's gradient (local)
                backend.measure_gradient_variance(True)
        #: At lag ≥ 1 the screens go out before a step's own requests, ``BLOCK`` steps in one
        #: forward (module docstring); at lag 0 the screen of step t+1 goes out after them.
        self._screens_first = settings.lag >= 1
        self._decisions: dict[int, Decision] = {}  # decision after step u, kept while needed
        self._unread: deque[SubmittedStep] = deque()  # submitted, loss not read yet
        self._unconfirmed: deque[SubmittedStep] = deque()  # optim_step not awaited yet
        self._ahead: deque[tuple[int, Batch, ScreenSlice]] = deque()  # screens sent ahead
        self._probes: dict[int, tuple[tuple[str, ...], Future[ForwardBackwardResult]]] = {}
        self._wall_offset_s = 0.0
        self._t0 = time.monotonic()
        self._rows_written = 0
        self._steps_csv: CsvAppender | None = None
        self._evals_csv: CsvAppender | None = None
        self._snapshots = self._new_snapshot_keeper()

    def _new_snapshot_keeper(self) -> SnapshotKeeper | None:
        if self.settings.snapshot_every <= 0:
            return None
        return SnapshotKeeper(self.settings.snapshot_every, self.settings.snapshot_keep,
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
        if self.recoveries > self.settings.max_recoveries:
            raise BackendError(
                f"the backend lost its training state {self.recoveries} times "
                f"(limit {self.settings.max_recoveries}); last error: {exc}. The run directory "
                f"is consistent: continue later with `ulora run --resume {self.rundir.path}`"
            ) from exc
        self.console.line(f"state lost ({exc}); reloading the last checkpoint "
                          f"(recovery {self.recoveries}/{self.settings.max_recoveries})")
        return self._restore(required=True)

    # -- the loop ---------------------------------------------------------------------------------
    def _train_from(self, start: int) -> None:
        self._open_tables()
        self._rows_written = start
        for t in range(start, self.settings.steps):
            self._fork_if_decided(t)
            self._boundary(t, skip_checkpoint=(t == start and t > 0))
            self._snapshot_or_rollback(t)
            step = self._submit_training(t)  # the guards judge, then forward_backward
            self._unread.append(step)
            self._read_through(t - self.settings.lag)
            if not step.skipped:
                self._submit_probe(t + 1)  # batch t+1 before update t
                params = AdamParams(learning_rate=self._setter(step).lr,
                                    **self.settings.optimizer)
                step.optim = self.backend.optim_step(params)
                self._unconfirmed.append(step)
            if not self._screens_first:
                self._submit_screens(t)  # the screen of t+1, on the weights it trains
        self._boundary(self.settings.steps, skip_checkpoint=(start == self.settings.steps))
        self.console.done()

    def _fork_if_decided(self, t: int) -> None:
        """At the start of step t: carry out a decided fork (every step < t read first)."""
        missing = self.tasks.fork_due(self._routed())
        if missing:
            self._settle(t)
            assert isinstance(self.backend, AdapterBackend)  # check_routing made sure
            self.backend.fork_adapters(list(missing))
            self.console.line(self.tasks.forked(t, missing))

    def _submit_training(self, t: int) -> SubmittedStep:
        """Judge step t's batch with the guards and submit the ``forward_backward`` of the
        examples they keep; a step with none kept is skipped. A guard's action (probation,
        rollback, shift) is carried out first, every step before t read and confirmed."""
        batch, screen = self._batch_and_screen(t)
        examples, size = batch.examples, len(batch.examples)
        if screen is None:
            step = SubmittedStep(t, batch.shock, size, size,
                                 self.backend.forward_backward(examples),
                                 tasks=tuple(e.task for e in examples),
                                 corrupted=sum(batch.corrupted))
            self.tasks.submitted(t, self._routed())
            return step
        screened, contrast = self.screening.split(
            examples, screen.result(self.settings.result_timeout_s))
        tasks = [e.task for e in examples]
        verdict = self.screening.judge(t, screened, tasks, contrast)
        note, event, snapshot = verdict.note, "", ""
        if verdict.action == "rollback":
            self._settle(t)
            snapshot = self._close_probation(t).ref
            screened, contrast = self.screening.split(examples, self.backend.forward(
                self.screening.screened_examples(examples)).result(
                    self.settings.result_timeout_s))
            verdict, event = self.screening.judge(t, screened, tasks, contrast), "rollback"
        if verdict.action == "probation":
            self._settle(t)
            snapshot = self.backend.save_state(f"{self.settings.run_name}-probation{t:06d}")
            self.screening.open_probation(t, snapshot, self.policy.state_dict())
            event = "probation"
        elif verdict.action == "shift":
            snapshot, event = self.screening.end_probation(), "shift"
        if event:
            self.console.line(f"[{t}] {note or event}" + (f" ({snapshot})" if snapshot else ""))
        kept = [e for e, k in zip(examples, verdict.keep, strict=True) if k]
        if self._screens_first:
            self._submit_screens(t)
        result = (self.backend.forward_backward(kept) if kept
                  else Completed(ForwardBackwardResult(screened.nll_sums, screened.weight_sums)))
        self.tasks.submitted(t, self._routed())
        return SubmittedStep(t, batch.shock, size, len(kept), result, guard_lr=verdict.lr,
                             rebase=verdict.action == "shift", event=event, snapshot=snapshot,
                             tasks=tuple(e.task for e in (kept or examples)),
                             corrupted=sum(batch.corrupted),
                             corrupted_rejected=sum(c and not k for c, k in zip(
                                 batch.corrupted, verdict.keep, strict=False)))

    def _read_through(self, limit: int) -> None:
        """Read steps up to ``limit`` in order: loss → policy → row. A read step's optimizer
        steps (and those before it) are confirmed before its row is written."""
        while self._unread and self._unread[0].step <= limit:
            step = self._unread.popleft()
            result = step.result.result(self.settings.result_timeout_s)
            stress = step.rejected_fraction if self.screening.active else None
            loss = self.screening.observed_loss(step.skipped, float(result.mean_loss))
            self._read_probe(step.step)
            signal = self.tasks.signal(step, result, result.gradient_variance,
                                       Signal(loss, stress, rebase=step.rebase))
            decision = self.policy.observe(signal)
            line = self.tasks.decided(step.step, decision)
            if line is not None:
                self.console.line(line)
            self._decisions[step.step] = decision
            if self._snapshots is not None:
                self._snapshots.observe(decision)
            self._confirm(step.step)
            self._write_row(step, decision, result)

    def _confirm(self, limit: int) -> None:
        while self._unconfirmed and self._unconfirmed[0].step <= limit:
            optim = self._unconfirmed.popleft().optim
            if optim is not None:
                optim.result(self.settings.result_timeout_s)

    def _settle(self, k: int) -> None:
        """Read every step before boundary k, confirm every optimizer step, and read the probe
        submitted for step k: the weights (or, on Tinker, the client) may change next, and a
        replaced client refuses the results of its futures. A rollback between a probe and its
        step spoils that one x_T; it is kept (one sample of the window)."""
        self._read_through(k - 1)
        self._confirm(k - 1)
        for u in list(self._probes):
            self._read_probe(u)

    # -- the learning rate ------------------------------------------------------------------------
    def _setter(self, step: SubmittedStep) -> Decision:
        """The decision that sets a submitted step's LR: the policy's, or a guard's probation
        rate, which is Mirror's business (snapshot and trial) and logged as mode 2."""
        setter = self._lr_decision(step.step)
        if step.guard_lr is None:
            return setter
        return replace(setter, lr=step.guard_lr, mode=2, mode_name="Mirror",
                       switched=False, reason="probation")

    def _lr_decision(self, t: int) -> Decision:
        """The decision that sets step t's learning rate (see the module docstring)."""
        if t < self.settings.warmup_steps:
            return warmup_decision(self.settings.warmup_lr)
        source = t - self.settings.lag
        return self._decisions[source] if source >= 0 else self.policy.initial_decision()

    # -- screens and probes sent ahead ------------------------------------------------------------
    def _batch_and_screen(self, t: int) -> tuple[Batch, Future[ForwardBackwardResult] | None]:
        while self._ahead and self._ahead[0][0] < t:
            self._ahead.popleft()  # a screen of a step that a restore made run again
        if self._ahead and self._ahead[0][0] == t:
            _, batch, screen = self._ahead.popleft()
            return batch, screen
        batch = self.source.batch(t)
        if not self.screening.active:
            return batch, None
        return batch, self.backend.forward(self.screening.screened_examples(batch.examples))

    def _submit_screens(self, t: int) -> None:
        """Make sure the screen of step t+1 is out: when it is not, submit one forward for the
        batches of the next steps (``BLOCK`` at lag ≥ 1, else 1; each reads its slice)."""
        if not self.screening.active or (self._ahead and self._ahead[-1][0] > t):
            return
        first = self._ahead[-1][0] + 1 if self._ahead else t + 1
        block = BLOCK if self._screens_first else 1
        steps = range(first, min(first + block, self.settings.steps))
        if not steps:
            return
        batches = [self.source.batch(u) for u in steps]
        screened = [self.screening.screened_examples(b.examples) for b in batches]
        future = self.backend.forward([e for examples in screened for e in examples])
        start = 0
        for u, batch, examples in zip(steps, batches, screened, strict=True):
            end = start + len(examples)
            self._ahead.append((u, batch, ScreenSlice(future, start, end)))
            start = end

    def _drop_screens(self) -> None:
        """Read and drop the screens sent ahead before the weights change under them (a Tinker
        client replaced by a load must leave no future unread)."""
        while self._ahead:
            self._ahead.popleft()[2].result(self.settings.result_timeout_s)

    def _submit_probe(self, t: int) -> None:
        """Before ``optim_step(t − 1)``: score batch t on the weights that update is about to
        change (a multi-task stream only; nothing beyond the run)."""
        if self.tasks.probes and t < self.settings.steps:
            examples = self.source.batch(t).examples
            self._probes[t] = (tuple(e.task for e in examples), self.backend.forward(examples))

    def _read_probe(self, t: int) -> None:
        probe = self._probes.pop(t, None)
        if probe is not None:
            names, future = probe
            self.tasks.probe_read(t, task_sums(names, future.result(
                self.settings.result_timeout_s)))

    def _routed(self) -> tuple[str, ...]:
        """The tasks the backend routes to their own adapter."""
        return self.backend.adapter_tasks() if isinstance(self.backend, AdapterBackend) else ()

    # -- probation and snapshots ------------------------------------------------------------------
    def _close_probation(self, t: int) -> Probation:
        """Restore what the open probation changed: the snapshot's weights, and the policy as
        it was then (it observed the data on trial). Returns the closed probation."""
        try:
            probation = self.screening.close_probation()
        except CheckpointError as exc:
            raise CheckpointError(f"[{t}] {exc}") from None
        self._drop_screens()
        self.backend.load_state(probation.ref)
        self.policy.load_state_dict(probation.policy)
        return probation

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
                self._drop_screens()
                self.backend.load_state(target[1])
                self.console.line(f"[{t}] Mirror: rolled back to the snapshot of step {target[0]}")
        else:
            keeper.add(t, self.backend.save_state(f"{self.settings.run_name}-snap{t:06d}"))

    # -- boundaries: evaluation and checkpoints ---------------------------------------------------
    def _boundary(self, k: int, *, skip_checkpoint: bool) -> None:
        s = self.settings
        last = k == s.steps
        eval_due = last or k % s.eval_every == 0
        ckpt_due = not skip_checkpoint and (
            k == 0 or last or (s.checkpoint_every > 0 and k % s.checkpoint_every == 0)
        )
        if not (eval_due or ckpt_due):
            return
        self._settle(k)
        if last and self.screening.probation is not None:
            # A probation still open when the run ends is rolled back: the run keeps the
            # weights it can vouch for (the snapshot's).
            closed = self._close_probation(k)
            self.console.line(f"[{k}] the run ends during a probation: rolled back to the "
                              f"snapshot of step {closed.step} ({closed.ref})")
        if eval_due:
            self._evaluate_protected(k)
        if ckpt_due:
            self._checkpoint(k)

    def _evaluate_protected(self, k: int) -> None:
        """During a probation the weights on trial are not the run's model yet: the evaluation
        scores the snapshot (what the run would keep if it stopped now), then training goes on
        from the probation weights."""
        probation = self.screening.probation
        if probation is None:
            self._evaluate(k)
            return
        self._drop_screens()
        held = self.backend.save_state(f"{self.settings.run_name}-probation-eval{k:06d}")
        self.backend.load_state(probation.ref)
        self.console.line(f"[{k}] evaluating the snapshot of step {probation.step} "
                          "(the weights on probation are not the run's model yet)")
        self._evaluate(k)
        self.backend.load_state(held)

    def _evaluate(self, k: int) -> None:
        examples = list(self.source.eval_examples(k))
        result = self.backend.forward(examples).result(self.settings.result_timeout_s)
        outputs = self.backend.sample(examples, self.settings.eval_max_tokens)
        scores = self.source.score(k, outputs)
        row = {"step": k, "eval_loss": float(result.mean_loss), "exact_match": scores.exact_match}
        assert self._evals_csv is not None
        self._evals_csv.write(row)
        self.console.eval(row)
        # A multi-task stream: each task's clean loss joins its scores (run/pertask.py); with
        # [adapters], the task signals' per-task exact match and loss and S join them too.
        details = self.tasks.eval_details(with_task_losses(scores.details, examples, result),
                                          examples, result, outputs)
        if details is not None:
            self.rundir.append_eval_scores({"step": k, **details})
            line = task_line(details) if "tasks" in details else scores.summary
            if "stability" in details:
                line = " | ".join(p for p in (line, f"S {details['stability']:.3f}") if p)
            self.console.line(f"[{k}] {line}")

    # -- the checkpoint record: written here, read in _restore ------------------------------------
    def _checkpoint(self, k: int) -> None:
        assert self._steps_csv is not None and self._evals_csv is not None
        self._steps_csv.flush()
        self._evals_csv.flush()
        # A resume screens step k afresh on the checkpoint's weights (screens in flight are not
        # saved); so does the uninterrupted run, or at lag ≥ 1 its screens, sent a few steps
        # ahead on older weights, could judge differently from the resumed run's.
        self._drop_screens()
        ref = self.backend.save_state(f"{self.settings.run_name}-step{k:06d}")
        # The LRs of steps k..k+L-1 come from the decisions after steps k-L..k-1.
        lag = self.settings.lag
        carried = {str(u): asdict(self._decisions[u]) for u in range(max(0, k - lag), k)}
        self.rundir.append_checkpoint({
            "step": k, "ref": ref, "policy": self.policy.state_dict(), "rows": k,
            "decisions": carried, "wall_s": round(self._wall_s(), 4), **self.screening.state(),
            **self.tasks.state(),
        })

    def _restore(self, *, required: bool) -> int:
        """Load the last checkpoint into backend, policy, guards and task signals, truncate the
        tables; return its step k (0, everything forgotten, when there is none and not
        ``required``)."""
        self._close_tables()
        self._unread.clear()
        self._unconfirmed.clear()
        self._ahead.clear()
        self._probes.clear()
        self.screening.restore({})
        self.tasks.restore({})
        ckpt = self.rundir.last_checkpoint()
        if ckpt is None:
            # Killed, or the state lost, before the step-0 checkpoint: nothing was trained yet
            # (that checkpoint precedes the first update), so start over. A backend that lost
            # its state then rebuilds the fresh one (TrainingBackend: "State lost").
            if required:
                self.console.line("no checkpoint yet and nothing trained: starting over from "
                                  "step 0")
            self.rundir.truncate_tables(0)
            return 0
        k = int(ckpt["step"])
        self.backend.load_state(str(ckpt["ref"]))
        self.policy.load_state_dict(ckpt["policy"])
        self.screening.restore(ckpt)
        self.tasks.restore(ckpt)
        self._decisions = {int(u): Decision(**d) for u, d in ckpt.get("decisions", {}).items()}
        self._wall_offset_s = float(ckpt.get("wall_s", 0.0))
        self._t0 = time.monotonic()
        self.rundir.truncate_tables(k)
        self._snapshots = self._new_snapshot_keeper()  # snapshots after k belong to the past run
        self.console.line(f"resuming from the checkpoint at step {k}")
        return k

    # -- files ------------------------------------------------------------------------------------
    def _write_row(self, step: SubmittedStep, seen: Decision,
                   result: ForwardBackwardResult) -> None:
        u = step.step
        setter = self._setter(step)
        row = StepRow(
            step=u, shock=step.shock, loss=float(result.mean_loss), e_smooth=seen.e_smooth,
            phi=seen.phi, mode=setter.mode, mode_name=setter.mode_name,
            lr=0.0 if step.skipped else setter.lr, switched=setter.switched,
            kept=step.kept, skipped=step.skipped, tokens=float(result.tokens),
            wall_s=round(self._wall_s(), 4), reason=setter.reason, event=step.event,
            snapshot=step.snapshot, corrupted=step.corrupted,
            corrupted_rejected=step.corrupted_rejected, **self.tasks.row(u),
        )
        assert self._steps_csv is not None
        self._steps_csv.write(row.as_dict())
        self._rows_written = u + 1
        self._decisions.pop(u - self.settings.lag - 1, None)  # no later LR comes from it
        self.console.step(row, self.settings.log_every)

    def _wall_s(self) -> float:
        return self._wall_offset_s + (time.monotonic() - self._t0)

    def _open_tables(self) -> None:
        self._close_tables()
        self._steps_csv = self.rundir.steps_appender(multitask=self.tasks.multitask)
        self._evals_csv = self.rundir.evals_appender()

    def _close_tables(self) -> None:
        for table in (self._steps_csv, self._evals_csv):
            if table is not None:
                table.close()
        self._steps_csv = self._evals_csv = None
