"""Helpers of the bad-input and fault tables (test_bad_inputs.py, test_bad_rundirs.py,
test_disk_faults.py).

Every case runs the real ``ulora`` command in-process and is judged the same way:

* ``clear``: exit status 2, one ``ulora: error: ...`` message holding the expected words, no
  traceback; or, for a case that must succeed, exit 0 with the expected result;
* ``traceback``: an exception escaped the command;
* ``silent``: exit 0 where an error was due, or a result that differs from the right one;
* ``unclear``: an error without the expected words (or another exit status);
* ``lost``: a file that existed before the command was changed or removed.

With ``ULORA_FAULT_TABLE=<file>`` set, each verdict is appended there as a JSON line, so the
table's figures can be counted (also against an older commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ulora_remote.cli import main

TINY = [
    "steps=12", "shocks.windows=[[4,6]]", 'backend.base_model="small"', "eval.every=4",
    "eval.size=4", "eval.max_tokens=8", "checkpoint.every=4",
]
RUN_ARGS = [arg for kv in TINY for arg in ("--set", kv)] + ["--log-every", "0"]
KILLED_AT = 10  # the unfinished copies: rows 0-9, a cut row 10, checkpoints 0, 4, 8


@dataclass(frozen=True)
class Outcome:
    rc: int | None  # None: an exception escaped
    out: str
    err: str


def ulora(*argv: str, cwd: Path | None = None) -> Outcome:
    """Run ``ulora argv`` in-process (in ``cwd``), capturing its output and any traceback."""
    out, err = io.StringIO(), io.StringIO()
    rc: int | None
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
        except BaseException:  # noqa: BLE001 - a traceback is what the table counts
            rc = None
            err.write(traceback.format_exc())
    return Outcome(rc, out.getvalue(), err.getvalue())


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> SHA-256 (folders: "dir")."""
    found = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        found[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def lost(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files of ``before`` that are gone or changed in ``after``."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


def record(case: str, verdict: str, detail: str = "", kind: str = "error",
           changed: int = 0) -> None:
    """Append a verdict (``changed``: how many files that existed before were changed)."""
    path = os.environ.get("ULORA_FAULT_TABLE")
    if "ulora: error: " in detail:
        detail = detail[detail.index("ulora: error: "):]
    elif "Traceback" in detail:
        detail = detail[detail.rindex("\n", 0, len(detail.rstrip())) + 1:]
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"case": case, "kind": kind, "verdict": verdict,
                                 "changed": changed, "detail": detail[:300]}) + "\n")


def judge_error(case: str, outcome: Outcome, needles: Sequence[str],
                before: dict[str, str], after: dict[str, str]) -> str:
    """The verdict of a case that must end in a clear error and change nothing."""
    if outcome.rc is None or "Traceback" in outcome.err:
        verdict = "traceback"
    elif outcome.rc == 0:
        verdict = "silent"
    elif lost(before, after):
        verdict = "lost"
    elif outcome.rc == 2 and ("\n" + outcome.err).count("\nulora: error: ") == 1 and all(
            n in outcome.err for n in needles):
        verdict = "clear"
    else:
        verdict = "unclear"
    record(case, verdict, outcome.err or outcome.out[-300:], changed=len(lost(before, after)))
    return verdict


def assert_clear_error(case: str, outcome: Outcome, needles: Sequence[str],
                       before: dict[str, str], after: dict[str, str]) -> None:
    verdict = judge_error(case, outcome, needles, before, after)
    assert verdict == "clear", (verdict, lost(before, after), outcome.err, outcome.out[-800:])


def judge_success(case: str, ok: bool, outcome: Outcome, kept: bool = True) -> None:
    """A case that must succeed: ``ok`` says the result is right, ``kept`` that no file of the
    user's was lost."""
    if outcome.rc is None or "Traceback" in outcome.err:
        verdict = "traceback"
    elif outcome.rc != 0:
        verdict = "unclear"  # a valid request refused
    elif not kept:
        verdict = "lost"
    elif not ok:
        verdict = "silent"
    else:
        verdict = "clear"
    record(case, verdict, outcome.err if outcome.rc != 0 else outcome.out[-300:], "success",
           changed=0 if kept else 1)
    assert verdict == "clear", (verdict, outcome.err[-2000:], outcome.out[-800:])


def same_run(a: Path, b: Path) -> bool:
    """steps.csv (all but wall_s) and evals.csv of two run directories are equal."""
    try:
        sa, sb = pd.read_csv(a / "steps.csv"), pd.read_csv(b / "steps.csv")
        ea, eb = pd.read_csv(a / "evals.csv"), pd.read_csv(b / "evals.csv")
        pd.testing.assert_frame_equal(sa.drop(columns="wall_s"), sb.drop(columns="wall_s"))
        pd.testing.assert_frame_equal(ea, eb)
    except (AssertionError, OSError, ValueError, KeyError):
        return False
    return True


def make_run(parent: Path, name: str, *extra: str) -> Path:
    """A finished TINY run at ``parent/name``, started from ``parent`` with a relative --out
    (as a user would; older versions stored checkpoint paths relative to that folder)."""
    parent.mkdir(parents=True, exist_ok=True)
    outcome = ulora("run", "--out", name, *RUN_ARGS, *extra, cwd=parent)
    assert outcome.rc == 0, outcome.err[-3000:]
    return parent / name


def as_killed(src: Path, dest: Path, at: int = KILLED_AT) -> Path:
    """Copy a finished run and turn the copy into what a SIGKILL at step ``at`` leaves: rows
    before ``at`` and half of row ``at``, evaluations and checkpoints up to the last checkpoint
    before ``at``, no summary, no plot."""
    shutil.copytree(src, dest)
    lines = (dest / "steps.csv").read_text().splitlines()
    (dest / "steps.csv").write_text("\n".join(lines[: at + 1]) + "\n" + lines[at + 1][:12])
    records = [json.loads(x) for x in (dest / "checkpoints.jsonl").read_text().splitlines()]
    kept = [r for r in records if r["step"] < at]
    last = kept[-1]["step"]
    (dest / "checkpoints.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for r in records[len(kept):]:
        shutil.rmtree(dest / "checkpoints" / Path(r["ref"]).name, ignore_errors=True)
    evals = (dest / "evals.csv").read_text().splitlines()
    keep_evals = [evals[0]] + [x for x in evals[1:] if int(x.split(",")[0]) <= last]
    (dest / "evals.csv").write_text("\n".join(keep_evals) + "\n")
    for name in ("summary.json", "plot.png"):
        (dest / name).unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A real small filesystem at ``where`` (root only); raises OSError when it cannot mount."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "none", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(where)], check=True,
                   capture_output=True)


def can_mount(tmp: Path) -> str | None:
    """None when a tmpfs can be mounted here, else the reason (for a skip)."""
    try:
        with tmpfs(tmp / "probe-mount", "64k"):
            return None
    except OSError as exc:
        return str(exc)
