"""The backend protocol and its data types, with Tinker's semantics (docs/design.md, "Backends").

Every backend (local torch+peft, the Tinker SDK, ...) implements ``TrainingBackend``. Training
calls return a ``Future`` at once, so that the runner can pipeline; a synchronous call is
``backend.forward_backward(batch).result()``. Requests execute in submission order.

Units: losses are natural-log negative log-likelihoods (nats); ``nll_sums`` are *sums* over the
weighted target tokens of one example, as Tinker's ``cross_entropy`` is a sum. The mean
per-token loss the controller sees is ``sum(nll_sums) / sum(weight_sums)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from ulora_remote.errors import InputError
from ulora_remote.losses import BatchLosses

__all__ = [
    "SHARED_ADAPTER",
    "AdamParams",
    "AdapterBackend",
    "Completed",
    "Datum",
    "Example",
    "ForwardBackwardResult",
    "Future",
    "Message",
    "OptimStepResult",
    "ROLES",
    "TrainingBackend",
    "adapter_groups",
    "check_fork",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


#: The roles a chat message may have.
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation: ``role`` is one of ``ROLES``, ``content`` its text."""

    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """A text example: the loss falls on ``completion`` only, conditioned on ``prompt``.

    Attributes:
        prompt: the text the model conditions on (for a causal LM, the rendered input).
        completion: the target text; the loss falls on its tokens only.
        inputs: structured inputs for a backend that takes them apart, e.g. the two sentences of
            a pair for a sequence classifier; empty when ``prompt`` is the whole input.
        task: the name of the task the example belongs to ("" for a single-task stream).
        messages: a conversation (a chat record), or empty. When given, a backend renders the
            messages itself (the tokenizer's chat template, else the plain template of
            ``ulora_remote.chat``) with the loss on every assistant turn, and samples after
            the turns before the last assistant turn; ``prompt`` and ``completion`` then hold
            the plain rendering of those turns and the last assistant turn's content, for
            scorers and for backends that take text only (``ulora_remote.chat.chat_example``
            builds such an example).
    """

    prompt: str
    completion: str
    inputs: tuple[str, ...] = ()
    task: str = ""
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class Datum:
    """A rendered example: model inputs, next-token targets and per-target weights.

    ``input_tokens[i]`` predicts ``target_tokens[i]``; the three sequences have equal length.
    Weights are 1.0 on completion targets and 0.0 on prompt targets.
    """

    input_tokens: tuple[int, ...]
    target_tokens: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.input_tokens)
        if len(self.target_tokens) != n or len(self.weights) != n:
            raise InputError(
                f"datum lengths differ: {n} inputs, {len(self.target_tokens)} targets, "
                f"{len(self.weights)} weights"
            )

    @property
    def weight_sum(self) -> float:
        return float(sum(self.weights))


@dataclass(frozen=True)
class ForwardBackwardResult(BatchLosses):
    """Per-example weighted NLL sums (nats) and weight totals of one batch (``BatchLosses``).

    ``gradient_variance``: for a ``forward_backward`` over examples of two or more tasks on a
    backend that holds the gradients (local) and was asked to measure it
    (``AdapterBackend.measure_gradient_variance``), the seed's weight-space variance of the
    tasks' gradients, Σ_T |g_T − ḡ|² / Σ_T |g_T|² in [0, 1] (0: every task pulls the same way;
    1/2: orthogonal pulls of equal size; 1: they cancel), each task's gradient taken on the
    adapter it trains; None otherwise (not asked, one task, a forward, or no gradients at hand,
    as on Tinker).
    """

    gradient_variance: float | None = None


@dataclass(frozen=True, kw_only=True)
class AdamParams:
    """One optimizer step's AdamW parameters; every field may change on every step.

    ``grad_clip_norm`` ≤ 0 means no clipping. Defaults are Tinker's.
    """

    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise InputError(f"learning_rate={self.learning_rate!r} must be finite and ≥ 0")


@dataclass(frozen=True)
class OptimStepResult:
    """The result of ``optim_step``: the global L2 norm of the gradient before clipping, when
    the backend reports it (Tinker reports it only when clipping is on)."""

    grad_norm: float | None = None


class Future(Protocol[T_co]):
    """A handle to a submitted request."""

    def result(self, timeout: float | None = None) -> T_co:
        """Block until the request finished and return its value.

        Args:
            timeout: seconds to wait at most; None waits without a deadline.

        Raises:
            RemoteTimeoutError: the deadline passed (the request may still run).
            BackendError: the request failed.
        """
        ...


class Completed(Generic[T]):
    """A future that is already done: what a synchronous backend returns."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> T:
        return self._value


@runtime_checkable
class TrainingBackend(Protocol):
    """What every backend provides. Requests of one backend run in submission order.

    Methods that return a ``Future`` only submit (they block at most for rendering and the
    send); ``result()`` blocks. The other methods block until done.

    ``max_context_length``: the tokens one sequence may hold (a rendered ``Datum``'s input
    tokens; a sampling prompt plus its ``max_tokens`` − 1), or None where the backend does not
    know it. Runs check data files against it before they start.

    State lost: a remote backend whose state is lost raises ``StateLostError`` and refuses
    further submissions until ``load_state``; if nothing was trained into it yet (no
    ``forward_backward``, ``optim_step`` or ``load_state`` since it was built), its next
    submission starts again from the fresh state of its model, rank and seed instead.
    """

    @property
    def max_context_length(self) -> int | None: ...

    def render(self, example: Example) -> Datum:
        """Tokenize one example with this backend's tokenizer.

        Raises:
            InputError: the completion renders to no tokens, or a character cannot be encoded.
        """
        ...

    def forward_backward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        """Accumulate gradients of Σ weight·(−log p(target)) over the batch.

        Raises:
            InputError: the batch is empty or an example cannot be rendered.
        """
        ...

    def forward(self, batch: Sequence[Example]) -> Future[ForwardBackwardResult]:
        """The same numbers as ``forward_backward``, with no gradients and no state change."""
        ...

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        """Apply one AdamW step with ``params`` to the accumulated gradients, then clear them."""
        ...

    def save_state(self, name: str) -> str:
        """Save adapter weights and optimizer state; return a reference for ``load_state``.

        Blocks until the checkpoint is complete. Raises CheckpointError on a bad name.
        """
        ...

    def load_state(self, ref: str) -> None:
        """Restore weights and optimizer state saved by ``save_state`` (same model and rank).

        Raises:
            CheckpointError: missing, incomplete, or from another base model or rank.
        """
        ...

    def sample(
        self, examples: Sequence[Example], max_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        """Generate a completion for each example's input: its prompt, or its structured
        ``inputs`` for a backend that takes them apart (the example's completion is not
        used). Greedy at temperature 0; at most ``max_tokens`` tokens each. Blocks.

        Raises:
            InputError: an example cannot be rendered.
        """
        ...

    def close(self) -> None:
        """Release resources (sessions, threads). Safe to call twice."""
        ...


#: The task name of examples that train the shared adapter (``Example.task`` empty).
SHARED_ADAPTER = ""


@runtime_checkable
class AdapterBackend(TrainingBackend, Protocol):
    """A backend that can give tasks their own LoRA adapters beside the shared one
    (docs/design.md, "Per-task adapters").

    Until ``fork_adapters`` is called every example trains the one shared adapter. After it,
    each example is routed by its ``Example.task``: an example of a forked task is trained,
    scored (``forward``) and sampled with that task's adapter, any other example with the shared
    adapter. Per-adapter semantics are Tinker's, one model per adapter:

    * ``forward_backward`` accumulates each example's gradient on its own adapter only;
    * ``optim_step`` applies one AdamW step to every adapter that accumulated a gradient since
      the last ``optim_step`` (each with its own moments, and its own ``grad_clip_norm``); an
      adapter that got no example this step is not touched, moments included; the reported
      ``grad_norm`` is the global norm over the adapters stepped;
    * ``save_state`` saves every adapter once with the routes; ``load_state`` restores exactly
      that set, so loading a checkpoint made before the fork returns to the shared adapter
      alone, and a fresh backend that loads a forked checkpoint holds the same adapters.
    """

    def fork_adapters(self, tasks: Sequence[str]) -> None:
        """Give each of ``tasks`` its own adapter, a copy of the shared adapter at this moment
        (weights and optimizer state). Blocks until done; call it with no request in flight.

        Raises:
            InputError: a task named "" (the shared adapter's), a repeated task, or a task
                that already has an adapter.
        """
        ...

    def adapter_tasks(self) -> tuple[str, ...]:
        """The tasks with their own adapter, in fork order (empty: one shared adapter)."""
        ...

    def measure_gradient_variance(self, on: bool) -> None:
        """Whether a ``forward_backward`` over two or more tasks reports
        ``ForwardBackwardResult.gradient_variance`` (off until called: a batch trains in one
        pass per adapter, as without tasks; on: one pass per task, so that each task's gradient
        can be read). A backend without the gradients at hand (Tinker) ignores it. The runner
        turns it on for a run with ``[adapters]``."""
        ...


def check_fork(tasks: Sequence[str], existing: Sequence[str]) -> list[str]:
    """The tasks of a ``fork_adapters`` call, checked (every backend refuses the same way).

    Raises:
        InputError: no task, a task named "", a repeated task, or one that has an adapter.
    """
    wanted = list(tasks)
    if not wanted:
        raise InputError("fork_adapters needs at least one task name")
    if SHARED_ADAPTER in wanted:
        raise InputError('task "" is the shared adapter\'s; name the tasks to fork')
    if len(set(wanted)) != len(wanted):
        raise InputError(f"fork_adapters got a task twice: {wanted}")
    taken = sorted(set(wanted) & set(existing))
    if taken:
        raise InputError(f"task(s) {taken} already have their own adapter")
    return wanted


def adapter_groups(examples: Sequence[Example], adapter_tasks: Sequence[str]
                   ) -> list[tuple[str, list[int]]]:
    """Indices of ``examples`` grouped by the adapter that serves them: ``(task, indices)`` for
    a task in ``adapter_tasks``, ``(SHARED_ADAPTER, indices)`` for the rest; first-seen order."""
    own = set(adapter_tasks)
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.task if e.task in own else SHARED_ADAPTER, []).append(i)
    return list(groups.items())
