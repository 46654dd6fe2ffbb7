"""``metrics.jsonl``: the run's tables in tinker-cookbook's format, so that the cookbook's
plotting and analysis tools (``tinker_cookbook.stores``, the sweep ``results``/``analyze``
scripts) read our runs.

One JSON object a line, ``{"step": t, ...}``, as the cookbook's ``TrainingStore.write_metrics``
writes them: ``progress``, ``learning_rate``, ``train_mean_nll`` (nats per weighted target token),
``num_sequences`` (examples trained on), ``num_loss_tokens``, and our controller's view under
``ulora/`` (``phi``, ``e_smooth``, ``mode``, ``mode_name``, ``skipped``, ``shock``). The clean
evaluation at step boundary k goes into the record of step k, as the cookbook merges the
evaluations made before a step into that step's record: ``test/nll`` and ``test/exact_match``
(the record ``{"step": steps, ...}`` after the last step holds only the final evaluation).

The file is derived from ``steps.csv`` and ``evals.csv`` whenever the report is written (the end
of a run, ``ulora report``), so it always agrees with them, resumed runs included.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from ulora_remote.run.rundir import RunDir
from ulora_remote.run.storage import write_atomic

__all__ = ["METRICS_FILE", "write_metrics_log"]

METRICS_FILE = "metrics.jsonl"


def write_metrics_log(rd: RunDir, steps: pd.DataFrame, evals: pd.DataFrame,
                      total_steps: int) -> None:
    """Write ``metrics.jsonl`` into the run directory (atomically)."""
    records: dict[int, dict[str, Any]] = {}
    for row in steps.itertuples(index=False):
        records[int(row.step)] = {
            "step": int(row.step),
            "progress": int(row.step) / max(1, total_steps),
            "learning_rate": float(row.lr),
            "train_mean_nll": _number(row.loss),
            "num_sequences": int(row.kept),
            "num_loss_tokens": float(row.tokens),
            "ulora/phi": _number(row.phi),
            "ulora/e_smooth": _number(row.e_smooth),
            "ulora/mode": int(row.mode),
            "ulora/mode_name": str(row.mode_name),
            "ulora/skipped": bool(row.skipped),
            "ulora/shock": bool(row.shock),
        }
    for row in evals.itertuples(index=False):
        record = records.setdefault(int(row.step), {"step": int(row.step)})
        record["test/nll"] = _number(row.eval_loss)
        record["test/exact_match"] = _number(row.exact_match)
    text = "".join(json.dumps(records[k]) + "\n" for k in sorted(records))
    write_atomic(rd.path / METRICS_FILE, text)


def _number(value: Any) -> float | None:
    """JSON has no NaN or infinity: such a value is written as null."""
    number = float(value)
    return number if math.isfinite(number) else None
