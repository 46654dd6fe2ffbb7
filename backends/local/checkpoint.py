"""Checkpoints of the local backend: adapter weights, full AdamW state and RNG state.

Layout of a checkpoint directory (safetensors and JSON only: loading never unpickles)::

    adapter.safetensors     trainable (LoRA) parameters by name
    optimizer.safetensors   "<param name>::<exp_avg|exp_avg_sq|step>" per parameter with state
    rng.safetensors         torch CPU RNG, the sampling generator, CUDA RNGs if any
    manifest.json           written last: base model identity, LoRA shape, param groups

A checkpoint is written into a hidden temporary sibling, fsynced, then renamed into place, so
a reader sees either the old checkpoint or the complete new one. Gradients are not saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ulora_remote.errors import CheckpointError

__all__ = ["checkpoint_target", "read_checkpoint", "write_checkpoint"]

FORMAT = "ulora-local-checkpoint"
VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_FILES = ("adapter", "optimizer", "rng")


def checkpoint_target(root: Path, name: str) -> Path:
    """The directory ``root/name`` for a checkpoint name that stays inside ``root``.

    Raises:
        CheckpointError: the name is empty, absolute, has separators or ``..``, or starts with
            a dot (hidden names are reserved for temporary directories).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise CheckpointError(
            f"checkpoint name {name!r} is not allowed: use 1–128 letters, digits, '_', '-' or "
            "'.', not starting with '.', without '..' or path separators"
        )
    return root / name


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(target: Path, tensors: dict[str, dict[str, Any]], manifest: dict) -> None:
    """Atomically write a checkpoint directory.

    Args:
        target: the final directory; an existing checkpoint there is replaced.
        tensors: for each of "adapter", "optimizer", "rng", a dict of name → tensor.
        manifest: JSON-serialisable metadata; ``format`` and ``version`` are added.

    Raises:
        CheckpointError: the files could not be written.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {str(target)!r}: {exc}") from exc
    try:
        for key in _FILES:
            blob = {k: v.detach().cpu().contiguous() for k, v in tensors[key].items()}
            save_file(blob, str(tmp / f"{key}.safetensors"))
        meta = {"format": FORMAT, "version": VERSION, **manifest}
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        _replace_dir(tmp, target)
        _fsync(target.parent)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own
        raise CheckpointError(f"could not write checkpoint {str(target)!r}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target``; an existing ``target`` is moved aside first, then removed."""
    if not target.exists():
        os.rename(src, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, trash / "old")
    os.rename(src, target)
    shutil.rmtree(trash, ignore_errors=True)


def read_checkpoint(path: Path) -> tuple[dict[str, dict[str, Any]], dict]:
    """Read a checkpoint written by ``write_checkpoint`` (safetensors + JSON, no pickle).

    Returns:
        ``(tensors, manifest)`` with tensors on CPU.

    Raises:
        CheckpointError: the directory is missing, incomplete, or not of this format.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is not a complete local-backend checkpoint (no manifest.json); "
            "pass the path that save_state returned"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        tensors = {key: load_file(str(path / f"{key}.safetensors")) for key in _FILES}
    except (OSError, ValueError, SafetensorError) as exc:  # a damaged header is the last
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{str(path)!r} is a {manifest.get('format')!r} v{manifest.get('version')} "
            f"checkpoint; this backend reads {FORMAT!r} v{VERSION}"
        )
    return tensors, manifest
