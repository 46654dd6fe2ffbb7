"""Counters of executed training requests, per model, readable from any thread.

Tests and benchmarks use them to check exactly-once execution under faults. Besides the raw
counts, each model carries its *lineage* counts: the steps its state contains, i.e. its own
executed steps plus those recorded in the checkpoint it was created from. A model whose state
was declared lost (410) keeps its counts but is flagged, because its steps after the last
checkpoint were discarded with it.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

__all__ = ["Counters", "ModelCounts"]


@dataclass
class ModelCounts:
    """Executed requests of one model (plain values; a snapshot is a copy)."""

    forward_backward: int = 0
    optim_step: int = 0
    forward: int = 0
    inherited_forward_backward: int = 0
    inherited_optim_step: int = 0
    loaded_from: str | None = None
    lost: bool = False

    @property
    def lineage_forward_backward(self) -> int:
        return self.inherited_forward_backward + self.forward_backward

    @property
    def lineage_optim_step(self) -> int:
        return self.inherited_optim_step + self.optim_step

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["lineage_forward_backward"] = self.lineage_forward_backward
        out["lineage_optim_step"] = self.lineage_optim_step
        return out


class Counters:
    """Thread-safe per-model counters (the server's worker thread writes, anyone reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelCounts] = {}

    def add_model(
        self, model_id: str, *, loaded_from: str | None = None, inherited: tuple[int, int] = (0, 0)
    ) -> None:
        with self._lock:
            self._models[model_id] = ModelCounts(
                inherited_forward_backward=inherited[0],
                inherited_optim_step=inherited[1],
                loaded_from=loaded_from,
            )

    def increment(self, model_id: str, kind: str) -> None:
        """Count one executed request of ``kind`` (forward_backward, optim_step or forward)."""
        with self._lock:
            counts = self._models.setdefault(model_id, ModelCounts())
            setattr(counts, kind, getattr(counts, kind) + 1)

    def mark_lost(self, model_id: str) -> None:
        with self._lock:
            if model_id in self._models:
                self._models[model_id].lost = True

    def get(self, model_id: str) -> ModelCounts:
        """A copy of one model's counts (zeros for an unknown model)."""
        with self._lock:
            return ModelCounts(**asdict(self._models.get(model_id, ModelCounts())))

    def snapshot(self) -> dict[str, ModelCounts]:
        """A copy of every model's counts."""
        with self._lock:
            return {k: ModelCounts(**asdict(v)) for k, v in self._models.items()}

    def total(self, kind: str) -> int:
        """Executed requests of ``kind`` over all models, lost ones included."""
        with self._lock:
            return sum(int(getattr(c, kind)) for c in self._models.values())

    def as_json(self) -> dict[str, dict[str, object]]:
        return {k: v.as_dict() for k, v in self.snapshot().items()}
