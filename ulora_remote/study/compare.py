"""``ulora compare``: the controller and each fixed-LR baseline over several seeds, one table.

Every run is an ordinary run directory under ``out/<method>-s<seed>``, run as a sweep
(``ulora_remote.study.sweep``): a finished run found there is reused (never overwritten without
``force``) and an unfinished one is resumed, so an interrupted comparison continues where it
stopped; ``concurrency`` runs go at once. The table is computed from the runs' own files
(evals.csv, through ``ulora_remote.run.summary``), not from anything kept in memory.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from ulora_remote.errors import RunDirError
from ulora_remote.run.builders import method_label
from ulora_remote.run.rundir import RunDir
from ulora_remote.run.summary import METRIC_NAMES, build_summary, run_metrics_rows
from ulora_remote.study.sweep import RunSpec, run_sweep

__all__ = ["CompareTable", "compare_command", "compare_runs", "compare_scenario", "compare_specs"]


@dataclass(frozen=True)
class CompareTable:
    """``per_run``: one row per (method, seed, window, metric); ``table``: mean and 95% interval
    per (method, window, metric); the files they were written to."""

    per_run: pd.DataFrame
    table: pd.DataFrame
    csv_path: Path
    markdown_path: Path


def compare_specs(
    scenario: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Path, list[RunSpec]]:
    """The runs of a comparison: ``(out, one RunSpec per method and seed)``.

    Raises:
        ConfigurationError: an invalid scenario or override.
    """
    from ulora_remote.scenarios import load_scenario

    base = load_scenario(scenario, overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = Path(out) if out is not None else Path("runs") / f"compare-{base.name}-{stamp}"
    specs = []
    for method_overrides in _methods(base):
        for seed in seeds:
            run_overrides = (*overrides, *method_overrides, f"seed={seed}")
            label = method_label(load_scenario(scenario, run_overrides))
            specs.append(RunSpec(str(scenario), label, seed, run_overrides,
                                 root / f"{label}-s{seed}"))
    return root, specs


def compare_command(scenario: str | Path, seeds: Sequence[int], out: Path,
                    overrides: Sequence[str] = (), concurrency: int = 1) -> str:
    """The ``ulora compare`` command that continues this comparison (never with --force)."""
    argv = ["ulora", "compare", str(scenario), "--seeds", ",".join(map(str, seeds)),
            "--out", str(out)]
    if concurrency != 1:
        argv += ["--concurrency", str(concurrency)]
    for override in overrides:
        argv += ["--set", override]
    return shlex.join(argv)


def compare_scenario(
    scenario: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    console: TextIO | None = None,
    concurrency: int = 1,
) -> CompareTable:
    """Run the guarded controller, the seed's controller and ``baselines.fixed_lrs`` × ``seeds``
    as one sweep, then tabulate.

    Args:
        scenario: a shipped scenario name or a TOML path.
        seeds: the seeds; each run overrides the scenario's ``seed``.
        out: where the runs and compare.csv / compare.md go; default ``runs/compare-<name>-<time>``.
        overrides: ``key=value`` strings applied to every run.
        force: run every run again from step 0.
        console: the terminal (stdout by default): progress, or the runs' log lines when
            ``concurrency`` is 1.
        concurrency: runs at once (threads on Tinker, worker processes on the local backend).

    Raises:
        ConfigurationError: an invalid scenario or override.
        BackendError: some runs failed (the others finished; the message says how to continue).
        KeyboardInterrupt: Ctrl-C; every run stays resumable and the continue command is printed.
    """
    root, specs = compare_specs(scenario, seeds=seeds, out=out, overrides=overrides)
    refuse_foreign_tables(root, force=force)  # before any run: nothing of the user's is lost
    again = compare_command(scenario, seeds, root, overrides, concurrency)
    result = run_sweep(specs, concurrency=concurrency, force=force, out=console,
                       continue_command=again, log_path=root / "sweep.log")
    result.raise_for_failures(again)
    return compare_runs([s.run_dir for s in specs], root)


def _methods(base: Any) -> list[list[str]]:
    methods = [['controller.method="guarded"'], ['controller.method="seed"']]
    for lr in base.baselines.fixed_lrs:
        methods.append(['controller.method="fixed"', f"controller.lr={lr!r}"])
    return methods


_MD_MARK = "<!-- written by `ulora compare`; rewritten by every compare into this folder -->"
_MD_TAIL = "Mean over seeds with a 95% interval"  # in every compare.md, marked or older
_HEADERS = {"compare.csv": "method,window,metric,n,mean,ci_low,ci_high",
            "compare_runs.csv": "method,seed,window,metric,value"}


def _ours(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if path.name == "compare.md":
        return text.startswith(_MD_MARK) or _MD_TAIL in text
    return text.split("\n", 1)[0].strip() == _HEADERS[path.name]


def refuse_foreign_tables(root: Path, *, force: bool) -> None:
    """Refuse to write the tables over files of the same names that ``ulora compare`` did not
    write (``force`` overwrites them).

    Raises:
        RunDirError: names the files and the ways out.
    """
    foreign = [root / n for n in ("compare.md", *_HEADERS)
               if (root / n).exists() and not _ours(root / n)]
    if foreign and not force:
        raise RunDirError(
            f"{', '.join(map(str, foreign))} exist{'s' if len(foreign) == 1 else ''} and "
            "ulora compare did not write "
            f"{'it' if len(foreign) == 1 else 'them'}; nothing was run or changed: move "
            f"{'it' if len(foreign) == 1 else 'them'} away, choose another --out, or pass "
            "--force to overwrite (and run every run again)")


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
    parts = [_MD_MARK, ""]
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
