"""SIGTERM handled like Ctrl-C, for every entry point that starts runs or worker processes.

``sigterm_as_interrupt()`` turns SIGTERM into ``Terminated`` (a ``KeyboardInterrupt``) in the
main thread, so that a run flushes its files and prints how to resume, and a sweep stops its
worker processes through its stop event before the parent exits. Without it the parent died at
once and its spawned workers were left idle on their pipes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run stops as on Ctrl-C (files flushed, the
    resume command printed); ``ulora`` then exits with 143 (128 + SIGTERM)."""


@contextlib.contextmanager
def sigterm_as_interrupt(active: bool = True) -> Iterator[None]:
    """Raise ``Terminated`` on SIGTERM while the block runs (main thread only; elsewhere, or
    with ``active`` False, nothing changes). The previous handler is restored on exit."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
