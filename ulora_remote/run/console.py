"""Console output of a run: the seed's log lines, evaluation lines, a progress bar on a TTY.

Log line format (seed 000's Tinker log)::

    [350] Mode=2 φ=0.827 E_s=4.979 lr=1e-4 shock
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ulora_remote.control.policy import format_lr
from ulora_remote.run.steps import StepRow
from ulora_remote.run.storage import resume_command

__all__ = ["Console", "format_lr"]


class Console:
    """Writes log lines; on a terminal also a one-line progress bar redrawn with ``\\r``.

    Args:
        out: the stream; the bar is drawn only when ``out.isatty()``.
        total_steps: the run's length, for the bar.
    """

    def __init__(self, out: TextIO, total_steps: int) -> None:
        self.out, self.total = out, total_steps
        self.tty = out.isatty()
        self._bar_shown = False

    def line(self, text: str) -> None:
        """One permanent line (clears the bar first on a terminal)."""
        if self._bar_shown:
            self.out.write("\r\x1b[2K")
            self._bar_shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, row: StepRow, log_every: int) -> None:
        """Log a step row every ``log_every`` steps and on every switch; redraw the bar.

        ``Mode=2`` when a controller mode set the LR, else the setter's name (``fixed``,
        ``warmup``, ``plateau``); ``kept=k/n`` when a guard rejected examples.
        """
        u = row.step
        if (log_every > 0 and u % log_every == 0) or row.switched:
            setter = f"Mode={row.mode}" if row.mode >= 0 else row.mode_name
            text = (f"[{u}] {setter} φ={row.phi:.3f} E_s={row.e_smooth:.3f} "
                    f"lr={format_lr(row.lr)}")
            if row.shock:
                text += " shock"
            if row.skipped:
                text += " skipped"
            if row.switched:
                text += f" -> {row.mode_name}"
                if row.reason:
                    text += f" ({row.reason})"
            self.line(text)
        if self.tty:
            self._bar(u + 1, row.loss)

    def eval(self, row: Mapping[str, Any]) -> None:
        self.line(
            f"[{row['step']}] eval loss={row['eval_loss']:.4f} "
            f"exact_match={row['exact_match']:.3f}"
        )

    def interrupted(self, rows: int, run_dir: Path) -> None:
        """Ctrl-C or SIGTERM: the resume command, with an absolute path (works anywhere)."""
        self.line(
            f"interrupted after {rows} steps; the run directory is kept. "
            f"Continue with: {resume_command(run_dir)}"
        )

    def stopped(self, rows: int, run_dir: Path) -> None:
        """An error ended the run (the CLI prints it next): how to continue once it is fixed."""
        self.line(
            f"stopped by an error after {rows} steps; the run directory is kept and consistent. "
            f"Once the cause is fixed, continue with: {resume_command(run_dir)}"
        )

    def done(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False

    def _bar(self, done: int, loss: float) -> None:
        width = 30
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        self.out.write(f"\r[{bar}] {done}/{self.total} loss={loss:.3f}")
        self.out.flush()
        self._bar_shown = True
