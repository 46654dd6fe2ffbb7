"""Reproduce the issue-7 study: every baseline and controller variant, several seeds, one report.

    python benchmarks/study.py --out runs/study --concurrency 2

runs (or reuses, or resumes) every run under ``--out``, then writes ``--out/REPORT.md`` with the
tables, paired tests, φ levels and the preset check, ``--out/shock_recovery.png``, and the
per-run CSV files. ``--set KEY=VALUE`` (repeatable) applies to every run, e.g.
``--set steps=300``; ``--scenarios``, ``--seeds``, ``--methods`` and ``--no-shock`` narrow the
study. ``--concurrency N`` runs N at once (worker processes locally, threads on Tinker);
``--dry-run`` prints every run's requests, tokens and estimated price and starts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from ulora_remote.errors import UloraError
from ulora_remote.run.builders import parse_seeds
from ulora_remote.signals import Terminated, sigterm_as_interrupt
from ulora_remote.study.plan import METHODS, NO_SHOCK_METHODS, StudyPlan, run_study, study_specs
from ulora_remote.study.report import write_study_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/study", help="directory of the runs and the report")
    p.add_argument("--concurrency", "--jobs", dest="concurrency", type=int, default=2,
                   help="runs at once: worker processes (one torch thread each) on the local "
                        "backend, threads on Tinker (--jobs is the former name)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's requests, tokens and estimated price; start nothing")
    p.add_argument("--prices", help="price table (TOML) for --dry-run; see docs/sweeps.md")
    p.add_argument("--scenarios", default="pig-latin-shock,pig-latin-v2")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"besides the fixed LRs; any of {', '.join(METHODS)}")
    p.add_argument("--no-shock", default=",".join(NO_SHOCK_METHODS),
                   help="methods also run without shocks ('fixed' = every fixed LR; '' = none)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="scenario override applied to every run (repeatable)")
    p.add_argument("--smoke", action="store_true",
                   help="one scenario, seed and method, a few steps on the small model, to check "
                        "that the script runs (numbers mean nothing)")
    return p


SMOKE = ("steps=4", 'backend.base_model="small"', "batch_size=4", "eval.every=2", "eval.size=4",
         "eval.max_tokens=6", "shocks.windows=[[1,2]]", "baselines.fixed_lrs=[2e-3]",
         "checkpoint.every=2")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.scenarios, args.seeds, args.methods = "pig-latin-shock", "0,1", "seed"  # 2: intervals
        args.no_shock = ""
        args.concurrency, args.overrides = 1, [*SMOKE, *args.overrides]
    split = lambda text: tuple(x for x in text.split(",") if x.strip())  # noqa: E731
    try:
        plan = StudyPlan(scenarios=split(args.scenarios), seeds=tuple(parse_seeds(args.seeds)),
                         methods=split(args.methods), no_shock=split(args.no_shock),
                         overrides=tuple(args.overrides))
        if args.dry_run:
            from ulora_remote.study.cost import estimate_runs, format_estimate, load_prices

            specs = study_specs(plan, args.out)
            print(format_estimate(estimate_runs(specs), load_prices(args.prices)))
            return 0
        t0 = time.monotonic()
        # SIGTERM stops the sweep as Ctrl-C does: its worker processes end with it.
        with sigterm_as_interrupt():
            runs = run_study(plan, args.out, concurrency=args.concurrency)
        wall_s = time.monotonic() - t0
        report = write_study_report(runs, wall_s=wall_s)
    except UloraError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    print(f"study: done in {wall_s:.0f} s; report {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
