"""The multi-seed studies: every baseline and controller variant on the shock scenarios
(docs/design.md, "Recovery metrics"), and the guard's suite (docs/design.md, "Guards": ``--scenarios
guard-...``, methods seed, scale-free, zskip and guarded).

One call runs (or reuses) every run directory, then ``ulora_remote.study.report`` builds the
tables, tests and plot from those directories' own files. Layout::

    out/<scenario>/<condition>/<label>-s<seed>/     condition: "shock" or "noshock"

Two phases, because the z-skip baseline runs at the best fixed learning rate, which is only known
once the fixed runs exist: (1) the fixed LRs of ``baselines.fixed_lrs`` with shocks; the best is
the one with the lowest mean final clean loss; (2) everything else. Each phase is a sweep
(``ulora_remote.study.sweep``) with the same rule as ``ulora compare``: a finished run is reused
and an unfinished one resumed from its last checkpoint, so an interrupted study continues.

``concurrency`` runs go at once: worker processes (one torch thread each) on the local backend,
threads in this process on Tinker.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ulora_remote.errors import ConfigurationError
from ulora_remote.run.rundir import RunDir
from ulora_remote.study.sweep import RunSpec, run_sweep

__all__ = [
    "METHODS",
    "NO_SHOCK_METHODS",
    "RunSpec",
    "StudyPlan",
    "StudyRuns",
    "best_fixed_lr",
    "run_study",
    "study_command",
    "study_specs",
]

# Named variants (scenario overrides). The fixed LRs come from the scenario's baselines.
V2 = ("controller.cooldown=30", "controller.mirror_lock=true", "controller.derivative_gain=2.0")
METHODS: dict[str, tuple[str, ...]] = {
    "plateau": ('controller.method="plateau"', "controller.lr={top_lr}",
                "controller.plateau.min_lr={low_lr}"),
    "zskip": ('controller.method="fixed"', "controller.lr={best_lr}",
              'controller.guard.kind="zskip"'),
    "seed": ('controller.method="seed"',),
    "guarded": ('controller.method="guarded"',),
    "v1": ('controller.method="seed"', "controller.cooldown=0"),
    "v2": ('controller.method="seed"', *V2),
    "v2-snapshot": ('controller.method="seed"', *V2, "controller.snapshots.every=25"),
    "scale-free": ('controller.method="seed"', 'controller.stress="ratio"',
                   "controller.cooldown=0"),
    "v1-lag1": ('controller.method="seed"', "controller.cooldown=0", "lag=1"),
}
#: Methods also run without shocks, for the cost of control in normal training.
NO_SHOCK_METHODS: tuple[str, ...] = ("fixed", "plateau", "zskip", "v1", "v2", "scale-free")


@dataclass(frozen=True)
class StudyPlan:
    """What the study runs.

    Attributes:
        scenarios: shipped scenario names or TOML paths.
        seeds: seeds of every method.
        methods: labels of ``METHODS`` to run beside the fixed LRs.
        no_shock: labels (``"fixed"`` for every fixed LR) also run with no shock windows.
        overrides: applied to every run first (e.g. ``steps=300`` for a shorter study).
    """

    scenarios: tuple[str, ...] = ("pig-latin-shock", "pig-latin-v2")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = tuple(METHODS)
    no_shock: tuple[str, ...] = NO_SHOCK_METHODS
    overrides: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        unknown += sorted(set(self.no_shock) - set(METHODS) - {"fixed"})
        if unknown:
            raise ConfigurationError(
                f"unknown study method(s) {unknown}; choose from fixed, {', '.join(METHODS)}"
            )
        if len(self.seeds) < 2:
            raise ConfigurationError("a study needs at least 2 seeds for an interval")


def fixed_specs(plan: StudyPlan, out: Path, scenario: str, condition: str) -> list[RunSpec]:
    """The fixed-LR runs of one scenario and condition."""
    lrs = _fixed_lrs(plan, scenario)
    return [_spec(plan, out, scenario, condition, f"fixed-{_fmt(lr)}",
                  ('controller.method="fixed"', f"controller.lr={lr!r}"), seed)
            for lr in lrs for seed in plan.seeds]


def method_specs(plan: StudyPlan, out: Path, scenario: str, condition: str,
                 best_lr: float) -> list[RunSpec]:
    """The non-fixed runs of one scenario and condition (z-skip at ``best_lr``)."""
    lrs = _fixed_lrs(plan, scenario)
    names = plan.methods if condition == "shock" else [m for m in plan.no_shock if m != "fixed"]
    specs = []
    for name in names:
        template = METHODS[name]
        overrides = tuple(o.format(top_lr=repr(max(lrs)), low_lr=repr(min(lrs)),
                                   best_lr=repr(best_lr)) for o in template)
        specs += [_spec(plan, out, scenario, condition, name, overrides, seed)
                  for seed in plan.seeds]
    return specs


def _spec(plan: StudyPlan, out: Path, scenario: str, condition: str, label: str,
          method_overrides: tuple[str, ...], seed: int) -> RunSpec:
    shock = ("shocks.windows=[]",) if condition == "noshock" else ()
    overrides = (*plan.overrides, *shock, *method_overrides, f'controller.label="{label}"',
                 f"seed={seed}")
    run_dir = out / _stem(scenario) / condition / f"{label}-s{seed}"
    return RunSpec(scenario, label, seed, overrides, run_dir)


def _fixed_lrs(plan: StudyPlan, scenario: str) -> tuple[float, ...]:
    from ulora_remote.scenarios import load_scenario

    return tuple(load_scenario(scenario, plan.overrides).baselines.fixed_lrs)


def best_fixed_lr(run_dirs: Sequence[Path]) -> float:
    """The fixed LR whose runs have the lowest mean final clean loss (from summary.json)."""
    by_lr: dict[float, list[float]] = {}
    for path in run_dirs:
        rd = RunDir(path)
        summary, config = rd.read_summary(), rd.read_config()
        if summary is None:
            raise ConfigurationError(f"{path} is unfinished; run the study again to finish it")
        lr = float(config["scenario"]["controller"]["lr"])
        by_lr.setdefault(lr, []).append(float(summary["final"]["eval_loss"]))
    return min(by_lr, key=lambda lr: (sum(by_lr[lr]) / len(by_lr[lr]), lr))


@dataclass(frozen=True)
class StudyRuns:
    """The finished runs: ``specs[scenario][condition]`` and ``best_lr[scenario]``."""

    root: Path
    specs: dict[str, dict[str, list[RunSpec]]]
    best_lr: dict[str, float]


def run_study(plan: StudyPlan, out: str | Path, *, concurrency: int = 2,
              console: TextIO | None = None, jobs: int | None = None) -> StudyRuns:
    """Run (or reuse, or resume) every run of ``plan`` under ``out``.

    Args:
        concurrency: runs at once (worker processes locally, threads on Tinker).
        console: the terminal (stdout by default).
        jobs: the former name of ``concurrency`` (kept for scripts that pass it).

    Returns:
        The runs by scenario and condition, and each scenario's best fixed LR.

    Raises:
        ConfigurationError: a bad plan or scenario.
        BackendError: some runs failed (the others finished; the message says how to continue).
        KeyboardInterrupt: Ctrl-C; every run stays resumable and the continue command is printed.
    """
    root, log = Path(out), console or sys.stdout
    n = jobs if jobs is not None else concurrency
    again = study_command(plan, root, n)

    def sweep(specs: Sequence[RunSpec]) -> None:
        result = run_sweep(specs, concurrency=n, out=log, continue_command=again,
                           log_path=root / "sweep.log")
        result.raise_for_failures(again)

    fixed = {s: {c: fixed_specs(plan, root, s, c) for c in _conditions(plan)}
             for s in plan.scenarios}
    sweep([spec for by_c in fixed.values() for specs in by_c.values() for spec in specs])
    result: dict[str, dict[str, list[RunSpec]]] = {}
    best_lrs: dict[str, float] = {}
    later: list[RunSpec] = []
    for scenario in plan.scenarios:
        best = best_lrs[scenario] = best_fixed_lr([s.run_dir for s in fixed[scenario]["shock"]])
        result[scenario] = {}
        for condition in _conditions(plan):
            extra = method_specs(plan, root, scenario, condition, best)
            result[scenario][condition] = [*fixed[scenario].get(condition, []), *extra]
            later += extra
        print(f"study: {scenario}: best fixed LR {best!r} (lowest mean final clean loss)",
              file=log)
    sweep(later)
    return StudyRuns(root, result, best_lrs)


def study_specs(plan: StudyPlan, out: str | Path) -> list[RunSpec]:
    """Every run of the study, for a dry run: z-skip at the largest fixed LR where the best one
    is not known yet (the learning rate changes no request or token count)."""
    root, specs = Path(out), []
    for scenario in plan.scenarios:
        top = max(_fixed_lrs(plan, scenario))
        for condition in _conditions(plan):
            specs += fixed_specs(plan, root, scenario, condition)
            specs += method_specs(plan, root, scenario, condition, top)
    return specs


def study_command(plan: StudyPlan, out: Path, concurrency: int) -> str:
    """The ``benchmarks/study.py`` command that continues this study."""
    argv = ["python", "benchmarks/study.py", "--out", str(out), "--concurrency", str(concurrency),
            "--scenarios", ",".join(plan.scenarios), "--seeds", ",".join(map(str, plan.seeds)),
            "--methods", ",".join(plan.methods), "--no-shock", ",".join(plan.no_shock)]
    for override in plan.overrides:
        argv += ["--set", override]
    return shlex.join(argv)


def _conditions(plan: StudyPlan) -> tuple[str, ...]:
    return ("shock", "noshock") if plan.no_shock else ("shock",)


def _stem(scenario: str) -> str:
    return Path(scenario).stem


def _fmt(lr: float) -> str:
    from ulora_remote.run.console import format_lr

    return format_lr(lr)
