"""MRPC data: GLUE files by path, clear errors for a missing path or extra, the generated paraphrase
set, the pair batch source and the scenario rules of the pair tasks (docs/design.md,
"Scenarios")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ulora_remote.scenarios import load_scenario
from ulora_remote.scenarios.mrpc import load_mrpc
from ulora_remote.scenarios.paraphrase import (
    PairTask,
    SentencePair,
    generate_pairs,
    render_pair,
    vocabulary,
)
from ulora_remote.scenarios.shocks import Schedule, ShockStream

from ulora_remote.errors import ConfigurationError, MissingExtraError
from ulora_remote.run.builders import build_source

HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def _glue_dir(tmp_path: Path) -> Path:
    # Quotes are literal text in GLUE's MRPC files; a csv reader that honours them breaks rows.
    (tmp_path / "train.tsv").write_text(
        HEADER + '1\t1\t2\tHe said "yes" today .\tToday he said "yes" .\n'
        "0\t3\t4\tShares rose 5 % .\tShares fell 5 % .\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(HEADER + "1\t5\t6\tA b .\tB a .\n", encoding="utf-8")
    return tmp_path


def test_glue_tsvs_load_by_path(tmp_path: Path) -> None:
    root = _glue_dir(tmp_path)
    train = load_mrpc("train", root)
    assert train == [SentencePair('He said "yes" today .', 'Today he said "yes" .', 1),
                     SentencePair("Shares rose 5 % .", "Shares fell 5 % .", 0)]
    assert load_mrpc("validation", str(root)) == [SentencePair("A b .", "B a .", 1)]


def test_parquet_loads_when_pyarrow_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    pd.DataFrame({"sentence1": ["a ."], "sentence2": ["b ."], "label": [0], "idx": [0]}) \
        .to_parquet(tmp_path / "validation-00000-of-00001.parquet")
    assert load_mrpc("validation", tmp_path) == [SentencePair("a .", "b .", 0)]


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'ulora-remote\[mrpc\]'"):
        load_mrpc("train", tmp_path)


def test_missing_path_and_missing_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"task.path = .*nowhere.* is not a directory"):
        load_mrpc("train", tmp_path / "nowhere")
    with pytest.raises(ConfigurationError, match=r"no MRPC validation file.*dev.tsv"):
        load_mrpc("validation", tmp_path)
    (tmp_path / "train.tsv").write_text("index\t#1 String\t#2 String\n0\ta\tb\n")
    with pytest.raises(ConfigurationError, match="Quality"):
        load_mrpc("train", tmp_path)
    with pytest.raises(ConfigurationError, match="split 'test'"):
        load_mrpc("test", tmp_path)


def test_without_a_path_a_missing_datasets_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    with pytest.raises(MissingExtraError) as caught:
        load_mrpc("train")
    assert caught.value.extra == "mrpc" and "pip install 'ulora-remote[mrpc]'" in str(caught.value)


def test_generated_pairs_follow_their_rules() -> None:
    pairs = generate_pairs(2000, "train")
    assert pairs == generate_pairs(2000, "train") and pairs != generate_pairs(2000, "other")
    assert 0.56 < sum(p.label for p in pairs) / len(pairs) < 0.64
    words = set(vocabulary())
    for p in pairs:
        assert set(p.sentence1.split()) | set(p.sentence2.split()) <= words
        if p.label == 1:  # a paraphrase never negates
            assert "never" not in p.sentence2.split()
    negated = [p for p in pairs if "never" in p.sentence2.split()]
    assert negated and all(p.label == 0 for p in negated)


def test_renderings() -> None:
    pair = SentencePair("a .", "b .", 1)
    assert render_pair(pair, "classifier").inputs == ("a .", "b .")
    assert render_pair(pair, "classifier").completion == "1"
    completion = render_pair(SentencePair("a .", "b .", 0), "completion")
    assert completion.completion == " no" and completion.prompt.endswith("Answer:")
    with pytest.raises(ConfigurationError, match="choose one of"):
        render_pair(pair, "regression")


def test_source_batches_are_deterministic_and_shocks_flip_labels() -> None:
    train, held = generate_pairs(50, "t"), generate_pairs(20, "e")
    task = PairTask(train, held, fmt="classifier", seed=3)
    clean = ShockStream(task, batch_size=8)
    shocked = ShockStream(task, batch_size=8, schedule=Schedule([(2, 4)]),
                          kind="flipped-label", fraction=0.5)
    assert clean.batch(7) == clean.batch(7) and clean.batch(1) != clean.batch(2)
    assert shocked.batch(1) == clean.batch(1) and not shocked.batch(1).shock
    shock = shocked.batch(2)
    flipped = sum(a.completion != b.completion for a, b in zip(shock.examples,
                                                              clean.batch(2).examples,
                                                              strict=True))
    assert shock.shock and flipped == 4
    assert [e.prompt for e in shock.examples] == [e.prompt for e in clean.batch(2).examples]


def test_completion_scoring_reads_the_first_word() -> None:
    held = [SentencePair("a .", "b .", 1), SentencePair("c .", "d .", 0)]
    task = PairTask(held, held, fmt="completion", seed=0)
    scores = task.classification_scores([" Yes.", " no, because"])
    assert task.score([" Yes.", " no, because"]).details == scores.to_dict()
    assert scores.accuracy == 1.0 and scores.f1 == 1.0 and scores.positive_label == "yes"


def test_pair_task_rules_in_scenarios() -> None:
    with pytest.raises(ConfigurationError, match="choose one of flipped-label"):
        load_scenario("mrpc-distilbert", ["shocks.kind=reversed"])
    with pytest.raises(ConfigurationError, match="does not apply to task 'pig-latin'"):
        load_scenario("pig-latin-shock", ["shocks.kind=flipped-label"])
    with pytest.raises(ConfigurationError, match="task.format = 'completion'"):
        load_scenario("mrpc-distilbert", ["backend.kind=tinker"])
    with pytest.raises(ConfigurationError, match="unknown key 'data'"):
        load_scenario("pig-latin-shock", ["data.format=completion"])
    with pytest.raises(ConfigurationError, match="unknown key 'task.format'"):
        load_scenario("pig-latin-shock", ["task.format=completion"])
    tinker = load_scenario("mrpc-tinker")
    assert tinker.task.kind == "mrpc" and tinker.task.format == "completion" and tinker.lag == 1
    ref = load_scenario("mrpc-distilbert")
    shape = (ref.backend.rank, ref.backend.lora_alpha, ref.batch_size, ref.steps)
    assert shape == (16, 32, 16, 688)
    assert ref.controller.preset == "reference" and ref.eval.size == 408


def test_a_paraphrase_scenario_builds_its_source_and_mrpc_needs_its_data(tmp_path: Path) -> None:
    scenario = load_scenario("mrpc-distilbert", ['task.kind="paraphrase"', "eval.size=30",
                                                 "task.train_size=100"])
    source = build_source(scenario)
    assert isinstance(source.task, PairTask)
    assert len(source.eval_examples(0)) == 30 and len(source.task.train) == 100
    missing = load_scenario("mrpc-distilbert", [f"task.path='{tmp_path / 'none'}'"])
    with pytest.raises(ConfigurationError, match="task.path"):
        build_source(missing)
    glue = load_scenario("mrpc-distilbert", [f"task.path='{_glue_dir(tmp_path)}'"])
    assert len(build_source(glue).eval_examples(0)) == 1


def test_each_task_declares_its_shock_kinds() -> None:
    from ulora_remote.scenarios.mrpc import PairsSection
    from ulora_remote.scenarios.pig_latin import PigLatinSection
    from ulora_remote.scenarios.shocks import SHOCK_KINDS

    assert PigLatinSection.shock_kinds == SHOCK_KINDS
    assert PairsSection.shock_kinds == ("flipped-label",)
    assert PigLatinSection().build(seed=0, eval_size=2).shock_kinds == SHOCK_KINDS
