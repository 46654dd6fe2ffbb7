"""Multi-task streams, scorers and shocks on data files (pure Python, no torch): per-task batch
shares over 1,000 steps, determinism by seed, per-task scores, every generic corruption, shocks
from a file, and the scenario keys that configure them."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from ulora_remote.scenarios import load_scenario
from ulora_remote.scenarios.corruption import AnswerPool, corrupt_example, derangement
from ulora_remote.scenarios.mixing import MixTask
from ulora_remote.scenarios.pig_latin import PigLatinTask
from ulora_remote.scenarios.records import read_shock_records
from ulora_remote.scenarios.scorers import LabelsScorer, RegexScorer
from ulora_remote.scenarios.shocks import Schedule, ShockStream

from ulora_remote.backend import Example, Message
from ulora_remote.chat import chat_example
from ulora_remote.errors import ConfigurationError
from ulora_remote.run.builders import build_source


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def labelled(n: int, task: str) -> list[dict[str, object]]:
    """Records of a yes/no task: "w{i} ?" -> " yes" for even i."""
    return [{"prompt": f"{task} w{i} ?", "completion": " yes" if i % 2 == 0 else " no",
             "task": task} for i in range(n)]


def conversations(n: int, task: str) -> list[dict[str, object]]:
    return [{"messages": [{"role": "user", "content": f"r{i} <-"},
                          {"role": "assistant", "content": f"{i}r"[::-1] + "x"},
                          {"role": "user", "content": f"s{i} <-"},
                          {"role": "assistant", "content": f"{i}s"}], "task": task}
            for i in range(n)]


def scenario_file(tmp_path: Path, task: str, shocks: str = "", steps: int = 50) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "t"\nsteps = {steps}\nbatch_size = 8\n{task}\n{shocks}\n'
                    '[eval]\nsize = 16\n[backend]\nbase_model = "small"\n', encoding="utf-8")
    return path


@pytest.fixture
def three_tasks(tmp_path: Path) -> Path:
    rows = labelled(80, "yesno") + conversations(60, "chat")
    rows += [{"prompt": f"{i}+1=", "completion": f" {i + 1}", "task": "sum"} for i in range(80)]
    random.Random(0).shuffle(rows)
    write(tmp_path / "data.jsonl", rows)
    return scenario_file(tmp_path, '[task]\nkind = "jsonl"\ntrain = "data.jsonl"\n'
                         '[task.weights]\nyesno = 0.7\nchat = 0.2\nsum = 0.1\n'
                         '[task.scorers.yesno]\nkind = "labels"\nlabels = ["yes", "no"]\n'
                         '[task.scorers.sum]\nkind = "regex"\npattern = "-?[0-9]+"')


def test_per_task_shares_hold_over_1000_steps_and_are_fixed_by_the_seed(three_tasks):
    scenario = load_scenario(three_tasks)
    task = build_source(scenario).task
    assert isinstance(task, MixTask)
    counts = Counter(e.task for step in range(1000) for e in task.train_batch(step, 8))
    shares = {name: counts[name] / 8000 for name in ("yesno", "chat", "sum")}
    # systematic sampling: the standard deviation of a share is at most 1/(2·8·√1000) = 0.002
    assert shares == pytest.approx({"yesno": 0.7, "chat": 0.2, "sum": 0.1}, abs=0.01)
    assert all(sum(task.counts(step, 8).values()) == 8 for step in range(50))
    again = build_source(scenario).task
    assert [task.train_batch(s, 8) for s in range(20)] == [again.train_batch(s, 8)
                                                           for s in range(20)]
    other = build_source(scenario.model_copy(update={"seed": 1})).task
    assert [task.composition(s, 8) for s in range(20)] != [other.composition(s, 8)
                                                           for s in range(20)]


def test_weights_default_to_the_share_of_training_records(tmp_path):
    write(tmp_path / "d.jsonl", labelled(90, "a") + labelled(30, "b"))
    scenario = load_scenario(scenario_file(tmp_path, '[task]\nkind = "jsonl"\ntrain = "d.jsonl"'))
    task = build_source(scenario).task
    assert isinstance(task, MixTask)
    assert task.weights["a"] == pytest.approx(0.75, abs=0.02)


def test_evaluation_is_reported_per_task_with_each_tasks_scorer(three_tasks):
    task = build_source(load_scenario(three_tasks)).task
    examples = task.eval_examples()
    outputs = [e.completion for e in examples]  # a perfect model...
    first_sum = next(i for i, e in enumerate(examples) if e.task == "sum")
    outputs[first_sum] = f"{outputs[first_sum].strip()} then more"  # regex still extracts it
    scores = task.score(outputs)
    tasks = scores.details["tasks"]
    assert set(tasks) == {"yesno", "chat", "sum"}
    assert tasks["yesno"]["score"] == 1.0 and tasks["yesno"]["scorer"] == "labels"
    assert tasks["chat"] == {"exact_match": 1.0}
    assert tasks["sum"]["score"] == 1.0 and tasks["sum"]["exact_match"] < 1.0
    assert scores.exact_match == pytest.approx(1 - 1 / len(examples))


def test_scorers_extract_and_map_labels():
    regex = RegexScorer(r"answer: *(\d+)")
    got = regex.score(["answer: 42.", "no idea", "answer:7"], [" answer: 42", "answer: 3",
                                                               "answer: 8"])
    assert (got["score"], got["unmatched"]) == (pytest.approx(1 / 3), 1)
    assert "has no match" in regex.check_reference("42")
    labels = LabelsScorer(["yes", "no", "not sure"])
    assert [labels.predict(o) for o in ["Yes.", " no", "not sure!", "nothing", "yesno"]] == [
        "yes", "no", "not sure", None, None]
    got = labels.score(["yes", "no", "maybe", "no"], ["yes", "yes", "no", "no"])
    assert got["score"] == 0.5 and got["invalid"] == 1 and got["majority_accuracy"] == 0.5
    assert "not one of the scorer's labels" in labels.check_reference("perhaps")


def test_a_reference_the_scorer_cannot_score_is_named(tmp_path):
    write(tmp_path / "d.jsonl", labelled(20, "a")[:19] + [
        {"prompt": "x", "completion": " maybe", "task": "a"}])
    scenario = load_scenario(scenario_file(
        tmp_path, '[task]\nkind = "jsonl"\ntrain = "d.jsonl"\n'
                  '[task.scorer]\nkind = "labels"\nlabels = ["yes", "no"]'))
    with pytest.raises(ConfigurationError, match=r"d.jsonl line 20: the reference 'maybe' is "
                                                 "not one of the scorer's labels"):
        build_source(scenario)


POOL = AnswerPool(alphabet="abc", answers=(" yes", " no", " cat"),
                  label_map={"yes": "no", "no": "yes"})


def test_generic_corruptions_change_only_the_targets():
    rng = random.Random(0)
    plain = Example("w ?", " yes")
    noisy = corrupt_example(plain, "random-chars", rng, POOL)
    assert noisy.prompt == plain.prompt and len(noisy.completion) == 4
    assert noisy.completion[0] == " " and set(noisy.completion[1:]) <= set("abc")
    assert corrupt_example(plain, "swapped-answer", rng, POOL).completion in (" no", " cat")
    assert corrupt_example(plain, "shuffled-labels", rng, POOL).completion == " no"
    talk = chat_example([Message("system", "s"), Message("user", "q1"),
                         Message("assistant", "yes"), Message("user", "q2"),
                         Message("assistant", "no")], task="t")
    bad = corrupt_example(talk, "shuffled-labels", rng, POOL)
    assert [m.content for m in bad.messages] == ["s", "q1", "no", "q2", "yes"]
    assert bad.completion == "yes" and bad.task == "t" and bad.prompt.endswith("Assistant:")
    rand = corrupt_example(talk, "random-chars", rng, POOL)
    assert [m.content for m in rand.messages][:2] == ["s", "q1"]
    assert all(set(m.content) <= set("abc") for m in rand.messages if m.role == "assistant")
    with pytest.raises(ConfigurationError, match="does not apply to this data"):
        corrupt_example(plain, "shuffled-labels", rng, AnswerPool("abc", (" a", " b")))


def test_a_derangement_moves_every_label():
    for seed in range(20):
        mapping = derangement(["a", "b", "c"], random.Random(seed))
        assert sorted(mapping.values()) == ["a", "b", "c"]
        assert all(k != v for k, v in mapping.items())


def _inputs(example: Example) -> object:
    """What a corruption must leave alone: the prompt, or every turn but the assistant's."""
    if not example.messages:
        return example.prompt
    return [m for m in example.messages if m.role != "assistant"]


@pytest.mark.parametrize("kind", ["random-chars", "swapped-answer", "shuffled-labels"])
def test_shock_batches_corrupt_the_configured_fraction_in_every_task(three_tasks, kind):
    with_labels = three_tasks.read_text().replace(
        '[task.scorers.sum]\nkind = "regex"\npattern = "-?[0-9]+"',
        '[task.scorer]\nkind = "labels"\nlabels = ["yes", "no"]')
    if kind == "shuffled-labels":  # needs every task scored by labels
        rows = labelled(80, "yesno") + labelled(40, "other")
        write(three_tasks.parent / "data.jsonl", rows)
        three_tasks.write_text(with_labels.replace("chat = 0.2\nsum = 0.1", "other = 0.3"))
    shocks = f'[shocks]\nkind = "{kind}"\nwindows = [[10, 20]]\nfraction = 0.5'
    three_tasks.write_text(three_tasks.read_text() + "\n" + shocks)
    source = build_source(load_scenario(three_tasks))
    for step in range(10, 20):
        clean = source.task.train_batch(step, 8)
        batch = source.batch(step)
        assert batch.shock and [e.task for e in batch.examples] == [e.task for e in clean]
        assert [_inputs(e) for e in batch.examples] == [_inputs(e) for e in clean]
        changed = sum(a != b for a, b in zip(batch.examples, clean, strict=True))
        assert 1 <= changed <= 4  # round(0.5·8) = 4 slots hit; a corruption may equal the truth
    assert source.batch(9) == source.batch(9) and not source.batch(9).shock


def test_shocks_from_a_file_apply_to_any_task_and_keep_task_names(three_tasks, tmp_path):
    noisy = write(tmp_path / "noisy.jsonl", [
        {"prompt": "yesno w0 ?", "completion": " no", "task": "yesno"},
        {"prompt": "junk", "completion": " junk"}])
    text = three_tasks.read_text() + ('\n[shocks]\nsource = "noisy.jsonl"\n'
                                      'windows = [[5, 15]]\nfraction = 0.25')
    three_tasks.write_text(text)
    scenario = load_scenario(three_tasks)
    assert scenario.shocks.kind == "from-file" and scenario.shocks.source == str(noisy)
    source = build_source(scenario)
    batch = source.batch(7).examples
    bad = [e for e in batch if e.prompt in ("yesno w0 ?", "junk")]
    assert len(bad) == 2  # round(0.25·8)
    assert all(e.task for e in batch)  # an untagged record takes the replaced example's task
    assert [r.where for r in source.records()][-2:] == [f"{noisy} line 1", f"{noisy} line 2"]
    pig = ShockStream(PigLatinTask(0, 8), batch_size=4, schedule=Schedule([(0, 2)]),
                      kind="from-file", noisy=read_shock_records(noisy)[1:])
    assert sum(e.prompt == "junk" for e in pig.batch(0).examples) == 4
    tagged = read_shock_records(noisy)[:1]
    with pytest.raises(ConfigurationError, match="line 1: task 'yesno' is not a task of this"):
        ShockStream(PigLatinTask(0, 8), batch_size=4, kind="from-file", noisy=tagged)


@pytest.mark.parametrize(("shocks", "message"), [
    ('kind = "from-file"', 'takes its records from shocks.source'),
    ('kind = "random-chars"\nsource = "n.jsonl"', "remove one, or set shocks.kind"),
    ('kind = "reversed"', "does not apply to task 'jsonl'; choose one of random-chars"),
])
def test_shock_settings_are_checked(tmp_path, shocks, message):
    write(tmp_path / "d.jsonl", labelled(10, "a"))
    path = scenario_file(tmp_path, '[task]\nkind = "jsonl"\ntrain = "d.jsonl"',
                         f"[shocks]\n{shocks}\nwindows = [[1, 2]]")
    with pytest.raises(ConfigurationError, match=message):
        load_scenario(path)


def test_a_mix_of_any_tasks(tmp_path):
    write(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(40)])
    path = scenario_file(tmp_path, '[task]\nkind = "mix"\n[task.parts.pig]\nkind = "pig-latin"\n'
                         '[task.parts.mine]\nkind = "jsonl"\ntrain = "d.jsonl"\n'
                         '[task.weights]\npig = 1\nmine = 0', '[shocks]\nkind = "swapped-answer"')
    scenario = load_scenario(path)
    task = build_source(scenario).task
    assert {e.task for s in range(30) for e in task.train_batch(s, 8)} == {"pig"}  # weight 0
    assert {e.task for e in task.eval_examples()} == {"pig", "mine"}  # ...still evaluated
    assert scenario.task.max_eval_size == 500  # Pig Latin's bound
    bad = path.read_text().replace("pig = 1\nmine = 0", "pig = 1")
    path.write_text(bad)
    with pytest.raises(ConfigurationError, match=r"task.weights names \['pig'\] but the parts"):
        load_scenario(path)


def test_tasks_weights_and_task_fields_must_agree(tmp_path):
    write(tmp_path / "d.jsonl", labelled(10, "a") + [{"prompt": "x", "completion": " y"}])
    path = scenario_file(tmp_path, '[task]\nkind = "jsonl"\ntrain = "d.jsonl"')
    with pytest.raises(Exception, match="d.jsonl line 11: the record has no task field"):
        build_source(load_scenario(path))
    write(tmp_path / "d.jsonl", labelled(10, "a") + labelled(10, "b"))
    path.write_text(path.read_text().replace('train = "d.jsonl"',
                                             'train = "d.jsonl"\nweights = {a = 1.0}'))
    with pytest.raises(ConfigurationError, match=r"gives no weight to \['b'\]"):
        build_source(load_scenario(path))
