"""Reading JSONL data files: both record shapes, every bad input named by file and line, the
seeded split (no evaluation record in training) and the leak warning. Pure Python, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ulora_remote.scenarios.jsonl import JsonlSection, JsonlTask
from ulora_remote.scenarios.records import (
    count_leaks,
    read_jsonl,
    record_key,
    split_records,
)
from ulora_remote.scenarios.scorers import ExactMatchScorer

from ulora_remote.backend import Message
from ulora_remote.chat import chat_example
from ulora_remote.errors import ConfigurationError, InputError


def write(path: Path, *lines: object) -> Path:
    """Each line: a dict (dumped as JSON) or a str (written as it is)."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n"
                            for x in lines), encoding="utf-8")
    return path


def chat(*turns: tuple[str, str], **extra: object) -> dict[str, object]:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def test_both_record_shapes_become_examples(tmp_path):
    f = write(tmp_path / "d.jsonl",
              {"prompt": "2+2=", "completion": " 4", "id": 7},
              "",
              chat(("system", "be brief"), ("user", "hi"), ("assistant", "hello"),
                   ("user", "bye?"), ("assistant", "bye"), task="talk"))
    plain, conversation = read_jsonl(f, key="task.train")
    assert (plain.line, conversation.line) == (1, 3)  # blank lines count, and are skipped
    assert plain.example.prompt == "2+2=" and plain.example.completion == " 4"
    assert plain.example.messages == () and plain.example.task == ""
    ex = conversation.example
    assert ex.task == "talk" and ex.completion == "bye"
    assert ex.messages[1] == Message("user", "hi")
    assert ex.prompt == ("System: be brief\nUser: hi\nAssistant: hello\nUser: bye?\n"
                         "Assistant:")
    assert conversation.where == f"{f} line 3"


def test_a_byte_order_mark_and_crlf_line_ends_are_read(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": " b"}\r\n'
                  b'{"prompt": "c", "completion": " d"}\r\n')
    assert [r.example.completion for r in read_jsonl(f, key="k")] == [" b", " d"]


BAD_LINES = [
    ('{"prompt": "a", "completion": " b"', "line 2: not valid JSON"),
    ('["a", "b"]', "line 2: a record must be a JSON object, not list"),
    ('{"prompt": "a"}', "line 2: the record has no completion"),
    ('{"completion": "a"}', "line 2: the record has no prompt"),
    ('{"prompt": 3, "completion": " b"}', "line 2: prompt is int (3); it must be a string"),
    ('{"prompt": "a", "completion": "  "}', "line 2: the completion is empty"),
    ('{"prompt": "a", "completion": " b", "task": "no spaces"}', "line 2: task = \"no spaces\""),
    ('{"messages": []}', "line 2: messages must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}', "line 2: message 0 must be an object with role and"),
    ('{"messages": [{"role": "user", "content": 5}]}', "message 0 has a content of type int"),
    ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "line 2: message 0 has the role 'robot'; use one of system, user, assistant"),
    ('{"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "x"}]}',
     "line 2: the last message is the user's; a conversation must end with an assistant"),
    ('{"messages": [{"role": "user", "content": "x"}], "prompt": "p"}',
     "line 2: the record has both messages and prompt/completion"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_a_bad_line_is_named_with_its_file_and_line(tmp_path, line, message):
    f = write(tmp_path / "d.jsonl", {"prompt": "ok", "completion": " fine"}, line)
    with pytest.raises(InputError, match="d.jsonl line 2") as info:
        read_jsonl(f, key="task.train")
    assert message in str(info.value)


def test_empty_missing_and_non_utf8_files_are_refused(tmp_path):
    empty = write(tmp_path / "empty.jsonl", "", "  ")
    with pytest.raises(InputError, match="empty.jsonl holds no records"):
        read_jsonl(empty, key="task.train")
    with pytest.raises(ConfigurationError, match="task.eval = .*cannot read the data file"):
        read_jsonl(tmp_path / "missing.jsonl", key="task.eval")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "ok", "completion": " a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(InputError, match="latin.jsonl line 2: not UTF-8"):
        read_jsonl(latin, key="task.train")


def _records(tmp_path: Path, n: int, duplicate_every: int = 0) -> list:
    lines = [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(n)]
    if duplicate_every:
        lines += [lines[i] for i in range(0, n, duplicate_every)]
    return read_jsonl(write(tmp_path / "all.jsonl", *lines), key="task.train")


def test_the_split_is_seeded_by_content_and_never_leaks(tmp_path):
    records = _records(tmp_path, 200, duplicate_every=7)  # 29 lines appear twice
    train, evals = split_records(records, 0.1, seed=0)
    assert len({record_key(r.example) for r in evals}) == 20  # 10% of 200 distinct
    assert count_leaks(train, evals) == 0
    assert len(train) + len(evals) == len(records)
    assert [r.line for r in train] == sorted(r.line for r in train)  # file order kept
    again = split_records(list(reversed(records)), 0.1, seed=0)[1]
    assert {r.line for r in again} == {r.line for r in evals}  # not the order: the content
    other = split_records(records, 0.1, seed=1)[1]
    assert {r.line for r in other} != {r.line for r in evals}
    with pytest.raises(InputError, match="at least two"):
        split_records(records[:1], 0.5, seed=0)


def test_given_eval_records_that_occur_in_training_are_warned_about(tmp_path):
    write(tmp_path / "train.jsonl", *[{"prompt": f"q{i}", "completion": f" a{i}"}
                                      for i in range(10)])
    write(tmp_path / "eval.jsonl", {"prompt": "q1", "completion": " a1"},
          {"prompt": "q3", "completion": " a3"}, {"prompt": "new", "completion": " x"})
    section = JsonlSection.model_validate(
        {"kind": "jsonl", "train": "train.jsonl", "eval": "eval.jsonl"},
        context={"base_dir": tmp_path})
    with pytest.warns(UserWarning, match="2 of the 3 evaluation records of .*eval.jsonl also "
                                         "occur in .*train.jsonl"):
        task = section.build(seed=0, eval_size=10)
    assert len(task.eval_examples()) == 3


def test_relative_paths_resolve_against_the_scenario_folder(tmp_path):
    section = JsonlSection.model_validate({"kind": "jsonl", "train": "data/t.jsonl"},
                                          context={"base_dir": tmp_path})
    assert section.train == str(tmp_path / "data" / "t.jsonl")
    dumped = JsonlSection.model_validate(section.model_dump())  # config.json validates again
    assert dumped.train == section.train
    with pytest.raises(ValueError, match="eval_fraction splits task.train"):
        JsonlSection.model_validate({"kind": "jsonl", "train": "t", "eval": "e",
                                     "eval_fraction": 0.2})


def test_a_task_walks_its_records_deterministically_and_never_trains_on_eval(tmp_path):
    records = _records(tmp_path, 60)
    train, evals = split_records(records, 0.2, seed=0)
    task = JsonlTask(train, evals, name="", scorer=ExactMatchScorer(), seed=3, eval_size=100)
    held = {record_key(e) for e in task.eval_examples()}
    seen = [e for step in range(30) for e in task.train_batch(step, 8)]
    assert not held & {record_key(e) for e in seen}
    assert {record_key(e) for e in seen[:48]} == {record_key(r.example) for r in train}  # 1 epoch
    again = JsonlTask(train, evals, name="", scorer=ExactMatchScorer(), seed=3, eval_size=100)
    assert again.train_batch(17, 8) == task.train_batch(17, 8)
    other = JsonlTask(train, evals, name="", scorer=ExactMatchScorer(), seed=4, eval_size=100)
    assert other.train_batch(0, 8) != task.train_batch(0, 8)
    assert len(JsonlTask(train, evals, name="", scorer=ExactMatchScorer(), seed=3,
                         eval_size=5).eval_examples()) == 5


def test_chat_example_refuses_what_cannot_be_evaluated():
    with pytest.raises(InputError, match="the last assistant message is empty"):
        chat_example([Message("user", "x"), Message("assistant", " ")])
    with pytest.raises(InputError, match="has no messages"):
        chat_example([])


def test_the_example_file_in_the_docs_reads(tmp_path):
    docs = Path(__file__).parents[1] / "docs" / "your-data.md"
    block = docs.read_text().split("```jsonl\n", 1)[1].split("```", 1)[0]
    assert block.count("\n") == 5
    records = read_jsonl(write(tmp_path / "docs.jsonl", block.rstrip("\n")), key="task.train")
    assert [r.example.task for r in records] == ["rotate", "vowel", "reverse", "reverse",
                                                 "rotate"]
    assert [m.role for m in records[3].example.messages] == [
        "system", "user", "assistant", "user", "assistant"]
