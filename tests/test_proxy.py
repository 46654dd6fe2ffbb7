"""``ulora proxy`` and ``ulora_remote.tinker.guard`` with the unmodified SDK against ``ulora serve``
("small" model) over real HTTP on 127.0.0.1.

Checked: pass-through is exact (training, a checkpoint saved and loaded with its optimizer,
greedy sampling, and an ``importance_sampling`` request answer the same as direct); a step with
rejected examples leaves the adapter and AdamW state of a direct step on the kept examples alone
(the cancelling ``forward_backward`` of negated weights); a step with nothing kept sends no
optimizer step; the key is in no log, record or answer.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")
pytest.importorskip("torch")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402
import tinker  # noqa: E402
import torch  # noqa: E402
from tinker import types  # noqa: E402
from tinker.proto.request_conv import forward_backward_request_to_proto  # noqa: E402
from ulora_remote.backends.proxy import ProxyConfig, RunningProxy, proxy_in_thread  # noqa: E402
from ulora_remote.backends.server import RunningServer, ServerConfig, serve_in_thread  # noqa: E402
from ulora_remote.scenarios.pig_latin import load_words, to_pig_latin  # noqa: E402

from ulora_remote.control.screen import ScreenConfig  # noqa: E402
from ulora_remote.tinker import guard  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "tml-proxy-test-key-never-shown"
LR = 1e-3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    mp = pytest.MonkeyPatch()
    mp.setenv("TINKER_TELEMETRY", "0")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TINKER_API_KEY", KEY)
    torch.set_num_threads(1)
    srv = serve_in_thread(ServerConfig(port=0, checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
                                       api_key=KEY, threads=1), start_timeout_s=120)
    yield srv
    srv.stop()
    mp.undo()


def _proxy(server: RunningServer, out: Path | None, **kw: Any) -> RunningProxy:
    return proxy_in_thread(ProxyConfig(upstream=server.base_url, out=out, **kw))


def _base(url: str) -> str:
    caps = tinker.RestClient(base_url=url, api_key=KEY).get_server_capabilities().result(30)
    return str(caps.supported_models[0].model_name)


def _datum(tok: Any, prompt: str, answer: str) -> types.Datum:
    p = tok.encode(f"{prompt} ->")
    c = tok.encode(f" {answer}", add_special_tokens=False)
    tokens = p + c
    weights = [0.0] * (len(p) - 1) + [1.0] * len(c)
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights})


def _steps(tc: Any, batches: list[list[types.Datum]]) -> list[Any]:
    """Pipelined steps, as the cookbook submits them: every call made before any wait."""
    futures = [(tc.forward_backward(b, "cross_entropy"),
                tc.optim_step(types.AdamParams(learning_rate=LR))) for b in batches]
    return [(fb.result(timeout=120), op.result(timeout=120)) for fb, op in futures]


def _logprobs(out: types.ForwardBackwardOutput) -> list[list[float]]:
    return [o["logprobs"].tolist() for o in out.loss_fn_outputs]


# ---- pass-through ---------------------------------------------------------------------------


def _script(url: str) -> dict[str, Any]:
    """Train two steps, save and load with the optimizer, train one more, sample greedily."""
    service = tinker.ServiceClient(base_url=url, api_key=KEY)
    tc = service.create_lora_training_client(base_model=_base(url), rank=4, seed=0).result(60)
    tok = tc.get_tokenizer()
    words = load_words()[:12]
    batches = [[_datum(tok, w, to_pig_latin(w)) for w in words[i:i + 4]] for i in (0, 4)]
    steps = _steps(tc, batches)
    saved = tc.save_state("ck").result(60).path
    loaded = service.create_training_client_from_state_with_optimizer(saved).result(60)
    after = _steps(loaded, [[_datum(tok, w, to_pig_latin(w)) for w in words[8:12]]])
    sampler = loaded.save_weights_and_get_sampling_client().result(60)
    prompt = types.ModelInput.from_ints(tok.encode("apple ->"))
    sample = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=8, temperature=0.0),
                            include_prompt_logprobs=True).result(60)
    out = {
        "train": [(_logprobs(fb), op.metrics) for fb, op in steps + after],
        "checkpoint": saved.split("/", 3)[-1],  # the name, without the model id
        "sample": (list(sample.sequences[0].tokens), sample.prompt_logprobs),
        "forward": _logprobs(loaded.forward(batches[0], "cross_entropy").result(60)),
    }
    service.close("success").result(60)
    return out


def test_pass_through_is_exact(server: RunningServer, tmp_path: Path) -> None:
    direct = _script(server.base_url)
    with _proxy(server, tmp_path / "records") as proxy:
        proxied = _script(proxy.base_url)
    assert proxied == direct
    rows = [r for p in (tmp_path / "records").iterdir() for r in
            (p / "steps.csv").read_text().splitlines()[1:]]
    assert len(rows) == 3 and all(r.split(",")[2] == "0" for r in rows)  # all screened, kept


def _importance_sampling(url: str) -> tuple[int, bytes]:
    service = tinker.ServiceClient(base_url=url, api_key=KEY)
    tc = service.create_lora_training_client(base_model=_base(url), rank=4, seed=0).result(60)
    datum = types.Datum(model_input=types.ModelInput.from_ints([2, 3, 4]), loss_fn_inputs={
        "target_tokens": [3, 4, 5], "logprobs": [-1.0, -1.0, -1.0],
        "advantages": [1.0, 0.5, -0.5]})
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=[datum],
                                                          loss_fn="importance_sampling"),
        model_id=tc.model_id, seq_id=1)
    body = forward_backward_request_to_proto(request).SerializeToString()
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}) as http:
        r = http.post("/api/v1/forward_backward", content=body,
                      headers={"Content-Type": "application/x-protobuf"})
    service.close("success").result(60)
    return r.status_code, r.content


def test_rl_loss_passes_through_unchanged(server: RunningServer) -> None:
    # ulora serve trains cross_entropy only: its answer to an RL loss must reach the client as
    # it is, status and body, and the proxy must not screen it.
    direct = _importance_sampling(server.base_url)
    with _proxy(server, None) as proxy:
        assert _importance_sampling(proxy.base_url) == direct
    assert direct[0] == 400 and b"importance_sampling" in direct[1]


# ---- screening ------------------------------------------------------------------------------


def _pools(tc: Any) -> tuple[list[types.Datum], list[types.Datum], float]:
    """Clean examples (Pig Latin) and corrupted ones (random letters), and a loss between them
    measured on the fresh model."""
    tok = tc.get_tokenizer()
    rng = random.Random(0)
    words = load_words()[:40]
    clean = [_datum(tok, w, to_pig_latin(w)) for w in words]
    junk = [_datum(tok, w, "".join(rng.choice("zqxjkv") for _ in range(8))) for w in words]

    def losses(data: list[types.Datum]) -> list[float]:
        out = tc.forward(data, "cross_entropy").result(60)
        return [-sum(lp * w for lp, w in zip(o["logprobs"].tolist(),
                                             d.loss_fn_inputs["weights"].tolist(), strict=True))
                / sum(d.loss_fn_inputs["weights"].tolist())
                for o, d in zip(out.loss_fn_outputs, data, strict=True)]

    lc, lj = losses(clean), losses(junk)
    clean = [d for d, x in sorted(zip(clean, lc, strict=True), key=lambda p: p[1])][:8]
    junk = [d for d, x in sorted(zip(junk, lj, strict=True), key=lambda p: -p[1])][:2]
    hi, lo = sorted(lc)[7], sorted(lj)[-2]
    assert lo - hi > 1.0, (hi, lo)  # the corrupted ones stand apart on this model
    return clean, junk, (hi + lo) / 2


# τ = max(median + z·MAD, min_loss): with z tiny, min_loss decides; no probation in 3 steps.
def _screen(cut: float) -> ScreenConfig:
    return ScreenConfig(z=1e-3, min_loss=cut, min_history=4, window=64, trigger_steps=50)


def _state(server: RunningServer, model_id: str) -> list[torch.Tensor]:
    """Each LoRA matrix (by name) and its AdamW state (step, moments), in a fixed order."""
    engine: Any = server.service.model(model_id).engine
    tensors = []
    for _, p in sorted(engine.params, key=lambda item: item[0]):
        state = engine.optimizer.state.get(p, {})
        tensors += [p.detach().clone()] + [state[k].detach().clone().float() for k in
                                            sorted(state) if isinstance(state[k], torch.Tensor)]
    return tensors


def _relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max() / max(float(y.abs().max()), 1e-30))
               for x, y in zip(a, b, strict=True))


Way = Callable[[RunningServer, Path, ScreenConfig, tinker.ServiceClient], Any]


def _via_proxy(server: RunningServer, out: Path, screen: ScreenConfig,
               _: tinker.ServiceClient) -> Any:
    proxy = _proxy(server, out, screen=screen)
    service = tinker.ServiceClient(base_url=proxy.base_url, api_key=KEY)
    tc = service.create_lora_training_client(base_model=_base(proxy.base_url), rank=4,
                                             seed=1).result(60)
    return tc, proxy, lambda: proxy.proxy.lanes[tc.model_id].upstream_id


def _via_wrapper(server: RunningServer, out: Path, screen: ScreenConfig,
                 service: tinker.ServiceClient) -> Any:
    raw = service.create_lora_training_client(base_model=_base(server.base_url), rank=4,
                                              seed=1).result(60)
    tc = guard(raw, service_client=service, out=out, screen=screen)
    return tc, None, lambda: tc.model_id


@pytest.mark.parametrize("way", [_via_proxy, _via_wrapper], ids=["proxy", "wrapper"])
def test_rejected_examples_are_cancelled_exactly(
    server: RunningServer, tmp_path: Path, way: Way
) -> None:
    service = tinker.ServiceClient(base_url=server.base_url, api_key=KEY)
    direct = service.create_lora_training_client(base_model=_base(server.base_url), rank=4,
                                                 seed=1).result(60)
    clean, junk, cut = _pools(direct)
    guarded, proxy, upstream_id = way(server, tmp_path / "out", _screen(cut), service)

    # Steps 0-1 clean; step 2 has two corrupted examples among its four clean ones.
    _steps(guarded, [clean[:4], clean[4:], clean[:4] + junk])
    _steps(direct, [clean[:4], clean[4:], clean[:4]])
    gap = _relative_gap(_state(server, upstream_id()), _state(server, direct.model_id))
    assert gap < 2e-6, gap  # float32 rounding of the cancelled sum (measured 3.8e-7)
    assert server.counters.get(upstream_id()).forward_backward == 4  # 3 passes + 1 cancel

    # A step with nothing kept: its gradient is cancelled and no optimizer step is sent.
    before = _state(server, upstream_id())
    optim_steps = server.counters.get(upstream_id()).optim_step
    _, answer = _steps(guarded, [junk])[0]
    assert answer.metrics == {}
    assert server.counters.get(upstream_id()).optim_step == optim_steps
    assert all(torch.equal(a, b) for a, b in zip(before, _state(server, upstream_id()),
                                                  strict=True))
    _steps(guarded, [clean[4:]])  # and training goes on, on the kept examples only
    _steps(direct, [clean[4:]])
    assert _relative_gap(_state(server, upstream_id()), _state(server, direct.model_id)) < 1e-5

    rows = [r.split(",") for r in next((tmp_path / "out").iterdir()).joinpath(
        "steps.csv").read_text().splitlines()[1:]]
    assert [(int(r[1]), int(r[2])) for r in rows] == [(4, 0), (4, 0), (4, 2), (0, 2), (4, 0)]
    assert rows[3][4] == ""  # no learning rate: no step was sent
    if proxy is not None:
        proxy.stop()
    service.close("success").result(60)


@pytest.mark.parametrize("way", [_via_proxy, _via_wrapper], ids=["proxy", "wrapper"])
def test_the_guard_judges_what_the_screen_of_ulora_run_would_see(
    server: RunningServer, tmp_path: Path, way: Way, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step's losses reach the guard as ``ulora run``'s screening ``forward`` would give
    them: measured on the weights before the step's update, after the previous steps' kept
    examples only (not after a cancelled gradient, nor after the step's own update)."""
    from ulora_remote.backends.proxy.core import GuardCore

    judged: list[list[float]] = []
    original = GuardCore.judge

    def spy(self: GuardCore, losses: Any) -> Any:
        judged.append([float(x) for x in losses])
        return original(self, losses)

    monkeypatch.setattr(GuardCore, "judge", spy)
    service = tinker.ServiceClient(base_url=server.base_url, api_key=KEY)
    direct = service.create_lora_training_client(base_model=_base(server.base_url), rank=4,
                                                 seed=1).result(60)
    clean, junk, cut = _pools(direct)
    guarded, proxy, _ = way(server, tmp_path / "out", _screen(cut), service)
    batches = [clean[:4], clean[4:], clean[:4] + junk, junk, clean[4:] + junk[:1], clean[:4]]
    _steps(guarded, batches)
    # The twin: a screening forward of each batch, then a step on its kept examples only.
    screened = []
    for batch in batches:
        out = direct.forward(batch, "cross_entropy").result(60)
        losses = [-sum(lp * w for lp, w in zip(o["logprobs"].tolist(),
                                               d.loss_fn_inputs["weights"].tolist(),
                                               strict=True)) / sum(d.loss_fn_inputs[
                                                   "weights"].tolist())
                  for o, d in zip(out.loss_fn_outputs, batch, strict=True)]
        screened.append(losses)
        kept = [d for d, x in zip(batch, losses, strict=True) if x <= cut]
        if kept:
            _steps(direct, [kept])
    assert [len(x) for x in judged] == [len(b) for b in batches]
    gap = max(abs(a - b) / abs(b) for j, s in zip(judged, screened, strict=True)
              for a, b in zip(j, s, strict=True))
    assert gap < 1e-5, gap
    # the screen's verdicts, so that the twin trained on what the guard kept
    assert [sum(x <= cut for x in s) for s in screened] == [4, 4, 4, 0, 4, 4]
    if proxy is not None:
        proxy.stop()
    service.close("success").result(60)


def test_key_is_never_logged_or_stored(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), _proxy(server, tmp_path / "records") as proxy:
        service = tinker.ServiceClient(base_url=proxy.base_url, api_key=KEY)
        tc = service.create_lora_training_client(base_model=_base(proxy.base_url),
                                                 rank=4).result(60)
        tok = tc.get_tokenizer()
        _steps(tc, [[_datum(tok, "tree", "eetray")]])
        with httpx.Client(base_url=proxy.base_url) as http:
            wrong = http.post("/api/v1/create_session", json={}, headers={"X-API-Key": "tml-bad"})
        service.close("success").result(60)
    assert wrong.status_code == 401 and "tml-bad" not in wrong.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged
    files = [p for p in (tmp_path / "records").rglob("*") if p.is_file()]
    assert files and all(KEY not in p.read_text() for p in files)


def test_a_remote_bind_needs_its_own_client_key(tmp_path: Path) -> None:
    import argparse

    from ulora_remote.backends.proxy.cli import add_proxy_arguments, proxy_config

    from ulora_remote.errors import ConfigurationError

    parser = argparse.ArgumentParser()
    add_proxy_arguments(parser)
    with pytest.raises(ConfigurationError, match="--allow-remote"):
        proxy_config(parser.parse_args(["--upstream", "http://x", "--host", "0.0.0.0"]), {})
    args = parser.parse_args(["--upstream", "http://x", "--host", "0.0.0.0", "--allow-remote",
                              "--client-key-env", "PROXY_KEY"])
    with pytest.raises(ConfigurationError, match="PROXY_KEY") as info:
        proxy_config(args, {"PROXY_KEY": " ", "TINKER_API_KEY": KEY})
    assert KEY not in str(info.value)
    config: Any = proxy_config(args, {"PROXY_KEY": "tml-client", "TINKER_API_KEY": KEY})
    assert config.client_key == "tml-client" and config.upstream_key == KEY
    assert os.environ.get("PROXY_KEY") is None


@pytest.mark.parametrize("way", [_via_proxy, _via_wrapper], ids=["proxy", "wrapper"])
def test_probation_that_fails_rolls_back_to_the_snapshot(
    server: RunningServer, tmp_path: Path, way: Way
) -> None:
    service = tinker.ServiceClient(base_url=server.base_url, api_key=KEY)
    direct = service.create_lora_training_client(base_model=_base(server.base_url), rank=4,
                                                 seed=1).result(60)
    clean, junk, cut = _pools(direct)
    # Two steps mostly rejected start a probation; it lasts two steps and no example passes τ.
    screen = ScreenConfig(z=1e-3, min_loss=cut, min_history=4, window=64, trigger_steps=2,
                          probation_steps=2, judge_steps=1, backoff_steps=5)
    guarded, proxy, upstream_id = way(server, tmp_path / "out", screen, service)
    first = guarded.model_id  # the upstream model is the client's own until a rollback
    _steps(guarded, [clean[:4], clean[4:], junk, junk, junk, junk])
    _steps(direct, [clean[:4], clean[4:]])
    # Steps 3 and 4 trained the noise on probation; step 5 rolled them back: a new upstream
    # model from the snapshot taken before step 3's update, with its AdamW state.
    assert upstream_id() != first
    assert _relative_gap(_state(server, upstream_id()), _state(server, direct.model_id)) < 1e-6
    _steps(guarded, [clean[:4]])  # the client's model id goes on training
    _steps(direct, [clean[:4]])
    assert _relative_gap(_state(server, upstream_id()), _state(server, direct.model_id)) < 1e-5
    rows = [r.split(",") for r in next((tmp_path / "out").iterdir()).joinpath(
        "steps.csv").read_text().splitlines()[1:]]
    assert [r[3] for r in rows] == ["", "", "", "probation", "", "rollback", ""]
    assert [int(r[1]) for r in rows] == [4, 4, 0, 2, 2, 0, 4]
    if proxy is not None:
        proxy.stop()
    service.close("success").result(60)


def test_after_a_restart_an_older_model_id_is_gone_and_resume_works(
    server: RunningServer, tmp_path: Path
) -> None:
    before = _proxy(server, None)
    service = tinker.ServiceClient(base_url=before.base_url, api_key=KEY)
    tc = service.create_lora_training_client(base_model=_base(before.base_url), rank=4).result(60)
    tok = tc.get_tokenizer()
    _steps(tc, [[_datum(tok, "tree", "eetray")]])
    saved = tc.save_state("before-restart").result(60).path
    service.close("success").result(60)
    before.stop()
    with _proxy(server, None) as after, httpx.Client(base_url=after.base_url,
                                                      headers={"X-API-Key": KEY}) as http:
        body = {"model_id": tc.model_id, "seq_id": 4, "adam_params": {"learning_rate": LR}}
        gone = http.post("/api/v1/optim_step", json=body)
        assert gone.status_code == 410 and "resume from your last checkpoint" in gone.text
        # The cookbook's resume: a new training client from the checkpoint, through the proxy.
        again = tinker.ServiceClient(base_url=after.base_url, api_key=KEY)
        resumed = again.create_training_client_from_state_with_optimizer(saved).result(60)
        _steps(resumed, [[_datum(tok, "tree", "eetray")]])
        again.close("success").result(60)
    assert server.counters.get(resumed.model_id).inherited_optim_step == 1


def test_a_chunked_batch_is_screened_whole(server: RunningServer, tmp_path: Path) -> None:
    """1,100 data: the SDK sends two chunks, the second first; the proxy orders them, screens
    the step's 1,100 examples as one batch, and the upstream accumulates both chunks."""
    with _proxy(server, tmp_path / "records") as proxy:
        service = tinker.ServiceClient(base_url=proxy.base_url, api_key=KEY)
        tc = service.create_lora_training_client(base_model=_base(proxy.base_url),
                                                 rank=4).result(60)
        data = [types.Datum(model_input=types.ModelInput.from_ints([5, 6 + i % 7, 7]),
                            loss_fn_inputs={"target_tokens": [6 + i % 7, 7, 8],
                                            "weights": [1.0, 1.0, 1.0]}) for i in range(1100)]
        (fb, _), = _steps(tc, [data])
        assert len(fb.loss_fn_outputs) == 1100
        upstream = proxy.proxy.lanes[tc.model_id].upstream_id
        service.close("success").result(60)
    assert server.counters.get(upstream).forward_backward == 2  # two chunks, no cancel
    rows = next((tmp_path / "records").iterdir()).joinpath("steps.csv").read_text()
    assert rows.splitlines()[1].startswith("0,1100,0,")


def test_the_ulora_proxy_command(server: RunningServer, tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ulora_remote.cli", "proxy", "--upstream", server.base_url,
           "--port", "0", "--out", str(tmp_path / "records")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = re.search(r"guarding (http://127\.0\.0\.1:\d+) ->", first)
        assert url is not None, first
        with httpx.Client(base_url=url.group(1), headers={"X-API-Key": KEY}) as http:
            assert http.get("/api/v1/healthz").json() == {"status": "ok"}  # via the upstream
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert KEY not in first + out + err
