"""Per-task LoRA adapters on one base model: peft adapters ``task0``, ``task1``, ... beside the
shared adapter ``default`` (docs/design.md, "Per-task adapters").

Every adapter's parameters live in the backend's one ``TrainingState``, under one AdamW. That is
one optimizer per adapter: torch's AdamW keeps its moments and step count per parameter and
skips a parameter without a gradient, so an adapter that got no example in a step is not
touched (weight decay included). ``state.routes`` maps each forked task to its adapter; it is
written into every checkpoint's manifest, so a checkpoint holds each adapter exactly once and
loading it restores the same set (``set_routes``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ulora_remote.backend import check_fork

from .training import TrainingState

__all__ = ["SHARED", "TaskAdapters", "gradient_variance"]

#: peft's name of the adapter every model starts with: the shared one.
SHARED = "default"


class TaskAdapters:
    """The adapters of one LoRA-wrapped peft model and the routes of tasks to them.

    Args:
        model: the ``PeftModel`` with its shared adapter ``default``.
        state: the backend's training state; its ``params`` and optimizer grow and shrink with
            the adapters (the shared adapter's parameters stay first).
    """

    def __init__(self, model: Any, state: TrainingState) -> None:
        self.model, self.state = model, state

    @property
    def routes(self) -> dict[str, str]:
        return self.state.routes

    def tasks(self) -> tuple[str, ...]:
        return tuple(self.routes)

    def adapter_of(self, task: str) -> str:
        """The adapter that trains, scores and samples ``task``'s examples."""
        return self.routes.get(task, SHARED)

    # -- topology -----------------------------------------------------------------------------
    def fork(self, tasks: Sequence[str]) -> None:
        """Give each task its own adapter, a copy of the shared one's weights and AdamW state.

        Raises:
            InputError: see ``ulora_remote.backend.check_fork``.
        """
        for task in check_fork(tasks, self.tasks()):
            name = f"task{len(self.routes)}"
            self._add(name)
            self._copy_from_shared(name)
            self.routes[task] = name

    def set_routes(self, routes: Mapping[str, str]) -> None:
        """Hold exactly the adapters of ``routes`` (a checkpoint's), weights to be loaded next."""
        if dict(routes) == self.routes:
            return
        for name in list(self.routes.values()):
            self._remove(name)
        self.routes.clear()
        for task, name in routes.items():
            self._add(name)
            self.routes[task] = name

    def _add(self, name: str) -> None:
        config = copy.deepcopy(self.model.peft_config[SHARED])
        with torch.random.fork_rng(devices=[]):  # peft initialises the new weights randomly
            self.model.add_adapter(name, config)
        self.model.set_adapter(SHARED)
        new = [(n, p) for n, p in self.model.named_parameters() if f".{name}." in n]
        for _, p in new:
            p.requires_grad_(True)
        self.state.params.extend(new)
        self.state.optimizer.param_groups[0]["params"].extend(p for _, p in new)

    def _remove(self, name: str) -> None:
        gone = {id(p) for n, p in self.state.params if f".{name}." in n}
        for p in [p for p in self.state.optimizer.state if id(p) in gone]:
            del self.state.optimizer.state[p]
        group = self.state.optimizer.param_groups[0]
        group["params"] = [p for p in group["params"] if id(p) not in gone]
        self.state.params[:] = [(n, p) for n, p in self.state.params if id(p) not in gone]
        self.model.delete_adapter(name)
        self.model.set_adapter(SHARED)

    def _copy_from_shared(self, name: str) -> None:
        by_name = dict(self.state.params)
        opt = self.state.optimizer.state
        with torch.no_grad():
            for n, p in list(by_name.items()):
                if f".{name}." not in n:
                    continue
                source = by_name[n.replace(f".{name}.", f".{SHARED}.")]
                p.copy_(source)
                if source in opt:
                    opt[p] = {k: v.clone() if torch.is_tensor(v) else v
                              for k, v in opt[source].items()}

    # -- use ----------------------------------------------------------------------------------
    def groups(self, keys: Sequence[str], *, by_task: bool) -> list[tuple[str, list[int]]]:
        """Indices of ``keys`` (the examples' tasks) grouped by adapter, or by task when
        ``by_task``; each group with the adapter that runs it, in first-seen order."""
        found: dict[str, list[int]] = {}
        for i, task in enumerate(keys):
            found.setdefault(task if by_task else self.adapter_of(task), []).append(i)
        return [(key if not by_task else self.adapter_of(key), idx) for key, idx in found.items()]

    @contextmanager
    def active(self, name: str) -> Iterator[None]:
        """Run with adapter ``name`` active (only its weights are used and get gradients)."""
        if name == SHARED:
            yield
            return
        self.model.set_adapter(name)
        try:
            yield
        finally:
            self.model.set_adapter(SHARED)

    def params_of(self, name: str) -> list[torch.nn.Parameter]:
        """Adapter ``name``'s parameters, in the same module order for every adapter."""
        return [p for n, p in self.state.params if f".{name}." in n]

    def clip_groups(self) -> list[list[torch.nn.Parameter]]:
        """Each adapter's parameters: ``grad_clip_norm`` applies per adapter, as on Tinker."""
        return [self.params_of(n) for n in (SHARED, *self.routes.values())]


def flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """The gradients of ``params`` as one float64 vector (zeros where there is none)."""
    parts = [p.grad.detach().reshape(-1) if p.grad is not None
             else torch.zeros(p.numel(), device=p.device) for p in params]
    return torch.cat(parts).double()


def gradient_variance(task_grads: Sequence[torch.Tensor]) -> float | None:
    """Σ_T |g_T − ḡ|² / Σ_T |g_T|² over two or more tasks' gradients (None with fewer, or when
    every gradient is zero)."""
    if len(task_grads) < 2:
        return None
    stacked = torch.stack(list(task_grads))
    total = float(stacked.pow(2).sum())
    if total <= 0.0:
        return None
    spread = float((stacked - stacked.mean(dim=0)).pow(2).sum())
    return min(1.0, max(0.0, spread / total))
