"""The local backend's checkpoints, its model sources, and its errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.backends.local import (  # noqa: E402
    LocalBackend,
    build_builtin_model,
    build_char_tokenizer,
)
from ulora_remote.scenarios.pig_latin import PigLatinTask  # noqa: E402

from ulora_remote.backend import AdamParams, Datum, Example  # noqa: E402
from ulora_remote.errors import CheckpointError, ConfigurationError, InputError  # noqa: E402

torch.set_num_threads(1)
TASK = PigLatinTask(seed=0, eval_size=8)


def _steps(backend: LocalBackend, first: int, n: int) -> list[float]:
    losses = []
    for step in range(first, first + n):
        losses.append(backend.forward_backward(TASK.train_batch(step, 4)).result().mean_loss)
        lr = 2e-3 if step % 2 else 1e-3  # lr, clipping and decay change from step to step
        backend.optim_step(
            AdamParams(learning_rate=lr, weight_decay=0.01 * (step % 3), grad_clip_norm=step % 2)
        ).result()
    return losses


def test_save_load_continue_is_bit_identical_to_not_stopping(tmp_path: Path) -> None:
    straight = LocalBackend("small", seed=0, checkpoint_dir=tmp_path)
    _steps(straight, 0, 4)
    path = straight.save_state("after-4")
    hot = straight.sample(["hello ->", "xyz ->"], max_tokens=6, temperature=1.0)
    expected = _steps(straight, 4, 4)

    fresh = LocalBackend("small", seed=99, checkpoint_dir=tmp_path)  # other LoRA init and RNG
    fresh.forward_backward(TASK.train_batch(50, 4)).result()  # pending gradients are dropped
    fresh.load_state(path)
    assert fresh.sample(["hello ->", "xyz ->"], max_tokens=6, temperature=1.0) == hot
    assert _steps(fresh, 4, 4) == expected
    for (n, p), (_, q) in zip(straight.params, fresh.params, strict=True):
        assert torch.equal(p, q), n
        s, f = straight.optimizer.state[p], fresh.optimizer.state[q]
        assert all(torch.equal(s[k], f[k]) for k in ("step", "exp_avg", "exp_avg_sq")), n


def test_weights_only_load_restores_weights_and_starts_adamw_afresh(tmp_path: Path) -> None:
    trained = LocalBackend("small", seed=0, checkpoint_dir=tmp_path)
    _steps(trained, 0, 3)
    path = trained.save_state("after-3")
    # A weights-only load equals a backend whose adapter weights were copied in by hand.
    loaded = LocalBackend("small", seed=5, checkpoint_dir=tmp_path)
    _steps(loaded, 10, 2)  # moments and step counts that must be dropped
    loaded.load_state(path, optimizer=False)
    by_hand = LocalBackend("small", seed=5, checkpoint_dir=tmp_path)
    with torch.no_grad():
        for (_, p), (_, q) in zip(by_hand.params, trained.params, strict=True):
            p.copy_(q)
    for (n, p), (_, q) in zip(loaded.params, trained.params, strict=True):
        assert torch.equal(p, q), n
    assert len(loaded.optimizer.state) == 0
    weights_only = _steps(loaded, 3, 2)
    assert weights_only == _steps(by_hand, 3, 2)
    # The saved moments matter: continuing with them gives other losses.
    assert _steps(trained, 3, 2) != weights_only


def test_checkpoints_are_safetensors_and_json_written_atomically(tmp_path: Path) -> None:
    backend = LocalBackend("small", seed=0, checkpoint_dir=tmp_path)
    _steps(backend, 0, 1)
    first = Path(backend.save_state("ckpt"))
    assert first == tmp_path / "ckpt"
    assert sorted(os.listdir(first)) == [
        "adapter.safetensors", "manifest.json", "optimizer.safetensors", "rng.safetensors"]
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["base_model"] == "ulora/builtin-small" and manifest["rank"] == 8
    _steps(backend, 1, 1)
    backend.save_state("ckpt")  # overwriting replaces the checkpoint as a whole
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directories left behind
    backend.load_state("ckpt")  # a bare name resolves inside checkpoint_dir


@pytest.mark.parametrize("name", ["", "..", "../evil", "a/b", "/abs", ".hidden", "a\\b"])
def test_a_checkpoint_name_that_escapes_the_directory_is_refused(
    tmp_path: Path, name: str
) -> None:
    backend = LocalBackend("small", seed=0, checkpoint_dir=tmp_path / "ckpts")
    with pytest.raises(CheckpointError, match="not allowed"):
        backend.save_state(name)
    assert not (tmp_path / "evil").exists()


def test_a_foreign_or_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    rank8 = LocalBackend("small", seed=0, checkpoint_dir=tmp_path)
    path = rank8.save_state("r8")
    rank4 = LocalBackend("small", rank=4, seed=0, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="rank"):
        rank4.load_state(path)
    q_only = LocalBackend("small", target_modules=["q_proj"], seed=0, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="target_modules"):
        q_only.load_state(path)
    other_model = LocalBackend(str(_tiny_model_dir(tmp_path / "tiny")), seed=0)
    with pytest.raises(CheckpointError, match="base_model"):
        other_model.load_state(path)
    with pytest.raises(CheckpointError, match="no manifest"):
        rank8.load_state(str(tmp_path / "never-saved"))


def _tiny_model_dir(directory: Path, tokenizer: bool = True) -> Path:
    """A tiny random Llama with the character tokenizer, saved the Hugging Face way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    if tokenizer:
        tok.save_pretrained(str(directory))
    return directory


def test_a_local_hugging_face_directory_trains_and_samples(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    directory = _tiny_model_dir(tmp_path / "my-llama")
    backend = LocalBackend(str(directory), rank=4, target_modules=["q_proj", "v_proj"], seed=0)
    assert backend.base_model_name == "my-llama" and backend.tokenizer_dir == directory
    batch = [Example("ab ->", " ba")]
    first = backend.forward_backward(batch).result().mean_loss
    for _ in range(20):
        backend.optim_step(AdamParams(learning_rate=1e-2)).result()
        last = backend.forward_backward(batch).result().mean_loss
    assert last < first
    assert isinstance(backend.sample(["ab ->"], max_tokens=4)[0], str)
    reloaded = AutoTokenizer.from_pretrained(str(backend.tokenizer_dir), local_files_only=True)
    assert reloaded.encode("ab ->") == backend.tokenizer.encode("ab ->")


def test_builtin_model_is_cached_with_an_offline_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    first = build_builtin_model("small")  # the session cache: already built by other tests
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_builtin_model("small") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    backend = LocalBackend("small", seed=0)
    assert backend.tokenizer_dir == first
    offline = AutoTokenizer.from_pretrained(str(first), local_files_only=True)
    assert offline.encode("Hello, world!") == backend.tokenizer.encode("Hello, world!")
    with pytest.raises(ConfigurationError, match="unknown built-in model size"):
        build_builtin_model("huge", tmp_path)


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend("small", seed=0)


@pytest.mark.parametrize("call", ["forward_backward", "forward"])
def test_an_empty_batch_is_an_input_error(backend: LocalBackend, call: str) -> None:
    with pytest.raises(InputError, match="empty batch"):
        getattr(backend, call)([])
    with pytest.raises(InputError, match="empty batch"):
        getattr(backend, f"{call}_datums")([])


def test_a_completion_that_renders_to_no_tokens_is_an_input_error(backend: LocalBackend) -> None:
    with pytest.raises(InputError, match="completion of example 1 .* renders to no tokens"):
        backend.forward_backward([Example("ab ->", " ba"), Example("cd ->", "")])


def test_an_unencodable_character_is_named_with_its_example(backend: LocalBackend) -> None:
    with pytest.raises(InputError, match="character 'é' .* at position 3 of the completion of "
                                         "example 0") as exc:
        backend.render(Example("cafe ->", " afécay"))
    assert "afécay" in str(exc.value)
    with pytest.raises(InputError, match="'€' .* at position 1 of the prompt"):
        backend.sample(["5€ ->"], max_tokens=3)


def test_a_token_outside_the_vocabulary_is_an_input_error(backend: LocalBackend) -> None:
    bad = Datum((1, 5), (5, backend.vocab_size), (0.0, 1.0))
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        backend.forward_datums([bad])


def test_a_missing_model_directory_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "Llama-3.2-1B"
    with pytest.raises(ConfigurationError, match="does not exist.*never downloads"):
        LocalBackend(str(missing))


def test_a_model_directory_without_tokenizer_is_a_configuration_error(tmp_path: Path) -> None:
    directory = _tiny_model_dir(tmp_path / "no-tok", tokenizer=False)
    with pytest.raises(ConfigurationError, match="has no tokenizer.*save_pretrained"):
        LocalBackend(str(directory))


@pytest.mark.parametrize(
    "options", [{"rank": 0}, {"lora_alpha": -1.0}, {"threads": 0}, {"dtype": "float8"}]
)
def test_bad_options_are_configuration_errors(options: dict) -> None:
    with pytest.raises(ConfigurationError):
        LocalBackend("small", **options)


def test_close_removes_its_own_checkpoint_dir_and_refuses_later_calls(tmp_path: Path) -> None:
    from ulora_remote.errors import BackendError

    owned = LocalBackend("small", seed=0)
    path = Path(owned.save_state("x"))
    kept = LocalBackend("small", seed=0, checkpoint_dir=tmp_path)
    kept.save_state("y")
    owned.close()
    kept.close()
    owned.close()  # safe to call twice
    assert not path.exists() and (tmp_path / "y").is_dir()
    with pytest.raises(BackendError, match="closed"):
        owned.forward([Example("ab ->", " ba")])
