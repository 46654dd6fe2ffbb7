"""Builders: a validated scenario in, plain parts out (backend, controller, batch source, settings).

Components never see the scenario; the runner gets plain values (STYLE.md, habit 5). Heavy
backends are imported here lazily, so ``import ulora_remote`` needs neither torch nor tinker.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ulora_remote.backend import Example, TrainingBackend
from ulora_remote.control.controller import ControllerConfig, UnifiedController
from ulora_remote.errors import ConfigurationError, MissingExtraError
from ulora_remote.run.runner import RunSettings

__all__ = [
    "ScenarioSource",
    "build_backend",
    "build_controller",
    "build_settings",
    "build_source",
    "controller_overrides",
    "effective_lag",
    "method_label",
]

# Defaults by backend (DESIGN.md §3): local runs the seed's quick start, Tinker pipelines.
DEFAULT_LAG = {"local": 0, "tinker": 1}
_NOT_CONTROLLER_FIELDS = frozenset(
    {"method", "preset", "fixed_lr", "overrides", "stress", "label", "policy"}
)


class ScenarioSource:
    """The scenario's task and shock schedule as a ``BatchSource`` for the runner."""

    def __init__(self, scenario: Any) -> None:
        from ulora_remote.scenarios import PigLatinTask, Schedule

        if scenario.task != "pig-latin":
            raise ConfigurationError(
                f"task {scenario.task!r} has no runner support yet; use task = \"pig-latin\""
            )
        self._task = PigLatinTask(scenario.seed, scenario.eval.size)
        shocks = scenario.shocks
        windows = [tuple(w) for w in shocks.windows] if shocks is not None else []
        self._schedule = Schedule(windows)
        self._kind = shocks.kind if shocks is not None else None
        self._fraction = shocks.fraction if shocks is not None else 0.0
        self._batch_size = scenario.batch_size
        self._eval: list[Example] | None = None

    def batch(self, step: int) -> tuple[list[Example], bool]:
        if self._kind is not None and self._schedule.is_shock(step):
            return self._task.shock_batch(step, self._batch_size, self._kind, self._fraction), True
        return self._task.train_batch(step, self._batch_size), False

    def eval_examples(self) -> list[Example]:
        if self._eval is None:
            self._eval = list(self._task.eval_examples())
        return self._eval


def build_source(scenario: Any) -> Any:
    """The scenario's batch source: Pig Latin, or sentence pairs (``mrpc``, ``paraphrase``)."""
    if getattr(scenario, "task", "pig-latin") in ("mrpc", "paraphrase"):
        from ulora_remote.scenarios.mrpc import build_pair_source

        return build_pair_source(scenario)
    return ScenarioSource(scenario)


def controller_overrides(controller_section: Any) -> dict[str, Any]:
    """ControllerConfig fields set in the scenario's ``[controller]`` table (None = not set)."""
    data = _as_dict(controller_section)
    extra = dict(data.get("overrides") or {})
    known = {f.name for f in fields(ControllerConfig)}
    for key, value in data.items():
        if key not in _NOT_CONTROLLER_FIELDS and value is not None:
            extra[key] = value
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigurationError(
            f"controller.{unknown[0]} is not a controller option; valid: {sorted(known)}"
        )
    return extra


def build_controller(scenario: Any) -> Any:
    """The scenario's preset with its overrides, wrapped for the baselines and variants
    (``ulora_remote.control.policies.build_policy``). Raises ConfigurationError on a bad field."""
    from ulora_remote.control.policies import build_policy

    section = scenario.controller
    inner = UnifiedController.from_preset(section.preset, **controller_overrides(section))
    return build_policy(section, inner)


def effective_lag(scenario: Any) -> int:
    lag = getattr(scenario, "lag", None)
    return int(lag) if lag is not None else DEFAULT_LAG.get(scenario.backend.kind, 0)


def method_label(scenario: Any) -> str:
    """``controller`` or ``fixed-5e-4``: names runs and rows of the compare table."""
    from ulora_remote.run.console import format_lr

    c = scenario.controller
    if getattr(c, "label", None):
        return str(c.label)
    return "controller" if c.method == "controller" else f"{c.method}-{format_lr(c.fixed_lr)}"


def build_settings(scenario: Any, run_name: str, *, log_every: int = 25) -> RunSettings:
    c = scenario.controller
    return RunSettings(
        run_name=run_name,
        steps=scenario.steps,
        lag=effective_lag(scenario),
        warmup_steps=scenario.warmup_steps,
        warmup_lr=scenario.warmup_lr,
        fixed_lr=c.fixed_lr if c.method == "fixed" else None,
        optimizer=_as_dict(scenario.optimizer),
        eval_every=scenario.eval.every,
        eval_max_tokens=scenario.eval.max_tokens,
        checkpoint_every=scenario.checkpoint.every,
        log_every=log_every,
        # Rollback snapshots belong to the controller: only it has a Mirror mode that acts.
        snapshot_every=c.policy.snapshot_every if c.method == "controller" else 0,
        snapshot_keep=c.policy.snapshot_keep,
    )


def build_backend(scenario: Any, checkpoint_dir: Path) -> TrainingBackend:
    """The scenario's backend, imported lazily.

    Raises:
        MissingExtraError: the backend's extra is not installed (names the pip command).
        ConfigurationError: an unknown backend kind.
    """
    b = scenario.backend
    if b.kind == "local" and _uses_classifier(scenario):
        module = _import_backend("ulora_remote.backends.classify", "local", "torch")
        return module.ClassifierBackend(  # type: ignore[no-any-return]
            b.base_model, rank=b.rank, lora_alpha=b.lora_alpha, seed=scenario.seed,
            checkpoint_dir=checkpoint_dir,
        )
    if b.kind == "local":
        module = _import_backend("ulora_remote.backends.local", "local", "torch")
        # The built-in models' matrices are too small to split across threads: on the 2-core
        # machine under load a medium-model step took 0.025 s on 1 thread and 0.5 s on 2.
        # A Hugging Face model directory keeps torch's default.
        threads = 1 if b.base_model in ("small", "medium") else None
        return module.LocalBackend(  # type: ignore[no-any-return]
            b.base_model, rank=b.rank, lora_alpha=b.lora_alpha, seed=scenario.seed,
            checkpoint_dir=checkpoint_dir, threads=threads,
        )
    if b.kind == "tinker":
        module = _import_backend("ulora_remote.backends.tinker", "tinker", "tinker")
        options = {k: v for k, v in _as_dict(b).items()
                   if k in ("base_url", "tokenizer") and v is not None}
        return module.TinkerBackend(  # type: ignore[no-any-return]
            b.base_model, rank=b.rank, seed=scenario.seed, **options
        )
    raise ConfigurationError(f"backend.kind = {b.kind!r}: choose 'local' or 'tinker'")


def _uses_classifier(scenario: Any) -> bool:
    from ulora_remote.scenarios.mrpc import uses_classifier

    return uses_classifier(scenario)


def _import_backend(name: str, extra: str, dependency: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == dependency:
            raise MissingExtraError(extra, dependency) from exc
        raise


def _as_dict(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if isinstance(section, Mapping):
        return dict(section)
    dump = getattr(section, "model_dump", None)
    return dict(dump()) if callable(dump) else dict(vars(section))


def parse_seeds(text: str) -> Sequence[int]:
    """``"0,1,2"`` → (0, 1, 2). Raises ConfigurationError on anything else."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise ConfigurationError(f"--seeds {text!r}: give integers separated by commas") from exc
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigurationError(f"--seeds {text!r}: give one or more integers ≥ 0, e.g. 0,1,2")
    return seeds
