"""``--dry-run``: the requests, tokens and an estimated price of a sweep, before anything starts.

Counted per run from its scenario alone, for the part that this invocation would run (nothing for
a finished run; from its last checkpoint for a started one). Batches are a pure function of the
seed and the step, so every training and evaluation example is rendered exactly as the run would
send it (``render_example``: prompt with BOS, completion with EOS; a datum has n − 1 input tokens):

- ``train``: the input tokens of every ``forward_backward`` batch;
- ``prefill``: forward-only passes (each evaluation's batch, and a guard's screening of every
  batch) and the prompts of the evaluation samples;
- ``sample``: ``eval.size × eval.max_tokens`` per evaluation, an upper bound (greedy generation
  stops at EOS or a newline).

Requests: the client's start (1), ``forward_backward`` and ``optim_step`` per step, ``forward``,
``sample`` (one per evaluation example), ``save_weights_for_sampler`` (one per evaluation) and
``save_state`` (checkpoints; stability snapshots as an upper bound). A guard's probations
(a snapshot, trial steps that are counted as ordinary steps, at most one rollback) depend on the
data and are not counted.

Tokens come from the backend's tokenizer where it is at hand: the built-in character tokenizer
(also when ``ulora serve`` serves a built-in model), ``backend.tokenizer`` on Tinker, the model
directory of a local Hugging Face model. Otherwise they are approximated as UTF-8 bytes / 4 and
marked ``≈``. Prices are USD per million tokens from a TOML price table (``prices.toml`` in this
package holds placeholders, not real prices; see docs/sweeps.md).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ulora_remote.errors import ConfigurationError
from ulora_remote.run.rundir import RunDir
from ulora_remote.study.sweep_run import RunSpec, plan_action

__all__ = ["PriceTable", "Rates", "RunEstimate", "estimate_runs", "format_estimate",
           "load_prices"]

KINDS = ("train", "prefill", "sample")


class Rates(BaseModel):
    """USD per million tokens of each kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prefill: float = Field(ge=0.0)
    sample: float = Field(ge=0.0)
    train: float = Field(ge=0.0)


class PriceTable(BaseModel):
    """A price table file: where its numbers come from, and rates by base model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(min_length=1)
    placeholder: bool = False
    default: Rates | None = None
    models: dict[str, Rates] = Field(default_factory=dict)

    def rates(self, base_model: str) -> Rates | None:
        return self.models.get(base_model, self.default)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The price table at ``path``, or the shipped placeholder table.

    Raises:
        ConfigurationError: the file is missing, not TOML, or not a price table.
    """
    if path is None:
        text = resources.files("ulora_remote.study").joinpath("prices.toml").read_text("utf-8")
        where = "the shipped prices.toml"
    else:
        try:
            text, where = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ConfigurationError(f"--prices {path}: cannot read it ({exc})") from exc
    try:
        return PriceTable.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigurationError(
            f"{where} is not a price table: {exc}; see docs/sweeps.md for the format"
        ) from exc


@dataclass
class RunEstimate:
    """What one run would ask of the service in this invocation."""

    spec: RunSpec
    action: str
    base_model: str
    backend: str
    requests: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    exact: bool = True

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def price(self, table: PriceTable) -> float | None:
        rates = table.rates(self.base_model)
        if rates is None or self.backend == "local":
            return None
        return sum(self.tokens[k] * getattr(rates, k) for k in KINDS) / 1e6


def estimate_runs(specs: Sequence[RunSpec]) -> list[RunEstimate]:
    """One estimate per run (finished runs count nothing). Starts nothing.

    Raises:
        ConfigurationError: a bad scenario, or a tokenizer directory that cannot be loaded.
    """
    tokenizers: dict[tuple[str, str | None], tuple[Any, bool]] = {}
    return [_estimate(spec, tokenizers) for spec in specs]


def _estimate(spec: RunSpec, tokenizers: dict[tuple[str, str | None], tuple[Any, bool]],
              ) -> RunEstimate:
    from ulora_remote.run.builders import build_source
    from ulora_remote.scenarios import Scenario, load_scenario

    action = plan_action(spec)
    rd = RunDir(spec.run_dir)
    if action == "start":
        scenario = load_scenario(spec.scenario, spec.overrides)
    else:
        scenario = Scenario.model_validate(rd.read_config()["scenario"])
    b = scenario.backend
    est = RunEstimate(spec, action, b.base_model, b.kind)
    if action == "reuse":
        return est
    key = (b.base_model, b.tokenizer_dir)
    if key not in tokenizers:
        tokenizers[key] = _tokenizer(*key)
    tokenizer, est.exact = tokenizers[key]
    last = rd.last_checkpoint() if action == "resume" else None
    _count(est, scenario, build_source(scenario), tokenizer, int(last["step"]) if last else 0)
    return est


def _count(est: RunEstimate, scenario: Any, source: Any, tokenizer: Any, start: int) -> None:
    steps, c = scenario.steps, scenario.controller
    evals = [k for k in _boundaries(steps, scenario.eval.every) if k >= start]
    ckpt_every = scenario.checkpoint.every
    ckpts = [k for k in _boundaries(steps, ckpt_every if ckpt_every > 0 else steps) if k >= start]
    snapshot_every = c.rollback_snapshots.every if c.rollback_snapshots is not None else 0
    screens = c.guard.kind != "none"  # a guard screens every batch with a forward first
    n = steps - start
    train = sum(_batch_tokens(source.batch(t).examples, tokenizer) for t in range(start, steps))
    eval_sets = [source.eval_examples(k) for k in evals]
    eval_fwd = sum(_batch_tokens(examples, tokenizer) for examples in eval_sets)
    prompts = sum(len(tokenizer.encode(e.prompt, add_special_tokens=True))
                  for examples in eval_sets for e in examples)
    samples = sum(len(examples) for examples in eval_sets)
    est.tokens["train"] = train
    est.tokens["prefill"] = eval_fwd + prompts + (train if screens else 0)
    est.tokens["sample"] = samples * scenario.eval.max_tokens
    est.requests = {
        "start": 1, "forward_backward": n, "optim_step": n,
        "forward": len(evals) + (n if screens else 0),
        "sample": samples, "save_weights_for_sampler": len(evals),
        "save_state": len(ckpts) + (n // snapshot_every if snapshot_every else 0),
    }


def _boundaries(steps: int, every: int) -> list[int]:
    return sorted({0, steps, *range(0, steps, every)})


def _batch_tokens(examples: Sequence[Any], tokenizer: Any) -> int:
    from ulora_remote.backends.tinker.render import render_example

    return sum(len(render_example(tokenizer, e).input_tokens) for e in examples)


def _tokenizer(base_model: str, tokenizer_dir: str | None) -> tuple[Any, bool]:
    """(tokenizer, exact): the backend's tokenizer where at hand, else bytes / 4."""
    if base_model in ("small", "medium") or base_model.startswith("ulora/builtin-"):
        return _CharTokenizer(), True
    directory = tokenizer_dir or (base_model if Path(base_model).expanduser().is_dir() else None)
    if directory is not None:
        from ulora_remote.backends.tinker.render import load_tokenizer

        return load_tokenizer(directory), True
    return _ApproxTokenizer(), False


class _CharTokenizer:
    """The built-in character tokenizer's lengths, without transformers: BOS, one id a char."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.bos_token_id] * add_special_tokens + [3] * len(text)


class _ApproxTokenizer:
    """About 4 bytes of UTF-8 a token, with a BOS and an EOS (an approximation, marked ≈)."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        n = max(1, math.ceil(len(text.encode("utf-8")) / 4))
        return [self.bos_token_id] * add_special_tokens + [3] * n


def format_estimate(estimates: Sequence[RunEstimate], table: PriceTable) -> str:
    """The dry run's table: per run and in total, and where the prices come from."""
    header = (f"{'run':<24} {'action':<7} {'requests':>9} {'train tok':>11} "
              f"{'prefill tok':>12} {'sample tok':>11} {'est. USD':>9}")
    lines = ["dry run: nothing is started", header]
    total_price: float | None = 0.0
    for e in estimates:
        price = e.price(table)
        total_price = None if price is None or total_price is None else total_price + price
        lines.append(_row(e.spec.name, e.action, e.total_requests, e.tokens, price, e.exact))
    sums = {k: sum(e.tokens[k] for e in estimates) for k in KINDS}
    exact = all(e.exact for e in estimates)
    lines.append(_row("total", "", sum(e.total_requests for e in estimates), sums,
                      total_price, exact))
    lines.append(f"prices: {table.source}" + (" (PLACEHOLDERS: pass --prices FILE)"
                                              if table.placeholder else ""))
    if any(e.backend == "local" for e in estimates):
        lines.append("local runs have no service price (-)")
    lines.append("sample tokens are an upper bound (eval.size × eval.max_tokens per evaluation)"
                 + ("" if exact else "; ≈: no tokenizer at hand, UTF-8 bytes / 4"))
    return "\n".join(lines)


def _row(name: str, action: str, requests: int, tokens: dict[str, int], price: float | None,
         exact: bool) -> str:
    mark = "" if exact else "≈"
    usd = "-" if price is None else f"{price:.2f}"
    return (f"{name:<24} {action:<7} {requests:>9,} {mark + format(tokens['train'], ','):>11} "
            f"{mark + format(tokens['prefill'], ','):>12} "
            f"{mark + format(tokens['sample'], ','):>11} {usd:>9}")
