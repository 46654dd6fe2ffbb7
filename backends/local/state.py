"""Capturing and restoring a ``TrainingState`` (adapter, AdamW, RNG): the checkpoints of both
in-process backends (``LocalBackend`` and ``ClassifierBackend``).

Kept apart from ``checkpoint`` (the file format) so each stays small: this module knows the
training state's objects, that one knows the directory layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ulora_remote.errors import CheckpointError

from .checkpoint import checkpoint_target, read_checkpoint, write_checkpoint
from .training import TrainingState

__all__ = ["load", "manifest_of", "save", "saved_routes"]

_SEP = "::"


def manifest_of(state: TrainingState) -> dict[str, Any]:
    """What must match for a checkpoint to load: base model identity and the LoRA's shape."""
    ident = state.identity
    return {
        "base_model": ident.base_model,
        "base_fingerprint": ident.base_fingerprint,
        "rank": ident.rank,
        "lora_alpha": ident.lora_alpha,
        "target_modules": sorted(ident.target_modules),
        "params": {n: list(p.shape) for n, p in state.params},
        "task_adapters": dict(state.routes),
    }


def _rng_tensors(state: TrainingState) -> dict[str, Any]:
    rng = {"torch_cpu": torch.get_rng_state(), "sampler": state.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda_{i}"] = s
    return rng


def save(state: TrainingState, name: str) -> Path:
    """Write ``state`` to ``state.checkpoint_dir/name`` atomically; return the path.

    Raises:
        CheckpointError: the name escapes ``checkpoint_dir``, or writing failed.
    """
    target = checkpoint_target(state.checkpoint_dir, name)
    index = {id(p): n for n, p in state.params}
    opt_tensors: dict[str, Any] = {}
    for p, st in state.optimizer.state.items():
        for key, value in st.items():
            opt_tensors[f"{index[id(p)]}{_SEP}{key}"] = torch.as_tensor(value)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups]
    manifest = {**manifest_of(state), "param_groups": json.loads(json.dumps(groups))}
    tensors = {"adapter": {n: p for n, p in state.params}, "optimizer": opt_tensors,
               "rng": _rng_tensors(state)}
    write_checkpoint(target, tensors, manifest)
    return target


def _resolve(state: TrainingState, ref: str) -> Path:
    path = Path(ref)
    if path.is_absolute() or path.exists():
        return path
    return checkpoint_target(state.checkpoint_dir, ref)


def saved_routes(state: TrainingState, ref: str) -> dict[str, str]:
    """The task adapters a checkpoint holds (task → adapter name; empty for the shared adapter
    alone, and for checkpoints made before per-task adapters existed), once the checkpoint's
    base model and LoRA shape are known to match (so a refused checkpoint changes nothing).

    Raises:
        CheckpointError: the manifest is missing or unreadable, or made for another model.
    """
    path = _resolve(state, ref) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        why = "no manifest.json" if not path.is_file() else f"manifest.json unreadable: {exc}"
        raise CheckpointError(f"{str(path.parent)!r} is not a complete local-backend checkpoint "
                              f"({why}); pass the path that save_state returned") from None
    ours = manifest_of(state)
    _check_compatible(path.parent, manifest, ours, keys=_IDENTITY)
    routes = manifest.get("task_adapters", {})
    if not isinstance(routes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in routes.items()):
        raise CheckpointError(f"{str(path)!r}: task_adapters must map task names to adapters")
    return dict(routes)


_IDENTITY = ("base_model", "base_fingerprint", "rank", "lora_alpha", "target_modules")


def _check_compatible(path: Path, saved: dict[str, Any], ours: dict[str, Any],
                      keys: tuple[str, ...] = (*_IDENTITY, "params")) -> None:
    for key in keys:
        if saved.get(key) != ours[key]:
            shown = "(differs)" if key == "params" else f"{saved.get(key)!r} vs ours {ours[key]!r}"
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made for another model or adapter: {key} "
                f"{shown}; load it into a backend with the same base model, rank, "
                "lora_alpha and target_modules"
            )


def load(state: TrainingState, ref: str, *, optimizer: bool = True) -> None:
    """Restore adapter weights, AdamW state and RNG state; discard pending gradients.

    ``ref`` is a path from ``save`` or a name inside ``state.checkpoint_dir``. With
    ``optimizer=False`` only the adapter weights are restored and the optimizer starts afresh
    (no moments, step counts at 0), as Tinker's weights-only load does; RNG state is left as it
    is.

    Raises:
        CheckpointError: missing, incomplete, or made for another base model or LoRA shape.
    """
    path = _resolve(state, ref)
    tensors, saved = read_checkpoint(path)
    _check_compatible(path, saved, manifest_of(state))
    with torch.no_grad():
        for name, p in state.params:
            p.copy_(tensors["adapter"][name])
    if not optimizer:
        state.optimizer.state.clear()
        state.optimizer.zero_grad(set_to_none=True)
        return
    _load_optimizer(state, path, tensors["optimizer"], saved["param_groups"])
    torch.set_rng_state(tensors["rng"]["torch_cpu"])
    state.generator.set_state(tensors["rng"]["sampler"])
    cuda = [tensors["rng"][k] for k in sorted(tensors["rng"]) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _load_optimizer(state: TrainingState, path: Path, saved_tensors: dict[str, Any],
                    saved_groups: list[dict[str, Any]]) -> None:
    """AdamW's per-parameter state (saved by parameter name) and its param groups."""
    per_param: dict[int, dict[str, Any]] = {}
    order = {n: i for i, (n, _) in enumerate(state.params)}
    for key, value in saved_tensors.items():
        name, field = key.rsplit(_SEP, 1)
        if name not in order:
            raise CheckpointError(f"checkpoint {str(path)!r} has optimizer state for unknown "
                                  f"parameter {name!r}")
        per_param.setdefault(order[name], {})[field] = value
    groups = [{**g, "params": list(range(len(state.params)))} for g in saved_groups]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    state.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    state.optimizer.zero_grad(set_to_none=True)
