"""summary.json and plot.png of a run, computed from the run directory's own files.

The recovery metrics come from ``ulora_remote.run.metrics`` (docs/design.md, "Recovery metrics") on
evals.csv; the rest (switches, time per mode, wall time) from steps.csv. ``write_report`` is what
the end of a run and ``ulora report`` call, so both give the same files.
"""

from __future__ import annotations

import math
import shlex
import sys
from typing import Any

import pandas as pd

from ulora_remote.control.controller import MODE_NAMES
from ulora_remote.errors import MissingExtraError, RunDirError, StorageError
from ulora_remote.run.metrics import recovery_metrics_from_frame
from ulora_remote.run.metrics_log import write_metrics_log
from ulora_remote.run.pertask import task_summary
from ulora_remote.run.rundir import RunDir
from ulora_remote.run.storage import resume_command

__all__ = [
    "FINAL_METRICS",
    "METRIC_NAMES",
    "build_summary",
    "classification_line",
    "run_metrics_rows",
    "summary_warnings",
    "write_report",
]

#: Per-window metrics that go into the compare table, in table order.
METRIC_NAMES: tuple[str, ...] = (
    "peak_damage", "recovered", "time_to_recover_steps", "overshoot", "excess_area",
    "forgetting", "final_eval_loss", "final_exact_match", *(f"final_{m}" for m in (
        "accuracy", "f1", "majority_accuracy", "majority_f1", "one_class")),
)
FINAL_METRICS: tuple[str, ...] = ("final_eval_loss", "final_exact_match")


def build_summary(rd: RunDir) -> dict[str, Any]:
    """The summary of the run in ``rd`` from config.json, steps.csv and evals.csv.

    Raises:
        RunDirError: ``rd`` holds no run, or a file is damaged, edited, or has no rows yet
            (the message names the file and how to recover).
    """
    config, scenario, steps, evals = _read_run(rd)
    windows = _windows(scenario)
    summary: dict[str, Any] = {
        "scenario": scenario["name"],
        "method": config.get("method", scenario["controller"]["method"]),
        "seed": scenario["seed"],
        "lag": config.get("lag"),
        "warmup_steps": scenario.get("warmup_steps", 0),
        "steps": int(len(steps)),
        "finished": int(len(steps)) == int(scenario["steps"]),
        "wall_s": float(steps["wall_s"].iloc[-1]) if len(steps) else math.nan,
        "switches": int(steps["switched"].sum()) if len(steps) else 0,
        "steps_per_mode": _steps_per_mode(steps),
        "final_train_loss_last25": float(steps["loss"].tail(25).mean()) if len(steps) else math.nan,
    }
    if len(evals):
        metrics = recovery_metrics_from_frame(evals, windows, run_end=int(scenario["steps"]))
        summary.update(metrics.to_dict())
    else:
        summary.update({"windows": [], "final": {}})
    scores = rd.eval_scores()
    if scores and "one_class" in scores[-1]:
        # a classification task: the last evaluation's scores beside the majority class
        summary["classification"] = scores[-1]
        summary["all_one_class"] = bool(scores[-1]["one_class"])
    if scores and "retention" in scores[-1]:  # a shift: the old rule's exact match, last eval
        summary["retention"] = float(scores[-1]["retention"])
    tasks = task_summary(scores, windows, run_end=int(scenario["steps"]))
    if tasks:  # a multi-task stream: each task's recovery and final scores
        summary["tasks"] = tasks
    summary["guard"] = _guard_summary(steps, scenario)
    return summary


def _guard_summary(steps: pd.DataFrame, scenario: dict[str, Any]) -> dict[str, Any]:
    """What the guards did: examples rejected, steps skipped, and every probation, rollback and
    declared shift with its snapshot (the snapshots stay in the run directory)."""
    if not len(steps) or "kept" not in steps:
        return {}
    batch = int(scenario.get("batch_size", 0))
    rejected = int((batch - steps["kept"]).clip(lower=0).sum()) if batch else 0
    if "event" in steps:  # an empty column reads as float NaN
        events = steps[steps["event"].notna() & (steps["event"].astype(str) != "")]
    else:
        events = steps.iloc[:0]
    shift = scenario.get("shift") or {}
    found = [int(r.step) for r in events.itertuples()
             if r.event == "shift" and shift and int(r.step) >= int(shift["start"])]
    return {
        "rejected_examples": rejected,
        "skipped_steps": int(steps["skipped"].sum()),
        "events": [{"step": int(r.step), "event": str(r.event),
                    "snapshot": "" if pd.isna(r.snapshot) else str(r.snapshot)}
                   for r in events.itertuples()],
        "shift_declared_after_steps": (found[0] - int(shift["start"])
                                       if shift and found else None),
        **_corrupted_summary(steps, events, _windows(scenario), batch),
    }


def _corrupted_summary(steps: pd.DataFrame, events: pd.DataFrame,
                       windows: list[tuple[int, int]], batch: int) -> dict[str, Any]:
    """How many corrupted examples the guards kept out of the final model, per shock window:
    rejected, or trained on during a probation that was rolled back (the steps from its
    ``probation`` event up to the ``rollback`` that undid them); and the share of clean
    examples rejected."""
    if "corrupted" not in steps or not batch:
        return {}
    undone = pd.Series(False, index=steps.index)
    start = None
    for r in events.itertuples():
        if r.event == "probation":
            start = int(r.step)
        elif r.event == "rollback" and start is not None:
            undone |= (steps["step"] >= start) & (steps["step"] < int(r.step))
            start = None
    corrupted, rejected = steps["corrupted"], steps["corrupted_rejected"]
    rolled = (corrupted - rejected).where(undone, 0)
    per_window = []
    for a, b in windows:
        inside = (steps["step"] >= a) & (steps["step"] < b)
        n, rej, back = (int(x[inside].sum()) for x in (corrupted, rejected, rolled))
        per_window.append({"start": a, "end": b, "corrupted": n, "rejected": rej,
                           "rolled_back": back,
                           "kept_out_share": (rej + back) / n if n else None})
    clean = batch * len(steps) - int(corrupted.sum())
    clean_rejected = int((batch - steps["kept"]).clip(lower=0).sum() - rejected.sum())
    return {"corrupted_windows": per_window,
            "clean_rejected_share": clean_rejected / clean if clean else None}

def _read_run(rd: RunDir) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """config.json, its scenario, steps.csv and evals.csv, each checked before use."""
    config = rd.read_config()
    scenario = config["scenario"]
    _check_scenario_fields(rd, scenario)
    steps_table = rd.read_steps()
    if steps_table.rows == 0:
        raise RunDirError(f"{rd.steps_path} holds no rows yet: the run has not trained a step, "
                          f"so there is nothing to report; continue it with "
                          f"`{resume_command(rd.path)}`")
    if steps_table.rows > scenario["steps"]:
        raise RunDirError(f"{rd.steps_path} holds {steps_table.rows} rows but the run has "
                          f"{scenario['steps']} steps (config.json): one of the two was edited; "
                          f"{rd.start_over_hint()}")
    evals = rd.read_evals().frame()
    if evals.empty:  # the step-0 evaluation is written before the first step's row
        raise RunDirError(f"{rd.evals_path} holds no rows but {rd.steps_path} holds "
                          f"{steps_table.rows}: the evaluation at step 0 comes before any step, "
                          "so evals.csv was emptied or edited; summary.json was left as it was; "
                          f"{rd.start_over_hint()}")
    return config, scenario, steps_table.frame(), evals


_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("name", str, "a string"), ("seed", int, "an integer"), ("steps", int, "an integer"),
    ("controller", dict, "a table"),
)


def _check_scenario_fields(rd: RunDir, scenario: dict[str, Any]) -> None:
    """The fields a report reads must be there with the right types (a hand-edited config)."""
    problems = [f"scenario.{key} should be {shown}" for key, kind, shown in _FIELDS
                if not isinstance(scenario.get(key), kind) or isinstance(scenario.get(key), bool)]
    controller = scenario.get("controller")
    if isinstance(controller, dict):
        problems += [f"scenario.controller.{key} should be a string" for key in ("method", "preset")
                     if not isinstance(controller.get(key), str)]
    try:
        _windows(scenario)
    except (TypeError, ValueError, AttributeError):
        problems.append("scenario.shocks.windows should be a list of [start, end] pairs")
    if problems:
        raise RunDirError(f"{rd.config_path} was edited or damaged: {'; '.join(problems)}; "
                          f"{rd.start_over_hint()}")


def classification_line(summary: dict[str, Any]) -> str | None:
    """The final accuracy/F1 against the majority class for the console (None: no such task)."""
    c = summary.get("classification")
    if not c:
        return None
    text = (f"final accuracy {c['accuracy']:.3f}, F1 {c['f1']:.3f}; majority class "
            f"{c['majority_label']!r}: accuracy {c['majority_accuracy']:.3f}, "
            f"F1 {c['majority_f1']:.3f} ({'above' if c['beats_majority'] else 'NOT above'} "
            "the majority class)")
    if c["one_class"]:
        text += (f"\nWARNING: all {c['n']} final predictions are {c['one_class_label']!r}: "
                 "the model answers one class and has not learned the task")
    return text


def summary_warnings(summary: dict[str, Any]) -> list[str]:
    """Console warnings about recovery metrics that rest on too few pre-shock evaluations.

    A window whose pre-shock level ``L̄`` averages fewer than the configured ``W`` evaluations
    (a short run, or a shock soon after the start) compares the shock with a model that was
    still learning, so its peak damage can be negative and its recovery meaningless.
    """
    wanted = int(summary.get("params", {}).get("pre_evals", 0))
    lines = []
    for w in summary.get("windows", []):
        used = int(w.get("pre_evals", wanted))
        if used >= wanted:
            continue
        head = f"WARNING: shock {w['start']}-{w['end']}: "
        fix = ("evaluate more often before it (--set eval.every=N) or start the shock later")
        if used == 0:
            lines.append(head + f"no evaluation at or before step {w['start']}, so its "
                         f"recovery metrics are undefined (NaN); {fix}")
        else:
            lines.append(head + f"the pre-shock level averages {used} evaluation(s), not "
                         f"{wanted}, so peak damage ({w['peak_damage']:+.4f}) and recovery "
                         f"compare the shock with a model that was still learning; {fix}")
    return lines


def write_report(rd: RunDir, *, out: Any = None) -> dict[str, Any]:
    """Write metrics.jsonl (``ulora_remote.run.metrics_log``), summary.json (finished runs only,
    since it marks a run finished) and plot.png.

    A missing ``plot`` extra is reported on ``out`` (stderr by default) and skips the picture.

    Returns:
        The summary.

    Raises:
        RunDirError: see ``build_summary``.
        StorageError: a file could not be written (the message says how to finish the report).
    """
    summary = build_summary(rd)
    try:
        _, scenario, steps, evals = _read_run(rd)
        write_metrics_log(rd, steps, evals, int(scenario["steps"]))
        if summary["finished"]:
            rd.write_summary(summary)
        _plot(rd)
    except MissingExtraError as exc:
        print(f"ulora: no plot: {exc}", file=out or sys.stderr)
    except StorageError as exc:  # the tables are whole: only the report is missing
        raise StorageError(f"{exc}; the run's tables are complete: then write its report with "
                           f"`ulora report {shlex.quote(str(rd.path))}`", errno=exc.errno,
                           filename=exc.filename) from exc
    return summary


def _plot(rd: RunDir) -> None:
    from ulora_remote.control.config import ControllerConfig
    from ulora_remote.run.plotting import plot_run

    config, scenario, steps, evals = _read_run(rd)
    controller = scenario["controller"]
    overrides = {k: v for k, v in controller.items() if k in ("theta0", "theta1")}
    cfg = ControllerConfig.preset(controller["preset"], **overrides)
    title = (f"{scenario['name']} · {config.get('method', controller['method'])} · "
             f"seed {scenario['seed']} · lag {config.get('lag')}")
    plot_run(steps, evals, rd.plot_path, windows=_windows(scenario),
             theta=(cfg.theta0, cfg.theta1), title=title)


def run_metrics_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows (method, seed, window, metric, value) for the compare table."""
    base = {"method": summary["method"], "seed": summary["seed"]}
    rows = []
    for w in summary.get("windows", []):
        label = f"shock {w['start']}-{w['end']}"
        for metric in METRIC_NAMES:
            if metric in w:
                # bool → 0/1, so the table's mean of "recovered" is the share of seeds that
                # recovered (the others' time to recover is censored at the horizon).
                rows.append({**base, "window": label, "metric": metric,
                             "value": float(w[metric])})
    final = summary.get("final", {})
    for metric, key in zip(FINAL_METRICS, ("eval_loss", "exact_match"), strict=True):
        if key in final:
            rows.append({**base, "window": "final", "metric": metric, "value": final[key]})
    scores = summary.get("classification") or {}
    for key in ("accuracy", "f1", "majority_accuracy", "majority_f1", "one_class"):
        if key in scores:  # one_class as 0/1: its mean is the share of runs that never learned
            rows.append({**base, "window": "final", "metric": f"final_{key}",
                         "value": float(scores[key])})
    return rows


def _windows(scenario: dict[str, Any]) -> list[tuple[int, int]]:
    shocks = scenario.get("shocks") or {}
    return [(int(s), int(e)) for s, e in shocks.get("windows", None) or []]


def _steps_per_mode(steps: pd.DataFrame) -> dict[str, int]:
    if not len(steps):
        return {name: 0 for name in MODE_NAMES}
    counts = steps["mode"].value_counts()
    return {name: int(counts.get(i, 0)) for i, name in enumerate(MODE_NAMES)}
