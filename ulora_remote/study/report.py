"""Tables, paired tests, φ levels, verdict numbers and the comparison plot of a finished study.

Everything is computed from the run directories' own files (summary.json is itself rebuilt from
evals.csv by ``ulora_remote.study.compare.compare_runs``; φ comes from steps.csv), never from
memory.
``write_study_report`` writes ``out/REPORT.md``, ``out/study_runs.csv`` (one row per run, window
and metric), ``out/paired.csv`` and ``out/shock_recovery.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ulora_remote.run.rundir import RunDir
from ulora_remote.study.compare import compare_runs
from ulora_remote.study.plan import StudyRuns
from ulora_remote.study.stats import paired_t_test, summarize

__all__ = ["excess_area_total", "paired_rows", "phi_levels", "write_study_report"]

PAIRED_METRICS = ("excess_area", "time_to_recover_steps", "peak_damage", "overshoot",
                  "forgetting", "final_eval_loss", "final_exact_match")


def collect(runs: StudyRuns) -> pd.DataFrame:
    """Per-run metric rows of every group, with ``scenario`` and ``condition`` columns; also
    writes each group's compare.csv / compare.md beside its runs."""
    frames = []
    for scenario, by_condition in runs.specs.items():
        for condition, specs in by_condition.items():
            group_dir = runs.root / Path(scenario).stem / condition
            table = compare_runs([s.run_dir for s in specs], group_dir)
            frame = table.per_run.assign(scenario=Path(scenario).stem, condition=condition)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def excess_area_total(per_run: pd.DataFrame) -> pd.DataFrame:
    """Excess area summed over a run's shock windows, as extra rows with window ``"all shocks"``."""
    area = per_run[(per_run["metric"] == "excess_area") & (per_run["window"] != "final")]
    keys = ["scenario", "condition", "method", "seed"]
    total = area.groupby(keys, as_index=False)["value"].sum(min_count=1)
    return total.assign(window="all shocks", metric="excess_area")


def paired_rows(per_run: pd.DataFrame, best_label: dict[str, str]) -> pd.DataFrame:
    """Each method against its scenario's best fixed LR, paired by seed, per window and metric."""
    rows = []
    for (scenario, condition, window, metric), g in per_run.groupby(
            ["scenario", "condition", "window", "metric"], sort=False):
        if metric not in PAIRED_METRICS:
            continue
        ref = g[g["method"] == best_label[scenario]].set_index("seed")["value"]
        for method, m in g.groupby("method", sort=False):
            if method == best_label[scenario]:
                continue
            both = m.set_index("seed")["value"].align(ref, join="inner")
            a, b = [float(x) for x in both[0]], [float(x) for x in both[1]]
            try:
                test = paired_t_test(a, b)
            except Exception:  # fewer than 2 complete pairs: no test, say so
                rows.append({"scenario": scenario, "condition": condition, "window": window,
                             "metric": metric, "method": method, "n": 0})
                continue
            rows.append({"scenario": scenario, "condition": condition, "window": window,
                         "metric": metric, "method": method, "n": test.n,
                         "mean_diff": test.mean_difference, "t": test.statistic,
                         "p": test.p_value})
    return pd.DataFrame(rows)


def phi_levels(run_dir: Path, lead: int = 25) -> list[dict[str, float]]:
    """φ before, during and after each shock window, from steps.csv.

    ``pre``: mean φ over the ``lead`` steps before the window; ``peak``: max φ inside it;
    ``post``: mean φ over the ``lead`` steps ending at the next window's start or the run's end,
    whichever comes first (the level φ settled at before anything else happened).
    """
    rd = RunDir(run_dir)
    scenario = rd.read_config()["scenario"]
    windows = [(int(s), int(e)) for s, e in (scenario.get("shocks") or {}).get("windows", [])]
    steps = pd.read_csv(rd.steps_path).set_index("step")["phi"]
    out = []
    for i, (s, e) in enumerate(windows):
        stop = windows[i + 1][0] if i + 1 < len(windows) else int(scenario["steps"])
        out.append({"start": s, "pre": float(steps.loc[s - lead:s - 1].mean()),
                    "peak": float(steps.loc[s:e - 1].max()),
                    "post": float(steps.loc[stop - lead:stop - 1].mean())})
    return out


def write_study_report(runs: StudyRuns, *, wall_s: float | None = None) -> Path:
    """Write REPORT.md and its CSV files and plot under ``runs.root``; return the report path."""
    per_run = collect(runs)
    per_run = pd.concat([per_run, excess_area_total(per_run)], ignore_index=True)
    per_run.to_csv(runs.root / "study_runs.csv", index=False)
    from ulora_remote.run.console import format_lr

    best_label = {Path(s).stem: f"fixed-{format_lr(lr)}" for s, lr in runs.best_lr.items()}
    paired = paired_rows(per_run, best_label)
    paired.to_csv(runs.root / "paired.csv", index=False)
    lines = ["# Study report (generated by ulora_remote.study.report from the run files)", ""]
    if wall_s is not None:
        lines += [f"Wall time of this invocation: {wall_s:.0f} s.", ""]
    for scenario, by_condition in runs.specs.items():
        stem = Path(scenario).stem
        lines += [f"## {stem}", "", f"Best fixed LR (lowest mean final clean loss over seeds, "
                  f"shock runs): **{best_label[stem]}**.", ""]
        for condition in by_condition:
            lines += _group_table(per_run, stem, condition)
            lines += _paired_table(paired, stem, condition)
        lines += _phi_table(runs.specs[scenario].get("shock", []))
        lines += _lag_table(per_run, stem)
    lines += _preset_verdict(per_run)
    try:
        from ulora_remote.study.plots import plot_shock_recovery

        plot_shock_recovery(runs, runs.root / "shock_recovery.png")
        lines += ["", "![clean loss around each shock](shock_recovery.png)", ""]
    except ImportError as exc:  # matplotlib missing: the tables stand alone
        lines += ["", f"(no plot: {exc})", ""]
    path = runs.root / "REPORT.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(values: pd.Series) -> str:
    mean, low, high = summarize([float(v) for v in values])
    n = int(values.notna().sum())
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.3g} (n={n})"
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]" + ("" if n == len(values) else f" (n={n})")


def _group_table(per_run: pd.DataFrame, scenario: str, condition: str) -> list[str]:
    g = per_run[(per_run["scenario"] == scenario) & (per_run["condition"] == condition)]
    methods = list(dict.fromkeys(g["method"]))
    lines = [f"### {scenario} · {condition}: mean [95% interval] over seeds", "",
             "| window | metric | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for (window, metric), wm in g.groupby(["window", "metric"], sort=False):
        cells = [_cell(wm[wm["method"] == m]["value"]) for m in methods]
        lines.append(f"| {window} | {metric} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _paired_table(paired: pd.DataFrame, scenario: str, condition: str) -> list[str]:
    if paired.empty:
        return []
    g = paired[(paired["scenario"] == scenario) & (paired["condition"] == condition)
               & paired["window"].isin(["all shocks", "final"])]
    if g.empty:
        return []
    lines = [f"Paired t-test against the best fixed LR ({scenario} · {condition}): mean "
             "difference (method − best fixed) and p; p ≥ 0.05 is not significant.", "",
             "| method | metric | mean diff | p | n |", "|---|---|---|---|---|"]
    for r in g.itertuples():
        if r.n == 0:
            lines.append(f"| {r.method} | {r.metric} | n/a | n/a | 0 |")
        else:
            lines.append(f"| {r.method} | {r.metric} | {r.mean_diff:+.3g} | {r.p:.3g} | {r.n} |")
    return [*lines, ""]


def _phi_table(specs: list[Any]) -> list[str]:
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for spec in specs:
        if spec.label.startswith(("fixed", "plateau", "zskip")):
            continue
        for level in phi_levels(spec.run_dir):
            rows.setdefault((spec.label, int(level["start"])), []).append(level)
    if not rows:
        return []
    lines = ["φ before → peak inside → settled after each shock (mean over seeds)", "",
             "| method | shock at | pre | peak | post |", "|---|---|---|---|---|"]
    for (label, start), levels in rows.items():
        cells = [sum(x[k] for x in levels) / len(levels) for k in ("pre", "peak", "post")]
        lines.append(f"| {label} | {start} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return [*lines, ""]


def _lag_table(per_run: pd.DataFrame, scenario: str, lag0: str = "v1",
               lag1: str = "v1-lag1") -> list[str]:
    """The controller at lag 1 against lag 0, paired by seed (shock runs)."""
    g = per_run[(per_run["scenario"] == scenario) & (per_run["condition"] == "shock")
                & per_run["window"].isin(["all shocks", "final"])]
    if not {lag0, lag1} <= set(g["method"]):
        return []
    lines = [f"Control lag: {lag1} − {lag0}, paired by seed ({scenario}, shocks)", "",
             "| metric | lag 0 mean | lag 1 mean | mean diff | p | n |",
             "|---|---|---|---|---|---|"]
    for metric, m in g.groupby("metric", sort=False):
        a = m[m["method"] == lag1].set_index("seed")["value"]
        b = m[m["method"] == lag0].set_index("seed")["value"]
        a, b = a.align(b, join="inner")
        test = paired_t_test([float(x) for x in a], [float(x) for x in b])
        lines.append(f"| {metric} | {b.mean():.3g} | {a.mean():.3g} | "
                     f"{test.mean_difference:+.3g} | {test.p_value:.3g} | {test.n} |")
    return [*lines, ""]


def _preset_verdict(per_run: pd.DataFrame) -> list[str]:
    """Does any method beat every fixed LR on total excess area by ≥ 2× at equal final exact
    match (within 1 point), in every scenario? Numbers for each candidate."""
    shock = per_run[per_run["condition"] == "shock"]
    lines = ["## Preset check: ≥ 2× lower excess area than every fixed LR, final exact match "
             "within 1 point", ""]
    winners = set(shock["method"]) - {m for m in shock["method"] if m.startswith("fixed")}
    for scenario, g in shock.groupby("scenario"):
        area = g[g["window"] == "all shocks"].groupby("method")["value"].mean()
        em = g[g["metric"] == "final_exact_match"].groupby("method")["value"].mean()
        fixed = [m for m in area.index if m.startswith("fixed")]
        for method in sorted(set(area.index) - set(fixed)):
            best_area = min(area[f] for f in fixed)
            ratio = best_area / area[method] if area[method] > 0 else math.inf
            em_gap = min(em[method] - em[f] for f in fixed)
            # A fixed LR with no excess area at all cannot be beaten 2×: both zero is a tie.
            ok = best_area > 0 and ratio >= 2.0 and em_gap >= -0.01
            lines.append(f"- {scenario} · {method}: best fixed area / method area = {ratio:.2f}, "
                         f"final exact match minus the best fixed's = {em_gap:+.3f} → "
                         f"{'passes' if ok else 'fails'}")
            if not ok:
                winners.discard(method)
    verdict = (f"Passes in every scenario: {', '.join(sorted(winners))}." if winners
               else "No method passes in every scenario; no new preset.")
    return [*lines, "", verdict, ""]
