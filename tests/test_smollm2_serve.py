"""``smollm2-135m`` behind ``ulora serve`` on 127.0.0.1: the unmodified tinker SDK (through the
Tinker backend, with no tokenizer of its own: ``get_info`` points it at the cache entry) and
tinker-cookbook 0.6.1's ``supervised.train``, offline.

The cookbook's settings for this model: ``model_name`` = the served tokenizer directory (the
cache entry; the cookbook's ``get_tokenizer`` loads a local directory before trying the hub) and
``renderer_name = "qwen3_instruct"``. Why that renderer: SmolLM2's template is plain ChatML
(``<|im_start|>role\\ncontent<|im_end|>\\n``), and of the cookbook's renderers only the Qwen3
family writes ChatML; ``qwen3`` and ``qwen3_disable_thinking`` add a ``<think>`` block to the
assistant turn, ``qwen3_instruct`` (Qwen3-2507) adds nothing. Checked below token for token: for
a conversation that starts with a system message its supervised example is the template's
tokens (less the newline after the last ``<|im_end|>``, which the renderer puts at the start of
the next turn instead), and its generation prompt and stop token are the template's. It writes
no default system prompt, where SmolLM2's template adds one to a conversation without a system
message, so give the data a system message to train on exactly what the template renders.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn")

import tinker  # noqa: E402
from ulora_remote.backends.server import RunningServer, ServerConfig, serve_in_thread  # noqa: E402
from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402
from ulora_remote.backends.tinker.render import load_tokenizer, render_example  # noqa: E402
from ulora_remote.scenarios.pig_latin import load_words, to_pig_latin  # noqa: E402

from ulora_remote.backend import AdamParams, Message  # noqa: E402
from ulora_remote.chat import chat_example  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "tml-smollm2-test-key"
NAME = "smollm2-135m"
RENDERER = "qwen3_instruct"
SYSTEM = "Translate the word into Pig Latin."


@pytest.fixture(scope="module")
def server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    mp = pytest.MonkeyPatch()
    # Offline: the cookbook fetches a pricing file over HTTPS; send that to a closed local port.
    for var in ("HTTPS_PROXY", "https_proxy"):
        mp.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        mp.setenv(var, "127.0.0.1,localhost")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TINKER_TELEMETRY", "0")
    mp.setenv("TINKER_API_KEY", KEY)
    mp.delenv("TINKER_BASE_URL", raising=False)
    srv = serve_in_thread(
        ServerConfig(port=0, base_model=NAME, checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
                     api_key=KEY, threads=1),
        start_timeout_s=300,
    )
    yield srv
    srv.stop()
    mp.undo()


def _conversation(word: str) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", word),
            Message("assistant", to_pig_latin(word))]


def test_the_sdk_trains_and_samples_it_through_ulora_serve(
        server: RunningServer, smollm2_dir: Path) -> None:
    models = tinker.RestClient(base_url=server.base_url, api_key=KEY) \
        .get_server_capabilities().result().supported_models
    assert [(m.model_name, m.max_context_length) for m in models] == [
        (NAME, 8192), (str(smollm2_dir.resolve()), 8192)]
    # No tokenizer given: the SDK loads get_info's tokenizer_id, the cache entry, offline.
    backend = TinkerBackend(NAME, rank=4, seed=0, base_url=server.base_url)
    batch = [chat_example(_conversation(w)) for w in ("stone", "apple", "quick", "glove")]
    local = load_tokenizer(smollm2_dir)
    assert [backend.render(e) for e in batch] == [render_example(local, e) for e in batch]
    losses = []
    for _ in range(3):
        losses.append(backend.forward_backward(batch).result().mean_loss)
        backend.optim_step(AdamParams(learning_rate=2e-3)).result()
    assert losses[-1] < losses[0]  # the same batch three times: the loss falls
    answer = backend.sample(batch[:1], max_tokens=8)[0]
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer
    backend.close()


def test_the_cookbook_renderer_writes_the_models_template(smollm2_dir: Path) -> None:
    pytest.importorskip("tinker_cookbook")
    from tinker_cookbook import renderers
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    tokenizer = get_tokenizer(str(smollm2_dir))
    renderer = renderers.get_renderer(RENDERER, tokenizer)
    for messages in ([m.__dict__ for m in _conversation("stone")],
                     [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "a"},
                      {"role": "assistant", "content": "away"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "bay"}]):
        template = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        newline = tokenizer.encode("\n", add_special_tokens=False)
        model_input, _ = renderer.build_supervised_example(messages)
        assert model_input.to_ints() + newline == list(template["input_ids"])
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)
        assert renderer.build_generation_prompt(messages[:-1]).to_ints() == list(
            prompt["input_ids"])
    assert renderer.get_stop_sequences() == [tokenizer.eos_token_id]  # <|im_end|>


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "pig_latin.jsonl"
    with path.open("w") as f:
        for word in load_words()[:48]:
            f.write(json.dumps({"messages": [m.__dict__ for m in _conversation(word)]}) + "\n")
    return path


def test_cookbook_supervised_train_against_ulora_serve(server: RunningServer,
                                                       tmp_path: Path) -> None:
    train = pytest.importorskip("tinker_cookbook.supervised.train")
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    name = server.service.served().tokenizer_name  # what `ulora serve` prints for the cookbook
    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=name, renderer_name=RENDERER, max_length=64, batch_size=4)
    builder = FromConversationFileBuilder(common_config=common, file_path=str(_data(tmp_path)),
                                          test_size=8)
    log = tmp_path / "run"
    config = train.Config(
        log_path=str(log), model_name=name, recipe_name="ulora-serve-smollm2",
        renderer_name=RENDERER, dataset_builder=builder, learning_rate=2e-3, lora_rank=4,
        base_url=server.base_url, save_every=0, eval_every=3, max_steps=4,
    )
    asyncio.run(train.main(config))
    rows = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    evals = [r["test/nll"] for r in rows if "test/nll" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]  # held-out NLL falls
    final = [json.loads(line) for line in (log / "checkpoints.jsonl").read_text().splitlines()]
    assert final[-1]["state_path"].endswith("/weights/final")
