"""tinker-cookbook's ``supervised.train`` against ``ulora serve``, by configuration only.

The cookbook is an optional dependency; the README's test command installs it, so CI runs this
module, and elsewhere it is skipped, with the reason, when it cannot be imported. Install (0.6.1
asks for a ``tml-renderers`` release the registry may not have, and ``supervised.train`` never
imports it)::

    pip install -e '.[cookbook]' && pip install --no-deps tinker-cookbook==0.6.1

What a user sets: ``base_url`` (the server), ``model_name`` (the path the server advertises as
its second ``supported_models`` entry: the served tokenizer directory, which the cookbook's
``get_tokenizer`` loads offline) and a renderer whose turns fit the built-in model's 64
positions (``role_colon`` with ``max_length=64``). Checked: the loss falls, checkpoints are
written, an interrupted run resumes from its checkpoint with the optimizer state (and the
cookbook's renderer check reads the run's metadata from ``GET training_runs/{id}``), a
weights-only start works, the test-set evaluator runs without a 408, weights export, sampling
parses into an assistant message, and an over-long example is refused by name.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL = (
    "tinker-cookbook is not installed; install: pip install -e '.[cookbook]' && "
    "pip install --no-deps tinker-cookbook==0.6.1"
)
pytest.importorskip("torch")
pytest.importorskip("uvicorn")
train = pytest.importorskip("tinker_cookbook.supervised.train", reason=INSTALL)

import tinker  # noqa: E402
from tinker import types  # noqa: E402
from tinker_cookbook import renderers  # noqa: E402
from tinker_cookbook.supervised.data import FromConversationFileBuilder  # noqa: E402
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig  # noqa: E402
from tinker_cookbook.tokenizer_utils import get_tokenizer  # noqa: E402
from ulora_remote.backends.server import RunningServer, ServerConfig, serve_in_thread  # noqa: E402
from ulora_remote.scenarios.pig_latin import load_words, to_pig_latin  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "tml-cookbook-test-key"
RENDERER = "role_colon"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    mp = pytest.MonkeyPatch()
    # Offline: the cookbook fetches a pricing file over HTTPS; send that to a closed local port
    # (it logs a warning and goes on). The SDK talks to 127.0.0.1 directly.
    mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    mp.setenv("https_proxy", "http://127.0.0.1:9")
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    mp.setenv("no_proxy", "127.0.0.1,localhost")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TINKER_TELEMETRY", "0")
    mp.setenv("TINKER_API_KEY", KEY)
    srv = serve_in_thread(
        ServerConfig(port=0, checkpoint_dir=tmp_path_factory.mktemp("ckpt"), api_key=KEY),
        start_timeout_s=120,
    )
    yield srv
    srv.stop()
    mp.undo()


def _model_name(srv: RunningServer) -> str:
    rest = tinker.RestClient(base_url=srv.base_url, api_key=KEY)
    models = rest.get_server_capabilities().result().supported_models
    assert [m.max_context_length for m in models] == [64, 64]
    name = models[-1].model_name
    assert name is not None and os.path.isdir(name)  # what get_tokenizer loads offline
    return name


def _config(srv: RunningServer, log: Path, data: Path, steps: int, **kw: object) -> object:
    name = _model_name(srv)
    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=name, renderer_name=RENDERER, max_length=64, batch_size=8
    )
    builder = FromConversationFileBuilder(common_config=common, file_path=str(data), test_size=48)
    return train.Config(
        log_path=str(log), model_name=name, recipe_name="ulora-serve-test", renderer_name=RENDERER,
        dataset_builder=builder, learning_rate=5e-3, lora_rank=8, base_url=srv.base_url,
        save_every=4, eval_every=4, max_steps=steps, **kw,
    )  # fmt: skip


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "pig_latin.jsonl"
    with path.open("w") as f:
        for word in load_words()[:160]:
            messages = [{"role": "user", "content": word},
                        {"role": "assistant", "content": to_pig_latin(word)}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _metrics(log: Path) -> list[dict]:
    return [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(log: Path) -> list[dict]:
    return [json.loads(line) for line in (log / "checkpoints.jsonl").read_text().splitlines()]


def test_supervised_train_resume_weights_only_and_sampling(
    server: RunningServer, tmp_path: Path
) -> None:
    data, log = _data(tmp_path), tmp_path / "run"
    asyncio.run(train.main(_config(server, log, data, steps=10)))
    rows = _metrics(log)
    assert [r["step"] for r in rows] == list(range(10))
    assert rows[-1]["train_mean_nll"] < 0.7 * rows[0]["train_mean_nll"]  # the loss falls
    evals = [r for r in rows if "test/nll" in r]
    assert [r["step"] for r in evals] == [0, 4, 8] and evals[-1]["test/nll"] < evals[0]["test/nll"]
    assert server.service.scheduler.wait_timeouts == 0  # no evaluation request waited 10 s
    final = _checkpoints(log)[-1]
    assert final["state_path"].endswith("/weights/final")

    # An interrupted run: drop the final checkpoint, as if the process died after step 9's
    # results but before it saved; resuming restores the step-8 state with its optimizer.
    lines = (log / "checkpoints.jsonl").read_text().splitlines()
    (log / "checkpoints.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    resume_from = json.loads(lines[-2])["state_path"]
    asyncio.run(train.main(_config(server, log, data, steps=12)))
    assert [r["step"] for r in _metrics(log)] == list(range(12))
    resumed = [c for c in server.counters.snapshot().values() if c.loaded_from == resume_from]
    assert len(resumed) == 1 and resumed[0].inherited_optim_step > 0

    # The run's metadata, as the cookbook's renderer check reads it, and a weights export.
    service = tinker.ServiceClient(base_url=server.base_url)
    rest = tinker.RestClient(base_url=server.base_url, api_key=KEY)
    run = rest.get_training_run_by_tinker_path(resume_from).result()
    assert run.user_metadata is not None and run.user_metadata["renderer_name"] == RENDERER
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path.startswith("tinker://")

    # A weights-only start from the final checkpoint of the resumed run.
    final = _checkpoints(log)[-1]
    other = tmp_path / "from-weights"
    asyncio.run(
        train.main(_config(server, other, data, steps=2, load_checkpoint_path=final["state_path"]))
    )
    assert [r["step"] for r in _metrics(other)] == [0, 1]

    # Sampling with the renderer: the turn separator is real text, and the answer parses.
    tokenizer = get_tokenizer(_model_name(server))
    assert tokenizer.unk_token_id not in tokenizer.encode("\n\nUser:", add_special_tokens=False)
    renderer = renderers.get_renderer(RENDERER, tokenizer)
    sampler = service.create_sampling_client(model_path=final["sampler_path"]).result()
    prompt = renderer.build_generation_prompt([{"role": "user", "content": "hello"}])
    stop = renderer.get_stop_sequences()
    params = types.SamplingParams(max_tokens=16, temperature=0.0, stop=stop)
    sequence = sampler.sample(prompt, 1, params).result().sequences[0]
    message, _ = renderer.parse_response(list(sequence.tokens))
    assert message["role"] == "assistant" and "<unk>" not in str(message["content"])
    service.close("success").result()


def test_export_and_over_long_examples(server: RunningServer) -> None:
    service = tinker.ServiceClient(base_url=server.base_url)
    training = service.create_lora_training_client(base_model=_model_name(server), rank=4).result()
    export = training.save_weights_external("export").result()
    assert export.path.endswith("/external_weights/export")
    too_long = types.Datum(
        model_input=types.ModelInput.from_ints([5] * 65),
        loss_fn_inputs={"target_tokens": [5] * 65, "weights": [1.0] * 65},
    )
    with pytest.raises(Exception, match="max_context_length") as info:
        training.forward_backward([too_long], "cross_entropy").result()
    assert "65 positions" in str(info.value)
    assert server.counters.get(training.model_id).forward_backward == 0
    service.close("success").result()
