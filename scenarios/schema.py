"""The scenario schema: pydantic models of a scenario file (TOML), validated once at the edge.

A scenario composes one section per component; each component's section lives beside it and
builds its own object: ``[task]`` (the kinds listed in ``ulora_remote.scenarios.catalog``, plus
``.mix`` and ``.rules``), ``[backend]`` (``ulora_remote.backends.sections``), ``[controller]``
(``ulora_remote.control.sections``), ``[adapters]`` (``ulora_remote.control.adapters``). This
module adds the run-level keys and the cross-field rules (windows inside the run, the shock kind
and the evaluation size the task allows, the backend the task needs, warm-up and lag shorter
than the run); their messages start with the dotted key and end with the fix. ``loader.py`` adds
the file name and turns pydantic's errors into ``ConfigurationError``.

Every model is frozen, strict about types, forbids unknown keys (``[controller]`` also takes any
``ControllerConfig`` field as an override of its preset) and refuses ``inf``/``nan``. Arrays in
TOML arrive as lists; tuple fields accept them (``model_dump(mode="json")`` writes lists back),
so a dumped ``config.json`` validates again.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    Strict,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ulora_remote.backends.sections import BackendSection, LocalSection, default_lag
from ulora_remote.scenarios.catalog import PlainTaskSection
from ulora_remote.scenarios.jsonl import resolve_path
from ulora_remote.scenarios.mix import MixSection
from ulora_remote.scenarios.pig_latin import PigLatinSection
from ulora_remote.scenarios.rules import RulesSection
from ulora_remote.scenarios.shocks import FROM_FILE, Schedule

from ulora_remote.backend import AdamParams
from ulora_remote.control.adapters import AdaptersSection
from ulora_remote.control.sections import ControllerSection, GuardedPolicySection
from ulora_remote.sections import STRICT, LearningRate, Probability

__all__ = [
    "BaselinesSection",
    "CheckpointSection",
    "EvalSection",
    "OptimizerSection",
    "Scenario",
    "ShiftSection",
    "ShocksSection",
    "TaskSection",
]

Window = Annotated[tuple[StrictInt, StrictInt], Strict(False)]
#: A ``[task]`` section: a single-stream kind (the one list, ``scenarios/catalog.py``), or a
#: multi-task one.
TaskSection = Annotated[PlainTaskSection | MixSection | RulesSection, Field(discriminator="kind")]
MAX_STEPS = 10_000_000
MAX_LAG = 16
_DEFAULT_TAGS = (("task", "kind", "pig-latin"), ("backend", "kind", "local"),
                 ("controller", "method", "guarded"))


class ShocksSection(BaseModel):
    """``[shocks]``: what a shock batch does and when (windows ``[start, end)`` in steps).
    ``kind`` must be one the task supports (see ``ulora scenarios`` and docs/running.md), or
    ``"from-file"``: the corrupted examples are records of ``source``, a JSONL file of your own
    bad records (``source`` alone implies this kind; relative to the scenario file)."""

    model_config = STRICT
    kind: str = Field(default="random-letters", min_length=1)
    windows: Annotated[tuple[Window, ...], Strict(False)] = ()
    fraction: Probability = 1.0
    source: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _source_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("source") is not None and "kind" not in data:
            return {**data, "kind": FROM_FILE}
        return data

    @field_validator("source")
    @classmethod
    def _resolve(cls, path: str | None, info: ValidationInfo) -> str | None:
        return None if path is None else resolve_path(path, info)

    @model_validator(mode="after")
    def _check_source(self) -> ShocksSection:
        if self.kind == FROM_FILE and self.source is None:
            raise ValueError(f'shocks.kind = "{FROM_FILE}" takes its records from shocks.source; '
                             'set shocks.source = "noisy.jsonl" (a JSONL file of bad records)')
        if self.source is not None and self.kind != FROM_FILE:
            raise ValueError(f"shocks.source gives the shock records, but shocks.kind = "
                             f'{self.kind!r} corrupts the task\'s own; remove one, or set '
                             f'shocks.kind = "{FROM_FILE}"')
        return self


class ShiftSection(BaseModel):
    """``[shift]``: a lasting, learnable change of the data: from step ``start`` to the end the
    task follows ``rule`` (one of the task's shift rules, e.g. Pig Latin's ``"reversed"``), in
    training and in the clean evaluation, which also reports the old rule's exact match as
    ``retention``."""

    model_config = STRICT
    rule: str = Field(min_length=1)
    start: int = Field(ge=1, le=MAX_STEPS)


class EvalSection(BaseModel):
    """``[eval]``: evaluate at step 0, every ``every`` steps and at the end, on ``size``
    held-out examples (the task bounds it), generating at most ``max_tokens`` tokens."""

    model_config = STRICT
    every: int = Field(default=25, gt=0, le=MAX_STEPS)
    size: int = Field(default=64, gt=0, le=1_000_000)
    max_tokens: int = Field(default=24, gt=0, le=4096)


class OptimizerSection(BaseModel):
    """``[optimizer]``: AdamW parameters except the learning rate, which the policy sets."""

    model_config = STRICT
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    grad_clip_norm: float = Field(default=0.0, ge=0.0, le=1e6)

    def adam_params(self, lr: float) -> AdamParams:
        """This step's ``AdamParams`` at learning rate ``lr``."""
        return AdamParams(learning_rate=lr, **self.model_dump())


class BaselinesSection(BaseModel):
    """``[baselines]``: fixed learning rates that ``ulora compare`` runs beside the controller."""

    model_config = STRICT
    fixed_lrs: Annotated[tuple[LearningRate, ...], Strict(False)] = (2e-3, 5e-4, 1e-4)


class CheckpointSection(BaseModel):
    """``[checkpoint]``: save every ``every`` steps (0: only at step 0 and at the end)."""

    model_config = STRICT
    every: int = Field(default=100, ge=0, le=MAX_STEPS)


class Scenario(BaseModel):
    """A whole scenario file. ``lag`` absent means the backend's default (local 0, tinker 1);
    the resolved value is stored, so ``model_dump`` records the lag that was used.
    ``task = "pig-latin"`` is short for ``[task] kind = "pig-latin"``."""

    model_config = STRICT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = Field(default="", max_length=2000)
    task: TaskSection = Field(default_factory=PigLatinSection)
    steps: int = Field(gt=0, le=MAX_STEPS)
    batch_size: int = Field(default=8, gt=0, le=65_536)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    lag: int = Field(default=0, ge=0, le=MAX_LAG)
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    warmup_lr: LearningRate = 5e-4
    shocks: ShocksSection | None = None
    shift: ShiftSection | None = None
    eval: EvalSection = EvalSection()
    backend: BackendSection = Field(default_factory=LocalSection)
    controller: ControllerSection = Field(
        default_factory=lambda: GuardedPolicySection.model_validate({}))
    optimizer: OptimizerSection = OptimizerSection()
    baselines: BaselinesSection = BaselinesSection()
    checkpoint: CheckpointSection = CheckpointSection()
    adapters: AdaptersSection | None = None

    @property
    def schedule(self) -> Schedule:
        """The shock schedule (empty when the file has no ``[shocks]``)."""
        return Schedule(self.shocks.windows if self.shocks else ())

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("task"), str):
            data["task"] = {"kind": data["task"]}
        for key, tag, default in _DEFAULT_TAGS:  # a section without its kind gets the default
            if isinstance(data.get(key), dict) and tag not in data[key]:
                data[key] = {tag: default, **data[key]}
        if "lag" not in data:
            backend = data.get("backend")
            kind = backend.get("kind", "local") if isinstance(backend, dict) else "local"
            data["lag"] = default_lag(kind)
        return data

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Scenario:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps = {self.warmup_steps} must be below steps = {self.steps}; "
                "shorten the warm-up or lengthen the run"
            )
        if self.lag >= self.steps:
            raise ValueError(f"lag = {self.lag} must be below steps = {self.steps}; the LR of "
                             f"step t comes from the loss of step t - lag")
        self.backend.check_model(classifier=self.task.needs_classifier)
        if self.adapters is not None and self.adapters.mode != "shared" and \
                self.task.needs_classifier:
            raise ValueError(f"adapters.mode = {self.adapters.mode!r}: the local sequence "
                             "classifier holds one adapter; set adapters.mode = \"shared\"")
        limit = self.task.max_eval_size
        if limit is not None and self.eval.size > limit:
            raise ValueError(f"eval.size = {self.eval.size}: task {self.task.kind!r} has "
                             f"{limit} held-out examples; choose 1..{limit}")
        if self.shocks is not None:
            if self.shocks.kind not in (*self.task.shock_kinds, FROM_FILE):
                raise ValueError(
                    f"shocks.kind = {self.shocks.kind!r} does not apply to task "
                    f"{self.task.kind!r}; choose one of "
                    f"{', '.join((*self.task.shock_kinds, FROM_FILE))}"
                )
            _check_windows(self.shocks.windows, self.steps)
        if self.shift is not None:
            if self.shift.rule not in self.task.shift_rules:
                rules = ", ".join(self.task.shift_rules) or "none"
                raise ValueError(f"shift.rule = {self.shift.rule!r} is not a rule of task "
                                 f"{self.task.kind!r}; its shift rules: {rules}")
            if self.shift.start >= self.steps:
                raise ValueError(f"shift.start = {self.shift.start} must be below steps = "
                                 f"{self.steps}; move the shift inside the run")
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
