"""What a sweep shows on the terminal: one live line on a TTY, plain lines otherwise, and one
summary line per run that ends.

Live line::

    sweep: 5/16 finished, 9 running, 2 waiting, 0 failed | 41.3 steps/s | 0:01:23

Steps/s counts the rows the sweep's runs appended to their steps.csv files (read from the files,
so it works for threads and worker processes alike) per second of the sweep's wall time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TextIO

from ulora_remote.run.rundir import RunDir
from ulora_remote.study.sweep_run import RunSpec, State, log_path

__all__ = ["SweepProgress", "count_rows"]


def count_rows(spec: RunSpec) -> int:
    """Complete rows in the run's steps.csv (0 when it has none yet)."""
    path = RunDir(spec.run_dir).steps_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return max(0, data.count(b"\n") - 1)


class SweepProgress:
    """Tracks each run's state and prints progress.

    Args:
        out: the terminal (or any stream); the live line is drawn only when ``out.isatty()``.
        specs: the runs that the sweep executes (reused ones are not listed).
        plain_every_s: on a non-terminal, a status line at most this often (besides the lines of
            runs that end).
    """

    def __init__(self, out: TextIO, specs: Sequence[RunSpec], *, plain_every_s: float = 30.0,
                 total: int | None = None) -> None:
        self.out, self.specs = out, list(specs)
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.state: dict[RunSpec, State] = dict.fromkeys(self.specs, "waiting")
        self._rows0 = {s: count_rows(s) for s in self.specs}
        self._t0 = time.monotonic()
        self._plain_every_s, self._last_plain = plain_every_s, time.monotonic()
        self._shown = False
        self.total = total if total is not None else len(self.specs)
        self.ended = self.total - len(self.specs)  # reused runs count as ended

    def set(self, spec: RunSpec, state: State) -> None:
        self.state[spec] = state

    def steps_per_s(self) -> float:
        rows = sum(max(0, count_rows(s) - self._rows0[s]) for s in self.specs
                   if self.state[s] != "waiting")
        return rows / max(1e-9, time.monotonic() - self._t0)

    def status(self) -> str:
        counts = {k: sum(v == k for v in self.state.values())
                  for k in ("finished", "running", "waiting", "failed", "interrupted")}
        done = counts["finished"] + (self.total - len(self.specs))
        elapsed = int(time.monotonic() - self._t0)
        text = (f"sweep: {done}/{self.total} finished, {counts['running']} running, "
                f"{counts['waiting']} waiting, {counts['failed']} failed")
        if counts["interrupted"]:
            text += f", {counts['interrupted']} interrupted"
        return (f"{text} | {self.steps_per_s():.1f} steps/s | "
                f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}")

    def tick(self) -> None:
        """Redraw the live line (TTY), or print a status line now and then (plain)."""
        if self.tty:
            self.out.write("\r\x1b[2K" + self.status())
            self.out.flush()
            self._shown = True
        elif time.monotonic() - self._last_plain >= self._plain_every_s:
            self.line(self.status())

    def line(self, text: str) -> None:
        """A permanent line (clears the live line first)."""
        if self._shown:
            self.out.write("\r\x1b[2K")
            self._shown = False
        self.out.write(text + "\n")
        self.out.flush()
        self._last_plain = time.monotonic()

    def ended_line(self, spec: RunSpec, state: State, wall_s: float, error: str | None) -> None:
        """The summary line of a run that ended, with where to look."""
        self.ended += 1
        where = f"[{self.ended}/{self.total}] {spec.name}"
        if state == "finished":
            self.line(f"sweep: {where} finished in {wall_s:.0f} s: {_finals(spec)} "
                      f"({spec.run_dir})")
        elif state == "failed":
            self.line(f"sweep: {where} FAILED after {wall_s:.0f} s: {error}\n"
                      f"  log: {log_path(spec)}; resume it alone with: "
                      f"ulora run --resume {spec.run_dir}")
        else:
            self.line(f"sweep: {where} interrupted after {wall_s:.0f} s; resumable "
                      f"({spec.run_dir})")

    def done(self) -> None:
        if self._shown:
            self.out.write("\n")
            self.out.flush()
            self._shown = False


def _finals(spec: RunSpec) -> str:
    summary: Any = RunDir(spec.run_dir).read_summary() or {}
    final = summary.get("final", {})
    loss, match = final.get("eval_loss"), final.get("exact_match")
    if loss is None:
        return "no final evaluation"
    text = f"final eval loss {float(loss):.4f}"
    return text + (f", exact match {float(match):.3f}" if match is not None else "")
