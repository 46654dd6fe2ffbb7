"""Baseline learning-rate policies and the Mirror stability snapshot, in pure Python.

Three pieces the runner can use beside (or instead of) the controller's own learning rate:

* ``PlateauRule``: PyTorch's ``ReduceLROnPlateau`` rule (mode ``min``, threshold mode ``rel``)
  applied to the training loss of every step, reimplemented without torch with the same
  semantics: a step is an improvement when ``loss < best·(1 − threshold)``; after more than
  ``patience`` steps without one the LR becomes ``max(lr·factor, min_lr)`` (a change smaller than
  ``eps`` is ignored), then ``cooldown`` steps pass in which bad steps are not counted.
* ``ZScoreScreen``: the loss-spike skip of OLMo-core and llm.c. Each batch is screened with a
  gradient-free ``forward`` first; when its loss is more than ``z`` standard deviations above the
  mean of a window of recent *accepted* losses, its ``forward_backward`` and ``optim_step`` are
  skipped. Skipped losses never enter the window, so a long shock stays screened.
* ``SnapshotKeeper``: DESIGN.md §4's stability snapshots. While the controller is in Single or
  Multi the runner saves ``backend.save_state`` every ``every`` steps, keeping the last ``keep``;
  on a switch into Mirror it restores the *oldest* kept one, which predates the detection by at
  least ``every`` steps (detection lags a shock's start, so the newest snapshot may be damaged).

``PolicyController`` puts a rule or a screen around a ``UnifiedController`` so that the runner
sees one object: φ, Ê and the mode are still computed and logged, only the LR is the policy's.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from ulora_remote.control.controller import ControllerConfig, Decision, UnifiedController
from ulora_remote.errors import ConfigurationError

__all__ = ["PlateauRule", "PolicyController", "SnapshotKeeper", "ZScoreScreen", "build_policy"]


class PlateauRule:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", threshold_mode="rel")`` on floats.

    Args:
        lr: the starting learning rate.
        factor: multiplier of a reduction, in (0, 1).
        patience: bad steps tolerated; the LR drops on bad step ``patience + 1``.
        threshold: relative improvement needed to count as better (≥ 0).
        cooldown: steps after a reduction during which bad steps are not counted.
        min_lr: the LR never goes below this.
        eps: a reduction smaller than this is not applied (PyTorch's ``eps``).

    Raises:
        ConfigurationError: a value outside the ranges above.
    """

    def __init__(self, lr: float, *, factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8) -> None:
        if not 0.0 < factor < 1.0:
            raise ConfigurationError(f"plateau factor={factor}: must lie in (0, 1)")
        if patience < 0 or cooldown < 0:
            raise ConfigurationError("plateau patience and cooldown must be integers ≥ 0")
        if threshold < 0 or min_lr < 0 or lr <= 0:
            raise ConfigurationError("plateau needs lr > 0, threshold ≥ 0 and min_lr ≥ 0")
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.lr = float(lr)
        self.best = math.inf
        self.num_bad = 0
        self.cooldown_counter = 0

    def step(self, loss: float) -> float:
        """Observe one loss; return the learning rate to use from now on."""
        current = float(loss)
        if current < self.best * (1.0 - self.threshold):  # NaN compares False: a bad step
            self.best, self.num_bad = current, 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0  # bad steps during cooldown are ignored, as in PyTorch
        if self.num_bad > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter, self.num_bad = self.cooldown, 0
        return self.lr

    def state_dict(self) -> dict[str, float | int]:
        return {"lr": self.lr, "best": self.best, "num_bad": self.num_bad,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best = float(state["lr"]), float(state["best"])
        self.num_bad, self.cooldown_counter = int(state["num_bad"]), int(state["cooldown_counter"])


class ZScoreScreen:
    """Skip a batch whose screened loss is more than ``z`` σ above recent accepted losses.

    Args:
        z: the threshold in standard deviations (> 0).
        window: how many recent accepted losses form the reference (≥ 2).
        min_history: no skipping until this many losses were accepted (≥ 2, ≤ window).

    A non-finite loss is always skipped. σ is the sample standard deviation of the window.
    """

    def __init__(self, *, z: float = 3.0, window: int = 50, min_history: int = 20) -> None:
        if not z > 0:
            raise ConfigurationError(f"zskip z={z}: must be > 0")
        if not 2 <= min_history <= window:
            raise ConfigurationError(
                f"zskip min_history={min_history}, window={window}: need 2 ≤ min_history ≤ window"
            )
        self.z, self.window, self.min_history = z, window, min_history
        self._accepted: deque[float] = deque(maxlen=window)
        self.skipped = 0

    def threshold(self) -> float:
        """The loss above which the next batch is skipped (inf while the history is short)."""
        n = len(self._accepted)
        if n < self.min_history:
            return math.inf
        mean = sum(self._accepted) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in self._accepted) / (n - 1))
        return mean + self.z * sd

    def screen(self, loss: float) -> bool:
        """Judge one screened loss; True means skip it (it is then not added to the window)."""
        loss = float(loss)
        if not math.isfinite(loss) or loss > self.threshold():
            self.skipped += 1
            return True
        self._accepted.append(loss)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"accepted": list(self._accepted), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._accepted = deque((float(x) for x in state["accepted"]), maxlen=self.window)
        self.skipped = int(state["skipped"])


class PolicyController:
    """A ``UnifiedController`` whose learning rate comes from a baseline policy.

    The inner controller sees every loss, so φ, Ê and the mode are logged as for any run; the
    decision's ``lr`` is replaced by ``rule.step(loss)`` (plateau) or ``fixed_lr``.

    Args:
        inner: the controller that keeps computing φ.
        fixed_lr: the constant LR when there is no rule.
        rule: a ``PlateauRule`` (its starting LR is the first step's).
        screen: a ``ZScoreScreen`` the runner consults before each ``forward_backward``.

    Raises:
        ConfigurationError: neither or both of ``fixed_lr`` and ``rule``.
    """

    def __init__(self, inner: UnifiedController, *, fixed_lr: float | None = None,
                 rule: PlateauRule | None = None, screen: ZScoreScreen | None = None) -> None:
        if (fixed_lr is None) == (rule is None):
            raise ConfigurationError("a policy needs exactly one of fixed_lr or a plateau rule")
        self.inner, self.fixed_lr, self.rule, self.screener = inner, fixed_lr, rule, screen

    @property
    def config(self) -> ControllerConfig:
        return self.inner.config

    @property
    def mode(self) -> int:
        return self.inner.mode

    @property
    def initial_lr(self) -> float:
        """The LR of steps decided before any loss was read (lag > 0)."""
        return self.rule.lr if self.rule is not None else float(self.fixed_lr or 0.0)

    def decide(self, loss: float, external_stress: float | None = None) -> Decision:
        decision = self.inner.decide(loss, external_stress)
        lr = self.rule.step(loss) if self.rule is not None else float(self.fixed_lr or 0.0)
        return replace(decision, lr=lr)

    def screen(self, loss: float) -> bool:
        """True when the batch with this screened loss must be skipped (never without a screen)."""
        return self.screener.screen(loss) if self.screener is not None else False

    @property
    def screens(self) -> bool:
        return self.screener is not None

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.inner.state_dict(),
            "plateau": self.rule.state_dict() if self.rule is not None else None,
            "screen": self.screener.state_dict() if self.screener is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["controller"])
        if self.rule is not None:
            self.rule.load_state_dict(state["plateau"])
        if self.screener is not None:
            self.screener.load_state_dict(state["screen"])


@dataclass
class SnapshotKeeper:
    """Which stability snapshots exist and whether a rollback is due (the runner does the I/O).

    ``observe`` every decision; at a step boundary ``due(step)`` says to save a snapshot and
    ``take_rollback()`` returns the reference to restore, once per entry into Mirror.
    """

    every: int
    keep: int = 2
    mode: int = 1
    pending: bool = False
    rollbacks: int = 0

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep < 1:
            raise ConfigurationError(
                f"snapshot_every={self.every}, snapshot_keep={self.keep}: both must be ≥ 1"
            )
        self._snaps: deque[tuple[int, str]] = deque(maxlen=self.keep)

    def observe(self, decision: Decision) -> None:
        """Track the mode; a switch into Mirror asks for a rollback."""
        self.mode = decision.mode
        if decision.switched and decision.mode == 2:
            self.pending = True

    def due(self, step: int) -> bool:
        """A snapshot is due at step boundary ``step`` (a multiple of ``every``, while stable)."""
        return step % self.every == 0 and self.mode != 2 and not self.pending

    def add(self, step: int, ref: str) -> None:
        self._snaps.append((step, ref))

    def take_rollback(self) -> tuple[int, str] | None:
        """The (step, ref) to restore, or None without a snapshot; clears the request.

        Newer snapshots are dropped: they may hold the damage the rollback undoes.
        """
        self.pending = False
        if not self._snaps:
            return None
        target = self._snaps[0]
        self._snaps.clear()
        self._snaps.append(target)
        self.rollbacks += 1
        return target


def build_policy(section: Any, inner: UnifiedController) -> Any:
    """The object the runner drives for a scenario's ``[controller]`` section.

    Args:
        section: the validated ``ControllerSection`` (``method``, ``stress``, ``fixed_lr``,
            ``policy``).
        inner: the controller built from the preset and overrides.

    Returns:
        ``inner`` itself (method "controller" or "fixed", stress "ema"), a
        ``ScaleFreeController`` (stress "ratio"), or a ``PolicyController`` (plateau, zskip).

    Raises:
        ConfigurationError: an unknown method, or stress "ratio" with a baseline method.
    """
    from ulora_remote.control.stress import RatioStressConfig, ScaleFreeController

    p, method = section.policy, section.method
    if section.stress == "ratio":
        if method != "controller":
            raise ConfigurationError(
                f'controller.stress = "ratio" drives the controller\'s LR, but method = '
                f'"{method}"; set controller.method = "controller" or controller.stress = "ema"'
            )
        ratio = RatioStressConfig(fast_beta=p.ratio_fast_beta, slow_beta=p.ratio_slow_beta,
                                  gain=p.ratio_gain, slow_clip=p.ratio_slow_clip)
        return ScaleFreeController(inner.config, ratio)
    if method in ("controller", "fixed"):
        return inner  # "fixed" is applied by the runner's RunSettings.fixed_lr
    if method == "plateau":
        rule = PlateauRule(section.fixed_lr, factor=p.plateau_factor,
                           patience=p.plateau_patience, threshold=p.plateau_threshold,
                           cooldown=p.plateau_cooldown, min_lr=p.plateau_min_lr)
        return PolicyController(inner, rule=rule)
    if method == "zskip":
        screen = ZScoreScreen(z=p.zskip_z, window=p.zskip_window,
                              min_history=min(p.zskip_min_history, p.zskip_window))
        return PolicyController(inner, fixed_lr=section.fixed_lr, screen=screen)
    raise ConfigurationError(
        f"controller.method = {method!r}: choose controller, fixed, plateau or zskip"
    )
