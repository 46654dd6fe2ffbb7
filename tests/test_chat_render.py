"""Chat records on the backends: the plain template on the built-in character model, a Hugging
Face chat template, loss on every assistant turn, the same tokens from the local and the Tinker
renderer, sampling after the turns before the last answer, and a chat task that learns."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.backends.local import LocalBackend  # noqa: E402
from ulora_remote.backends.local.render import render_examples, sampling_inputs  # noqa: E402
from ulora_remote.backends.local.tokenizer import build_char_tokenizer  # noqa: E402
from ulora_remote.backends.tinker.render import (  # noqa: E402
    clean_completion,
    render_example,
    sampling_prompt,
)

from ulora_remote.backend import AdamParams, Datum, Example, Message  # noqa: E402
from ulora_remote.chat import chat_example, chat_layout  # noqa: E402
from ulora_remote.errors import InputError  # noqa: E402

torch.set_num_threads(1)

TWO_TURNS = chat_example([Message("system", "be brief"), Message("user", "ab <-"),
                          Message("assistant", "ba"), Message("user", "cde <-"),
                          Message("assistant", "edc")])
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }};{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


def trained_text(tokenizer: Any, datum: Datum) -> list[str]:
    """The text of each run of weighted targets, in order."""
    runs: list[list[int]] = []
    for j, w in enumerate(datum.weights):
        if w > 0:
            if j == 0 or datum.weights[j - 1] == 0:
                runs.append([])
            runs[-1].append(datum.target_tokens[j])
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend("small", seed=0)


def test_the_plain_template_puts_loss_on_every_assistant_turn(backend):
    tok = backend.tokenizer
    datum = backend.render(TWO_TURNS)
    text = "System: be brief\nUser: ab <-\nAssistant: ba\nUser: cde <-\nAssistant: edc\n"
    tokens = [tok.bos_token_id, *tok.encode(text, add_special_tokens=False)]
    assert list(datum.input_tokens) == tokens[:-1] and list(datum.target_tokens) == tokens[1:]
    assert trained_text(tok, datum) == [" ba\n", " edc\n"]  # no EOS: the newline ends a turn
    assert datum.weight_sum == len(" ba\n") + len(" edc\n")


def test_local_and_tinker_renderers_make_the_same_tokens(backend):
    for example in (TWO_TURNS, Example("ab ->", " ab")):
        assert render_example(backend.tokenizer, example) == backend.render(example)
        local, stop = sampling_inputs(backend.tokenizer, [example])[0]
        assert sampling_prompt(backend.tokenizer, example) == (local, stop)
    prompt, stop = sampling_prompt(backend.tokenizer, TWO_TURNS)
    assert backend.tokenizer.decode(prompt, skip_special_tokens=True) == TWO_TURNS.prompt
    assert stop == "\n"


def test_a_chat_template_is_used_where_the_tokenizer_has_one():
    tok = build_char_tokenizer()
    tok.chat_template = TEMPLATE
    layout = chat_layout(TWO_TURNS.messages, tok)
    assert not layout.special_first and layout.stop_text == ";"
    datum = render_example(tok, TWO_TURNS)
    assert datum == render_examples(tok, [TWO_TURNS], tok.eos_token_id)[0]
    full = "[system]be brief;[user]ab <-;[assistant]ba;[user]cde <-;[assistant]edc;"
    tokens = tok.encode(full, add_special_tokens=False)  # the template is the whole text
    assert list(datum.input_tokens) == tokens[:-1]
    assert trained_text(tok, datum) == ["ba;", "edc;"]  # each turn with its end marker
    prompt, stop = sampling_prompt(tok, TWO_TURNS)
    assert tok.decode(prompt) == "[system]be brief;[user]ab <-;[assistant]ba;[user]cde <-;" \
                                 "[assistant]"
    assert clean_completion("edc;[user]more", None, stop) == "edc"


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tok = build_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<{{ m['content'] }}>"
                         "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(InputError, match="does not render message 2 .assistant. as a "
                                         "continuation"):
        render_example(tok, TWO_TURNS)


def test_a_character_outside_the_vocabulary_names_the_message(backend):
    bad = chat_example([Message("user", "café <-"), Message("assistant", "éfac")])
    with pytest.raises(InputError, match=r"character 'é' .* of the message 0 \(user\) of "
                                         "example 0"):
        backend.render(bad)


def test_sampling_a_mixed_batch_keeps_plain_examples_unchanged(backend):
    plain = [Example("abc ->", " abc"), Example("hello ->", " hello")]
    alone = backend.sample(plain, 8)
    mixed = backend.sample([plain[0], TWO_TURNS, plain[1]], 8)
    assert [mixed[0], mixed[2]] == alone
    assert "\n" not in mixed[1]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6)))


def _copy_turn(word: str) -> Example:
    return chat_example([Message("user", f"{word} ->"), Message("assistant", word)])


def test_a_chat_task_learns_and_its_answers_end_at_the_turn():
    backend = LocalBackend("small", seed=0)
    rng = random.Random(0)
    held_out = [_copy_turn(_word(rng)) for _ in range(16)]
    before = backend.forward(held_out).result().mean_loss
    for _ in range(150):
        backend.forward_backward([_copy_turn(_word(rng)) for _ in range(8)]).result()
        backend.optim_step(AdamParams(learning_rate=2e-3)).result()
    after = backend.forward(held_out).result().mean_loss
    assert after < 0.3 * before, (before, after)
    outputs = backend.sample(held_out, 12)
    assert all("\n" not in o for o in outputs)
    # the model learned where a turn ends: the newline stopped sampling before max_tokens
    assert sum(len(o) < 10 for o in outputs) >= 12, outputs
