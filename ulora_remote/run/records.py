"""checkpoints.jsonl: one JSON line a checkpoint, whose reference belongs to its run directory.

A record holds ``step``, ``ref``, ``policy`` (and what the runner adds). For a checkpoint the
backend wrote to disk, ``ref`` is stored relative to the run directory (``checkpoints/<name>``)
and ``files`` maps each of its files to its SHA-256, so a moved or copied run directory resumes
from its own files, and a damaged or swapped file is caught before it is loaded. A checkpoint
outside the run directory (a backend given its own folder) is stored absolute, also hashed. A
remote reference (``tinker://...``) is kept as it is. ``config_sha256`` is the digest of the
run's config.json when the checkpoint was made; a resume checks it is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ulora_remote.errors import CheckpointError, RunDirError
from ulora_remote.run.storage import digest_tree, storage_error

__all__ = ["localize", "read_records", "verify"]


def localize(ref: str, run_dir: Path) -> dict[str, Any]:
    """The ``ref`` and ``files`` fields to store for a reference returned by ``save_state``.

    Raises:
        StorageError: the checkpoint's files could not be read back.
    """
    path = Path(ref)
    if not path.exists():
        return {"ref": ref}  # remote or opaque: kept as the backend gave it
    real = path.resolve()
    try:
        stored = real.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        stored = str(real)
    try:
        files = digest_tree(real)
    except OSError as exc:
        raise storage_error(exc, "read back the checkpoint", real) from exc
    return {"ref": stored, "files": files}


def read_records(path: Path, *, fix: str) -> list[dict[str, Any]]:
    """Every checkpoint record, oldest first. A last line cut by a kill (no newline) is ignored.

    Raises:
        RunDirError: a damaged line other than a cut last one, a record without
            step/ref/policy, or steps that do not go up; ``fix`` ends the message.
    """
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is not UTF-8 text: the file is damaged; {fix}") from None
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
    records: list[dict[str, Any]] = []
    for n, line in enumerate(text.split("\n")[:-1], 1):
        record = _parse(path, n, line, fix)
        if records and record["step"] <= records[-1]["step"]:
            raise RunDirError(f"{path}, line {n}: step {record['step']} follows step "
                              f"{records[-1]['step']}; the file was edited; {fix}")
        records.append(record)
    return records


def _parse(path: Path, n: int, line: str, fix: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}, line {n} is not valid JSON ({exc.msg}): the line is damaged; "
                          f"{fix}") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise RunDirError(f"{path}, line {n} is nested too deeply to be a record of ours: the "
                          f"line is damaged; {fix}") from None
    ok = (isinstance(record, dict) and isinstance(record.get("step"), int)
          and not isinstance(record.get("step"), bool) and record["step"] >= 0
          and isinstance(record.get("ref"), str) and record["ref"]
          and isinstance(record.get("policy"), dict)
          and isinstance(record.get("files", {}), dict))
    if not ok:
        raise RunDirError(f"{path}, line {n}: not a checkpoint record (it needs an integer step "
                          f"≥ 0, a ref and the policy state); {fix}")
    return dict(record)


def verify(record: dict[str, Any], run_dir: Path, *, config_sha256: str | None,
           fix: str) -> str:
    """Check a record's checkpoint and the config it was made with; return the ref to load.

    Args:
        record: as read by ``read_records``.
        run_dir: the run directory (absolute) a relative ``ref`` is resolved against.
        config_sha256: the digest of config.json now (None: the directory has none).
        fix: ends the messages (how to recover).

    Returns:
        An absolute path for a checkpoint on disk, else the ref as stored.

    Raises:
        RunDirError: config.json changed since the checkpoint was made.
        CheckpointError: the checkpoint lies outside the run directory although stored
            relative, is missing, incomplete, or a file differs from its recorded SHA-256.
    """
    step = record["step"]
    recorded = record.get("config_sha256")
    if recorded is not None and config_sha256 is not None and recorded != config_sha256:
        raise RunDirError(
            f"{run_dir / 'config.json'} changed since the checkpoint at step {step} was made "
            "(its SHA-256 no longer matches): a resumed run must go on with the settings it "
            "started with. Undo the edit, or run the new settings as a new run "
            "(`ulora run ... --out NEW_DIR`)"
        )
    if "files" not in record:
        return str(record["ref"])
    target = _target(record, run_dir, fix)
    if not target.exists():
        raise CheckpointError(f"the checkpoint of step {step} is missing: {target} does not "
                              f"exist; {fix}")
    try:
        found = digest_tree(target)
    except OSError as exc:
        raise storage_error(exc, "read the checkpoint", target) from exc
    _compare(step, target, record["files"], found, fix)
    return str(target)


def _target(record: dict[str, Any], run_dir: Path, fix: str) -> Path:
    ref = Path(record["ref"])
    if ref.is_absolute():
        return ref
    target = run_dir / ref
    root = run_dir.resolve()
    if target.resolve() != root and root not in target.resolve().parents:
        raise CheckpointError(f"the checkpoint of step {record['step']} is recorded as "
                              f"{record['ref']!r}, outside the run directory {run_dir}: "
                              f"checkpoints.jsonl was edited; {fix}")
    return target


def _compare(step: int, target: Path, expected: dict[str, Any], found: dict[str, str],
             fix: str) -> None:
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(f"the checkpoint of step {step} at {target} is incomplete: "
                              f"{', '.join(missing)} missing; {fix}")
    for name in sorted(expected):
        if found[name] != expected[name]:
            shown = target if name == "." else target / name
            raise CheckpointError(f"the checkpoint of step {step} is damaged: {shown} does not "
                                  "match the SHA-256 recorded when it was saved; "
                                  f"{fix}")
