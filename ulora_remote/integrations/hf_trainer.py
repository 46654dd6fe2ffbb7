"""The Unified-LoRA controller inside a Hugging Face ``Trainer``: a ``TrainerCallback``.

Use (docs: README, "Inside a Hugging Face Trainer")::

    from ulora_remote import UnifiedController
    from ulora_remote.control.guard import ZScoreGuard
    from ulora_remote.integrations import UloraCallback

    ulora = UloraCallback(UnifiedController.from_preset("reference"), guard=ZScoreGuard())
    trainer = Trainer(model=model, args=TrainingArguments(..., lr_scheduler_type="constant"),
                      train_dataset=train, data_collator=collator)
    ulora.attach(trainer)          # the loss hook, and first place among the callbacks
    trainer.train()

What happens in one optimizer step (transformers' training loop, 4.47 to 5.x):

1. ``on_step_begin``: the step's tally is reset.
2. For each micro-batch the Trainer calls its loss hook ``compute_loss_func`` =
   ``UloraCallback.compute_loss``: each example's NLL sum; the guard's verdict (a rejected
   example weighs 0 in the loss, so it gets no gradient); the micro-batch's share of the mean.
3. ``on_pre_optimizer_step`` (after gradient clipping, right before ``optimizer.step()``): the
   learning rate is written into every parameter group. It is the policy's decision on the
   previous step's loss (lag 1, as in the seed's loop); the policy's initial LR at the first
   step; 0 when the guard rejected the whole batch, so AdamW's momentum does not move the
   weights on a skipped step. Then this step's loss goes to the policy; its decision sets the
   next step's LR.
4. ``optimizer.step()``, then the Trainer's scheduler steps. Whatever the scheduler writes into
   the parameter groups is overwritten at the next step's ``on_pre_optimizer_step``, so no
   scheduler undoes the controller; ``args.learning_rate`` and warm-up are not used.
5. ``on_log``: ``ulora/loss`` (the last step's loss as the policy saw it), ``ulora/phi``,
   ``ulora/e_smooth``, ``ulora/mode`` (0 Single, 1 Multi, 2 Mirror) and ``ulora/dropped``
   (examples the guard rejected since the last log) join the training logs, and
   ``learning_rate`` (which the Trainer reads from its scheduler) becomes the LR the last step
   applied. The Trainer's own ``loss`` is what was trained on: the kept examples' mean, 0 for a
   skipped batch. ``attach`` puts the callback first among the Trainer's callbacks, so the
   TensorBoard and W&B callbacks, which run later on the same event, see these values.

The policy observes the step's mean NLL per target token over every example read, rejected ones
included (the stress signal should see the shock the guard kept out of the gradient), and, when
a guard is set, the share of the batch it rejected as external stress E_t.

Limits (each raises ``ConfigurationError`` at the start of training): one process only (every
process of a distributed run would set its own LR); with a guard, no gradient accumulation (the
first micro-batch's backward runs before the step's last micro-batch was read, so no verdict on
the whole batch can come first: raise the batch size instead).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SchedulerType

from ulora_remote.control.guard import Guard
from ulora_remote.control.policy import Decision, LrPolicy, Signal
from ulora_remote.errors import ConfigurationError

from .hf_loss import ExampleLosses, example_losses_of, logits_of

__all__ = ["STATE_FILE", "UloraCallback", "UloraStep"]

#: the file ``on_save`` writes into each Trainer checkpoint folder (policy and guard state).
STATE_FILE = "ulora_state.json"



@dataclass(frozen=True)
class UloraStep:
    """One optimizer step as the callback saw it (``UloraCallback.history``).

    Attributes:
        step: the Trainer's ``global_step`` before the step (0-based).
        loss: mean NLL per target token over every example of the step (nats).
        lr: the learning rate this step applied.
        phi, e_smooth, mode, mode_name, switched: the policy's decision on ``loss``, which sets
            the next step's learning rate.
        examples, dropped: examples read, and rejected by the guard.
    """

    step: int
    loss: float
    lr: float
    phi: float
    e_smooth: float
    mode: int
    mode_name: str
    switched: bool
    examples: int
    dropped: int


@dataclass
class _Tally:
    """The micro-batches of the step under way."""

    step: int
    nll: float = 0.0
    tokens: float = 0.0
    examples: int = 0
    dropped: int = 0


class UloraCallback(TrainerCallback):
    """Sets every step's learning rate from the training loss; optionally guards the batch.

    Args:
        policy: a ``UnifiedController`` (the seed's controller) or any ``LrPolicy``.
        guard: judges each batch before its backward; rejected examples get no gradient.
        shift_labels: True (default) for causal LMs whose labels are the input ids, as the
            Trainer's own causal-LM loss expects; False when labels are already aligned.

    Attributes:
        history: one ``UloraStep`` per optimizer step of this process.
    """

    def __init__(self, policy: LrPolicy, *, guard: Guard | None = None,
                 shift_labels: bool = True) -> None:
        if not isinstance(policy, LrPolicy):
            raise ConfigurationError(
                f"policy must be an LrPolicy (e.g. a UnifiedController), not "
                f"{type(policy).__name__}"
            )
        if guard is not None and not isinstance(guard, Guard):
            raise ConfigurationError(f"guard must implement Guard, not {type(guard).__name__}")
        self.policy, self.guard, self.shift_labels = policy, guard, shift_labels
        self.history: list[UloraStep] = []
        self._next = policy.initial_decision()
        self._tally: _Tally | None = None  # None outside a training step (evaluation)
        self._accumulation = 1
        self._dropped_since_log = 0
        self._resumed_at: int | None = None

    # -- wiring --------------------------------------------------------------------------------
    def attach(self, trainer: Trainer) -> Trainer:
        """Install the loss hook and put this callback first; returns ``trainer``.

        Raises:
            ConfigurationError: the trainer already has another ``compute_loss_func``.
        """
        if trainer.compute_loss_func not in (None, self.compute_loss):
            raise ConfigurationError(
                "this Trainer already has a compute_loss_func; UloraCallback needs the loss "
                "hook to read per-example losses: drop the other one"
            )
        trainer.compute_loss_func = self.compute_loss
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return trainer

    # -- the loss hook -------------------------------------------------------------------------
    def compute_loss(self, outputs: Any, labels: torch.Tensor | None,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """The Trainer's ``compute_loss_func``: mean NLL per kept target token.

        In training the result is this micro-batch's share of the step's mean (the Trainer
        sums the micro-batches); in evaluation it is the batch's plain mean.

        Raises:
            ConfigurationError: no labels, no logits, a verdict of the wrong length, or a
                training step without the callback registered.
        """
        if labels is None:
            raise ConfigurationError(
                "UloraCallback's loss hook needs `labels` in every batch (-100 where there is "
                "no loss); use e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)"
            )
        logits = logits_of(outputs)
        losses = example_losses_of(logits, labels, shift=self.shift_labels)
        if self._tally is None:
            if logits.requires_grad:  # a training step that no on_step_begin announced
                raise ConfigurationError(
                    "UloraCallback's loss hook runs in training but the callback is not "
                    "registered, so it would set no learning rate: call ulora.attach(trainer)"
                )
            return losses.nll_sums.sum() / losses.tokens.sum().clamp(min=1)
        keep = self._judge(losses)
        kept_nll = torch.where(keep, losses.nll_sums, torch.zeros_like(losses.nll_sums)).sum()
        self._count(losses, keep)
        if self._accumulation == 1:
            return kept_nll / (losses.tokens * keep).sum().clamp(min=1)
        if num_items_in_batch is None:  # the Trainer could not count the step's targets
            return kept_nll / (losses.tokens.sum().clamp(min=1) * self._accumulation)
        return kept_nll / num_items_in_batch

    def _judge(self, losses: ExampleLosses) -> torch.Tensor:
        n = losses.nll_sums.shape[0]
        if self.guard is None:
            return torch.ones(n, dtype=torch.bool, device=losses.nll_sums.device)
        assert self._tally is not None
        verdict = self.guard.judge(self._tally.step, losses.screened())
        if verdict.action != "none":
            raise ConfigurationError(
                f"{type(self.guard).__name__} asked for a {verdict.action!r} at step "
                f"{self._tally.step}: its stability snapshots and rollbacks need ulora's own "
                "runner; in a Trainer use a guard that only keeps examples (ZScoreGuard, or "
                "ScreenGuard(ScreenConfig(trigger_steps=10**9)) for per-example screening alone)"
            )
        if len(verdict.keep) != n:
            raise ConfigurationError(
                f"{type(self.guard).__name__}.judge returned {len(verdict.keep)} flags for a "
                f"batch of {n} examples; a Verdict needs one flag per example"
            )
        return torch.tensor(verdict.keep, dtype=torch.bool, device=losses.nll_sums.device)

    def _count(self, losses: ExampleLosses, keep: torch.Tensor) -> None:
        assert self._tally is not None
        self._tally.nll += float(losses.nll_sums.detach().double().sum())
        self._tally.tokens += float(losses.tokens.sum())
        self._tally.examples += int(keep.numel())
        self._tally.dropped += int((~keep).sum())

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        _check_args(args, guarded=self.guard is not None)
        self._accumulation = args.gradient_accumulation_steps
        if state.global_step > 0 and self._resumed_at != state.global_step:
            folder = _checkpoint_folder(args, state)
            if not (folder / STATE_FILE).is_file():
                raise ConfigurationError(
                    f"training resumes at step {state.global_step} but {folder / STATE_FILE} "
                    "is missing, so the controller would restart from φ = 0.5; call "
                    "UloraCallback.load_state(<the checkpoint folder>) before train()"
                )
            self.load_state(folder)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: Any) -> None:
        self._tally = _Tally(step=state.global_step)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> None:
        tally = self._tally
        if tally is None or tally.examples == 0:
            raise ConfigurationError(
                f"no loss reached UloraCallback in step {state.global_step}: call "
                "ulora.attach(trainer) (or pass compute_loss_func=ulora.compute_loss)"
            )
        lr = 0.0 if tally.dropped == tally.examples else self._next.lr
        for group in kwargs["optimizer"].param_groups:
            group["lr"] = lr
        loss = tally.nll / tally.tokens if tally.tokens > 0 else float("nan")
        stress = tally.dropped / tally.examples if self.guard is not None else None
        self._next = self.policy.observe(Signal(loss=loss, external_stress=stress))
        d = self._next
        self.history.append(UloraStep(
            step=state.global_step, loss=loss, lr=lr, phi=d.phi, e_smooth=d.e_smooth,
            mode=d.mode, mode_name=d.mode_name, switched=d.switched,
            examples=tally.examples, dropped=tally.dropped,
        ))
        self._dropped_since_log += tally.dropped
        self._tally = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs or not self.history:
            return  # an evaluation or the end-of-training summary
        values = self.log_values()
        logs.update(values)
        last = state.log_history[-1] if state.log_history else {}
        if last.get("step") == state.global_step and "loss" in last:
            last.update(values)  # the Trainer appended its copy before calling the callbacks
        self._dropped_since_log = 0

    def log_values(self) -> dict[str, float]:
        """What ``on_log`` adds to a training log: the last step's LR and decision."""
        last = self.history[-1]
        return {
            "learning_rate": last.lr, "ulora/loss": last.loss, "ulora/phi": last.phi,
            "ulora/e_smooth": last.e_smooth,
            "ulora/mode": float(last.mode), "ulora/dropped": float(self._dropped_since_log),
        }

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        folder = _checkpoint_folder(args, state)
        if folder.is_dir():
            self.save_state(folder, global_step=state.global_step)

    def save_state(self, folder: str | Path, *, global_step: int) -> Path:
        """Write the policy's and the guard's state to ``folder/ulora_state.json`` atomically."""
        target = Path(folder) / STATE_FILE
        blob = {
            "format": 1, "global_step": global_step, "next": asdict(self._next),
            "policy": self.policy.state_dict(),
            "guard": self.guard.state_dict() if self.guard is not None else None,
        }
        tmp = target.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(json.dumps(blob, indent=1), encoding="utf-8")
        os.replace(tmp, target)
        return target

    def load_state(self, folder: str | Path) -> None:
        """Restore what ``save_state`` wrote, so a resumed run continues bit-identically.

        Raises:
            ConfigurationError: the file is missing, or the state belongs to another policy
                or guard setup.
        """
        path = Path(folder) / STATE_FILE
        try:
            blob = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {path}: {exc}") from exc
        if (blob["guard"] is None) != (self.guard is None):
            raise ConfigurationError(
                f"{path} was saved {'without' if blob['guard'] is None else 'with'} a guard; "
                "build the callback the same way to resume"
            )
        self.policy.load_state_dict(blob["policy"])
        if self.guard is not None:
            self.guard.load_state_dict(blob["guard"])
        self._next = Decision(**blob["next"])
        self._resumed_at = int(blob["global_step"])


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """Where the Trainer saves (and by default resumes) the checkpoint of this global step."""
    root = Path(args.output_dir or "trainer_output")  # the Trainer's own default
    return root / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def _check_args(args: TrainingArguments, *, guarded: bool) -> None:
    if args.world_size > 1 or args.n_gpu > 1:
        raise ConfigurationError(
            "UloraCallback runs in one process on one device: in a distributed run every "
            "process would set its own learning rate from its own loss"
        )
    if guarded and args.gradient_accumulation_steps > 1:
        raise ConfigurationError(
            f"gradient_accumulation_steps={args.gradient_accumulation_steps} with a guard: the "
            "guard judges the whole batch before its backward, which accumulation splits; "
            "raise per_device_train_batch_size instead, or drop the guard"
        )
    scheduler = SchedulerType(args.lr_scheduler_type).value
    if scheduler != "constant":
        warnings.warn(
            f"UloraCallback sets every step's learning rate, so the '{scheduler}' "
            "scheduler (and any warm-up) has no effect; pass lr_scheduler_type='constant' to "
            "say so and silence this warning",
            UserWarning, stacklevel=2,
        )
