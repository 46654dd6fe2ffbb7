"""docs/extending.md's three recipes (a guard, a task, a backend), followed in a temporary copy of
the package and run; and a copy of a checkout that would mix two source trees stops clearly.

The copy has the layout of an installed wheel (``ulora_remote/backends``, ``ulora_remote/scenarios``
inside ``ulora_remote/``) and runs through ``PYTHONPATH``, so the edits touch nothing here. Each
recipe edits exactly the files the document names; the guard's section is the document's own
code block.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "extending.md").read_text("utf-8")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

MY_GUARD = '''
from typing import Any

from ulora_remote.control.guard import Verdict, example_losses


class MyGuard:
    """Keeps the examples whose loss is below ``threshold`` nats per token."""

    def __init__(self, *, threshold: float) -> None:
        self.threshold, self.rejected = threshold, 0

    def judge(self, step, screened, tasks=None):
        keep = tuple(x < self.threshold for x in example_losses(screened))
        self.rejected += keep.count(False)
        return Verdict(keep=keep)

    def state_dict(self) -> dict[str, Any]:
        return {"rejected": self.rejected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rejected = int(state["rejected"])
'''

MY_TASK = '''
import random
from typing import ClassVar, Literal

from pydantic import BaseModel

from ulora_remote.backend import Example
from ulora_remote.scenarios.pig_latin import load_words
from ulora_remote.sections import STRICT
from ulora_remote.task import Scores, exact_match


class MyTask:
    """Word -> the word in capitals; 16 held-out words."""

    shock_kinds = ("random-letters",)

    def __init__(self, seed: int, eval_size: int) -> None:
        words = load_words()
        self.seed, self.train, self.held = seed, words[16:], words[:min(eval_size, 16)]

    def train_batch(self, step: int, size: int) -> list[Example]:
        rng = random.Random(f"my-task:{self.seed}:step:{step}")
        return [Example(f"{w} ->", f" {w.upper()}") for w in rng.sample(self.train, size)]

    def shock_batch(self, step: int, size: int, kind: str, fraction: float) -> list[Example]:
        batch = self.train_batch(step, size)
        rng = random.Random(f"my-task:{self.seed}:shock:{step}")
        for i in sorted(rng.sample(range(size), max(1, round(fraction * size)))):
            batch[i] = Example(batch[i].prompt, " " + "".join(rng.choices("xyzq", k=5)))
        return batch

    def eval_examples(self) -> list[Example]:
        return [Example(f"{w} ->", f" {w.upper()}") for w in self.held]

    def score(self, outputs) -> Scores:
        return Scores(exact_match=exact_match(outputs, self.eval_examples()))


'''

MY_BACKEND = '''
from ulora_remote.delegate import DelegatingBackend


class MyBackend(DelegatingBackend):
    """The local backend behind a wrapper: a backend of its own kind."""
'''

MY_BACKEND_SECTION = '''

class MyBackendSection(BaseModel):
    """``kind = "my-backend"``."""

    model_config = STRICT
    kind: Literal["my-backend"]
    base_model: str = "small"
    rank: int = 4
    default_lag: ClassVar[int] = 1

    @property
    def tokenizer_dir(self) -> str | None:
        return None

    def check_model(self, *, classifier: bool) -> None:
        if classifier:
            raise ValueError("my-backend trains causal LMs only")

    def build(self, *, seed: int, checkpoint_dir: Path,
              classifier: bool = False) -> TrainingBackend:
        from ulora_remote.backends.local import LocalBackend
        from ulora_remote.backends.my_backend import MyBackend

        return MyBackend(LocalBackend(self.base_model, rank=self.rank, seed=seed,
                                      checkpoint_dir=checkpoint_dir, threads=1))

'''


def _doc_block(after: str) -> str:
    """The first ```python block of docs/extending.md after the text ``after``, dedented."""
    start = DOC.index(after)
    match = re.search(r"```python\n(.*?)```", DOC[start:], re.S)
    assert match is not None, f"no code block after {after!r} in docs/extending.md"
    return textwrap.dedent(match.group(1))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert text.count(old) == 1, f"{path.name}: the recipe's anchor {old!r} is not there once"
    path.write_text(text.replace(old, new), "utf-8")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package with the three recipes applied."""
    root = tmp_path_factory.mktemp("pkg")
    pkg = root / "ulora_remote"
    shutil.copytree(REPO / "ulora_remote", pkg, ignore=IGNORE)
    shutil.copytree(REPO / "backends", pkg / "backends", ignore=IGNORE)
    shutil.copytree(REPO / "scenarios", pkg / "scenarios", ignore=IGNORE)

    # A guard: 1. its module; 2. its section and union member in control/sections.py (the
    # document's block, in place of the union it extends).
    (pkg / "control" / "my_guard.py").write_text(MY_GUARD, "utf-8")
    sections = pkg / "control" / "sections.py"
    block = _doc_block("2. `ulora_remote/control/sections.py`")
    union = re.search(r"^GuardSection = Annotated\[.*?\]\n", sections.read_text("utf-8"),
                      re.S | re.M)
    assert union is not None
    _edit(sections, union.group(0), block)
    _edit(sections, "from ulora_remote.control.guard import ",
          "from ulora_remote.control.my_guard import MyGuard\n"
          "from ulora_remote.control.guard import ")

    # A task: 1. scenarios/my_task.py, its class and the document's section; 2. the one list.
    section = _doc_block("1. `scenarios/my_task.py`")
    (pkg / "scenarios" / "my_task.py").write_text(MY_TASK + section, "utf-8")
    catalog = pkg / "scenarios" / "catalog.py"
    _edit(catalog, "PlainTaskSection: TypeAlias = PigLatinSection | PairsSection | JsonlSection",
          "PlainTaskSection: TypeAlias = PigLatinSection | PairsSection | JsonlSection"
          " | MyTaskSection")
    _edit(catalog, "from ulora_remote.scenarios.jsonl import JsonlSection\n",
          "from ulora_remote.scenarios.jsonl import JsonlSection\n"
          "from ulora_remote.scenarios.my_task import MyTaskSection\n")

    # A backend: 1. its package; 2. its section and member of the one list. (3., pyproject's
    # packages, is for a checkout: this copy is laid out as installed.)
    (pkg / "backends" / "my_backend").mkdir()
    (pkg / "backends" / "my_backend" / "__init__.py").write_text(MY_BACKEND, "utf-8")
    backend_sections = pkg / "backends" / "sections.py"
    kinds = "AnyBackendSection: TypeAlias = LocalSection | TinkerSection"
    _edit(backend_sections, f"#: The one list of backend kinds: add a new backend's section here.\n"
          f"{kinds}", f"{MY_BACKEND_SECTION}{kinds} | MyBackendSection")
    return root


def _python(root: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)


def _ulora(root: Path, tmp_path: Path, *args: str) -> dict:
    """``ulora run`` of the copy, 4 steps on the small model; returns config.json."""
    out = tmp_path / "run"
    argv = ["run", "pig-latin-shock", "--steps", "4", "--base-model", "small", "--out", str(out),
            "--set", "shocks.windows=[[2, 3]]", "--set", "eval.every=4", "--set", "eval.size=4",
            "--set", "eval.max_tokens=4", *args]
    code = ("import sys, ulora_remote; assert ulora_remote.__file__.startswith(sys.argv[1]); "
            "from ulora_remote.cli import main; sys.exit(main(sys.argv[2:]))")
    done = subprocess.run([sys.executable, "-c", code, str(root), *argv], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
                          text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert len((out / "steps.csv").read_text().splitlines()) == 5  # header + 4 steps
    return json.loads((out / "config.json").read_text())


def test_the_guard_recipe_runs(package: Path, tmp_path: Path) -> None:
    config = _ulora(package, tmp_path, "--set", 'controller.guard.kind="my-guard"',
                    "--set", "controller.guard.threshold=100.0")
    assert config["scenario"]["controller"]["guard"] == {"kind": "my-guard", "threshold": 100.0}


def test_the_task_recipe_runs_alone_in_a_mix_and_refuses_a_shift_clearly(
        package: Path, tmp_path: Path) -> None:
    config = _ulora(package, tmp_path, "--set", 'task.kind="my-task"')
    assert config["scenario"]["task"]["kind"] == "my-task"
    checks = _python(package, textwrap.dedent('''
        from ulora_remote.errors import ConfigurationError
        from ulora_remote.scenarios import load_scenario
        mix = load_scenario("pig-latin-shock", ['task.kind="mix"', 'task.parts.a.kind="my-task"',
                                                'task.parts.b.kind="pig-latin"'])
        print(sorted(p.kind for p in mix.task.parts.values()))
        try:
            load_scenario("pig-latin-shock", ['task.kind="my-task"', 'shift.rule="reversed"',
                                              "shift.start=10"])
        except ConfigurationError as exc:
            print(exc)
    '''), tmp_path)
    assert checks.returncode == 0, checks.stderr[-3000:]
    assert "['my-task', 'pig-latin']" in checks.stdout
    assert "is not a rule of task 'my-task'; its shift rules: none" in checks.stdout


def test_the_backend_recipe_runs_and_every_list_reads_it(package: Path, tmp_path: Path) -> None:
    config = _ulora(package, tmp_path, "--backend", "my-backend")  # a CLI choice now
    assert config["scenario"]["backend"]["kind"] == "my-backend"
    assert config["scenario"]["lag"] == 1  # its default_lag, read from the one list


def test_a_copied_checkout_on_pythonpath_stops_instead_of_running_the_installed_one(
        tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    for name in ("ulora_remote", "backends", "scenarios"):
        shutil.copytree(REPO / name, copy / name, ignore=IGNORE)
    done = _python(copy, "import ulora_remote.scenarios", tmp_path)
    assert done.returncode != 0  # this interpreter has the checkout installed in editable mode
    assert "two source trees are mixed" in done.stderr and str(copy) in done.stderr
