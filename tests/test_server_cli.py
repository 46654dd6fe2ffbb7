"""``ulora serve`` as a user runs it: a real process that says what it is doing, serves the
built-in model on 127.0.0.1 and says when it stops (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("uvicorn")
pytest.importorskip("tinker")

pytestmark = pytest.mark.slow


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[str], list[str]]:
    cmd = [sys.executable, "-m", "ulora_remote.cli", "serve", "--port", "0",
           "--checkpoint-dir", str(tmp_path / "ckpt")]  # fmt: skip
    env = {**os.environ, "TINKER_TELEMETRY": "0"}
    env.pop("ULORA_SERVE_API_KEY", None)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300  # an empty cache pre-trains the model first
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "tinker-cookbook: model_name=" in line or time.monotonic() > deadline:
            break
    return proc, lines


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_says_what_it_does_and_when_it_stops(tmp_path: Path, stop: signal.Signals) -> None:
    proc, lines = _serve(tmp_path)
    try:
        assert lines[0].startswith("ulora serve: loading the base model 'small'")
        serving = next(line for line in lines if "serving" in line)
        assert "'ulora/builtin-small' (64 positions)" in serving and "no API key" in serving
        url = serving.split(" on ", 1)[1].split(",", 1)[0]
        caps = httpx.get(f"{url}/api/v1/get_server_capabilities", timeout=10).json()
        tokenizer_dir = caps["supported_models"][1]["model_name"]
        assert f"model_name={tokenizer_dir!r}" in lines[-1] and Path(tokenizer_dir).is_dir()
    finally:
        proc.send_signal(stop)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "ulora serve: stopped after 1 request; checkpoints stay in" in out
