"""The learning-rate policy contract: one observation in, one decision with its learning rate out.

Every way of setting the learning rate (the seed's controller, a fixed LR, reduce-on-plateau,
the scale-free stress) is an ``LrPolicy``. The runner feeds it one ``Signal`` per training step,
in step order, and applies the ``lr`` of the decision ``lag`` steps later (docs/design.md,
"Control lag"). A policy is pure: floats in, a decision out, no I/O, no torch.

Every policy also reports the seed's stress signal φ and the smoothed loss Ê, computed by a
``UnifiedController`` that observes the same losses, so that φ is logged for every method. The
``mode`` of a decision is the mode that *set* its learning rate: 0 Single, 1 Multi, 2 Mirror for
the controller; ``NO_MODE`` (-1) for a policy without modes, whose ``mode_name`` is then its own
name (``"fixed"``, ``"plateau"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["NO_MODE", "Decision", "LrPolicy", "Signal", "format_lr"]

#: ``Decision.mode`` of a learning rate that no controller mode set (fixed, plateau, warm-up).
NO_MODE = -1


@dataclass(frozen=True)
class Signal:
    """What a policy observes after one training step.

    Attributes:
        loss: the step's training loss, mean nats per weighted target token (≥ 0; NaN or inf
            for a step whose loss was not finite).
        external_stress: the seed's external stress E_t in [0, 1] (for example the share of the
            batch a guard rejected), or None when nothing supplies one.
        rebase: the data changed for good at this step (a guard declared a shift): a stress
            measured against the run's own history starts over from this loss.
        task_stress: u_t in [0, 1), the stress of a multi-task stream's conflict and
            stability (``ulora_remote.control.task_signals``); the controller drives φ with
            d + (1 − d)·u instead of its own drive d. 0 leaves φ exactly the seed's.
    """

    loss: float
    external_stress: float | None = None
    rebase: bool = False
    task_stress: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What a policy decided after one observation.

    Attributes:
        step: 0-based index of the observation (the number of earlier observations); -1 for
            the decision in force before the first one.
        loss: the observed loss (nats; NaN before the first observation).
        e_smooth: the smoothed loss Ê after this observation (nats; "E_s" in the seed's logs).
        phi: the stress signal φ after this observation, in (0, 1).
        mode: the controller mode that set ``lr`` (0 Single, 1 Multi, 2 Mirror), or ``NO_MODE``.
        mode_name: "Single", "Multi", "Mirror", or the policy's name when ``mode`` is NO_MODE.
        lr: the learning rate this decision sets (≥ 0).
        switched: whether this decision changed the mode (or, for a policy without modes, the
            learning rate).
        reason: why it switched (empty when it did not).
    """

    step: int
    loss: float
    e_smooth: float
    phi: float
    mode: int
    mode_name: str
    lr: float
    switched: bool
    reason: str = ""


@runtime_checkable
class LrPolicy(Protocol):
    """Sets the learning rate from the training losses; pure Python, never blocks, no I/O.

    ``observe`` is called once per training step, in step order. ``initial_decision`` is what
    applies to steps whose learning rate must be chosen before any loss was read (the first
    ``lag`` steps); it does not change the state. ``state_dict`` returns plain JSON-able values
    from which ``load_state_dict`` continues bit-identically.
    """

    def initial_decision(self) -> Decision:
        """The decision in force before the first observation (``step`` = -1)."""
        ...

    def observe(self, signal: Signal) -> Decision:
        """Observe one step; return the decision.

        Raises:
            InputError: a negative loss, or an external stress outside [0, 1].
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Raises ConfigurationError when the state was saved by a differently built policy."""
        ...


def format_lr(lr: float) -> str:
    """A learning rate the way the seed writes it: ``1e-4``, ``5e-4``, ``2.5e-3``, ``0``."""
    if lr == 0:
        return "0"
    mantissa, exponent = f"{lr:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
