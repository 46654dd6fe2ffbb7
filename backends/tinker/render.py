"""Text examples to tokens, to Tinker ``Datum``s, and Tinker outputs back to losses.

Pure functions over a Hugging Face-style tokenizer (anything with ``encode``/``decode`` and
optional ``bos_token_id``/``eos_token_id``); ``tinker`` is imported only by the functions that
build or read SDK types.

Rendering (the same convention as Tinker's cookbook for supervised examples): the prompt is
encoded with the tokenizer's special tokens (a BOS where the tokenizer adds one), the completion
without them and followed by EOS, so that the model learns where an answer ends. Inputs are
tokens ``[0, n-1)``, targets tokens ``[1, n)``; weights are 1.0 exactly on targets that belong
to the completion (EOS included), 0.0 on the prompt. A chat example (``Example.messages``) is laid
out by ``ulora_remote.chat`` (the tokenizer's chat template, else the plain template), with
weight on every assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from ulora_remote.backend import Datum, Example, ForwardBackwardResult
from ulora_remote.chat import ChatTokens, Segment, chat_layout, encode_layout
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.extras import import_names

__all__ = [
    "Tokenizer",
    "clean_completion",
    "load_tokenizer",
    "prompt_tokens",
    "render_example",
    "result_from_output",
    "sampling_prompt",
    "to_tinker_datum",
]


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that rendering needs."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a local directory, never from the network.

    Raises:
        MissingExtraError: transformers is not installed.
        ConfigurationError: the directory does not exist or holds no tokenizer.
    """
    # Under the extras lock: a sweep's runs load their tokenizers on several threads at once.
    (AutoTokenizer,) = import_names("transformers", "local", "AutoTokenizer")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigurationError(
            f"tokenizer directory {str(directory)!r} does not exist; pass a local directory "
            "that holds tokenizer.json (e.g. from `huggingface-cli download <model>`)"
        )
    try:
        loaded: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cast(Tokenizer, loaded)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"no usable tokenizer in {str(directory)!r}: {exc}") from exc


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's tokens with the tokenizer's special prefix (BOS), as sampling sees them."""
    return list(tokenizer.encode(prompt, add_special_tokens=True))


def chat_tokens(tokenizer: Any, example: Example) -> tuple[ChatTokens, str | None]:
    """Encode a chat example; return it and the text that ends a turn (None: EOS alone).

    Raises:
        InputError: a conversation ``ulora_remote.chat`` refuses.
    """
    layout = chat_layout(example.messages, tokenizer)

    def one(segment: Segment, special: bool) -> list[int]:
        return list(tokenizer.encode(segment.text, add_special_tokens=special))

    return encode_layout(layout, one), layout.stop_text


def sampling_prompt(tokenizer: Any, example: Example) -> tuple[list[int], str | None]:
    """The tokens sampling continues and the text that ends the answer (None: EOS or newline):
    the prompt for a plain example, the turns before the last assistant turn for a chat one.

    Raises:
        InputError: as ``chat_tokens``, or a chat example with nothing before its answer.
    """
    if not example.messages:
        return prompt_tokens(tokenizer, example.prompt), None
    tokens, stop = chat_tokens(tokenizer, example)
    if tokens.prompt_len == 0:
        raise InputError("nothing comes before the last assistant turn, so there is no prompt "
                         "to sample from; begin the conversation with a user message")
    return list(tokens.tokens[: tokens.prompt_len]), stop


def render_example(tokenizer: Any, example: Example) -> Datum:
    """Render one example; the loss falls on the completion tokens and EOS only (on every
    assistant turn of a chat example).

    Raises:
        InputError: the completion renders to no tokens, or the prompt renders to none and the
            tokenizer has no BOS (the first completion token would have nothing to condition on).
    """
    if example.messages:
        return chat_tokens(tokenizer, example)[0].datum()
    prompt_ids = prompt_tokens(tokenizer, example.prompt)
    completion_ids = list(tokenizer.encode(example.completion, add_special_tokens=False))
    if not completion_ids:
        raise InputError(f"completion {example.completion!r} renders to no tokens")
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        completion_ids.append(eos)
    if not prompt_ids:
        raise InputError(
            f"prompt {example.prompt!r} renders to no tokens and the tokenizer adds no BOS; "
            "give every example a non-empty prompt"
        )
    tokens = prompt_ids + completion_ids
    weights = [0.0] * (len(prompt_ids) - 1) + [1.0] * len(completion_ids)
    return Datum(tuple(tokens[:-1]), tuple(tokens[1:]), tuple(weights))


def to_tinker_datum(datum: Datum) -> Any:
    """Convert our ``Datum`` to ``tinker.types.Datum`` for the ``cross_entropy`` loss."""
    import numpy as np
    from tinker import types

    return types.Datum(
        model_input=types.ModelInput.from_ints(list(datum.input_tokens)),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(
                np.asarray(datum.target_tokens, dtype=np.int64)
            ),
            "weights": types.TensorData.from_numpy(np.asarray(datum.weights, dtype=np.float32)),
        },
    )


def result_from_output(output: Any, data: Sequence[Datum]) -> ForwardBackwardResult:
    """Per-example NLL sums and weight sums from a ``ForwardBackwardOutput``.

    ``cross_entropy`` reports ``loss:sum`` for the whole batch only; the per-example sums come
    from the returned target log-probabilities: nll_i = −Σ_t logprob_{i,t}·weight_{i,t}.

    Raises:
        BackendError: the service returned a different number of outputs or log-probabilities
            than it was sent.
    """
    from ulora_remote.errors import BackendError

    outputs = list(output.loss_fn_outputs)
    if len(outputs) != len(data):
        raise BackendError(f"Tinker returned {len(outputs)} outputs for {len(data)} examples")
    nll_sums: list[float] = []
    for i, (out, datum) in enumerate(zip(outputs, data, strict=True)):
        logprobs = [float(x) for x in out["logprobs"].tolist()]
        if len(logprobs) != len(datum.weights):
            raise BackendError(
                f"Tinker returned {len(logprobs)} log-probabilities for example {i}, "
                f"which has {len(datum.weights)} targets"
            )
        nll_sums.append(-sum(lp * w for lp, w in zip(logprobs, datum.weights, strict=True)))
    return ForwardBackwardResult(
        nll_sums=tuple(nll_sums), weight_sums=tuple(d.weight_sum for d in data)
    )


def clean_completion(text: str, eos_text: str | None = None, stop_text: str | None = None) -> str:
    """Cut a generation at the first EOS text, ``stop_text`` (a chat turn's end) or newline and
    strip surrounding spaces."""
    for end in (eos_text, stop_text):
        if end:
            text = text.split(end, 1)[0]
    return text.split("\n", 1)[0].strip()
