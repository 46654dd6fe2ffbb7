"""Local sweeps at concurrency 1, 4 and 16 (worker processes): every run's steps.csv equals the
same run made alone in this process, column by column (the wall clock aside). Runs are tiny so
that 16 workers fit a loaded 2-core machine; each concurrency gets more runs than workers."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pandas as pd
import pytest

from ulora_remote.study.compare import compare_scenario, compare_specs
from ulora_remote.study.sweep_run import execute

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.slow

TINY = ["steps=6", "shocks.windows=[[2,4]]", 'backend.base_model="small"', "eval.every=3",
        "eval.size=2", "eval.max_tokens=4", "baselines.fixed_lrs=[2e-3]", "checkpoint.every=3"]
#: Seeds per concurrency: 3 runs per seed (guarded, seed, fixed-2e-3), more runs than workers.
SEEDS = {1: (0,), 4: (0, 1), 16: (0, 1, 2, 3, 4, 5)}


def _steps(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "steps.csv").drop(columns=["wall_s"])


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run of the largest sweep made alone, one after the other, in this process."""
    from ulora_remote.backends.local import build_builtin_model

    build_builtin_model("small")  # cached for the workers too
    out = tmp_path_factory.mktemp("solo")
    _, specs = compare_specs("pig-latin-shock", seeds=SEEDS[16], out=out, overrides=TINY)
    for spec in specs:
        execute(spec, "start", stop=threading.Event(), console=io.StringIO())
    return out


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_every_run_of_a_sweep_equals_its_solo_run(solo: Path, tmp_path: Path,
                                                  concurrency: int) -> None:
    term = io.StringIO()
    compare_scenario("pig-latin-shock", seeds=SEEDS[concurrency], out=tmp_path, overrides=TINY,
                     console=term, concurrency=concurrency)
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "steps.csv").exists())
    assert len(runs) == 3 * len(SEEDS[concurrency]) > concurrency
    assert f"concurrency {concurrency}" in term.getvalue()
    for run in runs:
        mine, alone = _steps(tmp_path / run), _steps(solo / run)
        assert len(mine) == 6, run
        pd.testing.assert_frame_equal(mine, alone, obj=run)
