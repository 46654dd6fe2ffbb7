"""The sequence classifier behind the backend protocol, on the tiny DistilBERT built in code and the
generated paraphrase set: per-example CE, label predictions, checkpoints, and the
``mrpc-distilbert`` scenario end to end with its majority-class report (docs/design.md,
"Scenarios"). No download."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import torch  # noqa: E402
from ulora_remote.backends.classify import ClassifierBackend  # noqa: E402
from ulora_remote.scenarios.paraphrase import PairTask, generate_pairs  # noqa: E402

from ulora_remote import run_scenario  # noqa: E402
from ulora_remote.backend import AdamParams, Example, Message, TrainingBackend  # noqa: E402
from ulora_remote.cli import main  # noqa: E402
from ulora_remote.errors import CheckpointError, ConfigurationError, InputError  # noqa: E402

torch.set_num_threads(1)

OFFLINE = ['task.kind="paraphrase"', 'backend.base_model="tiny-distilbert"', "eval.size=200",
           "task.train_size=800"]


class _Source:
    def __init__(self, batch_size: int) -> None:
        self.task = PairTask(generate_pairs(800, "train"), generate_pairs(200, "eval"),
                             fmt="classifier", seed=0)
        self.batch_size = batch_size

    def batch(self, step: int) -> list[Example]:
        return self.task.train_batch(step, self.batch_size)

    def eval_examples(self) -> list[Example]:
        return self.task.eval_examples()

    def score_eval(self, outputs: list[str]):  # type: ignore[no-untyped-def]
        return self.task.classification_scores(outputs)


def _source(batch_size: int = 16) -> _Source:
    return _Source(batch_size)


def _train(backend: ClassifierBackend, source: _Source, steps: range, lr: float) -> None:
    for step in steps:
        backend.forward_backward(source.batch(step)).result()
        backend.optim_step(AdamParams(learning_rate=lr)).result()


def test_losses_are_per_example_label_cross_entropy() -> None:
    backend = ClassifierBackend("tiny-distilbert", seed=1)
    assert isinstance(backend, TrainingBackend)
    batch = [Example("", "1", inputs=("the bank sold the deal on monday .",
                                       "the lender sold the agreement on monday .")),
             Example("", " 0 ", inputs=("the city shut the road .",
                                        "the town never closed the street ."))]
    result = backend.forward(batch).result()
    assert result.weight_sums == (1.0, 1.0) and result.tokens == 2.0
    enc = backend.tokenizer(["the bank sold the deal on monday ."], [
        "the lender sold the agreement on monday ."], return_tensors="pt")
    with torch.no_grad():
        logits = backend.model(**{k: v.to(backend.device) for k, v in enc.items()}).logits
    expected = -torch.log_softmax(logits, dim=-1)[0, 1].item()
    assert result.nll_sums[0] == pytest.approx(expected, rel=1e-5)
    assert result.mean_loss == pytest.approx(sum(result.nll_sums) / 2)
    assert set(backend.sample(batch, max_tokens=1)) <= {"0", "1"}
    datum = backend.render(batch[1])
    assert datum.weight_sum == 1.0 and datum.target_tokens[-1] == 0
    backend.close()


def test_bad_labels_and_empty_batches_raise_input_errors() -> None:
    backend = ClassifierBackend("tiny-distilbert")
    with pytest.raises(InputError, match=r"label ' yes'.*labels \['0', '1'\]"):
        backend.forward_backward([Example("", " yes", inputs=("a .", "b ."))])
    with pytest.raises(InputError, match="sentence pair"):
        backend.forward([Example("", "1", inputs=("a .", "b .", "c ."))])
    with pytest.raises(InputError, match="empty batch"):
        backend.forward([])
    conversation = Example("User: a\nAssistant:", "1", messages=(Message("user", "a"),
                                                                  Message("assistant", "1")))
    with pytest.raises(InputError, match="not conversations"):
        backend.forward([conversation])
    backend.close()


def test_tiny_classifier_learns_above_the_majority_class() -> None:
    backend, source = ClassifierBackend("tiny-distilbert", seed=0), _source()
    prompts = source.eval_examples()
    before = source.score_eval(backend.sample(prompts))
    _train(backend, source, range(200), lr=1e-3)
    after = source.score_eval(backend.sample(prompts))
    backend.close()
    assert not before.beats_majority
    assert after.beats_majority and not after.one_class, after.describe()
    assert after.accuracy >= after.majority_accuracy + 0.1


def test_checkpoint_round_trip_and_a_foreign_rank_is_refused(tmp_path: Path) -> None:
    source = _source(8)
    backend = ClassifierBackend("tiny-distilbert", seed=0, checkpoint_dir=tmp_path)
    _train(backend, source, range(5), lr=1e-3)
    ref = backend.save_state("step5")
    probe = source.batch(99)
    saved = backend.forward(probe).result().nll_sums
    _train(backend, source, range(5, 10), lr=1e-3)
    assert backend.forward(probe).result().nll_sums != saved
    backend.load_state(ref)
    assert backend.forward(probe).result().nll_sums == saved
    other = ClassifierBackend("tiny-distilbert", seed=7)  # another LoRA init, the same base
    other.load_state(ref)
    assert other.forward(probe).result().nll_sums == pytest.approx(saved, rel=1e-6)
    with pytest.raises(CheckpointError, match="rank"):
        ClassifierBackend("tiny-distilbert", rank=4).load_state(ref)
    for b in (backend, other):
        b.close()


def test_the_shared_training_functions_serve_the_classifier(tmp_path: Path) -> None:
    from ulora_remote.errors import BackendError

    source = _source(8)
    trained = ClassifierBackend("tiny-distilbert", seed=0, checkpoint_dir=tmp_path)
    _train(trained, source, range(3), lr=1e-3)
    ref = trained.save_state("step3")
    loaded = ClassifierBackend("tiny-distilbert", seed=5, checkpoint_dir=tmp_path)
    _train(loaded, source, range(10, 12), lr=1e-3)  # moments that a weights-only load drops
    loaded.load_state(ref, optimizer=False)
    assert len(loaded.training.optimizer.state) == 0
    for (n, p), (_, q) in zip(loaded.training.params, trained.training.params, strict=True):
        assert torch.equal(p, q), n
    # the head is trained in full, beside the LoRA matrices
    names = [n for n, _ in trained.training.params]
    assert any("lora_A" in n for n in names) and any("classifier" in n for n in names)
    norm = trained.optim_step(AdamParams(learning_rate=1e-3)).result().grad_norm
    assert norm == 0.0  # no gradients pending: nothing to measure, nothing applied
    trained.close()
    with pytest.raises(BackendError, match="ClassifierBackend is closed"):
        trained.forward(source.batch(0))
    assert (tmp_path / "step3" / "manifest.json").is_file()  # close keeps checkpoints
    loaded.close()


def test_scenario_run_reports_accuracy_f1_and_majority(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_scenario(
        "mrpc-distilbert", out=tmp_path / "run", console=out,
        overrides=[*OFFLINE, "steps=150", "eval.every=75", "checkpoint.every=75",
                   "controller.method=fixed", "controller.lr=1e-3"])
    summary = result.summary
    assert summary is not None and summary["all_one_class"] is False
    c = summary["classification"]
    assert c["step"] == 150 and c["n"] == 200 and c["beats_majority"] is True
    assert c["majority_accuracy"] == pytest.approx(c["positive_rate"])
    p = c["positive_rate"]
    assert c["majority_f1"] == pytest.approx(2 * p / (1 + p))
    assert result.evals["exact_match"].iloc[-1] == pytest.approx(c["accuracy"])
    assert result.steps["tokens"].eq(16.0).all()  # weight 1 per example
    lines = (tmp_path / "run" / "eval_scores.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 75, 150]
    assert "majority '1'" in out.getvalue()


def test_a_run_that_answers_one_class_is_flagged(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sets = [x for o in [*OFFLINE, "eval.every=2", "controller.method=fixed",
                        "controller.lr=1e-7"] for x in ("--set", o)]
    code = main(["run", "mrpc-distilbert", "--steps", "2", "--out", str(tmp_path / "run"), *sets])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["all_one_class"] is True
    c = summary["classification"]
    assert c["one_class"] is True and not c["beats_majority"]
    assert c["predicted_positive_rate"] in (0.0, 1.0)
    assert "WARNING: all 200 predictions are" in printed  # the evaluation line
    assert "NOT above the majority class" in printed  # the final line of `ulora run`
    assert "WARNING: all 200 final predictions are" in printed


def test_a_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist.*tiny-distilbert"):
        ClassifierBackend(str(tmp_path / "no-model"))
