"""The seed's task signals: conflict C, multi-task error E, stability S, their rates, and the task
stress u they add to φ (docs/design.md, "φ with conflict and stability").

Pure Python, no I/O, no torch. Every quantity is defined exactly here; the runner feeds the
measurements (``ulora_remote.run.multitask``) and the controller combines u with its own drive.

E, the multi-task error of step t: the mean over the step's tasks T of L_T(t), each task's loss
(nats per weighted target token over its examples in the batch); with one task E_t = L_t exactly.

C, conflict, loss-based (every backend). For each step t and task T, x_T(t) is the relative change
of T's loss over the examples of batch t made by the update before it, read from per-example
losses: batch t is scored once before that update and trained once after it, so
``x_T(t) = (L_T^after − L_T^before) / L_T^before``. For every pair of tasks (A, B) exponentially
weighted moments with decay β_C give a correlation ρ_AB(t)::

    d_A = x_A − m_A;  m_A += (1−β_C)·d_A;  v_A = β_C·(v_A + (1−β_C)·d_A²)   (likewise B)
    c_AB = β_C·(c_AB + (1−β_C)·d_A·d_B);   ρ_AB = c_AB / √(v_A·v_B)
    C_t = mean over pairs of max(0, −ρ_AB(t) − δ),   δ = 2·√((1−β_C)/(1+β_C))

(the means start at a pair's first sample; a pair counts once it was seen in ``warmup``
steps, before that ρ_AB = 0). C > 0 means: the updates that lower one task's loss raise
another's. δ is two standard errors of a correlation over the window's effective (1+β_C)/(1−β_C)
samples (0.20 at β_C = 0.98): uncorrelated tasks give C = 0 but for chance. Only tasks that train
one adapter can interfere: once each task has its own adapter (after a fork) C = C_w = 0 and the
moments start over.

C_w, the seed's weight-space variance (local backends only): the backend's per-step variance of
the tasks' gradients V_t ∈ [0, 1] (``ForwardBackwardResult.gradient_variance``; 1/2 for
orthogonal pulls, 1 for cancelling ones), smoothed V̄_t = β_C·V̄_{t−1} + (1−β_C)·V_t (V̄ starts at
1/2), and C_w = max(0, 2·V̄_t − 1). ``conflict = "weights"`` feeds C_w to φ instead of C.

S, stability, at every clean evaluation k: with EM_T(k) each task's exact match and B_T(k) its
best so far, S_k = mean_T (B_T(k) − EM_T(k)) in [0, 1] (forgetting: how far the tasks fell from
their best); S holds between evaluations.

Rates: ΔC_t = C_t − C_{t−1} (per step), ΔS_k = S_k − S_{k'} (per evaluation; k' the previous
one), ΔE is the controller's derivative reaction (its ``derivative_gain`` on its drive).

The task stress, with σ(x) = x/(1+x)::

    c_t = σ(κ_C·C_t + κ_ΔC·max(0, ΔC_t))
    s_t = σ(κ_S·S_t + κ_ΔS·max(0, ΔS_t))
    u_t = 1 − (1 − c_t)(1 − s_t)

The controller then uses D_t = d_t + (1 − d_t)·u_t in place of its drive d_t (seed's form plus
derivative reaction), so u = 0 (one task, C = S = 0) leaves φ exactly the seed's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Literal

from ulora_remote.errors import ConfigurationError

__all__ = [
    "ConflictMeter",
    "StabilityMeter",
    "TaskSignals",
    "TaskSignalsConfig",
    "task_error",
    "task_stress",
]


@dataclass(frozen=True, kw_only=True)
class TaskSignalsConfig:
    """The parameters of C, S and u (module docstring). Gains ≥ 0; ``window`` = β_C in (0, 1);
    ``warmup`` ≥ 1 steps before a pair's correlation counts."""

    window: float = 0.98
    warmup: int = 10
    conflict_gain: float = 3.0
    conflict_rate_gain: float = 0.0
    stability_gain: float = 1.0
    stability_rate_gain: float = 0.0
    conflict: Literal["loss", "weights"] = "loss"

    def __post_init__(self) -> None:
        if not 0.0 < self.window < 1.0:
            raise ConfigurationError(f"window={self.window!r}: the decay β_C must lie in (0, 1)")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ConfigurationError(f"warmup={self.warmup!r}: must be an integer ≥ 1 (steps)")
        for name in ("conflict_gain", "conflict_rate_gain", "stability_gain",
                     "stability_rate_gain"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"{name}={value!r}: a gain must be finite and ≥ 0")
        if self.conflict not in ("loss", "weights"):
            raise ConfigurationError(f"conflict={self.conflict!r}: choose 'loss' or 'weights'")


def _squash(x: float) -> float:
    return x / (1.0 + x)


def task_stress(cfg: TaskSignalsConfig, *, conflict: float, conflict_rate: float,
                stability: float, stability_rate: float) -> float:
    """u = 1 − (1 − c)(1 − s) of the module docstring, in [0, 1)."""
    c = _squash(cfg.conflict_gain * conflict + cfg.conflict_rate_gain * max(0.0, conflict_rate))
    s = _squash(cfg.stability_gain * stability
                + cfg.stability_rate_gain * max(0.0, stability_rate))
    return c + s - c * s


def task_error(losses: Mapping[str, tuple[float, float]]) -> float:
    """E: the mean over tasks of Σ nll / Σ weight, from ``{task: (nll_sum, weight_sum)}``;
    NaN when no task has weight."""
    means = [nll / w for nll, w in losses.values() if w > 0]
    if not means:
        return math.nan
    return means[0] if len(means) == 1 else sum(means) / len(means)


@dataclass
class _Pair:
    n: int = 0
    m_a: float = 0.0
    m_b: float = 0.0
    v_a: float = 0.0
    v_b: float = 0.0
    c_ab: float = 0.0


@dataclass
class ConflictMeter:
    """C from the tasks' relative loss changes (module docstring), and C_w from V_t."""

    window: float
    warmup: int
    pairs: dict[str, _Pair] = field(default_factory=dict)
    variance: float = 0.5

    def observe(self, changes: Mapping[str, float], gradient_variance: float | None, *,
                shared: bool = True) -> None:
        """Feed one step: ``{task: x_T}`` (finite values only count) and V_t (or None);
        ``shared``: whether the tasks trained one adapter (else everything starts over)."""
        if not shared:
            self.pairs.clear()
            self.variance = 0.5
            return
        if gradient_variance is not None and math.isfinite(gradient_variance):
            self.variance = self.window * self.variance + (1 - self.window) * gradient_variance
        seen = {t: x for t, x in changes.items() if math.isfinite(x)}
        for a, b in combinations(sorted(seen), 2):
            self._update(self.pairs.setdefault(f"{a}\t{b}", _Pair()), seen[a], seen[b])

    def _update(self, p: _Pair, x_a: float, x_b: float) -> None:
        beta = self.window
        d_a, d_b = x_a - p.m_a, x_b - p.m_b
        if p.n == 0:  # the first sample sets the means
            p.m_a, p.m_b, p.n = x_a, x_b, 1
            return
        p.m_a += (1 - beta) * d_a
        p.m_b += (1 - beta) * d_b
        p.v_a = beta * (p.v_a + (1 - beta) * d_a * d_a)
        p.v_b = beta * (p.v_b + (1 - beta) * d_b * d_b)
        p.c_ab = beta * (p.c_ab + (1 - beta) * d_a * d_b)
        p.n += 1

    def correlation(self, p: _Pair) -> float:
        if p.n < self.warmup or p.v_a <= 0 or p.v_b <= 0:
            return 0.0
        return max(-1.0, min(1.0, p.c_ab / math.sqrt(p.v_a * p.v_b)))

    @property
    def dead_zone(self) -> float:
        """δ = 2·√((1−β_C)/(1+β_C))."""
        return 2.0 * math.sqrt((1.0 - self.window) / (1.0 + self.window))

    @property
    def conflict(self) -> float:
        """C_t: the mean over pairs of max(0, −ρ − δ); 0 with fewer than two tasks."""
        if not self.pairs:
            return 0.0
        zone = self.dead_zone
        return sum(max(0.0, -self.correlation(p) - zone)
                   for p in self.pairs.values()) / len(self.pairs)

    @property
    def weight_conflict(self) -> float:
        """C_w = max(0, 2·V̄ − 1)."""
        return max(0.0, 2.0 * self.variance - 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": {k: asdict(p) for k, p in self.pairs.items()},
                "variance": self.variance}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pairs = {k: _Pair(**p) for k, p in state["pairs"].items()}
        self.variance = float(state["variance"])


@dataclass
class StabilityMeter:
    """S and ΔS from each task's exact match at the clean evaluations (module docstring)."""

    best: dict[str, float] = field(default_factory=dict)
    value: float = 0.0
    rate: float = 0.0

    def observe(self, exact_match: Mapping[str, float]) -> None:
        """Feed one evaluation: ``{task: exact match}`` (NaN values are left out)."""
        drops = []
        for task, em in exact_match.items():
            if not math.isfinite(em):
                continue
            self.best[task] = max(em, self.best.get(task, em))
            drops.append(self.best[task] - em)
        previous = self.value
        self.value = sum(drops) / len(drops) if drops else 0.0
        self.rate = self.value - previous

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = {str(k): float(v) for k, v in state["best"].items()}
        self.value, self.rate = float(state["value"]), float(state["rate"])


class TaskSignals:
    """C, S, their rates and u, updated step by step (E is ``task_error`` of each step)."""

    def __init__(self, config: TaskSignalsConfig | None = None) -> None:
        self.config = config or TaskSignalsConfig()
        self.conflicts = ConflictMeter(self.config.window, self.config.warmup)
        self.stability = StabilityMeter()
        self.conflict = 0.0
        self.conflict_rate = 0.0

    def observe_step(self, changes: Mapping[str, float], gradient_variance: float | None,
                     *, shared: bool = True) -> float:
        """Feed one step's x_T and V_t (``shared``: the tasks trained one adapter); return u_t."""
        self.conflicts.observe(changes, gradient_variance, shared=shared)
        current = (self.conflicts.conflict if self.config.conflict == "loss"
                   else self.conflicts.weight_conflict)
        self.conflict_rate, self.conflict = current - self.conflict, current
        return self.stress

    def observe_eval(self, exact_match: Mapping[str, float]) -> None:
        self.stability.observe(exact_match)

    @property
    def stress(self) -> float:
        """u with the current C, ΔC, S, ΔS."""
        return task_stress(self.config, conflict=self.conflict, conflict_rate=self.conflict_rate,
                           stability=self.stability.value, stability_rate=self.stability.rate)

    def state_dict(self) -> dict[str, Any]:
        return {"conflicts": self.conflicts.state_dict(), "stability": self.stability.state_dict(),
                "conflict": self.conflict, "conflict_rate": self.conflict_rate}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.conflicts.load_state_dict(state["conflicts"])
        self.stability.load_state_dict(state["stability"])
        self.conflict = float(state["conflict"])
        self.conflict_rate = float(state["conflict_rate"])
