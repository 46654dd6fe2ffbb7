"""The study's comparison plot: clean eval loss around each shock, mean and band across seeds.

One panel per (scenario, shock window), x = steps since the shock's start, one line per method
(mean over seeds) with a band from the lowest to the highest seed. Read from evals.csv only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ulora_remote.extras import import_extra
from ulora_remote.run.rundir import RunDir
from ulora_remote.study.plan import StudyRuns

__all__ = ["plot_shock_recovery"]

BEFORE_STEPS = 50
AFTER_STEPS = 250


def plot_shock_recovery(runs: StudyRuns, path: Path) -> Path:
    """Draw the plot to ``path`` (PNG).

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'ulora-remote[plot]'``).
    """
    matplotlib = import_extra("matplotlib", "plot")
    matplotlib.use("Agg")
    plt = import_extra("matplotlib.pyplot", "plot")
    panels = _panels(runs)
    cols = min(2, max(1, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.4 * rows), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels, strict=False):
        for method, frame in curves.items():
            stats = frame.groupby("offset")["eval_loss"].agg(["mean", "min", "max"])
            style = "--" if method.startswith("fixed") else "-"
            (line,) = ax.plot(stats.index, stats["mean"], style, label=method, lw=1.4)
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.12,
                            color=line.get_color())
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("steps since the shock started")
        ax.set_ylabel("clean eval loss (nats/token)")
    axes[0][0].legend(fontsize=7, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panels(runs: StudyRuns) -> list[tuple[str, dict[str, pd.DataFrame]]]:
    panels = []
    for scenario, by_condition in runs.specs.items():
        specs = by_condition.get("shock", [])
        if not specs:
            continue
        windows = RunDir(specs[0].run_dir).read_config()["scenario"]["shocks"]["windows"]
        for start, end in windows:
            curves: dict[str, list[pd.DataFrame]] = {}
            for spec in specs:
                if spec.label.endswith("lag1"):
                    continue  # lag is its own comparison; keeps the panel readable
                evals = pd.read_csv(RunDir(spec.run_dir).evals_path)
                near = evals[(evals["step"] >= start - BEFORE_STEPS)
                             & (evals["step"] <= start + AFTER_STEPS)]
                curves.setdefault(spec.label, []).append(
                    near.assign(offset=near["step"] - start, seed=spec.seed))
            title = f"{Path(scenario).stem}: shock {start}-{end}"
            panels.append((title, {m: pd.concat(f) for m, f in curves.items()}))
    return panels
