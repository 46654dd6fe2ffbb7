"""Seconds per step of the real model (``smollm2-135m``, 134.5M parameters, float32) on the local
backend, in one invocation: the guarded default and a fixed learning rate through ``ulora run``'s
runner, and a bare torch+peft loop on the same model, LoRA and batches (the overhead).

The runner's arms are ``run_scenario`` on a scenario (default ``guard-clean``: Pig Latin as plain
prompts, no shock) with ``--base-model smollm2-135m``; their step time is the median step-to-step
difference of ``steps.csv``'s ``wall_s`` (evaluations run only before the first step and after
the last, so they are not in it). ``guarded`` screens every batch with a gradient-free forward
before it trains (the guard's cost); ``fixed`` trains at one rate without a guard. Then
``backend`` (``LocalBackend.forward_backward`` + ``optim_step``) and ``bare`` (a plain loop:
forward, masked cross-entropy, backward, AdamW step, on batches rendered to tensors up front)
train the scenario's own batches (``build_source``), alternating step by step so that both see
the same load; their step times are medians. The two runs and the interleaved pair run one
after the other, so the load average at the start and end is printed: compare numbers from one
invocation only.

Run::

    python benchmarks/real_model_speed.py                       # 30 steps of 8, 1 thread
    python benchmarks/real_model_speed.py --scenario word-tasks # chat records, ChatML template
    python benchmarks/real_model_speed.py --smoke               # 3 steps of 2 (a test runs it)

The first use converts the model into the cache (about 35 s; not timed).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ulora_remote.backends.local.models import attach_lora, load_base
from ulora_remote.backends.local.named import named_model_dir
from ulora_remote.backends.local.render import pad_datums, render_examples
from ulora_remote.scenarios import load_scenario

from ulora_remote.run.api import run_scenario
from ulora_remote.run.builders import build_source

MODEL = "smollm2-135m"


def _overrides(args: argparse.Namespace) -> list[str]:
    """The scenario shortened, on the real model, without its shocks (clean steps only)."""
    shocks = ["shocks.windows=[]"] if load_scenario(args.scenario).shocks is not None else []
    return [f'backend.base_model="{MODEL}"', f"steps={args.steps}",
            f"batch_size={args.batch_size}", f"eval.every={args.steps}",
            f"eval.size={args.eval_size}", "eval.max_tokens=4",
            f"checkpoint.every={args.steps}", *shocks]


def _runner_arm(args: argparse.Namespace, out: Path, method: list[str]) -> dict[str, float]:
    result = run_scenario(args.scenario, out=out, overrides=_overrides(args) + method,
                          console=io.StringIO(), log_every=0)
    steps = result.steps
    per_step = steps["wall_s"].diff().dropna().tolist()
    return {"s_per_step": statistics.median(per_step), "tokens": float(steps["tokens"].mean())}


def _interleaved_arms(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``LocalBackend`` (forward_backward + optim_step on ``Example``s) and the bare loop on the
    same base model, LoRA (the scenario's rank and alpha, all-linear, the same seed) and
    batches, alternating step by step in this process (the order flips every step), so both see
    the same load. The bare loop gets its batches as ready-made tensors."""
    from ulora_remote.backends.local import LocalBackend

    from ulora_remote.backend import AdamParams

    scenario = load_scenario(args.scenario, _overrides(args))
    source = build_source(scenario)
    rank, alpha = scenario.backend.rank, scenario.backend.lora_alpha
    backend = LocalBackend(MODEL, rank=rank, lora_alpha=alpha, seed=0, progress=None)
    torch.manual_seed(0)
    base = load_base(MODEL, "float32", torch.device("cpu"), None)
    model = attach_lora(base.model, rank, alpha, "all-linear")
    model.eval()  # as the backend: no dropout
    batches = [source.batch(s).examples for s in range(args.steps)]
    tensors = [pad_datums(render_examples(base.tokenizer, b, backend.eos_token_id),
                          backend.pad_token_id, "cpu") for b in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)

    def bare(step: int) -> None:
        inputs, targets, weights = tensors[step]
        logits = model(input_ids=inputs).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets,
                                                reduction="none")
        ((nll * weights).sum() / weights.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def local(step: int) -> None:
        backend.forward_backward(batches[step]).result()
        backend.optim_step(AdamParams(learning_rate=5e-4)).result()

    times: dict[str, list[float]] = {"backend": [], "bare": []}
    for step in range(args.steps):
        arms = [("backend", local), ("bare", bare)]
        for name, fn in arms if step % 2 == 0 else arms[::-1]:
            start = time.perf_counter()
            fn(step)
            if step > 0 or args.steps == 1:  # the first step pays for warming up
                times[name].append(time.perf_counter() - start)
    tokens = statistics.mean(float(w.sum()) for _, _, w in tensors)
    backend.close()
    return {name: {"s_per_step": statistics.median(t), "tokens": tokens}
            for name, t in times.items()}


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    named_model_dir(MODEL)  # a first use converts now, outside every timing
    arms: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        arms["guarded"] = _runner_arm(args, Path(tmp) / "guarded",
                                      ['controller.method="guarded"'])
        arms["fixed"] = _runner_arm(args, Path(tmp) / "fixed",
                                    ['controller.method="fixed"', "controller.lr=5e-4"])
    arms.update(_interleaved_arms(args))
    return arms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="guard-clean",
                    help="a shipped scenario without a shift (default guard-clean)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--smoke", action="store_true", help="3 steps of 2: checks it runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.eval_size = 3, 2, 1
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    arms = run(args)
    print(f"{MODEL} on the local backend, {args.scenario}: {args.steps} steps of batch "
          f"{args.batch_size}, {args.threads} thread(s), torch {torch.__version__}; load "
          f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    print("| arm | s/step (median) | × bare | target tokens/step |")
    print("|---|---:|---:|---:|")
    bare = arms["bare"]["s_per_step"]
    for name in ("guarded", "fixed", "backend", "bare"):
        a = arms[name]
        print(f"| {name} | {a['s_per_step']:.3f} | {a['s_per_step'] / bare:.2f} | "
              f"{a['tokens']:.1f} |")
    print(f"\nguarded/fixed {arms['guarded']['s_per_step'] / arms['fixed']['s_per_step']:.2f} "
          "(the guard's screening pass); backend/bare "
          f"{arms['backend']['s_per_step'] / bare:.2f} (the backend's own overhead, interleaved "
          f"step by step); fixed/bare {arms['fixed']['s_per_step'] / bare:.2f} (runner and "
          "backend, run apart)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
