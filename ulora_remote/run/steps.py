"""The runner's records: its settings, one in-flight record per submitted step, and the step row
whose fields are the columns of ``steps.csv`` (one source of truth for both)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ulora_remote.backend import ForwardBackwardResult, Future, OptimStepResult
from ulora_remote.control.policy import NO_MODE, Decision

__all__ = ["MULTITASK_STEP_COLUMNS", "STEP_COLUMNS", "TASK_STEP_COLUMNS", "Probation",
           "RunSettings", "ScreenSlice", "StepRow", "SubmittedStep", "warmup_decision"]


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Plain values the loop needs; built from a scenario by ``ulora_remote.run.builders``.

    ``optimizer`` holds AdamParams fields other than ``learning_rate``. ``snapshot_every`` > 0
    keeps stability snapshots and rolls back on entering Mirror
    (``ulora_remote.control.snapshots``; not carried across a resume).
    """

    run_name: str
    steps: int
    lag: int = 0
    warmup_steps: int = 0
    warmup_lr: float = 5e-4
    optimizer: Mapping[str, float] = field(default_factory=dict)
    eval_every: int = 25
    eval_max_tokens: int = 24
    checkpoint_every: int = 100
    log_every: int = 25
    max_recoveries: int = 3
    result_timeout_s: float | None = None
    snapshot_every: int = 0
    snapshot_keep: int = 2


def warmup_decision(lr: float) -> Decision:
    """What sets the LR of a warm-up step: a fixed rate, no controller mode."""
    return Decision(step=-1, loss=float("nan"), e_smooth=float("nan"), phi=float("nan"),
                    mode=NO_MODE, mode_name="warmup", lr=lr, switched=False)


@dataclass(frozen=True)
class Probation:
    """An open probation: the step it began, its stability snapshot, and the policy's state and
    last trained loss then (a rollback restores all three). Saved in every checkpoint."""

    step: int
    ref: str
    policy: dict[str, Any]
    last_trained_loss: float


@dataclass
class SubmittedStep:
    """One training step in flight, from submission until its row is written.

    ``result`` is the ``forward_backward`` of the examples kept (or, for a skipped step, the
    screening ``forward`` of the whole batch, whose loss the row logs). ``optim`` is None until
    the optimizer step is submitted, and stays None for a skipped step. ``guard_lr`` replaces the
    policy's learning rate for this step (a guard's probation); ``rebase`` tells the policy
    the data changed for good; ``event`` and ``snapshot`` record what a guard made the runner do.
    """

    step: int
    shock: bool
    size: int
    kept: int
    result: Future[ForwardBackwardResult]
    optim: Future[OptimStepResult] | None = None
    guard_lr: float | None = None
    rebase: bool = False
    event: str = ""
    snapshot: str = ""
    tasks: tuple[str, ...] = ()
    corrupted: int = 0
    corrupted_rejected: int = 0

    @property
    def skipped(self) -> bool:
        return self.kept == 0

    @property
    def rejected_fraction(self) -> float:
        return 1.0 - self.kept / self.size if self.size else 0.0


class ScreenSlice:
    """The part of a screen sent for several steps that belongs to one: examples
    ``start:end`` of ``block``'s result (a ``Future`` itself)."""

    def __init__(self, block: Future[ForwardBackwardResult], start: int, end: int) -> None:
        self.block, self.start, self.end = block, start, end

    def result(self, timeout: float | None = None) -> ForwardBackwardResult:
        whole = self.block.result(timeout)
        return ForwardBackwardResult(whole.nll_sums[self.start:self.end],
                                     whole.weight_sums[self.start:self.end])


@dataclass(frozen=True, kw_only=True)
class StepRow:
    """One row of ``steps.csv``.

    ``loss``, ``e_smooth``, ``phi``: the step's training loss (nats per token over the examples
    trained on; the screened loss of a skipped step) and the controller's state after reading
    it. ``lr``, ``mode``, ``mode_name``, ``switched``, ``reason``: the decision that set this
    step's learning rate (at lag L the one made after step u − L; ``mode`` -1 and ``mode_name``
    "fixed", "plateau" or "warmup" when no controller mode set it); ``lr`` is 0 for a skipped
    step. ``kept``: examples trained on; ``skipped``: none was (no update). ``tokens``: weighted
    target tokens trained on (screened, when skipped). ``wall_s``: seconds since the run started,
    resumed runs included. ``event``: what a guard made the runner do before this step
    ("probation": a stability snapshot was saved and the new data admitted on probation;
    "rollback": that snapshot was restored; "shift": the new data was found learnable), and
    ``snapshot`` the reference of that snapshot (kept on record). ``corrupted``: examples of
    the batch that a shock corrupted (the run knows which); ``corrupted_rejected``: how many of
    them the guards rejected.

    Multi-task runs (``[adapters]``, ``ulora_remote.control.task_signals``; ``TASK_STEP_COLUMNS``,
    which steps.csv holds in such runs only, so that every other run writes the table it always
    did): ``error`` E, the mean of the tasks' losses; ``conflict`` C (loss-based) and ``conflict_w``
    C_w (the weight-space variance, local backends); ``stability`` S (forgetting, from the last
    evaluation); ``task_stress`` u, which φ includes. ``adapters``: adapters the step trained with
    (1 while shared); ``adapter_event``: "fork: <reason>" on the step that first trained per-task
    adapters.
    """

    step: int
    shock: bool
    loss: float
    e_smooth: float
    phi: float
    mode: int
    mode_name: str
    lr: float
    switched: bool
    kept: int
    skipped: bool
    tokens: float
    wall_s: float
    reason: str = ""
    event: str = ""
    snapshot: str = ""
    corrupted: int = 0
    corrupted_rejected: int = 0
    error: float = float("nan")
    conflict: float = float("nan")
    conflict_w: float = float("nan")
    stability: float = float("nan")
    task_stress: float = float("nan")
    adapters: int = 1
    adapter_event: str = ""

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The multi-task fields of ``StepRow``: steps.csv columns of a run with ``[adapters]`` only.
TASK_STEP_COLUMNS: tuple[str, ...] = ("error", "conflict", "conflict_w", "stability",
                                      "task_stress", "adapters", "adapter_event")
#: steps.csv's columns (a run without ``[adapters]``).
STEP_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StepRow)
                                      if f.name not in TASK_STEP_COLUMNS)
#: steps.csv's columns in a run with ``[adapters]``.
MULTITASK_STEP_COLUMNS: tuple[str, ...] = STEP_COLUMNS + TASK_STEP_COLUMNS
