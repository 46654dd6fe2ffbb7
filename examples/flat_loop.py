"""The seed's quick start as a flat loop: any TrainingBackend plus the UnifiedController.

    python examples/flat_loop.py            # 120 steps of Pig Latin on the built-in small model

Everything `ulora run` adds (shock windows, evaluations, checkpoints, the run directory, lag-1
pipelining) is left out, so the control loop reads top to bottom.
"""

from __future__ import annotations

import sys

from ulora_remote.scenarios import PigLatinTask

from ulora_remote import AdamParams, UnifiedController


def main(steps: int = 120, model: str = "small") -> list[float]:
    from ulora_remote.backends.local import LocalBackend  # needs the 'local' extra

    backend = LocalBackend(model, rank=8, seed=0, threads=1)
    controller = UnifiedController.from_preset("tinker")  # 2e-3 / 5e-4 / 1e-4 by mode
    task = PigLatinTask(seed=0, eval_size=8)
    losses = []
    for step in range(steps):
        batch = task.train_batch(step, 8)
        loss = backend.forward_backward(batch).result().mean_loss  # nats per target token
        new_lr = controller.update(loss)  # the seed's API: loss in, learning rate out
        backend.optim_step(AdamParams(learning_rate=new_lr)).result()
        losses.append(loss)
        if step % 20 == 0:
            print(f"[{step}] Mode={controller.mode} φ={controller.phi:.3f} "
                  f"E_s={controller.E_smooth:.3f} lr={new_lr:g} loss={loss:.3f}")
    held_out = task.eval_examples()
    answers = backend.sample(held_out, max_tokens=16)
    hits = sum(a.strip() == e.completion.strip() for a, e in zip(answers, held_out, strict=True))
    print(f"exact match on {len(held_out)} held-out words: {hits / len(held_out):.2f}")
    backend.close()
    return losses


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 120)
