"""The local backend: LoRA training with torch + transformers + peft, offline, CPU or CUDA.

Installed as ``ulora_remote.backends.local``; needs the 'local' extra
(``pip install 'ulora-remote[local]'``)::

    from ulora_remote.backends.local import LocalBackend
    backend = LocalBackend("medium", rank=8, seed=0)        # built-in model, no download
    backend = LocalBackend("/models/Llama-3.2-1B", rank=32, dtype="bfloat16")  # a local HF dir
"""

from ulora_remote.extras import ensure_installed

# Installed, not imported: transformers and peft load when a model is built, so the first line
# of a built-in model's pre-training shows seconds sooner (peft alone took 3 s to import).
ensure_installed("local", "torch", "transformers", "peft", "safetensors", "tokenizers")

from .backend import DatumsResult, LocalBackend  # noqa: E402
from .builtin import BUILTIN_SIZES, build_builtin_model, builtin_cache_path  # noqa: E402
from .progress import Progress, stderr_progress  # noqa: E402
from .tokenizer import CHAR_VOCAB, build_char_tokenizer  # noqa: E402

__all__ = [
    "BUILTIN_SIZES",
    "CHAR_VOCAB",
    "DatumsResult",
    "LocalBackend",
    "Progress",
    "build_builtin_model",
    "build_char_tokenizer",
    "builtin_cache_path",
    "stderr_progress",
]
