"""The training loop: batches in, controller decisions, one row a step, evaluations, checkpoints.

One generic loop over futures covers every control lag L ≥ 0 and pipelines on Tinker for free::

    for t in range(start, steps):
        fb[t] = backend.forward_backward(batch_t)        # submit; may run ahead of reading
        read every unread step u ≤ t − L, in order:      # loss_u → controller → row u
        opt[t] = backend.optim_step(lr_t)                # lr_t from the decision of step t − L

With L = 0 that is the seed's quick start; with L = 1 the next batch is submitted before the
current loss is read (one Tinker clock cycle a step). ``lr_t`` is ``warmup_lr`` for
``t < warmup_steps``, else ``fixed_lr`` for a fixed baseline, else the LR of the controller's
mode after loss_{t−L} (its initial mode, Multi, while ``t < L``). The controller observes every
loss, also during warm-up and in a fixed baseline, so φ is always logged.

Boundaries. At a step boundary k (k optimizer steps applied) the pipeline is drained, then the
clean evaluation runs (k = 0, every ``eval_every``, and k = steps), then a checkpoint is saved
(k = 0, every ``checkpoint_every`` when > 0, and k = steps). An evaluation row's ``step`` is k:
the model after k updates, before the update of step k. The step-0 checkpoint makes in-process
recovery possible before the first periodic one.

Resume and recovery restore the last checkpoint k (backend state, controller, the LRs already
decided for steps k..k+L−1), truncate the tables to rows < k and replay from k. Batches are a
function of (seed, step), so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from ulora_remote.backend import AdamParams, Completed, Example, Future, TrainingBackend
from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.policies import SnapshotKeeper
from ulora_remote.errors import BackendError, CheckpointError, StateLostError
from ulora_remote.run.console import Console
from ulora_remote.run.rundir import CsvAppender, RunDir

__all__ = ["BatchSource", "RunSettings", "Runner"]


class BatchSource(Protocol):
    """What the runner needs of a task: deterministic batches by step and a clean eval set."""

    def batch(self, step: int) -> tuple[Sequence[Example], bool]:
        """The batch of ``step`` and whether it is a shock batch; a pure function of the step."""
        ...

    def eval_examples(self) -> Sequence[Example]:
        """The clean held-out examples (the same on every call)."""
        ...


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Plain values the loop needs; built from a scenario by ``ulora_remote.run.builders``.

    ``fixed_lr`` None means the controller drives the LR; a number makes a fixed baseline.
    ``optimizer`` holds AdamParams fields other than ``learning_rate``.
    ``snapshot_every`` > 0 keeps stability snapshots and rolls back on entering Mirror
    (``ulora_remote.control.policies.SnapshotKeeper``; not carried across a resume).
    """

    run_name: str
    steps: int
    lag: int = 0
    warmup_steps: int = 0
    warmup_lr: float = 5e-4
    fixed_lr: float | None = None
    optimizer: Mapping[str, float] = field(default_factory=dict)
    eval_every: int = 25
    eval_max_tokens: int = 24
    checkpoint_every: int = 100
    log_every: int = 25
    max_recoveries: int = 3
    result_timeout_s: float | None = None
    snapshot_every: int = 0
    snapshot_keep: int = 2


class Runner:
    """Runs one scenario's steps on a backend and writes the run directory's tables.

    Args:
        backend: any ``TrainingBackend``; closed when ``run`` returns or raises.
        controller: a fresh controller (restored from the checkpoint on resume).
        source: batches and eval examples.
        settings: the loop's parameters.
        rundir: where tables and checkpoint records go (config.json is the caller's job).
        out: the console stream (stdout by default).
    """

    def __init__(
        self,
        backend: TrainingBackend,
        controller: UnifiedController,
        source: BatchSource,
        settings: RunSettings,
        rundir: RunDir,
        out: TextIO | None = None,
    ) -> None:
        self.backend, self.controller, self.source = backend, controller, source
        self.s, self.rundir = settings, rundir
        self.console = Console(out or sys.stdout, settings.steps)
        self.recoveries = 0
        self._decided_lr: dict[int, float] = {}
        self._wall_offset_s = 0.0
        self._t0 = time.monotonic()
        self._rows_written = 0
        self._steps_csv: CsvAppender | None = None
        self._evals_csv: CsvAppender | None = None
        # Baselines and variants (ulora_remote.control.policies): steps skipped by a loss
        # screen (their row logs the screened loss with lr 0) and the Mirror rollback snapshots.
        self._skipped: set[int] = set()
        self._snapshots = self._new_snapshot_keeper()

    def _new_snapshot_keeper(self) -> SnapshotKeeper | None:
        if self.s.snapshot_every <= 0:
            return None
        return SnapshotKeeper(self.s.snapshot_every, self.s.snapshot_keep,
                              mode=int(getattr(self.controller, "mode", 1)))

    # -- entry point ----------------------------------------------------------------------------
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
        """Load the last checkpoint into backend and controller, truncate tables; return k."""
        self._close_tables()
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
        self.controller.load_state_dict(ckpt["controller"])
        self._decided_lr = {int(u): float(lr) for u, lr in ckpt.get("decided_lrs", {}).items()}
        self._wall_offset_s = float(ckpt.get("wall_s", 0.0))
        self._t0 = time.monotonic()
        self.rundir.truncate_tables(k)
        self._snapshots = self._new_snapshot_keeper()  # snapshots after k belong to the past run
        self.console.line(f"resuming from the checkpoint at step {k}")
        return k

    # -- the loop -------------------------------------------------------------------------------
    def _train_from(self, start: int) -> None:
        self._open_tables()
        self._rows_written = start
        fb: dict[int, Future[Any]] = {}
        opt: dict[int, Future[Any]] = {}
        shock: dict[int, bool] = {}
        self._next_read = start
        for t in range(start, self.s.steps):
            self._boundary(t, fb, opt, shock, skip_checkpoint=(t == start and t > 0))
            self._snapshot_or_rollback(t, fb, opt, shock)
            batch, shock[t] = self.source.batch(t)
            skip = self._screen(t, batch, fb)
            if not skip:
                fb[t] = self.backend.forward_backward(batch)
            self._read_until(t - self.s.lag, fb, opt, shock)
            if not skip:
                params = AdamParams(learning_rate=self._lr(t), **dict(self.s.optimizer))
                opt[t] = self.backend.optim_step(params)
        self._boundary(self.s.steps, fb, opt, shock, skip_checkpoint=(start == self.s.steps))
        self.console.done()

    def _boundary(self, k: int, fb: dict[int, Future[Any]], opt: dict[int, Future[Any]],
                  shock: dict[int, bool], *, skip_checkpoint: bool) -> None:
        last = k == self.s.steps
        eval_due = last or k % self.s.eval_every == 0
        ckpt_due = not skip_checkpoint and (
            k == 0 or last or (self.s.checkpoint_every > 0 and k % self.s.checkpoint_every == 0)
        )
        if not (eval_due or ckpt_due):
            return
        self._read_until(k - 1, fb, opt, shock)
        for u in sorted(opt):  # with lag 0 the last optim step is still in flight
            opt.pop(u).result(self.s.result_timeout_s)
        if eval_due:
            self._evaluate(k)
        if ckpt_due:
            self._checkpoint(k)

    def _read_until(self, limit: int, fb: dict[int, Future[Any]], opt: dict[int, Future[Any]],
                    shock: dict[int, bool]) -> None:
        """Read results of steps ``next_read..limit`` in order, decide, and write their rows."""
        while self._next_read <= limit:
            u = self._next_read
            result = fb.pop(u).result(self.s.result_timeout_s)
            loss = float(result.mean_loss)
            decision = self.controller.decide(loss)
            self._decided_lr[u] = decision.lr
            if self._snapshots is not None:
                self._snapshots.observe(decision)
            if u in opt:
                opt.pop(u).result(self.s.result_timeout_s)
            row = {
                "step": u, "shock": shock.pop(u), "loss": loss,
                "e_smooth": decision.e_smooth, "phi": decision.phi, "mode": decision.mode,
                "mode_name": decision.mode_name, "lr": 0.0 if u in self._skipped else self._lr(u),
                "switched": decision.switched, "tokens": float(result.tokens),
                "wall_s": round(self._wall_s(), 4),
            }
            assert self._steps_csv is not None
            self._steps_csv.write(row)
            self._rows_written = u + 1
            self._next_read = u + 1
            self._skipped.discard(u)
            self.console.step(row, self.s.log_every)

    def _lr(self, t: int) -> float:
        """The learning rate applied at step t (see the module docstring)."""
        if t < self.s.warmup_steps:
            return self.s.warmup_lr
        if self.s.fixed_lr is not None:
            return self.s.fixed_lr
        source = t - self.s.lag
        if source < 0:
            # The controller starts in Multi; a baseline policy names its own first LR.
            return float(getattr(self.controller, "initial_lr", self.controller.config.lrs[1]))
        return self._decided_lr[source]

    # -- baselines and variants (ulora_remote.control.policies) -------------------------------
    def _screen(self, t: int, batch: Sequence[Example], fb: dict[int, Future[Any]]) -> bool:
        """Screen the batch with a gradient-free forward when the policy asks; True = skip it.

        A skipped step keeps the screened result as its row's loss and submits no update.
        """
        screen = getattr(self.controller, "screen", None)
        if screen is None or not getattr(self.controller, "screens", False):
            return False
        screened = self.backend.forward(batch).result(self.s.result_timeout_s)
        if not screen(float(screened.mean_loss)):
            return False
        fb[t] = Completed(screened)
        self._skipped.add(t)
        return True

    def _snapshot_or_rollback(self, t: int, fb: dict[int, Future[Any]],
                              opt: dict[int, Future[Any]], shock: dict[int, bool]) -> None:
        """At boundary t: restore the oldest stability snapshot after a switch into Mirror, or
        save one while stable (DESIGN.md §4). Every submitted step is read and drained first, as
        at an evaluation boundary: a snapshot then holds every step < t, a rollback is not undone
        by an update in flight, and no future of the replaced Tinker client is left unread (it
        would refuse its result with StateLostError)."""
        keeper = self._snapshots
        if keeper is None or not (keeper.pending or keeper.due(t)):
            return
        self._read_until(t - 1, fb, opt, shock)
        for u in sorted(opt):
            opt.pop(u).result(self.s.result_timeout_s)
        if keeper.pending:
            target = keeper.take_rollback()
            if target is not None:
                self.backend.load_state(target[1])
                self.console.line(f"[{t}] Mirror: rolled back to the snapshot of step {target[0]}")
        else:
            keeper.add(t, self.backend.save_state(f"{self.s.run_name}-snap{t:06d}"))

    # -- evaluation and checkpoints -------------------------------------------------------------
    def _evaluate(self, k: int) -> None:
        examples = list(self.source.eval_examples())
        result = self.backend.forward(examples).result(self.s.result_timeout_s)
        outputs = self.backend.sample([e.prompt for e in examples], self.s.eval_max_tokens)
        pairs = zip(outputs, examples, strict=True)
        hits = sum(o.strip() == e.completion.strip() for o, e in pairs)
        row = {"step": k, "eval_loss": float(result.mean_loss),
               "exact_match": hits / len(examples) if examples else math.nan}
        assert self._evals_csv is not None
        self._evals_csv.write(row)
        self.console.eval(row)
        self._score_eval(k, outputs)

    def _score_eval(self, k: int, outputs: Sequence[str]) -> None:
        """Record the scores of a source that scores its own task (accuracy, F1, majority)."""
        score = getattr(self.source, "score_eval", None)
        if not callable(score):
            return
        scores = score(outputs)
        self.rundir.append_eval_scores({"step": k, **scores.to_dict()})
        self.console.line(f"[{k}] {scores.describe()}")

    def _checkpoint(self, k: int) -> None:
        assert self._steps_csv is not None and self._evals_csv is not None
        self._steps_csv.flush()
        self._evals_csv.flush()
        ref = self.backend.save_state(f"{self.s.run_name}-step{k:06d}")
        keep = range(max(0, k - self.s.lag), k)
        self._decided_lr = {u: lr for u, lr in self._decided_lr.items() if u >= keep.start}
        self.rundir.append_checkpoint({
            "step": k, "ref": ref, "controller": self.controller.state_dict(),
            "rows": k, "decided_lrs": {str(u): self._decided_lr[u] for u in keep},
            "wall_s": round(self._wall_s(), 4),
        })

    # -- files ------------------------------------------------------------------------------------
    def _wall_s(self) -> float:
        return self._wall_offset_s + (time.monotonic() - self._t0)

    def _open_tables(self) -> None:
        self._close_tables()
        self._steps_csv = self.rundir.steps_appender()
        self._evals_csv = self.rundir.evals_appender()

    def _close_tables(self) -> None:
        for table in (self._steps_csv, self._evals_csv):
            if table is not None:
                table.close()
        self._steps_csv = self._evals_csv = None
