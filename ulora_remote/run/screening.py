"""The guards' side of the loop, pure: losses in; the combined verdict, the probation and the
loss the policy observes out (docs/design.md, "Guards"). No backend, no callbacks: the runner
sends every request (the screening forwards, the snapshot a probation saves, the rollback's
load) and tells this object what they returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ulora_remote.backend import Example
from ulora_remote.control.contrast import contrast_batch, contrast_result
from ulora_remote.control.guard import Action, BatchLosses, ContrastGuard, Guard, Verdict
from ulora_remote.errors import CheckpointError
from ulora_remote.run.steps import Probation

__all__ = ["Screening"]


class Screening:
    """Every guard's verdict on a batch, and the probation a guard opens.

    Args:
        guards: may be empty: then the runner screens nothing and trains on every example.
    """

    def __init__(self, guards: Sequence[Guard]) -> None:
        self.guards = list(guards)
        self.probation: Probation | None = None
        # What the policy observes for a step whose examples were all rejected: the loss of the
        # last examples trained on (rejected data never reaches the policy; E_t says it was).
        self.last_trained_loss = math.nan

        #: Whether a guard reads contrast pairs: then each screen also holds the batch's
        #: mismatched pairs (``ulora_remote.control.contrast``), after the batch's own examples.
        self.contrast = any(isinstance(g, ContrastGuard) and g.uses_contrast for g in guards)

    @property
    def active(self) -> bool:
        """Whether batches are screened at all (a run without guards sends no screen)."""
        return bool(self.guards)

    # The one place where a screen's examples are built: the batch, then (when a guard reads
    # them) its contrast pairs; ``split`` takes the screen's losses apart again.
    def screened_examples(self, examples: list[Example]) -> list[Example]:
        """What the screening forward of ``examples`` scores."""
        return examples + contrast_batch(examples) if self.contrast else examples

    def split(self, examples: Sequence[Example], whole: BatchLosses
              ) -> tuple[BatchLosses, BatchLosses | None]:
        """The batch's own losses, and its contrast (None when no guard reads one), from the
        losses of ``screened_examples(examples)``."""
        n = len(examples)
        own = BatchLosses(tuple(whole.nll_sums[:n]), tuple(whole.weight_sums[:n]))
        if not self.contrast:
            return own, None
        pairs = BatchLosses(tuple(whole.nll_sums[n:]), tuple(whole.weight_sums[n:]))
        return own, contrast_result(examples, pairs)

    def judge(self, t: int, screened: BatchLosses, tasks: Sequence[str],
              contrast: BatchLosses | None = None) -> Verdict:
        """Every guard's verdict on step t: kept where all keep, the first action, the lowest
        learning rate a guard sets. Only one guard may ask for actions (a rollback is judged
        again by all). ``contrast`` goes to the guards that read it."""
        verdicts = [g.judge(t, screened, tasks, contrast) if isinstance(g, ContrastGuard)
                    else g.judge(t, screened, tasks) for g in self.guards]
        if any(v.action == "rollback" for v in verdicts):
            return next(v for v in verdicts if v.action == "rollback")
        keep = tuple(all(flags) for flags in zip(*(v.keep for v in verdicts), strict=True))
        lrs = [v.lr for v in verdicts if v.lr is not None]
        action: Action = next((v.action for v in verdicts if v.action != "none"), "none")
        note = "; ".join(v.note for v in verdicts if v.note)
        return Verdict(keep=keep, note=note, action=action, lr=min(lrs) if lrs else None)

    def open_probation(self, t: int, ref: str, policy_state: dict[str, Any]) -> None:
        """A probation begins at step t: ``ref`` is the snapshot saved before it, and
        ``policy_state`` the policy's state then (a rollback restores both)."""
        self.probation = Probation(t, ref, policy_state, self.last_trained_loss)

    def end_probation(self) -> str:
        """The data on probation was found learnable (a shift): returns the snapshot's ref."""
        ref = self.probation.ref if self.probation else ""
        self.probation = None
        return ref

    def close_probation(self) -> Probation:
        """The data on probation is rolled back: returns the closed probation, whose snapshot
        and policy state the runner restores.

        Raises:
            CheckpointError: no probation is open."""
        probation = self.probation
        if probation is None:
            raise CheckpointError("a guard asked for a rollback, but no probation is open")
        self.last_trained_loss = probation.last_trained_loss
        self.probation = None
        return probation

    def observed_loss(self, skipped: bool, loss: float) -> float:
        """The loss the policy observes for a read step (see ``last_trained_loss``)."""
        if not skipped:
            self.last_trained_loss = loss
            return loss
        return self.last_trained_loss if math.isfinite(self.last_trained_loss) else loss

    # -- state carried in checkpoints -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"guards": [g.state_dict() for g in self.guards],
                "probation": asdict(self.probation) if self.probation else None,
                "last_trained_loss": self.last_trained_loss}

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from a checkpoint record (``{}``: as before the first step)."""
        if "guards" in record:
            for guard, state in zip(self.guards, record["guards"], strict=True):
                guard.load_state_dict(state)
        probation = record.get("probation")
        self.probation = Probation(**probation) if probation else None
        self.last_trained_loss = float(record.get("last_trained_loss", math.nan))
