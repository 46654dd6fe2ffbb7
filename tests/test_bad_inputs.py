"""The bad-input table, part 1: scenario files, overrides and run folders given to `ulora run`.

Each refused case must end in one `ulora: error: ...` naming the problem, with no traceback, and
leave the working folder exactly as it was: no run folder made, no file changed. The accepted
names (spaces, '+', non-ASCII letters, a scenario name with '../', a very long scenario name)
must run to the end inside the folder the user named. See fault_table.py for the verdicts.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_table import (
    RUN_ARGS,
    as_killed,
    assert_clear_error,
    can_mount,
    judge_success,
    make_run,
    same_run,
    snapshot,
    tmpfs,
    ulora,
)

pytest.importorskip("torch")
pytest.importorskip("peft")

SHIPPED = Path(__file__).resolve().parents[1] / "scenarios" / "files" / "pig-latin-shock.toml"


def _file(name: str, data: bytes) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(data)
        return ["run", name]
    return setup


def _shipped_plus(line: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "mine.toml").write_text(SHIPPED.read_text() + "\n" + line + "\n")
        return ["run", "mine.toml", *RUN_ARGS]
    return setup


def _argv(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: list(args)


# (case, setup -> argv, words the message must hold)
SCENARIO_CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("binary scenario file", _file("bin.toml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00"),
     ["bin.toml", "not UTF-8"]),
    ("Latin-1 scenario file", _file("latin.toml", 'name = "café"\n'.encode("latin-1")),
     ["latin.toml", "not UTF-8", "save it as UTF-8"]),
    ("TOML syntax error", _file("syntax.toml", b"steps = = 3\n"), ["invalid TOML", "line 1"]),
    ("empty scenario file", _file("empty.toml", b""), ["name is required", "steps is required"]),
    ("scenario path is a folder", lambda tmp: (tmp / "adir").mkdir() or ["run", "adir"],
     ["unknown scenario 'adir'"]),
    ("missing scenario file", _argv("run", "nope.toml"), ["unknown scenario 'nope.toml'"]),
    ("unknown key in a file", _shipped_plus("bogus_top = 1"), ["bogus_top"]),
    ("steps is text", _argv("run", *RUN_ARGS, "--set", 'steps="many"'),
     ["steps", "valid integer"]),
    ("steps is fractional", _argv("run", *RUN_ARGS, "--set", "steps=1.5"), ["steps", "integer"]),
    ("negative --steps", _argv("run", *RUN_ARGS, "--steps", "-5"), ["steps = -5"]),
    ("window beyond the run", _argv("run", *RUN_ARGS, "--set", "shocks.windows=[[4,40]]"),
     ["lies outside the run"]),
    ("negative window", _argv("run", *RUN_ARGS, "--set", "shocks.windows=[[-3,2]]"),
     ["lies outside the run"]),
    ("overlapping windows", _argv("run", "--set", "shocks.windows=[[250,350],[200,300]]"),
     ["overlap"]),
    ("windows not a list", _argv("run", *RUN_ARGS, "--set", 'shocks.windows="abc"'),
     ["shocks.windows"]),
    ("override without =", _argv("run", "--set", "oops"), ["'oops' is not key=value"]),
    ("override with a bad key", _argv("run", "--set", "a..b=1"), ["'a..b=1'"]),
    ("override below a value", _argv("run", "--set", "steps.x=1"),
     ["steps is a value, not a table"]),
    ("unknown controller option", _argv("run", "--set", "controller.nope=1"),
     ["unknown key 'controller.nope'"]),
    ("unknown backend kind", _argv("run", "--set", 'backend.kind="nope"'), ["backend.kind"]),
    ("table set to a number", _argv("run", "--set", "eval=5"), ["eval = 5"]),
    ("missing model folder", _argv("run", *RUN_ARGS, "--set",
                                   'backend.base_model="/nonexistent/model"'),
     ["/nonexistent/model", "neither a built-in model"]),
    ("theta0 above theta1", _argv("run", "--set", "controller.theta0=0.9"), ["theta0=0.9"]),
    ("beta1 of 1.5", _argv("run", "--set", "optimizer.beta1=1.5"), ["optimizer.beta1"]),
    ("empty name", _argv("run", "--set", 'name=""'), ["name"]),
    ("negative lag", _argv("run", "--set", "lag=-1"), ["lag = -1"]),
    ("negative seed", _argv("run", "--seed", "-1"), ["seed = -1"]),
    ("zero batch size", _argv("run", "--set", "batch_size=0"), ["batch_size = 0"]),
    ("zero eval size", _argv("run", "--set", "eval.size=0"), ["eval.size = 0"]),
    ("negative checkpoint cadence", _argv("run", "--set", "checkpoint.every=-1"),
     ["checkpoint.every = -1"]),
    ("seeds not integers", _argv("compare", "pig-latin-shock", "--seeds", "a,b"), ["--seeds"]),
    ("--resume with other options", _argv("run", "--resume", "x", "--steps", "5"),
     ["give only --resume"]),
]


@pytest.mark.parametrize(("case", "setup", "needles"), SCENARIO_CASES,
                         ids=[c[0] for c in SCENARIO_CASES])
def test_bad_scenarios_and_overrides(tmp_path, case, setup, needles):
    argv = setup(tmp_path)
    before = snapshot(tmp_path)
    outcome = ulora(*argv, cwd=tmp_path)
    assert_clear_error(case, outcome, needles, before, snapshot(tmp_path))
    assert not (tmp_path / "runs").exists()


def _user_folder(tmp: Path, files: dict[str, str]) -> Path:
    folder = tmp / "mine"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


USER_FILES = {"steps.csv": "my,own\n1,2\n", "plot.png": "not ours", "summary.json": "{}"}

# (case, setup -> the --out value (plus extra options), words the message must hold)
OUT_CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("--out /", lambda tmp: ["/"], ["--out / is the filesystem root"]),
    ("--out at a file", lambda tmp: (tmp / "f").write_text("x") and [str(tmp / "f")],
     ["is a file, not a folder"]),
    ("--out below a file", lambda tmp: (tmp / "f").write_text("x") and [str(tmp / "f" / "r")],
     ["is a file, not a folder"]),
    ("--out with a newline", lambda tmp: [str(tmp / "a\nb")], ["control character"]),
    ("--out name of 300 bytes", lambda tmp: [str(tmp / ("x" * 300))], ["over the limit of 255"]),
    ("--out path too long", lambda tmp: [str(tmp / "/".join(["d" * 200] * 20) / "run")],
     ["the path is too long"]),
    ("--out holds the user's steps.csv, plot.png, summary.json",
     lambda tmp: [str(_user_folder(tmp, USER_FILES))],
     ["is not a run directory (no ulora-run.json)", "plot.png", "choose a new --out"]),
    ("the same with --force", lambda tmp: [str(_user_folder(tmp, USER_FILES)), "--force"],
     ["is not a run directory", "--force replaces only a run directory"]),
    ("--out holds the user's notes", lambda tmp: [str(_user_folder(tmp, {"notes.txt": "x"}))],
     ["notes.txt"]),
    ("--force onto the user's config.json",
     lambda tmp: [str(_user_folder(tmp, {"config.json": '{"scenario": {}}'})), "--force"],
     ["not a run directory"]),
    ("--out with a damaged marker",
     lambda tmp: [str(_user_folder(tmp, {"ulora-run.json": "{garbage"}))],
     ["ulora-run.json is damaged"]),
]


@pytest.mark.parametrize(("case", "setup", "needles"), OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_bad_run_folders_are_refused_before_anything_is_written(tmp_path, case, setup, needles):
    out, *extra = setup(tmp_path)
    before, root_before = snapshot(tmp_path), sorted(os.listdir("/"))
    outcome = ulora("run", "--out", out, *RUN_ARGS, *extra, cwd=tmp_path)
    assert_clear_error(case, outcome, needles, before, snapshot(tmp_path))
    assert snapshot(tmp_path) == before and sorted(os.listdir("/")) == root_before


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("finished"), "run1")


@pytest.mark.parametrize("state", ["finished", "unfinished"])
def test_an_existing_run_is_refused_without_force(tmp_path, finished, state):
    run = tmp_path / "run1"
    if state == "finished":
        import shutil

        shutil.copytree(finished, run)
        needles = ["already holds a finished run; pass --force"]
    else:
        as_killed(finished, run)
        needles = ["unfinished run", f"ulora run --resume {run}"]
    before = snapshot(tmp_path)
    outcome = ulora("run", "--out", "run1", *RUN_ARGS, cwd=tmp_path)
    assert_clear_error(f"--out onto a {state} run", outcome, needles, before, snapshot(tmp_path))


def test_a_read_only_place_is_refused_up_front(tmp_path):
    reason = can_mount(tmp_path)
    if reason:
        pytest.skip(f"needs a read-only tmpfs: {reason}")
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        for case, out in (("--out on a read-only filesystem", ro / "run"),
                          ("--out nested on a read-only filesystem", ro / "a" / "b")):
            before = snapshot(tmp_path)
            outcome = ulora("run", "--out", str(out), *RUN_ARGS, cwd=tmp_path)
            assert_clear_error(case, outcome, ["is not writable", "read-only"], before,
                               snapshot(tmp_path))


@pytest.mark.parametrize("name", ["my run", "run+1", "lauf-é", "日本語"])
def test_any_folder_name_runs_to_the_end(tmp_path, finished, name):
    outcome = ulora("run", "--out", name, *RUN_ARGS, cwd=tmp_path)
    run = tmp_path / name
    ckpts = [json.loads(x) for x in (run / "checkpoints.jsonl").read_text().splitlines()] \
        if (run / "checkpoints.jsonl").exists() else []
    ok = (same_run(finished, run) and (run / "summary.json").exists()
          and [c["step"] for c in ckpts] == [0, 4, 8, 12])
    judge_success(f"--out named {name!r}", ok, outcome)


@pytest.mark.parametrize(("case", "scenario_name", "needle"), [
    ("scenario name with ../", "../../escaped", "letters, digits"),
    ("scenario name of 300 characters", "n" * 300, "at most 64 characters"),
    ("scenario name with a slash", "a/b", "letters, digits"),
])
def test_a_scenario_name_never_leaves_the_runs_folder(tmp_path, finished, case, scenario_name,
                                                      needle):
    # A scenario name is an identifier (it names runs and compare rows): the schema refuses one
    # that is not, before anything is written anywhere.
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(tmp_path)
    outcome = ulora("run", *RUN_ARGS, "--set", f"name={json.dumps(scenario_name)}", cwd=work)
    assert_clear_error(case, outcome, ["name =", needle], before, snapshot(tmp_path))
    assert sorted(p.name for p in work.iterdir()) == []


def test_force_removes_the_old_runs_later_checkpoints_and_keeps_the_users_files(tmp_path,
                                                                               finished):
    import shutil

    run = tmp_path / "run1"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "my-notes.txt").write_text("mine too")
    outcome = ulora("run", "--out", "run1", *RUN_ARGS, "--steps", "8", "--force", cwd=tmp_path)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    ok = names == ["my-notes.txt", "run1-step000000", "run1-step000004", "run1-step000008"]
    kept = ((run / "notes.txt").read_text() == "mine"
            and (run / "checkpoints" / "my-notes.txt").read_text() == "mine too")
    judge_success("--force over a run with user files and later checkpoints", ok, outcome, kept)


def test_a_closed_tinker_port_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("tinker")
    monkeypatch.setenv("TINKER_API_KEY", "tml-test-not-a-real-key")
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = snapshot(tmp_path)
    outcome = ulora("run", "llama32-1b-tinker", "--out", "run1", "--set",
                    f'backend.base_url="http://127.0.0.1:{port}"', cwd=tmp_path)
    assert_clear_error("Tinker run against a closed port", outcome,
                       [f"nothing accepts connections at http://127.0.0.1:{port}"], before,
                       snapshot(tmp_path))
    assert "tml-test-not-a-real-key" not in outcome.err + outcome.out
