"""A run that cannot start writes nothing and deletes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulora_remote import ConfigurationError
from ulora_remote.run.api import run_scenario

SHORT = ["steps=30", "shocks.windows=[[10,20]]"]


def test_a_backend_that_cannot_be_built_leaves_no_run_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "not-a-model"
    model_dir.mkdir()
    out = tmp_path / "run"
    with pytest.raises(ConfigurationError, match="not a Hugging Face model directory"):
        run_scenario("pig-latin-shock", out=out,
                     overrides=[*SHORT, f"backend.base_model='{model_dir}'"])
    assert not (out / "config.json").exists()


def test_force_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    old = {"config.json": '{"scenario": {}}', "steps.csv": "step\n0\n", "summary.json": "{}"}
    for name, text in old.items():
        (out / name).write_text(text)
    model_dir = tmp_path / "not-a-model"
    model_dir.mkdir()
    with pytest.raises(ConfigurationError):
        run_scenario("pig-latin-shock", out=out, force=True,
                     overrides=[*SHORT, f"backend.base_model='{model_dir}'"])
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == old


def test_an_existing_run_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "summary.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="--force"):
        # A model directory that would fail to load: the refusal must come first.
        run_scenario("pig-latin-shock", out=out,
                     overrides=[*SHORT, f"backend.base_model='{tmp_path}'"])
