"""The built-in character models: their vocabulary (newline and tab), the error for a character
outside it, and a model cache that never reuses an entry built on another vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.backends.local import (  # noqa: E402
    CHAR_VOCAB,
    LocalBackend,
    build_builtin_model,
    builtin_cache_path,
)
from ulora_remote.backends.local import builtin as builtin_module  # noqa: E402

from ulora_remote.backend import Example  # noqa: E402
from ulora_remote.errors import InputError  # noqa: E402

torch.set_num_threads(1)
#: the vocabulary before newline and tab were added (ids 0..98)
OLD_VOCAB = {tok: i for tok, i in CHAR_VOCAB.items() if tok not in ("\n", "\t")}


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend("small", seed=0)


def test_newline_and_tab_are_tokens_of_their_own_after_the_old_ids() -> None:
    assert len(OLD_VOCAB) == 99 and sorted(OLD_VOCAB.values()) == list(range(99))
    assert (CHAR_VOCAB["\n"], CHAR_VOCAB["\t"]) == (99, 100)  # existing ids keep their values


def test_a_chat_shaped_example_renders_newlines_and_tabs(backend: LocalBackend) -> None:
    example = Example("user:\thi\n\nassistant:", " yo\n")
    d = backend.render(example)
    tokens = [*d.input_tokens, d.target_tokens[-1]]
    text_ids = tokens[1:-1]  # without <bos> and <eos>
    assert text_ids == [CHAR_VOCAB[c] for c in example.prompt + example.completion]
    assert backend.tokenizer.unk_token_id not in tokens
    # the tokenizer itself (the sampling path) splits a run of newlines into one token each
    assert backend.tokenizer.encode("a\n\nb", add_special_tokens=False) == [
        CHAR_VOCAB["a"], CHAR_VOCAB["\n"], CHAR_VOCAB["\n"], CHAR_VOCAB["b"]]
    assert backend.forward_backward([example]).result().mean_loss > 0
    assert isinstance(backend.sample(["user:\thi\n"], max_tokens=3)[0], str)
    backend.optimizer.zero_grad(set_to_none=True)


def test_a_character_outside_the_vocabulary_is_named_with_its_position(
    backend: LocalBackend,
) -> None:
    with pytest.raises(InputError, match=r"character '\\r' \(U\+000D\) at position 6 of the "
                                         r"prompt of example 1"):
        backend.forward_backward([Example("ok ->", " ok"), Example("user:\t\r\nhi", " yo")])
    long_text = "x" * 200 + "ü" + "y" * 200
    with pytest.raises(InputError, match="position 200 of the completion") as exc:
        backend.render(Example("ab ->", long_text))
    assert len(str(exc.value)) < 300  # an excerpt around the character, not the whole record


def test_the_cache_key_covers_the_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    today = builtin_cache_path("small")
    monkeypatch.setattr(builtin_module, "CHAR_VOCAB", OLD_VOCAB)
    assert builtin_cache_path("small") != today


def test_a_cache_entry_built_on_another_vocabulary_is_rebuilt(tmp_path: Path) -> None:
    fresh = build_builtin_model("small")  # the session cache's entry, built on today's vocabulary
    stale = builtin_cache_path("small", tmp_path)
    shutil.copytree(fresh, stale)
    meta = json.loads((stale / "recipe.json").read_text())
    (stale / "recipe.json").write_text(json.dumps({**meta, "vocab": OLD_VOCAB}))
    (stale / "model.safetensors").write_bytes(b"not the model")
    rebuilt = build_builtin_model("small", tmp_path)
    assert rebuilt == stale
    assert json.loads((rebuilt / "recipe.json").read_text())["vocab"] == CHAR_VOCAB
    # pre-training is deterministic: the rebuilt weights are the session entry's, bit for bit
    weights = "model.safetensors"
    assert (rebuilt / weights).read_bytes() == (fresh / weights).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name]  # nothing left aside
