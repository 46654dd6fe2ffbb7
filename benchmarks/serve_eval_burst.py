"""Evaluation bursts against ``ulora serve``, as tinker-cookbook's test-set evaluator sends them.

The cookbook's ``SamplerNLLEvaluator`` scores its whole test set at once: one
``compute_logprobs`` (an ``asample`` with prompt logprobs) per example, all in flight together,
each answered through a long-polled ``retrieve_future``. This script starts ``ulora serve`` in
its own process (as a user runs it, beside the client), trains a few steps on the built-in
"small" model with the unmodified SDK, lets the server sit idle, then times bursts of such
requests from a fresh sampling client each (as each cookbook evaluation makes one). ``408s`` is
how many long polls the server answered "not ready yet" after its 10 s wait.

On a 2-core machine that other processes also use, torch's default of one intra-op thread per
core made every request of a burst wait on the others (before: ``--threads 2``); ``ulora serve``
now runs one thread per engine (after: the default).

Run:  python benchmarks/serve_eval_burst.py --threads 2    # the old default on 2 cores
      python benchmarks/serve_eval_burst.py                # the default now (1)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

FAKE_KEY = "tml-local-benchmark-key"
WORDS = ["hello", "world", "string", "apple", "banana", "cherry", "glove", "tree"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(port: int, ckpt: str, threads: int | None) -> subprocess.Popen[str]:
    from ulora_remote.backends.server import ready_url

    cmd = [sys.executable, "-m", "ulora_remote.cli", "serve", "--port", str(port)]
    cmd += ["--checkpoint-dir", ckpt] + ([] if threads is None else ["--threads", str(threads)])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the ready line (``ulora serve: ready <url>``)
        if ready_url(line) is not None:
            return proc
    raise SystemExit(f"ulora serve did not start: exit {proc.wait()}")


def _timeouts(url: str) -> int:
    import httpx

    return int(httpx.get(f"{url}/ulora/v1/counters").json()["long_poll_timeouts"])


def _burst(training: Any, prompts: list[Any], url: str) -> tuple[float, int]:
    before, start = _timeouts(url), time.perf_counter()
    sampler = training.save_weights_and_get_sampling_client().result()
    for future in [sampler.compute_logprobs(p) for p in prompts]:
        future.result()
    return time.perf_counter() - start, _timeouts(url) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="ulora serve --threads")
    parser.add_argument("--requests", type=int, default=50, help="requests per burst")
    parser.add_argument("--idle-s", type=float, default=40.0, help="idle time before the first")
    parser.add_argument("--repeat", type=int, default=2, help="bursts after the first")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps, to check that the script runs (numbers mean nothing)")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.idle_s, args.repeat = 3, 0.0, 1
    os.environ.setdefault("TINKER_TELEMETRY", "0")

    import tinker
    from tinker import types

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = _start_server(port, tmp, args.threads)
        try:
            service = tinker.ServiceClient(base_url=url, api_key=FAKE_KEY)
            training = service.create_lora_training_client(base_model="small", rank=32).result()
            tok = training.get_tokenizer()
            text = " ".join(WORDS * 8)  # held-out examples of 4 to 63 tokens, as a test set
            prompts = [
                types.ModelInput.from_ints(tok.encode(text)[: 4 + i % 60])
                for i in range(args.requests)
            ]
            data = [
                types.Datum(model_input=p, loss_fn_inputs={
                    "target_tokens": p.to_ints()[1:] + [1], "weights": [1.0] * p.length})
                for p in prompts[:8]
            ]  # fmt: skip
            for _ in range(3):
                training.forward_backward(data, "cross_entropy").result()
                training.optim_step(types.AdamParams(learning_rate=1e-3)).result()
            time.sleep(args.idle_s)
            threads = "default" if args.threads is None else str(args.threads)
            for i in range(1 + args.repeat):
                label = f"after {args.idle_s:g} s idle" if i == 0 else f"again #{i}"
                wall_s, timeouts = _burst(training, prompts, url)
                print(
                    f"--threads {threads:>7s}: burst of {args.requests} ({label:>16s}): "
                    f"{wall_s:6.2f} s, {timeouts} long polls answered 408",
                    flush=True,
                )
            service.close("success").result()
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
