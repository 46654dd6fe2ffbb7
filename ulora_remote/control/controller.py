"""The Unified-LoRA controller: loss in, stress signal φ, mode and learning rate out.

Pure Python, no I/O, no torch. The exact semantics are those of docs/design.md ("The
controller"); the README explains the two formulas and why the report's form cannot reach
Mirror with θ1 ≥ 0.5.

Default ("readme") form, seed 000 and the reference ``controller.py``::

    Ê_t = β·Ê_{t-1} + (1-β)·L_t
    D_t = (1-α_E)·Ê_t/(1+Ê_t) + α_E·E_t
    φ_t = (1-α)·φ_{t-1} + α·D_t

Report form (seed 001)::

    X_t = α_E·E_t + (1-α_E)·L_t/(1+L_t)
    Ê_t = β·Ê_{t-1} + (1-β)·X_t
    D_t = Ê_t/(1+Ê_t)                      (≤ 1/2, since X_t ≤ 1)
    φ_t = (1-α)·φ_{t-1} + α·D_t

Both start at φ = 0.5, Ê = 1.0, mode 1 (Multi), step 0.

A stress object (``ulora_remote.control.stress.Stress``, for example the scale-free
``RatioStress``) may replace the normalised loss term of the default form: then
``D_t = (1-α_E)·stress.update(L_t) + α_E·E_t``; Ê is still the EMA of the loss and is logged.

The controller is an ``LrPolicy`` (``ulora_remote.control.policy``): ``observe(Signal)`` is
``decide(loss, external_stress)``.

Options on top of either form, each off by default:

* derivative reaction (gain k_d): φ is fed ``min(1, D_t + k_d·max(0, D_t − D_{t-1}))`` instead of
  D_t, so a rising stress moves φ sooner. D_{-1} is taken to be D_0 (no boost on the first step).
* cooldown N_s: a switch at step t is allowed only if ``t − t_last_switch ≥ N_s``; the first
  switch is always allowed. A switch goes straight to the target mode (0→2 is one switch).
* Mirror-lock (h, m): once in Mirror, leave only when ``φ_t < θ1 − h`` *and* Ê has not risen for
  the last m consecutive updates (``Ê_t ≤ Ê_{t-1}``, counted by ``calm_steps``).

A multi-task stream adds its task stress u_t ∈ [0, 1) (conflict and stability,
``ulora_remote.control.task_signals``): φ is fed ``d + (1 − d)·u_t`` where d is the drive above
(after the derivative reaction); u_t = 0 feeds d itself, so the seed's numbers are unchanged.

Bad input: a NaN or infinite loss is the strongest stress. The EMA is not fed (Ê keeps its value,
so it stays finite) and the normalised loss term counts as 1. A negative loss raises InputError.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ulora_remote.control.config import ControllerConfig
from ulora_remote.control.policy import Decision, Signal
from ulora_remote.control.stress import Stress
from ulora_remote.errors import ConfigurationError, InputError

__all__ = ["MODE_NAMES", "UnifiedController"]

MODE_NAMES: tuple[str, str, str] = ("Single", "Multi", "Mirror")


@dataclass
class _State:
    phi: float = 0.5
    e_smooth: float = 1.0
    mode: int = 1
    step: int = 0
    last_switch: int | None = None
    prev_drive: float | None = None
    prev_e_smooth: float | None = None
    calm_steps: int = 0


class UnifiedController:
    """Smooths the loss into φ ∈ (0, 1) and maps φ to a mode and a learning rate.

    The seed's quick start runs as written::

        controller = UnifiedController(alpha=0.1, beta=0.9, theta0=0.3, theta1=0.7)
        new_lr = controller.update(loss.item())

    Args:
        config: a full ``ControllerConfig``; or give its fields as keyword arguments.
        stress: replaces Ê/(1+Ê) as the stress term (default form only); None keeps the seed's.
        **fields: any ``ControllerConfig`` field, e.g. ``alpha=0.1``; not with ``config``.

    Raises:
        ConfigurationError: an invalid field (the message names it), or a stress object with
            ``formula="report"``.
    """

    def __init__(self, config: ControllerConfig | None = None, *, stress: Stress | None = None,
                 **fields_: Any) -> None:
        if config is not None and fields_:
            raise ConfigurationError("pass either config=ControllerConfig(...) or fields, not both")
        known = {f.name for f in fields(ControllerConfig)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown controller option(s) {unknown}; valid options are {sorted(known)}"
            )
        self.config = config if config is not None else ControllerConfig(**fields_)
        if stress is not None and self.config.formula != "readme":
            raise ConfigurationError(
                "a stress object replaces the default form's Ê/(1+Ê); it cannot be combined "
                "with formula='report' — use formula='readme'"
            )
        self.stress = stress
        self._s = _State()

    @classmethod
    def from_preset(cls, name: str, *, stress: Stress | None = None,
                    **overrides: Any) -> UnifiedController:
        """A controller from a named preset ('reference' or 'tinker') with overrides."""
        return cls(ControllerConfig.preset(name, **overrides), stress=stress)

    # -- the seed's attribute names ---------------------------------------------------------
    @property
    def phi(self) -> float:
        return self._s.phi

    @property
    def mode(self) -> int:
        return self._s.mode

    @property
    def E_smooth(self) -> float:  # noqa: N802 - the seed's name
        return self._s.e_smooth

    @property
    def step(self) -> int:
        """How many updates have been made."""
        return self._s.step

    @property
    def lr(self) -> float:
        """The learning rate of the current mode (what the next step would use at lag 1)."""
        return self.config.lrs[self._s.mode]

    @property
    def mode_name(self) -> str:
        return MODE_NAMES[self._s.mode]

    # -- the LrPolicy contract ------------------------------------------------------------------
    def initial_decision(self) -> Decision:
        """The decision in force before the first update: the initial state's mode and LR."""
        s = _State()
        return Decision(step=-1, loss=math.nan, e_smooth=s.e_smooth, phi=s.phi,
                        mode=s.mode, mode_name=MODE_NAMES[s.mode],
                        lr=self.config.lrs[s.mode], switched=False)

    def observe(self, signal: Signal) -> Decision:
        """``decide(signal.loss, signal.external_stress)``; a ``rebase`` signal first makes the
        stress object (if any) forget its history, since the data changed for good."""
        if signal.rebase and self.stress is not None:
            self.stress.rebase()
        return self.decide(signal.loss, signal.external_stress, signal.task_stress)

    # -- the update --------------------------------------------------------------------------
    def update(self, loss: float, external_stress: float | None = None) -> float:
        """Feed one step's loss; return the learning rate to use (the seed's API)."""
        return self.decide(loss, external_stress).lr

    def decide(self, loss: float, external_stress: float | None = None,
               task_stress: float = 0.0) -> Decision:
        """Feed one step's loss (and optional external stress E_t in [0, 1], task stress u_t
        in [0, 1)); return the decision.

        Raises:
            InputError: the loss is negative, or a stress lies outside its interval.
        """
        loss = float(loss)
        if loss < 0:
            raise InputError(
                f"loss={loss} is negative; the controller needs a non-negative loss such as a "
                "mean negative log-likelihood (D = L/(1+L) is meaningless below 0)"
            )
        e_ext = 0.0 if external_stress is None else float(external_stress)
        if not (0.0 <= e_ext <= 1.0):
            raise InputError(f"external_stress={external_stress!r} must lie in [0, 1]")
        if not (0.0 <= task_stress < 1.0):
            raise InputError(f"task_stress={task_stress!r} must lie in [0, 1)")
        cfg, s = self.config, self._s
        finite = math.isfinite(loss)

        if cfg.formula == "readme":
            if finite:
                s.e_smooth = cfg.beta * s.e_smooth + (1 - cfg.beta) * loss
            term = _squash(s.e_smooth) if self.stress is None else self.stress.update(loss)
            drive = (1 - cfg.alpha_e) * term + cfg.alpha_e * e_ext
            if not finite:
                drive = 1.0
        else:
            x = cfg.alpha_e * e_ext + (1 - cfg.alpha_e) * (_squash(loss) if finite else 1.0)
            s.e_smooth = cfg.beta * s.e_smooth + (1 - cfg.beta) * x
            drive = _squash(s.e_smooth)

        fed = drive
        if cfg.derivative_gain > 0 and s.prev_drive is not None:
            fed = min(1.0, drive + cfg.derivative_gain * max(0.0, drive - s.prev_drive))
        s.prev_drive = drive
        if task_stress > 0.0:
            fed = fed + (1.0 - fed) * task_stress
        s.phi = (1 - cfg.alpha) * s.phi + cfg.alpha * fed
        rising = s.prev_e_smooth is not None and s.e_smooth > s.prev_e_smooth
        s.calm_steps = 0 if rising else s.calm_steps + 1
        s.prev_e_smooth = s.e_smooth

        t = s.step
        target = self._target_mode()
        switched, reason = False, ""
        if target != s.mode and (s.last_switch is None or t - s.last_switch >= cfg.cooldown):
            reason = _switch_reason(s.mode, target, s.phi, cfg)
            s.mode, s.last_switch, switched = target, t, True
        s.step = t + 1
        return Decision(
            step=t,
            loss=loss,
            e_smooth=s.e_smooth,
            phi=s.phi,
            mode=s.mode,
            mode_name=MODE_NAMES[s.mode],
            lr=cfg.lrs[s.mode],
            switched=switched,
            reason=reason,
        )

    def _target_mode(self) -> int:
        cfg, s = self.config, self._s
        target = 0 if s.phi < cfg.theta0 else (1 if s.phi < cfg.theta1 else 2)
        if cfg.mirror_lock and s.mode == 2 and target != 2:
            released = (
                s.phi < cfg.theta1 - cfg.lock_hysteresis and s.calm_steps >= cfg.lock_patience
            )
            if not released:
                return 2
        return target

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (plain JSON-able values)."""
        state: dict[str, Any] = {"config": asdict(self.config), "state": asdict(self._s)}
        if self.stress is not None:
            state["stress"] = self.stress.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; the config must match this controller's.

        Raises:
            ConfigurationError: the saved config differs from this controller's.
        """
        saved = state.get("config")
        if saved is not None and saved != asdict(self.config):
            diff = sorted(k for k, v in saved.items() if asdict(self.config).get(k) != v)
            raise ConfigurationError(
                f"controller state was saved with a different config (fields {diff}); "
                "build the controller with the saved config to restore it"
            )
        if (self.stress is None) != ("stress" not in state):
            raise ConfigurationError(
                "controller state was saved with a different stress (the default Ê/(1+Ê) vs a "
                "stress object); build the controller the way the run was built"
            )
        self._s = _State(**state["state"])
        if self.stress is not None:
            self.stress.load_state_dict(state["stress"])


def _switch_reason(old: int, new: int, phi: float, cfg: ControllerConfig) -> str:
    if new > old:
        edge = cfg.theta1 if new == 2 else cfg.theta0
        return f"phi {phi:.3f} >= theta{new - 1} {edge:g}"
    edge = cfg.theta0 if new == 0 else cfg.theta1
    return f"phi {phi:.3f} < theta{new} {edge:g}"


def _squash(x: float) -> float:
    """x/(1+x), in [0, 1) for x ≥ 0."""
    return x / (1.0 + x)
