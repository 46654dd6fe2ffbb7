"""Integrations with other training stacks; each needs its own extra.

``ulora_remote.integrations`` holds the Hugging Face ``Trainer`` callback (extra ``hf``:
``pip install 'ulora-remote[hf]'``)::

    from ulora_remote.integrations import UloraCallback
"""

from ulora_remote.errors import MissingExtraError

for _module in ("torch", "transformers", "accelerate"):
    try:
        __import__(_module)
    except ImportError as _exc:
        raise MissingExtraError("hf", _module) from _exc

from .hf_trainer import STATE_FILE, UloraCallback, UloraStep  # noqa: E402

__all__ = ["STATE_FILE", "UloraCallback", "UloraStep"]
