"""Overhead of the local backend over a bare torch+peft training loop.

Both arms train the same built-in model with the same LoRA initialisation on the same Pig Latin
batches, in one process, alternating step by step (the order flips every step, so drift in the
machine's load hits both alike). The bare loop gets its batches as ready-made tensors; the backend
gets ``Example``s and pays for rendering, padding, the grad norm and its result objects — the
overhead a user of the backend actually pays.

Run::

    python benchmarks/local_overhead.py --size medium --steps 200 --threads 2

Prints a Markdown table: median step time per arm, their ratio, tokens/s, peak RSS, and the
largest loss difference between the arms (a check that they computed the same thing).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Any

import torch
from ulora_remote.backends.local import LocalBackend
from ulora_remote.backends.local.builtin import build_builtin_model, load_builtin
from ulora_remote.backends.local.models import attach_lora
from ulora_remote.backends.local.render import pad_datums
from ulora_remote.scenarios.pig_latin import PigLatinTask

from ulora_remote.backend import AdamParams, Example


def _bare_arm(size: str, seed: int, device: torch.device) -> tuple[Any, Any]:
    """The same base and LoRA initialisation as ``LocalBackend(size, seed=seed)``."""
    torch.manual_seed(seed)
    model = attach_lora(load_builtin(build_builtin_model(size)).to(device), 8, 16, "all-linear")
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    # the AdamParams defaults (Tinker's), so both arms apply the same update
    return model, torch.optim.AdamW(params, lr=0.0, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)


def _bare_step(model: Any, opt: Any, tensors: tuple[Any, Any, Any], lr: float) -> float:
    inputs, targets, weights = tensors
    logits = model(input_ids=inputs).logits.float()
    logprobs = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets,
                                                  reduction="none")
    loss_sum = -(logprobs * weights).sum()
    loss_sum.backward()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss_sum.detach()) / float(weights.sum())


def _backend_step(backend: LocalBackend, batch: list[Example], lr: float) -> float:
    res = backend.forward_backward(batch).result()
    backend.optim_step(AdamParams(learning_rate=lr)).result()
    return res.mean_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(
    size: str, steps: int, batch_size: int, warmup: int, lr: float, device: str | None = None
) -> dict[str, Any]:
    """Train both arms for ``warmup + steps`` steps; return timings of the last ``steps``."""
    backend = LocalBackend(size, seed=0, device=device)
    model, opt = _bare_arm(size, 0, backend.device)
    task = PigLatinTask(seed=0, eval_size=1)
    times: dict[str, list[float]] = {"backend": [], "bare": []}
    loss_diff, tokens = 0.0, []
    for step in range(warmup + steps):
        batch = task.train_batch(step, batch_size)
        datums = [backend.render(e) for e in batch]
        tensors = pad_datums(datums, backend.pad_token_id, backend.device)
        arms = [("backend", lambda b=batch: _backend_step(backend, b, lr)),
                ("bare", lambda t=tensors: _bare_step(model, opt, t, lr))]
        losses = {}
        for name, fn in arms if step % 2 == 0 else arms[::-1]:
            _sync(backend.device)
            start = time.perf_counter()
            losses[name] = fn()
            _sync(backend.device)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
        loss_diff = max(loss_diff, abs(losses["backend"] - losses["bare"]))
        if step >= warmup:
            tokens.append(sum(len(d.input_tokens) for d in datums))
    return {"times": times, "tokens": statistics.mean(tokens), "loss_diff": loss_diff,
            "device": str(backend.device)}


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="medium", choices=["small", "medium"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--smoke", action="store_true",
                        help="a few steps, to check that the script runs (numbers mean nothing)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.steps, args.warmup, args.threads = "small", 3, 1, 1
    torch.set_num_threads(args.threads)
    res = run(args.size, args.steps, args.batch_size, args.warmup, args.lr, args.device)
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    print(f"local backend overhead: {args.size} model, {res['device']}, {args.threads} threads, "
          f"{args.steps} steps of batch {args.batch_size} (+{args.warmup} warm-up), "
          f"torch {torch.__version__}\n")
    print("| arm | median step (ms) | tokens/s |")
    print("|---|---:|---:|")
    for name in ("bare", "backend"):
        print(f"| {name} | {med[name] * 1e3:.2f} | {res['tokens'] / med[name]:,.0f} |")
    print(f"\nratio backend/bare: {med['backend'] / med['bare']:.3f} "
          f"(overhead {100 * (med['backend'] / med['bare'] - 1):+.1f}%); "
          f"peak RSS {_peak_rss_mib():.0f} MiB (both arms, one process); "
          f"max |loss difference| {res['loss_diff']:.2e}")


if __name__ == "__main__":
    main()
