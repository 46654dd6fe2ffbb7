"""Shared test fixtures.

The built-in models of the local backend are pre-trained on first use and cached on disk; every
test of one session shares one cache directory, so a session pays for each size at most once.
Set ``ULORA_CACHE_DIR`` yourself (CI can cache it between runs) to keep it across sessions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def ulora_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The built-in model cache of this session: ``$ULORA_CACHE_DIR`` or a session temp dir."""
    preset = os.environ.get("ULORA_CACHE_DIR")
    path = Path(preset) if preset else tmp_path_factory.mktemp("ulora-cache")
    os.environ["ULORA_CACHE_DIR"] = str(path)
    yield path
    if preset is None:
        del os.environ["ULORA_CACHE_DIR"]


@pytest.fixture(scope="session")
def smollm2_dir(ulora_cache_dir: Path) -> Path:
    """The named real model ``smollm2-135m`` converted into this session's cache (about 35 s,
    once a session). Skipped, with the install command, where its wheel or ``gguf`` is missing;
    the README's test command installs both, so CI runs every test that uses it."""
    pytest.importorskip("torch")
    pytest.importorskip("gguf", reason="the 'smollm2' extra is not installed (gguf)")
    from ulora_remote.backends.catalog import WHEEL_MODELS, locate_gguf

    from ulora_remote.errors import MissingExtraError

    try:
        locate_gguf(WHEEL_MODELS["smollm2-135m"])
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    from ulora_remote.backends.local.named import named_model_dir

    return named_model_dir("smollm2-135m", ulora_cache_dir)
