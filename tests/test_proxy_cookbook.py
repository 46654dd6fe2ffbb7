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


def test_burst_placement_is_a_burst_in_the_cookbooks_training_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "… burst" files corrupt exactly the records that the cookbook's own dataset
    (``set_epoch(seed=0)``, as ``supervised.train`` calls it) trains between 40% and 60% of its
    first epoch; the plain files, whose corruption is 40-60% of the file, are spread out."""
    for var in ("TINKER_TELEMETRY", "HF_HUB_OFFLINE", "TINKER_API_KEY", "HTTPS_PROXY",
                "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import proxy_cookbook as pc
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    pc._offline()
    server = serve_in_thread(ServerConfig(port=0, checkpoint_dir=tmp_path / "ckpt",
                                          api_key=pc.KEY), start_timeout_s=300)
    try:
        name = pc.model_name(server.base_url)
    finally:
        server.stop()
    steps = 50
    n = pc.TEST + pc.BATCH * steps
    burst = pc.write_file(tmp_path / "b.jsonl", "letters", n, placement="trained")
    spread = pc.write_file(tmp_path / "s.jsonl", "letters", n, placement="file")
    per_step = pc.corrupted_steps(burst, name)
    assert len(per_step) == steps and sum(per_step) == int(0.6 * (n - pc.TEST)) - int(
        0.4 * (n - pc.TEST)) == 80
    # positions 160..239 of the training order: steps 20..29, every record of them corrupted
    assert per_step == [0] * 20 + [8] * 10 + [0] * 20
    spread_steps = pc.corrupted_steps(spread, name)
    assert sum(spread_steps) == len(range(int(0.4 * n), int(0.6 * n)))
    assert sum(c > 0 for c in spread_steps) > 30  # the file's burst is shuffled over the run
