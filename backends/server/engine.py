"""What the server needs from a training engine, and the default engine: the local backend.

One engine holds one LoRA adapter (with its optimizer) on the served base model. The server
creates one per training model and one per sampling session, and calls every engine from a
single worker thread, so engines need not be thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ulora_remote.backend import AdamParams, Datum, Future, OptimStepResult
from ulora_remote.extras import import_names

__all__ = [
    "BatchSampling",
    "DatumsResultLike",
    "Engine",
    "EngineSpec",
    "local_engine_factory",
]


class DatumsResultLike(Protocol):
    """Per-datum results of a token-level forward (and backward)."""

    nll_sums: Sequence[float]
    weight_sums: Sequence[float]
    logprobs: Sequence[Sequence[float]]


class Engine(Protocol):
    """The token-level surface of ``LocalBackend`` that the server uses."""

    @property
    def base_model_name(self) -> str: ...

    @property
    def tokenizer_dir(self) -> str | PathLike[str]:
        """A local directory that ``AutoTokenizer.from_pretrained`` loads offline."""
        ...

    @property
    def rank(self) -> int: ...

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1``."""
        ...

    @property
    def max_context_length(self) -> int | None:
        """Tokens per sequence the model has positions for; None when it does not say."""
        ...

    @property
    def eos_token_id(self) -> int | None: ...

    def forward_backward_datums(self, datums: Sequence[Datum]) -> Future[Any]: ...

    def forward_datums(self, datums: Sequence[Datum]) -> Future[Any]: ...

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]: ...

    def save_state(self, name: str) -> str: ...

    def load_state(self, path: str, *, optimizer: bool = True) -> None:
        """Restore weights, and the optimizer state unless ``optimizer`` is False (then the
        optimizer starts afresh, as Tinker's weights-only load does)."""
        ...

    def sample_tokens(
        self,
        prompt_tokens: Sequence[int],
        max_tokens: int,
        temperature: float = 0.0,
        stop_tokens: Sequence[int] = (),
        seed: int | None = None,
    ) -> list[int]: ...


@runtime_checkable
class BatchSampling(Protocol):
    """An engine that samples many prompts greedily in one batch (the local backend does); the
    server then runs a clock cycle's greedy sample requests of one sampler as one batch."""

    def sample_tokens_batch(
        self, prompts: Sequence[Sequence[int]], max_tokens: int, stop_tokens: Sequence[int] = ()
    ) -> list[list[int]]:
        """``sample_tokens`` at temperature 0 for each prompt, in order."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """How to build one engine.

    Args:
        base_model: "small", "medium" or a local model directory.
        rank: LoRA rank.
        seed: initialisation seed of the adapter.
        checkpoint_dir: the directory this engine saves into (created by the server).
        lora_alpha: LoRA alpha.
        threads: torch threads, or None for the engine's default.
    """

    base_model: str
    rank: int
    seed: int
    checkpoint_dir: Path
    lora_alpha: float = 16.0
    threads: int | None = None


def local_engine_factory(spec: EngineSpec) -> Engine:
    """Build a ``LocalBackend`` from ``spec`` (the server's default engine).

    Raises:
        MissingExtraError: the 'local' extra (torch, transformers, peft) is not installed.
    """
    # The local backend imports torch at module level; a missing piece names itself.
    (LocalBackend,) = import_names("ulora_remote.backends.local", "local", "LocalBackend")
    engine: Engine = LocalBackend(
        spec.base_model,
        rank=spec.rank,
        lora_alpha=spec.lora_alpha,
        seed=spec.seed,
        threads=spec.threads,
        checkpoint_dir=spec.checkpoint_dir,
    )
    return engine
