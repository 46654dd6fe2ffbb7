"""When a multi-task run gives its tasks their own adapters, and the ``[adapters]`` section
(docs/design.md, "Per-task adapters").

Modes (``[adapters] mode``):

* ``"shared"``: one adapter for every task, always (the seed's Single);
* ``"separate"``: one adapter per task from step 0, each a copy of the initial shared adapter;
* ``"switch"``: start shared; fork one adapter per task, each a copy of the shared adapter at
  that moment, once φ has stayed in the Multi band θ0 ≤ φ < θ1 with the conflict C > 0 for
  ``patience`` consecutive steps (the seed's "task-specific adapters for moderate stress", when
  the tasks' conflict is among its causes: per-task adapters cure conflict, not noisy data or
  forgetting; ``require_conflict = false`` drops that condition). A shock that drives φ through
  Multi into Mirror passes the band in a few steps and forks nothing.

Why C > 0 is required: in the issue-15 study without it, φ's error and stability terms alone kept
4 of 5 runs of the helping scenario in Multi for 30 steps late in training, and they forked,
while C stayed 0 in every one of them; with it, the conflict scenario forks at the same steps and
the helping one never (benchmarks/RESULTS.md, "Per-task adapters").

A fork is never undone: the per-task adapters are not merged back into one, because averaging
LoRA factors is not averaging their updates (B·A is bilinear) and Tinker cannot write weights.
Leaving Multi changes the learning rate only. A rollback to a checkpoint or snapshot made before
the fork restores the shared adapter alone; a decided fork is then made again at the next step.

Every switch is logged with its reason (the step row's ``adapter_event``, and the console).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ulora_remote.control.task_signals import TaskSignalsConfig
from ulora_remote.sections import STRICT

__all__ = ["AdapterMode", "AdapterSwitch", "AdaptersSection"]

AdapterMode = Literal["shared", "separate", "switch"]


@dataclass
class AdapterSwitch:
    """Decides the fork from the φ of each step (pure; state JSON-able).

    Args:
        mode: see the module docstring.
        patience: consecutive steps in the Multi band (with C > 0) before a ``"switch"`` run
            forks.
        theta0, theta1: the controller's thresholds (the Multi band).
        require_conflict: count only steps whose conflict C is above 0.
    """

    mode: AdapterMode
    patience: int
    theta0: float
    theta1: float
    require_conflict: bool = True
    streak: int = 0
    decided_step: int | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode == "separate" and self.decided_step is None:
            self.decided_step = -1
            self.reason = "adapters.mode = separate: one adapter per task from the start"

    @property
    def forked(self) -> bool:
        """Whether the run trains per-task adapters (decided, whether or not applied yet)."""
        return self.decided_step is not None

    def observe(self, step: int, phi: float, conflict: float) -> str | None:
        """Feed φ and C after step ``step``; return the reason when this observation decides
        the fork."""
        if self.mode != "switch" or self.forked:
            return None
        counts = self.theta0 <= phi < self.theta1 and (conflict > 0 or not self.require_conflict)
        self.streak = self.streak + 1 if counts else 0
        if self.streak < self.patience:
            return None
        self.decided_step = step
        with_c = f" with conflict C > 0 (now {conflict:.3f})" if self.require_conflict else ""
        self.reason = (f"phi {phi:.3f} in Multi [{self.theta0:g}, {self.theta1:g}){with_c} for "
                       f"{self.patience} steps")
        return self.reason

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = int(state["streak"])
        decided = state["decided_step"]
        self.decided_step = None if decided is None else int(decided)
        self.reason = str(state["reason"])


_SIGNALS = TaskSignalsConfig()  # the defaults, written once (control/task_signals.py)


class AdaptersSection(BaseModel):
    """``[adapters]``: per-task adapters and the task signals in φ, for a multi-task stream.

    ``mode``: ``"shared"``, ``"separate"`` or ``"switch"`` (module docstring); ``patience``: steps
    in Multi before a switch; ``require_conflict``: only steps with C > 0 count. The rest are
    ``TaskSignalsConfig`` fields, with its defaults (``ulora_remote.control.task_signals``):
    ``window`` β_C, ``warmup``, the gains κ_C, κ_ΔC, κ_S, κ_ΔS and ``conflict`` ("loss", every
    backend; "weights", local only).
    """

    model_config = STRICT
    mode: AdapterMode = "switch"
    patience: int = Field(default=30, ge=1, le=1_000_000)
    require_conflict: bool = True
    window: float = Field(default=_SIGNALS.window, gt=0.0, lt=1.0)
    warmup: int = Field(default=_SIGNALS.warmup, ge=1, le=1_000_000)
    conflict_gain: float = Field(default=_SIGNALS.conflict_gain, ge=0.0, le=1e6)
    conflict_rate_gain: float = Field(default=_SIGNALS.conflict_rate_gain, ge=0.0, le=1e6)
    stability_gain: float = Field(default=_SIGNALS.stability_gain, ge=0.0, le=1e6)
    stability_rate_gain: float = Field(default=_SIGNALS.stability_rate_gain, ge=0.0, le=1e6)
    conflict: Literal["loss", "weights"] = _SIGNALS.conflict

    def signals_config(self) -> TaskSignalsConfig:
        return TaskSignalsConfig(**self.model_dump(exclude={"mode", "patience",
                                                            "require_conflict"}))

    def build_switch(self, theta0: float, theta1: float) -> AdapterSwitch:
        return AdapterSwitch(self.mode, self.patience, theta0, theta1, self.require_conflict)
