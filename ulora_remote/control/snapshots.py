"""Stability snapshots for Mirror: which snapshots exist and when to roll back (pure Python).

While the controller is in Single or Multi the runner saves ``backend.save_state`` every ``every``
steps, keeping the last ``keep``; on a switch into Mirror it restores the *oldest* kept one, which
predates the detection by at least ``every`` steps (detection lags a shock's start, so the newest
snapshot may already hold damage). This is docs/design.md's "Mirror: stability snapshots".
The runner does the I/O; this object only keeps the bookkeeping.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ulora_remote.control.policy import Decision
from ulora_remote.errors import ConfigurationError

__all__ = ["SnapshotKeeper"]


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


