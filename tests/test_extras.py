"""Optional imports: once under a lock (no race between a sweep's threads), and
``MissingExtraError`` only when the distribution is really absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ulora_remote.errors import MissingExtraError
from ulora_remote.extras import ensure_installed, import_extra, import_names

# 16 threads released together load a tokenizer through the Tinker backend's path, each in a
# fresh interpreter (transformers not yet imported): the lazy `from transformers import
# AutoTokenizer` raced there and some threads got MissingExtraError although it is installed.
_RACE = textwrap.dedent("""
    import sys, threading
    from ulora_remote.backends.tinker.render import load_tokenizer
    barrier, errors = threading.Barrier(16), []
    def work():
        barrier.wait()
        try:
            load_tokenizer(sys.argv[1])
        except BaseException as exc:
            errors.append(f"{exc!r} <- {exc.__cause__!r}")
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(len(errors), errors[:1])
    sys.exit(1 if errors else 0)
""")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ulora_remote.backends.local import build_char_tokenizer

    out = tmp_path_factory.mktemp("tok")
    build_char_tokenizer().save_pretrained(str(out))
    return out


@pytest.mark.parametrize("attempt", range(10))
def test_sixteen_threads_load_a_tokenizer_at_once_in_a_fresh_interpreter(
        tokenizer_dir: Path, attempt: int) -> None:
    done = subprocess.run([sys.executable, "-c", _RACE, str(tokenizer_dir)],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                                                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_absent_distribution_is_a_missing_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"ulora-remote\[local\]"):
        import_extra("no_such_distribution_ulora", "local")
    with pytest.raises(MissingExtraError, match="no_such_distribution_ulora"):
        ensure_installed("local", "json", "no_such_distribution_ulora")


def test_an_installed_module_without_the_name_is_a_plain_import_error() -> None:
    with pytest.raises(ImportError, match="NoSuchThing") as caught:
        import_names("json", "local", "NoSuchThing")
    assert not isinstance(caught.value, MissingExtraError)


def test_a_broken_install_shows_its_own_import_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "broken_extra_ulora"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('libfoo.so: version clash')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="version clash") as caught:
        import_extra("broken_extra_ulora", "local")
    assert not isinstance(caught.value, MissingExtraError)


def test_a_missing_dependency_of_an_installed_extra_names_the_dependency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "needs_absent_ulora"
    package.mkdir()
    (package / "__init__.py").write_text("import absent_dependency_ulora\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match="absent_dependency_ulora"):
        import_extra("needs_absent_ulora", "local")
