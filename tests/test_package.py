"""Packaging promises: the core imports without torch or tinker, the layout maps as designed."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ulora_remote
from ulora_remote import errors


def test_import_needs_neither_torch_nor_tinker() -> None:
    code = (
        "import sys, ulora_remote, ulora_remote.backends, ulora_remote.scenarios\n"
        "from ulora_remote import UnifiedController\n"
        "heavy = sorted(m for m in ('torch', 'tinker', 'transformers', 'peft', 'matplotlib')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backends_and_scenarios_install_under_the_package() -> None:
    import ulora_remote.backends as b
    import ulora_remote.scenarios as s

    assert b.__name__ == "ulora_remote.backends" and s.__name__ == "ulora_remote.scenarios"


def test_public_surface_is_explicit() -> None:
    for name in ulora_remote.__all__:
        assert hasattr(ulora_remote, name), name


@pytest.mark.parametrize(
    ("exc", "builtin"),
    [
        (errors.ConfigurationError, ValueError),
        (errors.InputError, ValueError),
        (errors.BackendError, RuntimeError),
        (errors.RemoteError, ConnectionError),
        (errors.RemoteTimeoutError, TimeoutError),
        (errors.MissingExtraError, ImportError),
        (errors.RunDirError, ValueError),
        (errors.StorageError, OSError),
    ],
)
def test_one_exception_root_with_builtin_bases(exc: type, builtin: type) -> None:
    assert issubclass(exc, errors.UloraError) and issubclass(exc, builtin)


def test_missing_extra_names_the_install_command() -> None:
    err = errors.MissingExtraError("local", "torch")
    assert "pip install 'ulora-remote[local]'" in str(err)
