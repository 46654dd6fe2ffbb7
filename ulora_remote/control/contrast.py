"""The contrast pairs of a screened batch: each example's answer under another example's prompt
(docs/design.md, "Guards").

A clean answer fits its own prompt better than another prompt of the same task, from the first
steps in which the model reads its prompts at all; an answer to another question (swapped
answers) or random characters fits its own prompt no better. The screening guard compares the
two losses (``ulora_remote.control.screen``), which needs no converged model and no history.

The partner of example i is the next example of the same task in the batch, cyclically, so that
a contrast never crosses tasks (another task's prompt fits nothing). An example that is the only
one of its task in the batch has no partner and no contrast. The mismatched pair keeps example
i's answer(s) and takes the partner's input:

* prompt/completion: the partner's ``prompt`` (and ``inputs``);
* a conversation: example i's messages with its user turns replaced, in order, by the
  partner's user turns (cycled when i has more); system messages and every assistant turn stay.

Pure functions of the batch: no randomness, so a resumed run screens the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ulora_remote.backend import Example, Message
from ulora_remote.chat import chat_example
from ulora_remote.losses import BatchLosses

__all__ = ["contrast_batch", "contrast_result", "partners"]


def partners(batch: Sequence[Example]) -> tuple[int | None, ...]:
    """Each example's partner index (the next example of its task, cyclically), or None."""
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(batch):
        by_task.setdefault(e.task, []).append(i)
    out: list[int | None] = [None] * len(batch)
    for members in by_task.values():
        if len(members) < 2:
            continue
        for k, i in enumerate(members):
            out[i] = members[(k + 1) % len(members)]
    return tuple(out)


def _mismatch(example: Example, partner: Example) -> Example:
    if not example.messages:
        return replace(example, prompt=partner.prompt, inputs=partner.inputs)
    users = [m for m in partner.messages if m.role == "user"] or [
        Message("user", partner.prompt)]
    turns, k = [], 0
    for m in example.messages:
        if m.role == "user":
            turns.append(users[k % len(users)])
            k += 1
        else:
            turns.append(m)
    return chat_example(turns, example.task)


def contrast_batch(batch: Sequence[Example]) -> list[Example]:
    """The mismatched pairs of the examples that have a partner, in batch order."""
    return [_mismatch(batch[i], batch[j]) for i, j in enumerate(partners(batch))
            if j is not None]


def contrast_result(batch: Sequence[Example],
                    screened: BatchLosses) -> BatchLosses:
    """Per example of ``batch``, the result of its mismatched pair from ``screened`` (the
    forward of ``contrast_batch(batch)``); weight 0 (a NaN loss) where it has no partner."""
    nll, weight, k = [], [], 0
    for j in partners(batch):
        if j is None:
            nll.append(0.0)
            weight.append(0.0)
        else:
            nll.append(screened.nll_sums[k])
            weight.append(screened.weight_sums[k])
            k += 1
    return BatchLosses(tuple(nll), tuple(weight))
