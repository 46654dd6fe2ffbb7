"""The run directory's file list in the docs matches what a real run leaves behind."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

REPO = Path(__file__).resolve().parent.parent
#: Written only by tasks that have scores beyond exact match (not plain Pig Latin).
ONLY_SOME_TASKS = {"eval_scores.jsonl"}


def _listing(text: str, heading: str) -> set[str]:
    """The names of an indented ``name   description`` block after ``heading``."""
    block = text[text.index(heading):]
    names = re.findall(r"^ {4}([\w.-]+/?) {2,}", block.split("\n\n", 2)[1], re.M)
    assert names, f"no listing after {heading!r}"
    return set(names)


def _table(text: str, heading: str) -> set[str]:
    block = text[text.index(heading):].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([\w.-]+/?)` \|", block, re.M))


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    from ulora_remote.run.api import run_scenario

    out = tmp_path_factory.mktemp("docs") / "run"
    run_scenario("pig-latin-shock", out=out, console=io.StringIO(), overrides=[
        "steps=4", "shocks.windows=[[2, 3]]", "eval.every=4", "eval.size=4", "eval.max_tokens=4",
        'backend.base_model="small"'])
    return {p.name + ("/" if p.is_dir() else "") for p in out.iterdir()}


@pytest.mark.parametrize(("doc", "heading", "read"), [
    ("docs/design.md", "## The run directory", _listing),
    ("ulora_remote/run/rundir.py", "Layout (", _listing),
    ("docs/running.md", "## What a run leaves behind", _table),
])
def test_the_documented_run_directory_is_a_real_runs(run_files: set[str], doc: str,
                                                     heading: str, read) -> None:  # type: ignore[no-untyped-def]
    listed = read((REPO / doc).read_text("utf-8"), heading)
    assert listed - ONLY_SOME_TASKS == run_files, f"{doc} lists {sorted(listed)}"
