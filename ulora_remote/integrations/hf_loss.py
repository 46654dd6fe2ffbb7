"""Per-example losses of a causal language model's batch, for the Trainer integration's loss hook.

The Trainer hands its loss hook the model's outputs and the ``labels`` tensor, with ``-100`` on
every position that carries no loss (prompt, padding), as ``DataCollatorForLanguageModeling``
and ``DataCollatorForSeq2Seq`` produce. These functions turn that into what a ``Guard`` judges:
each example's NLL sum (nats) and its number of target tokens, the same units as
``BatchLosses``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.losses import BatchLosses

__all__ = ["IGNORE_INDEX", "ExampleLosses", "example_losses_of", "logits_of"]

#: the label value that carries no loss (PyTorch's and Hugging Face's convention).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ExampleLosses:
    """One batch's per-example NLL sums (nats, with their autograd graph) and target counts.

    Attributes:
        nll_sums: shape (batch,), Σ −log p(target) over each example's target tokens.
        tokens: shape (batch,), each example's number of target tokens (labels ≠ -100).
    """

    nll_sums: torch.Tensor
    tokens: torch.Tensor

    def screened(self) -> BatchLosses:
        """The values as ``BatchLosses`` (detached Python floats) for a ``Guard``."""
        return BatchLosses(
            nll_sums=tuple(float(x) for x in self.nll_sums.detach().double().cpu()),
            weight_sums=tuple(float(x) for x in self.tokens.detach().double().cpu()),
        )


def logits_of(outputs: Any) -> torch.Tensor:
    """The ``logits`` of a model's output (a ``ModelOutput``, a dict or a tuple).

    Raises:
        ConfigurationError: the output has no logits (not a language model's output).
    """
    if isinstance(outputs, dict):
        logits = outputs.get("logits")
    elif isinstance(outputs, tuple | list) and outputs:
        logits = outputs[0]
    else:
        logits = None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ConfigurationError(
            "the loss hook needs a causal language model's logits of shape (batch, sequence, "
            f"vocabulary); the model returned {type(outputs).__name__} without them"
        )
    return logits


def example_losses_of(logits: torch.Tensor, labels: torch.Tensor, *,
                      shift: bool = True) -> ExampleLosses:
    """Per-example NLL sums of ``labels`` under ``logits``, in float32 whatever the model's dtype.

    Args:
        logits: (batch, sequence, vocabulary).
        labels: (batch, sequence) token ids, ``IGNORE_INDEX`` where there is no loss.
        shift: True for a causal LM whose labels are its input ids (position i predicts label
            i+1, as Hugging Face's causal LM losses do); False when labels are already aligned.

    Raises:
        InputError: the shapes do not match.
    """
    if labels.shape != logits.shape[:2]:
        raise InputError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}: need one label per input position"
        )
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    batch, length, vocab = logits.shape
    nll = F.cross_entropy(
        logits.float().reshape(-1, vocab), labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(batch, length)
    return ExampleLosses(nll_sums=nll.sum(dim=1), tokens=labels.ne(IGNORE_INDEX).sum(dim=1))
