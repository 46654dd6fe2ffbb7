"""The scenario's ``[backend]`` section: one pydantic model per backend kind, each building its
backend. Light: importing this module imports neither torch nor tinker (``build`` does).

    [backend] kind = "local"     base_model = "medium" | "small" | "smollm2-135m"
                                 | a local Hugging Face directory
    [backend] kind = "tinker"    base_model = "meta-llama/Llama-3.2-1B", base_url, tokenizer

Adding a backend is its package under ``backends/`` plus one class here (a union member with
``build``); docs/extending.md walks through it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from ulora_remote.backend import TrainingBackend
from ulora_remote.errors import MissingExtraError
from ulora_remote.sections import STRICT

from .catalog import WHEEL_MODELS

__all__ = ["BUILTIN_MODELS", "BackendSection", "LocalSection", "TinkerSection", "default_lag"]

BUILTIN_MODELS = ("small", "medium")
_TINKER_ONLY = ("base_url", "tokenizer")


class LocalSection(BaseModel):
    """``kind = "local"``: torch + peft in this process. A sentence-pair task in the
    ``classifier`` format trains the local sequence classifier instead of a causal LM."""

    model_config = STRICT
    kind: Literal["local"] = "local"
    base_model: str = Field(default="medium", min_length=1)
    rank: int = Field(default=8, gt=0, le=4096)
    lora_alpha: float = Field(default=16.0, gt=0.0, le=1e6)
    #: Control lag when the scenario sets none: the seed's quick start (decide, then step).
    default_lag: ClassVar[int] = 0

    @model_validator(mode="before")
    @classmethod
    def _tinker_options(cls, data: Any) -> Any:
        for key in _TINKER_ONLY:
            if isinstance(data, dict) and data.get(key) is not None:
                raise ValueError(
                    f"backend.{key} is a Tinker option, but backend.kind = 'local'; "
                    f"remove backend.{key} or set backend.kind = 'tinker'"
                )
        return data

    def check_model(self, *, classifier: bool) -> None:
        """Raises ValueError for a causal-LM base model that is neither built in nor a folder
        (the classifier also takes hub names and checks them itself)."""
        model = self.base_model
        if (classifier or model in BUILTIN_MODELS or model in WHEEL_MODELS
                or Path(model).expanduser().is_dir()):
            return
        raise ValueError(
            f"backend.base_model = {model!r} is neither a built-in model "
            f"({', '.join(BUILTIN_MODELS)}), a named model ({', '.join(WHEEL_MODELS)}) nor a "
            "local model directory; pick one of those or set backend.kind = 'tinker' for a "
            "hosted model"
        )

    def build(self, *, seed: int, checkpoint_dir: Path, classifier: bool = False,
              run_name: str | None = None) -> TrainingBackend:
        """The local backend (or the sequence classifier). Raises MissingExtraError."""
        if classifier:
            module = _import_backend("ulora_remote.backends.classify", "local", "torch")
            return module.ClassifierBackend(  # type: ignore[no-any-return]
                self.base_model, rank=self.rank, lora_alpha=self.lora_alpha, seed=seed,
                checkpoint_dir=checkpoint_dir,
            )
        module = _import_backend("ulora_remote.backends.local", "local", "torch")
        # The built-in models' matrices are too small to split across threads: on the 2-core
        # machine under load a medium-model step took 0.025 s on 1 thread and 0.5 s on 2.
        # A Hugging Face model directory keeps torch's default.
        threads = 1 if self.base_model in BUILTIN_MODELS else None
        return module.LocalBackend(  # type: ignore[no-any-return]
            self.base_model, rank=self.rank, lora_alpha=self.lora_alpha, seed=seed,
            checkpoint_dir=checkpoint_dir, threads=threads,
        )


class TinkerSection(BaseModel):
    """``kind = "tinker"``: the hosted service (or ``ulora serve``) through the tinker SDK.

    ``base_url``: the service (default: the SDK's, or TINKER_BASE_URL); ``tokenizer``: a local
    tokenizer directory (offline). ``lora_alpha`` is accepted and ignored (Tinker fixes its own
    scaling), so that ``--set backend.kind=tinker`` works on a local scenario file.
    """

    model_config = STRICT
    kind: Literal["tinker"]
    base_model: str = Field(default="medium", min_length=1)
    rank: int = Field(default=8, gt=0, le=4096)
    lora_alpha: float = Field(default=16.0, gt=0.0, le=1e6)
    base_url: str | None = Field(default=None, min_length=1)
    tokenizer: str | None = Field(default=None, min_length=1)
    #: Control lag when the scenario sets none: submit optim_step with forward_backward.
    default_lag: ClassVar[int] = 1

    def check_model(self, *, classifier: bool) -> None:
        if classifier:
            raise ValueError(
                "task.format = 'classifier' trains a local sequence classifier, but "
                "backend.kind = 'tinker'; set task.format = 'completion' (\" yes\"/\" no\" "
                "answers) or backend.kind = 'local'"
            )

    def build(self, *, seed: int, checkpoint_dir: Path, classifier: bool = False,
              run_name: str | None = None) -> TrainingBackend:
        """The Tinker backend. Raises MissingExtraError, ConfigurationError (no key)."""
        module = _import_backend("ulora_remote.backends.tinker", "tinker", "tinker")
        options = {k: v for k, v in (("base_url", self.base_url), ("tokenizer", self.tokenizer))
                   if v is not None}
        return module.TinkerBackend(  # type: ignore[no-any-return]
            self.base_model, rank=self.rank, seed=seed, **options
        )


BackendSection = Annotated[LocalSection | TinkerSection, Field(discriminator="kind")]
_KINDS: dict[str, type[LocalSection] | type[TinkerSection]] = {
    "local": LocalSection, "tinker": TinkerSection,
}


def default_lag(kind: object) -> int:
    """The control lag of a backend kind when the scenario sets none (0 for an unknown kind,
    which validation reports)."""
    section = _KINDS.get(kind) if isinstance(kind, str) else None
    return section.default_lag if section is not None else 0


def _import_backend(name: str, extra: str, dependency: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == dependency:
            raise MissingExtraError(extra, dependency) from exc
        raise
