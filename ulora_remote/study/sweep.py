"""Many runs at once, with one rule for ``ulora compare`` and the study.

The rule (``sweep_run.plan_action``): a finished run is reused, a started one resumed from its
last checkpoint, any other started from step 0. ``force`` first clears every run directory of
the sweep (once all its scenarios validated), so that an interrupted forced sweep continues with
the same rule and never mixes old results in.

Where the runs go, with ``concurrency`` N:

- N = 1: one after the other in this thread; each run's log lines stream to the terminal under a
  header naming its method and seed, and to ``<run directory>.log`` beside it.
- Tinker (``backend.kind = "tinker"``): N threads in this process, each run with its own
  ``TinkerBackend`` (its own SDK session, training client and run directory). The SDK's futures
  do the waiting, so N runs share one process and the service's clock cycles.
- local: N worker processes (one torch thread each), as the study always did. A worker that
  dies (SIGKILL, out of memory) fails its own run alone, and a new worker takes the rest
  (``sweep_pools.ProcessPool``).

With N > 1 each run's console goes to ``<run directory>.log`` beside it, the process's log records
and warnings to ``sweep.log`` beside the runs, and the terminal shows ``progress.SweepProgress``.

A run that fails does not stop the others: it is reported with the command that resumes it
alone. Ctrl-C stops every run at its next request (each stays resumable; a second Ctrl-C quits at
once) and prints one command that continues the whole sweep. A start the service queues or
refuses at its limit of live LoRAs is waited for and retried by the Tinker backend itself
(``ulora_remote.backends.tinker.start``); such a run shows as waiting.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

from ulora_remote.errors import BackendError, ConfigurationError
from ulora_remote.run.rundir import RunDir
from ulora_remote.study.progress import SweepProgress
from ulora_remote.study.sweep_pools import ProcessPool, ThreadPool
from ulora_remote.study.sweep_run import (
    Action,
    RunOutcome,
    RunSpec,
    open_log,
    plan_action,
    run_logged,
)

__all__ = ["RunOutcome", "RunSpec", "SweepResult", "run_sweep"]


@dataclass(frozen=True)
class SweepResult:
    """Every run's outcome, reused ones included, in the order the runs ended."""

    outcomes: tuple[RunOutcome, ...]

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def raise_for_failures(self, continue_command: str | None) -> None:
        """Raise ``BackendError`` naming each failed run, if any.

        Raises:
            BackendError: some runs failed; the others are finished.
        """
        failed = self.failed
        if not failed:
            return
        lines = [f"  {o.spec.name}: {o.error} (resume alone: ulora run --resume "
                 f"{o.spec.run_dir})" for o in failed]
        again = continue_command or "the same call again"
        raise BackendError(
            f"{len(failed)} of {len(self.outcomes)} runs failed; the others are finished:\n"
            + "\n".join(lines) + f"\nfix the cause, then continue the sweep with: {again}"
        )


def run_sweep(
    specs: Sequence[RunSpec],
    *,
    concurrency: int = 1,
    force: bool = False,
    out: TextIO | None = None,
    continue_command: str | None = None,
    log_path: Path | None = None,
) -> SweepResult:
    """Run (or reuse, or resume) every run of ``specs``; see the module docstring.

    Args:
        concurrency: runs in flight at once (threads on Tinker, processes locally).
        force: run everything again from step 0.
        out: the terminal (stdout by default).
        continue_command: the command that continues this sweep, printed on Ctrl-C.
        log_path: where log records and warnings go while N > 1 (default: no redirection).

    Returns:
        Every run's outcome; failed runs do not raise here (``SweepResult.raise_for_failures``).

    Raises:
        ConfigurationError: a bad scenario or override (nothing has run yet), or N < 1.
        KeyboardInterrupt: Ctrl-C, after the runs stopped and the continue command was printed.
    """
    if concurrency < 1:
        raise ConfigurationError(f"--concurrency {concurrency}: give at least 1")
    term = out or sys.stdout
    kinds = {spec: _backend_kind(spec) for spec in specs}  # every scenario validates first
    seen: set[Path] = set()
    for spec in specs:  # a folder in the way fails the sweep before any run starts
        if spec.run_dir in seen:
            raise ConfigurationError(f"{spec.run_dir} is the run directory of two runs of this "
                                     "sweep; give each run its own (each seed once)")
        seen.add(spec.run_dir)
        RunDir(spec.run_dir).refuse_existing(force=True)  # a user's folder, never a run
    if force:
        for spec in specs:
            RunDir(spec.run_dir).prepare_new(force=True)
    actions = {spec: plan_action(spec) for spec in specs}
    todo = [s for s in specs if actions[s] != "reuse"]
    reused = [RunOutcome(s, "reused") for s in specs if actions[s] == "reuse"]
    resumed = sum(a == "resume" for a in actions.values())
    print(f"sweep: {len(specs)} runs: {len(reused)} reused, {len(todo) - resumed} to start, "
          f"{resumed} to resume; concurrency {concurrency}", file=term, flush=True)
    progress = SweepProgress(term, todo, total=len(specs))
    outcomes: list[RunOutcome] = list(reused)
    try:
        if concurrency == 1:
            _inline(todo, actions, progress, outcomes)
        else:
            with _capture_logs(log_path):
                remote = [s for s in todo if kinds[s] == "tinker"]
                local = [s for s in todo if kinds[s] != "tinker"]
                if remote:
                    ThreadPool(remote, actions, concurrency, progress).run(outcomes)
                if local:
                    ProcessPool(local, actions, concurrency, progress, log_path).run(outcomes)
    except KeyboardInterrupt:
        progress.done()
        _interrupted(term, specs, outcomes, continue_command)
        raise
    progress.done()
    return SweepResult(tuple(outcomes))


def _backend_kind(spec: RunSpec) -> str:
    """Where the run goes: its config.json's backend once started (a damaged one fails later,
    as that run's own failure), else its scenario's, which validates it now."""
    from ulora_remote.scenarios import load_scenario

    kind = load_scenario(spec.scenario, spec.overrides).backend.kind
    if RunDir(spec.run_dir).started:
        try:
            kind = RunDir(spec.run_dir).read_config()["scenario"]["backend"]["kind"]
        except (KeyError, TypeError, ValueError):
            pass
    return str(kind)


def _interrupted(term: TextIO, specs: Sequence[RunSpec], outcomes: list[RunOutcome],
                 continue_command: str | None) -> None:
    ended = {o.spec for o in outcomes}
    done = sum(o.status in ("finished", "reused") for o in outcomes)
    stopped = sum(o.status == "interrupted" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    print(f"sweep: interrupted: {done} finished, {stopped} stopped (resumable), {failed} failed, "
          f"{sum(s not in ended for s in specs)} not started.", file=term)
    again = continue_command or "the same command again"
    print(f"Continue the whole sweep with:\n  {again}", file=term, flush=True)


# -- N = 1: inline ----------------------------------------------------------------------------


class _Tee:
    """Writes to the terminal and to the run's log (not a TTY: the runner draws no bar)."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


def _inline(specs: Sequence[RunSpec], actions: dict[RunSpec, Action], progress: SweepProgress,
            outcomes: list[RunOutcome]) -> None:
    never = threading.Event()
    for i, spec in enumerate(specs, 1):
        verb = "resuming" if actions[spec] == "resume" else "running"
        progress.line(f"== {spec.label}, seed {spec.seed} ({i}/{len(specs)}), {verb} -> "
                      f"{spec.run_dir} ==")
        progress.set(spec, "running")
        with open_log(spec) as log:
            tee = cast(TextIO, _Tee(progress.out, log))  # write/flush/isatty is all it needs
            state, wall_s, error = run_logged(spec, actions[spec], never, tee)
        if state == "interrupted":  # Ctrl-C reached the runner in this very thread
            outcomes.append(RunOutcome(spec, state, wall_s))
            raise KeyboardInterrupt
        progress.set(spec, state)
        progress.ended_line(spec, state, wall_s, error)
        outcomes.append(RunOutcome(spec, state, wall_s, error))


@contextmanager
def _capture_logs(path: Path | None) -> Iterator[None]:
    """Send log records (and warnings) to ``path`` instead of the terminal while it lasts."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
