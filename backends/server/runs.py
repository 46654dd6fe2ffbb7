"""The REST views of training runs and their checkpoints, in the SDK's shapes.

``GET /api/v1/training_runs/{id}`` answers a ``tinker.types.TrainingRun``,
``GET /api/v1/training_runs/{id}/checkpoints`` a ``CheckpointsListResponse`` and
``POST /api/v1/weights_info`` a ``WeightsInfoResponse``. tinker-cookbook reads the first to check
that a resumed run uses the renderer recorded in the run's ``user_metadata``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointRecord, RunRecord

__all__ = ["checkpoint_json", "training_run_json", "weights_info_json"]

_TYPES = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}


def _iso(unix_s: float) -> str:
    return dt.datetime.fromtimestamp(unix_s, tz=dt.UTC).isoformat()


def _size(local_dir: str) -> int | None:
    try:
        return sum(f.stat().st_size for f in Path(local_dir).rglob("*") if f.is_file())
    except OSError:
        return None


def checkpoint_json(record: CheckpointRecord) -> dict[str, Any]:
    """One ``tinker.types.Checkpoint``."""
    _, kind, name = record.path.removeprefix("tinker://").split("/")
    return {
        "checkpoint_id": f"{kind}/{name}",
        "checkpoint_type": _TYPES[kind],
        "time": _iso(record.created_s),
        "tinker_path": record.path,
        "size_bytes": _size(record.local_dir),
        "public": False,
    }


def training_run_json(
    run: RunRecord, checkpoints: list[CheckpointRecord], last_request_s: float
) -> dict[str, Any]:
    """One ``tinker.types.TrainingRun``; ``checkpoints`` oldest first."""
    last = {kind: None for kind in _TYPES}
    for record in checkpoints:
        last[record.path.split("/")[3]] = checkpoint_json(record)  # type: ignore[assignment]
    return {
        "training_run_id": run.model_id,
        "base_model": run.base_model,
        "model_owner": "local",
        "is_lora": True,
        "corrupted": False,
        "lora_rank": run.rank,
        "last_request_time": _iso(last_request_s),
        "last_checkpoint": last["weights"],
        "last_sampler_checkpoint": last["sampler_weights"],
        "user_metadata": run.user_metadata,
    }


def weights_info_json(record: CheckpointRecord) -> dict[str, Any]:
    """A ``tinker.types.WeightsInfoResponse`` for one checkpoint."""
    return {
        "base_model": record.base_model,
        "is_lora": True,
        "lora_rank": record.rank,
        "train_unembed": False,
        "train_mlp": True,
        "train_attn": True,
    }
