"""The unmodified ``tinker`` SDK against ``ulora serve`` on 127.0.0.1 with the "small" model.

Trains Pig Latin, round-trips a checkpoint with its optimizer, samples, and survives a seeded
fault storm (429, 500, 408, 410, dropped connections on 10% of requests) with every step
executed exactly once and the same losses as the fault-free run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tinker")
pytest.importorskip("torch")
pytest.importorskip("uvicorn")

import tinker  # noqa: E402
import torch  # noqa: E402
from tinker import types  # noqa: E402
from ulora_remote.backends.server import (  # noqa: E402
    FaultConfig,
    RunningServer,
    ServerConfig,
    serve_in_thread,
)

pytestmark = pytest.mark.slow

KEY = "tml-test-not-a-real-key"
WORDS = ["hello", "world", "string", "apple", "banana", "cherry", "glove", "tree",
         "school", "eat", "orange", "plant", "smile", "quick", "under", "black"]  # fmt: skip
LR = 5e-3


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("TINKER_TELEMETRY", "HF_HUB_OFFLINE")}
    os.environ.update(TINKER_TELEMETRY="0", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    yield
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def pig_latin(word: str) -> str:
    for i, ch in enumerate(word):
        if ch in "aeiou":
            return word[i:] + word[:i] + "ay" if i else word + "way"
    return word + "ay"


def batch(tok: object, step: int) -> list[types.Datum]:
    """Four words per step; the loss falls on the Pig Latin completion only."""
    out = []
    for k in range(4):
        word = WORDS[(4 * step + k) % len(WORDS)]
        prompt = tok.encode(f"{word} ->")  # type: ignore[attr-defined]
        completion = tok.encode(f" {pig_latin(word)}", add_special_tokens=False)  # type: ignore[attr-defined]
        tokens = prompt + completion
        weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
        out.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
            )
        )
    return out


def mean_loss(output: types.ForwardBackwardOutput, data: list[types.Datum]) -> float:
    weight = sum(float(sum(d.loss_fn_inputs["weights"].tolist())) for d in data)
    return output.metrics["loss:sum"] / weight


def train(tc: tinker.TrainingClient, tok: object, steps: range) -> list[float]:
    """Pipelined steps: forward_backward and optim_step submitted before either is awaited."""
    losses = []
    for step in steps:
        data = batch(tok, step)
        fb = tc.forward_backward(data, "cross_entropy")
        op = tc.optim_step(types.AdamParams(learning_rate=LR))
        losses.append(mean_loss(fb.result(timeout=120), data))
        op.result(timeout=120)
    return losses


def _server(tmp: Path, **kw: object) -> RunningServer:
    return serve_in_thread(ServerConfig(port=0, checkpoint_dir=tmp, threads=1, **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = _server(tmp_path_factory.mktemp("clean"), api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def service(clean: RunningServer) -> Iterator[tinker.ServiceClient]:
    client = tinker.ServiceClient(base_url=clean.base_url, api_key=KEY)
    yield client
    client.close("success").result(timeout=60)


def _base_model(url: str) -> str:
    """Discover the served model's name the way a script would."""
    caps = tinker.RestClient(base_url=url, api_key=KEY).get_server_capabilities().result(30)
    return str(caps.supported_models[0].model_name)


def test_sdk_trains_restores_with_optimizer_and_samples(
    clean: RunningServer, service: tinker.ServiceClient
) -> None:
    base = _base_model(clean.base_url)
    tc = service.create_lora_training_client(base_model=base, rank=8, seed=0).result(timeout=60)
    info = tc.get_info()
    assert info.model_data.model_name == base
    assert Path(str(info.model_data.tokenizer_id)).is_dir()
    tok = tc.get_tokenizer()  # from the local directory, with the hub offline

    probe = tc.forward(batch(tok, 0), "cross_entropy").result(timeout=60)  # no state change
    head = train(tc, tok, range(20))
    assert mean_loss(probe, batch(tok, 0)) == head[0]
    saved = tc.save_state("step-20").result(timeout=60)
    assert saved.path == f"tinker://{tc.model_id}/weights/step-20"
    tail_in_place = train(tc, tok, range(20, 30))
    restored = service.create_training_client_from_state_with_optimizer(saved.path).result(
        timeout=60
    )
    tail_restored = train(restored, tok, range(20, 30))

    losses = head + tail_in_place
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert tail_restored == tail_in_place  # the optimizer state survived the round trip
    counts = clean.counters.get(tc.model_id)
    assert (counts.forward, counts.forward_backward, counts.optim_step) == (1, 30, 30)
    assert clean.counters.get(restored.model_id).lineage_optim_step == 30

    sampler = tc.save_weights_and_get_sampling_client().result(timeout=60)
    prompt = types.ModelInput.from_ints(tok.encode("hello ->"))
    params = types.SamplingParams(max_tokens=12, temperature=0.0)
    first = sampler.sample(prompt, 1, params).result(timeout=60).sequences[0]
    again = sampler.sample(prompt, 1, params).result(timeout=60).sequences[0]
    assert first.tokens == again.tokens and 0 < len(first.tokens) <= 12
    assert first.stop_reason in ("stop", "length")
    assert isinstance(tok.decode(first.tokens), str)


def test_weights_only_restore_keeps_weights_and_resets_the_optimizer(
    clean: RunningServer, service: tinker.ServiceClient
) -> None:
    base = _base_model(clean.base_url)
    tc = service.create_lora_training_client(base_model=base, rank=8, seed=0).result(timeout=60)
    tok = tc.get_tokenizer()
    train(tc, tok, range(5))
    path = tc.save_state("w").result(timeout=60).path
    probe = batch(tok, 40)
    at_save = mean_loss(tc.forward(probe, "cross_entropy").result(timeout=60), probe)
    weights_only = service.create_training_client_from_state(path).result(timeout=60)
    with_optimizer = service.create_training_client_from_state_with_optimizer(path).result(
        timeout=60
    )
    for restored in (weights_only, with_optimizer):
        out = restored.forward(probe, "cross_entropy").result(timeout=60)
        assert mean_loss(out, probe) == at_save  # the same adapter weights
    # Fresh AdamW moments give another trajectory than the saved ones.
    assert train(weights_only, tok, range(5, 8)) != train(with_optimizer, tok, range(5, 8))


def run_with_recovery(
    client: tinker.ServiceClient, base: str, steps: int, every: int = 5
) -> tuple[list[float], str, int]:
    """Train ``steps`` steps; on any failed request rebuild from the last checkpoint (with its
    optimizer) and replay from its step, as the project's Tinker backend does."""
    tc = client.create_lora_training_client(base_model=base, rank=8, seed=0).result(timeout=120)
    tok = tc.get_tokenizer()
    losses: dict[int, float] = {}
    checkpoint: tuple[int, str] | None = None
    step, rebuilds = 0, 0
    while step < steps:
        try:
            losses[step] = train(tc, tok, range(step, step + 1))[0]
            step += 1
            if step % every == 0:
                checkpoint = (step, tc.save_state(f"step-{step}").result(timeout=120).path)
        except Exception:  # 410: this model's state is lost (a fault, by design)
            rebuilds += 1
            assert rebuilds < 25, "the fault storm never let the run finish"
            if checkpoint is None:
                step = 0
                tc = client.create_lora_training_client(base_model=base, rank=8, seed=0)
                tc = tc.result(timeout=120)
            else:
                step, path = checkpoint
                tc = client.create_training_client_from_state_with_optimizer(path).result(
                    timeout=120
                )
    return [losses[i] for i in range(steps)], tc.model_id, rebuilds


def test_fault_storm_executes_each_step_once_with_fault_free_losses(
    clean: RunningServer, service: tinker.ServiceClient, tmp_path: Path
) -> None:
    base = _base_model(clean.base_url)
    reference, ref_model, _ = run_with_recovery(service, base, 15)
    assert clean.counters.get(ref_model).optim_step == 15

    storm = FaultConfig(rate=0.1, seed=1)  # a seed whose storm includes 410s
    srv = _server(tmp_path, api_key=KEY, faults=storm, long_poll_s=2.0)
    try:
        client = tinker.ServiceClient(base_url=srv.base_url, api_key=KEY)
        losses, model_id, rebuilds = run_with_recovery(client, base, 15)
        client.close("success").result(timeout=60)
        counts = srv.counters.snapshot()
    finally:
        srv.stop()
    assert losses == reference
    final = counts[model_id]
    assert not final.lost
    assert (final.lineage_forward_backward, final.lineage_optim_step) == (15, 15)
    for c in counts.values():  # no model ever ran a step twice
        assert c.forward_backward == c.optim_step or c.lost
    injected = srv.faults.injected
    assert sum(injected.values()) >= 3 and "410" in injected, injected
    # Only a 410 fails a request; the first one always hits the live model.
    assert (rebuilds >= 1) == ("410" in injected) and rebuilds <= injected.get("410", 0)
