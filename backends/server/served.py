"""The base model a server serves: its names, its limits, and the checks requests must pass.

Read once from a probe engine (built when the server starts, so a bad ``--base-model`` fails
before the port is bound). A request may name the model three ways: its own name
(``ulora/builtin-small``), the name it was served under (``small``), or the absolute path of its
tokenizer directory, which tinker-cookbook's ``get_tokenizer`` loads offline (it tries a local
directory before the hub). ``get_server_capabilities`` advertises the first and the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulora_remote.backend import Datum
from ulora_remote.errors import InputError

from .engine import Engine

__all__ = ["ServedModel"]


class ServedModel:
    """Names, context length and vocabulary of the served base model."""

    def __init__(self, served_as: str, probe: Engine) -> None:
        self.probe = probe
        self.name = str(probe.base_model_name)
        self.tokenizer_dir = str(probe.tokenizer_dir)
        self.tokenizer_name = str(Path(probe.tokenizer_dir).resolve())
        self.names = tuple(dict.fromkeys((self.name, served_as, self.tokenizer_name)))
        self.max_context_length = probe.max_context_length
        self.vocab_size = probe.vocab_size

    def capabilities(self) -> list[dict[str, Any]]:
        """``supported_models`` of ``get_server_capabilities``."""
        return [
            {"model_name": name, "max_context_length": self.max_context_length,
             "trainable": True, "sampleable": True}
            for name in dict.fromkeys((self.name, self.tokenizer_name))
        ]  # fmt: skip

    def check_name(self, base_model: str | None) -> None:
        """Raises InputError when ``base_model`` (None: unspecified) is not one of ``names``."""
        if base_model is not None and base_model not in self.names:
            raise InputError(
                f"base model {base_model!r} is not served here; this server serves {self.name!r}, "
                f"also named {self.tokenizer_name!r} (its tokenizer directory, which "
                "tinker-cookbook's get_tokenizer loads offline); see get_server_capabilities"
            )

    def check_tokens(self, datums: Sequence[Datum]) -> None:
        """Raises InputError for a token id outside the vocabulary (before any engine sees it)."""
        for i, d in enumerate(datums):
            if any(not 0 <= t < self.vocab_size for t in (*d.input_tokens, *d.target_tokens)):
                raise InputError(f"datum {i}: token ids must be in [0, {self.vocab_size})")

    def check_context(self, lengths: Sequence[int], what: str) -> None:
        """Raises InputError naming the first of ``lengths`` over ``max_context_length``."""
        limit = self.max_context_length
        for i, n in enumerate(lengths):
            if limit is not None and n > limit:
                raise InputError(
                    f"{what} {i} needs {n} positions but {self.name!r} has {limit} "
                    "(max_context_length in get_server_capabilities); shorten it, e.g. with "
                    "tinker-cookbook's max_length"
                )
