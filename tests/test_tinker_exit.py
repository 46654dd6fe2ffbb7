"""A process that leaves with a Tinker session still open (a sweep quit at once by a second
Ctrl-C, its run threads in flight) ends the session on the way out without a traceback: the
session's close, and the SDK's telemetry flush inside it, run before concurrent.futures stops
its worker threads. Against ``ulora serve`` on 127.0.0.1, telemetry on; no timing involved."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")
pytest.importorskip("torch")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow

KEY = "tml-test-not-a-real-key"

LEAVE = """
import sys
from pathlib import Path
from ulora_remote.run.builders import build_backend
from ulora_remote.scenarios import load_scenario

url, ckpt = sys.argv[1], Path(sys.argv[2])
scenario = load_scenario("pig-latin-shock", ['backend.kind="tinker"', f'backend.base_url="{url}"',
                                             'backend.base_model="ulora/builtin-small"',
                                             "backend.rank=4"])
backend = build_backend(scenario, ckpt)
# A client for a model the service does not serve: the SDK queues telemetry events that the
# session's close flushes (with an empty queue nothing is sent at exit and nothing can fail).
backend._service.create_lora_training_client("no-such-model", rank=4)
print("leaving with the session open", flush=True)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    srv = serve_in_thread(ServerConfig(port=0, base_model="small", api_key=KEY, threads=1,
                                       checkpoint_dir=tmp_path_factory.mktemp("server")))
    yield srv
    srv.stop()


def test_an_open_session_closes_at_exit_without_a_traceback(server: Any, tmp_path: Path) -> None:
    env = {**os.environ, "TINKER_API_KEY": KEY, "TINKER_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LEAVE, server.base_url, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "leaving with the session open" in done.stdout
    assert "Traceback" not in done.stderr and "cannot schedule" not in done.stderr, done.stderr
    assert "closing the Tinker session failed" not in done.stderr
