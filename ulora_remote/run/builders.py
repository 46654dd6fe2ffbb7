"""Builders: a validated scenario in, plain parts out (backend, policy, guards, batch source,
settings).

Each part is built by its own config section (``scenario.task.build``,
``scenario.controller.build``, ``scenario.backend.build``); this module only wires them up, so
components never see the scenario and the runner gets plain values. Heavy backends are imported
by their section's ``build``, so ``import ulora_remote`` needs neither torch nor tinker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ulora_remote.backend import TrainingBackend
from ulora_remote.control.guard import Guard
from ulora_remote.control.policy import LrPolicy
from ulora_remote.control.task_signals import TaskSignals
from ulora_remote.errors import ConfigurationError
from ulora_remote.run.datacheck import check_records
from ulora_remote.run.multitask import TaskParts, check_routing, stream_tasks
from ulora_remote.run.steps import RunSettings
from ulora_remote.scenarios.records import read_shock_records
from ulora_remote.scenarios.schema import Scenario
from ulora_remote.scenarios.shocks import ShockStream

__all__ = [
    "RunParts",
    "build_backend",
    "build_parts",
    "build_settings",
    "build_source",
    "build_tasks",
    "method_label",
    "parse_seeds",
]


@dataclass(frozen=True)
class RunParts:
    """Everything the runner takes, built from one scenario."""

    settings: RunSettings
    policy: LrPolicy
    guards: list[Guard]
    source: ShockStream
    backend: TrainingBackend
    tasks: TaskParts | None = None


def build_parts(scenario: Scenario, run_name: str, checkpoint_dir: Path, *,
                backend: TrainingBackend | None = None, log_every: int = 25) -> RunParts:
    """Build the runner's parts; the backend last, since it is the costly one.

    Raises:
        ConfigurationError, MissingExtraError: a part cannot be built (bad data, missing extra).
    """
    settings = build_settings(scenario, run_name, log_every=log_every)
    policy = scenario.controller.build()
    guards = scenario.controller.build_guards()
    source = build_source(scenario)
    tasks = build_tasks(scenario, source)
    built = backend is None
    if backend is None:
        backend = build_backend(scenario, checkpoint_dir)
    try:  # records from data files must render and fit the model before anything is written
        check_records(source.records(), backend, scenario.eval.max_tokens)
        if tasks is not None:  # per-task adapters need a backend that holds them
            check_routing(tasks.switch.mode, stream_tasks(source), backend)
    except BaseException:
        if built:
            backend.close()
        raise
    return RunParts(settings, policy, guards, source, backend, tasks)


def build_tasks(scenario: Scenario, source: ShockStream) -> TaskParts | None:
    """The task signals and adapter switch of ``[adapters]`` (None without that section).

    Raises:
        ConfigurationError: per-task adapters asked for a stream with fewer than two tasks.
    """
    section = scenario.adapters
    if section is None:
        return None
    check_routing(section.mode, stream_tasks(source), None)
    config = scenario.controller.controller_config()
    return TaskParts(TaskSignals(section.signals_config()),
                     section.build_switch(config.theta0, config.theta1))


def build_source(scenario: Scenario) -> ShockStream:
    """The scenario's task with its shock schedule (loads or generates the task's data, and
    reads the file of a ``from-file`` shock)."""
    task = scenario.task.build(seed=scenario.seed, eval_size=scenario.eval.size)
    shocks, shift = scenario.shocks, scenario.shift
    shifted = None
    if shift is not None:
        shifted = (shift.start, scenario.task.build(seed=scenario.seed,
                                                    eval_size=scenario.eval.size,
                                                    rule=shift.rule))
    noisy = read_shock_records(shocks.source) if shocks is not None and shocks.source else ()
    return ShockStream(task, batch_size=scenario.batch_size, schedule=scenario.schedule,
                       kind=shocks.kind if shocks is not None else None,
                       fraction=shocks.fraction if shocks is not None else 1.0, shift=shifted,
                       noisy=noisy, seed=scenario.seed)


def build_backend(scenario: Scenario, checkpoint_dir: Path) -> TrainingBackend:
    """The scenario's backend. Raises MissingExtraError when its extra is not installed."""
    return scenario.backend.build(seed=scenario.seed, checkpoint_dir=checkpoint_dir,
                                  classifier=scenario.task.needs_classifier)


def build_settings(scenario: Scenario, run_name: str, *, log_every: int = 25) -> RunSettings:
    snapshots = scenario.controller.rollback_snapshots
    return RunSettings(
        run_name=run_name,
        steps=scenario.steps,
        lag=scenario.lag,
        warmup_steps=scenario.warmup_steps,
        warmup_lr=scenario.warmup_lr,
        optimizer=scenario.optimizer.model_dump(),
        eval_every=scenario.eval.every,
        eval_max_tokens=scenario.eval.max_tokens,
        checkpoint_every=scenario.checkpoint.every,
        log_every=log_every,
        snapshot_every=snapshots.every if snapshots is not None else 0,
        snapshot_keep=snapshots.keep if snapshots is not None else 2,
    )


def method_label(scenario: Scenario) -> str:
    """``controller`` or ``fixed-5e-4``: names runs and rows of the compare table."""
    return scenario.controller.run_label()


def parse_seeds(text: str) -> Sequence[int]:
    """``"0,1,2"`` → (0, 1, 2). Raises ConfigurationError on anything else."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise ConfigurationError(f"--seeds {text!r}: give integers separated by commas") from exc
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigurationError(f"--seeds {text!r}: give one or more integers ≥ 0, e.g. 0,1,2")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigurationError(
            f"--seeds {text!r}: seed {', '.join(map(str, twice))} is given twice; give each "
            "seed once")
    return seeds
