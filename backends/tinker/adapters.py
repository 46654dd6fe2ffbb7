"""Per-task adapters on Tinker: one training client per task, created from the shared client's
saved state with its optimizer (docs/design.md, "Per-task adapters").

The service serves many LoRAs on one base model, so a fork is a ``save_state`` of the shared
client and one ``create_training_client_from_state_with_optimizer`` per task. A batch whose
examples belong to several adapters goes out as one request per client; the futures here put
the answers back together in the batch's order. A checkpoint of a forked backend is one saved
state per client; its reference lists them all (``composite_ref``), so loading it rebuilds every
client, each from its own state, exactly once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence

from ulora_remote.backend import ForwardBackwardResult, Future, OptimStepResult
from ulora_remote.errors import CheckpointError

__all__ = ["COMPOSITE_PREFIX", "GatheredOptim", "GatheredResult", "composite_ref", "parse_ref"]

#: The prefix of a reference to the saved states of a forked backend (JSON follows).
COMPOSITE_PREFIX = "tinker-adapters:"


def composite_ref(shared: str, tasks: Mapping[str, str]) -> str:
    """One reference for the shared client's state and each task client's, in fork order."""
    return COMPOSITE_PREFIX + json.dumps({"shared": shared, "tasks": dict(tasks)},
                                         separators=(",", ":"))


def parse_ref(ref: str) -> tuple[str, dict[str, str]]:
    """``(shared path, {task: path})`` of a reference; a plain ``tinker://`` path has no tasks.

    Raises:
        CheckpointError: neither a ``tinker://`` path nor a well-formed composite reference.
    """
    if ref.startswith("tinker://"):
        return ref, {}
    if ref.startswith(COMPOSITE_PREFIX):
        try:
            data = json.loads(ref.removeprefix(COMPOSITE_PREFIX))
            shared, tasks = data["shared"], data["tasks"]
        except (ValueError, KeyError, TypeError):
            data = None
        if data is not None and _paths(shared, tasks):
            return shared, dict(tasks)
    raise CheckpointError(f"{ref[:80]!r} is not a Tinker checkpoint path (tinker://...) nor a "
                          f"reference of per-task adapters ({COMPOSITE_PREFIX}...)")


def _paths(shared: object, tasks: object) -> bool:
    return (isinstance(shared, str) and shared.startswith("tinker://")
            and isinstance(tasks, dict)
            and all(isinstance(k, str) and isinstance(v, str) and v.startswith("tinker://")
                    for k, v in tasks.items()))


class _Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())


class GatheredResult:
    """The ``ForwardBackwardResult`` of a batch sent as one request per adapter."""

    def __init__(self, parts: Sequence[tuple[list[int], Future[ForwardBackwardResult]]],
                 size: int) -> None:
        self.parts, self.size = list(parts), size

    def result(self, timeout: float | None = None) -> ForwardBackwardResult:
        deadline = _Deadline(timeout)
        nll, weights = [0.0] * self.size, [0.0] * self.size
        for idx, future in self.parts:  # every part is read, so no future is left unread
            part = future.result(deadline.left())
            for i, n, w in zip(idx, part.nll_sums, part.weight_sums, strict=True):
                nll[i], weights[i] = n, w
        return ForwardBackwardResult(tuple(nll), tuple(weights))


class GatheredOptim:
    """One ``optim_step`` per adapter stepped; the grad norm is their global norm when every
    client reports one (Tinker does only when clipping is on)."""

    def __init__(self, parts: Sequence[Future[OptimStepResult]]) -> None:
        self.parts = list(parts)

    def result(self, timeout: float | None = None) -> OptimStepResult:
        deadline = _Deadline(timeout)
        norms = [f.result(deadline.left()).grad_norm for f in self.parts]
        if any(n is None for n in norms):
            return OptimStepResult(None)
        return OptimStepResult(math.sqrt(sum(float(n) ** 2 for n in norms if n is not None)))
