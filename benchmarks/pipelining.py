"""Pipelining benchmark: naive loop vs the runner's lag-1 loop, on ``ulora serve`` with a clock.

The server runs training work only at clock-cycle boundaries (``--cycle-s``), like the hosted
Tinker service; a cycle runs everything that is ready then. Both loops train the same number of
steps on the same batches through ``TinkerBackend`` and the unmodified SDK, over HTTP on
127.0.0.1, in one process:

- naive: submit forward_backward, wait; submit optim_step, wait. On this server that costs two
  cycles a step (a cycle answers the work it ran before the next boundary, so each request costs
  exactly one); Tinker's documentation reports about three on the hosted service, where answers can
  miss the next boundary. Against this server the ratio is therefore at most 2x;
- pipelined: the runner's order at lag 1 (``ulora_remote.run.runner``): submit fb_t, read fb_{t-1}
  (and its optim step), submit opt_t; so fb_{t+1} and opt_t are queued together.

Run:  python benchmarks/pipelining.py --steps 30 --cycle-s 0.2
Prints one line per loop and the ratio; target: ≥ 2.5× and within 10% of one cycle a step.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ulora_remote.backend import AdamParams, Example

FAKE_KEY = "tml-local-benchmark-key"


def batches(steps: int, batch_size: int) -> list[list[Example]]:
    from ulora_remote.scenarios.pig_latin import load_words, to_pig_latin

    words = load_words()
    return [
        [
            Example(
                words[(t * batch_size + i) % len(words)],
                to_pig_latin(words[(t * batch_size + i) % len(words)]),
            )
            for i in range(batch_size)
        ]
        for t in range(steps)
    ]


def naive_loop(backend: Any, data: Sequence[Sequence[Example]], lr: float) -> list[float]:
    """Submit, wait, submit, wait: the loss is known before the optimizer step is sent."""
    losses = []
    for batch in data:
        losses.append(backend.forward_backward(batch).result().mean_loss)
        backend.optim_step(AdamParams(learning_rate=lr)).result()
    return losses


def pipelined_loop(backend: Any, data: Sequence[Sequence[Example]], lr: float) -> list[float]:
    """The runner's lag-1 order: fb_t is submitted before loss_{t-1} is read, opt_t after."""
    losses: list[float] = []
    pending: list[tuple[Any, Any]] = []
    for batch in data:
        fb = backend.forward_backward(batch)
        if pending:
            prev_fb, prev_opt = pending.pop()
            losses.append(prev_fb.result().mean_loss)
            prev_opt.result()
        pending.append((fb, backend.optim_step(AdamParams(learning_rate=lr))))
    for prev_fb, prev_opt in pending:
        losses.append(prev_fb.result().mean_loss)
        prev_opt.result()
    return losses


def measure(
    name: str, loop: Callable[..., list[float]], server: Any, model: str, args: argparse.Namespace
) -> dict[str, float]:
    from ulora_remote.backends.tinker import TinkerBackend

    data = batches(args.steps, args.batch_size)
    with TinkerBackend(model, rank=args.rank, seed=0, base_url=server.base_url) as backend:
        loop(backend, data[:2], args.lr)  # warm-up (not timed): first-call costs on both sides
        cycles0, start = server.cycles, time.perf_counter()
        losses = loop(backend, data, args.lr)
        wall_s = time.perf_counter() - start
        cycles = server.cycles - cycles0
    row = {
        "steps_per_s": args.steps / wall_s,
        "wall_s_per_step": wall_s / args.steps,
        "cycles_per_step": cycles / args.steps,
        "wall_cycles_per_step": wall_s / args.steps / args.cycle_s,
        "final_loss": losses[-1],
    }
    print(
        f"{name:>9}: {args.steps} steps in {wall_s:6.2f} s = {row['steps_per_s']:.3f} steps/s, "
        f"{row['wall_cycles_per_step']:.2f} cycle lengths/step, "
        f"{row['cycles_per_step']:.2f} server cycles/step, final loss {losses[-1]:.3f}",
        flush=True,
    )
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cycle-s", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--base-model", default="small", help="the server's engine model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps, to check that the script runs (numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.cycle_s = 3, 0.02

    os.environ.setdefault("TINKER_TELEMETRY", "0")
    os.environ["TINKER_API_KEY"] = FAKE_KEY
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(
            port=0,
            base_model=args.base_model,
            checkpoint_dir=tmp,
            api_key=FAKE_KEY,
            cycle_s=args.cycle_s,
            threads=args.threads,
        )
        server = serve_in_thread(config)
        try:
            model = server.service.base_model_name
            print(
                f"ulora serve {model!r}, cycle {args.cycle_s} s, {args.steps} steps, "
                f"batch {args.batch_size}, rank {args.rank}",
                flush=True,
            )
            naive = measure("naive", naive_loop, server, model, args)
            piped = measure("pipelined", pipelined_loop, server, model, args)
        finally:
            server.stop()
    ratio = piped["steps_per_s"] / naive["steps_per_s"]
    within = abs(piped["wall_cycles_per_step"] - 1.0) <= 0.10
    verdict = "met" if ratio >= 2.5 else "NOT met"
    print(
        f"ratio pipelined/naive = {ratio:.2f}x (target >= 2.5x: {verdict}); "
        f"pipelined {piped['wall_cycles_per_step']:.2f} cycle lengths/step "
        f"(target within 10% of 1: {'met' if within else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
