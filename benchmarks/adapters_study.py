"""The issue-15 study: one shared adapter vs one adapter per task vs switching, 5 seeds each, on
a scenario whose tasks conflict (``rules-conflict``) and one whose tasks help each other
(``rules-help``)::

    python benchmarks/adapters_study.py --out runs/adapters-study --jobs 2

runs (or reuses) every run under ``--out`` and writes ``--out/REPORT.md``: per-task final exact
match, forgetting, when the switching runs forked, and the cost (adapters trained, tokens,
requests counted as Tinker would get them). ``--set KEY=VALUE`` applies to every run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ulora_remote.errors import UloraError
from ulora_remote.run.builders import parse_seeds
from ulora_remote.signals import Terminated, sigterm_as_interrupt
from ulora_remote.study.adapter_study import (
    MODES,
    SCENARIOS,
    run_adapter_study,
    write_adapter_report,
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/adapters-study")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs (one torch thread each)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true",
                   help="one scenario, mode and seed, a few steps, to check that the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.scenarios, args.modes, args.seeds, args.jobs = "rules-conflict", "shared", "0", 1
        args.overrides = ["steps=4", 'backend.base_model="small"', "eval.every=2", "eval.size=4",
                          "eval.max_tokens=6", "checkpoint.every=2", *args.overrides]
    split = lambda text: tuple(x for x in text.split(",") if x.strip())  # noqa: E731
    t0 = time.monotonic()
    try:
        with sigterm_as_interrupt():  # SIGTERM stops the workers as Ctrl-C does
            specs = run_adapter_study(Path(args.out), scenarios=split(args.scenarios),
                                      modes=split(args.modes), seeds=parse_seeds(args.seeds),
                                      overrides=args.overrides, jobs=args.jobs)
        report = write_adapter_report(specs, Path(args.out), wall_s=time.monotonic() - t0)
    except UloraError as exc:
        print(f"adapters study: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    print(report.read_text())
    print(f"adapters study: done in {time.monotonic() - t0:.0f} s; report {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
