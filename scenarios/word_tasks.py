"""The shipped example data set ``files/data/word-tasks.jsonl``: three word games, made in code.

Run ``python -m ulora_remote.scenarios.word_tasks`` to write the files again (the tests check
that the shipped files equal what this module makes). The words come from the shipped word list
(``words.txt``, taken from Debian's ``wamerican``: SCOWL word lists, whose copyright notice
grants use, modification and redistribution without fee); the data set is part of ulora-remote
and under its license (Apache-2.0).

Three tasks in both record shapes, all within the built-in models' vocabulary and close to
what their pre-training taught (``"stone <-"`` asks for a reversal, ``"stone =>"`` for a
rotation by one letter; see ``backends/local/builtin.py``), so that a LoRA learns them in a few
hundred steps on the medium model:

* ``reverse`` — chat: user ``"stone <-"``, assistant ``"enots"``; half of the records have a
  second turn (two assistant turns, both trained) and a third start with a system message;
* ``rotate`` — prompt/completion: ``{"prompt": "stone =>", "completion": " tones"}``;
* ``vowel`` — prompt/completion: ``{"prompt": "apple ?", "completion": " yes"}`` (does the word
  start with a vowel; half of the words do), scored by accuracy over the labels yes/no.

``word-tasks-noisy.jsonl`` holds bad records for ``shocks.source``: reversals that are not
reversed, rotations the wrong way round, and wrong yes/no answers.

(Measured while making it: a question inside a chat turn, ``"User: apple ?"``, stayed at chance
after 300 steps on the medium model where the plain ``"apple ?"`` reached 100%; the word's first
letter right after the BOS is what the tiny model finds easily.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ulora_remote.scenarios.pig_latin import load_words

__all__ = ["DATA_DIR", "noisy_records", "records", "write_files"]

DATA_DIR = Path(__file__).parent / "files" / "data"
_PER_TASK = 400
_NOISY_PER_TASK = 20
_SYSTEM = "one word"
_VOWELS = "aeiou"


def _vowel(word: str) -> str:
    return "yes" if word[0] in _VOWELS else "no"


def _reverse(words: list[str], system: bool, wrong: bool = False) -> dict[str, Any]:
    turns = [{"role": "system", "content": _SYSTEM}] if system else []
    for word in words:
        turns += [{"role": "user", "content": f"{word} <-"},
                  {"role": "assistant", "content": word if wrong else word[::-1]}]
    return {"messages": turns, "task": "reverse"}


def _rotate(word: str, wrong: bool = False) -> dict[str, Any]:
    answer = word[-1:] + word[:-1] if wrong else word[1:] + word[:1]
    return {"prompt": f"{word} =>", "completion": f" {answer}", "task": "rotate"}


def _vowel_record(word: str, wrong: bool = False) -> dict[str, Any]:
    answer = {"yes": "no", "no": "yes"}[_vowel(word)] if wrong else _vowel(word)
    return {"prompt": f"{word} ?", "completion": f" {answer}", "task": "vowel"}


def _words(rng: random.Random, count: int) -> tuple[list[str], list[str]]:
    """``2·count`` distinct words, and ``2·count`` others, half starting with a vowel, in
    pairs (one of each, in random order)."""
    words = [w for w in load_words() if len(w) <= 9]
    picked = rng.sample(words, 2 * count)
    rest = [w for w in words if w not in set(picked)]
    vowel = rng.sample([w for w in rest if w[0] in _VOWELS], count)
    other = rng.sample([w for w in rest if w[0] not in _VOWELS], count)
    return picked, [w for pair in zip(vowel, other, strict=True) for w in rng.sample(pair, 2)]


def records() -> list[dict[str, Any]]:
    """The clean records, tasks interleaved in a seeded order (a pure function)."""
    rng = random.Random("word-tasks")
    picked, balanced = _words(rng, _PER_TASK)
    out = []
    for i in range(_PER_TASK // 2):  # 200 records of reversals: one turn, or two
        words = picked[2 * i: 2 * i + 2] if i % 2 else picked[2 * i: 2 * i + 1]
        out.append(_reverse(words, system=rng.random() < 1 / 3))
    out += [_rotate(w) for w in picked[_PER_TASK:]]
    out += [_vowel_record(w) for w in balanced[:_PER_TASK]]
    rng.shuffle(out)
    return out


def noisy_records() -> list[dict[str, Any]]:
    """Bad records of each task, for ``shocks.source``."""
    rng = random.Random("word-tasks-noisy")
    picked, balanced = _words(rng, _NOISY_PER_TASK)
    out = [_reverse([w], system=False, wrong=True) for w in picked[:_NOISY_PER_TASK]]
    out += [_rotate(w, wrong=True) for w in picked[_NOISY_PER_TASK:]]
    out += [_vowel_record(w, wrong=True) for w in balanced[:_NOISY_PER_TASK]]
    return out


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_files(folder: Path = DATA_DIR) -> list[Path]:
    """Write ``word-tasks.jsonl`` and ``word-tasks-noisy.jsonl`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "word-tasks.jsonl", folder / "word-tasks-noisy.jsonl"]
    for path, rows in zip(paths, (records(), noisy_records()), strict=True):
        path.write_text(_jsonl(rows), encoding="utf-8")
    return paths


if __name__ == "__main__":
    for written in write_files():
        print(written)
