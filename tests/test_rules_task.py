"""The rules task: several word rules as the tasks of one stream (the minimal multi-task
source): batches by step, balanced and tagged parts, held-out words never trained on."""

from __future__ import annotations

import pytest
from ulora_remote.scenarios import load_scenario, validate_scenario
from ulora_remote.scenarios.pig_latin import to_pig_latin
from ulora_remote.scenarios.rules import RulesTask

from ulora_remote.errors import ConfigurationError, InputError

PARTS = [("pig", "pig-latin"), ("rev", "reversed")]


def test_batches_are_a_function_of_the_step_and_interleave_the_parts() -> None:
    task = RulesTask(3, 64, PARTS)
    batch = task.train_batch(17, 8)
    assert batch == RulesTask(3, 64, PARTS).train_batch(17, 8)
    assert batch != RulesTask(4, 64, PARTS).train_batch(17, 8)
    assert [e.task for e in batch] == ["pig", "rev"] * 4
    for e in batch:
        word = e.prompt.removesuffix(" ->")
        rule = to_pig_latin if e.task == "pig" else (lambda w: w[::-1])
        assert e.completion == f" {rule(word)}"


def test_same_words_conflict_and_split_words_are_disjoint() -> None:
    same, split = RulesTask(0, 64, PARTS, "same"), RulesTask(0, 64, PARTS, "split")
    train = {t: set() for t in ("pig", "rev")}
    for step in range(600):
        for e in split.train_batch(step, 8):
            train[e.task].add(e.prompt)
    assert train["pig"] and train["rev"] and not train["pig"] & train["rev"]
    evals = same.eval_examples()
    assert [e.task for e in evals] == ["pig"] * 32 + ["rev"] * 32
    assert [e.prompt for e in evals[:32]] == [e.prompt for e in evals[32:]]  # one prompt, two
    assert evals[0].completion != evals[32].completion                      # targets
    split_evals = {e.prompt for e in split.eval_examples()}
    assert len(split_evals) == 64
    seen = {e.prompt for step in range(800) for e in same.train_batch(step, 8)}
    assert not seen & {e.prompt for e in evals} and not seen & split_evals


def test_shock_batches_corrupt_the_targets_and_keep_the_tags() -> None:
    task = RulesTask(0, 64, PARTS)
    clean, shocked = task.train_batch(5, 8), task.shock_batch(5, 8, "random-letters", 0.5)
    changed = [i for i, (a, b) in enumerate(zip(clean, shocked, strict=True)) if a != b]
    assert len(changed) == 4 and [e.task for e in shocked] == [e.task for e in clean]
    with pytest.raises(InputError, match="fraction"):
        task.shock_batch(5, 8, "reversed", 0.0)


def test_bad_parts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="two or more"):
        RulesTask(0, 64, [("pig", "pig-latin")])
    with pytest.raises(ConfigurationError, match="two or more"):
        RulesTask(0, 64, [("pig", "pig-latin"), ("pig", "reversed")])
    with pytest.raises(ConfigurationError, match="eval.size"):
        RulesTask(0, 1, PARTS)
    with pytest.raises(ConfigurationError, match="eval.size"):
        RulesTask(0, 502, PARTS, "split")
    base = {"name": "x", "steps": 10,
            "task": {"kind": "rules", "parts": [{"name": "a", "rule": "pig-latin"},
                                                {"name": "a", "rule": "reversed"}]}}
    with pytest.raises(ConfigurationError, match="repeat"):
        validate_scenario(base)


def test_the_shipped_multi_task_scenarios_load() -> None:
    conflict, helping = load_scenario("rules-conflict"), load_scenario("rules-help")
    assert conflict.adapters is not None and conflict.adapters.mode == "switch"
    assert [p.rule for p in conflict.task.parts] == ["pig-latin", "reversed"]  # type: ignore[union-attr]
    assert helping.task.words == "split"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="adapters.mode"):
        load_scenario("rules-conflict", ['adapters.mode="sideways"'])
