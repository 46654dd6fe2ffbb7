"""Loading a sequence-classification base model and attaching its LoRA and trained head."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulora_remote.errors import ConfigurationError
from ulora_remote.extras import import_names

from .tiny import TINY_NAME, build_tiny_classifier

__all__ = ["LoadedClassifier", "attach_classifier_lora", "default_targets", "load_classifier"]

#: The classification head's modules by architecture; all are trained in full (modules_to_save).
_HEADS = ("pre_classifier", "classifier", "score")
#: q/v projections by architecture: DistilBERT, BERT/RoBERTa.
_QV_TARGETS = (("q_lin", "v_lin"), ("query", "value"))


@dataclass
class LoadedClassifier:
    """A classifier base model, its tokenizer and its identity (for checkpoint manifests)."""

    model: Any
    tokenizer: Any
    name: str
    fingerprint: str


def load_classifier(base_model: str, num_labels: int) -> LoadedClassifier:
    """The built-in ``"tiny-distilbert"``, a local directory, or a Hugging Face hub name.

    Raises:
        ConfigurationError: transformers cannot load the model or its tokenizer (the message
            says how to make it available offline).
    """
    if base_model == TINY_NAME:
        if num_labels != 2:
            raise ConfigurationError(f"{TINY_NAME} has 2 classes, not {num_labels}")
        model, tokenizer, fingerprint = build_tiny_classifier()
        return LoadedClassifier(model, tokenizer, f"ulora/builtin-{TINY_NAME}", fingerprint)
    AutoModelForSequenceClassification, AutoTokenizer = import_names(
        "transformers", "local", "AutoModelForSequenceClassification", "AutoTokenizer")

    if base_model.startswith(("/", ".", "~")) and not Path(base_model).expanduser().is_dir():
        raise ConfigurationError(
            f"base model directory {base_model!r} does not exist; pass a Hugging Face model "
            f"directory, a hub name such as 'distilbert-base-uncased', or '{TINY_NAME}'")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        with warnings.catch_warnings():  # "some weights are newly initialized": the head, as meant
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(
                base_model, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"could not load the classifier base model {base_model!r}: {str(exc).rstrip('.')}. "
            "Without access to "
            "the Hugging Face hub, download it on a connected machine (`huggingface-cli download "
            f"{base_model} --local-dir DIR`) and set backend.base_model = DIR, or use "
            f"'{TINY_NAME}' for an offline test model"
        ) from exc
    blob = model.config.to_json_string(use_diff=False) + str(len(tokenizer))
    name = Path(base_model).name if Path(base_model).is_dir() else base_model
    return LoadedClassifier(model, tokenizer, name, hashlib.sha256(blob.encode()).hexdigest()[:16])


def default_targets(model: Any) -> list[str]:
    """``q_lin``/``v_lin`` (DistilBERT) or ``query``/``value`` (BERT-like), whichever exists.

    Raises:
        ConfigurationError: the model has neither; pass target_modules explicitly.
    """
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for pair in _QV_TARGETS:
        if set(pair) <= names:
            return list(pair)
    raise ConfigurationError(
        "this model has neither q_lin/v_lin nor query/value layers; pass target_modules=[...] "
        "with the names of its attention projections")


def attach_classifier_lora(model: Any, rank: int, alpha: float,
                           target_modules: Sequence[str] | None) -> Any:
    """Wrap ``model`` in a peft LoRA (dropout 0, no bias) with the head trained in full.

    The LoRA A matrices are drawn from torch's global RNG: seed it first for determinism.

    Raises:
        ConfigurationError: the target modules match nothing in the model.
    """
    from ulora_remote.backends.local.models import wrap_with_lora

    (LoraConfig,) = import_names("peft", "local", "LoraConfig")

    targets = list(target_modules) if target_modules else default_targets(model)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    # peft annotates lora_alpha as int but scales by alpha / r in floating point: 16.5 works.
    config = LoraConfig(r=rank, lora_alpha=alpha,  # type: ignore[arg-type]
                        target_modules=targets, lora_dropout=0.0, bias="none",
                        task_type="SEQ_CLS", modules_to_save=[h for h in _HEADS if h in names])
    return wrap_with_lora(model, config, "the names of its attention projections, e.g. "
                                         "['q_lin', 'v_lin'] for DistilBERT")
