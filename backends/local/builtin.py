"""The built-in base models: small Llama-architecture configs, pre-trained in code, cached on disk.

A LoRA on a randomly initialised base does not learn (we measured q/v LoRA stuck at loss 2–3
after 1,500 steps), so each built-in base gets a short, deterministic generic pre-training: full
fine-tuning on three transforms of random lowercase strings, told apart by the arrow: copy
(``"qzx ->"`` → ``" qzx"``), reverse (``"qzx <-"`` → ``" xzq"``) and rotate by one
(``"qzx =>"`` → ``" zxq"``). That teaches attention to find, copy and reorder characters of the
prompt, which a LoRA then bends into Pig Latin. Measured on "medium" with LoRA r=8 at lr 2e-3
(README): the mix reached a held-out Pig Latin loss of 0.15 after 350 steps where copying alone
(same 600 pre-training steps) was at 0.62. "small" pre-trains on copying only (see _RECIPES).

The result is cached under ``cache_dir/builtin-<size>-<key>`` where ``key`` hashes the config, the
recipe, the vocabulary and torch's major.minor version; only the first use pays. Pre-training
always runs on CPU with one thread and deterministic algorithms, so the cached weights do not depend
on the caller's device, thread count or torch settings (and two processes racing to build the same
entry write the same bits).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ulora_remote.errors import ConfigurationError
from ulora_remote.extras import import_names

from .progress import PretrainReport, Progress, stderr_progress
from .tokenizer import CHAR_VOCAB, EOS_TOKEN, build_char_tokenizer, save_char_tokenizer

__all__ = [
    "BUILTIN_SIZES",
    "PretrainRecipe",
    "build_builtin_model",
    "builtin_cache_path",
    "load_builtin",
]

_FORMAT = 2  # bump when the on-disk layout or the meaning of the recipe changes

#: LlamaConfig fields per size. "small" is for tests (pre-trains in seconds on one thread);
#: "medium" is the default scenario's base model.
BUILTIN_SIZES: dict[str, dict[str, Any]] = {
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64),
    "medium": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128),
}


#: the pre-training transforms: the arrow that asks for each, and what it does to the letters.
_TRANSFORMS: dict[str, tuple[str, Any]] = {
    "copy": (" ->", lambda w: w),
    "reverse": (" <-", lambda w: w[::-1]),
    "rotate": (" =>", lambda w: w[1:] + w[:1]),
}


@dataclass(frozen=True)
class PretrainRecipe:
    """The generic pre-training: full fine-tuning on transforms of random lowercase strings."""

    steps: int
    tasks: tuple[str, ...] = ("copy", "reverse", "rotate")
    batch_size: int = 32
    lr: float = 3e-3
    min_len: int = 1
    max_len: int = 10
    seed: int = 1234


# Measured (README): the small model learns Pig Latin faster after copying alone (held-out loss
# 0.38 after 400 LoRA steps, vs 0.61 after the mix); medium gains from the mix (0.11 vs 0.29
# after 700 steps).
_RECIPES = {
    "small": PretrainRecipe(steps=300, tasks=("copy",)),
    "medium": PretrainRecipe(steps=600),
}


def _llama_config(size: str) -> Any:
    (LlamaConfig,) = import_names("transformers", "local", "LlamaConfig")

    return LlamaConfig(
        vocab_size=len(CHAR_VOCAB), pad_token_id=CHAR_VOCAB["<pad>"],
        bos_token_id=CHAR_VOCAB["<bos>"], eos_token_id=CHAR_VOCAB[EOS_TOKEN],
        tie_word_embeddings=False, rms_norm_eps=1e-5,
        attention_dropout=0.0, **BUILTIN_SIZES[size],
    )


def _cache_key(size: str) -> str:
    import torch

    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    blob = json.dumps(
        {"format": _FORMAT, "config": BUILTIN_SIZES[size], "recipe": asdict(_RECIPES[size]),
         "vocab": CHAR_VOCAB, "torch": torch_mm},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$ULORA_CACHE_DIR``, else ``~/.cache/ulora-remote``."""
    env = os.environ.get("ULORA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ulora-remote"


def builtin_cache_path(size: str, cache_dir: str | Path | None = None) -> Path:
    """The directory where the pre-trained built-in model of ``size`` is (or will be) cached.

    Raises:
        ConfigurationError: ``size`` is not one of ``BUILTIN_SIZES``.
    """
    if size not in BUILTIN_SIZES:
        raise ConfigurationError(
            f"unknown built-in model size {size!r}; choose one of {sorted(BUILTIN_SIZES)} "
            "or pass the path of a local Hugging Face model directory"
        )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"builtin-{size}-{_cache_key(size)}"


def _pretrain_batch(gen: Any, recipe: PretrainRecipe) -> tuple[Any, Any, Any]:
    """One batch of the transform tasks as right-padded (inputs, targets, weights) tensors."""
    import torch

    letters = [CHAR_VOCAB[c] for c in "abcdefghijklmnopqrstuvwxyz"]
    bos, eos, pad = CHAR_VOCAB["<bos>"], CHAR_VOCAB[EOS_TOKEN], CHAR_VOCAB["<pad>"]
    lens = torch.randint(recipe.min_len, recipe.max_len + 1, (recipe.batch_size,), generator=gen)
    kinds = torch.randint(0, len(recipe.tasks), (recipe.batch_size,), generator=gen)
    rows, n_prompt = [], []
    for n, kind in zip(lens.tolist(), kinds.tolist(), strict=True):
        arrow, transform = _TRANSFORMS[recipe.tasks[kind]]
        word = [letters[i] for i in torch.randint(0, 26, (n,), generator=gen).tolist()]
        prompt = [bos, *word, *(CHAR_VOCAB[c] for c in arrow)]
        rows.append(prompt + [CHAR_VOCAB[" "], *transform(word), eos])
        n_prompt.append(len(prompt))
    width = max(len(r) for r in rows) - 1
    inputs = torch.full((len(rows), width), pad)
    targets = torch.full((len(rows), width), pad)
    weights = torch.zeros((len(rows), width))
    for i, (row, p) in enumerate(zip(rows, n_prompt, strict=True)):
        inputs[i, : len(row) - 1] = torch.tensor(row[:-1])
        targets[i, : len(row) - 1] = torch.tensor(row[1:])
        weights[i, p - 1 : len(row) - 1] = 1.0  # completion and EOS targets only
    return inputs, targets, weights


def _pretrain(size: str, report: PretrainReport) -> Any:
    """Build the model of ``size`` and run its recipe; CPU, one thread, private RNG state."""
    import torch
    (LlamaForCausalLM,) = import_names("transformers", "local", "LlamaForCausalLM")

    recipe = _RECIPES[size]
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as under LocalBackend
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = LlamaForCausalLM(_llama_config(size))
        gen = torch.Generator().manual_seed(recipe.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                weight_decay=0.0)
        for step in range(recipe.steps):
            for group in opt.param_groups:  # linear decay to 10% keeps the end of training calm
                group["lr"] = recipe.lr * (1.0 - 0.9 * step / recipe.steps)
            inputs, targets, weights = _pretrain_batch(gen, recipe)
            logits = model(input_ids=inputs).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, reduction="none"
            )
            loss = (nll * weights).sum() / weights.sum()
            loss.backward()
            report.step(step, float(loss.detach()))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    return model


def _save_model(model: Any, directory: Path) -> None:
    """``config.json`` + ``model.safetensors``: what ``from_pretrained`` reads (no progress bar)."""
    from safetensors.torch import save_file

    model.config.save_pretrained(str(directory))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def build_builtin_model(size: str = "small", cache_dir: str | Path | None = None,
                        progress: Progress | None = stderr_progress) -> Path:
    """Return the directory of the pre-trained built-in model, building it on first use.

    The directory holds a Hugging Face model (``config.json``, ``model.safetensors``), the
    character tokenizer and ``recipe.json``; load it with ``load_builtin`` or with
    ``from_pretrained(local_files_only=True)``.
    It is written into a temporary sibling, fsynced, then renamed, so a crash never leaves a
    half-written cache entry. An entry whose ``recipe.json`` records another vocabulary (or none)
    is rebuilt, never reused.

    Args:
        size: "small" or "medium".
        cache_dir: cache root; default ``$ULORA_CACHE_DIR`` or ``~/.cache/ulora-remote``.
        progress: gets a line when a pre-training starts, about every 5 s while it runs, and
            when the entry is cached (default: stderr; None: quiet). A cache hit says nothing.

    Returns:
        The cache entry's directory.

    Raises:
        ConfigurationError: unknown size.
    """
    target = builtin_cache_path(size, cache_dir)
    if _is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _discard_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    report = PretrainReport(progress, size, _RECIPES[size].steps, target)
    try:
        start = time.perf_counter()
        report.start()
        model = _pretrain(size, report)
        _save_model(model, tmp)
        save_char_tokenizer(build_char_tokenizer(), tmp)
        meta = {"size": size, "key": target.name, "recipe": asdict(_RECIPES[size]),
                "vocab": CHAR_VOCAB, "pretrain_s": round(time.perf_counter() - start, 3)}
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_current(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.done()
    return target


def _is_current(entry: Path) -> bool:
    """Whether ``entry`` is a complete cache entry built on today's vocabulary (the key hashes
    the vocabulary too; this also catches an entry copied or renamed by hand)."""
    try:
        meta = json.loads((entry / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("vocab") == CHAR_VOCAB


def _discard_stale(entry: Path) -> None:
    """Move a stale or incomplete ``entry`` aside and delete it, so a fresh build can take its
    place. Checked again here: a concurrent process may have put a current entry there."""
    if not entry.exists() or _is_current(entry):
        return
    trash = Path(tempfile.mkdtemp(prefix=f".stale-{entry.name}-", dir=entry.parent))
    try:
        os.rename(entry, trash / "old")
    except FileNotFoundError:
        pass
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def load_builtin(directory: Path) -> Any:
    """Load a cache entry written by ``build_builtin_model`` (safetensors, no pickle, no
    progress bar); the model is in eval mode on CPU."""
    import torch
    from safetensors.torch import load_file
    LlamaConfig, LlamaForCausalLM = import_names(
        "transformers", "local", "LlamaConfig", "LlamaForCausalLM")

    config = LlamaConfig.from_pretrained(str(directory))
    with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the caller's RNG
        model = LlamaForCausalLM(config)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()
