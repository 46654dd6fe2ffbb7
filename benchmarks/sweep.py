"""Sweep benchmark: N runs in flight on ``ulora serve`` against one run alone.

    python benchmarks/sweep.py --runs 16 --steps 100 --cycle-s 2.0

Each phase gets a fresh ``ulora serve`` (the built-in "small" model, one torch thread) in a child
process, so that this process is the client alone and the server's cycle statistics are the
phase's own:

1. one run alone: the default scenario (pig-latin-shock) shortened to --steps (its two shock
   windows scaled with it), seed 0, on Tinker, clock cycle --cycle-s: wall time T1;
2. the sweep: seeds 0..N-1 at concurrency N in this process (``ulora_remote.study.sweep``),
   same clock: wall time TN, this process's CPU time (all threads) and resident memory (sampled
   every 0.2 s);
3. the reference: every seed alone, one after the other, on a server without a clock (cycle 0).
   Each sweep run's loss, phi and lr columns must equal its reference exactly, and so must the
   run of phase 1 (the clock changes no number).

Prints one line per phase with the server's compute per cycle (mean, max, and the cycles whose
work took longer than the clock), and the verdicts: TN ≤ 1.5 × T1 and equal columns.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from ulora_remote.backends.server import ready_url

from ulora_remote.study.sweep import RunSpec, run_sweep

KEY = "tml-local-benchmark-key"
COLUMNS = ["loss", "phi", "lr"]


def start_server(args: argparse.Namespace, cycle_s: float, ckpt: Path) -> tuple[Any, str]:
    """``ulora serve`` in a child process; returns it and its base URL."""
    cmd = [sys.executable, "-m", "ulora_remote.cli", "serve", "--port", "0", "--base-model",
           args.base_model, "--threads", "1", "--cycle-s", str(cycle_s), "--checkpoint-dir",
           str(ckpt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "ULORA_SERVE_API_KEY": KEY})
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the human lines before it may change; the ready line does not
        url = ready_url(line)
        if url is not None:
            return proc, url
        seen.append(line)
    raise SystemExit(f"ulora serve did not start (exit {proc.wait()}): {''.join(seen[-5:])!r}")


SMOKE_EVAL = ("eval.size=4", "eval.max_tokens=6", "batch_size=4")


def specs(url: str, model: str, seeds: Sequence[int], root: Path, steps: int,
          smoke: bool = False) -> list[RunSpec]:
    # The default scenario's windows [200, 300) and [500, 600) of 700 steps, scaled to `steps`.
    windows = [[200 * steps // 700, 300 * steps // 700], [500 * steps // 700, 600 * steps // 700]]
    common = (f"steps={steps}", f"shocks.windows={windows}", 'backend.kind="tinker"',
              f'backend.base_model="{model}"', f'backend.base_url="{url}"',
              *(SMOKE_EVAL if smoke else ()))
    return [RunSpec("pig-latin-shock", "controller", s, (*common, f"seed={s}"),
                    root / f"controller-s{s}") for s in seeds]


class Memory:
    """Samples this process's resident memory (VmRSS) every 0.2 s while it runs."""

    def __init__(self) -> None:
        self.peak_mb, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_sweep(runs: list[RunSpec], concurrency: int) -> float:
    t0 = time.perf_counter()
    result = run_sweep(runs, concurrency=concurrency, out=io.StringIO(),
                       log_path=runs[0].run_dir.parent / "sweep.log")
    result.raise_for_failures(None)
    return time.perf_counter() - t0


def cycle_line(url: str) -> str:
    answer = httpx.get(f"{url}/ulora/v1/counters", headers={"X-API-Key": KEY}, timeout=30)
    c = answer.json()["cycle_stats"]
    return (f"server: {c['cycles']} cycles, compute per cycle mean {c['busy_s_mean']:.2f} s, "
            f"max {c['busy_s_max']:.2f} s, {c['overrun']} longer than the clock")


def phase(args: argparse.Namespace, cycle_s: float, root: Path, name: str, seeds: list[int],
          concurrency: int) -> tuple[list[RunSpec], float, str]:
    """Runs ``seeds`` on a fresh server: (the runs, wall time, the server's cycle line)."""
    server, url = start_server(args, cycle_s, root / f"server-{name}")
    try:
        model = str(httpx.post(f"{url}/api/v1/get_server_capabilities", timeout=60,
                               headers={"X-API-Key": KEY}).json()["supported_models"][0]
                    ["model_name"])
        runs = specs(url, model, seeds, root / name, args.steps, args.smoke)
        wall_s = timed_sweep(runs, concurrency)
        return runs, wall_s, cycle_line(url)
    finally:
        server.terminate()
        server.wait(30)


def columns(run: RunSpec) -> pd.DataFrame:
    return pd.read_csv(run.run_dir / "steps.csv")[COLUMNS]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--cycle-s", type=float, default=2.0, help="the clocked server's cycle")
    p.add_argument("--base-model", default="small")
    p.add_argument("--out", type=Path, help="keep the run directories here (default: temp)")
    p.add_argument("--smoke", action="store_true",
                        help="a few steps, to check that the script runs (numbers mean nothing)")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.steps, args.cycle_s = 2, 8, 0.05  # 8: the scaled windows stay apart
    os.environ.update(TINKER_API_KEY=KEY, TINKER_TELEMETRY="0")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        return measure(args, root)


def measure(args: argparse.Namespace, root: Path) -> int:
    seeds = list(range(args.runs))
    print(f"ulora serve {args.base_model!r} (one torch thread), cycle {args.cycle_s} s; "
          f"{args.runs} runs of pig-latin-shock shortened to {args.steps} steps", flush=True)
    alone, t1, line = phase(args, args.cycle_s, root, "alone", [0], 1)
    print(f"one run alone:      {t1:7.1f} s; {line}", flush=True)
    cpu0 = time.process_time()
    with Memory() as memory:
        base_mb = rss_mb()
        sweep, tn, line = phase(args, args.cycle_s, root, "sweep", seeds, args.runs)
    cpu = time.process_time() - cpu0
    print(f"{args.runs} runs at once: {tn:7.1f} s = {tn / t1:.2f} x one run; {line}", flush=True)
    print(f"client process for the {args.runs} runs: CPU {cpu:.1f} s ({cpu / tn:.2f} cores on "
          f"average), resident memory {base_mb:.0f} MB before, {memory.peak_mb:.0f} MB at peak",
          flush=True)
    reference, t_ref, line = phase(args, 0.0, root, "reference", seeds, 1)
    print(f"reference: {args.runs} runs alone one after the other, no clock: {t_ref:.1f} s",
          flush=True)
    same = [columns(run).equals(columns(ref)) for run, ref in zip(sweep, reference, strict=True)]
    alone_same = columns(alone[0]).equals(columns(reference[0]))
    print(f"loss/phi/lr equal to the same run alone: {sum(same)}/{len(same)} sweep runs; the "
          f"clocked run alone: {alone_same}")
    ok = tn <= 1.5 * t1 and all(same) and alone_same
    print(f"target TN <= 1.5 x T1 and equal columns: {'met' if ok else 'NOT met'} "
          f"({tn:.1f} s vs {1.5 * t1:.1f} s)")
    if args.smoke:  # a smoke run checks the script and the equal columns, never the clock
        return 0 if all(same) and alone_same else 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
