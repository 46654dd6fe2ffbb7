"""TinkerBackend through the real ``tinker`` SDK, with respx answering at the HTTP edge.

``FakeTinker`` below speaks the slice of Tinker's wire protocol the backend uses (docs/design.md,
"Backends"): JSON submits answered with a ``request_id``, results long-polled on
``/retrieve_future``, protobuf for forward_backward. It executes a request when it accepts its
submit, counts executions per request, and can inject 429/503 storms, a 410 on a future, and a
409 on a save. Its model is a counter: every target token's log-probability is
``-2 / (1 + optim steps applied)``, so each loss tells how many optimizer steps ran before it.

Retries stay fast through the SDK's own knob: its HTTP layer obeys ``retry-after-ms`` (below 60 s),
which the fake sends with every 429 and 503.
"""

from __future__ import annotations

import itertools
import json
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("tinker")
respx = pytest.importorskip("respx")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from tinker.proto import tinker_public_pb2 as pb  # noqa: E402
from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402

from ulora_remote.backend import AdamParams, Example  # noqa: E402
from ulora_remote.errors import (  # noqa: E402
    CheckpointError,
    ConfigurationError,
    RemoteTimeoutError,
    StateLostError,
)

FAKE_KEY = "tml-test-not-a-real-key"
MODEL = "fake/tiny-model"
_url_ids = itertools.count()

BATCH = [Example("cat", "atcay"), Example("egg", "eggway")]


def make_tokenizer_dir(directory: Path) -> Path:
    """A character-level tokenizer with BOS/EOS, saved like a Hugging Face model directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(string.printable)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(directory))
    return directory


class FakeTinker:
    """A Tinker service in memory, mounted on a respx router."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.models: dict[str, dict[str, Any]] = {}
        self.results: dict[str, httpx.Response] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}  # tinker path -> saved state
        self.executed: Counter[str] = Counter()  # "model_id/seq_id" -> times executed
        self.kinds: Counter[str] = Counter()  # "forward_backward" -> executions
        self.status_answers: Counter[int] = Counter()
        self.storm: dict[str, list[int]] = {}  # endpoint -> statuses to answer before accepting
        self.expire: set[tuple[str, int]] = set()  # (kind, nth execution) -> 410 on its future
        self.lose_save_answer = False  # execute a save, then answer 503 (the answer is lost)
        self.honor_overwrite = True
        self.hold_results = False
        self.refuse_saves = False
        self.finished_sessions: list[tuple[str, str]] = []
        self.auth_status: int | None = None
        self._ids = itertools.count()

    # -- plumbing --------------------------------------------------------------------------

    def mount(self, router: respx.Router) -> None:
        router.route(host=httpx.URL(self.base_url).host).mock(side_effect=self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1/")
        if self.auth_status is not None:
            return self._status(self.auth_status, {"detail": "Invalid API key"})
        assert request.headers.get("X-API-Key") == FAKE_KEY
        if path == "client/config":
            return httpx.Response(200, json={"use_pyqwest_transport": False})
        if path == "client/dynamic_config":
            return httpx.Response(404, json={"detail": "not found"})
        if path in ("session_heartbeat", "telemetry"):
            return httpx.Response(200, json={})
        if path.startswith("sessions/") and path.endswith("/finish"):
            reason = json.loads(request.content)["reason"]["type"]
            self.finished_sessions.append((path.split("/")[1], reason))
            return httpx.Response(200, json=None)
        if path == "get_server_capabilities":
            return httpx.Response(
                200, json={"supported_models": [{"model_name": MODEL, "trainable": True}]}
            )
        if path.startswith("training_runs/") and path.endswith("/checkpoints"):
            return self._list_checkpoints(path.split("/")[1])
        if path == "retrieve_future" and self.hold_results:
            time.sleep(0.01)
            return httpx.Response(200, json={"type": "try_again"})
        if path == "retrieve_future":
            return self.results.pop(json.loads(request.content)["request_id"], None) or (
                httpx.Response(410, json={"detail": "unknown future"})
            )
        storm = self.storm.get(path)
        if storm:
            return self._status(storm.pop(0), {"detail": "busy"})
        handler = getattr(self, "_" + path, None)
        assert handler is not None, f"unexpected request {request.method} {path}"
        return handler(request)  # type: ignore[no-any-return]

    def _status(self, status: int, body: dict[str, Any]) -> httpx.Response:
        self.status_answers[status] += 1
        return httpx.Response(status, json=body, headers={"retry-after-ms": "5"})

    def _future(self, result: httpx.Response, model_id: str | None = None) -> httpx.Response:
        request_id = f"req-{next(self._ids)}"
        self.results[request_id] = result
        return httpx.Response(200, json={"request_id": request_id, "model_id": model_id})

    def _execute(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run a training request once, in seq_id order; returns the model's state."""
        model = self.models[body["model_id"]]
        assert body["seq_id"] == model["next_seq"], "requests executed out of order"
        model["next_seq"] += 1
        self.executed[f"{body['model_id']}/{body['seq_id']}"] += 1
        self.kinds[kind] += 1
        return model  # type: ignore[no-any-return]

    def _maybe_expire(self, kind: str, result: httpx.Response) -> httpx.Response:
        if (kind, self.kinds[kind]) in self.expire:
            return httpx.Response(410, json={"detail": "promise expired"})
        return result

    # -- endpoints -------------------------------------------------------------------------

    def _create_session(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"session_id": f"sess{next(self._ids)}"})

    def _new_model(self, session_id: str, seq: int, optim_steps: int = 0) -> str:
        model_id = f"{session_id}:train:{seq}"
        self.models[model_id] = {"next_seq": 1, "optim_steps": optim_steps, "pending_grad": False}
        return model_id

    def _create_model(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["base_model"] == MODEL
        model_id = self._new_model(body["session_id"], body["model_seq_id"])
        return self._future(httpx.Response(200, json={"model_id": model_id}))

    def _get_info(self, request: httpx.Request) -> httpx.Response:
        model_id = json.loads(request.content)["model_id"]
        return httpx.Response(
            200, json={"model_id": model_id, "model_data": {"model_name": MODEL}, "is_lora": True}
        )

    def _forward_backward(self, request: httpx.Request) -> httpx.Response:
        msg = pb.ForwardBackwardRequest()
        msg.ParseFromString(request.content)
        kind = "forward" if msg.forward_only else "forward_backward"
        model = self._execute(kind, {"model_id": msg.model_id, "seq_id": msg.seq_id})
        model["pending_grad"] = model["pending_grad"] or not msg.forward_only
        logprob = -2.0 / (1 + model["optim_steps"])
        lengths = [len(d.loss_fn_inputs["target_tokens"].dense) // 8 for d in msg.data]
        values = np.concatenate([np.full(n, logprob, np.float32) for n in lengths])
        offsets = np.cumsum([0] + [4 * n for n in lengths]).astype(np.int64)
        record = pb.ArrayRecord(type_tag="ArrayRecord", num_datums=len(lengths))
        record.fields["logprobs"].CopyFrom(
            pb.BatchedTensor(
                data=values.tobytes(), offsets=offsets.tobytes(), dtype=pb.DTYPE_FLOAT32
            )
        )
        out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[record])
        out.metrics["loss:sum"] = float(-values.sum())
        result = httpx.Response(
            200,
            content=out.SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
        )
        return self._future(self._maybe_expire(kind, result))

    def _optim_step(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = self._execute("optim_step", body)
        assert model["pending_grad"], "optim_step without a forward_backward before it"
        model["optim_steps"] += 1
        model["pending_grad"] = False
        return self._future(self._maybe_expire("optim_step", httpx.Response(200, json={})))

    def _save_weights(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = f"tinker://{body['model_id']}/weights/{body['path']}"
        if path in self.checkpoints and not (body.get("overwrite") and self.honor_overwrite):
            return self._status(409, {"detail": f"checkpoint {body['path']} already exists"})
        model = self._execute("save_state", body)
        if self.refuse_saves:
            failure = {"error": "checkpoint quota exceeded", "category": "user"}
            return self._future(httpx.Response(200, json=failure))
        self.checkpoints[path] = {"optim_steps": model["optim_steps"], "name": body["path"]}
        if self.lose_save_answer:
            self.lose_save_answer = False
            return self._status(503, {"detail": "answer lost"})
        return self._future(httpx.Response(200, json={"path": path, "type": "save_weights"}))

    def _load_weights(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["optimizer"] is True, "a rollback must restore the optimizer state"
        state = self.checkpoints[body["path"]]
        model_id = self._new_model(body["session_id"], body["model_seq_id"], state["optim_steps"])
        return self._future(httpx.Response(200, json={"path": body["path"], "model_id": model_id}))

    def _list_checkpoints(self, model_id: str) -> httpx.Response:
        rows = [
            {
                "checkpoint_id": f"weights/{state['name']}",
                "checkpoint_type": "training",
                "time": "2026-01-01T00:00:00Z",
                "tinker_path": path,
            }
            for path, state in self.checkpoints.items()
            if path.startswith(f"tinker://{model_id}/")
        ]
        return httpx.Response(200, json={"checkpoints": rows})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    # A fresh host per test: the SDK caches REST holders per (base URL, key) for the process.
    service = FakeTinker(f"http://tinker-fake-{next(_url_ids)}.test")
    with respx.mock(assert_all_called=False) as router:
        service.mount(router)
        yield service


def open_backend(fake: FakeTinker, tokenizer_dir: Path, **kwargs: Any) -> TinkerBackend:
    return TinkerBackend(
        MODEL,
        rank=4,
        seed=0,
        base_url=fake.base_url,
        api_key=FAKE_KEY,
        tokenizer=tokenizer_dir,
        timeout_s=30,
        **kwargs,
    )


def expected_loss(optim_steps: int) -> float:
    return 2.0 / (1 + optim_steps)


def run_steps(backend: TinkerBackend, steps: range, lr: float = 1e-3) -> list[float]:
    """The runner's pipelined loop (lag 1): submit fb_t and opt_t, then read fb_{t-1}."""
    losses: list[float] = []
    previous = None
    for _ in steps:
        fb = backend.forward_backward(BATCH)
        opt = backend.optim_step(AdamParams(learning_rate=lr))
        if previous is not None:
            losses.append(previous[0].result().mean_loss)
            previous[1].result()
        previous = (fb, opt)
    if previous is not None:
        losses.append(previous[0].result().mean_loss)
        previous[1].result()
    return losses


def test_three_pipelined_steps_execute_once_in_order(fake: FakeTinker, tokenizer_dir: Path) -> None:
    with open_backend(fake, tokenizer_dir) as backend:
        losses = run_steps(backend, range(3))
        clean = backend.forward(BATCH).result()
    # Each loss is read after the next step was submitted, yet it saw exactly the optimizer
    # steps before it: submission order is execution order.
    assert losses == pytest.approx([expected_loss(t) for t in range(3)])
    assert clean.mean_loss == pytest.approx(expected_loss(3))
    assert clean.tokens == sum(len(e.completion) + 1 for e in BATCH)  # completion + EOS
    assert fake.kinds == Counter(forward_backward=3, optim_step=3, forward=1)
    assert set(fake.executed.values()) == {1}
    assert [reason for _, reason in fake.finished_sessions] == ["success"]  # session closed


def test_render_weights_only_completion_and_eos(fake: FakeTinker, tokenizer_dir: Path) -> None:
    with open_backend(fake, tokenizer_dir) as backend:
        datum = backend.render(Example("ab", "cd"))
    # tokens: <s> a b c d </s>; inputs drop the last, targets drop the first
    assert datum.input_tokens == (1, 13, 14, 15, 16)
    assert datum.target_tokens == (13, 14, 15, 16, 2)
    assert datum.weights == (0.0, 0.0, 1.0, 1.0, 1.0)


def test_storm_of_429_and_503_is_absorbed_without_duplicates(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    fake.storm = {
        "forward_backward": [429, 503, 503, 429, 503],
        "optim_step": [503, 429, 503, 503],
        "create_model": [429, 503],
    }
    with open_backend(fake, tokenizer_dir) as backend:
        losses = run_steps(backend, range(3))
    assert losses == pytest.approx([expected_loss(t) for t in range(3)])
    assert fake.status_answers[429] >= 4 and fake.status_answers[503] >= 7
    assert fake.kinds == Counter(forward_backward=3, optim_step=3)
    assert set(fake.executed.values()) == {1}  # every training request ran exactly once


def test_410_on_a_training_future_rebuilds_from_checkpoint_and_replays(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    fake.expire = {("forward_backward", 3)}  # step 2 (the third) loses its result
    with open_backend(fake, tokenizer_dir) as backend:
        run_steps(backend, range(2))
        ref = backend.save_state("step-000002")
        assert ref.startswith("tinker://") and ref.endswith(f"{backend.run_name}-step-000002")
        fb = backend.forward_backward(BATCH)
        backend.optim_step(AdamParams(learning_rate=1e-3))
        fb_next = backend.forward_backward(BATCH)  # pipelined: submitted before fb is read
        with pytest.raises(StateLostError, match="410"):
            fb.result()
        with pytest.raises(StateLostError, match="load_state"):
            backend.optim_step(AdamParams(learning_rate=1e-3))  # nothing new is accepted
        backend.load_state(ref)
        with pytest.raises(StateLostError, match="replaced"):
            fb_next.result()  # a result from the discarded client is refused
        replayed = run_steps(backend, range(2, 5))
    # The new client starts from the checkpoint's optimizer step count, and the replay of steps
    # 2..4 sees 2, 3, 4 optimizer steps: nothing lost, nothing applied twice.
    assert replayed == pytest.approx([expected_loss(t) for t in range(2, 5)])
    new_model = [m for m in fake.models.values() if m["optim_steps"] == 5]
    assert len(new_model) == 1
    assert set(fake.executed.values()) == {1}


def test_a_resumed_backend_builds_only_the_client_restored_from_the_checkpoint(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    with open_backend(fake, tokenizer_dir) as first:
        run_steps(first, range(2))
        ref = first.save_state("step-000002")
    assert len(fake.models) == 1
    with open_backend(fake, tokenizer_dir) as resumed:  # what `ulora run --resume` does
        resumed.load_state(ref)
        assert run_steps(resumed, range(2, 4)) == pytest.approx(
            [expected_loss(t) for t in range(2, 4)]
        )
    assert len(fake.models) == 2  # the restored one; no fresh, unused LoRA client


def test_409_on_a_retried_save_that_landed_counts_as_success(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    # The save runs, its answer is lost (503), the SDK resubmits it and gets 409 Conflict from
    # a service that ignores overwrite=True, and goes on retrying the 409 (for up to 300 s).
    fake.honor_overwrite = False
    fake.lose_save_answer = True
    with open_backend(fake, tokenizer_dir, save_check_s=2.0) as backend:
        run_steps(backend, range(1))
        path = backend.save_state("step-000001")
        model_id = next(iter(fake.models))
        assert path == f"tinker://{model_id}/weights/{backend.run_name}-step-000001"
        assert fake.status_answers[503] == 1 and fake.status_answers[409] >= 1
        # The abandoned SDK retry loop released the client's request turn: training goes on.
        assert run_steps(backend, range(1, 3)) == pytest.approx(
            [expected_loss(1), expected_loss(2)]
        )
    assert fake.kinds["save_state"] == 1


def test_a_save_that_never_lands_abandons_the_client_and_rolls_back(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    with open_backend(fake, tokenizer_dir, save_check_s=0.5) as backend:
        run_steps(backend, range(1))
        ref = backend.save_state("step-000001")
        run_steps(backend, range(1, 2))
        backend.timeout_s = 1.5
        fake.storm = {"save_weights": [409] * 20}  # conflicts, and nothing is ever saved
        with pytest.raises(StateLostError, match="not list it"):
            backend.save_state("step-000002")
        fake.storm = {}
        # Its seq_id was never executed, so the client's later requests would wait forever.
        with pytest.raises(StateLostError):
            backend.forward_backward(BATCH)
        backend.load_state(ref)
        assert run_steps(backend, range(1, 3)) == pytest.approx([expected_loss(t) for t in (1, 2)])
    assert fake.kinds["save_state"] == 1


def test_a_save_the_service_refuses_is_a_checkpoint_error(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    with open_backend(fake, tokenizer_dir) as backend:
        run_steps(backend, range(1))
        fake.refuse_saves = True
        with pytest.raises(CheckpointError, match="quota"):
            backend.save_state("step-000001")
        # The service did process the request: the client goes on training.
        assert run_steps(backend, range(1, 2)) == pytest.approx([expected_loss(1)])


def test_401_is_a_clear_configuration_error_without_the_key(
    fake: FakeTinker, tokenizer_dir: Path
) -> None:
    fake.auth_status = 401
    with pytest.raises(ConfigurationError) as caught:
        open_backend(fake, tokenizer_dir)
    message = str(caught.value)
    assert "401" in message and "TINKER_API_KEY" in message
    assert FAKE_KEY not in message and FAKE_KEY[4:] not in message


@pytest.mark.parametrize("key", [None, "", "sk-not-tinker-0123456789"])
def test_missing_or_malformed_key_fails_before_any_request(
    fake: FakeTinker, tokenizer_dir: Path, key: str | None
) -> None:
    with pytest.raises(ConfigurationError, match="TINKER_API_KEY") as caught:
        TinkerBackend(MODEL, base_url=fake.base_url, api_key=key, tokenizer=tokenizer_dir)
    if key:
        assert key not in str(caught.value)
    assert not fake.status_answers and not fake.models


def test_unknown_base_model_lists_the_offered_ones(fake: FakeTinker, tokenizer_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"offered: {MODEL}"):
        TinkerBackend(
            "meta-llama/Unknown-1B",
            base_url=fake.base_url,
            api_key=FAKE_KEY,
            tokenizer=tokenizer_dir,
        )
    assert not fake.models


def test_submission_does_not_wait_for_the_service(fake: FakeTinker, tokenizer_dir: Path) -> None:
    with open_backend(fake, tokenizer_dir) as backend:
        fake.storm = {"forward_backward": [503] * 8}  # 8 x 5 ms of retries on the SDK's thread
        fb = backend.forward_backward(BATCH)
        opt = backend.optim_step(AdamParams(learning_rate=1e-3))
        assert fake.kinds["forward_backward"] == 0  # submit returned before the request ran
        assert fb.result().mean_loss == pytest.approx(expected_loss(0))
        assert opt.result().grad_norm is None


def test_a_wait_past_its_deadline_names_the_request(fake: FakeTinker, tokenizer_dir: Path) -> None:
    with open_backend(fake, tokenizer_dir) as backend:
        assert backend.model_id  # the LoRA client is created on first use: create it now
        fake.hold_results = True  # every future stays pending ("try_again")
        fb = backend.forward_backward(BATCH)
        with pytest.raises(
            RemoteTimeoutError, match=r"forward_backward did not finish within 0.3 s"
        ):
            fb.result(timeout=0.3)
        fake.hold_results = False
        assert fb.result().mean_loss == pytest.approx(expected_loss(0))  # still usable after


def test_the_key_never_reaches_a_log_line(
    fake: FakeTinker, tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")  # the SDK's and httpx's debug logs included
    fake.expire = {("forward_backward", 2)}
    with open_backend(fake, tokenizer_dir) as backend:
        ref = backend.save_state("step-000000")
        with pytest.raises(StateLostError):
            run_steps(backend, range(2))
        backend.load_state(ref)
        run_steps(backend, range(2))
    fake.auth_status = 401
    with pytest.raises(ConfigurationError):
        open_backend(fake, tokenizer_dir)
    assert any(r.name.startswith("tinker") for r in caplog.records)
    assert FAKE_KEY not in caplog.text


@pytest.mark.parametrize(
    ("error", "reason"), [(KeyboardInterrupt, "interrupted"), (RuntimeError, "errored")]
)
def test_the_session_is_closed_after_an_error_or_ctrl_c(
    fake: FakeTinker, tokenizer_dir: Path, error: type[BaseException], reason: str
) -> None:
    backend = open_backend(fake, tokenizer_dir)
    assert backend.model_id  # a started run: its LoRA client, and so its session, exist
    with pytest.raises(error):
        try:
            raise error()
        finally:  # what the runner does
            backend.close()
    backend.close()  # idempotent
    assert [r for _, r in fake.finished_sessions] == [reason]
