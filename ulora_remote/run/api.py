"""The Python API for script-driven runs: run a scenario, get its tables back as DataFrames.

A researcher's script::

    from ulora_remote import run_scenario

    result = run_scenario("pig-latin-shock", overrides=["steps=300", "shocks.windows=[[100,150]]"])
    print(result.summary["final"])
    print(result.steps[["step", "loss", "phi", "mode_name", "lr"]].tail())

``run_scenario`` writes the same run directory as ``ulora run`` and returns a ``RunResult``;
``load_run`` reads one back.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from ulora_remote.backend import TrainingBackend
from ulora_remote.errors import ConfigurationError
from ulora_remote.run.builders import RunParts, build_parts, method_label
from ulora_remote.run.location import safe_folder_name
from ulora_remote.run.rundir import RunDir
from ulora_remote.run.runlock import run_lock
from ulora_remote.run.runner import Runner
from ulora_remote.run.summary import write_report
from ulora_remote.scenarios.schema import Scenario

__all__ = ["RunResult", "default_run_dir", "load_run", "resume_run", "run_scenario"]


@dataclass(frozen=True)
class RunResult:
    """A run's tables and summary.

    ``steps``: one row a step (steps.csv); ``evals``: one row an evaluation (evals.csv);
    ``summary``: summary.json as a dict (None while the run is unfinished); ``config``:
    config.json; ``run_dir``: where the files are.
    """

    run_dir: Path
    steps: pd.DataFrame
    evals: pd.DataFrame
    summary: dict[str, Any] | None
    config: dict[str, Any]


def load_run(run_dir: str | Path) -> RunResult:
    """Read a run directory written by ``ulora run`` or ``run_scenario``.

    Raises:
        ConfigurationError: the directory holds no run (no config.json).
    """
    rd = RunDir(run_dir)
    config = rd.read_config()
    steps = pd.read_csv(rd.steps_path) if rd.steps_path.exists() else pd.DataFrame()
    evals = pd.read_csv(rd.evals_path) if rd.evals_path.exists() else pd.DataFrame()
    return RunResult(rd.path, steps, evals, rd.read_summary(), config)


def default_run_dir(scenario: Scenario, root: str | Path = "runs") -> Path:
    """``runs/<scenario>-<method>-s<seed>-<UTC time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    # A scenario name is free text: the folder stays one component inside root (no "../").
    name = safe_folder_name(f"{scenario.name}-{method_label(scenario)}")
    return Path(root) / f"{name}-s{scenario.seed}-{stamp}"


def run_scenario(
    scenario: Scenario | str | Path,
    *,
    backend: TrainingBackend | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    log_every: int = 25,
    console: TextIO | None = None,
) -> RunResult:
    """Run a scenario from step 0 and write its run directory.

    Args:
        scenario: a ``Scenario``, a shipped scenario's name, or a path to a TOML file.
        backend: a ready backend; by default the scenario's own (built lazily). Closed at the end.
        out: the run directory; default ``runs/<scenario>-<method>-s<seed>-<time>``.
        overrides: ``key=value`` strings applied before validation (a name or path only).
        force: overwrite a directory that already holds a run.
        log_every: console line cadence in steps (plus every mode switch).
        console: where log lines go (stdout by default).

    Returns:
        The finished run's tables and summary.

    Raises:
        ConfigurationError: an invalid scenario, or ``out`` already holds a run and not
            ``force`` (the message says which flag to use).
        BackendError: the backend failed.
    """
    scenario = _resolve(scenario, overrides)
    rd = RunDir(out if out is not None else default_run_dir(scenario))
    # Build everything that can fail on bad input (a missing extra, a model directory without a
    # tokenizer, a missing key) before the directory is touched: a failed start leaves no
    # half-made run behind, and --force deletes an old run only once the new one can start.
    rd.refuse_existing(force=force)
    parts = _build(scenario, rd, backend, log_every)
    try:
        rd.prepare_new(force=force)
        rd.write_config(_config_record(scenario))
    except BaseException:
        parts.backend.close()
        raise
    return _execute(parts, rd, resume=False, console=console)


def resume_run(
    run_dir: str | Path,
    *,
    backend: TrainingBackend | None = None,
    log_every: int = 25,
    console: TextIO | None = None,
) -> RunResult:
    """Continue an interrupted run from its last checkpoint (see ``ulora_remote.run.runner``).

    Raises:
        ConfigurationError: not a run directory, or the run already finished.
        RunDirError: another process is continuing this run right now (``runlock``).
    """
    from ulora_remote.scenarios import validate_scenario

    rd = RunDir(run_dir)
    config = rd.read_config()
    if rd.finished:
        raise ConfigurationError(
            f"{rd.path} holds a finished run; nothing to resume (use `ulora report {rd.path}` "
            "to redraw it, or `ulora run --force --out ...` to run it again)"
        )
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_lock(rd.path))  # one writer; checked before anything is read
        except BaseException:
            if backend is not None:
                backend.close()
            raise
        rd.prepare_resume()  # checks the checkpoint, the tables and the config before any build
        scenario = validate_scenario(config["scenario"], str(rd.config_path))
        return _execute(_build(scenario, rd, backend, log_every), rd, resume=True,
                        console=console)


def _resolve(scenario: Scenario | str | Path, overrides: Sequence[str]) -> Scenario:
    from ulora_remote.scenarios import load_scenario

    if isinstance(scenario, str | Path):
        return load_scenario(scenario, overrides)
    if overrides:
        raise ConfigurationError(
            "overrides apply to a scenario name or path; for a Scenario object use "
            "scenario.model_copy(update=...) or load_scenario(path, overrides)"
        )
    return scenario


def _build(scenario: Scenario, rd: RunDir, backend: TrainingBackend | None,
           log_every: int) -> RunParts:
    return build_parts(scenario, rd.checkpoint_prefix, rd.checkpoint_dir, backend=backend,
                       log_every=log_every)


def _execute(parts: RunParts, rd: RunDir, *, resume: bool, console: TextIO | None) -> RunResult:
    Runner(parts.backend, parts.policy, parts.guards, parts.source, parts.settings, rd,
           out=console, tasks=parts.tasks).run(resume=resume)
    write_report(rd)
    return load_run(rd.path)


def _config_record(scenario: Scenario) -> dict[str, Any]:
    return {
        "scenario": scenario.model_dump(mode="json"),
        "lag": scenario.lag,
        "warmup_steps": scenario.warmup_steps,
        "warmup_lr": scenario.warmup_lr,
        "method": method_label(scenario),
        "versions": _versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("ulora-remote", "torch", "transformers", "peft", "tinker"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
