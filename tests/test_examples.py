"""The examples/ scripts run as shipped (tiny models, offline)."""

from __future__ import annotations

import io
import runpy
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_flat_loop_trains_under_the_controller(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(EXAMPLES / "flat_loop.py"))["main"]
    losses = main(steps=40)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns
    out = capsys.readouterr().out
    assert "[20] Mode=" in out and "exact match on 8 held-out words" in out


# A shock early enough for the guard to reject, open a probation and declare a shift within a
# short run (its reference made 10 steps long to fill in time); one evaluation, at the end.
GUARDED = ("shocks.windows=[[40, 72]]", "eval.every=72", "controller.guard.window=80",
           "controller.guard.min_history=80")


@pytest.mark.parametrize("lag", [0, 1])
def test_guarded_loop_writes_the_losses_of_ulora_run(lag: int, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from ulora_remote.run.api import run_scenario

    main = runpy.run_path(str(EXAMPLES / "guarded_loop.py"))["main"]
    losses = main(steps=72, lag=lag, overrides=GUARDED)
    out = capsys.readouterr().out
    result = run_scenario("pig-latin-shock", overrides=[*GUARDED, "steps=72", f"lag={lag}"],
                          out=tmp_path / "run", console=io.StringIO())
    steps = result.steps
    assert list(steps["loss"]) == losses  # exactly: the same requests on the same weights
    assert (steps["kept"] < 8).sum() >= 4 and "probation" in out  # the guard did act
    assert "probation" in set(steps["event"].fillna(""))
