"""``[task] kind = "mix"``: several tasks of any kind in one stream, mixed by weight.

    [task]
    kind = "mix"
    [task.parts.pig]                  # a part is any task section but a mix
    kind = "pig-latin"
    [task.parts.mine]
    kind = "jsonl"
    train = "data/mine.jsonl"
    [task.weights]                    # default: equal weights
    pig = 1.0
    mine = 3.0

The stream and its per-task evaluation are ``ulora_remote.scenarios.mixing.MixTask``'s;
``eval.size`` applies to each part. A JSONL file whose records carry ``task`` fields is already a
mix (``kind = "jsonl"`` with ``weights``), so it cannot be a part.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator
from ulora_remote.scenarios.catalog import PlainTaskSection
from ulora_remote.scenarios.jsonl import TaskName
from ulora_remote.scenarios.mixing import MixTask

from ulora_remote.errors import ConfigurationError
from ulora_remote.sections import STRICT
from ulora_remote.task import Task

__all__ = ["MixSection", "PartSection"]

#: The task sections a mix may hold: every single-stream kind (``scenarios/catalog.py``).
PartSection = Annotated[PlainTaskSection, Field(discriminator="kind")]


class MixSection(BaseModel):
    """``[task] kind = "mix"``: ``parts`` (name -> task section), ``weights`` (name -> ≥ 0;
    default equal)."""

    model_config = STRICT
    kind: Literal["mix"]
    parts: dict[TaskName, PartSection] = Field(min_length=1, max_length=64)
    weights: dict[TaskName, Annotated[float, Field(ge=0.0, le=1e6)]] = Field(
        default_factory=dict)
    shift_rules: ClassVar[tuple[str, ...]] = ()
    needs_classifier: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check(self) -> MixSection:
        if self.weights and set(self.weights) != set(self.parts):
            raise ValueError(f"task.weights names {sorted(self.weights)} but the parts are "
                             f"{sorted(self.parts)}; give one weight per part")
        if self.weights and not any(self.weights.values()):
            raise ValueError("task.weights are all 0; give at least one part a weight above 0")
        for name, part in self.parts.items():
            if part.needs_classifier:
                raise ValueError(f"task.parts.{name} trains the sequence classifier, but a mix "
                                 "trains one causal LM; set its format = \"completion\"")
        return self

    @property
    def max_eval_size(self) -> int | None:
        """The smallest bound of the parts on ``eval.size`` (None: none bounds it)."""
        limits = [p.max_eval_size for p in self.parts.values() if p.max_eval_size is not None]
        return min(limits) if limits else None

    @property
    def shock_kinds(self) -> tuple[str, ...]:
        """The shock kinds every trained part offers."""
        trained = [p for n, p in self.parts.items() if self._weights()[n] > 0]
        return tuple(k for k in trained[0].shock_kinds
                     if all(k in p.shock_kinds for p in trained))

    def _weights(self) -> dict[str, float]:
        return dict(self.weights) or dict.fromkeys(self.parts, 1.0)

    def build(self, *, seed: int, eval_size: int, rule: str | None = None) -> MixTask:
        """Build every part, then the mix.

        Raises:
            ConfigurationError: a JSONL part whose records carry task fields; or as each part.
        """
        parts: dict[str, Task] = {}
        for name, section in self.parts.items():
            parts[name] = section.build(seed=seed, eval_size=eval_size)
            if isinstance(parts[name], MixTask):
                raise ConfigurationError(
                    f"task.parts.{name}: its records carry task fields, so it is a mix itself; "
                    "use it as the [task] (kind = \"jsonl\" with weights), or drop the fields")
        return MixTask(parts, self._weights(), seed)
