"""The scenario schema: pydantic models of a scenario file (TOML), validated once at the edge.

Every model is frozen, strict about types (a quoted ``"700"`` is not a step count) and forbids
unknown keys, except ``[controller]``, which also takes any ``ControllerConfig`` field as an
override of its preset. Cross-field rules (windows inside the run and not overlapping, warm-up
shorter than the run, backend-specific options) are checked on the whole ``Scenario``; their
messages start with the dotted key and end with the fix. ``loader.py`` adds the file name and
turns pydantic's errors into ``ConfigurationError``.

Arrays in TOML arrive as lists; fields that are tuples here accept them (and
``model_dump(mode="json")`` writes lists back), so a dumped ``config.json`` validates again.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    ValidationError,
    create_model,
    model_validator,
)
from ulora_remote.scenarios.mrpc import DataSection, check_pair_task, uses_classifier
from ulora_remote.scenarios.pig_latin import EVAL_POOL_SIZE
from ulora_remote.scenarios.shocks import Schedule

from ulora_remote.backend import AdamParams
from ulora_remote.control.controller import ControllerConfig
from ulora_remote.errors import ConfigurationError

__all__ = [
    "BackendSection",
    "BaselinesSection",
    "CheckpointSection",
    "ControllerSection",
    "EvalSection",
    "OptimizerSection",
    "PolicySection",
    "Scenario",
    "ShocksSection",
]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
Window = Annotated[tuple[StrictInt, StrictInt], Strict(False)]
BUILTIN_MODELS = ("small", "medium")
DEFAULT_LAG = {"local": 0, "tinker": 1}
# The word-corrupting kinds of shocks.py, plus the label flip of the sentence-pair tasks (mrpc.py);
# spelled out so that type checkers see the values (a test keeps it equal to SHOCK_KINDS + 1).
AnyShockKind = Literal["random-letters", "reversed", "swapped-answer", "flipped-label"]


class ShocksSection(BaseModel):
    """``[shocks]``: what a shock batch does and when (windows ``[start, end)`` in steps)."""

    model_config = _STRICT
    kind: AnyShockKind = "random-letters"
    windows: Annotated[tuple[Window, ...], Strict(False)] = ()
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)


class EvalSection(BaseModel):
    """``[eval]``: evaluate at step 0, every ``every`` steps and at the end, on ``size`` words."""

    model_config = _STRICT
    every: int = Field(default=25, gt=0)
    size: int = Field(default=64, gt=0, le=EVAL_POOL_SIZE)
    max_tokens: int = Field(default=24, gt=0)


class BackendSection(BaseModel):
    """``[backend]``: where training runs. ``base_url`` and ``tokenizer`` are Tinker's only (an
    error on the local backend); Tinker ignores ``lora_alpha`` (it fixes its own scaling), which
    is not an error so that ``--set backend.kind=tinker`` works on a local scenario file."""

    model_config = _STRICT
    kind: Literal["local", "tinker"] = "local"
    base_model: str = "medium"
    rank: int = Field(default=8, gt=0)
    lora_alpha: float = Field(default=16.0, gt=0.0)
    base_url: str | None = None
    tokenizer: str | None = None


class PolicySection(BaseModel):
    """``[controller.policy]``: options of the baselines and variants
    (``ulora_remote.control.policies``, ``ulora_remote.control.stress``). ``plateau_*``:
    PyTorch's ReduceLROnPlateau rule on the training loss, starting at ``controller.fixed_lr``;
    ``zskip_*``: skip a batch whose screened loss is more than z σ above recent accepted ones;
    ``ratio_*``: the scale-free stress of ``controller.stress = "ratio"``; ``snapshot_every`` > 0:
    keep stability snapshots and roll back on entering Mirror (method "controller" only)."""

    model_config = _STRICT
    plateau_factor: float = Field(default=0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(default=50, ge=0)
    plateau_threshold: float = Field(default=1e-4, ge=0.0)
    plateau_cooldown: int = Field(default=0, ge=0)
    plateau_min_lr: float = Field(default=1e-5, ge=0.0)
    zskip_z: float = Field(default=3.0, gt=0.0)
    zskip_window: int = Field(default=50, ge=2)
    zskip_min_history: int = Field(default=20, ge=2)
    ratio_fast_beta: float = Field(default=0.9, gt=0.0, lt=1.0)
    ratio_slow_beta: float = Field(default=0.99, gt=0.0, lt=1.0)
    ratio_gain: float = Field(default=1.0, gt=0.0)
    ratio_slow_clip: float = Field(default=1.5, ge=1.0)
    snapshot_every: int = Field(default=0, ge=0)
    snapshot_keep: int = Field(default=2, ge=1)


class ControllerSection(BaseModel):
    """``[controller]``: the method, the preset, and any ``ControllerConfig`` field as an override
    (``cooldown = 0``). Overrides are kept as extra keys, so a dump lists them beside the preset.
    ``method``: "controller", "fixed" (``fixed_lr``), "plateau" (ReduceLROnPlateau from
    ``fixed_lr``) or "zskip" (``fixed_lr`` with loss z-score skipping); ``stress``: "ema" (Ê/(1+Ê))
    or "ratio" (scale-free); ``label`` names the method in run names and compare tables."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")
    method: Literal["controller", "fixed", "plateau", "zskip"] = "controller"
    preset: Literal["reference", "tinker"] = "tinker"
    fixed_lr: float = Field(default=5e-4, gt=0.0)
    stress: Literal["ema", "ratio"] = "ema"
    label: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9._+-]+$")
    policy: PolicySection = PolicySection()

    @property
    def overrides(self) -> dict[str, Any]:
        """The ``ControllerConfig`` fields given on top of the preset."""
        return dict(self.model_extra or {})

    def controller_config(self) -> ControllerConfig:
        """The preset with the overrides applied (already validated when the scenario loaded)."""
        return ControllerConfig.preset(self.preset, **self.overrides)

    @model_validator(mode="after")
    def _check_overrides(self) -> ControllerSection:
        overrides = self.overrides
        try:
            _ControllerFields.model_validate(overrides)
        except ValidationError as exc:
            raise ValueError(_override_problem(exc)) from None
        try:
            self.controller_config()
        except ConfigurationError as exc:
            raise ValueError(
                f"controller: {exc} (preset {self.preset!r} with {overrides})"
            ) from None
        return self


def _controller_fields_model() -> type[BaseModel]:
    # ControllerConfig is a plain dataclass; mirror its fields in a strict pydantic model so that
    # an override gets the same type checks as every other key of the file.
    hints = typing.get_type_hints(ControllerConfig)
    specs: dict[str, Any] = {
        f.name: (hints[f.name], f.default) for f in dataclasses.fields(ControllerConfig)
    }
    return create_model("ControllerFields", __config__=_STRICT, **specs)


_ControllerFields = _controller_fields_model()
CONTROLLER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ControllerConfig))


def _override_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    key = f"controller.{err['loc'][0]}"
    if err["type"] == "extra_forbidden":
        valid = ["method", "preset", "fixed_lr", "stress", "label", "policy", *CONTROLLER_FIELDS]
        close = difflib.get_close_matches(str(err["loc"][0]), valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"unknown key '{key}' — {hint}valid keys in [controller] are {', '.join(valid)}; "
            "remove it or fix the spelling"
        )
    return f"{key} = {err['input']!r}: {err['msg'].lower()} — fix the value"


class OptimizerSection(BaseModel):
    """``[optimizer]``: AdamW parameters except the learning rate, which the controller sets."""

    model_config = _STRICT
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    grad_clip_norm: float = Field(default=0.0, ge=0.0)

    def adam_params(self, lr: float) -> AdamParams:
        """This step's ``AdamParams`` at learning rate ``lr``."""
        return AdamParams(learning_rate=lr, **self.model_dump())


class BaselinesSection(BaseModel):
    """``[baselines]``: fixed learning rates that ``ulora compare`` runs beside the controller."""

    model_config = _STRICT
    fixed_lrs: Annotated[tuple[Annotated[float, Field(gt=0.0)], ...], Strict(False)] = (
        2e-3,
        5e-4,
        1e-4,
    )


class CheckpointSection(BaseModel):
    """``[checkpoint]``: save every ``every`` steps (0: the runner's minimum)."""

    model_config = _STRICT
    every: int = Field(default=100, ge=0)


class Scenario(BaseModel):
    """A whole scenario file. ``lag`` absent means the backend's default (local 0, tinker 1);
    the resolved value is stored, so ``model_dump`` records the lag that was used."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    description: str = ""
    task: Literal["pig-latin", "mrpc", "paraphrase"] = "pig-latin"
    steps: int = Field(gt=0)
    batch_size: int = Field(default=8, gt=0)
    seed: int = Field(default=0, ge=0)
    lag: int = Field(default=0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    warmup_lr: float = Field(default=5e-4, gt=0.0)
    shocks: ShocksSection | None = None
    eval: EvalSection = EvalSection()
    backend: BackendSection = BackendSection()
    controller: ControllerSection = ControllerSection()
    optimizer: OptimizerSection = OptimizerSection()
    baselines: BaselinesSection = BaselinesSection()
    checkpoint: CheckpointSection = CheckpointSection()
    data: DataSection | None = None  # the sentence-pair tasks (scenarios/mrpc.py)

    @property
    def schedule(self) -> Schedule:
        """The shock schedule (empty when the file has no ``[shocks]``)."""
        return Schedule(self.shocks.windows if self.shocks else ())

    @model_validator(mode="before")
    @classmethod
    def _default_lag(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lag" not in data:
            backend = data.get("backend")
            kind = backend.get("kind", "local") if isinstance(backend, dict) else "local"
            data = {**data, "lag": DEFAULT_LAG.get(kind, 0)}
        return data

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Scenario:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps = {self.warmup_steps} must be below steps = {self.steps}; "
                "shorten the warm-up or lengthen the run"
            )
        if self.shocks is not None:
            _check_windows(self.shocks.windows, self.steps)
        _check_backend(self.backend, classifier=uses_classifier(self))
        check_pair_task(self)
        return self


def _check_windows(windows: tuple[tuple[int, int], ...], steps: int) -> None:
    for i, (start, end) in enumerate(windows):
        where = f"shocks.windows[{i}] = [{start}, {end}]"
        if start >= end:
            raise ValueError(f"{where}: start must be below end (windows are [start, end))")
        if start < 0 or end > steps:
            raise ValueError(
                f"{where} lies outside the run [0, {steps}]; move it inside or raise steps"
            )
    for i, (start, end) in enumerate(windows):
        for j, (other_start, other_end) in enumerate(windows[:i]):
            if start < other_end and other_start < end:
                raise ValueError(
                    f"shocks.windows[{i}] = [{start}, {end}] overlaps "
                    f"shocks.windows[{j}] = [{other_start}, {other_end}]; "
                    "windows must not overlap — move or merge them"
                )


def _check_backend(backend: BackendSection, *, classifier: bool = False) -> None:
    if backend.kind == "local":
        for key in ("base_url", "tokenizer"):
            if getattr(backend, key) is not None:
                raise ValueError(
                    f"backend.{key} is a Tinker option, but backend.kind = 'local'; "
                    f"remove backend.{key} or set backend.kind = 'tinker'"
                )
        model = backend.base_model
        if classifier:  # the classifier backend also takes hub names and checks them itself
            return
        if model not in BUILTIN_MODELS and not Path(model).expanduser().is_dir():
            raise ValueError(
                f"backend.base_model = {model!r} is neither a built-in model "
                f"({', '.join(BUILTIN_MODELS)}) nor a local model directory; pick one of those "
                "or set backend.kind = 'tinker' for a hosted model"
            )
