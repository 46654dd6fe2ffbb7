"""Progress lines for the one slow thing the local backend does on first use: pre-training a
built-in model (medium: about 40 s on one CPU thread) before it is cached.

A ``Progress`` is any callable that takes one line of text; ``stderr_progress`` (the default of
``LocalBackend`` and ``build_builtin_model``) prints it to stderr, ``None`` keeps quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["PretrainReport", "Progress", "stderr_progress"]

#: receives one human-readable line (no trailing newline) per event; must not raise.
Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    """Print ``ulora: <line>`` to stderr and flush, so it shows at once even when piped."""
    print(f"ulora: {line}", file=sys.stderr, flush=True)


class PretrainReport:
    """Reports one pre-training: a line when it starts (what, that it happens once, where it
    will be cached), a line about every ``every_s`` seconds (step, mean loss since the last
    line, time left at the pace since the first step) and a line when the model is cached.

    Args:
        progress: where the lines go; None reports nothing.
        size: the built-in model's name.
        steps: the recipe's number of steps.
        target: the cache entry being built.
        every_s: the least time between two step lines (seconds).
        clock: a monotonic clock in seconds (tests pass their own).
    """

    def __init__(self, progress: Progress | None, size: str, steps: int, target: Path, *,
                 every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._progress, self._size, self._steps, self._target = progress, size, steps, target
        self._every_s, self._clock = every_s, clock
        self._start = self._last = self._first = 0.0
        self._loss_sum, self._loss_n = 0.0, 0

    def start(self) -> None:
        self._start = self._last = self._clock()
        self._say(f"the built-in '{self._size}' model is not cached yet: pre-training it once "
                  f"({self._steps} steps on one CPU thread); it will be cached in {self._target}")

    def step(self, step: int, loss: float) -> None:
        """Record the loss (nats per target token) of step ``step`` (0-based)."""
        if self._progress is None:
            return
        self._loss_sum, self._loss_n = self._loss_sum + loss, self._loss_n + 1
        now = self._clock()
        if step == 0:  # the pace counts from here: the start paid for imports and set-up
            self._first = now
        if (now - self._last < self._every_s or now - self._first < 1.0  # too few to pace
                or step + 1 >= self._steps):
            return
        done, elapsed = step + 1, now - self._start
        left = (now - self._first) / step * (self._steps - done)
        self._say(f"pre-training '{self._size}': step {done}/{self._steps}, loss "
                  f"{self._loss_sum / self._loss_n:.3f}, {elapsed:.0f} s so far, about "
                  f"{left:.0f} s left")
        self._last, self._loss_sum, self._loss_n = now, 0.0, 0

    def done(self) -> None:
        elapsed = self._clock() - self._start
        self._say(f"the built-in '{self._size}' model is ready ({elapsed:.1f} s) and cached in "
                  f"{self._target}; later runs load it from there")

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)
