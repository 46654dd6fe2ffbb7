"""Candidate screening rules replayed on the per-example losses of ``guard_dump.py``: for each
rule, the share of corrupted examples rejected per shock window and the share of clean examples
rejected (before step 40, while the model still learns, and after); benchmarks/RESULTS.md, "On a
real model".

    python benchmarks/guard_rules.py dump.jsonl [more.jsonl ...]
    python benchmarks/guard_rules.py --first-window-at 5 dump.jsonl

The replay judges the recorded losses in step order (a rule's rejections do not change the
recorded trajectory: the dump trained on every example). The probation is switched off
(``trigger_steps`` huge): this measures per-example screening only. Rules:

- ``tau``: the rule before the contrast (τ = max(median + 4·1.4826·MAD, 1) over the last 400
  accepted losses, none before 160), i.e. ``ScreenGuard`` with ``contrast = false``;
- ``tau-h40``: the same from 40 accepted examples on;
- ``tau-w64``: a short, trend-following window (64 accepted, from 32 on);
- ``batch-norm``: each loss divided by its batch's median, screened by τ's statistics (z = 3,
  no floor) from 40 examples on;
- ``contrast θ``: the own/contrast ratio alone above θ, once the model reads its prompts (the
  accepted ratios' median ≤ 0.7);
- ``guard``: ``ScreenGuard`` as shipped (τ and the contrast test), and with other θ.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ulora_remote.backend import ForwardBackwardResult
from ulora_remote.control.screen import ScreenConfig, ScreenGuard

Row = dict[str, Any]
Rule = Callable[[Row], list[bool]]


def _fb(xs: list[float]) -> ForwardBackwardResult:
    return ForwardBackwardResult(tuple(xs), (1.0,) * len(xs))


def guard_rule(**kw: Any) -> Rule:
    guard = ScreenGuard(ScreenConfig(trigger_steps=10**9, **kw))
    return lambda r: list(guard.judge(r["step"], _fb(r["own"]), None, _fb(r["contrast"])).keep)


def robust_rule(window: int, history: int, z: float, floor: float,
                value: Callable[[Row], list[float]]) -> Rule:
    accepted: deque[float] = deque(maxlen=window)

    def rule(r: Row) -> list[bool]:
        tau = math.inf
        if len(accepted) >= history:
            m = statistics.median(accepted)
            tau = max(m + z * 1.4826 * statistics.median(abs(x - m) for x in accepted), floor)
        xs = value(r)
        keep = [x <= tau for x in xs]
        accepted.extend(x for x, k in zip(xs, keep, strict=True) if k)
        return keep
    return rule


def contrast_rule(theta: float, gate: float = 0.7) -> Rule:
    accepted: deque[float] = deque(maxlen=400)

    def rule(r: Row) -> list[bool]:
        qs = [o / c for o, c in zip(r["own"], r["contrast"], strict=True)]
        on = len(accepted) >= 16 and statistics.median(accepted) <= gate
        keep = [not on or q <= theta for q in qs]
        accepted.extend(q for q, k in zip(qs, keep, strict=True) if k)
        return keep
    return rule


def rules() -> dict[str, Rule]:
    own: Callable[[Row], list[float]] = lambda r: r["own"]  # noqa: E731
    by_batch: Callable[[Row], list[float]] = (  # noqa: E731
        lambda r: [x / statistics.median(r["own"]) for x in r["own"]])
    return {
        "tau": guard_rule(contrast=False),
        "tau-h40": robust_rule(400, 40, 4.0, 1.0, own),
        "tau-w64": robust_rule(64, 32, 4.0, 1.0, own),
        "batch-norm": robust_rule(400, 40, 3.0, 0.0, by_batch),
        "contrast 0.85": contrast_rule(0.85),
        "contrast 1.0": contrast_rule(1.0),
        "guard (θ 0.85)": guard_rule(),
        "guard θ 0.8": guard_rule(contrast_max=0.8),
        "guard θ 0.9": guard_rule(contrast_max=0.9),
    }


def report(rows: list[Row], rule: Rule, split: int = 40) -> str:
    windows: dict[tuple[int, str], list[int]] = {}
    clean = [[0, 0], [0, 0]]
    start = None
    for r in rows:
        keep = rule(r)
        if r["kind"] and (start is None or rows[r["step"] - 1]["kind"] != r["kind"]):
            start = r["step"]
        for bad, k in zip(r["corrupted"], keep, strict=True):
            if bad:
                w = windows.setdefault((start or 0, r["kind"]), [0, 0])
                w[0] += 1
                w[1] += not k
            else:
                c = clean[r["step"] >= split]
                c[0] += 1
                c[1] += not k
    parts = [f"clean <{split}: {c0[1]}/{c0[0]} ({c0[1] / max(c0[0], 1):.1%}), "
             f"≥{split}: {c1[1]}/{c1[0]} ({c1[1] / max(c1[0], 1):.1%})"
             for c0, c1 in [clean]]
    parts += [f"{kind}@{s}: {w[1]}/{w[0]}" for (s, kind), w in sorted(windows.items())]
    return " | ".join(parts)


def moved(rows: list[Row], to: int) -> list[Row]:
    """The recording with its first shock window moved to start at step ``to`` (its rows cut
    out and put there, the steps renumbered): a rough stand-in for a burst that arrives
    earlier, before the test has clean history."""
    first = next(i for i, r in enumerate(rows) if r["kind"])
    end = next(i for i in range(first, len(rows)) if rows[i]["kind"] != rows[first]["kind"])
    out = rows[:to] + rows[first:end] + rows[end:]
    return [dict(r, step=i) for i, r in enumerate(out)]


def main(argv: list[str]) -> None:
    to = None
    if argv[:1] == ["--first-window-at"]:
        to, argv = int(argv[1]), argv[2:]
    for path in argv:
        rows = [json.loads(line) for line in open(path)]
        if to is not None:
            rows = moved(rows, to)
        print(f"## {path} ({len(rows)} steps{'' if to is None else f', first window at {to}'})")
        for name, rule in rules().items():
            print(f"- {name}: {report(rows, rule)}")


if __name__ == "__main__":
    main(sys.argv[1:])
