"""The controller's configuration: every knob of the seed's controller, validated on construction,
and the named presets (docs/design.md, "The controller")."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Literal

from ulora_remote.errors import ConfigurationError

__all__ = ["PRESETS", "ControllerConfig", "Formula"]

Formula = Literal["readme", "report"]



@dataclass(frozen=True, kw_only=True)
class ControllerConfig:
    """Every knob of the controller. Validated on construction; see the module docstring.

    Learning rates are per mode: ``lr_single`` (mode 0), ``lr_multi`` (1), ``lr_mirror`` (2).
    """

    alpha: float = 0.1
    beta: float = 0.9
    theta0: float = 0.3
    theta1: float = 0.7
    lr_single: float = 5e-5
    lr_multi: float = 3e-5
    lr_mirror: float = 1e-5
    cooldown: int = 0
    formula: Formula = "readme"
    alpha_e: float = 0.0
    derivative_gain: float = 0.0
    mirror_lock: bool = False
    lock_hysteresis: float = 0.05
    lock_patience: int = 10

    def __post_init__(self) -> None:
        _check_unit_interval("alpha", self.alpha)
        _check_unit_interval("beta", self.beta)
        for name in ("theta0", "theta1"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 < value < 1.0):
                raise ConfigurationError(f"{name}={value!r}: a threshold must lie in (0, 1)")
        if self.theta0 >= self.theta1:
            raise ConfigurationError(
                f"theta0={self.theta0} must be below theta1={self.theta1}: "
                "θ0 separates Single from Multi and θ1 Multi from Mirror"
            )
        for name in ("lr_single", "lr_multi", "lr_mirror"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1):
                raise ConfigurationError(
                    f"{name}={value!r}: a learning rate must be finite and in [0, 1] (a LoRA "
                    "adapter learns nothing useful above 1)"
                )
        for name in ("cooldown", "lock_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(
                    f"{name}={value!r}: must be an integer number of steps ≥ 0"
                )
        if self.formula not in ("readme", "report"):
            raise ConfigurationError(
                f"formula={self.formula!r}: choose 'readme' (default) or 'report'"
            )
        if not (0.0 <= self.alpha_e <= 1.0):
            raise ConfigurationError(f"alpha_e={self.alpha_e!r}: must lie in [0, 1]")
        if not (math.isfinite(self.derivative_gain) and self.derivative_gain >= 0):
            raise ConfigurationError(
                f"derivative_gain={self.derivative_gain!r}: must be ≥ 0 (0 turns it off)"
            )
        if not (0.0 <= self.lock_hysteresis < 1.0):
            raise ConfigurationError(
                f"lock_hysteresis={self.lock_hysteresis!r}: must lie in [0, 1)"
            )
        if self.formula == "report" and self.theta1 >= 0.5:
            warnings.warn(
                f"formula='report' keeps φ ≤ 1/2, so theta1={self.theta1} ≥ 0.5 makes Mirror "
                "unreachable; lower theta1 or use formula='readme'",
                UserWarning,
                stacklevel=3,
            )

    @property
    def lrs(self) -> tuple[float, float, float]:
        """Learning rates of modes 0, 1, 2."""
        return (self.lr_single, self.lr_multi, self.lr_mirror)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ControllerConfig:
        """A named preset (see ``PRESETS``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigurationError(
                f"unknown controller preset {name!r}; choose one of {sorted(PRESETS)}"
            )
        return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def _check_unit_interval(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
        raise ConfigurationError(f"{name}={value!r}: must lie in (0, 1]")


PRESETS: dict[str, ControllerConfig] = {
    # Seed 000 and the reference controller.py (DistilBERT): the bare constructor's default.
    "reference": ControllerConfig(),
    # Report and v2 logs (Llama-3.2-1B on Tinker); the v2 log switches exactly 30 steps apart.
    "tinker": ControllerConfig(lr_single=2e-3, lr_multi=5e-4, lr_mirror=1e-4, cooldown=30),
}
