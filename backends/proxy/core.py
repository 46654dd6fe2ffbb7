"""The guard core shared by ``ulora proxy`` and ``ulora_remote.tinker.guard``: one step's
judgement from the client's own ``forward_backward`` (docs/design.md, "Guards").

A step is everything a training client sends between two ``optim_step`` calls. Its supervised
``cross_entropy`` ``forward_backward`` requests go upstream unchanged; their outputs give each
example's loss, −Σ logprobs·weights / Σ weights (nats per weighted target token). Before the
client's ``optim_step`` is forwarded, the screening guard judges those losses. Rejected examples
are taken back by a second ``forward_backward`` of just those examples with their weights negated:
Tinker's ``cross_entropy`` is a weighted *sum* and gradients add up until ``optim_step``, so the
accumulated gradient is then that of the kept examples alone (exactly, up to float rounding).
A step with nothing kept cancels everything and sends no ``optim_step``: Adam's moments and step
count stay untouched, and the client gets a successful, empty optimizer answer.

Zero weights would not do: a second request with weight 0 adds nothing, and the rejected
examples' gradient would stay in the sum.

This module is pure Python (no HTTP, no SDK): numbers in, a ``StepPlan`` out, plus the records.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.guard import Action, Verdict
from ulora_remote.control.policy import Signal
from ulora_remote.control.screen import ScreenConfig, ScreenGuard
from ulora_remote.losses import BatchLosses

__all__ = ["GuardCore", "StepPlan", "StepRecords", "example_loss", "judge_losses"]


def example_loss(logprobs: Sequence[float], weights: Sequence[float]) -> float:
    """One datum's mean NLL per weighted target token (nats); NaN when its weights sum to 0."""
    total = float(sum(weights))
    if not total > 0:
        return math.nan
    return -float(sum(lp * w for lp, w in zip(logprobs, weights, strict=True))) / total


def judge_losses(guard: ScreenGuard, step: int, losses: Sequence[float]) -> Verdict:
    """The one call into the guard: per-example losses (nats per token) in, a verdict out.

    The guard takes ``BatchLosses``; each loss is given as an NLL sum over a weight of 1, which
    ``example_losses`` turns back into the same loss (NaN stays NaN). A proxy sees only the
    client's own batch, so it has no contrast pairs: τ alone judges (docs/proxy.md).
    """
    screened = BatchLosses(
        nll_sums=tuple(float(x) for x in losses), weight_sums=(1.0,) * len(losses))
    return guard.judge(step, screened)


@dataclass(frozen=True)
class StepPlan:
    """What to do with one judged step.

    Attributes:
        keep: one flag per example of the step, in the order the client sent them.
        action: the guard's action ("none", "probation", "shift" or "rollback"). On "rollback"
            the caller restores the snapshot, re-runs the step's ``forward_backward`` on it and
            calls ``GuardCore.judge`` again for the same step (that plan never rolls back).
        lr: the learning rate to send instead of the client's, or None to keep the client's.
        note: the guard's reason, for the console.
    """

    keep: tuple[bool, ...]
    action: Action
    lr: float | None
    note: str

    @property
    def rejected(self) -> tuple[int, ...]:
        """Indices of the examples whose gradient must be cancelled."""
        return tuple(i for i, k in enumerate(self.keep) if not k)

    @property
    def skip(self) -> bool:
        """Nothing kept: no ``optim_step`` goes upstream."""
        return not any(self.keep)


class StepRecords:
    """What the guard did to one model id, in ``folder``: ``steps.csv`` (one row a step: step,
    kept, rejected, event, lr, loss), ``metrics.jsonl`` in tinker-cookbook's format, and a
    console line for each probation, shift and rollback. ``folder`` None: console lines only."""

    COLUMNS = ("step", "kept", "rejected", "event", "lr", "loss")

    def __init__(self, folder: Path | None, label: str, console: TextIO | None = None) -> None:
        self.folder, self.label = folder, label
        self.console = console if console is not None else sys.stderr
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            steps = folder / "steps.csv"
            if not steps.exists():
                steps.write_text(",".join(self.COLUMNS) + "\n")

    def announce(self, step: int, plan: StepPlan) -> None:
        """The console line of a probation, shift or rollback."""
        print(f"ulora guard [{self.label}] step {step}: {plan.action}: {plan.note}",
              file=self.console, flush=True)

    def write(self, step: int, plan: StepPlan, event: str, lr: float | None,
              loss: float) -> None:
        """Append the step's row (``event`` is "" on an ordinary step)."""
        if self.folder is None:
            return
        kept = sum(plan.keep)
        row = (step, kept, len(plan.keep) - kept, event, "" if lr is None else f"{lr:.6g}",
               f"{loss:.6g}")
        with (self.folder / "steps.csv").open("a", newline="") as f:
            csv.writer(f).writerow(row)
        record: dict[str, object] = {
            "step": step, "num_sequences": kept, "ulora/rejected": len(plan.keep) - kept,
            "ulora/event": event, "ulora/skipped": plan.skip}
        if lr is not None:
            record["learning_rate"] = lr
        if math.isfinite(loss):
            record["train_mean_nll"] = loss
        with (self.folder / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


def folder_name(model_id: str) -> str:
    """A file-system-safe folder name for a model id (``session:train:0`` → ``session_train_0``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_id)[:200] or "model"


class GuardCore:
    """One training client's guard: the screening guard, the optional controller, the step
    count and the records. Not thread-safe: one caller drives it, in step order."""

    def __init__(self, records: StepRecords, *, screen: ScreenConfig | None = None,
                 controller: bool = False) -> None:
        self.guard = ScreenGuard(screen)
        self.controller = UnifiedController.from_preset("tinker") if controller else None
        self.records = records
        self.step = 0
        self._rolled_back = False  # this step was rolled back and is being judged again

    def judge(self, losses: Sequence[float]) -> StepPlan:
        """Judge the current step's examples (their losses, in order). After a plan with
        action "rollback", call it again with the losses measured on the restored weights."""
        verdict = judge_losses(self.guard, self.step, losses)
        plan = StepPlan(keep=verdict.keep, action=verdict.action, lr=verdict.lr,
                        note=verdict.note)
        if plan.action != "none":
            self.records.announce(self.step, plan)
        if plan.action == "rollback":
            self._rolled_back = True
        return plan

    def finish(self, plan: StepPlan, losses: Sequence[float],
               client_lr: float | None) -> float | None:
        """Close the step: feed the controller, write the row, and return the learning rate to
        send (None: the client's own ``client_lr`` stands, or no step is sent)."""
        kept = [x for x, k in zip(losses, plan.keep, strict=True) if k and math.isfinite(x)]
        loss = sum(kept) / len(kept) if kept else math.nan
        lr = plan.lr
        if self.controller is not None and not plan.skip:
            decision = self.controller.observe(Signal(
                loss=loss, external_stress=1.0 - sum(plan.keep) / len(plan.keep),
                rebase=plan.action == "shift"))
            lr = lr if lr is not None else decision.lr
        sent = None if plan.skip else (lr if lr is not None else client_lr)
        event = "rollback" if self._rolled_back else ("" if plan.action == "none" else plan.action)
        self.records.write(self.step, plan, event, sent, loss)
        self.step += 1
        self._rolled_back = False
        return lr
