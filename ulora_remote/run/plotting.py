"""The run's picture: train and eval loss, φ with θ0/θ1, mode, learning rate; shocks shaded.

Needs the ``plot`` extra (matplotlib); drawn on a bare ``Figure`` (Agg), without pyplot's global
figure registry, so no display is needed. matplotlib is not thread-safe (its mathtext parser,
used for the log-scale tick labels, is shared), so one lock serializes drawing for the runs of a
sweep that finish in several threads at once.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ulora_remote.control.controller import MODE_NAMES
from ulora_remote.extras import import_names
from ulora_remote.run.storage import write_atomic

__all__ = ["plot_run"]

_SHADE = {"color": "tab:red", "alpha": 0.12, "lw": 0}
_DRAWING = threading.Lock()


def plot_run(
    steps: pd.DataFrame,
    evals: pd.DataFrame,
    path: str | Path,
    *,
    windows: Sequence[Sequence[int]] = (),
    theta: tuple[float, float] = (0.3, 0.7),
    title: str = "",
) -> Path:
    """Draw the four panels and save a PNG.

    Args:
        steps: the rows of steps.csv.
        evals: the rows of evals.csv.
        path: where the PNG goes.
        windows: shock windows ``[start, end)`` in steps, shaded in every panel.
        theta: the controller's thresholds (θ0, θ1), drawn on the φ panel.
        title: the figure's title.

    Returns:
        The path written.

    Raises:
        MissingExtraError: matplotlib is not installed.
        StorageError: the PNG could not be written (an older one at ``path`` is unchanged).
    """
    with _DRAWING:
        return _draw(steps, evals, Path(path), windows, theta, title)


def _draw(steps: pd.DataFrame, evals: pd.DataFrame, out: Path, windows: Sequence[Sequence[int]],
          theta: tuple[float, float], title: str) -> Path:
    fig = _figure(figsize=(10, 9))
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.2, 1.5]})
    _loss_panel(axes[0], steps, evals)
    _phi_panel(axes[1], steps, theta)
    _mode_panel(axes[2], steps)
    _lr_panel(axes[3], steps)
    for ax in axes:
        for start, end in windows:
            ax.axvspan(start, end, **_SHADE)
        ax.grid(alpha=0.3)
    if windows:
        axes[0].axvspan(0, 0, label="shock window", **_SHADE)  # legend entry only
        axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(out, png.getvalue())  # a full disk leaves the old picture, not half a new one
    return out


def _figure(**kwargs: Any) -> Any:
    (Figure,) = import_names("matplotlib.figure", "plot", "Figure")
    return Figure(**kwargs)  # savefig draws it with the Agg canvas; nothing global is touched


def _loss_panel(ax: Any, steps: pd.DataFrame, evals: pd.DataFrame) -> None:
    ax.plot(steps["step"], steps["loss"], lw=0.6, color="tab:gray", alpha=0.7,
            label="train loss (batch)")
    ax.plot(steps["step"], steps["e_smooth"], lw=1.2, color="tab:blue", label="Ê (smoothed)")
    if len(evals):
        ax.plot(evals["step"], evals["eval_loss"], "o-", ms=3, lw=1.5, color="tab:orange",
                label="clean eval loss")
    _guard_events(ax, steps)
    ax.set_ylabel("loss (nats/token)")
    ax.legend(loc="upper right", fontsize=8)


_EVENT_STYLE = {"probation": ("tab:olive", "--"), "rollback": ("tab:red", ":"),
                "shift": ("tab:green", "-")}


def _guard_events(ax: Any, steps: pd.DataFrame) -> None:
    """A vertical line at each probation, rollback and declared shift of a guard."""
    if "event" not in steps:
        return
    events = steps[steps["event"].notna() & (steps["event"].astype(str) != "")]
    for name, (color, style) in _EVENT_STYLE.items():
        at = events.loc[events["event"] == name, "step"]
        for i, step in enumerate(at):
            ax.axvline(step, color=color, ls=style, lw=1.0, label=f"guard: {name}" if i == 0
                       else None)


def _phi_panel(ax: Any, steps: pd.DataFrame, theta: tuple[float, float]) -> None:
    ax.plot(steps["step"], steps["phi"], lw=1.2, color="tab:purple", label="φ")
    for value, name in zip(theta, ("θ0", "θ1"), strict=True):
        ax.axhline(value, ls="--", lw=0.9, color="black")
        ax.text(1.0, value, f" {name}={value:g}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("stress φ")


def _mode_panel(ax: Any, steps: pd.DataFrame) -> None:
    ax.step(steps["step"], steps["mode"], where="post", color="tab:green", lw=1.5)
    ax.set_yticks(range(len(MODE_NAMES)), MODE_NAMES)
    ax.set_ylim(-0.4, len(MODE_NAMES) - 0.6)
    ax.set_ylabel("mode")


def _lr_panel(ax: Any, steps: pd.DataFrame) -> None:
    ax.step(steps["step"], steps["lr"], where="post", color="tab:brown", lw=1.5)
    ax.set_yscale("log")
    ax.set_ylabel("learning rate")
