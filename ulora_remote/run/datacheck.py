"""Checking a run's data files against its backend before anything is written.

Every record read from a file (``ulora_remote.task.RecordSource``) is rendered with the backend's
own tokenizer: a character it cannot encode, or a record longer than the model's context
(``TrainingBackend.max_context_length``), is refused with the record's file and line, its length
and the limit. An evaluation record must also leave room to generate: its sampling prompt plus
``eval.max_tokens`` − 1 tokens must fit (the server's rule for a sample request).
"""

from __future__ import annotations

from collections.abc import Iterable

from ulora_remote.backend import Datum, TrainingBackend
from ulora_remote.errors import InputError
from ulora_remote.task import Record

__all__ = ["check_records", "sampling_prompt_length"]


def check_records(records: Iterable[Record], backend: TrainingBackend,
                  eval_max_tokens: int) -> int:
    """Render every record with ``backend`` and check its length; return how many were checked.

    Raises:
        InputError: the first record that cannot be rendered or does not fit (the message
            starts with its file and line).
    """
    limit = backend.max_context_length
    checked = 0
    for record in records:
        try:
            datum = backend.render(record.example)
        except InputError as exc:
            raise InputError(f"{record.where}: {exc}") from None
        length = len(datum.input_tokens)
        if limit is not None and length > limit:
            raise InputError(
                f"{record.where}: the record renders to {length} tokens, but the model holds "
                f"{limit} (its max_context_length); shorten the record or remove it")
        if record.evaluated and limit is not None:
            needed = sampling_prompt_length(datum) + eval_max_tokens - 1
            if needed > limit:
                raise InputError(
                    f"{record.where}: evaluating this record needs its "
                    f"{sampling_prompt_length(datum)}-token prompt plus eval.max_tokens = "
                    f"{eval_max_tokens} - 1 = {needed} tokens, but the model holds {limit}; "
                    "lower eval.max_tokens or shorten the record")
        checked += 1
    return checked


def sampling_prompt_length(datum: Datum) -> int:
    """Tokens before the last weighted run of targets: the prompt a sample continues (for a
    chat record, the turns before its last assistant turn)."""
    weights = datum.weights
    end = max(i for i, w in enumerate(weights) if w > 0)
    start = end
    while start > 0 and weights[start - 1] > 0:
        start -= 1
    return start + 1  # target j is token j + 1: tokens 0..start precede it
