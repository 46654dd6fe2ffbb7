"""The guard's clock cycles: seconds per step of the guarded loop against the unguarded one, on
``ulora serve`` with a clock and a latency, through the unmodified tinker SDK (docs/design.md,
"Guards").

Each method runs the default scenario shortened to ``--steps`` steps, with no shock and the
evaluations only at the start and the end, as ``--backend tinker`` at lag 1 against one server
in this process (``--cycle-s 0.3 --latency-s 0.1`` by default, the issue's setting). The guarded
loop screens every batch with a gradient-free ``forward``; the runner submits that forward with
the previous step's requests (``ulora_remote.run.screening``), so it should cost no cycle of its
own. Seconds per step are read from the runs' own ``steps.csv`` (``wall_s`` of the last row minus
the first, over the rows between: no evaluation among them).

Run:  python benchmarks/guard_cycles.py --steps 40
Prints one line a method and the ratio guarded / unguarded (target: at most 1.1).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

FAKE_KEY = "tml-local-benchmark-key"
METHODS = {
    "seed (unguarded)": ['controller.method="seed"'],
    "guarded": ['controller.method="guarded"'],
    "zskip": ['controller.method="fixed"', "controller.lr=2e-3", 'controller.guard.kind="zskip"'],
}


def seconds_per_step(run_dir: Path) -> float:
    wall = pd.read_csv(run_dir / "steps.csv")["wall_s"]
    return float(wall.iloc[-1] - wall.iloc[0]) / (len(wall) - 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cycle-s", type=float, default=0.3)
    parser.add_argument("--latency-s", type=float, default=0.1)
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps, to check that the script runs (numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.cycle_s, args.latency_s = 4, 0.05, 0.0
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    os.environ["TINKER_API_KEY"] = FAKE_KEY
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    from ulora_remote.run.api import run_scenario

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = serve_in_thread(ServerConfig(
            port=0, base_model="small", checkpoint_dir=Path(tmp) / "server", api_key=FAKE_KEY,
            cycle_s=args.cycle_s, latency_s=args.latency_s, threads=1))
        try:
            model = server.service.base_model_name
            print(f"ulora serve {model!r}: cycle {args.cycle_s} s, latency {args.latency_s} s; "
                  f"{args.steps} steps of pig-latin-shock, batch 8, no shock, lag 1", flush=True)
            common = [f"steps={args.steps}", "shocks.windows=[]", f"eval.every={args.steps}",
                      f"eval.size={4 if args.smoke else 8}", "checkpoint.every=0",
                      *(["eval.max_tokens=6"] if args.smoke else []),
                      'backend.kind="tinker"',
                      f'backend.base_model="{model}"', f'backend.base_url="{server.base_url}"',
                      "backend.rank=8"]
            for name, overrides in METHODS.items():
                out = Path(tmp) / name.split()[0]
                run_scenario("pig-latin-shock", out=out, overrides=[*common, *overrides],
                             console=io.StringIO())
                results[name] = seconds_per_step(out)
                print(f"{name:>16}: {results[name]:.3f} s/step = "
                      f"{results[name] / args.cycle_s:.2f} cycle lengths a step", flush=True)
        finally:
            server.stop()
    ratio = results["guarded"] / results["seed (unguarded)"]
    print(f"guarded / unguarded = {ratio:.2f}x (target <= 1.1x: "
          f"{'met' if ratio <= 1.1 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
