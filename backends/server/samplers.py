"""Sampling sessions and the engines that serve them.

A sampling session names the weights it samples from: a ``tinker://`` checkpoint, or None for
the base model. Engines are expensive, so one engine per LoRA rank is kept and reloaded when a
request asks for other weights. A fresh adapter is the base model, since LoRA initialises its
B matrices to zero. ``engine_for`` and ``invalidate`` run on the worker thread only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checkpoints import CheckpointIndex
from .engine import Engine
from .scheduler import ModelGone

__all__ = ["SamplerPool"]

BuildEngine = Callable[[str, int, int], Engine]  # (engine id, rank, seed) -> engine


class SamplerPool:
    """What each sampling session samples from, and a cache of loaded engines."""

    def __init__(self, index: CheckpointIndex, build: BuildEngine) -> None:
        self._index = index
        self._build = build
        self._sessions: dict[str, str | None] = {}
        self._engines: dict[int, tuple[Engine, str | None]] = {}

    def register(self, sampler_id: str, path: str | None) -> None:
        """Let ``sampler_id`` sample from ``path`` (None: the base model)."""
        self._sessions[sampler_id] = path

    def path_of(self, sampler_id: str) -> str | None:
        """The weights ``sampler_id`` samples from.

        Raises:
            ModelGone: no such sampling session (404).
        """
        if sampler_id not in self._sessions:
            raise ModelGone(f"sampler {sampler_id!r} does not exist", lost=False)
        return self._sessions[sampler_id]

    def describe(self, sampler_id: str, base_model_name: str) -> dict[str, Any]:
        """The answer of ``GET /api/v1/samplers/{id}``."""
        path = self.path_of(sampler_id)
        return {"sampler_id": sampler_id, "base_model": base_model_name, "model_path": path}

    def engine_for(self, path: str | None) -> Engine:
        """An engine holding the weights at ``path`` (worker thread)."""
        record = self._index.get(path) if path is not None else None
        rank = record.rank if record is not None else 1
        engine, loaded = self._engines.get(rank, (None, None))
        if engine is None or (record is None and loaded is not None):
            engine, loaded = self._build(f"sampler-r{rank}", rank, 0), None
        if record is not None and loaded != path:
            engine.load_state(record.local_dir)
        self._engines[rank] = (engine, path)
        return engine

    def invalidate(self, path: str) -> None:
        """Forget that an engine holds ``path`` (it was just overwritten) (worker thread)."""
        for rank, (engine, loaded) in list(self._engines.items()):
            if loaded == path:
                self._engines[rank] = (engine, "")  # "" matches no path: reload on next use
