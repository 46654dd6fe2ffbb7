"""Backends that wrap another backend and pass every call on to it.

A wrapper that watches or interrupts a run (the sweep's stop flag, the adapters study's request
counter, a test's Ctrl-C) subclasses one of these and overrides only the calls it cares about;
everything else reaches ``inner`` unchanged, with the contract of ``ulora_remote.backend``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ulora_remote.backend import (
    AdamParams,
    AdapterBackend,
    Datum,
    Example,
    ForwardBackwardResult,
    Future,
    OptimStepResult,
    TrainingBackend,
)

__all__ = ["DelegatingAdapterBackend", "DelegatingBackend"]


class DelegatingBackend:
    """A ``TrainingBackend`` whose every call is ``inner``'s (units, blocking and errors as
    ``inner``'s)."""

    def __init__(self, inner: TrainingBackend) -> None:
        self.inner = inner

    @property
    def max_context_length(self) -> int | None:
        return self.inner.max_context_length

    def render(self, example: Example) -> Datum:
        return self.inner.render(example)

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        return self.inner.forward_backward(batch)

    def forward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        return self.inner.forward(batch)

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        return self.inner.optim_step(params)

    def save_state(self, name: str) -> str:
        return self.inner.save_state(name)

    def load_state(self, ref: str) -> None:
        self.inner.load_state(ref)

    def sample(self, examples: Sequence[Example], max_tokens: int,
               temperature: float = 0.0) -> list[str]:
        return self.inner.sample(examples, max_tokens, temperature)

    def close(self) -> None:
        self.inner.close()


class DelegatingAdapterBackend(DelegatingBackend):
    """A ``DelegatingBackend`` around an ``AdapterBackend``: the per-task adapter calls pass on
    too."""

    def __init__(self, inner: AdapterBackend) -> None:
        super().__init__(inner)
        self.adapters = inner

    def fork_adapters(self, tasks: Sequence[str]) -> None:
        self.adapters.fork_adapters(tasks)

    def adapter_tasks(self) -> tuple[str, ...]:
        return self.adapters.adapter_tasks()

    def measure_gradient_variance(self, on: bool) -> None:
        self.adapters.measure_gradient_variance(on)
