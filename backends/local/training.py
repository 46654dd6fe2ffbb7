"""What the two in-process backends share: torch set-up, the trainable state of a LoRA-wrapped
model, the AdamW step and closing. ``LocalBackend`` (causal LM) and ``ClassifierBackend``
(sequence classifier) each build a model their own way, then hand it here; checkpoints of a
``TrainingState`` are in ``state``.

Functions, not a base class: each backend keeps its own constructor and forward pass and calls
these for the parts that must behave identically (determinism, optimizer semantics, where
checkpoints go, what ``close`` removes).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ulora_remote.backend import AdamParams, OptimStepResult
from ulora_remote.errors import BackendError, ConfigurationError

__all__ = [
    "DEFAULT_CHECKPOINT_ROOT",
    "AdapterIdentity",
    "TrainingState",
    "adamw_step",
    "check_lora_options",
    "check_open",
    "close",
    "default_checkpoint_dir",
    "new_training_state",
    "setup_torch",
]

#: where ``save_state`` writes when no ``checkpoint_dir`` is given, relative to the working
#: directory at construction (one subfolder per backend, created by its first save).
DEFAULT_CHECKPOINT_ROOT = Path("ulora-checkpoints")


@dataclass(frozen=True)
class AdapterIdentity:
    """What must match for a checkpoint to load into a backend: the base model and the LoRA's
    shape (``rank``; ``lora_alpha`` scales the update, so it must match as well)."""

    base_model: str
    base_fingerprint: str
    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]


@dataclass(eq=False)
class TrainingState:
    """The trainable state of one backend: its parameters, AdamW, the sampling generator and
    where its checkpoints go.

    Attributes:
        params: the trainable parameters by name (LoRA matrices, and a classifier's head), in the
            optimizer's order.
        optimizer: AdamW over ``params``; its hyper-parameters are set by every ``adamw_step``.
        generator: the backend's private sampling RNG (saved with the checkpoint).
        checkpoint_dir: where ``save_state(name)`` writes ``checkpoint_dir/name``.
        identity: what a checkpoint must match to load here.
        closed: set by ``close``; every call of the backend then raises BackendError.
        routes: task name → the adapter that task trains (``adapters.TaskAdapters``); empty
            while every example trains the shared adapter. Saved in every checkpoint.
    """

    params: list[tuple[str, torch.nn.Parameter]]
    optimizer: torch.optim.AdamW
    generator: torch.Generator
    checkpoint_dir: Path
    identity: AdapterIdentity
    closed: bool = field(default=False)
    routes: dict[str, str] = field(default_factory=dict)


def check_lora_options(rank: int, lora_alpha: float, threads: int | None) -> None:
    """Raises ConfigurationError naming the option: ``rank`` and ``threads`` must be positive
    integers (``threads`` may be None), ``lora_alpha`` a positive finite number."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigurationError(f"rank={rank!r} must be a positive integer")
    if not (isinstance(lora_alpha, int | float) and math.isfinite(lora_alpha) and lora_alpha > 0):
        raise ConfigurationError(f"lora_alpha={lora_alpha!r} must be a positive number")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigurationError(f"threads={threads!r} must be a positive integer or None")


def setup_torch(*, device: str | None, seed: int, threads: int | None) -> torch.device:
    """Set torch's thread count (None keeps it), pick the device (None: CUDA when present),
    turn on deterministic algorithms and seed torch's global RNG with ``seed``.

    Call it before building the model: the LoRA initialisation draws from that RNG, so the same
    seed and thread count give bit-identical losses on the CPU. Returns the device.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":  # cuBLAS needs this for deterministic algorithms
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    return dev


def default_checkpoint_dir(kind: str) -> Path:
    """``./ulora-checkpoints/<kind>-<YYYYmmdd-HHMMSS>-<6 hex>``, absolute: a fresh folder per
    backend, so two runs in one directory never overwrite each other's checkpoints."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (DEFAULT_CHECKPOINT_ROOT / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}").absolute()


def new_training_state(model: Any, *, device: torch.device, seed: int,
                       checkpoint_dir: str | Path | None, identity: AdapterIdentity,
                       kind: str) -> TrainingState:
    """The training state of ``model``'s trainable parameters (draws nothing from torch's RNG).

    Args:
        model: the LoRA-wrapped model, already on ``device``.
        device: where the sampling generator lives.
        seed: seeds the sampling generator.
        checkpoint_dir: where checkpoints go; None gives ``default_checkpoint_dir(kind)``,
            created by the first save and kept by ``close``.
        identity: the base model and LoRA shape that checkpoints record.
        kind: a short name of the backend for the default folder, e.g. ``"local"``.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return TrainingState(
        params=params,
        optimizer=torch.optim.AdamW([p for _, p in params], lr=0.0),
        generator=torch.Generator(device=device).manual_seed(seed),
        checkpoint_dir=(Path(checkpoint_dir).expanduser() if checkpoint_dir is not None
                        else default_checkpoint_dir(kind)),
        identity=identity,
    )


def adamw_step(state: TrainingState, params: AdamParams,
               clip_groups: Sequence[Sequence[torch.nn.Parameter]] | None = None
               ) -> OptimStepResult:
    """One AdamW step with exactly ``params``, then clear the gradients.

    Returns the global L2 norm of the gradients before clipping (0.0 when none were accumulated;
    AdamW then leaves the weights and its state untouched). ``grad_clip_norm`` ≤ 0: no clipping.
    ``clip_groups`` (default: every parameter together) are clipped each on its own, as separate
    models would be: per-task adapters (``adapters.TaskAdapters.clip_groups``).
    """
    for group in state.optimizer.param_groups:
        group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2),
                     eps=params.eps, weight_decay=params.weight_decay)
    groups = clip_groups if clip_groups is not None else [[p for _, p in state.params]]
    norms = [_clip(ps, params.grad_clip_norm) for ps in groups]
    norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return OptimStepResult(grad_norm=float(norm))


def _clip(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The pre-clip global norm of ``params``' gradients; clipped in place when max_norm > 0."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return torch.zeros(())
    if max_norm > 0:  # returns the pre-clip norm
        return torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
    return _total_norm([p.grad for p in with_grad if p.grad is not None])


def _total_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads``, computed as ``clip_grad_norm_`` computes it."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def check_open(state: TrainingState, backend: str) -> None:
    """Raises BackendError when ``state`` was closed (``backend`` names the class)."""
    if state.closed:
        raise BackendError(f"this {backend} is closed; create a new one")


def close(state: TrainingState) -> None:
    """Mark ``state`` closed and drop pending gradients. Idempotent. Checkpoints are kept: they
    are the user's (the default folder included)."""
    state.closed = True
    state.optimizer.zero_grad(set_to_none=True)
