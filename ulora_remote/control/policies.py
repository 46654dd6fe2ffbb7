"""The baseline learning-rate policies: a fixed LR and reduce-on-plateau, in pure Python.

Both are ``LrPolicy`` objects (``ulora_remote.control.policy``) beside the seed's controller. Each
keeps a ``UnifiedController`` as an *observer*: it sees every loss, so φ and Ê are logged for
every method, but it does not set the learning rate (the decision's mode is ``NO_MODE`` and its
``mode_name`` is the policy's name).

* ``FixedPolicy``: the same learning rate on every step.
* ``PlateauPolicy`` with ``PlateauRule``: PyTorch's ``ReduceLROnPlateau`` rule (mode ``min``,
  threshold mode ``rel``) applied to the training loss of every step, reimplemented without torch
  with the same semantics: a step is an improvement when ``loss < best·(1 − threshold)``; after
  more than ``patience`` steps without one the LR becomes ``max(lr·factor, min_lr)`` (a change
  smaller than ``eps`` is ignored), then ``cooldown`` steps pass in which bad steps are not
  counted.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.policy import NO_MODE, Decision, Signal
from ulora_remote.errors import ConfigurationError

__all__ = ["FixedPolicy", "PlateauPolicy", "PlateauRule"]


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
        if not (math.isfinite(lr) and lr > 0) or threshold < 0 or min_lr < 0:
            raise ConfigurationError("plateau needs a finite lr > 0, threshold ≥ 0 and min_lr ≥ 0")
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


class FixedPolicy:
    """The same learning rate on every step; ``observer`` keeps computing φ for the logs.

    Args:
        lr: the learning rate (finite, > 0).
        observer: the controller that observes every loss (its own LR is not used).

    Raises:
        ConfigurationError: ``lr`` not finite and > 0.
    """

    name = "fixed"

    def __init__(self, lr: float, observer: UnifiedController) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigurationError(f"fixed lr={lr!r}: must be a finite number > 0")
        self.lr, self.observer = float(lr), observer

    def initial_decision(self) -> Decision:
        return self._own(self.observer.initial_decision())

    def observe(self, signal: Signal) -> Decision:
        return self._own(self.observer.observe(signal))

    def _own(self, seen: Decision) -> Decision:
        return replace(seen, lr=self.lr, mode=NO_MODE, mode_name=self.name, switched=False,
                       reason="")

    def state_dict(self) -> dict[str, Any]:
        return {"observer": self.observer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observer.load_state_dict(state["observer"])


class PlateauPolicy:
    """``PlateauRule`` on the training loss; ``observer`` keeps computing φ for the logs.

    A decision that lowers the learning rate is marked ``switched`` with its reason.
    """

    name = "plateau"

    def __init__(self, rule: PlateauRule, observer: UnifiedController) -> None:
        self.rule, self.observer = rule, observer

    def initial_decision(self) -> Decision:
        seen = self.observer.initial_decision()
        return replace(seen, lr=self.rule.lr, mode=NO_MODE, mode_name=self.name)

    def observe(self, signal: Signal) -> Decision:
        seen = self.observer.observe(signal)
        before = self.rule.lr
        lr = self.rule.step(signal.loss)
        lowered = lr < before
        reason = (f"plateau: no improvement for more than {self.rule.patience} steps"
                  if lowered else "")
        return replace(seen, lr=lr, mode=NO_MODE, mode_name=self.name, switched=lowered,
                       reason=reason)

    def state_dict(self) -> dict[str, Any]:
        return {"observer": self.observer.state_dict(), "plateau": self.rule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observer.load_state_dict(state["observer"])
        self.rule.load_state_dict(state["plateau"])
