"""The guard contract: judge a batch from its per-example losses before it is trained on.

Before a step's ``forward_backward`` the runner screens the batch with a gradient-free
``forward`` and hands each guard the per-example losses (``BatchLosses``: numbers, no backend
type) and each example's task name. A guard returns a ``Verdict``: which
examples to keep. Rejected examples get no gradient; when nothing is kept the step is skipped
(no ``forward_backward``, no ``optim_step``). A guard is pure: numbers in, a verdict out, no I/O.

The first guard is the batch-level z-score skip (``ZScoreGuard``): the loss-spike skip of
OLMo-core and llm.c. It keeps the whole batch or none of it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ulora_remote.errors import ConfigurationError
from ulora_remote.losses import BatchLosses

__all__ = ["Action", "ContrastGuard", "Guard", "Verdict", "ZScoreGuard", "example_losses"]

#: What a guard asks the runner to do at a step, besides keeping examples (docs/design.md,
#: "Guards"): ``"probation"``: save a stability snapshot before this step and train it at
#: ``Verdict.lr``; ``"rollback"``: restore that snapshot, then screen this step's batch again;
#: ``"shift"``: the new data is learnable, so drop the snapshot from use (it stays on record) and
#: tell the policy the loss level changed (``Signal.rebase``).
Action = Literal["none", "probation", "rollback", "shift"]


def example_losses(screened: BatchLosses) -> tuple[float, ...]:
    """Each example's mean NLL per weighted target token (nats); NaN for an example of no weight."""
    return tuple(
        nll / w if w > 0 else math.nan
        for nll, w in zip(screened.nll_sums, screened.weight_sums, strict=True)
    )


@dataclass(frozen=True)
class Verdict:
    """A guard's judgement of one batch.

    Attributes:
        keep: one flag per example of the batch, in order; False gives the example no gradient.
        note: a short reason for the console and logs when something was rejected.
        action: what the runner must do at this step besides keeping examples (``Action``).
        lr: the learning rate this step must use (a probation sets its own), or None to leave
            it to the policy.
    """

    keep: tuple[bool, ...]
    note: str = ""
    action: Action = "none"
    lr: float | None = None

    @classmethod
    def accept_all(cls, n: int) -> Verdict:
        return cls(keep=(True,) * n)

    @property
    def kept(self) -> int:
        return sum(self.keep)


@runtime_checkable
class Guard(Protocol):
    """Judges a screened batch; pure Python, never blocks, no I/O.

    ``judge`` is called once per training step, in step order, with the losses of a
    gradient-free ``forward`` over the step's whole batch (``BatchLosses``: per-example NLL sums
    and weight totals, nats) and each example's task name (``Example.task``: "" for every
    example of a single-task stream); after a verdict with ``action = "rollback"`` it is called
    once more for the same step, with the batch screened again on the restored weights (that
    second verdict must not ask for a rollback). It returns a ``Verdict`` with one flag per
    example. A non-finite example loss is never kept. ``state_dict`` / ``load_state_dict``
    continue bit-identically after a resume.
    """

    def judge(self, step: int, screened: BatchLosses,
              tasks: Sequence[str] | None = None) -> Verdict:
        """Judge the batch of training step ``step``; ``tasks`` names each example's task
        (None: all one task, as for a caller outside the runner)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@runtime_checkable
class ContrastGuard(Guard, Protocol):
    """A guard that can also read each example's answer under another example's prompt.

    When ``uses_contrast`` is true the runner screens, besides the batch, its contrast pairs
    (``ulora_remote.control.contrast.contrast_batch``: about one more forward of the batch) and
    passes ``contrast``: one entry per example of the batch, in order, with weight 0 where the
    example has no partner. Called without ``contrast`` (None), the guard judges the losses
    alone; everything else is ``Guard``'s contract.
    """

    @property
    def uses_contrast(self) -> bool:
        ...

    def judge(self, step: int, screened: BatchLosses,
              tasks: Sequence[str] | None = None,
              contrast: BatchLosses | None = None) -> Verdict:
        ...


class ZScoreGuard:
    """Skip a batch whose mean loss is more than ``z`` σ above recent accepted batches.

    The batch's loss is the mean NLL per weighted token over the whole batch. σ is the sample
    standard deviation of a window of recent *accepted* batch losses; skipped losses never
    enter the window, so a long shock stays screened (and so does a lasting shift: this guard
    cannot tell the two apart). A non-finite batch loss is always skipped.

    Args:
        z: the threshold in standard deviations (> 0).
        window: how many recent accepted losses form the reference (≥ 2).
        min_history: no skipping until this many losses were accepted (2 ≤ min_history ≤ window).

    Raises:
        ConfigurationError: a value outside those ranges.
    """

    def __init__(self, *, z: float = 3.0, window: int = 50, min_history: int = 20) -> None:
        if not (math.isfinite(z) and z > 0):
            raise ConfigurationError(f"zskip z={z}: must be a finite number > 0")
        if not 2 <= min_history <= window:
            raise ConfigurationError(
                f"zskip min_history={min_history}, window={window}: need 2 ≤ min_history ≤ window"
            )
        self.z, self.window, self.min_history = z, window, min_history
        self._accepted: deque[float] = deque(maxlen=window)
        self.skipped = 0

    def threshold(self) -> float:
        """The batch loss above which the next batch is skipped (inf while the history is short)."""
        n = len(self._accepted)
        if n < self.min_history:
            return math.inf
        mean = sum(self._accepted) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in self._accepted) / (n - 1))
        return mean + self.z * sd

    def judge(self, step: int, screened: BatchLosses,
              tasks: Sequence[str] | None = None) -> Verdict:
        """The batch as a whole (``tasks`` are not used: one reference for every example)."""
        n = len(screened.nll_sums)
        loss = screened.mean_loss
        if not math.isfinite(loss) or loss > self.threshold():
            self.skipped += 1
            return Verdict(keep=(False,) * n, note=f"zskip: batch loss {loss:.3f} > "
                                                  f"{self.threshold():.3f}")
        self._accepted.append(loss)
        return Verdict.accept_all(n)

    def state_dict(self) -> dict[str, Any]:
        return {"accepted": list(self._accepted), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._accepted = deque((float(x) for x in state["accepted"]), maxlen=self.window)
        self.skipped = int(state["skipped"])
