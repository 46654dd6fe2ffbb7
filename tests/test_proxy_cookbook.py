"""The proxy benchmark's smoke mode (benchmarks/proxy_cookbook.py --smoke): tinker-cookbook's
``supervised.train``, unmodified, through ``ulora proxy`` with only ``base_url`` changed, against
going direct, and examples/guarded_script.py guarded against plain. Four steps: the guard keeps
everything while it builds its reference, so the guarded runs must give the unguarded test NLL
exactly, with one record row a step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("uvicorn")
pytest.importorskip("tinker_cookbook.supervised.train",
                    reason="tinker-cookbook is not installed (see tests/test_server_cookbook.py)")

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_cookbook_through_the_proxy_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TINKER_TELEMETRY", "HF_HUB_OFFLINE", "TINKER_API_KEY", "HTTPS_PROXY",
                "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "")  # restored afterwards; the benchmark sets its own values
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import proxy_cookbook

    result = proxy_cookbook.run(4, tmp_path, smoke=True)
    nll = result["nll"]
    assert nll["cookbook proxy clean"] == nll["cookbook direct clean"]
    assert nll["cookbook proxy swapped"] == nll["cookbook direct swapped"]  # before the burst
    assert result["guard_rows"] == 2 * 5  # two runs of 5 steps (max_steps = steps + 1)
    # examples/guarded_script.py, guarded and not: nothing rejected yet, the same test NLL.
    assert nll["script guarded clean"] == nll["script plain clean"]
    rows = (next((tmp_path / "script-guarded-clean").iterdir()) / "steps.csv").read_text()
    assert len(rows.splitlines()) == 1 + 4
    assert "proxy_cookbook" in sys.modules
