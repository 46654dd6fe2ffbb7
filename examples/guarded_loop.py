"""The guarded default as one loop: screen, train the kept examples, read, decide, step.

    python examples/guarded_loop.py          # 60 steps of the default scenario at lag 0
    python examples/guarded_loop.py 60 1     # the same at lag 1 (pipelined, as on Tinker)

The middle rung between ``examples/flat_loop.py`` (the seed's controller, no guard) and the
runner (``ulora_remote/run/runner.py``): the scenario's own policy (the Unified controller with
its stress), guard (``screen``) and batches, in the loop of docs/design.md, "The runner", with
evaluations, checkpoints and the run directory left out. It writes the same step losses as
``ulora run`` on the same scenario (``tests/test_examples.py``) while no evaluation falls inside
a probation (the runner then scores the snapshot, and drops the screens sent ahead).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

from ulora_remote.scenarios import load_scenario

from ulora_remote import AdamParams, Decision, Example, ForwardBackwardResult
from ulora_remote.control.contrast import contrast_batch, contrast_result
from ulora_remote.control.guard import ContrastGuard, Verdict
from ulora_remote.control.policy import Signal
from ulora_remote.losses import BatchLosses
from ulora_remote.run.builders import build_source

BLOCK = 3  # at lag ≥ 1 one forward screens the next three steps (docs/design.md, "Guards")


def main(steps: int = 60, lag: int = 0, overrides: tuple[str, ...] = ()) -> list[float]:
    """Run the default scenario's guarded loop; returns each step's loss (as steps.csv's)."""
    scenario = load_scenario("pig-latin-shock", [*overrides, f"steps={steps}", f"lag={lag}"])
    backend = scenario.backend.build(seed=scenario.seed, checkpoint_dir=Path(tempfile.mkdtemp()))
    policy = scenario.controller.build()  # loss and stress in, a Decision (with its lr) out
    (guard,) = scenario.controller.build_guards()  # the `screen` guard
    stream = build_source(scenario)  # batch(t): a pure function of (seed, t), shocks applied
    optimizer = scenario.optimizer.model_dump()  # AdamParams besides the learning rate

    decisions: dict[int, Decision] = {}  # the policy's decision after step u
    unread: list[tuple[int, int, int, ForwardBackwardResult, bool]] = []  # trained, not read
    ahead: dict[int, BatchLosses] = {}  # screens sent with an earlier step (lag ≥ 1)
    probation: tuple[str, dict, float] | None = None  # snapshot, policy state, last loss
    last_trained = math.nan  # what the policy sees for a skipped step
    losses: list[float] = []
    # The contrast test: a screen also scores each answer under another example's prompt.
    pairs = isinstance(guard, ContrastGuard) and guard.uses_contrast

    def screen(batch: list[Example]) -> list[Example]:
        """What a screening forward of ``batch`` scores: the batch, then its contrast pairs."""
        return batch + contrast_batch(batch) if pairs else batch

    def judge(t: int, batch: list[Example],
              scored: BatchLosses) -> tuple[ForwardBackwardResult, Verdict]:
        """Split a screen's losses into the batch's own and its contrast; the guard's verdict."""
        n = len(batch)
        own = ForwardBackwardResult(scored.nll_sums[:n], scored.weight_sums[:n])
        contrast = (contrast_result(batch, BatchLosses(scored.nll_sums[n:],
                                                       scored.weight_sums[n:])) if pairs else None)
        tasks = [e.task for e in batch]
        verdict = (guard.judge(t, own, tasks, contrast) if isinstance(guard, ContrastGuard)
                   else guard.judge(t, own, tasks))
        return own, verdict

    def lr_of(t: int) -> float:
        """Warm-up, else the decision after step t − lag (the policy's first while t < lag)."""
        if t < scenario.warmup_steps:
            return scenario.warmup_lr
        return decisions[t - lag].lr if t >= lag else policy.initial_decision().lr

    def read_through(limit: int) -> None:
        """Read every trained step u ≤ limit in order: its loss → the policy → a decision."""
        nonlocal last_trained
        while unread and unread[0][0] <= limit:
            u, kept, size, result, shift = unread.pop(0)
            loss = result.mean_loss  # nats per target token (the screened loss if skipped)
            losses.append(loss)
            if kept:
                last_trained = loss
            seen = loss if kept or not math.isfinite(last_trained) else last_trained
            stress = 1.0 - kept / size  # the share the guard rejected: the external stress
            d = decisions[u] = policy.observe(Signal(seen, stress, rebase=shift))
            if u % 10 == 0:
                print(f"[{u}] Mode={d.mode} φ={d.phi:.3f} E_s={d.e_smooth:.3f} "
                      f"next lr={d.lr:g} kept={kept}/{size} loss={loss:.3f}")

    for t in range(steps):
        # 1. The guards judge batch t from its screening forward (sent ahead at lag ≥ 1).
        batch = stream.batch(t).examples
        screened, verdict = judge(t, batch, ahead.pop(t, None)
                                  or backend.forward(screen(batch)).result())
        if verdict.action == "rollback":  # the data on probation was noise: undo its updates
            read_through(t - 1)
            assert probation is not None
            ref, policy_state, last_trained = probation
            ahead.clear()  # screened on weights that are about to go
            backend.load_state(ref)
            policy.load_state_dict(policy_state)
            probation = None
            screened, verdict = judge(t, batch, backend.forward(screen(batch)).result())
            print(f"[{t}] rollback to {ref}")
        if verdict.action == "probation":  # new data: admit it on trial, from a snapshot
            read_through(t - 1)
            ref = backend.save_state(f"guarded-loop-probation{t:06d}")
            probation = (ref, policy.state_dict(), last_trained)
            print(f"[{t}] {verdict.note or 'probation'} ({ref})")
        elif verdict.action == "shift":  # the new data is learnable: keep it
            probation = None
            print(f"[{t}] {verdict.note or 'shift'}")
        kept = [e for e, keep in zip(batch, verdict.keep, strict=True) if keep]
        if lag >= 1 and not ahead:  # 2. the next screens ride along with step t's requests
            next_steps = range(t + 1, min(t + 1 + BLOCK, steps))
            batches = [screen(stream.batch(u).examples) for u in next_steps]
            block = backend.forward([e for b in batches for e in b]).result() if batches else None
            start = 0
            for u, b in zip(next_steps, batches, strict=True):
                assert block is not None
                ahead[u] = BatchLosses(block.nll_sums[start:start + len(b)],
                                       block.weight_sums[start:start + len(b)])
                start += len(b)
        # 3. Train on the kept examples; a step with none kept is skipped (no update).
        result = backend.forward_backward(kept).result() if kept else screened
        unread.append((t, len(kept), len(batch), result, verdict.action == "shift"))
        # 4. Read every step u ≤ t − lag: at lag 1, step t's LR is set before its loss is read.
        read_through(t - lag)
        # 5. The optimizer step, at the policy's LR or the probation's own.
        if kept:
            lr = verdict.lr if verdict.lr is not None else lr_of(t)
            backend.optim_step(AdamParams(learning_rate=lr, **optimizer)).result()
    read_through(steps)
    backend.close()
    return losses


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60, int(sys.argv[2]) if len(sys.argv) > 2
         else 0)
