"""The guard's targets (docs/design.md, "Guards"), from the runs of the guard study and nothing
else.

    python benchmarks/study.py --out runs/guard-study --concurrency 2 --no-shock "" \\
        --methods zskip,seed,scale-free,guarded --seeds 0,1,2,3,4 --scenarios guard-clean,\\
guard-letters,guard-swapped,guard-partial-10,guard-partial-25,guard-partial-50,\\
guard-persistent-15,guard-shift
    python benchmarks/guard_targets.py runs/guard-study

Reads every ``<scenario>/shock/<method>-s<seed>`` run directory (summary.json, evals.csv,
steps.csv, eval_scores.jsonl) and prints one Markdown table a target, each against the best
fixed learning rate of its scenario (the lowest mean final clean loss, as the study picks it):

- unlearnable noise (letters, swapped answers, partial 10/25/50%): peak damage at most 10% of the
  best fixed LR's, time to recover at most one evaluation, final exact match not below (mean at
  most 1 point lower and not significantly lower, paired t-test over seeds, p < 0.05);
- persistent 15% noise: final exact match at or above the best fixed LR's;
- the learnable shift: declared within 40 steps; the new rule's exact match reaches the best fixed
  LR's final level in at most 1.2x the steps that LR needs (per seed: that seed's fixed run's
  final exact match, and the steps each run needs to first reach it; zskip shown too);
- no shock: final exact match within 1 point of the best fixed LR, not significantly lower;
- cost: tokens processed, screening included, against the same seed's best fixed LR run (the
  batches are the same on every method): raw (a screened token counts like a trained one) and
  by compute (a forward-only token counts a third of a forward_backward one).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ulora_remote.study.plan import best_fixed_lr
from ulora_remote.study.stats import paired_t_test, summarize

NOISE = ("guard-letters", "guard-swapped", "guard-partial-10", "guard-partial-25",
         "guard-partial-50")
METHODS = ("guarded", "seed", "scale-free", "zskip")


def runs(root: Path, scenario: str, label: str) -> list[Path]:
    base = root / scenario / "shock"
    return sorted(p for p in base.glob(f"{label}-s*") if p.is_dir())


def best_label(root: Path, scenario: str) -> str:
    fixed = [p for p in (root / scenario / "shock").glob("fixed-*") if p.is_dir()]
    lr = best_fixed_lr(fixed)
    return next(p.name.rsplit("-s", 1)[0] for p in fixed
                if json.loads((p / "config.json").read_text())["scenario"]["controller"]["lr"]
                == lr)


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def per_seed(paths: Sequence[Path], key) -> list[float]:  # noqa: ANN001
    return [float(key(summary(p))) for p in paths]


def window_mean(s: dict, metric: str) -> float:
    values = [float(w[metric]) for w in s["windows"]]
    return sum(values) / len(values) if values else math.nan


def fmt_ci(values: Sequence[float]) -> str:
    mean, low, high = summarize(values)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def em_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    t = paired_t_test(a, b)
    return t.mean_difference, t.p_value


def noise_rows(root: Path) -> list[str]:
    rows = ["| scenario | best fixed | peak damage guarded / best (≤ 0.10) | time to recover, "
            "guarded (≤ 1 eval = 25 steps) | final exact match guarded − best (≥ −0.01, not "
            "significantly lower) | verdict |", "|---|---|---|---|---|---|"]
    for scenario in NOISE:
        best = best_label(root, scenario)
        g, b = runs(root, scenario, "guarded"), runs(root, scenario, best)
        dg = per_seed(g, lambda s: window_mean(s, "peak_damage"))
        db = per_seed(b, lambda s: window_mean(s, "peak_damage"))
        ratio = (sum(dg) / len(dg)) / (sum(db) / len(db))
        ttr = per_seed(g, lambda s: max(float(w["time_to_recover_steps"])
                                        for w in s["windows"]))
        diff, p = em_test(per_seed(g, lambda s: s["final"]["exact_match"]),
                          per_seed(b, lambda s: s["final"]["exact_match"]))
        ok = ratio <= 0.10 and max(ttr) <= 25 and diff >= -0.01 and not (diff < 0 and p < 0.05)
        rows.append(f"| {scenario} | {best} | {ratio:.3f} ({fmt_ci(dg)} vs {fmt_ci(db)}) | "
                    f"max {max(ttr):.0f}, mean {sum(ttr) / len(ttr):.0f} | {diff:+.4f} "
                    f"(p {p:.3f}) | {'met' if ok else 'NOT met'} |")
    return rows


def final_em_rows(root: Path, scenario: str, bar: str) -> list[str]:
    best = best_label(root, scenario)
    rows = [f"| method | final exact match (mean [95% CI]) | − best fixed ({best}) | p |",
            "|---|---|---|---|"]
    b = per_seed(runs(root, scenario, best), lambda s: s["final"]["exact_match"])
    rows.append(f"| {best} | {fmt_ci(b)} | | |")
    for label in (*METHODS, *(f"fixed-{x}" for x in ("2e-3", "5e-4", "1e-4"))):
        if label == best or not runs(root, scenario, label):
            continue
        m = per_seed(runs(root, scenario, label), lambda s: s["final"]["exact_match"])
        diff, p = em_test(m, b)
        rows.append(f"| {label} | {fmt_ci(m)} | {diff:+.4f} | {p:.3f} |")
    return [f"{scenario} ({bar}):", "", *rows]


def reach_step(run: Path, level: float, start: int) -> float:
    ev = pd.read_csv(run / "evals.csv")
    hit = ev[(ev["step"] >= start) & (ev["exact_match"] >= level)]
    return float(hit["step"].iloc[0] - start) if len(hit) else math.inf


def shift_rows(root: Path) -> list[str]:
    """Per seed: the level is the best fixed LR's final exact match on the new rule (that seed's
    run); each method's steps to the level count from the shift's start to its first evaluation
    at or above it (the fixed LR reaches its own level at its last evaluation at the latest)."""
    scenario = "guard-shift"
    best = best_label(root, scenario)
    fixed = runs(root, scenario, best)
    config = json.loads((fixed[0] / "config.json").read_text())
    start = int(config["scenario"]["shift"]["start"])
    levels = per_seed(fixed, lambda s: s["final"]["exact_match"])
    need_best = [reach_step(p, level, start) for p, level in zip(fixed, levels, strict=True)]
    mean_best = sum(need_best) / len(need_best)
    rows = [f"Level, per seed: the best fixed LR's ({best}) final exact match on the new rule "
            f"({', '.join(f'{x:.3f}' for x in levels)}); steps counted from the shift at step "
            f"{start}; evaluations every 25 steps.", "",
            "| method | shift declared after (steps, per seed) | steps to the level (per seed) "
            "| mean / best fixed's mean (≤ 1.2) | final exact match, new rule | retention "
            "(old rule) |", "|---|---|---|---|---|---|"]
    for label in (best, *METHODS):
        paths = runs(root, scenario, label)
        declared = [summary(p).get("guard", {}).get("shift_declared_after_steps") for p in paths]
        need = [reach_step(p, level, start) for p, level in zip(paths, levels, strict=True)]
        retention = per_seed(paths, lambda s: s.get("retention", math.nan))
        final = per_seed(paths, lambda s: s["final"]["exact_match"])
        ratio = (sum(need) / len(need)) / mean_best
        shown = [int(x) if math.isfinite(x) else "never" for x in need]
        diff, p = em_test(final, levels)
        vs = "" if label == best else f" ({diff:+.3f}, p {p:.3f})"
        rows.append(f"| {label} | {declared} | {shown} | {ratio:.2f} | {fmt_ci(final)}{vs} | "
                    f"{sum(retention) / len(retention):.3f} |")
    return rows


def token_rows(root: Path) -> list[str]:
    rows = ["| scenario | guarded / best fixed, raw | by compute (forward = 1/3) |",
            "|---|---|---|"]
    for scenario in (*NOISE, "guard-persistent-15", "guard-shift", "guard-clean"):
        best = best_label(root, scenario)
        raw, weighted = [], []
        for g, b in zip(runs(root, scenario, "guarded"), runs(root, scenario, best), strict=True):
            gs, bs = pd.read_csv(g / "steps.csv"), pd.read_csv(b / "steps.csv")
            screen = float(bs["tokens"].sum())  # the same batches, screened whole
            trained = float(gs.loc[~gs["skipped"], "tokens"].sum())
            raw.append((screen + trained) / screen)
            weighted.append((screen / 3 + trained) / screen)
        rows.append(f"| {scenario} | {fmt_ci(raw)} | {fmt_ci(weighted)} |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:])[0])
    out = ["## Unlearnable noise, whole or partial batches", "", *noise_rows(root), "",
           "## Persistent low-level noise", "",
           *final_em_rows(root, "guard-persistent-15", "at or above the best fixed LR"), "",
           "## A learnable shift", "", *shift_rows(root), "",
           "## No shock", "", *final_em_rows(root, "guard-clean",
                                             "within 1 point, not significantly lower"), "",
           "## Tokens processed, screening included", "", *token_rows(root)]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
