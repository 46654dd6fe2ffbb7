"""The Tinker service's semantics on local engines: sessions, models, checkpoints, samplers.

Handlers (``app.py``) parse and authenticate; this module decides what each request does and
hands the heavy part to the scheduler as a job that runs on the worker thread. Requests are
already-validated SDK types (``tinker.types``), so field names match the wire exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinker import types

from ulora_remote.backend import AdamParams, Datum
from ulora_remote.errors import InputError

from .checkpoints import CheckpointIndex, CheckpointRecord, check_name
from .config import ServerConfig
from .counters import Counters
from .engine import (
    Engine,
    EngineSpec,
    local_engine_factory,
)
from .samplers import SamplerPool
from .sampling import batch_key, check_supported, run_sample, run_sample_batch
from .scheduler import Batch, JobError, ModelGone, Outcome, Scheduler
from .wire import FwdBwdCall, encode_forward_backward_output

__all__ = ["Service"]

logger = logging.getLogger(__name__)


@dataclass
class _Model:
    model_id: str
    session_id: str
    rank: int
    seed: int
    engine: Engine | None = None
    ephemeral: int = 0


@dataclass
class _Session:
    session_id: str
    finished: bool = False
    models: list[str] = field(default_factory=list)


class Service:
    """Server state: what exists, and the jobs that change it."""

    def __init__(self, config: ServerConfig, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        self.counters = Counters()
        self.index = CheckpointIndex(config.checkpoint_dir)
        self._factory = config.engine_factory or local_engine_factory
        self._sessions: dict[str, _Session] = {}
        self._models: dict[str, _Model] = {}
        self.samplers = SamplerPool(self.index, self._build)
        self._probe: Engine | None = None
        # Model creation limits (ServerConfig.max_live_models / refuse_creates).
        self._live: set[str] = set()  # admitted models whose session is not finished
        self.peak_live_models = 0
        self.creates_refused = 0

    # ---- model construction (worker thread) -------------------------------------------

    def _build(self, model_id: str, rank: int, seed: int) -> Engine:
        spec = EngineSpec(
            base_model=self.config.base_model,
            rank=rank,
            seed=seed,
            checkpoint_dir=self.index.model_dir(model_id),
            lora_alpha=self.config.lora_alpha,
            threads=self.config.threads,
        )
        return self._factory(spec)

    def probe(self) -> Engine:
        """An engine used only for the served model's name and tokenizer (built once)."""
        if self._probe is None:
            self._probe = self._build("probe", 1, 0)
        return self._probe

    @property
    def base_model_name(self) -> str:
        return str(self.probe().base_model_name)

    def close(self) -> None:
        """Drop every engine (memory); counters and checkpoints stay readable."""
        for model in self._models.values():
            model.engine = None
        self.samplers = SamplerPool(self.index, self._build)

    # ---- sessions ----------------------------------------------------------------------

    def create_session(self) -> str:
        session_id = f"s{self.index.next_session_number():05d}"
        self._sessions[session_id] = _Session(session_id)
        return session_id

    def session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise ModelGone(f"session {session_id!r} does not exist", lost=False)
        if session.finished:
            raise ModelGone(f"session {session_id!r} is finished", lost=True)
        return session

    def finish_session(self, session_id: str) -> None:
        """Mark the session finished and release its engines (checkpoints stay)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise ModelGone(f"session {session_id!r} does not exist", lost=False)
        session.finished = True
        for model_id in session.models:
            model = self._models.get(model_id)
            if model is not None:
                model.engine = None
            self._live.discard(model_id)
        self.scheduler.wake()  # a creation waiting for a free slot may start now

    # ---- model creation limits ---------------------------------------------------------

    def refuse_create(self) -> bool:
        """True while the first ``refuse_creates`` model creations are still to be refused."""
        if self.creates_refused >= self.config.refuse_creates:
            return False
        self.creates_refused += 1
        return True

    def _admit(self, model: _Model) -> bool:
        """The gate of a model creation: admit it while fewer than ``max_live_models`` are live
        (event loop). A model whose session already finished passes, to fail at once."""
        if self._sessions[model.session_id].finished:
            return True
        limit = self.config.max_live_models
        if limit is not None and len(self._live) >= limit:
            return False
        self._live.add(model.model_id)
        self.peak_live_models = max(self.peak_live_models, len(self._live))
        return True

    def _check_open(self, model: _Model) -> None:
        if self._sessions[model.session_id].finished:
            raise JobError(f"session {model.session_id} finished before {model.model_id} started")

    # ---- training models ---------------------------------------------------------------

    def _check_base_model(self, base_model: str | None) -> None:
        if base_model is not None and base_model not in (
            self.base_model_name,
            self.config.base_model,
        ):
            raise InputError(
                f"base model {base_model!r} is not served here; this server serves "
                f"{self.base_model_name!r} (see get_server_capabilities)"
            )

    def _register(self, session_id: str, model_seq_id: int, rank: int, seed: int) -> _Model:
        session = self.session(session_id)
        model_id = f"{session_id}:train:{model_seq_id}"
        if model_id in self._models:
            raise JobError(f"model {model_id} already exists")
        model = _Model(model_id, session_id, rank, seed)
        self._models[model_id] = model
        session.models.append(model_id)
        self.scheduler.open_model(model_id)
        return model

    def create_model(self, req: types.CreateModelRequest) -> str:
        """Queue the creation of a LoRA model; the future's result is its model id."""
        self._check_base_model(req.base_model)
        lora = req.lora_config or types.LoraConfig(rank=32)
        if not 1 <= lora.rank <= 1024:
            raise InputError(f"lora rank {lora.rank} must be in [1, 1024]")
        if not (lora.train_mlp and lora.train_attn):
            # The local engine puts LoRA on every linear layer; a subset would be a silent lie.
            raise InputError(
                "ulora serve trains LoRA on all linear layers; leave train_mlp and "
                "train_attn at True"
            )
        if req.optimizer_config.type != "adamw":
            raise InputError(f"optimizer {req.optimizer_config.type!r} is not supported; use adamw")
        model = self._register(req.session_id, req.model_seq_id, lora.rank, lora.seed or 0)

        def run() -> Outcome:
            self._check_open(model)
            model.engine = self._build(model.model_id, model.rank, model.seed)
            self.counters.add_model(model.model_id)
            return Outcome({"model_id": model.model_id, "type": "create_model"})

        return self.scheduler.submit(run, gate=lambda: self._admit(model))

    def model(self, model_id: str) -> _Model:
        model = self._models.get(model_id)
        if model is None:
            raise ModelGone(f"model {model_id!r} does not exist on this server", lost=False)
        if self.scheduler.is_lost(model_id):
            raise ModelGone(f"model {model_id!r} lost its state; load a checkpoint", lost=True)
        self.session(model.session_id)  # a finished session's models take no more work (410)
        return model

    def _engine(self, model: _Model) -> Engine:
        if model.engine is None:
            raise JobError(f"model {model.model_id} has no engine (session finished?)")
        return model.engine

    def get_info(self, model_id: str) -> dict[str, Any]:
        """The answer of ``get_info``: ``tokenizer_id`` is a local directory, so the SDK's
        ``get_tokenizer()`` loads it without the Hugging Face hub."""
        model = self.model(model_id)
        probe = self.probe()
        return {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "arch": "llama",
                "model_name": str(probe.base_model_name),
                "tokenizer_id": str(probe.tokenizer_dir),
            },
            "is_lora": True,
            "lora_rank": model.rank,
            "model_name": str(probe.base_model_name),
        }

    def forward_backward(self, call: FwdBwdCall) -> str:
        model = self.model(call.model_id)
        self.token_check(call.datums)

        def run() -> Outcome:
            engine = self._engine(model)
            datums = list(call.datums)
            if call.forward_only:
                result = engine.forward_datums(datums).result()
            else:
                result = engine.forward_backward_datums(datums).result()
            kind = "forward" if call.forward_only else "forward_backward"
            self.counters.increment(model.model_id, kind)
            loss_sum = float(sum(result.nll_sums))
            return Outcome(encode_forward_backward_output(datums, result.logprobs, loss_sum))

        return self.scheduler.submit_ordered(model.model_id, call.seq_id, run)

    def optim_step(self, req: types.OptimStepRequest) -> str:
        model = self.model(req.model_id)
        p = req.optim_params
        if not isinstance(p, types.AdamParams):
            raise InputError("only AdamParams are supported by ulora serve")
        params = AdamParams(
            learning_rate=p.learning_rate,
            beta1=p.beta1,
            beta2=p.beta2,
            eps=p.eps,
            weight_decay=p.weight_decay,
            grad_clip_norm=p.grad_clip_norm,
        )

        def run() -> Outcome:
            result = self._engine(model).optim_step(params).result()
            self.counters.increment(model.model_id, "optim_step")
            metrics = {} if result.grad_norm is None else {"grad_norm:mean": result.grad_norm}
            return Outcome({"metrics": metrics})

        return self.scheduler.submit_ordered(model.model_id, req.seq_id, run)

    # ---- checkpoints -------------------------------------------------------------------

    def _save(self, model: _Model, kind: str, name: str, overwrite: bool) -> str:
        """Save ``model`` as ``tinker://{model}/{kind}/{name}`` (worker thread)."""
        path = f"tinker://{model.model_id}/{kind}/{check_name(name)}"
        if self.index.exists(path) and not overwrite:
            raise JobError(f"checkpoint {path} exists; choose a new name or pass overwrite=True")
        local = self._engine(model).save_state(f"{kind}-{name}")
        self.samplers.invalidate(path)
        counts = self.counters.get(model.model_id)
        self.index.put(
            CheckpointRecord(
                path=path,
                local_dir=str(Path(local).resolve()),
                rank=model.rank,
                base_model=self.config.base_model,
                forward_backward=counts.lineage_forward_backward,
                optim_step=counts.lineage_optim_step,
            )
        )
        return path

    def save_weights(self, req: types.SaveWeightsRequest) -> str:
        model = self.model(req.model_id)
        name = check_name(req.path if req.path is not None else f"ckpt-{req.seq_id}")

        def run() -> Outcome:
            path = self._save(model, "weights", name, req.overwrite)
            return Outcome({"path": path, "type": "save_weights"})

        return self.scheduler.submit_ordered(model.model_id, req.seq_id, run)

    def save_weights_for_sampler(self, req: types.SaveWeightsForSamplerRequest) -> str:
        """Named: save sampler weights, result ``{path}``. Unnamed: snapshot the weights into a
        new sampling session, result ``{sampling_session_id}``."""
        model = self.model(req.model_id)
        name = check_name(req.path) if req.path is not None else None
        if name is None and req.sampling_session_seq_id is None:
            raise InputError("save_weights_for_sampler needs a path or a sampling_session_seq_id")

        def run() -> Outcome:
            if name is not None:
                path = self._save(model, "sampler_weights", name, False)
                return Outcome({"path": path, "type": "save_weights_for_sampler"})
            model.ephemeral += 1
            path = self._save(model, "sampler_weights", f"ephemeral-{model.ephemeral}", True)
            sampler_id = f"{model.session_id}:sample:{req.sampling_session_seq_id}"
            self.samplers.register(sampler_id, path)
            return Outcome({"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"})

        return self.scheduler.submit_ordered(model.model_id, req.seq_id, run)

    def load_weights(self, req: types.LoadWeightsRequest) -> str:
        """Either create a model from a checkpoint (its first request) or, legacy, load into a
        model right after its creation."""
        record = self.index.get(req.path)
        if req.session_id is not None:
            if req.model_seq_id is None:
                raise InputError("load_weights with session_id needs model_seq_id")
            self._check_base_model(req.base_model)
            model = self._register(req.session_id, req.model_seq_id, record.rank, 0)

            def create() -> Outcome:
                self._check_open(model)
                model.engine = self._build(model.model_id, model.rank, model.seed)
                model.engine.load_state(record.local_dir, optimizer=req.optimizer)
                inherited = (record.forward_backward, record.optim_step)
                self.counters.add_model(model.model_id, loaded_from=req.path, inherited=inherited)
                return Outcome(
                    {"path": req.path, "model_id": model.model_id, "type": "load_weights"}
                )

            return self.scheduler.submit(create, gate=lambda: self._admit(model))
        if req.model_id is None:
            raise InputError("load_weights needs model_id or session_id")
        model = self.model(req.model_id)
        if record.rank != model.rank:
            raise InputError(f"checkpoint rank {record.rank} differs from the model's {model.rank}")

        def load() -> Outcome:
            self._engine(model).load_state(record.local_dir, optimizer=req.optimizer)
            return Outcome({"path": req.path, "model_id": model.model_id, "type": "load_weights"})

        return self.scheduler.submit_ordered(model.model_id, req.seq_id, load)

    # ---- sampling ----------------------------------------------------------------------

    def create_sampling_session(self, req: types.CreateSamplingSessionRequest) -> str:
        self.session(req.session_id)
        if req.model_path is not None:
            self.index.get(req.model_path)
        else:
            self._check_base_model(req.base_model)
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        self.samplers.register(sampler_id, req.model_path)
        return sampler_id

    def get_sampler(self, sampler_id: str) -> dict[str, Any]:
        return self.samplers.describe(sampler_id, self.base_model_name)

    def asample(self, req: types.SampleRequest) -> tuple[str, list[str]]:
        """Queue a sampling request; return its request id and one sequence id per sample."""
        if req.sampling_session_id is not None:
            path = self.samplers.path_of(req.sampling_session_id)
        else:
            path = req.model_path
            if path is None:
                self._check_base_model(req.base_model)
            else:
                self.index.get(path)  # a bad or unknown path fails now, with a 4xx
        if not 1 <= req.num_samples <= 64:
            raise InputError(f"num_samples={req.num_samples} must be in [1, 64]")
        check_supported(req)
        try:
            prompt = req.prompt.to_ints()
        except Exception as exc:  # image chunks cannot become token ids
            raise InputError(f"the prompt must be token ids only: {exc}") from exc
        self.token_check([Datum(tuple(prompt), tuple(prompt), (0.0,) * len(prompt))])

        def run() -> Outcome:
            return Outcome(run_sample(self.samplers.engine_for(path), req))

        def run_many(reqs: list[types.SampleRequest]) -> list[Outcome]:
            engine = self.samplers.engine_for(path)  # one weight load for the whole batch
            return [Outcome(body) for body in run_sample_batch(engine, reqs)]

        key = batch_key(req)
        batch = None if key is None else Batch(("sample", path, key), req, run_many)
        request_id = self.scheduler.submit(run, batch=batch)
        return request_id, [f"{request_id}:{i}" for i in range(req.num_samples)]

    def token_check(self, datums: Sequence[Datum]) -> None:
        """Reject token ids outside the vocabulary before they reach the engine."""
        vocab = getattr(self.probe(), "vocab_size", None)
        if vocab is None:
            return
        for i, d in enumerate(datums):
            if any(not 0 <= t < vocab for t in (*d.input_tokens, *d.target_tokens)):
                raise InputError(f"datum {i}: token ids must be in [0, {vocab})")
