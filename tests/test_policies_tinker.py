"""Mirror rollback through TinkerBackend and the unmodified SDK against ``ulora serve`` (lag 1).

On Tinker a rollback replaces the training client; the runner must leave no future of the old
client unread, and the restored client must hold the snapshot's weights.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from test_policies_runner import ScriptedController  # noqa: E402
from ulora_remote.backends.tinker import TinkerBackend  # noqa: E402
from ulora_remote.scenarios.pig_latin import PigLatinTask  # noqa: E402
from ulora_remote.scenarios.shocks import ShockStream  # noqa: E402

from ulora_remote.run.rundir import RunDir  # noqa: E402
from ulora_remote.run.runner import Runner, RunSettings  # noqa: E402

FAKE_KEY = "tml-test-not-a-real-key"
TASK = PigLatinTask(seed=0, eval_size=4)
PROBE = TASK.train_batch(999, 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    serve = pytest.importorskip("ulora_remote.backends.server")
    running = serve.serve_in_thread(serve.ServerConfig(
        port=0, base_model="small", checkpoint_dir=tmp_path_factory.mktemp("server"),
        api_key=FAKE_KEY, threads=1,
    ))
    yield running
    running.stop()


class ProbingBackend:
    """A TinkerBackend that measures the loss of a fixed probe batch at every snapshot save and
    right after every load, so a rollback can be checked against the snapshot it restores."""

    def __init__(self, inner: TinkerBackend) -> None:
        self.inner = inner
        self.at_save: dict[str, float] = {}
        self.after_load: list[tuple[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _probe(self) -> float:
        return float(self.inner.forward(PROBE).result().mean_loss)

    def save_state(self, name: str) -> str:
        ref = self.inner.save_state(name)
        if "snap" in name:
            self.at_save[ref] = self._probe()
        return ref

    def load_state(self, ref: str) -> None:
        self.inner.load_state(ref)
        self.after_load.append((ref, self._probe()))


def Source() -> ShockStream:  # noqa: N802 - reads like the class it stands for
    return ShockStream(TASK, batch_size=4)


@pytest.mark.slow
def test_rollback_on_tinker_restores_the_snapshot_at_lag_one(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    model = server.service.base_model_name
    backend = ProbingBackend(TinkerBackend(model, rank=4, seed=0, base_url=server.base_url))
    rd = RunDir(tmp_path / "run")
    rd.prepare_new(force=True)
    settings = RunSettings(run_name="rb", steps=10, lag=1, eval_every=10, eval_max_tokens=4,
                           checkpoint_every=0, log_every=100, snapshot_every=3, snapshot_keep=2)
    log = io.StringIO()
    Runner(backend, ScriptedController(mirror_at=7), (), Source(), settings, rd, out=log).run()

    assert "rolled back to the snapshot of step 3" in log.getvalue()
    assert "state lost" not in log.getvalue()  # no unread future of the replaced client
    (ref, probe_after), = backend.after_load
    assert "rb-snap000003" in ref  # snapshots 3 and 6 kept; Mirror at 7 → the older one
    later = next(v for r, v in backend.at_save.items() if "snap000006" in r)
    assert backend.at_save[ref] != pytest.approx(later, rel=1e-6)  # training moved the weights
    assert probe_after == pytest.approx(backend.at_save[ref], rel=1e-6)
    assert len(RunDir(rd.path).steps_path.read_text().splitlines()) == 11
