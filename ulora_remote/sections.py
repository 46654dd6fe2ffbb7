"""Shared pieces of the scenario's config sections (pydantic, validated once at the edge).

Every section is a frozen pydantic model with ``STRICT``: types are strict (a quoted ``"700"`` is
not a step count), unknown keys are refused, and ``inf``/``nan`` are refused in every float
field. Each component's section lives beside the component (``ulora_remote.control.sections``,
``ulora_remote.scenarios.pig_latin``, ``ulora_remote.backends.sections``, ...) and builds its
own object; ``ulora_remote.scenarios.schema`` only composes them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

__all__ = ["STRICT", "LearningRate", "Probability"]

STRICT = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

#: A learning rate: finite, > 0 and at most 1 (larger rates only destroy a LoRA adapter).
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
#: A share in (0, 1].
Probability = Annotated[float, Field(gt=0.0, le=1.0)]
