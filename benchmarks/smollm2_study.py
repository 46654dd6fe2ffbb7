"""The guard study on a real model, SmolLM2-135M (benchmarks/RESULTS.md, "On a real model"):
one resumable command.

    python benchmarks/smollm2_study.py --out runs/smollm2-study --seeds 0,1,2 --concurrency 2

runs ``benchmarks/study.py`` over the real-model suite (the fixed LRs of each scenario's
``baselines.fixed_lrs``, the three best of the sweep; zskip at the best of them; the seed's
controller; the guarded default), reusing finished runs and resuming started ones, so it can be
stopped (Ctrl-C) and started again in several sittings. Then it prints, from the runs that
have finished (and says how many that is), the targets that ``summary.json`` carries:

- (a) no shock: the share of clean examples each method's guard rejected (≤ 1%);
- (c) every shock window, early and late: the share of corrupted examples kept out of the final
  model, rejected or rolled back (≥ 80%), per method, mean and range over seeds;
- the final exact match per scenario and method, mean over seeds, beside the best fixed LR's.

``--report-only`` prints without running anything. Target (b), the hardest quarter of the
evaluation examples, needs per-example evaluation losses, which runs do not record yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

SCENARIOS = ("smollm2-clean", "smollm2-persistent-15", "smollm2-late-letters",
             "smollm2-late-swapped-25", "smollm2-late-shift", "smollm2-early-letters",
             "smollm2-early-swapped-25", "smollm2-early-shift")


def _summaries(root: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(scenario, method) -> the summaries of finished runs, one per seed."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(root.glob("*/shock/*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("finished"):
            method = path.parent.name.rsplit("-s", 1)[0]
            out.setdefault((path.parents[2].name, method), []).append(summary)
    return out


def _span(xs: list[float]) -> str:
    return (f"{statistics.mean(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}] (n={len(xs)})"
            if xs else "-")


def report(root: Path) -> str:
    runs = _summaries(root)
    lines = [f"{sum(len(v) for v in runs.values())} finished runs under {root}", "",
             "| scenario | method | final exact match | clean rejected | kept out per window |",
             "|---|---|---|---|---|"]
    for (scenario, method), summaries in sorted(runs.items()):
        em = [s["final"]["exact_match"] for s in summaries if "exact_match" in s.get("final", {})]
        guard = [s.get("guard", {}) for s in summaries]
        clean = [g["clean_rejected_share"] for g in guard
                 if g.get("clean_rejected_share") is not None]
        windows: dict[str, list[float]] = {}
        for g in guard:
            for w in g.get("corrupted_windows", []):
                if w["kept_out_share"] is not None:
                    windows.setdefault(f"{w['start']}-{w['end']}", []).append(w["kept_out_share"])
        kept = "; ".join(f"{k}: {_span(v)}" for k, v in windows.items()) or "-"
        lines.append(f"| {scenario} | {method} | {_span(em)} | {_span(clean)} | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/smollm2-study")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--concurrency", default="2")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        sys.path.insert(0, str(Path(__file__).parent))
        import study  # benchmarks/study.py

        code = study.main(["--out", args.out, "--concurrency", args.concurrency,
                           "--no-shock", "", "--methods", "zskip,seed,guarded",
                           "--seeds", args.seeds, "--scenarios", ",".join(SCENARIOS)])
        if code:
            return code
    print(report(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
