"""The screening guard inside the runner, on the local backend with the built-in small model: a
probation's rollback restores the snapshot exactly (adapter weights and AdamW state), and a run
killed during a probation, after a checkpoint taken inside it, resumes to the same rows as the
uninterrupted run.

The guard is made strict (z 1, no loss floor, short probation) so that 60 steps reach a probation
(step 31) and its rollback (step 37), with a checkpoint every 5 steps: one at step 35, inside.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from local_recording import Recording  # noqa: E402
from ulora_remote.backends.local import LocalBackend  # noqa: E402
from ulora_remote.scenarios import load_scenario  # noqa: E402

from ulora_remote.backend import Example, ForwardBackwardResult, Future  # noqa: E402
from ulora_remote.run.api import resume_run, run_scenario  # noqa: E402
from ulora_remote.run.rundir import RunDir  # noqa: E402

OVERRIDES = [
    'backend.base_model="small"', "backend.rank=2", "eval.size=8", "eval.max_tokens=12",
    "steps=60", "eval.every=20", "checkpoint.every=5",
    'controller={method="guarded", guard={z=1.0, min_loss=0.0, min_history=16, window=64, '
    'trigger_steps=2, probation_steps=6, judge_steps=2}}',
    'shocks={kind="random-letters", windows=[[30,45]]}',
]
OWN = ["wall_s", "snapshot"]  # the snapshot's path names the run directory


class StopAfterCheckpoint(LocalBackend):
    """Raises KeyboardInterrupt (a Ctrl-C) at the second training step after the checkpoint of
    step ``at`` is on record."""

    def __init__(self, *args: Any, rd: RunDir, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rd, self.at, self.after = rd, at, 0

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        path = self.rd.path / "checkpoints.jsonl"
        if path.exists() and any(json.loads(line)["step"] == self.at
                                 for line in path.read_text().splitlines()):
            self.after += 1
            if self.after == 2:
                raise KeyboardInterrupt
        return super().forward_backward(batch)


def _backend(cls: type[LocalBackend], where: RunDir, **kwargs: Any) -> Any:
    scenario = load_scenario("pig-latin-shock", OVERRIDES)
    section = scenario.backend
    return cls(section.base_model, rank=section.rank, seed=scenario.seed,
               checkpoint_dir=where.checkpoint_dir, **kwargs)


def _events(steps: pd.DataFrame) -> dict[str, int]:
    rows = steps[steps["event"].notna()]
    return {str(e): int(s) for s, e in zip(rows["step"], rows["event"], strict=True)}


def test_a_rollback_restores_the_probation_snapshot_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rd = RunDir(tmp_path / "run")
    backend = _backend(Recording, rd)
    result = run_scenario("pig-latin-shock", backend=backend, out=rd.path, overrides=OVERRIDES,
                          console=io.StringIO(), log_every=0)
    events = _events(result.steps)
    assert events == {"probation": 31, "rollback": 37}
    snapshot = result.steps.loc[result.steps["step"] == 31, "snapshot"].iloc[0]
    assert result.steps.loc[result.steps["step"] == 37, "snapshot"].iloc[0] == snapshot
    loaded = [(ref, state) for ref, state in backend.loads if "probation" in ref]
    assert len(loaded) == 1  # the rollback, once
    ref, restored = loaded[0]
    saved = backend.at_save[ref]
    # The probation trained (lr 1e-3) before the rollback: at the next save (the checkpoint of
    # step 35) the weights had moved away from the snapshot.
    refs = list(backend.at_save)
    later = backend.at_save[refs[refs.index(ref) + 1]]
    assert any(not torch.equal(later["weights"][n], w) for n, w in saved["weights"].items())
    for name, tensor in saved["weights"].items():
        assert torch.equal(restored["weights"][name], tensor), name
    assert saved["optim"].keys() == restored["optim"].keys()
    for name, state in saved["optim"].items():
        assert state.keys() == restored["optim"][name].keys()
        for key, value in state.items():
            other = restored["optim"][name][key]
            assert torch.equal(other, value) if torch.is_tensor(value) else other == value
    assert [e["event"] for e in result.summary["guard"]["events"]] == ["probation", "rollback"]
    assert result.summary["guard"]["events"][1]["snapshot"] == snapshot  # kept on record
    # Every shock step holds corrupted examples; those trained on during the rolled-back
    # probation (steps 31-36) count as kept out of the final model, with the rejected ones.
    steps, (window,) = result.steps, result.summary["guard"]["corrupted_windows"]
    shock = steps[steps["shock"]]
    assert (shock["corrupted"] > 0).all() and steps.loc[~steps["shock"], "corrupted"].eq(0).all()
    undone = shock[(shock["step"] >= 31) & (shock["step"] < 37)]
    assert window["corrupted"] == int(shock["corrupted"].sum())
    assert window["rejected"] == int(shock["corrupted_rejected"].sum())
    assert window["rolled_back"] == int((undone["corrupted"] - undone["corrupted_rejected"]).sum())
    assert window["rolled_back"] > 0
    assert window["kept_out_share"] == pytest.approx(
        (window["rejected"] + window["rolled_back"]) / window["corrupted"])
    assert Path(snapshot).is_dir()


def test_a_run_killed_during_a_probation_resumes_to_the_uninterrupted_rows(
        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    reference = run_scenario("pig-latin-shock", out=tmp_path / "ref", overrides=OVERRIDES,
                             console=io.StringIO(), log_every=0)
    assert _events(reference.steps) == {"probation": 31, "rollback": 37}

    rd = RunDir(tmp_path / "cut")
    backend = _backend(StopAfterCheckpoint, rd, rd=rd, at=35)
    with pytest.raises(KeyboardInterrupt):
        run_scenario("pig-latin-shock", backend=backend, out=rd.path, overrides=OVERRIDES,
                     console=io.StringIO(), log_every=0)
    last = json.loads((rd.path / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 35  # inside the probation (31..37)
    cut = pd.read_csv(rd.steps_path)
    assert 35 <= int(cut["step"].max()) < 37 and "rollback" not in set(cut["event"].dropna())

    console = io.StringIO()
    resumed = resume_run(rd.path, console=console)
    assert "resuming from the checkpoint at step 35" in console.getvalue()
    pd.testing.assert_frame_equal(reference.steps.drop(columns=OWN),
                                  resumed.steps.drop(columns=OWN))
    pd.testing.assert_frame_equal(reference.evals, resumed.evals)
