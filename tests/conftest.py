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
