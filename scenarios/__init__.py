"""Tasks, shock generators, schedules and the shipped scenario files.

Installed as ``ulora_remote.scenarios``. The public surface::

    load_scenario(name_or_path, overrides=()) -> Scenario   # validated, frozen
    list_scenarios() -> [(name, description), ...]
    PigLatinTask(seed, eval_size)                           # a Task (ulora_remote.task)
    Schedule(windows).is_shock(step)
    ShockStream(task, batch_size=8, schedule=..., kind=...)  # the runner's BatchSource
"""

from ulora_remote.scenarios.loader import (
    DEFAULT_SCENARIO,
    list_scenarios,
    load_scenario,
    parse_override,
    shipped_scenarios,
    validate_scenario,
)
from ulora_remote.scenarios.pig_latin import (
    EVAL_POOL_SIZE,
    PigLatinTask,
    load_words,
    to_pig_latin,
)
from ulora_remote.scenarios.schema import (
    BaselinesSection,
    CheckpointSection,
    EvalSection,
    OptimizerSection,
    Scenario,
    ShocksSection,
    TaskSection,
)
from ulora_remote.scenarios.shocks import (
    SHOCK_KINDS,
    Schedule,
    ShockKind,
    ShockStream,
    corrupt_answer,
)

from ulora_remote.checkout import check_subpackage

check_subpackage("scenarios", __file__)  # one source tree (ulora_remote/checkout.py)

__all__ = [
    "DEFAULT_SCENARIO",
    "EVAL_POOL_SIZE",
    "SHOCK_KINDS",
    "BaselinesSection",
    "CheckpointSection",
    "EvalSection",
    "OptimizerSection",
    "PigLatinTask",
    "Scenario",
    "Schedule",
    "ShockKind",
    "ShockStream",
    "ShocksSection",
    "TaskSection",
    "corrupt_answer",
    "list_scenarios",
    "load_scenario",
    "load_words",
    "parse_override",
    "shipped_scenarios",
    "to_pig_latin",
    "validate_scenario",
]
