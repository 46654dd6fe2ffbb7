"""Text examples to token datums, and datums to padded tensors.

Rendering follows Tinker's convention: tokens = prompt tokens (with the tokenizer's special
prefix, e.g. ``<bos>``) + completion tokens + EOS; each input token predicts the next one, and only
targets that belong to the completion (and the EOS) carry weight. A chat example
(``Example.messages``) is laid out by ``ulora_remote.chat`` (the tokenizer's chat template, else
the plain template) with weight on every assistant turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ulora_remote.backend import Datum, Example
from ulora_remote.chat import ChatTokens, Segment, chat_layout, encode_layout
from ulora_remote.errors import InputError

__all__ = [
    "Encoder",
    "char_encoder",
    "check_datums",
    "encode_prompts",
    "pad_datums",
    "render_examples",
    "sampling_inputs",
]

Encoder = Callable[[list[str], bool], list[list[int]]]


def _unencodable(tokenizer: Any, text: str, unk_id: int) -> tuple[int, str] | None:
    """The position and character of the first character of ``text`` that the tokenizer maps to
    its unknown token; None when no single character is to blame."""
    for pos, ch in enumerate(text):
        if unk_id in tokenizer.encode(ch, add_special_tokens=False):
            return pos, ch
    return None


def _check_encoded(tokenizer: Any, ids: list[int], text: str, where: str, index: int,
                   offset: int = 0) -> None:
    """Raise an InputError naming the character and its position when ``ids`` hold the unknown
    token. The message says "example ``index``" (its place in the batch); a caller that knows the
    record and line can catch the error and prefix them. Positions count from ``offset`` in
    ``text`` (where a chat message's content starts in its segment)."""
    unk_id = tokenizer.unk_token_id
    if unk_id is None or unk_id not in ids:
        return
    found = _unencodable(tokenizer, text, unk_id)
    if found is None:
        raise InputError(f"the {where} of example {index} ({_excerpt(text, 0)}) cannot be "
                         "encoded by this model's tokenizer; remove or replace its unusual "
                         "characters")
    pos, ch = found
    raise InputError(
        f"character {ch!r} (U+{ord(ch):04X}) at position {pos - offset} of the {where} of "
        f"example {index} "
        f"({_excerpt(text, pos)}) cannot be encoded by this model's tokenizer; remove or replace it"
    )


def _excerpt(text: str, pos: int, width: int = 24) -> str:
    """``text`` around ``pos``, at most about ``2 * width`` characters, as a repr."""
    start, end = max(0, pos - width), pos + width
    return f"{'…' if start else ''}{text[start:end]!r}{'…' if end < len(text) else ''}"


def _encode_batch(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """Token ids of each text. Calls the Rust tokenizer directly when there is one: the same ids
    as ``tokenizer(texts)``, without the Python wrapper's overhead (~5x faster on short texts).
    One text at a time on purpose: ``encode_batch`` wakes a rayon thread pool whose spinning
    workers took CPU from torch's threads (+10% step time measured on 2 busy cores)."""
    fast = getattr(tokenizer, "backend_tokenizer", None)
    if fast is None:
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    return [fast.encode(text, add_special_tokens=special).ids for text in texts]


def char_encoder(tokenizer: Any, vocab: dict[str, int]) -> Encoder:
    """A fast path for a one-token-per-character tokenizer with vocabulary ``vocab``: a dict
    lookup per character (~30x faster than a tokenizer call on short texts, which matters for
    a model as small as the built-in ones). Texts with a character outside ``vocab`` go through
    ``tokenizer`` itself, so unknown characters are reported exactly as without the fast path.
    """
    bos = tokenizer.bos_token_id

    def encode(texts: list[str], special: bool) -> list[list[int]]:
        out = []
        for text in texts:
            try:
                ids = [vocab[ch] for ch in text]
            except KeyError:
                out.extend(_encode_batch(tokenizer, [text], special))
                continue
            out.append([bos, *ids] if special and bos is not None else ids)
        return out

    return encode


def render_examples(
    tokenizer: Any, examples: Sequence[Example], eos_id: int, encode: Encoder | None = None
) -> list[Datum]:
    """Render each example to a ``Datum``.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        examples: at least one example.
        eos_id: the token appended after every completion.
        encode: ``(texts, add_special_tokens) -> ids``, a faster equivalent of the tokenizer
            (see ``char_encoder``); None calls the tokenizer.

    Returns:
        One datum per example, in order.

    Raises:
        InputError: the batch is empty, a prompt or completion renders to no tokens, or a
            character cannot be encoded.
    """
    if len(examples) == 0:
        raise InputError("empty batch: pass at least one Example")
    def default(texts: list[str], special: bool) -> list[list[int]]:
        return _encode_batch(tokenizer, texts, special)

    encode = encode or default
    plain = [(i, e) for i, e in enumerate(examples) if not e.messages]
    prompts = encode([e.prompt for _, e in plain], True) if plain else []
    completions = encode([e.completion for _, e in plain], False) if plain else []
    datums: dict[int, Datum] = {}
    for i, ex in enumerate(examples):
        if ex.messages:
            datums[i] = chat_tokens(tokenizer, ex, encode, i)[0].datum()
    for (i, ex), p, c in zip(plain, prompts, completions, strict=True):
        _check_encoded(tokenizer, p, ex.prompt, "prompt", i)
        _check_encoded(tokenizer, c, ex.completion, "completion", i)
        if not c:
            raise InputError(
                f"the completion of example {i} ({ex!r}) renders to no tokens; every example "
                "needs a non-empty completion"
            )
        if not p:
            raise InputError(
                f"the prompt of example {i} ({ex!r}) renders to no tokens and this tokenizer adds "
                "no BOS token; give the example a non-empty prompt"
            )
        tokens = [*p, *c, eos_id]
        weights = (0.0,) * (len(p) - 1) + (1.0,) * (len(c) + 1)
        datums[i] = Datum(tuple(tokens[:-1]), tuple(tokens[1:]), weights)
    return [datums[i] for i in range(len(examples))]


def chat_tokens(tokenizer: Any, example: Example, encode: Encoder,
                index: int) -> tuple[ChatTokens, str | None]:
    """Encode a chat example (``ulora_remote.chat``); return it and the text that ends a turn.

    Raises:
        InputError: a bad conversation, or a character the tokenizer cannot encode (the
            message names the example's place in the batch and the message).
    """
    try:
        layout = chat_layout(example.messages, tokenizer)
    except InputError as exc:
        raise InputError(f"example {index}: {exc}") from None

    def one(segment: Segment, special: bool) -> list[int]:
        ids = encode([segment.text], special)[0]
        role = example.messages[segment.message].role if segment.message >= 0 else "template"
        where = (f"message {segment.message} ({role})" if segment.message >= 0
                 else "chat template text")
        _check_encoded(tokenizer, ids, segment.text, where, index, max(0, segment.offset))
        return ids

    return encode_layout(layout, one), layout.stop_text


def sampling_inputs(tokenizer: Any, examples: Sequence[Example],
                    encode: Encoder | None = None) -> list[tuple[list[int], str | None]]:
    """Each example's sampling prompt tokens and the text that ends its answer (None: EOS).

    A plain example's prompt is encoded as ``encode_prompts`` does; a chat example's is the
    conversation before its last assistant turn, with that turn's header.

    Raises:
        InputError: as ``encode_prompts`` and ``chat_tokens``.
    """
    def default(texts: list[str], special: bool) -> list[list[int]]:
        return _encode_batch(tokenizer, texts, special)

    plain = [e.prompt for e in examples if not e.messages]
    encoded = iter(encode_prompts(tokenizer, plain) if plain else [])
    out: list[tuple[list[int], str | None]] = []
    for i, ex in enumerate(examples):
        if not ex.messages:
            out.append((next(encoded), None))
            continue
        tokens, stop = chat_tokens(tokenizer, ex, encode or default, i)
        if tokens.prompt_len == 0:
            raise InputError(f"example {i}: nothing comes before its last assistant turn, so "
                             "there is no prompt to sample from; begin with a user message")
        out.append((list(tokens.tokens[: tokens.prompt_len]), stop))
    return out


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Encode sampling prompts the way ``render_examples`` encodes training prompts.

    Raises:
        InputError: a prompt renders to no tokens or has a character that cannot be encoded.
    """
    encoded = _encode_batch(tokenizer, list(prompts), special=True)
    for i, (text, ids) in enumerate(zip(prompts, encoded, strict=True)):
        _check_encoded(tokenizer, ids, text, "prompt", i)
        if not ids:
            raise InputError(f"sampling prompt {i} ({text!r}) renders to no tokens")
    return [list(ids) for ids in encoded]


def check_datums(datums: Sequence[Datum], vocab_size: int) -> None:
    """Refuse an empty batch, an empty datum, or a token id outside ``[0, vocab_size)``.

    Raises:
        InputError: naming the datum and the offending value.
    """
    if len(datums) == 0:
        raise InputError("empty batch: pass at least one Datum")
    for i, d in enumerate(datums):
        if not d.input_tokens:
            raise InputError(f"datum {i} has no tokens; every datum needs at least one target")
        low = min(min(d.input_tokens), min(d.target_tokens))
        high = max(max(d.input_tokens), max(d.target_tokens))
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise InputError(
                f"datum {i} has token id {bad}, outside this model's vocabulary "
                f"[0, {vocab_size}); render it with this backend's tokenizer"
            )


def pad_datums(datums: Sequence[Datum], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """Right-pad datums into ``(inputs, targets, weights)`` tensors of shape ``[B, T]``.

    Right padding needs no attention mask: causal attention keeps real positions from seeing
    the pads that follow them, and pads carry weight 0.
    """
    import torch

    width = max(len(d.input_tokens) for d in datums)
    # padded Python lists, then one tensor each: far cheaper than a tensor per row
    fill = [width - len(d.input_tokens) for d in datums]
    inputs = [[*d.input_tokens, *[pad_id] * f] for d, f in zip(datums, fill, strict=True)]
    targets = [[*d.target_tokens, *[pad_id] * f] for d, f in zip(datums, fill, strict=True)]
    weights = [[*d.weights, *[0.0] * f] for d, f in zip(datums, fill, strict=True)]
    return (torch.tensor(inputs, dtype=torch.long, device=device),
            torch.tensor(targets, dtype=torch.long, device=device),
            torch.tensor(weights, dtype=torch.float32, device=device))
