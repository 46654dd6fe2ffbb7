"""The scenario's ``[controller]`` section: which policy sets the learning rate, with its stress,
guard and snapshots. One pydantic model per kind; each builds its own object.

    [controller]                 method = "guarded" (default) | "seed" | "fixed" | "plateau"
    preset = "tinker"            the seed's controller (or the φ observer of fixed and plateau)
    cooldown = 30                any ControllerConfig field overrides the preset
    lr = 2e-3                    fixed and plateau: the (starting) learning rate
    [controller.stress]          "guarded" and "seed": kind = "ratio" (guarded's) | "ema" (seed's)
    [controller.snapshots]       "guarded" and "seed": every = 25, keep = 2 (Mirror rollback)
    [controller.plateau]         method "plateau": factor, patience, threshold, cooldown, min_lr
    [controller.guard]           every method: kind = "none" | "zskip" | "screen" (guarded's)

Adding a guard is one class here (a union member with ``build``) plus its module;
docs/extending.md walks through it.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ulora_remote.control.config import ControllerConfig
from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.guard import Guard, ZScoreGuard
from ulora_remote.control.policies import FixedPolicy, PlateauPolicy, PlateauRule
from ulora_remote.control.policy import LrPolicy, format_lr
from ulora_remote.control.screen import ScreenConfig, ScreenGuard
from ulora_remote.control.stress import RatioStress, RatioStressConfig, Stress
from ulora_remote.errors import ConfigurationError
from ulora_remote.sections import STRICT, LearningRate

__all__ = [
    "CONTROLLER_FIELDS",
    "ControllerPolicySection",
    "ControllerSection",
    "FixedPolicySection",
    "GuardSectionContract",
    "GuardedPolicySection",
    "GuardSection",
    "PlateauPolicySection",
    "PolicySectionContract",
    "StressSection",
    "StressSectionContract",
]


# -- what each kind of section provides (one union each below: StressSection, GuardSection,
# ControllerSection; nothing else lists the kinds) ---------------------------------------------
class StressSectionContract(Protocol):
    """A ``[controller.stress]`` section: ``kind``, and the stress it builds (None: the seed's
    built-in Ê/(1+Ê))."""

    @property
    def kind(self) -> str: ...

    def build(self) -> Stress | None: ...


class GuardSectionContract(Protocol):
    """A ``[controller.guard]`` section: ``kind``, and the guard it builds (None: no guard, no
    screening forward)."""

    @property
    def kind(self) -> str: ...

    def build(self) -> Guard | None: ...


class PolicySectionContract(Protocol):
    """A ``[controller]`` section (one per ``method``): the policy and guards it builds, the
    controller configuration behind φ, Mirror's rollback snapshots (None: not this method's),
    and the label of its runs."""

    @property
    def method(self) -> str: ...

    @property
    def guard(self) -> GuardSectionContract: ...

    def build(self) -> LrPolicy: ...

    def build_guards(self) -> list[Guard]: ...

    def controller_config(self) -> ControllerConfig: ...

    @property
    def rollback_snapshots(self) -> SnapshotSection | None: ...

    def run_label(self) -> str: ...


# -- stress ----------------------------------------------------------------------------------
class EmaStressSection(BaseModel):
    """``kind = "ema"``: the seed's stress, Ê/(1+Ê) of the smoothed loss."""

    model_config = STRICT
    kind: Literal["ema"] = "ema"

    def build(self) -> Stress | None:
        return None


_RATIO = RatioStressConfig()  # the defaults, written once (control/stress.py)


class RatioStressSection(BaseModel):
    """``kind = "ratio"``: the scale-free stress (``ulora_remote.control.stress``)."""

    model_config = STRICT
    kind: Literal["ratio"]
    fast_beta: float = Field(default=_RATIO.fast_beta, gt=0.0, lt=1.0)
    slow_beta: float = Field(default=_RATIO.slow_beta, gt=0.0, lt=1.0)
    gain: float = Field(default=_RATIO.gain, gt=0.0, le=1e6)
    slow_clip: float = Field(default=_RATIO.slow_clip, ge=1.0, le=1e6)

    @model_validator(mode="after")
    def _check(self) -> RatioStressSection:
        try:
            self.config()
        except ConfigurationError as exc:
            raise ValueError(f"controller.stress: {exc}") from None
        return self

    def config(self) -> RatioStressConfig:
        return RatioStressConfig(fast_beta=self.fast_beta, slow_beta=self.slow_beta,
                                 gain=self.gain, slow_clip=self.slow_clip)

    def build(self) -> Stress | None:
        return RatioStress(self.config())


def _stress_shorthand(value: Any) -> Any:
    # `stress = "ratio"` (and `--set controller.stress='"ratio"'`) is short for a table.
    return {"kind": value} if isinstance(value, str) else value


StressSection = Annotated[EmaStressSection | RatioStressSection, Field(discriminator="kind")]


# -- guards ----------------------------------------------------------------------------------
class NoGuardSection(BaseModel):
    """``kind = "none"``: every example is trained on."""

    model_config = STRICT
    kind: Literal["none"] = "none"

    def build(self) -> Guard | None:
        return None


class ZSkipGuardSection(BaseModel):
    """``kind = "zskip"``: skip a batch whose screened loss is more than ``z`` σ above the last
    ``window`` accepted batch losses (``ulora_remote.control.guard.ZScoreGuard``)."""

    model_config = STRICT
    kind: Literal["zskip"]
    z: float = Field(default=3.0, gt=0.0, le=100.0)
    window: int = Field(default=50, ge=2, le=100_000)
    min_history: int = Field(default=20, ge=2, le=100_000)

    def build(self) -> Guard | None:
        return ZScoreGuard(z=self.z, window=self.window,
                           min_history=min(self.min_history, self.window))


_SCREEN = ScreenConfig()  # the defaults, written once (control/screen.py)


class ScreenGuardSection(BaseModel):
    """``kind = "screen"``: per-example screening against robust statistics of accepted
    examples, with a probation that learns a real shift and rolls back noise
    (``ulora_remote.control.screen``; every key is a ``ScreenConfig`` field, whose default it
    is: the dataclass holds the defaults, this section adds the bounds)."""

    model_config = STRICT
    kind: Literal["screen"]
    z: float = Field(default=_SCREEN.z, gt=0.0, le=100.0)
    min_loss: float = Field(default=_SCREEN.min_loss, ge=0.0, le=100.0)
    window: int = Field(default=_SCREEN.window, ge=2, le=1_000_000)
    min_history: int = Field(default=_SCREEN.min_history, ge=2, le=1_000_000)
    trigger_share: float = Field(default=_SCREEN.trigger_share, gt=0.0, le=1.0)
    trigger_steps: int = Field(default=_SCREEN.trigger_steps, ge=1, le=100_000)
    probation_steps: int = Field(default=_SCREEN.probation_steps, ge=1, le=100_000)
    judge_steps: int = Field(default=_SCREEN.judge_steps, ge=1, le=100_000)
    pass_share: float = Field(default=_SCREEN.pass_share, gt=0.0, le=1.0)
    probation_lr: LearningRate = _SCREEN.probation_lr
    backoff_steps: int = Field(default=_SCREEN.backoff_steps, ge=0, le=10_000_000)
    contrast: bool = _SCREEN.contrast
    contrast_max: float = Field(default=_SCREEN.contrast_max, gt=0.0, le=100.0)
    contrast_gate: float = Field(default=_SCREEN.contrast_gate, gt=0.0, le=100.0)
    contrast_history: int = Field(default=_SCREEN.contrast_history, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _check(self) -> ScreenGuardSection:
        try:
            self.config()
        except ConfigurationError as exc:
            raise ValueError(f"controller.guard: {exc}") from None
        return self

    def config(self) -> ScreenConfig:
        return ScreenConfig(**self.model_dump(exclude={"kind"}))

    def build(self) -> Guard | None:
        return ScreenGuard(self.config())


GuardSection = Annotated[NoGuardSection | ZSkipGuardSection | ScreenGuardSection,
                         Field(discriminator="kind")]


# -- the policies ------------------------------------------------------------------------------
def _controller_fields_model() -> type[BaseModel]:
    # ControllerConfig is a plain dataclass; mirror its fields in a strict pydantic model so that
    # an override gets the same type checks as every other key of the file.
    hints = typing.get_type_hints(ControllerConfig)
    specs: dict[str, Any] = {
        f.name: (hints[f.name], f.default) for f in dataclasses.fields(ControllerConfig)
    }
    return create_model("ControllerFields", __config__=STRICT, **specs)


_ControllerFields = _controller_fields_model()
CONTROLLER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ControllerConfig))


class _PolicySectionBase(BaseModel):
    """What every method shares: the controller preset (and overrides) that computes φ, the
    run label, and the guard."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow", allow_inf_nan=False)
    preset: Literal["reference", "tinker"] = "tinker"
    label: str | None = Field(default=None, min_length=1, max_length=64,
                              pattern=r"^[A-Za-z0-9._-]+$")
    guard: GuardSection = NoGuardSection()

    @property
    def overrides(self) -> dict[str, Any]:
        """The ``ControllerConfig`` fields given on top of the preset."""
        return dict(self.model_extra or {})

    #: ControllerConfig fields this method sets on top of the preset (the file's win).
    config_defaults: ClassVar[dict[str, Any]] = {}

    def controller_config(self) -> ControllerConfig:
        """The preset with the method's defaults and the overrides applied (already validated
        when the scenario loaded)."""
        return ControllerConfig.preset(self.preset, **{**self.config_defaults, **self.overrides})

    def build_guards(self) -> list[Guard]:
        guard = self.guard.build()
        return [guard] if guard is not None else []

    @property
    def rollback_snapshots(self) -> SnapshotSection | None:
        """Mirror's stability snapshots, or None: they belong to the controller, the only
        policy with a Mirror mode that acts."""
        return None

    def _label(self, base: str) -> str:
        """``label`` if set, else ``base`` with the guard's kind: ``fixed-2e-3-zskip``."""
        if self.label:
            return self.label
        return base if self.guard.kind == "none" else f"{base}-{self.guard.kind}"

    @model_validator(mode="after")
    def _check_overrides(self) -> _PolicySectionBase:
        overrides = self.overrides
        try:
            _ControllerFields.model_validate(overrides)
        except ValidationError as exc:
            raise ValueError(_override_problem(exc, type(self))) from None
        try:
            self.controller_config()
        except ConfigurationError as exc:
            raise ValueError(f"controller: {exc} (preset {self.preset!r} with {overrides})"
                             ) from None
        return self


class SnapshotSection(BaseModel):
    """``[controller.snapshots]``: every > 0 keeps a stability snapshot every ``every`` steps
    while stable (the last ``keep``) and rolls back to the oldest on entering Mirror."""

    model_config = STRICT
    every: int = Field(default=0, ge=0, le=10_000_000)
    keep: int = Field(default=2, ge=1, le=1000)


class ControllerPolicySection(_PolicySectionBase):
    """``method = "seed"``: the seed's controller sets the LR of its mode, from the loss alone
    unless a stress or a guard is given."""

    method: Literal["seed"] = "seed"
    stress: Annotated[StressSection, Field(default_factory=EmaStressSection)]
    snapshots: SnapshotSection = Field(default_factory=SnapshotSection)

    #: The kinds a ``[controller.stress]`` / ``[controller.guard]`` table without ``kind`` has.
    default_kinds: ClassVar[dict[str, str]] = {"stress": "ema", "guard": "none"}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "stress" in data:
            data["stress"] = _stress_shorthand(data["stress"])
        for key, kind in cls.default_kinds.items():  # `--set controller.stress.gain=2` alone
            if isinstance(data.get(key), dict) and "kind" not in data[key]:
                data[key] = {"kind": kind, **data[key]}
        return data

    def build(self) -> LrPolicy:
        return UnifiedController(self.controller_config(), stress=self.stress.build())

    @property
    def rollback_snapshots(self) -> SnapshotSection | None:
        return self.snapshots

    def run_label(self) -> str:
        """Names runs and compare-table rows: ``seed``, ``seed-ratio``, ..."""
        return self._label("seed" if self.stress.kind == "ema" else f"seed-{self.stress.kind}")


class GuardedPolicySection(ControllerPolicySection):
    """``method = "guarded"`` (the default): the seed's controller on the scale-free stress,
    behind the screening guard, whose rejected share is the controller's external stress E_t
    (α_E = 0.8, so sustained rejection drives φ to Mirror while the guard protects), with no
    cooldown. Every part can be changed like the seed's method."""

    method: Literal["guarded"] = "guarded"  # type: ignore[assignment]
    stress: Annotated[StressSection, Field(default_factory=lambda: RatioStressSection(
        kind="ratio"))]
    guard: GuardSection = Field(default_factory=lambda: ScreenGuardSection(kind="screen"))
    config_defaults: ClassVar[dict[str, Any]] = {"alpha_e": 0.8, "cooldown": 0}
    default_kinds: ClassVar[dict[str, str]] = {"stress": "ratio", "guard": "screen"}

    def run_label(self) -> str:
        return self._label("guarded")

    def _label(self, base: str) -> str:
        return self.label or base


class FixedPolicySection(_PolicySectionBase):
    """``method = "fixed"``: the same ``lr`` every step (φ still computed and logged)."""

    method: Literal["fixed"]
    lr: LearningRate = 5e-4

    def build(self) -> LrPolicy:
        return FixedPolicy(self.lr, UnifiedController(self.controller_config()))

    def run_label(self) -> str:
        return self._label(f"fixed-{format_lr(self.lr)}")


class PlateauSection(BaseModel):
    """``[controller.plateau]``: PyTorch's ReduceLROnPlateau on the training loss."""

    model_config = STRICT
    factor: float = Field(default=0.5, gt=0.0, lt=1.0)
    patience: int = Field(default=50, ge=0, le=10_000_000)
    threshold: float = Field(default=1e-4, ge=0.0, le=1.0)
    cooldown: int = Field(default=0, ge=0, le=10_000_000)
    min_lr: float = Field(default=1e-5, ge=0.0, le=1.0)


class PlateauPolicySection(_PolicySectionBase):
    """``method = "plateau"``: ReduceLROnPlateau from ``lr`` (φ still computed and logged)."""

    method: Literal["plateau"]
    lr: LearningRate = 5e-4
    plateau: PlateauSection = Field(default_factory=PlateauSection)

    def build(self) -> LrPolicy:
        p = self.plateau
        rule = PlateauRule(self.lr, factor=p.factor, patience=p.patience,
                           threshold=p.threshold, cooldown=p.cooldown, min_lr=p.min_lr)
        return PlateauPolicy(rule, UnifiedController(self.controller_config()))

    def run_label(self) -> str:
        return self._label(f"plateau-{format_lr(self.lr)}")


ControllerSection = Annotated[
    GuardedPolicySection | ControllerPolicySection | FixedPolicySection | PlateauPolicySection,
    Field(discriminator="method"),
]



def _override_problem(exc: ValidationError, section: type[BaseModel]) -> str:
    err = exc.errors(include_url=False)[0]
    key = f"controller.{err['loc'][0]}"
    if err["type"] == "extra_forbidden":
        valid = [*section.model_fields, *CONTROLLER_FIELDS]
        close = difflib.get_close_matches(str(err["loc"][0]), valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"unknown key '{key}' — {hint}valid keys in [controller] with this method are "
            f"{', '.join(valid)}; remove it or fix the spelling"
        )
    return f"{key} = {err['input']!r}: {err['msg'].lower()} — fix the value"


if typing.TYPE_CHECKING:  # mypy checks that every member of each union keeps its contract

    def _contracts(stress: StressSection, guard: GuardSection, policy: ControllerSection
                   ) -> tuple[StressSectionContract, GuardSectionContract, PolicySectionContract]:
        return stress, guard, policy
