"""Capturing and restoring a LocalBackend's training state (adapter, AdamW, RNG).

Kept apart from ``checkpoint`` (the file format) so each stays small: this module knows the
backend's objects, that one knows the directory layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ulora_remote.errors import CheckpointError

from .checkpoint import checkpoint_target, read_checkpoint, write_checkpoint

if TYPE_CHECKING:
    from .backend import LocalBackend

__all__ = ["load", "manifest_of", "save"]

_SEP = "::"


def manifest_of(backend: LocalBackend) -> dict[str, Any]:
    """What must match for a checkpoint to load: base model identity and the LoRA's shape."""
    lora = backend.model.peft_config["default"]
    return {
        "base_model": backend.base_model_name,
        "base_fingerprint": backend.base_fingerprint,
        "rank": backend.rank,
        "lora_alpha": backend.lora_alpha,
        "target_modules": sorted(lora.target_modules),
        "params": {n: list(p.shape) for n, p in backend.params},
    }


def _rng_tensors(backend: LocalBackend) -> dict[str, Any]:
    rng = {"torch_cpu": torch.get_rng_state(), "sampler": backend.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda_{i}"] = s
    return rng


def save(backend: LocalBackend, name: str) -> Path:
    """Write the backend's state to ``checkpoint_dir/name`` atomically; return the path."""
    target = checkpoint_target(backend.checkpoint_dir, name)
    index = {id(p): n for n, p in backend.params}
    opt_tensors: dict[str, Any] = {}
    for p, st in backend.optimizer.state.items():
        for key, value in st.items():
            opt_tensors[f"{index[id(p)]}{_SEP}{key}"] = torch.as_tensor(value)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in backend.optimizer.param_groups]
    manifest = {**manifest_of(backend), "param_groups": json.loads(json.dumps(groups))}
    tensors = {"adapter": {n: p for n, p in backend.params}, "optimizer": opt_tensors,
               "rng": _rng_tensors(backend)}
    write_checkpoint(target, tensors, manifest)
    return target


def _resolve(backend: LocalBackend, ref: str) -> Path:
    path = Path(ref)
    if path.is_absolute() or path.exists():
        return path
    return checkpoint_target(backend.checkpoint_dir, ref)


def _check_compatible(path: Path, saved: dict[str, Any], ours: dict[str, Any]) -> None:
    for key in ("base_model", "base_fingerprint", "rank", "lora_alpha", "target_modules",
                "params"):
        if saved.get(key) != ours[key]:
            shown = "(differs)" if key == "params" else f"{saved.get(key)!r} vs ours {ours[key]!r}"
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made for another model or adapter: {key} "
                f"{shown}; load it into a LocalBackend with the same base model, rank, "
                "lora_alpha and target_modules"
            )


def load(backend: LocalBackend, ref: str, *, optimizer: bool = True) -> None:
    """Restore adapter weights, AdamW state and RNG state; discard pending gradients.

    With ``optimizer=False`` only the adapter weights are restored and the optimizer starts
    afresh (no moments, step counts at 0), as Tinker's weights-only load does; RNG state is
    left as it is.
    """
    path = _resolve(backend, ref)
    tensors, saved = read_checkpoint(path)
    _check_compatible(path, saved, manifest_of(backend))
    by_name = dict(backend.params)
    with torch.no_grad():
        for name, p in backend.params:
            p.copy_(tensors["adapter"][name])
    if not optimizer:
        backend.optimizer.state.clear()
        backend.optimizer.zero_grad(set_to_none=True)
        return
    per_param: dict[int, dict[str, Any]] = {}
    order = {n: i for i, (n, _) in enumerate(backend.params)}
    for key, value in tensors["optimizer"].items():
        name, field = key.rsplit(_SEP, 1)
        if name not in by_name:
            raise CheckpointError(f"checkpoint {str(path)!r} has optimizer state for unknown "
                                  f"parameter {name!r}")
        per_param.setdefault(order[name], {})[field] = value
    groups = [{**g, "params": list(range(len(backend.params)))} for g in saved["param_groups"]]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    backend.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    backend.optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(tensors["rng"]["torch_cpu"])
    backend.generator.set_state(tensors["rng"]["sampler"])
    cuda = [tensors["rng"][k] for k in sorted(tensors["rng"]) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
