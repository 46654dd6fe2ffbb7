"""Shared by the ``ulora serve`` HTTP tests: a numpy fake engine and raw-HTTP helpers.

The fake engine is a unigram model trained by Adam, so these tests need no torch and run in
seconds; it records every call in order, so a test can check that nothing ran twice or at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto
from ulora_remote.backends.server import EngineSpec, RunningServer, ServerConfig, serve_in_thread

from ulora_remote.backend import AdamParams, Completed, Datum, OptimStepResult

os.environ.setdefault("TINKER_TELEMETRY", "0")
KEY = "tml-test-not-a-real-key"
VOCAB = 16
SESSION = {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}


@dataclass
class _Result:
    nll_sums: tuple[float, ...]
    weight_sums: tuple[float, ...]
    logprobs: list[list[float]]


class FakeEngine:
    """A unigram model: p(token) = softmax(b); Adam on b. Records every call in order."""

    base_model_name = "fake/unigram"
    eos_token_id = 1
    vocab_size = VOCAB
    max_context_length = 64

    def __init__(self, spec: EngineSpec, calls: list[str]) -> None:
        self.rank, self.dir, self.calls = spec.rank, spec.checkpoint_dir, calls
        self.tokenizer_dir = str(spec.checkpoint_dir)
        self.b = np.random.default_rng(spec.seed).normal(size=VOCAB) * 0.1
        self.grad = np.zeros(VOCAB)
        self.m, self.v, self.t = np.zeros(VOCAB), np.zeros(VOCAB), 0

    def _run(self, datums: Sequence[Datum], train: bool) -> _Result:
        logp = self.b - np.log(np.exp(self.b).sum())
        rows = [[float(logp[t]) for t in d.target_tokens] for d in datums]
        pairs = zip(rows, datums, strict=True)
        nll = tuple(-sum(lp * w for lp, w in zip(r, d.weights, strict=True)) for r, d in pairs)
        if train:
            for d in datums:
                for t, w in zip(d.target_tokens, d.weights, strict=True):
                    self.grad += w * (np.exp(logp) - np.eye(VOCAB)[t])
        return _Result(nll, tuple(d.weight_sum for d in datums), rows)

    def forward_backward_datums(self, datums: Sequence[Datum]) -> Completed[_Result]:
        self.calls.append("forward_backward")
        return Completed(self._run(datums, True))

    def forward_datums(self, datums: Sequence[Datum]) -> Completed[_Result]:
        self.calls.append("forward")
        return Completed(self._run(datums, False))

    def optim_step(self, p: AdamParams) -> Completed[OptimStepResult]:
        self.calls.append("optim_step")
        self.t += 1
        self.m = p.beta1 * self.m + (1 - p.beta1) * self.grad
        self.v = p.beta2 * self.v + (1 - p.beta2) * self.grad**2
        m_hat, v_hat = self.m / (1 - p.beta1**self.t), self.v / (1 - p.beta2**self.t)
        self.b -= p.learning_rate * m_hat / (np.sqrt(v_hat) + p.eps)
        norm = float(np.linalg.norm(self.grad))
        self.grad = np.zeros(VOCAB)
        return Completed(OptimStepResult(norm))

    def save_state(self, name: str) -> str:
        path = self.dir / name
        np.savez(path.with_suffix(".npz"), b=self.b, m=self.m, v=self.v, t=self.t)
        return str(path.with_suffix(".npz"))

    def load_state(self, path: str, *, optimizer: bool = True) -> None:
        data = np.load(path)
        self.b = data["b"]
        if optimizer:
            self.m, self.v, self.t = data["m"], data["v"], int(data["t"])
        else:
            self.m, self.v, self.t = np.zeros(VOCAB), np.zeros(VOCAB), 0

    def sample_tokens(self, prompt, max_tokens, temperature=0.0, stop_tokens=(), seed=None):
        tok = int(np.argmax(self.b))
        out = [tok] * max_tokens
        return out[: out.index(tok) + 1] if tok in stop_tokens else out


def start_server(tmp_path: Path, calls: list[str], **kw: object) -> RunningServer:
    config = ServerConfig(
        port=0,
        checkpoint_dir=tmp_path / "ckpt",
        api_key=KEY,
        long_poll_s=0.5,
        engine_factory=lambda spec: FakeEngine(spec, calls),  # type: ignore[arg-type,return-value]
        **kw,  # type: ignore[arg-type]
    )
    return serve_in_thread(config)


def http_client(srv: RunningServer, key: str | None = KEY) -> httpx.Client:
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=srv.base_url, headers=headers, timeout=10)


def result_of(http: httpx.Client, request_id: str) -> httpx.Response:
    for _ in range(50):
        resp = http.post("/api/v1/retrieve_future", json={"request_id": request_id})
        if resp.status_code != 408:
            return resp
    raise AssertionError(f"{request_id} never finished")


def make_model(http: httpx.Client) -> str:
    session = http.post("/api/v1/create_session", json=SESSION)
    sid = session.json()["session_id"]
    body = {
        "session_id": sid,
        "model_seq_id": 0,
        "base_model": "fake/unigram",
        "lora_config": {"rank": 4, "seed": 3},
    }
    created = http.post("/api/v1/create_model", json=body)
    assert created.status_code == 200, created.text
    return str(result_of(http, created.json()["request_id"]).json()["model_id"])


def fwdbwd_body(model_id: str, seq_id: int, tokens: Sequence[int] = (2, 3, 4)) -> bytes:
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(list(tokens)),
        loss_fn_inputs={"target_tokens": [5] * len(tokens), "weights": [1.0] * len(tokens)},
    )
    req = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
        model_id=model_id,
        seq_id=seq_id,
    )
    return forward_backward_request_to_proto(req).SerializeToString()
