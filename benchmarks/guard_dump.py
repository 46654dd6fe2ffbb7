"""Per-example screening losses of a real run, with which examples were corrupted: the data the
screening rule is chosen on (benchmarks/RESULTS.md, "On a real model").

A fixed-LR training loop on the local backend that, at every step, before training, screens the
batch (``forward``) and a *contrast* batch: each completion under the next example's prompt
(cyclically), the mismatched pair a contrast rule compares against. Every example of a batch is
trained on (as a fixed run would), so noise that a rule misses is learned. Shocks of several
kinds come in windows of the one run; each row says which examples were corrupted (compared
with the clean batch of the same step).

    OMP_NUM_THREADS=1 python benchmarks/guard_dump.py --base-model /work/smollm2-hf \
        --steps 150 --lr 1e-3 --out dump.jsonl

``--chat "Pig Latin."`` renders the examples as chat records with that system message;
``--clean`` drops the shocks (the learning-rate sweep of benchmarks/RESULTS.md, "On a real
model", is this with ``--clean --steps 60`` at several ``--lr``).

Each line: {"step", "kind" (shock kind or ""), "own": [...], "contrast": [...],
"corrupted": [...], "eval": clean held-out loss (every --eval-every steps, else null)}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from ulora_remote.scenarios.pig_latin import PigLatinTask

from ulora_remote.backend import AdamParams, Example, Message
from ulora_remote.chat import chat_example
from ulora_remote.control.guard import example_losses

# (start, end, kind, fraction): an early and a late window of fluent noise, random letters,
# and the reversed-word rule (learnable) as a 25% admixture.
WINDOWS = ((12, 32, "swapped-answer", 0.25), (40, 50, "random-letters", 0.25),
           (60, 70, "reversed", 0.25), (110, 130, "swapped-answer", 0.25),
           (135, 145, "random-letters", 0.25))


def as_chat(example: Example, system: str) -> Example:
    word = example.prompt.removesuffix(" ->")
    return chat_example((Message("system", system), Message("user", word),
                         Message("assistant", example.completion.strip())))


def mismatched(batch: list[Example]) -> list[Example]:
    """Each example's target under the next example's prompt (its user turns, for chat)."""
    out = []
    for i, e in enumerate(batch):
        other = batch[(i + 1) % len(batch)]
        if e.messages:
            users = [m for m in other.messages if m.role == "user"]
            k = iter(users * len(e.messages))
            out.append(chat_example([next(k) if m.role == "user" else m for m in e.messages]))
        else:
            out.append(replace(e, prompt=other.prompt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chat", default="", help="system message: render as chat records")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--clean", action="store_true",
                    help="no shocks (a learning-rate sweep by held-out loss)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from ulora_remote.backends.local import LocalBackend
    backend = LocalBackend(args.base_model, rank=8, seed=args.seed, threads=1,
                           checkpoint_dir="/tmp/guard-dump-ckpt")
    task = PigLatinTask(args.seed, 32)
    wrap = (lambda b: [as_chat(e, args.chat) for e in b]) if args.chat else (lambda b: b)
    evals = wrap(task.eval_examples())
    with open(args.out, "w") as out:
        for t in range(args.steps):
            t0 = time.time()
            clean = wrap(task.train_batch(t, args.batch))
            kind, batch = "", clean
            for start, end, k, frac in () if args.clean else WINDOWS:
                if start <= t < end:
                    kind, batch = k, wrap(task.shock_batch(t, args.batch, k, frac))
            flags = [a != b for a, b in zip(batch, clean, strict=True)]
            screened = example_losses(backend.forward(batch + mismatched(batch)).result())
            ev = None
            if t % args.eval_every == 0:
                ev = backend.forward(evals).result().mean_loss
            backend.forward_backward(batch).result()
            backend.optim_step(AdamParams(learning_rate=args.lr)).result()
            n = len(batch)
            out.write(json.dumps({"step": t, "kind": kind, "own": screened[:n],
                                  "contrast": screened[n:], "corrupted": flags,
                                  "eval": ev, "s": round(time.time() - t0, 2)}) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
