"""Per-task evaluation of a multi-task stream: the clean loss of each task's examples.

The runner's evaluation is one forward over every evaluation example; its per-example NLL sums
and weights, grouped by ``Example.task``, give each task's clean loss (nats per weighted token,
as ``eval_loss``). They join the task's own scores under ``details["tasks"][name]`` in
``eval_scores.jsonl``; ``evals.csv`` keeps the overall numbers. ``task_summary`` turns them into
the summary's ``tasks``: each task's recovery metrics and final scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ulora_remote.backend import Example, ForwardBackwardResult
from ulora_remote.run.metrics import recovery_metrics

__all__ = ["task_line", "task_summary", "with_task_losses"]


def with_task_losses(details: Mapping[str, Any] | None, examples: Sequence[Example],
                     result: ForwardBackwardResult) -> dict[str, Any] | None:
    """``details`` with each task's ``eval_loss`` under ``"tasks"``; unchanged (None stays
    None) when no example names a task."""
    sums: dict[str, list[float]] = {}
    for example, nll, weight in zip(examples, result.nll_sums, result.weight_sums, strict=True):
        if example.task:
            total = sums.setdefault(example.task, [0.0, 0.0])
            total[0] += nll
            total[1] += weight
    if not sums:
        return None if details is None else dict(details)
    tasks = dict((details or {}).get("tasks", {}))
    for name, (nll, weight) in sums.items():
        loss = nll / weight if weight > 0 else float("nan")
        tasks[name] = {"eval_loss": loss, **tasks.get(name, {})}
    return {**(details or {}), "tasks": tasks}


def task_line(details: Mapping[str, Any]) -> str:
    """``"upper: loss 0.1234 EM 0.950 | reverse: ..."`` for the console ("" without tasks)."""
    parts = []
    for name, scores in details.get("tasks", {}).items():
        text = f"{name}: loss {scores.get('eval_loss', float('nan')):.4f}"
        if "exact_match" in scores:
            text += f" EM {scores['exact_match']:.3f}"
        if "score" in scores:
            text += f" {scores['scorer']} {scores['score']:.3f}"
        parts.append(text)
    return " | ".join(parts)


def task_summary(records: Sequence[Mapping[str, Any]], windows: Sequence[tuple[int, int]],
                 run_end: int) -> dict[str, Any]:
    """Per task (from ``eval_scores.jsonl``'s records): the recovery metrics of every shock
    window on the task's own clean loss and exact match (docs/design.md, "Recovery metrics"),
    and ``final``: the last evaluation's scores. Empty when no record holds tasks."""
    names = list(dict.fromkeys(n for r in records for n in r.get("tasks", {})))
    out: dict[str, Any] = {}
    for name in names:
        rows = [(int(r["step"]), r["tasks"][name]) for r in records if name in r.get("tasks", {})]
        steps = [step for step, _ in rows]
        losses = [float(d.get("eval_loss", math.nan)) for _, d in rows]
        ems = [float(d.get("exact_match", math.nan)) for _, d in rows]
        metrics = recovery_metrics(steps, losses, ems, windows, run_end=run_end).to_dict()
        out[name] = {"windows": metrics["windows"], "final": {"step": steps[-1], **rows[-1][1]}}
    return out
