"""The examples/ scripts run as shipped (tiny models, offline)."""

from __future__ import annotations

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
