"""``ulora compare``: the controller and each fixed-LR baseline over several seeds, one table.

Every run is an ordinary run directory under ``out/<method>-s<seed>``. A finished run found
there is reused (never overwritten without ``force``) and an unfinished one is resumed, so an
interrupted comparison continues where it stopped. The table is computed from the runs' own files
(evals.csv, through ``ulora_remote.run.summary``), not from anything kept in memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from ulora_remote.run.builders import method_label
from ulora_remote.run.rundir import RunDir
from ulora_remote.run.summary import METRIC_NAMES, build_summary, run_metrics_rows

__all__ = ["CompareTable", "compare_runs", "compare_scenario"]


@dataclass(frozen=True)
class CompareTable:
    """``per_run``: one row per (method, seed, window, metric); ``table``: mean and 95% interval
    per (method, window, metric); the files they were written to."""

    per_run: pd.DataFrame
    table: pd.DataFrame
    csv_path: Path
    markdown_path: Path


def compare_scenario(
    scenario: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    console: TextIO | None = None,
) -> CompareTable:
    """Run the guarded controller, the seed's controller and ``baselines.fixed_lrs`` × ``seeds``,
    then tabulate.

    Args:
        scenario: a shipped scenario name or a TOML path.
        seeds: the seeds; each run overrides the scenario's ``seed``.
        out: where the runs and compare.csv / compare.md go; default ``runs/compare-<name>-<time>``.
        overrides: ``key=value`` strings applied to every run.
        force: run again over finished runs.
        console: where the runs' log lines go.

    Raises:
        ConfigurationError: an invalid scenario or override.
    """
    from ulora_remote.run.api import resume_run, run_scenario
    from ulora_remote.scenarios import load_scenario

    base = load_scenario(scenario, overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = Path(out) if out is not None else Path("runs") / f"compare-{base.name}-{stamp}"
    run_dirs = []
    for method_overrides in _methods(base):
        for seed in seeds:
            run_overrides = [*overrides, *method_overrides, f"seed={seed}"]
            label = method_label(load_scenario(scenario, run_overrides))
            rd = RunDir(root / f"{label}-s{seed}")
            if rd.finished and not force:
                pass  # reuse: computed from its files below
            elif rd.started and not force:
                resume_run(rd.path, console=console)
            else:
                run_scenario(scenario, out=rd.path, overrides=run_overrides, force=force,
                             console=console)
            run_dirs.append(rd.path)
    return compare_runs(run_dirs, root)


def _methods(base: Any) -> list[list[str]]:
    methods = [['controller.method="guarded"'], ['controller.method="seed"']]
    for lr in base.baselines.fixed_lrs:
        methods.append(['controller.method="fixed"', f"controller.lr={lr!r}"])
    return methods


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path) -> CompareTable:
    """Tabulate finished runs: per-run metrics and their mean with a 95% interval by method.

    Writes ``out/compare.csv`` (the aggregated table) and ``out/compare.md``.
    """
    from ulora_remote.study.stats import summarize

    rows: list[dict[str, Any]] = []
    for path in run_dirs:
        rows.extend(run_metrics_rows(build_summary(RunDir(path))))
    per_run = pd.DataFrame(rows, columns=["method", "seed", "window", "metric", "value"])
    groups = []
    for (method, window, metric), g in per_run.groupby(["method", "window", "metric"], sort=False):
        values = [float(v) for v in g["value"]]
        mean, low, high = summarize(values)  # NaN values (undefined for a run) are left out
        n = sum(not math.isnan(v) for v in values)
        groups.append({"method": method, "window": window, "metric": metric, "n": n,
                       "mean": mean, "ci_low": low, "ci_high": high})
    table = pd.DataFrame(groups, columns=["method", "window", "metric", "n", "mean", "ci_low",
                                          "ci_high"])
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    per_run.to_csv(root / "compare_runs.csv", index=False)
    csv_path, md_path = root / "compare.csv", root / "compare.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(_markdown(table), encoding="utf-8")
    return CompareTable(per_run, table, csv_path, md_path)


def _markdown(table: pd.DataFrame) -> str:
    """One Markdown table per window: metrics as rows, methods as columns, ``mean [lo, hi]``."""
    parts = []
    for window, g in table.groupby("window", sort=False):
        methods = list(dict.fromkeys(g["method"]))
        parts.append(f"### {window}\n")
        parts.append("| metric | " + " | ".join(methods) + " |")
        parts.append("|---|" + "---|" * len(methods))
        for metric in [m for m in METRIC_NAMES if m in set(g["metric"])]:
            cells = []
            for method in methods:
                r = g[(g["method"] == method) & (g["metric"] == metric)].iloc[0]
                cells.append(
                    f"{r['mean']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}] (n={r['n']})"
                )
            parts.append(f"| {metric} | " + " | ".join(cells) + " |")
        parts.append("")
    parts.append("Mean over seeds with a 95% interval; overlapping intervals mean the difference "
                 "is not significant at this number of seeds.")
    return "\n".join(parts) + "\n"
