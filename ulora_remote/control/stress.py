"""A scale-free stress signal: a shock is a jump relative to the run's own loss level.

The default controller's stress D = Ê/(1+Ê) reads the *absolute* loss, so a run that starts at a
high loss (a fresh adapter on a new task) sits in Mirror for hundreds of steps, shock or not, and
the same loss jump means a different D at different levels. Here the stress is a ratio::

    fast_t = β_f·fast_{t-1} + (1-β_f)·L_t
    slow_t = b·slow_{t-1} + (1-b)·min(L_t, c·slow_{t-1}),   b = β_f if L_t < slow_{t-1} else β_s
    r_t    = fast_t / slow_t
    D_t    = g·max(0, r_t − 1) / (1 + g·max(0, r_t − 1))        in [0, 1)

Both averages start at the first loss, so a high starting loss gives r = 1 and D = 0; falling
loss gives r ≤ 1, D = 0. The slow average is a level, not a plain mean: it follows the loss *down*
as fast as the fast average (so after quick progress a shock is measured against where the run
is now, not where it was a hundred steps ago) and *up* only slowly, with its input clipped at c
times its value, so that a shock lasting many steps does not quickly become the new normal (with
β_s = 0.99 and c = 1.5 it rises at most ~0.5% a step); a lasting shift is still absorbed after a
few hundred steps. Batch noise keeps the level a little below the mean, so at rest D is small but
not zero (about 0.1 for ±30% batch-to-batch noise at gain 1).

A ``UnifiedController`` built with ``stress=RatioStress(...)`` uses D in place of Ê/(1+Ê), so the
mode machine (thresholds, cooldown, Mirror-lock, derivative reaction) is the same one; Ê is still
the EMA of the raw loss and is logged as usual.

``Stress`` is the contract such an object fulfils.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ulora_remote.errors import ConfigurationError

__all__ = ["RatioStress", "RatioStressConfig", "Stress"]

_TINY = 1e-12


@runtime_checkable
class Stress(Protocol):
    """Turns each step's loss into the controller's stress term D_t in [0, 1]; pure, no I/O.

    ``update`` is called once per step in step order with a loss ≥ 0 (nats), or a non-finite
    one, which must give 1.0 (the strongest stress) without poisoning the object's state.
    ``rebase`` forgets the history: the loss level from now on is the new normal.
    """

    def update(self, loss: float) -> float:
        ...

    def rebase(self) -> None:
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@dataclass(frozen=True, kw_only=True)
class RatioStressConfig:
    """``fast_beta`` < ``slow_beta`` in (0, 1); ``gain`` > 0; ``slow_clip`` ≥ 1 (see module)."""

    fast_beta: float = 0.9
    slow_beta: float = 0.99
    gain: float = 1.0
    slow_clip: float = 1.5

    def __post_init__(self) -> None:
        if not 0.0 < self.fast_beta < self.slow_beta < 1.0:
            raise ConfigurationError(
                f"ratio stress needs 0 < fast_beta ({self.fast_beta}) < slow_beta "
                f"({self.slow_beta}) < 1: the fast average must react sooner than the slow one"
            )
        if not self.gain > 0 or not self.slow_clip >= 1.0:
            raise ConfigurationError(
                f"ratio stress gain={self.gain} must be > 0 and slow_clip={self.slow_clip} ≥ 1"
            )


class RatioStress:
    """The scale-free stress D_t of the module docstring; non-finite losses give D = 1."""

    def __init__(self, config: RatioStressConfig | None = None) -> None:
        self.config = config or RatioStressConfig()
        self.fast: float | None = None
        self.slow: float | None = None

    @property
    def ratio(self) -> float:
        if self.fast is None or self.slow is None:
            return 1.0
        return (self.fast + _TINY) / (self.slow + _TINY)

    def update(self, loss: float) -> float:
        """Feed one loss (≥ 0); return D_t in [0, 1)."""
        loss = float(loss)
        if not math.isfinite(loss):
            return 1.0  # the strongest stress; the averages are not poisoned
        cfg = self.config
        if self.fast is None or self.slow is None:
            self.fast = self.slow = loss
        else:
            self.fast = cfg.fast_beta * self.fast + (1 - cfg.fast_beta) * loss
            clipped = min(loss, cfg.slow_clip * self.slow) if self.slow > 0 else loss
            beta = cfg.fast_beta if loss < self.slow else cfg.slow_beta  # down fast, up slowly
            self.slow = beta * self.slow + (1 - beta) * clipped
        excess = cfg.gain * max(0.0, self.ratio - 1.0)
        return excess / (1.0 + excess)

    def rebase(self) -> None:
        """Forget both averages: the next loss starts them again (ratio 1, no stress)."""
        self.fast = self.slow = None

    def state_dict(self) -> dict[str, Any]:
        return {"fast": self.fast, "slow": self.slow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fast, self.slow = state["fast"], state["slow"]
