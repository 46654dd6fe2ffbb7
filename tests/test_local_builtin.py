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
    assert isinstance(backend.sample([Example("user:\thi\n", "")], max_tokens=3)[0], str)
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
    lines: list[str] = []
    rebuilt = build_builtin_model("small", tmp_path, progress=lines.append)
    assert rebuilt == stale
    # what happens, that it happens once and where the result goes, before the first step
    assert "pre-training it once" in lines[0] and str(stale) in lines[0]
    assert "is ready" in lines[-1] and str(stale) in lines[-1]
    assert json.loads((rebuilt / "recipe.json").read_text())["vocab"] == CHAR_VOCAB
    # pre-training is deterministic: the rebuilt weights are the session entry's, bit for bit
    weights = "model.safetensors"
    assert (rebuilt / weights).read_bytes() == (fresh / weights).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name]  # nothing left aside


def test_pretraining_progress_reports_steps_loss_and_time_left_every_few_seconds() -> None:
    from ulora_remote.backends.local.progress import PretrainReport

    lines: list[str] = []
    ticks = iter([0.0, 2.0, 4.0, 6.0, 7.0, 12.0, 13.0, 20.0])  # start, 6 steps, done
    report = PretrainReport(lines.append, "medium", 6, Path("/c/builtin-medium-x"), every_s=5.0,
                            clock=ticks.__next__)
    report.start()
    for step, loss in enumerate([4.0, 3.0, 2.0, 1.0, 0.5, 0.25]):
        report.step(step, loss)
    report.done()
    assert lines[1:-1] == [
        # 2 s a step since the first step (which paid for the start-up): 3 steps left, 6 s
        "pre-training 'medium': step 3/6, loss 3.000, 6 s so far, about 6 s left",
        "pre-training 'medium': step 5/6, loss 0.750, 12 s so far, about 2 s left",
    ]
    assert lines[-1].startswith("the built-in 'medium' model is ready (20.0 s)")
    quiet = PretrainReport(None, "small", 2, Path("/c"), clock=iter([0.0, 1.0]).__next__)
    quiet.start()
    quiet.step(0, 1.0)
    quiet.done()  # nothing to say, nothing raised


def test_a_cached_model_loads_without_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    build_builtin_model("small")  # the session cache: built already, or now
    capsys.readouterr()
    LocalBackend("small", seed=0)  # the default progress prints to stderr, but only when building
    assert capsys.readouterr().err == ""


def test_the_default_progress_prints_ulora_lines_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ulora_remote.backends.local import stderr_progress

    stderr_progress("pre-training 'small': step 1/2")
    assert capsys.readouterr() == ("", "ulora: pre-training 'small': step 1/2\n")
