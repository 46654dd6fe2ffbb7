"""Integrations with other training stacks; each needs its own extra.

``ulora_remote.integrations`` holds the Hugging Face ``Trainer`` callback (extra ``hf``:
``pip install 'ulora-remote[hf]'``)::

    from ulora_remote.integrations import UloraCallback
"""

from ulora_remote.extras import ensure_installed, import_extra

ensure_installed("hf", "torch", "transformers", "accelerate")
for _module in ("torch", "transformers", "accelerate"):
    import_extra(_module, "hf")  # under the extras lock; a broken install shows its own error

from .hf_trainer import STATE_FILE, UloraCallback, UloraStep  # noqa: E402

__all__ = ["STATE_FILE", "UloraCallback", "UloraStep"]
