"""Per-example losses of one batch: the numbers a guard judges and the task signals read.

A plain value type, so that ``ulora_remote.control`` takes numbers and never a backend's types;
every ``ForwardBackwardResult`` is one (``ulora_remote.backend``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BatchLosses"]


@dataclass(frozen=True)
class BatchLosses:
    """The per-example losses of one batch, as a backend returns them (docs/design.md,
    "Backends"): ``nll_sums[i]`` is example i's weighted NLL sum (nats), ``weight_sums[i]`` its
    weight total (target tokens when weights are 0/1). Any ``ForwardBackwardResult`` carries the
    same two fields; so does a ``forward_backward``'s result, which is what lets a guard judge
    the training pass itself."""

    nll_sums: tuple[float, ...]
    weight_sums: tuple[float, ...]

    @property
    def loss_sum(self) -> float:
        """Σ weight·(−log p(target)) over the batch: Tinker's ``loss:sum``."""
        return float(sum(self.nll_sums))

    @property
    def tokens(self) -> float:
        """Σ weights over the batch (the number of completion tokens when weights are 0/1)."""
        return float(sum(self.weight_sums))

    @property
    def mean_loss(self) -> float:
        """Mean NLL per weighted token; NaN when the batch had no weight."""
        total = self.tokens
        return self.loss_sum / total if total > 0 else math.nan
