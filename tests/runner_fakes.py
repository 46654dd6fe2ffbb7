"""Small in-test fakes for the runner tests: a deterministic scalar "model" and a batch source.

The fake backend is a one-parameter model whose loss on an example is (w − target)² + 0.1, where
the target depends on the example's text (so a batch screened with others, or alone, gets the same
per-example losses); ``optim_step`` moves w against the accumulated gradient by the learning rate.
It is enough to check ordering, lag, resume and replay without torch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from ulora_remote.backend import (
    AdamParams,
    Completed,
    Datum,
    Example,
    ForwardBackwardResult,
    OptimStepResult,
)
from ulora_remote.errors import CheckpointError, StateLostError
from ulora_remote.task import Batch, Scores, exact_match


def _target(example: Example) -> float:
    return (zlib.crc32((example.prompt + example.completion).encode()) % 1000) / 1000.0


class FakeBackend:
    """Deterministic, synchronous; records every call; can lose its state on a chosen call."""

    def __init__(self, lose_state_at_fb: Sequence[int] = ()) -> None:
        self.w, self.grad = 2.0, 0.0
        self.calls: list[tuple[str, float]] = []
        self.saved: dict[str, tuple[float]] = {}
        self.closed = False
        self._lose_at = set(lose_state_at_fb)
        self._fb_count = 0
        self.max_context_length: int | None = None

    def render(self, example: Example) -> Datum:
        return Datum((1,), (1,), (1.0,))

    def forward_backward(self, batch: Sequence[Example]) -> Completed[ForwardBackwardResult]:
        self._fb_count += 1
        if self._fb_count in self._lose_at:
            raise StateLostError("fake 410: promise expired")
        targets = [_target(e) for e in batch]
        self.grad += sum(2 * (self.w - t) for t in targets) / len(targets)
        self.calls.append(("fb", self.w))
        return Completed(self._result(targets))

    def forward(self, batch: Sequence[Example]) -> Completed[ForwardBackwardResult]:
        self.calls.append(("fwd", float(len(batch))))
        return Completed(self._result([_target(e) for e in batch]))

    def _result(self, targets: Sequence[float]) -> ForwardBackwardResult:
        losses = [((self.w - t) ** 2 + 0.1) * 2 for t in targets]
        return ForwardBackwardResult(nll_sums=tuple(losses), weight_sums=(2.0,) * len(targets))

    def optim_step(self, params: AdamParams) -> Completed[OptimStepResult]:
        self.w -= params.learning_rate * 100 * self.grad
        self.grad = 0.0
        self.calls.append(("opt", params.learning_rate))
        return Completed(OptimStepResult())

    def save_state(self, name: str) -> str:
        self.saved[name] = (self.w,)
        return f"fake://{name}"

    def load_state(self, ref: str) -> None:
        name = ref.removeprefix("fake://")
        if name not in self.saved:
            raise CheckpointError(f"no checkpoint {ref}")
        (self.w,), self.grad = self.saved[name], 0.0

    def sample(
        self, examples: Sequence[Example], max_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        # Right answer for the first half of the prompts once w is small.
        return [f" {e.prompt}ay " if i % 2 == 0 and self.w < 1.0 else "x"
                for i, e in enumerate(examples)]

    def close(self) -> None:
        self.closed = True


class FakeSource:
    """Batches that are a pure function of the step; shocks inside the given windows."""

    def __init__(self, windows: Sequence[tuple[int, int]] = ((20, 30),), batch_size: int = 4):
        self.windows, self.batch_size = list(windows), batch_size

    def batch(self, step: int) -> Batch:
        shock = any(s <= step < e for s, e in self.windows)
        tag = "shock" if shock else "clean"
        return Batch([Example(f"{tag}{step}-{i} ->", f" {i}") for i in range(self.batch_size)],
                     shock)

    def eval_examples(self, step: int = 0) -> list[Example]:
        return [Example(f"w{i}", f"w{i}ay") for i in range(4)]

    def score(self, step: int, outputs: Sequence[str]) -> Scores:
        return Scores(exact_match=exact_match(outputs, self.eval_examples(step)))
