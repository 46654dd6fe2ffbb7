"""The one list of task kinds, and what every ``[task]`` section provides.

A new task adds its section to ``PlainTaskSection``: the scenario schema's ``[task]`` and a
mix's parts (``[task.parts.NAME]``) both read it. The multi-task kinds (``mix``, ``rules``)
are added by the schema only: a mix cannot hold them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeAlias

from ulora_remote.scenarios.jsonl import JsonlSection
from ulora_remote.scenarios.mrpc import PairsSection
from ulora_remote.scenarios.pig_latin import PigLatinSection

from ulora_remote.task import Task

__all__ = ["PlainTaskSection", "TaskSectionContract"]

#: Every single-stream task kind: add a new task's section here.
PlainTaskSection: TypeAlias = PigLatinSection | PairsSection | JsonlSection


class TaskSectionContract(Protocol):
    """What every ``[task]`` section provides (a pydantic model with a ``kind`` literal).

    ``max_eval_size``: the most clean evaluation examples the task has (None: no bound).
    ``shock_kinds``: the ``[shocks] kind`` values it takes (``"from-file"`` is always allowed).
    ``shift_rules``: the ``[shift] rule`` values it takes (empty: no ``[shift]``).
    ``needs_classifier``: it trains the local sequence classifier, not a causal LM.
    """

    @property
    def kind(self) -> str: ...

    @property
    def max_eval_size(self) -> int | None: ...

    @property
    def shock_kinds(self) -> tuple[str, ...]: ...

    @property
    def shift_rules(self) -> tuple[str, ...]: ...

    @property
    def needs_classifier(self) -> bool: ...

    def build(self, *, seed: int, eval_size: int) -> Task:
        """The task; raises ConfigurationError when its data cannot be loaded."""
        ...


if TYPE_CHECKING:  # mypy checks that every member of the list keeps the contract

    def _contract(section: PlainTaskSection) -> TaskSectionContract:
        return section
