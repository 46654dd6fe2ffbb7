"""The built-in ``"tiny-distilbert"``: a DistilBERT-architecture classifier built from a config,
with a word-level tokenizer built in code, for offline tests. Nothing is downloaded.

The base weights are drawn from a fixed seed (``BASE_SEED``), independent of the run's seed, so
every instance has the same base and a checkpoint of one loads into another. The model is *not*
pre-trained: a LoRA on q/v plus the trained classification head can still learn lexical cues of
the generated paraphrase set (``ulora_remote.scenarios.paraphrase``), which is what the tests use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ulora_remote.extras import import_names

__all__ = ["BASE_SEED", "TINY_CONFIG", "TINY_NAME", "build_tiny_classifier", "build_word_tokenizer"]

TINY_NAME = "tiny-distilbert"
BASE_SEED = 1234
#: DistilBertConfig fields of the tiny model; dropout off so training and evaluation agree.
TINY_CONFIG: dict[str, Any] = dict(
    dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64,
    dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=2,
)
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_word_tokenizer(words: Sequence[str]) -> Any:
    """A BERT-style fast tokenizer over ``words`` (lower-cased; punctuation split off).

    A pair encodes as ``[CLS] a [SEP] b [SEP]``; an unknown word maps to ``[UNK]``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    (PreTrainedTokenizerFast,) = import_names("transformers", "local", "PreTrainedTokenizerFast")

    vocab = {tok: i for i, tok in enumerate((*_SPECIALS, *sorted(set(words))))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=TINY_CONFIG[
            "max_position_embeddings"], model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_classifier(words: Sequence[str] | None = None) -> tuple[Any, Any, str]:
    """The tiny model, its tokenizer and a fingerprint of both.

    Args:
        words: the tokenizer's vocabulary; by default that of the generated paraphrase set.

    Returns:
        ``(model, tokenizer, fingerprint)``; the model's weights depend only on ``BASE_SEED``,
        the config and the vocabulary size, never on torch's global RNG state.
    """
    import torch
    DistilBertConfig, DistilBertForSequenceClassification = import_names(
        "transformers", "local", "DistilBertConfig", "DistilBertForSequenceClassification")

    if words is None:
        from ulora_remote.scenarios.paraphrase import vocabulary

        words = vocabulary()
    tokenizer = build_word_tokenizer(words)
    config = DistilBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              **TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(BASE_SEED)
        model = DistilBertForSequenceClassification(config)
    blob = json.dumps({"config": TINY_CONFIG, "vocab": tokenizer.get_vocab(), "seed": BASE_SEED,
                       "torch": torch.__version__.split(".")[:2]}, sort_keys=True)
    return model, tokenizer, hashlib.sha256(blob.encode()).hexdigest()[:16]
