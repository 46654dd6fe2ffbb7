"""Recovery metrics of a shock window (docs/design.md, "Recovery metrics"); the statistics that
compare runs are in ``ulora_remote.study.stats``.

Pure Python; no torch, no numpy, no scipy. Inputs are the clean evaluation series of one run:
``steps`` (strictly increasing), ``eval_loss`` (nats per token) and ``exact_match`` (0..1).

An evaluation at step k scores the model after k updates, before the update of step k (the
runner's convention), so for a shock window ``[s, e)``:

* pre-shock evaluations are those at steps ``<= s`` (the one at s has not seen the shock); the
  pre-shock level ``L̄`` is the mean loss of the last ``W`` of them, ``EM̄`` their mean accuracy;
* post-shock evaluations are those at steps in ``(s, h]``, the horizon ``h = min(e + H, the next
  window's start, run_end)``; the eval at the next window's start still precedes that shock;
* the tolerance is ``ε = eps_rel·L̄ + eps_abs``.

Metrics per window:

* ``peak_damage``: max loss over ``(s, h]`` minus ``L̄`` (nats; negative when the loss never
  rose above the pre-shock level, e.g. early in training while it still falls fast);
* ``time_to_recover_steps``: ``t_r − e`` for the first evaluation ``t_r ≥ e`` that starts ``m``
  consecutive evaluations within ``L̄ + ε`` (all inside ``[e, h]``); if there is none, the value
  is censored at ``h − e`` and ``recovered`` is False;
* ``overshoot``: the largest excess over ``L̄ + ε`` at or after ``t_r`` (0 if none; NaN when not
  recovered, since there is no "after recovery");
* ``excess_area``: ``Σ max(0, L(t) − L̄)`` over the evaluations in ``(s, h]``, in
  **nats × evaluations** (multiply by ``eval.every`` for nats × steps on a regular cadence);
* ``forgetting``: ``EM̄`` minus the lowest exact match over ``(s, h]``.

``pre_evals`` says how many evaluations ``L̄`` averages: fewer than ``W`` when the run
evaluated fewer times before the shock, and then ``L̄`` can be the loss of a model that was
still learning fast (``ulora_remote.run.summary.summary_warnings`` says so on the console).
Without an evaluation at or before s, every metric that needs ``L̄`` is NaN. A NaN evaluation
loss (a diverged model) counts as +inf: the worst possible value, never silently skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ulora_remote.errors import InputError

__all__ = [
    "RecoveryParams",
    "RunMetrics",
    "WindowMetrics",
    "recovery_metrics",
    "recovery_metrics_from_frame",
    "window_metrics",
]

NAN = math.nan


@dataclass(frozen=True, kw_only=True)
class RecoveryParams:
    """Parameters of the recovery metrics.

    Attributes:
        pre_evals: W, evaluations averaged for the pre-shock level.
        horizon_steps: H, steps after the window's end that are still scored.
        eps_rel: relative part of the tolerance ε = eps_rel·L̄ + eps_abs.
        eps_abs: absolute part of the tolerance, nats.
        consecutive: m, evaluations in a row within tolerance that count as recovered.
    """

    pre_evals: int = 3
    horizon_steps: int = 200
    eps_rel: float = 0.1
    eps_abs: float = 0.02
    consecutive: int = 2

    def __post_init__(self) -> None:
        for name in ("pre_evals", "consecutive"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}: needs at least 1 evaluation")
        if self.horizon_steps < 0 or self.eps_rel < 0 or self.eps_abs < 0:
            raise InputError("horizon_steps, eps_rel and eps_abs must be >= 0")


@dataclass(frozen=True)
class WindowMetrics:
    """The recovery metrics of one shock window ``[start, end)``; see the module docstring."""

    start: int
    end: int
    horizon_end: int
    pre_loss: float
    pre_exact_match: float
    pre_evals: int
    tolerance: float
    peak_loss: float
    peak_damage: float
    recovered: bool
    recover_step: int | None
    time_to_recover_steps: float
    overshoot: float
    excess_area: float
    min_exact_match: float
    forgetting: float


@dataclass(frozen=True)
class RunMetrics:
    """Every window's metrics and the run's final clean loss and accuracy."""

    windows: tuple[WindowMetrics, ...]
    final_step: int
    final_loss: float
    final_exact_match: float
    params: RecoveryParams

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``summary.json``): floats stay floats, NaN included."""
        return {
            "windows": [asdict(w) for w in self.windows],
            "final": {
                "step": self.final_step,
                "eval_loss": self.final_loss,
                "exact_match": self.final_exact_match,
            },
            "params": asdict(self.params),
            "units": {"excess_area": "nats x evaluations", "time_to_recover_steps": "steps"},
        }


def recovery_metrics(
    steps: Sequence[int],
    eval_loss: Sequence[float],
    exact_match: Sequence[float],
    windows: Iterable[Sequence[int]],
    *,
    run_end: int | None = None,
    params: RecoveryParams | None = None,
) -> RunMetrics:
    """The recovery metrics of every shock window, and the final loss and accuracy.

    Args:
        steps: evaluation steps, strictly increasing.
        eval_loss: clean evaluation loss at each step (nats per token).
        exact_match: exact-match accuracy at each step, in [0, 1].
        windows: shock windows ``[start, end)`` in steps, any order.
        run_end: the run's last step (its step count); default the last evaluation step.
        params: W, H, ε and m; default ``RecoveryParams()``.

    Raises:
        InputError: no evaluations, series of different lengths, or steps not increasing.
    """
    params = params or RecoveryParams()
    series = _Series.of(steps, eval_loss, exact_match)
    end_of_run = series.steps[-1] if run_end is None else run_end
    ordered = sorted((int(w[0]), int(w[1])) for w in windows)
    results = []
    for i, (start, end) in enumerate(ordered):
        next_start = ordered[i + 1][0] if i + 1 < len(ordered) else None
        limit = min(
            x for x in (end + params.horizon_steps, next_start, end_of_run) if x is not None
        )
        results.append(window_metrics(series, start, end, horizon_end=limit, params=params))
    return RunMetrics(
        windows=tuple(results),
        final_step=series.steps[-1],
        final_loss=series.loss[-1],
        final_exact_match=series.exact_match[-1],
        params=params,
    )


def recovery_metrics_from_frame(
    evals: Any, windows: Iterable[Sequence[int]], **kwargs: Any
) -> RunMetrics:
    """``recovery_metrics`` on a pandas DataFrame shaped like ``evals.csv``
    (columns ``step``, ``eval_loss``, ``exact_match``); keywords as ``recovery_metrics``."""
    return recovery_metrics(
        [int(s) for s in evals["step"].tolist()],
        evals["eval_loss"].tolist(),
        evals["exact_match"].tolist(),
        windows,
        **kwargs,
    )


@dataclass(frozen=True)
class _Series:
    steps: tuple[int, ...]
    loss: tuple[float, ...]
    exact_match: tuple[float, ...]

    @classmethod
    def of(cls, steps: Sequence[int], loss: Sequence[float], em: Sequence[float]) -> _Series:
        if not steps or not len(steps) == len(loss) == len(em):
            raise InputError(
                f"evaluation series need equal, non-zero lengths (got {len(steps)} steps, "
                f"{len(loss)} losses, {len(em)} exact-match values)"
            )
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise InputError("evaluation steps must be strictly increasing")
        # A diverged evaluation (NaN) is the worst loss there is, not a gap to skip.
        worst = tuple(math.inf if math.isnan(x) else float(x) for x in loss)
        return cls(tuple(int(s) for s in steps), worst, tuple(float(x) for x in em))

    def between(self, low: int, high: int, *, include_low: bool) -> list[int]:
        return [
            i
            for i, t in enumerate(self.steps)
            if (low <= t if include_low else low < t) and t <= high
        ]


def window_metrics(
    series: _Series, start: int, end: int, *, horizon_end: int, params: RecoveryParams
) -> WindowMetrics:
    """The metrics of one window on a validated series (use ``recovery_metrics``)."""
    pre = [i for i, t in enumerate(series.steps) if t <= start][-params.pre_evals :]
    level = _mean(series.loss[i] for i in pre)
    pre_em = _mean(series.exact_match[i] for i in pre)
    tolerance = params.eps_rel * level + params.eps_abs
    after = series.between(start, horizon_end, include_low=False)
    losses = [series.loss[i] for i in after]
    peak = max(losses, default=NAN)
    recover_at = _recovery_index(series, end, horizon_end, level + tolerance, params.consecutive)
    recovered = recover_at is not None
    if recover_at is not None:
        since = series.between(series.steps[recover_at], horizon_end, include_low=True)
        tail = [series.loss[i] for i in since]
        overshoot = max(0.0, max(x - level - tolerance for x in tail))
        recover_step: int | None = series.steps[recover_at]
        time_to_recover = float(series.steps[recover_at] - end)
    else:
        overshoot, recover_step, time_to_recover = NAN, None, float(horizon_end - end)
    min_em = min((series.exact_match[i] for i in after), default=NAN)
    return WindowMetrics(
        start=start,
        end=end,
        horizon_end=horizon_end,
        pre_loss=level,
        pre_exact_match=pre_em,
        pre_evals=len(pre),
        tolerance=tolerance,
        peak_loss=peak,
        peak_damage=peak - level,
        recovered=recovered,
        recover_step=recover_step,
        time_to_recover_steps=time_to_recover if math.isfinite(level) else NAN,
        overshoot=overshoot,
        excess_area=sum(max(0.0, x - level) for x in losses) if math.isfinite(level) else NAN,
        min_exact_match=min_em,
        forgetting=pre_em - min_em,
    )


def _recovery_index(
    series: _Series, end: int, horizon_end: int, threshold: float, consecutive: int
) -> int | None:
    # NaN threshold (no pre-shock level) compares False everywhere: never recovered.
    candidates = series.between(end, horizon_end, include_low=True)
    run = 0
    for position, i in enumerate(candidates):
        run = run + 1 if series.loss[i] <= threshold else 0
        if run == consecutive:
            return candidates[position - consecutive + 1]
    return None


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else NAN


# -- statistics for the multi-seed study ------------------------------------------------------
