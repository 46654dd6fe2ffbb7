"""The Tinker service's semantics on local engines: sessions, models, checkpoints, samplers.

Handlers (``app.py``) parse and authenticate; this module decides what each request does and
hands the heavy part to the scheduler as a job that runs on the worker thread. Requests are
already-validated SDK types (``tinker.types``), so field names match the wire exactly.

This module is longer than 300 lines on purpose: it is the one place that says what each kind of
Tinker request does, over bookkeeping (sessions, models, checkpoints) that they all share;
splitting it by request would split that state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinker import types

from ulora_remote.backend import Datum
from ulora_remote.errors import InputError

from .checkpoints import CheckpointIndex, CheckpointRecord, RunRecord, check_name
from .config import ServerConfig
from .counters import Counters
from .engine import (
    Engine,
    EngineSpec,
    local_engine_factory,
)
from .limits import adam_params
from .runs import checkpoint_json, training_run_json, weights_info_json
from .samplers import SamplerPool
from .sampling import batch_key, check_supported, max_tokens_of, run_sample, run_sample_batch
from .scheduler import Batch, JobError, ModelGone, Outcome, Scheduler
from .served import ServedModel
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
    last_request_s: float = field(default_factory=time.time)


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
        self._served: ServedModel | None = None
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

    def served(self) -> ServedModel:
        """The served base model, read from a probe engine built on first use."""
        if self._served is None:
            self._served = ServedModel(self.config.base_model, self._build("probe", 1, 0))
        return self._served

    @property
    def base_model_name(self) -> str:
        return self.served().name

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
        self.served().check_name(req.base_model)
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
        self._record_run(model, req.base_model, req.user_metadata)

        def run() -> Outcome:
            self._check_open(model)
            model.engine = self._build(model.model_id, model.rank, model.seed)
            self.counters.add_model(model.model_id)
            return Outcome({"model_id": model.model_id, "type": "create_model"})

        return self.scheduler.submit(run, gate=lambda: self._admit(model))

    def _record_run(
        self, model: _Model, base_model: str, user_metadata: dict[str, Any] | None
    ) -> None:
        meta = None if user_metadata is None else {k: str(v) for k, v in user_metadata.items()}
        self.index.put_run(RunRecord(model.model_id, base_model, model.rank, time.time(), meta))

    def model(self, model_id: str) -> _Model:
        model = self._models.get(model_id)
        if model is None:
            raise ModelGone(f"model {model_id!r} does not exist on this server", lost=False)
        if self.scheduler.is_lost(model_id):
            raise ModelGone(f"model {model_id!r} lost its state; load a checkpoint", lost=True)
        self.session(model.session_id)  # a finished session's models take no more work (410)
        model.last_request_s = time.time()
        return model

    def _engine(self, model: _Model) -> Engine:
        if model.engine is None:
            raise JobError(f"model {model.model_id} has no engine (session finished?)")
        return model.engine

    def get_info(self, model_id: str) -> dict[str, Any]:
        """The answer of ``get_info``: ``tokenizer_id`` is a local directory, so the SDK's
        ``get_tokenizer()`` loads it without the Hugging Face hub."""
        model = self.model(model_id)
        served = self.served()
        return {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "arch": "llama",
                "model_name": served.name,
                "tokenizer_id": served.tokenizer_dir,
            },
            "is_lora": True,
            "lora_rank": model.rank,
            "model_name": served.name,
        }

    def forward_backward(self, call: FwdBwdCall) -> str:
        model = self.model(call.model_id)
        self.served().check_tokens(call.datums)
        self.served().check_context([len(d.input_tokens) for d in call.datums], "datum")

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
        params = adam_params(p)

        def run() -> Outcome:
            result = self._engine(model).optim_step(params).result()
            self.counters.increment(model.model_id, "optim_step")
            metrics = {} if result.grad_norm is None else {"grad_norm:mean": result.grad_norm}
            return Outcome({"metrics": metrics})

        return self.scheduler.submit_ordered(model.model_id, req.seq_id, run)

    # ---- checkpoints -------------------------------------------------------------------

    def _save(self, model: _Model, kind: str, name: str, overwrite: bool) -> str:
        """Save ``model`` as ``tinker://{model}/{kind}/{name}`` (worker thread).

        Raises:
            JobError: the path exists and ``overwrite`` is False.
        """
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
                created_s=time.time(),
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

    def save_weights_external(self, req: types.SaveWeightsExternalRequest) -> str:
        """Export the weights as ``tinker://{model}/external_weights/{name}``: the engine's
        checkpoint directory (safetensors), listed in ``index.json`` with its local path."""
        model = self.model(req.model_id)
        name = check_name(req.path)
        if req.age_encryption_recipients:
            raise InputError("ulora serve does not encrypt exports; omit age_encryption_recipients")

        def run() -> Outcome:
            path = self._save(model, "external_weights", name, False)
            size = checkpoint_json(self.index.get(path))["size_bytes"]
            return Outcome({"path": path, "size_bytes": size, "type": "save_weights_external"})

        return self.scheduler.submit_ordered(model.model_id, req.seq_id, run)

    def training_run(self, model_id: str) -> dict[str, Any]:
        """``GET /api/v1/training_runs/{id}``, also for runs of earlier server processes."""
        run = self.index.run(model_id)
        if run is None:
            raise ModelGone(f"training run {model_id!r} is not known to this server", lost=False)
        model = self._models.get(model_id)
        checkpoints = self.index.of_model(model_id)
        last = model.last_request_s if model is not None else max(
            [run.created_s, *(c.created_s for c in checkpoints)]
        )
        return training_run_json(run, checkpoints, last)

    def list_checkpoints(self, model_id: str) -> dict[str, Any]:
        """``GET /api/v1/training_runs/{id}/checkpoints``."""
        if self.index.run(model_id) is None:
            raise ModelGone(f"training run {model_id!r} is not known to this server", lost=False)
        return {"checkpoints": [checkpoint_json(c) for c in self.index.of_model(model_id)]}

    def weights_info(self, path: str) -> dict[str, Any]:
        """``POST /api/v1/weights_info``: what loading ``path`` needs."""
        info = weights_info_json(self.index.get(path))
        info["base_model"] = self.base_model_name
        return info

    def load_weights(self, req: types.LoadWeightsRequest) -> str:
        """Either create a model from a checkpoint (its first request) or, legacy, load into a
        model right after its creation."""
        record = self.index.get(req.path)
        if req.session_id is not None:
            if req.model_seq_id is None:
                raise InputError("load_weights with session_id needs model_seq_id")
            self.served().check_name(req.base_model)
            model = self._register(req.session_id, req.model_seq_id, record.rank, 0)
            self._record_run(model, req.base_model or self.base_model_name, req.user_metadata)

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
            self.served().check_name(req.base_model)
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
                self.served().check_name(req.base_model)
            else:
                self.index.get(path)  # a bad or unknown path fails now, with a 4xx
        if not 1 <= req.num_samples <= 64:
            raise InputError(f"num_samples={req.num_samples} must be in [1, 64]")
        check_supported(req)
        try:
            prompt = req.prompt.to_ints()
        except Exception as exc:  # image chunks cannot become token ids
            raise InputError(f"the prompt must be token ids only: {exc}") from exc
        self.served().check_tokens([Datum(tuple(prompt), tuple(prompt), (0.0,) * len(prompt))])
        # The last sampled token is never fed back, so n prompt tokens and k new ones need
        # n + k - 1 positions.
        needed = len(prompt) + max_tokens_of(req) - 1
        self.served().check_context([needed], "prompt + max_tokens - 1 of sample")

        def run() -> Outcome:
            return Outcome(run_sample(self.samplers.engine_for(path), req))

        def run_many(reqs: list[types.SampleRequest]) -> list[Outcome]:
            engine = self.samplers.engine_for(path)  # one weight load for the whole batch
            return [Outcome(body) for body in run_sample_batch(engine, reqs)]

        key = batch_key(req)
        batch = None if key is None else Batch(("sample", path, key), req, run_many)
        request_id = self.scheduler.submit(run, batch=batch)
        return request_id, [f"{request_id}:{i}" for i in range(req.num_samples)]
