"""UloraCallback in a real transformers.Trainer on the CPU, with a tiny Llama built in code.

What is checked against the Trainer's own records (its logged losses, the learning rate the
optimizer actually read when it stepped, the weights), never against the callback's own notes:
the LR of every step is the controller's decision replayed from the logged losses (with and
without gradient accumulation), the guard's rejected examples get no gradient, a skipped batch
leaves the weights alone, and a resumed run continues the controller where it stopped.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from ulora_remote import UnifiedController  # noqa: E402
from ulora_remote.backend import ForwardBackwardResult  # noqa: E402
from ulora_remote.control.guard import Verdict, ZScoreGuard, example_losses  # noqa: E402
from ulora_remote.control.policy import Decision, Signal  # noqa: E402
from ulora_remote.errors import ConfigurationError  # noqa: E402
from ulora_remote.integrations import STATE_FILE, UloraCallback  # noqa: E402

torch.set_num_threads(1)

VOCAB, LENGTH, PROMPT = 40, 12, 4
# φ starts at 0.5 and a random-init model's loss is about ln(40) ≈ 3.7 nats, so D = Ê/(1+Ê)
# climbs towards 0.79 and φ crosses θ1 = 0.6 within a few steps: the LR must change mid-run.
CONTROLLER = dict(alpha=0.3, theta0=0.3, theta1=0.6, lr_single=3e-3, lr_multi=1e-3,
                  lr_mirror=2e-4)


def _model(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def _row(tokens: list[int]) -> dict[str, list[int]]:
    """A fixed-length example whose first PROMPT tokens carry no loss."""
    return {"input_ids": tokens, "attention_mask": [1] * len(tokens),
            "labels": [-100] * PROMPT + tokens[PROMPT:]}


def _random_rows(n: int, seed: int) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    return [_row([1] + [rng.randrange(3, VOCAB) for _ in range(LENGTH - 1)]) for _ in range(n)]


class _Stream(torch.utils.data.IterableDataset):
    """Rows in a fixed order (an iterable dataset is not shuffled by the Trainer)."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __iter__(self) -> Any:
        return iter(self.rows)


def _args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=12,
        logging_steps=1, lr_scheduler_type="constant", report_to="none", save_strategy="no",
        use_cpu=True, seed=0, disable_tqdm=True, max_grad_norm=0.0,
    )
    base.update(overrides)
    return TrainingArguments(**base)


class _Probe:
    """Records what the optimizer read when it stepped: the LR, and the weights around it."""

    def __init__(self, optimizer: Any) -> None:
        self.lrs: list[float] = []
        self.before: list[list[Any]] = []
        self.after: list[list[Any]] = []
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    @staticmethod
    def _weights(opt: Any) -> list[Any]:
        return [p.detach().clone() for g in opt.param_groups for p in g["params"]]

    def _pre(self, opt: Any, *_: Any) -> None:
        self.lrs.append(float(opt.param_groups[0]["lr"]))
        self.before.append(self._weights(opt))

    def _post(self, opt: Any, *_: Any) -> None:
        self.after.append(self._weights(opt))


def _train(tmp_path: Path, callback: UloraCallback, rows: Any, *, model: Any = None,
           optimizer: str = "adamw", resume: str | None = None,
           **overrides: Any) -> tuple[Trainer, _Probe]:
    model = model if model is not None else _model()
    opt = (torch.optim.AdamW(model.parameters(), lr=1.0) if optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=1.0))
    probe = _Probe(opt)
    trainer = Trainer(model=model, args=_args(tmp_path, **overrides), train_dataset=rows,
                      data_collator=default_data_collator, optimizers=(opt, None))
    callback.attach(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, probe


def _logged(trainer: Trainer, key: str) -> list[float]:
    return [float(e[key]) for e in trainer.state.log_history if "loss" in e and key in e]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_each_step_lr_is_the_controller_decision_replayed_from_the_logged_losses(
        tmp_path: Path, accumulation: int) -> None:
    ulora = UloraCallback(UnifiedController(**CONTROLLER))
    trainer, probe = _train(tmp_path, ulora, _random_rows(96, seed=1),
                            gradient_accumulation_steps=accumulation,
                            per_device_train_batch_size=4 // accumulation)

    losses = _logged(trainer, "loss")
    assert len(losses) == len(probe.lrs) == 12  # one decision per optimizer step
    replay = UnifiedController(**CONTROLLER)
    expected = [replay.lr]  # the first step runs before any loss was read
    phis = []
    for loss in losses[:-1]:
        decision = replay.decide(loss)
        expected.append(decision.lr)
        phis.append(decision.phi)
    assert probe.lrs == pytest.approx(expected, rel=1e-12)
    assert len(set(probe.lrs)) >= 2, "the controller never switched: the test proves nothing"
    # the Trainer's logs carry the applied LR (not its scheduler's) and φ for TensorBoard / W&B
    assert _logged(trainer, "learning_rate") == pytest.approx(probe.lrs, rel=1e-12)
    assert _logged(trainer, "ulora/phi")[:-1] == pytest.approx(phis, rel=1e-5)
    assert set(_logged(trainer, "ulora/mode")) <= {0.0, 1.0, 2.0}
    # without a guard the loss the policy saw is the loss the Trainer trained on and logged
    assert _logged(trainer, "ulora/loss") == pytest.approx(losses, rel=1e-5)


class _Harmonic:
    """An LrPolicy whose n-th decision sets lr0/(n+2): every step's LR differs, so a lag is seen."""

    def __init__(self, lr0: float = 1e-3) -> None:
        self.lr0 = lr0
        self.signals: list[Signal] = []
        self.phi = UnifiedController()  # φ and Ê for the logs, as the LrPolicy contract asks

    def _decision(self, step: int, lr: float) -> Decision:
        return Decision(step=step, loss=float("nan"), e_smooth=self.phi.E_smooth,
                        phi=self.phi.phi, mode=-1, mode_name="harmonic", lr=lr, switched=False)

    def initial_decision(self) -> Decision:
        return self._decision(-1, self.lr0)

    def observe(self, signal: Signal) -> Decision:
        self.signals.append(signal)
        self.phi.decide(signal.loss)
        n = len(self.signals) - 1
        return self._decision(n, self.lr0 / (n + 2))

    def state_dict(self) -> dict[str, Any]:
        return {"n": len(self.signals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_any_lr_policy_drives_the_lr_with_lag_one(tmp_path: Path) -> None:
    policy = _Harmonic()
    trainer, probe = _train(tmp_path, UloraCallback(policy), _random_rows(32, seed=7),
                            max_steps=5)
    assert probe.lrs == pytest.approx([1e-3 / (t + 1) for t in range(5)], rel=1e-12)
    assert [s.loss for s in policy.signals] == pytest.approx(_logged(trainer, "loss"), rel=1e-5)
    assert all(s.external_stress is None for s in policy.signals)  # no guard, no E_t


class _RejectWorst:
    """A per-example guard: drops the example with the highest mean loss of each batch."""

    def __init__(self) -> None:
        self.seen: list[ForwardBackwardResult] = []

    def judge(self, step: int, screened: ForwardBackwardResult) -> Verdict:
        self.seen.append(screened)
        means = example_losses(screened)
        worst = max(range(len(means)), key=means.__getitem__)
        return Verdict(keep=tuple(i != worst for i in range(len(means))), note="worst")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _nll_sum(model: Any, row: dict[str, list[int]]) -> Any:
    """One example's summed NLL from the model's own loss (a mean) times its target count."""
    batch = {k: torch.tensor([v]) for k, v in row.items()}
    return model(**batch).loss * (LENGTH - PROMPT)


def test_rejected_examples_get_no_gradient(tmp_path: Path) -> None:
    rows = _random_rows(4, seed=2)
    guard = _RejectWorst()
    ulora = UloraCallback(UnifiedController(**CONTROLLER), guard=guard)
    trainer, probe = _train(tmp_path, ulora, _Stream(rows), optimizer="sgd", max_steps=1)

    reference = _model()
    with torch.no_grad():
        sums = [float(_nll_sum(reference, row)) for row in rows]
    # the guard saw every example's NLL sum and target count, in batch order
    assert guard.seen[0].nll_sums == pytest.approx(sums, rel=1e-5)
    assert guard.seen[0].weight_sums == (float(LENGTH - PROMPT),) * 4
    worst = max(range(4), key=sums.__getitem__)
    kept = [row for i, row in enumerate(rows) if i != worst]
    # one plain SGD step on the mean loss of the kept examples alone gives the same weights
    loss = sum(_nll_sum(reference, row) for row in kept) / (len(kept) * (LENGTH - PROMPT))
    loss.backward()
    lr = probe.lrs[0]
    assert lr == UnifiedController(**CONTROLLER).lr
    for p_ref, p_trained in zip(reference.parameters(), trainer.model.parameters(), strict=True):
        assert torch.allclose(p_ref.detach() - lr * p_ref.grad, p_trained.detach(), atol=1e-6)
    assert ulora.history[0].dropped == 1
    assert _logged(trainer, "ulora/dropped") == [1.0]


def test_a_skipped_batch_leaves_the_weights_alone(tmp_path: Path) -> None:
    # 24 batches of one repeated sequence (the loss falls fast and steadies), then a batch of
    # random targets, whose loss ZScoreGuard must find far above the recent accepted ones.
    pattern = _row([1] + [3 + (i % 5) for i in range(LENGTH - 1)])
    shock_at = 24
    rows = [pattern] * (4 * shock_at) + _random_rows(4, seed=3) + [pattern] * 8
    controller = UnifiedController(alpha=0.3, lr_single=1e-2, lr_multi=1e-2, lr_mirror=1e-2)
    ulora = UloraCallback(controller, guard=ZScoreGuard(z=3.0, window=8, min_history=8))
    trainer, probe = _train(tmp_path, ulora, _Stream(rows), max_steps=shock_at + 2)

    skipped = [h.step for h in ulora.history if h.dropped]
    assert skipped == [shock_at]
    assert probe.lrs[shock_at] == 0.0
    for before, after in zip(probe.before[shock_at], probe.after[shock_at], strict=True):
        assert torch.equal(before, after)
    assert probe.lrs[shock_at + 1] > 0  # the next clean batch trains again
    # the controller still saw the shock's loss, and the logs say what was dropped
    assert ulora.history[shock_at].loss > 2 * ulora.history[shock_at - 1].loss
    assert _logged(trainer, "ulora/dropped")[shock_at] == 4.0


def test_a_resumed_run_continues_the_controller(tmp_path: Path) -> None:
    rows = _random_rows(64, seed=4)
    straight = UloraCallback(UnifiedController(**CONTROLLER))
    _train(tmp_path / "a", straight, _Stream(rows), max_steps=8, save_strategy="steps",
           save_steps=4)
    checkpoint = tmp_path / "a" / "out" / "checkpoint-4"
    assert (checkpoint / STATE_FILE).is_file()

    resumed = UloraCallback(UnifiedController(**CONTROLLER))
    _train(tmp_path / "a", resumed, _Stream(rows), max_steps=8, resume=str(checkpoint))
    assert [h.step for h in resumed.history] == [4, 5, 6, 7]
    assert [h.lr for h in resumed.history] == [h.lr for h in straight.history[4:]]
    assert [h.phi for h in resumed.history] == pytest.approx(
        [h.phi for h in straight.history[4:]], rel=1e-5)

    (checkpoint / STATE_FILE).unlink()
    with pytest.raises(ConfigurationError, match="controller would restart"):
        _train(tmp_path / "a", UloraCallback(UnifiedController(**CONTROLLER)), _Stream(rows),
               max_steps=8, resume=str(checkpoint))


def test_bad_set_ups_are_refused_with_the_fix(tmp_path: Path) -> None:
    rows = _random_rows(16, seed=5)
    guarded = UloraCallback(UnifiedController(), guard=ZScoreGuard())
    with pytest.raises(ConfigurationError, match="per_device_train_batch_size"):
        _train(tmp_path, guarded, rows, gradient_accumulation_steps=2, max_steps=2)

    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=rows,
                      data_collator=default_data_collator,
                      callbacks=[UloraCallback(UnifiedController())])
    with pytest.raises(ConfigurationError, match="attach"):
        trainer.train()
    hook_only = UloraCallback(UnifiedController())
    trainer = Trainer(model=_model(), args=_args(tmp_path, max_steps=1), train_dataset=rows,
                      data_collator=default_data_collator, compute_loss_func=hook_only.compute_loss)
    with pytest.raises(ConfigurationError, match="not registered"):
        trainer.train()

    with pytest.warns(UserWarning, match="'linear' scheduler"):
        _train(tmp_path, UloraCallback(UnifiedController()), rows, max_steps=1,
               lr_scheduler_type="linear")
    with pytest.raises(ConfigurationError, match="LrPolicy"):
        UloraCallback(object())  # type: ignore[arg-type]


def test_evaluation_through_the_hook_is_a_plain_mean(tmp_path: Path) -> None:
    rows = _random_rows(8, seed=6)
    ulora = UloraCallback(UnifiedController(), guard=_RejectWorst())
    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path, per_device_eval_batch_size=8),
                      eval_dataset=rows, data_collator=default_data_collator)
    ulora.attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = trainer.evaluate()
    with torch.no_grad():
        expected = sum(float(_nll_sum(model, r)) for r in rows) / (8 * (LENGTH - PROMPT))
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert not ulora.history and not math.isnan(metrics["eval_loss"])


@pytest.mark.slow
def test_the_example_script_runs(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    script = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    done = subprocess.run([sys.executable, str(script), "--steps", "3"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step   0  loss" in done.stdout
    assert "held-out loss" in done.stdout


@pytest.mark.slow
def test_the_example_script_runs_on_the_real_model(tmp_path: Path, smollm2_dir: Path) -> None:
    """``--base-model smollm2-135m``: the model from the cache (converted by the session's
    fixture; the subprocess inherits ULORA_CACHE_DIR), its BPE tokenizer, three steps."""
    pytest.importorskip("peft")
    script = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two threads on busy cores: 3-5x slower
    done = subprocess.run([sys.executable, str(script), "--steps", "3", "--base-model",
                           "smollm2-135m"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step   0  loss" in done.stdout and "held-out loss" in done.stdout
    assert "not cached yet" not in done.stderr  # the session's entry, not a new conversion
