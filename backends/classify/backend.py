"""``ClassifierBackend``: the TrainingBackend protocol on a sequence-classification model.

An ``Example`` is a sentence pair and its label text: ``inputs = (<sentence 1>, <sentence 2>)``
(the tokenizer's text pair; an example without ``inputs`` is one text, its ``prompt``) and
``completion`` one of ``labels`` (surrounding whitespace ignored). The loss of an example
is the cross-entropy of its label (nats) with weight 1, so ``ForwardBackwardResult.mean_loss`` is
the mean CE per example and the runner, controller and logs need no special case. ``sample``
returns the predicted label text, so the runner's exact match is accuracy.

Training is LoRA on the attention's query and value projections (``q_lin``/``v_lin`` for
DistilBERT, as in the seed's notebook) with the classification head fully trained (peft
``modules_to_save``). Dropout is off (``model.eval()``), as in the local backend: training and
evaluation compute the same function and runs are deterministic under a seed. Set-up, the AdamW
step, checkpoints (the local backend's atomic safetensors format) and ``close`` are the local
backend's shared functions (``ulora_remote.backends.local.training`` and ``.state``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ulora_remote.backends.local import state, training

from ulora_remote.backend import (
    AdamParams,
    Completed,
    Datum,
    Example,
    ForwardBackwardResult,
    OptimStepResult,
)
from ulora_remote.errors import ConfigurationError, InputError

from .loading import attach_classifier_lora, load_classifier

__all__ = ["ClassifierBackend"]

_CHUNK = 64  # examples per forward pass in sample() and forward(): bounds activation memory


class ClassifierBackend:
    """LoRA fine-tuning of a sequence classifier behind the ``TrainingBackend`` protocol.

    Args:
        base_model: ``"tiny-distilbert"`` (built in code), a local model directory, or a hub
            name such as ``"distilbert-base-uncased"`` (loaded by transformers, which downloads
            it when the hub is reachable and reads its cache otherwise).
        labels: label texts in class-index order; MRPC is ``("0", "1")``.
        rank, lora_alpha: the LoRA's rank and scaling numerator.
        target_modules: linear layers that get a LoRA; None picks ``q_lin``/``v_lin``
            (DistilBERT) or ``query``/``value`` (BERT-like).
        max_length: tokens per pair after truncation.
        device: ``"cpu"``, ``"cuda"``...; None picks CUDA when present.
        seed: seeds the LoRA initialisation and the sampling generator.
        threads: torch CPU threads (None leaves torch's setting).
        checkpoint_dir: where ``save_state(name)`` writes ``checkpoint_dir/name``. None: a new
            folder ``./ulora-checkpoints/classify-<date>-<time>-<6 hex>`` under the working
            directory, created by the first save and kept after ``close``.

    Raises:
        ConfigurationError: bad options, or a model that cannot be loaded (the message says how
            to get it).
    """

    def __init__(self, base_model: str = "distilbert-base-uncased", *,
                 labels: Sequence[str] = ("0", "1"), rank: int = 16, lora_alpha: float = 32,
                 target_modules: Sequence[str] | None = None, max_length: int = 128,
                 device: str | None = None, seed: int = 0, threads: int | None = None,
                 checkpoint_dir: str | Path | None = None) -> None:
        self.labels = tuple(s.strip() for s in labels)
        _check_options(self.labels, max_length)
        training.check_lora_options(rank, lora_alpha, threads)
        self.device = training.setup_torch(device=device, seed=seed, threads=threads)
        base = load_classifier(base_model, len(self.labels))
        self.model = attach_classifier_lora(base.model, rank, lora_alpha, target_modules)
        self.model.to(self.device).eval()
        self.tokenizer = base.tokenizer
        self.base_model_name, self.base_fingerprint = base.name, base.fingerprint
        self.rank, self.lora_alpha, self.max_length = rank, float(lora_alpha), max_length
        # Inputs are truncated to max_length tokens, so no sequence is ever too long.
        self.max_context_length: int | None = None
        identity = training.AdapterIdentity(
            base.name, base.fingerprint, rank, float(lora_alpha),
            tuple(sorted(self.model.peft_config["default"].target_modules)))
        self.training = training.new_training_state(
            self.model, device=self.device, seed=seed, checkpoint_dir=checkpoint_dir,
            identity=identity, kind="classify")

    # -- encoding -------------------------------------------------------------------------------
    def _label_ids(self, batch: Sequence[Example]) -> list[int]:
        ids = []
        for i, ex in enumerate(batch):
            text = ex.completion.strip()
            if text not in self.labels:
                raise InputError(f"example {i} has the label {ex.completion!r}, which is not one "
                                 f"of this classifier's labels {list(self.labels)}; fix the data "
                                 "or pass labels=... to the backend")
            ids.append(self.labels.index(text))
        return ids

    def _encode(self, examples: Sequence[Example]) -> dict[str, Any]:
        if len(examples) == 0:
            raise InputError("empty batch: pass at least one Example")
        firsts, seconds = zip(*(_text_pair(e) for e in examples), strict=True)
        pair = None if all(s is None for s in seconds) else [s or "" for s in seconds]
        enc = self.tokenizer(list(firsts), pair, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()
                if k in ("input_ids", "attention_mask")}

    def render(self, example: Example) -> Datum:
        """The pair's tokens; the label index is the target at the last position (weight 1).

        Raises:
            InputError: the label is not one of ``labels``.
        """
        label = self._label_ids([example])[0]
        ids = tuple(int(t) for t in self._encode([example])["input_ids"][0].tolist())
        return Datum(ids, (label,) * len(ids), (0.0,) * (len(ids) - 1) + (1.0,))

    # -- the TrainingBackend protocol -----------------------------------------------------------
    def _losses(self, batch: Sequence[Example], *, train: bool) -> ForwardBackwardResult:
        self._check_open()
        labels = torch.tensor(self._label_ids(batch), device=self.device)
        enc = self._encode(batch)
        with torch.enable_grad() if train else torch.inference_mode():
            logits = self.model(**enc).logits.float()
            nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            if train:
                nll.sum().backward()
        return ForwardBackwardResult(tuple(nll.detach().cpu().tolist()), (1.0,) * len(batch))

    def forward_backward(self, batch: Sequence[Example]) -> Completed[ForwardBackwardResult]:
        """Accumulate gradients of Σ CE(label) over the batch. Raises InputError on bad data."""
        return Completed(self._losses(batch, train=True))

    def forward(self, batch: Sequence[Example]) -> Completed[ForwardBackwardResult]:
        """Per-example CE of the label without gradients. Raises InputError on bad data."""
        if len(batch) == 0:
            raise InputError("empty batch: pass at least one Example")
        parts = [self._losses(batch[i:i + _CHUNK], train=False)
                 for i in range(0, len(batch), _CHUNK)]
        return Completed(ForwardBackwardResult(
            tuple(x for r in parts for x in r.nll_sums),
            tuple(x for r in parts for x in r.weight_sums)))

    def optim_step(self, params: AdamParams) -> Completed[OptimStepResult]:
        """One AdamW step with exactly ``params``, then clear the gradients.

        Returns the global L2 norm of the gradients before clipping (0.0 when none were
        accumulated).
        """
        self._check_open()
        return Completed(training.adamw_step(self.training, params))

    def save_state(self, name: str) -> str:
        """Write LoRA, head, AdamW and RNG state to ``checkpoint_dir/name``; return its path.

        Raises:
            CheckpointError: the name escapes ``checkpoint_dir``, or writing failed.
        """
        self._check_open()
        return str(state.save(self.training, name))

    def load_state(self, ref: str, *, optimizer: bool = True) -> None:
        """Restore a checkpoint of ``save_state``; pending gradients are discarded.
        ``optimizer=False`` restores the weights only and starts AdamW afresh.

        Raises:
            CheckpointError: missing, incomplete, or made for another base model or LoRA shape.
        """
        self._check_open()
        state.load(self.training, ref, optimizer=optimizer)

    def sample(self, examples: Sequence[Example], max_tokens: int = 1,
               temperature: float = 0.0) -> list[str]:
        """The predicted label text of each pair: the argmax at temperature 0, else a draw from
        softmax(logits / temperature). ``max_tokens`` is ignored (a label is one answer)."""
        self._check_open()
        if not math.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature={temperature} must be finite and ≥ 0")
        out: list[str] = []
        for i in range(0, len(examples), _CHUNK):
            with torch.inference_mode():
                logits = self.model(**self._encode(examples[i:i + _CHUNK])).logits.float()
                if temperature == 0:
                    picks = logits.argmax(dim=-1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    gen = self.training.generator
                    picks = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            out.extend(self.labels[int(k)] for k in picks.tolist())
        return out

    def close(self) -> None:
        """Drop pending gradients; later calls raise BackendError. Checkpoints are kept.
        Idempotent."""
        training.close(self.training)

    def _check_open(self) -> None:
        training.check_open(self.training, "ClassifierBackend")


def _text_pair(example: Example) -> tuple[str, str | None]:
    """The tokenizer's text (pair) of an example: its two ``inputs``, or its prompt alone.

    Raises:
        InputError: ``inputs`` with other than two texts, or a conversation.
    """
    if example.messages:
        raise InputError("the sequence classifier takes texts or sentence pairs, not "
                         "conversations (Example.messages); train chat records on a causal LM")
    if not example.inputs:
        return example.prompt, None
    if len(example.inputs) != 2:
        raise InputError(f"a classifier example takes a sentence pair as inputs, got "
                         f"{len(example.inputs)} text(s)")
    return example.inputs[0], example.inputs[1]


def _check_options(labels: tuple[str, ...], max_length: int) -> None:
    if len(labels) < 2 or len(set(labels)) != len(labels) or "" in labels:
        raise ConfigurationError(f"labels={list(labels)!r}: give at least two distinct, "
                                 "non-empty label texts")
    if not isinstance(max_length, int) or max_length < 8:
        raise ConfigurationError(f"max_length={max_length!r} must be an integer ≥ 8")
