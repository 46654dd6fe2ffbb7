"""The built-in character tokenizer: one token per character, built in code, no download.

The vocabulary is fixed (so a cached model and its tokenizer always agree): pad/bos/eos/unk, then
ASCII letters, digits, space and common punctuation, then newline and tab (chat templates separate
turns with newlines). New characters are appended, so every existing id keeps its value; the
built-in model cache key hashes the vocabulary, so a model built on an older one is rebuilt.
Encoding with special tokens prepends ``<bos>``, as Llama tokenizers do, so prompts render the
same way for the built-in model and for a local Hugging Face model.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from ulora_remote.extras import import_names

__all__ = [
    "BOS_TOKEN",
    "CHAR_VOCAB",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "build_char_tokenizer",
    "save_char_tokenizer",
]

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
_SPECIALS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
_CHARS = (string.ascii_lowercase + string.ascii_uppercase + string.digits + " " + string.punctuation
          + "\n\t")

#: token id of every special token and character; ids are stable across versions of this module.
CHAR_VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(_SPECIALS + tuple(_CHARS))}


def build_char_tokenizer() -> Any:
    """Build the character tokenizer as a ``transformers.PreTrainedTokenizerFast``.

    Returns:
        A fast tokenizer whose ``encode(text)`` is ``[bos] + one id per character`` and whose
        unknown characters map to ``<unk>`` (the backend turns those into an InputError).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    (PreTrainedTokenizerFast,) = import_names("transformers", "local", "PreTrainedTokenizerFast")

    core = Tokenizer(models.WordLevel(dict(CHAR_VOCAB), unk_token=UNK_TOKEN))
    # Split every character into its own pre-token ("." would leave a run of newlines whole);
    # Fuse joins tokens back without spaces.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, CHAR_VOCAB[BOS_TOKEN])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=1024,
    )


def save_char_tokenizer(tokenizer: Any, directory: Path) -> Path:
    """Save ``tokenizer`` so that ``AutoTokenizer.from_pretrained(directory)`` works offline.

    Args:
        tokenizer: the tokenizer from ``build_char_tokenizer``.
        directory: created if missing.

    Returns:
        ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory
