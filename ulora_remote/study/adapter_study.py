"""The study of per-task adapters (docs/design.md, "Per-task adapters"): one shared adapter, one
adapter per task, and switching between them, on a multi-task scenario whose tasks conflict and on
one whose tasks help each other.

Layout: ``out/<scenario>/<mode>-s<seed>/`` (a run directory each, plus ``cost.json``), and
``out/REPORT.md``. A finished run is reused; an unfinished one runs again from scratch.

Cost is counted by ``RequestCounter`` as Tinker would be billed and called: tokens trained
(Σ weights of ``forward_backward``) and scored (``forward``: probes and evaluations), and
requests in ``TinkerBackend``'s pattern: one per adapter a call touches (an optimizer step per
adapter stepped), one sampler save per adapter and one request per prompt when sampling, one
save (and client) per adapter held for a checkpoint or a fork.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulora_remote.backend import (
    SHARED_ADAPTER,
    AdamParams,
    AdapterBackend,
    Example,
    ForwardBackwardResult,
    Future,
    OptimStepResult,
)
from ulora_remote.delegate import DelegatingAdapterBackend
from ulora_remote.errors import ConfigurationError
from ulora_remote.run.rundir import RunDir
from ulora_remote.study.stats import paired_t_test, summarize

__all__ = ["MODES", "SCENARIOS", "RequestCounter", "run_adapter_study", "run_metrics",
           "write_adapter_report"]

MODES = ("shared", "separate", "switch")
SCENARIOS = ("rules-conflict", "rules-help")


class RequestCounter(DelegatingAdapterBackend):
    """An ``AdapterBackend`` that forwards every call and counts tokens and requests (module
    docstring); ``close`` writes them to ``cost_path``."""

    def __init__(self, backend: AdapterBackend, cost_path: Path) -> None:
        super().__init__(backend)
        self.cost_path = cost_path
        self.counts = {"requests": 0, "tokens_trained": 0.0, "tokens_scored": 0.0,
                       "forks": 0}
        self._stepped: set[str] = set()
        self.trained: set[str] = set()

    def _adapters(self, examples: Sequence[Example]) -> set[str]:
        own = set(self.adapter_tasks())
        return {e.task if e.task in own else SHARED_ADAPTER for e in examples}

    def _tokens(self, examples: Sequence[Example]) -> float:
        return sum(self.render(e).weight_sum for e in examples)

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        used = self._adapters(batch)
        self.counts["requests"] += len(used)
        self._stepped |= used
        self.trained |= used
        future = super().forward_backward(batch)
        self.counts["tokens_trained"] += self._tokens(batch)
        return future

    def forward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        self.counts["requests"] += len(self._adapters(batch))
        self.counts["tokens_scored"] += self._tokens(batch)
        return super().forward(batch)

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self.counts["requests"] += max(1, len(self._stepped))
        self._stepped.clear()
        return super().optim_step(params)

    def save_state(self, name: str) -> str:
        self.counts["requests"] += 1 + len(self.adapter_tasks())
        return super().save_state(name)

    def load_state(self, ref: str) -> None:
        super().load_state(ref)
        self.counts["requests"] += 1 + len(self.adapter_tasks())

    def sample(self, examples: Sequence[Example], max_tokens: int,
               temperature: float = 0.0) -> list[str]:
        self.counts["requests"] += len(self._adapters(examples)) + len(examples)
        return super().sample(examples, max_tokens, temperature)

    def fork_adapters(self, tasks: Sequence[str]) -> None:
        self.counts["requests"] += 1 + len(tasks)
        self.counts["forks"] += 1
        super().fork_adapters(tasks)

    def close(self) -> None:
        super().close()
        record = {**self.counts, "adapters_trained": len(self.trained)}
        self.cost_path.write_text(json.dumps(record, indent=1) + "\n")


@dataclass(frozen=True)
class _Spec:
    scenario: str
    mode: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]


def _run_one(spec: _Spec) -> float:
    from ulora_remote.run.builders import build_backend
    from ulora_remote.scenarios import load_scenario

    t0 = time.monotonic()
    scenario = load_scenario(spec.scenario, list(spec.overrides))
    rd = RunDir(spec.run_dir)
    backend = build_backend(scenario, rd.checkpoint_dir)
    if not isinstance(backend, AdapterBackend):
        backend.close()
        raise ConfigurationError(f"{spec.scenario}: the backend has no per-task adapters")
    counter = RequestCounter(backend, spec.run_dir / "cost.json")
    from ulora_remote.run.api import run_scenario

    run_scenario(scenario, backend=counter, out=spec.run_dir, force=True, log_every=10**9,
                 console=io.StringIO())
    return time.monotonic() - t0


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_adapter_study(out: Path, *, scenarios: Sequence[str] = SCENARIOS,
                      modes: Sequence[str] = MODES, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                      overrides: Sequence[str] = (), jobs: int = 2) -> list[_Spec]:
    """Run (or reuse) every (scenario, mode, seed) under ``out``; return the specs."""
    specs = [_Spec(s, m, seed, out / Path(s).stem / f"{m}-s{seed}",
                   (f"seed={seed}", f'adapters.mode="{m}"', *overrides))
             for s in scenarios for m in modes for seed in seeds]
    todo = [s for s in specs if not (RunDir(s.run_dir).finished and
                                     (s.run_dir / "cost.json").exists())]
    print(f"adapters study: {len(specs) - len(todo)} runs reused, {len(todo)} to run", flush=True)
    t0 = time.monotonic()
    pool = None
    if jobs == 1:
        results: Any = map(_run_one, todo)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker)
        results = pool.imap(_run_one, todo)
    try:
        for i, (spec, wall_s) in enumerate(zip(todo, results, strict=True), 1):
            print(f"adapters study: [{i}/{len(todo)}] {spec.run_dir} {wall_s:.0f} s "
                  f"(elapsed {time.monotonic() - t0:.0f} s)", flush=True)
    except BaseException:
        # Ctrl-C, SIGTERM (signals.Terminated) or a failed run: no worker outlives the study.
        # A run cut short is redone from scratch next time (only finished runs are reused).
        if pool is not None:
            pool.terminate()
            pool.join()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    return specs


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """Per-task final exact match and forgetting, fork step and cost of one finished run.

    Forgetting of a task: the largest drop of its exact match below its best earlier value.
    """
    import pandas as pd

    evals = RunDir(run_dir).eval_scores()
    tasks = list(evals[-1]["task_exact_match"])
    final = {t: float(evals[-1]["task_exact_match"][t]) for t in tasks}
    forgetting = {}
    for t in tasks:
        best, worst_drop = -math.inf, 0.0
        for e in evals:
            em = float(e["task_exact_match"][t])
            best = max(best, em)
            worst_drop = max(worst_drop, best - em)
        forgetting[t] = worst_drop
    steps = pd.read_csv(run_dir / "steps.csv", dtype={"adapter_event": str})
    forks = steps.loc[steps["adapter_event"].fillna("").str.startswith("fork"), "step"]
    cost = json.loads((run_dir / "cost.json").read_text())
    return {"final": final, "forgetting": forgetting,
            "fork_step": int(forks.iloc[0]) if len(forks) else None,
            "wall_s": float(steps["wall_s"].iloc[-1]), **cost}


def _cell(values: Sequence[float], fmt: str = ".3f") -> str:
    mean, low, high = summarize(values)
    if math.isnan(low):
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def write_adapter_report(specs: Sequence[_Spec], out: Path, *, wall_s: float) -> Path:
    """Write ``out/REPORT.md``: one table per scenario (mean and 95% interval over seeds) and
    paired t-tests of the mean final exact match between modes; return its path."""
    lines = ["# Adapters study", "",
             "Generated by `python benchmarks/adapters_study.py`; each cell: mean [95% interval] "
             "over seeds.", ""]
    for scenario in dict.fromkeys(s.scenario for s in specs):
        by_mode = {m: [run_metrics(s.run_dir) for s in specs
                       if s.scenario == scenario and s.mode == m]
                   for m in dict.fromkeys(s.mode for s in specs)}
        lines += _scenario_table(scenario, by_mode)
    lines += [f"Wall time of this invocation: {wall_s:.0f} s.", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _scenario_table(scenario: str, by_mode: dict[str, list[dict[str, Any]]]) -> list[str]:
    tasks = list(next(iter(by_mode.values()))[0]["final"])
    head = ["mode", *(f"final EM {t}" for t in tasks), "mean final EM", "forgetting (mean)",
            "forked (runs, step)", "adapters trained", "tokens trained", "requests"]
    lines = [f"## {scenario}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    means: dict[str, list[float]] = {}
    for mode, runs in by_mode.items():
        means[mode] = [sum(r["final"].values()) / len(tasks) for r in runs]
        forks = [r["fork_step"] for r in runs if r["fork_step"] is not None]
        fork = f"{len(forks)}/{len(runs)}" + (f", {min(forks)}–{max(forks)}" if forks else "")
        cells = [mode, *(_cell([r["final"][t] for r in runs]) for t in tasks),
                 _cell(means[mode]),
                 _cell([sum(r["forgetting"].values()) / len(tasks) for r in runs]), fork,
                 _cell([r["adapters_trained"] for r in runs], ".1f"),
                 _cell([r["tokens_trained"] for r in runs], ".0f"),
                 _cell([r["requests"] for r in runs], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed, mean final exact match (a − b):", ""]
    for a, b in (("switch", "shared"), ("switch", "separate"), ("separate", "shared")):
        if a in means and b in means and len(means[a]) > 1:
            test = paired_t_test(means[a], means[b])
            lines.append(f"- {a} − {b}: {test.mean_difference:+.3f} (p {test.p_value:.3g}, "
                         f"n {test.n})")
    return [*lines, ""]
