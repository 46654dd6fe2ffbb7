"""Batched autoregressive sampling with a KV cache: greedy at temperature 0.

Prompts are left-padded so that every row's next token sits in the last column; position ids
come from the attention mask, so a padded row computes what it would compute alone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

__all__ = ["generate"]


def _pick(logits: Any, temperature: float, generator: Any) -> Any:
    import torch

    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_tokens: int,
    temperature: float,
    stop_ids: Collection[int],
    pad_id: int,
    generator: Any,
) -> list[list[int]]:
    """Generate up to ``max_tokens`` tokens after each prompt, in one batch.

    Args:
        model: a causal LM that accepts ``attention_mask``, ``position_ids`` and a KV cache.
        prompts: token ids, each non-empty.
        max_tokens: the most new tokens per prompt.
        temperature: 0 for greedy (argmax); otherwise softmax sampling from ``generator``.
        stop_ids: a row ends after emitting one of these (the stop token is included).
        pad_id: the id used for left padding (masked out, so its value does not matter).
        generator: a torch.Generator on the model's device.

    Returns:
        The new tokens of each prompt, in order.
    """
    import torch

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p))
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache_key = _cache_key(out)
    results: list[list[int]] = [[] for _ in prompts]
    active = set(range(len(prompts)))  # rows that have not stopped yet
    for _ in range(max_tokens):
        nxt = _pick(out.logits[:, -1, :], temperature, generator)
        for i, tok in enumerate(nxt.tolist()):
            if i in active:
                results[i].append(tok)
        active = {i for i in active if results[i][-1] not in stop_ids}
        if not active:
            break
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                    use_cache=True, **{cache_key: out[cache_key]})
    return results


def _cache_key(output: Any) -> str:
    """The name under which this transformers version returns (and takes) the KV cache.

    transformers 5.x renamed ``past_key_values`` to ``cache`` and warns on every use of the old
    name (in the output and as an argument); 4.x knows only ``past_key_values``. The output's
    own key says which one this model speaks, with no version table to keep up to date.
    """
    return "cache" if "cache" in output.keys() else "past_key_values"
