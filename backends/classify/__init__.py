"""Sequence classification behind the TrainingBackend protocol (GLUE MRPC with DistilBERT).

Installed as ``ulora_remote.backends.classify``; needs the 'local' extra::

    from ulora_remote.backends.classify import ClassifierBackend
    backend = ClassifierBackend("distilbert-base-uncased", rank=16, lora_alpha=32)
    backend = ClassifierBackend("tiny-distilbert")   # built in code, no download (tests)
"""

from ulora_remote.extras import ensure_installed

# Installed, not imported: transformers and peft load when a model is built, so the first line
# of a built-in model's pre-training shows seconds sooner (peft alone took 3 s to import).
ensure_installed("local", "torch", "transformers", "peft", "safetensors", "tokenizers")

from .backend import ClassifierBackend  # noqa: E402
from .tiny import TINY_NAME, build_tiny_classifier, build_word_tokenizer  # noqa: E402

__all__ = ["TINY_NAME", "ClassifierBackend", "build_tiny_classifier", "build_word_tokenizer"]
