"""Checkpoint names, ``tinker://`` paths and the on-disk index of what was saved.

A checkpoint is addressed as ``tinker://{model_id}/weights/{name}`` (training state, with the
optimizer), ``tinker://{model_id}/sampler_weights/{name}`` or
``tinker://{model_id}/external_weights/{name}`` (weights exported for use elsewhere). Names are
validated so that no path can leave the checkpoint directory, and every resolved directory is
checked to lie inside it. The index (``index.json``) maps each path to the engine's directory,
the LoRA rank and the number of steps the model had executed, and records each training run
(base model, rank, user metadata); it survives restarts of the server.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from ulora_remote.errors import CheckpointError, InputError

__all__ = [
    "CheckpointIndex",
    "CheckpointRecord",
    "RunRecord",
    "check_name",
    "parse_tinker_path",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,127}")
KINDS = ("weights", "sampler_weights", "external_weights")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe checkpoint name.

    Raises:
        InputError: empty, too long, with a path separator, or starting with a dot.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InputError(
            f"checkpoint name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_tinker_path(path: str) -> tuple[str, str, str]:
    """Split ``tinker://{model_id}/{kind}/{name}`` into (model_id, kind, name).

    Raises:
        InputError: not a tinker path of this server's form, or an unsafe component.
    """
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise InputError(f"checkpoint path {path!r} must start with 'tinker://'")
    parts = path[len("tinker://") :].split("/")
    if len(parts) != 3 or parts[1] not in KINDS or not _RUN.fullmatch(parts[0]):
        raise InputError(
            f"checkpoint path {path!r} must look like tinker://MODEL_ID/KIND/NAME with KIND one "
            f"of {', '.join(KINDS)}"
        )
    return parts[0], parts[1], check_name(parts[2])


@dataclass(frozen=True)
class CheckpointRecord:
    """One saved checkpoint: where the engine put it and what it needs to be loaded."""

    path: str
    local_dir: str
    rank: int
    base_model: str
    forward_backward: int
    optim_step: int
    created_s: float = 0.0  # Unix time; 0 in indexes written before it was recorded


@dataclass(frozen=True)
class RunRecord:
    """One training run (a training model): what it was created on and with."""

    model_id: str
    base_model: str
    rank: int
    created_s: float
    user_metadata: dict[str, str] | None = None


class CheckpointIndex:
    """The checkpoint directory: per-model engine folders and a persistent index."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._file = self.root / "index.json"
        self._lock = threading.Lock()
        data = json.loads(self._file.read_text()) if self._file.exists() else {}
        self._records = {k: CheckpointRecord(**v) for k, v in data.get("records", {}).items()}
        self._runs = {k: RunRecord(**v) for k, v in data.get("runs", {}).items()}
        self._sessions = int(data.get("sessions", 0))

    def next_session_number(self) -> int:
        """A session number never used before in this directory (ids stay unique across
        restarts, so a new session can never overwrite an old session's checkpoints)."""
        with self._lock:
            self._sessions += 1
            self._save()
            return self._sessions

    def model_dir(self, model_id: str) -> Path:
        """The engine's own directory for ``model_id``, created, inside the root."""
        if not _RUN.fullmatch(model_id):
            raise InputError(f"model id {model_id!r} is not valid")
        path = self.inside(self.root / model_id.replace(":", "_"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def inside(self, path: Path) -> Path:
        """Return ``path`` resolved, if it lies inside the root.

        Raises:
            CheckpointError: the path escapes the checkpoint directory.
        """
        resolved = Path(path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise CheckpointError(f"{path} is outside the checkpoint directory {self.root}")
        return resolved

    def get(self, path: str) -> CheckpointRecord:
        """The record for a ``tinker://`` path.

        Raises:
            InputError: a malformed path. CheckpointError: nothing was saved there.
        """
        parse_tinker_path(path)
        with self._lock:
            record = self._records.get(path)
        if record is None:
            raise CheckpointError(f"no checkpoint at {path}; save_state first")
        self.inside(Path(record.local_dir))
        return record

    def exists(self, path: str) -> bool:
        with self._lock:
            return path in self._records

    def put(self, record: CheckpointRecord) -> None:
        """Record a completed checkpoint (after the engine finished writing it)."""
        self.inside(Path(record.local_dir))
        with self._lock:
            self._records[record.path] = record
            self._save()

    def of_model(self, model_id: str) -> list[CheckpointRecord]:
        """The checkpoints of one model, oldest first."""
        with self._lock:
            found = [r for r in self._records.values() if r.path.split("/")[2] == model_id]
        return sorted(found, key=lambda r: r.created_s)

    def put_run(self, run: RunRecord) -> None:
        with self._lock:
            self._runs[run.model_id] = run
            self._save()

    def run(self, model_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(model_id)

    def _save(self) -> None:
        data = {
            "sessions": self._sessions,
            "records": {k: asdict(v) for k, v in self._records.items()},
            "runs": {k: asdict(v) for k, v in self._runs.items()},
        }
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self._file)  # atomic, so a crash never leaves a half-written index
