"""GLUE MRPC sentence pairs: from the ``datasets`` library, or from local files by path.

Sources, tried in this order by ``load_mrpc``:

* ``path`` given: a directory with

  - the GLUE TSVs: ``train.tsv`` and ``dev.tsv`` (columns ``Quality``, ``#1 ID``, ``#2 ID``,
    ``#1 String``, ``#2 String``), or
  - Parquet files as on the Hugging Face hub (``train-*.parquet``, ``validation-*.parquet``,
    columns ``sentence1``, ``sentence2``, ``label``); reading them needs pyarrow (the 'mrpc'
    extra);

* no path: ``datasets.load_dataset("nyu-mll/glue", "mrpc")`` (the 'mrpc' extra; downloads once
  when the hub is reachable, then reads the local cache).

Split names are ``"train"`` and ``"validation"`` (GLUE's test labels are hidden, so the
validation split is what MRPC results are reported on).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator
from ulora_remote.scenarios.paraphrase import PAIR_SHOCK, PairTask, SentencePair, generate_pairs

from ulora_remote.errors import ConfigurationError
from ulora_remote.extras import import_extra
from ulora_remote.sections import STRICT

__all__ = ["SPLITS", "PairsSection", "load_mrpc", "read_glue_tsv"]

SPLITS = ("train", "validation")
_TSV_NAMES = {"train": ("train.tsv",), "validation": ("dev.tsv",)}
_TSV_COLUMNS = ("Quality", "#1 String", "#2 String")


def load_mrpc(split: str, path: str | Path | None = None) -> list[SentencePair]:
    """The MRPC pairs of ``split``, from ``path`` or through ``datasets``.

    Raises:
        ConfigurationError: an unknown split, a missing path, a directory without MRPC files,
            or a file without the expected columns (each message says what to provide).
        MissingExtraError: ``datasets`` (no path) or pyarrow (Parquet) is not installed.
    """
    if split not in SPLITS:
        raise ConfigurationError(f"MRPC split {split!r}: choose one of {list(SPLITS)}")
    if path is None:
        return _from_datasets(split)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigurationError(
            f"task.path = {str(path)!r} is not a directory; point it at a folder with GLUE's MRPC "
            "train.tsv and dev.tsv (or train-*.parquet and validation-*.parquet), or remove "
            "task.path to load GLUE MRPC through `datasets`")
    file = _find_file(root, split)
    if file.suffix == ".parquet":
        return _from_parquet(file)
    return read_glue_tsv(file)


def _find_file(root: Path, split: str) -> Path:
    for name in _TSV_NAMES[split]:
        if (root / name).is_file():
            return root / name
    parquet = sorted(root.glob(f"{split}-*.parquet")) + sorted(root.glob(f"{split}.parquet"))
    if parquet:
        return parquet[0]
    raise ConfigurationError(
        f"task.path = {str(root)!r} has no MRPC {split} file: expected one of "
        f"{list(_TSV_NAMES[split])} or {split}-*.parquet; download GLUE MRPC into it")


def read_glue_tsv(file: Path) -> list[SentencePair]:
    """Pairs from a GLUE/MSR MRPC TSV (quotes are literal text in these files).

    Raises:
        ConfigurationError: the file lacks the ``Quality``/``#1 String``/``#2 String`` columns
            or has a label other than 0/1.
    """
    with file.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or not set(_TSV_COLUMNS) <= set(rows[0]):
        raise ConfigurationError(
            f"{file} is not an MRPC TSV with labels: it needs the columns {list(_TSV_COLUMNS)} "
            "(GLUE's test.tsv has no labels; use train.tsv and dev.tsv)")
    return [_pair(r["#1 String"], r["#2 String"], r["Quality"], file, i)
            for i, r in enumerate(rows)]


def _pair(s1: Any, s2: Any, label: Any, source: Path | str, index: int) -> SentencePair:
    text = str(label).strip()
    if text not in ("0", "1"):
        raise ConfigurationError(f"{source}: row {index} has the label {label!r}; MRPC labels "
                                 "are 0 (not a paraphrase) and 1 (paraphrase)")
    return SentencePair(str(s1).strip(), str(s2).strip(), int(text))


def _from_parquet(file: Path) -> list[SentencePair]:
    import pandas as pd

    import_extra("pyarrow", "mrpc")  # pandas' Parquet engine: MissingExtraError when absent
    frame = pd.read_parquet(file)
    missing = {"sentence1", "sentence2", "label"} - set(frame.columns)
    if missing:
        raise ConfigurationError(f"{file} lacks the columns {sorted(missing)}; use the GLUE "
                                 "MRPC Parquet files (sentence1, sentence2, label)")
    return [_pair(a, b, c, file, i) for i, (a, b, c) in
            enumerate(frame[["sentence1", "sentence2", "label"]].itertuples(index=False))]


def _from_datasets(split: str) -> list[SentencePair]:
    datasets = import_extra("datasets", "mrpc")
    try:
        rows = datasets.load_dataset("nyu-mll/glue", "mrpc", split=split)
    except Exception as exc:  # noqa: BLE001 — datasets raises many types for "not reachable"
        raise ConfigurationError(
            f"could not load GLUE MRPC through `datasets`: {str(exc).rstrip('.')}. Without the "
            "Hugging Face hub, "
            "download MRPC elsewhere and set task.path to the folder with train.tsv/dev.tsv or "
            "the Parquet files") from exc
    return [_pair(r["sentence1"], r["sentence2"], r["label"], "datasets:glue/mrpc", i)
            for i, r in enumerate(rows)]


class PairsSection(BaseModel):
    """``[task] kind = "mrpc"`` or ``"paraphrase"``: sentence pairs, paraphrase or not.

    ``path``: MRPC files (see ``load_mrpc``; ``mrpc`` only); absent means ``datasets``.
    ``format``: ``"classifier"`` (labels "1"/"0", the local sequence classifier) or
    ``"completion"`` (" yes"/" no", a causal LM such as Llama-3.2-1B on Tinker). ``train_size``:
    use the first this many training pairs (0: all; the generated set has 2,000 by default).
    ``positive_rate``: the generated set's share of paraphrases. Shocks flip labels.
    """

    model_config = STRICT
    kind: Literal["mrpc", "paraphrase"]
    path: str | None = None
    format: Literal["classifier", "completion"] = "classifier"
    train_size: int = Field(default=0, ge=0, le=10_000_000)
    positive_rate: float = Field(default=0.6, gt=0.0, lt=1.0)
    max_eval_size: ClassVar[int | None] = None
    shock_kinds: ClassVar[tuple[str, ...]] = (PAIR_SHOCK,)
    shift_rules: ClassVar[tuple[str, ...]] = ()

    @property
    def needs_classifier(self) -> bool:
        """Whether the task trains the local sequence classifier (not a causal LM)."""
        return self.format == "classifier"

    @model_validator(mode="after")
    def _check_path(self) -> PairsSection:
        if self.kind == "paraphrase" and self.path is not None:
            raise ValueError("task.path reads MRPC files, but task.kind = 'paraphrase' is "
                             "generated; remove task.path or set task.kind = 'mrpc'")
        return self

    def build(self, *, seed: int, eval_size: int, rule: str | None = None) -> PairTask:
        """Load (MRPC) or generate (paraphrase) the pairs (a pair task has no other rule).

        Raises:
            ConfigurationError, MissingExtraError: as ``load_mrpc``.
        """
        if self.kind == "mrpc":
            train = load_mrpc("train", self.path)
            eval_pairs = load_mrpc("validation", self.path)[:eval_size]
        else:
            train = generate_pairs(self.train_size or 2000, "train", self.positive_rate)
            eval_pairs = generate_pairs(eval_size, "eval", self.positive_rate)
        return PairTask(train[: self.train_size or None], eval_pairs, fmt=self.format, seed=seed)
