"""The Pig Latin task, the shock kinds and schedules, and the shipped scenario files."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest
from ulora_remote.scenarios import (
    EVAL_POOL_SIZE,
    SHOCK_KINDS,
    PigLatinTask,
    Schedule,
    corrupt_answer,
    list_scenarios,
    load_scenario,
    load_words,
    to_pig_latin,
)

from ulora_remote.errors import ConfigurationError, InputError

KNOWN_PAIRS = [
    ("pig", "igpay"),
    ("latin", "atinlay"),
    ("banana", "ananabay"),
    ("happy", "appyhay"),
    ("string", "ingstray"),
    ("glove", "oveglay"),
    ("eat", "eatway"),
    ("omelet", "omeletway"),
    ("under", "underway"),
    ("yellow", "ellowyay"),  # y is a consonant at the start
    ("rhythm", "ythmrhay"),  # ... and a vowel elsewhere
    ("my", "ymay"),
    ("queen", "eenquay"),  # qu stays together
    ("square", "aresquay"),
    ("shh", "shhay"),  # no vowel at all
]


@pytest.mark.parametrize(("word", "pig"), KNOWN_PAIRS)
def test_to_pig_latin_known_pairs(word: str, pig: str) -> None:
    assert to_pig_latin(word) == pig


@pytest.mark.parametrize("bad", ["", "Pig", "pig latin", "naïve", "pig1"])
def test_to_pig_latin_rejects_non_words(bad: str) -> None:
    with pytest.raises(InputError, match="lowercase letters"):
        to_pig_latin(bad)


def test_every_shipped_word_translates_to_a_rotation_plus_suffix() -> None:
    for word in load_words():
        pig = to_pig_latin(word)
        if word[0] in "aeiou":
            assert pig == word + "way"
        else:
            core = pig.removesuffix("ay")
            assert pig.endswith("ay") and len(core) == len(word) and core in word + word


def test_eval_split_is_pinned() -> None:
    # Golden values: changing the word list or the split silently changes every score, so a
    # change here must be deliberate (and noted in the changelog).
    task = PigLatinTask(0, 4)
    assert task.eval_words == ("prowling", "ionization", "blondes", "priest")
    assert len(task.train_words) == len(load_words()) - EVAL_POOL_SIZE == 3500


def test_word_list_is_large_clean_and_distinct() -> None:
    words = load_words()
    assert len(words) >= 2000
    assert len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in words)


def test_eval_words_never_appear_in_training_or_shock_batches() -> None:
    task = PigLatinTask(seed=3, eval_size=EVAL_POOL_SIZE)
    held_out = set(task.eval_words)
    assert len(held_out) == EVAL_POOL_SIZE
    assert held_out.isdisjoint(task.train_words)
    seen = set()
    # Two full epochs of training, plus shock batches with every kind: no held-out word, and no
    # held-out answer used as a swapped target.
    steps = 2 * len(task.train_words) // 64 + 1
    held_answers = {f" {to_pig_latin(w)}" for w in held_out}
    for step in range(steps):
        seen.update(e.prompt for e in task.train_batch(step, 64))
    for kind in SHOCK_KINDS:
        for step in range(0, steps, 7):
            for e in task.shock_batch(step, 64, kind):
                seen.add(e.prompt)
                assert e.completion not in held_answers
    assert {p.removesuffix(" ->") for p in seen} == set(task.train_words)


def test_eval_split_is_the_same_for_every_seed_and_prefix_of_the_pool() -> None:
    small, large, other_seed = PigLatinTask(0, 16), PigLatinTask(0, 64), PigLatinTask(9, 64)
    assert large.eval_words[:16] == small.eval_words
    assert other_seed.eval_examples() == large.eval_examples()
    example = large.eval_examples()[0]
    assert example.prompt == f"{large.eval_words[0]} ->"
    assert example.completion == f" {to_pig_latin(large.eval_words[0])}"


def test_train_batches_depend_only_on_seed_and_step() -> None:
    a, b, c = PigLatinTask(1, 8), PigLatinTask(1, 8), PigLatinTask(2, 8)
    # Out of order and repeated: a resumed run renders the same batch for the same step.
    assert [a.train_batch(s, 8) for s in (5, 0, 400)] == [b.train_batch(s, 8) for s in (5, 0, 400)]
    assert a.train_batch(5, 8) == a.train_batch(5, 8)
    assert a.train_batch(5, 8) != c.train_batch(5, 8)
    assert a.train_batch(5, 8) != a.train_batch(6, 8)


def test_an_epoch_visits_every_training_word_once() -> None:
    task = PigLatinTask(0, 8)
    n = len(task.train_words)
    words = [e.prompt for step in range(n // 10) for e in task.train_batch(step, 10)]
    assert len(set(words)) == len(words) == n - n % 10


def test_batches_are_the_same_in_a_fresh_process() -> None:
    code = (
        "from ulora_remote.scenarios import PigLatinTask as T; t = T(4, 8); "
        "print(repr(t.train_batch(77, 4) + t.shock_batch(77, 4, 'random-letters', 0.5)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    task = PigLatinTask(4, 8)
    assert out == repr(task.train_batch(77, 4) + task.shock_batch(77, 4, "random-letters", 0.5))


@pytest.mark.parametrize("kind", SHOCK_KINDS)
def test_shock_batches_are_deterministic_and_corrupt_every_target(kind: str) -> None:
    task = PigLatinTask(0, 8)
    clean = task.train_batch(12, 8)
    shocked = task.shock_batch(12, 8, kind)
    assert shocked == PigLatinTask(0, 8).shock_batch(12, 8, kind)
    assert [e.prompt for e in shocked] == [e.prompt for e in clean]
    for good, bad in zip(clean, shocked, strict=True):
        assert bad.completion.startswith(" ") and bad.completion != good.completion


def test_shock_kinds_do_what_they_say() -> None:
    task = PigLatinTask(0, 8)
    answers = {to_pig_latin(w) for w in task.train_words}
    for e in task.shock_batch(3, 8, "reversed"):
        assert e.completion == " " + e.prompt.removesuffix(" ->")[::-1]
    for e in task.shock_batch(3, 8, "swapped-answer"):
        assert e.completion[1:] in answers
    for clean, e in zip(
        task.train_batch(3, 8), task.shock_batch(3, 8, "random-letters"), strict=True
    ):
        assert re.fullmatch(r" [a-z]+", e.completion)
        assert abs(len(e.completion) - len(clean.completion)) <= 1


def test_fraction_corrupts_a_share_of_the_batch() -> None:
    task = PigLatinTask(0, 8)
    clean = task.train_batch(40, 8)
    for fraction, expected in [(0.25, 2), (0.5, 4), (0.01, 1), (1.0, 8)]:
        shocked = task.shock_batch(40, 8, "reversed", fraction)
        assert sum(a != b for a, b in zip(clean, shocked, strict=True)) == expected
    with pytest.raises(InputError, match="fraction"):
        task.shock_batch(40, 8, "reversed", 0.0)
    with pytest.raises(ConfigurationError, match="unknown shock kind"):
        task.shock_batch(40, 8, "noise")


def test_swapped_answer_needs_another_word() -> None:
    with pytest.raises(InputError, match="donor"):
        corrupt_answer("swapped-answer", "pig", "igpay", random.Random(0), [("pig", "igpay")])


def test_schedule_marks_exactly_the_window_steps() -> None:
    schedule = Schedule([[500, 600], (200, 300)])
    assert schedule.windows == ((200, 300), (500, 600))
    flagged = [s for s in range(700) if schedule.is_shock(s)]
    assert flagged == list(range(200, 300)) + list(range(500, 600))
    assert schedule.window_index(250) == 0 and schedule.window_index(599) == 1
    assert schedule.window_index(300) is None and not Schedule().is_shock(0)


@pytest.mark.parametrize(
    ("windows", "message"),
    [([[5, 5]], "start < end"), ([[0, 10], [9, 20]], "overlap"), ([[1, 2, 3]], "pair")],
)
def test_schedule_rejects_bad_windows(windows: list[list[int]], message: str) -> None:
    with pytest.raises(InputError, match=message):
        Schedule(windows)


def test_shipped_scenarios_load_and_match_the_seeds_schedules() -> None:
    names = dict(list_scenarios())
    assert set(names) == {
        "pig-latin-shock",
        "pig-latin-v2",
        "pig-latin-readme",
        "pig-latin-zskip",
        "llama32-1b-tinker",
        "mrpc-distilbert",
        "mrpc-tinker",
        # the guard's shock suite (docs/design.md, "Guards")
        "guard-clean",
        "guard-letters",
        "guard-swapped",
        "guard-partial-10",
        "guard-partial-25",
        "guard-partial-50",
        "guard-persistent-15",
        "guard-shift",
        "word-tasks",
        # per-task adapters (docs/design.md, "Per-task adapters")
        "rules-conflict",
        "rules-help",
        # the guard's shock suite on a real model, late and early, and word-tasks on it
        "smollm2-clean",
        "smollm2-persistent-15",
        "smollm2-late-letters",
        "smollm2-late-swapped-25",
        "smollm2-late-shift",
        "smollm2-early-letters",
        "smollm2-early-swapped-25",
        "smollm2-early-shift",
        "smollm2-word-tasks",
    }
    assert all(names.values())
    real = [load_scenario(n) for n in names if n.startswith("smollm2-")]
    assert all(s.backend.base_model == "smollm2-135m" for s in real)
    assert all(s.task.system == "Pig Latin." for s in real if s.task.kind == "pig-latin")
    suite = [load_scenario(n) for n in names if n.startswith("guard-")]
    assert all(s.eval.size >= 250 and s.controller.method == "guarded" for s in suite)
    assert {s.shocks.fraction for s in suite if s.shocks} == {1.0, 0.1, 0.25, 0.5, 0.15}
    shift = load_scenario("guard-shift").shift
    assert shift is not None and (shift.rule, shift.start) == ("reversed", 250)
    default = load_scenario("pig-latin-shock")
    assert (default.steps, default.backend.kind, default.backend.base_model) == (
        700,
        "local",
        "medium",
    )
    assert default.schedule.windows == ((200, 300), (500, 600)) and default.lag == 0
    assert (default.controller.preset, default.eval.every, default.eval.size) == ("tinker", 25, 64)
    v2 = load_scenario("pig-latin-v2")
    assert (v2.steps, v2.schedule.windows) == (1000, ((150, 250), (400, 500)))
    assert v2.controller.controller_config().cooldown == 30
    readme = load_scenario("pig-latin-readme")
    assert (readme.steps, readme.schedule.windows) == (700, ((300, 500),))
    llama = load_scenario("llama32-1b-tinker")
    assert (llama.backend.kind, llama.backend.base_model, llama.backend.rank) == (
        "tinker",
        "meta-llama/Llama-3.2-1B",
        32,
    )
    assert (llama.lag, llama.batch_size, llama.schedule.windows) == (1, 8, ((200, 300), (500, 600)))
