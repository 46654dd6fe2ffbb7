"""The screening guard: per-example outlier screening, and a probation that tells a learnable
shift of the data from unlearnable noise (docs/design.md, "Guards").

Screening. Each example's loss ℓ_i (nats per target token, from the gradient-free screening
``forward``) is compared with the losses of recently *accepted* examples::

    τ = max(median + z·1.4826·MAD, min_loss)          over the last ``window`` accepted examples

An example with ℓ_i > τ, or a non-finite loss, gets weight 0; the step is skipped only when no
example is left. Until ``min_history`` examples were accepted every finite example is kept. The
median and the MAD (scaled to σ for a normal distribution) are robust: a burst of outliers does
not move them, and rejected losses never enter the window. ``min_loss`` keeps the easy tail of
clean data: on the default scenario (fixed 2e-3, seed 0) clean examples' median loss falls to
0.06-0.2 nats per token after step 150 while their 99th percentile stays near 1, and corrupted
targets lie above 1.4 (random letters above 4.2); with z = 4 and min_loss = 1, 0.6% of clean
examples were rejected after step 300 and 95-100% of corrupted ones after step 150.

Contrast. τ needs history and a model whose clean losses sit well below the noise's. While a
real model is still learning neither holds: on SmolLM2-135M a 25% burst of swapped answers (a
correct answer to another question) at steps 12-32 lay well above the clean losses of the same
batches, yet τ rejected 0 of 40: it has no history before step 20, and then its window still
holds the fast-falling losses of the first steps (benchmarks/RESULTS.md, "On a real model").
So each example is also compared
with its own answer under another example's prompt (``ulora_remote.control.contrast``; the
runner screens these mismatched pairs in the same forward)::

    reject when  ℓ_i / ℓ(answer_i | prompt_j) > contrast_max  and  ℓ_i > min_loss

A clean answer fits its own prompt better than another one as soon as the model reads its
prompts at all; a swapped answer or random letters fit it no better. The test applies to a task
once the lower quartile of the ratios of its last accepted examples (at least
``contrast_history``) is at most ``contrast_gate``: before that the model ignores its prompts
and the ratio says nothing. A loss
at or below ``min_loss`` passes, as it passes τ: an answer trained on in an earlier epoch can
be predicted well under any prompt, and a ratio of two tiny losses says nothing (a safeguard:
in the recorded runs no clean example was rejected by the ratio below 1 nat). Measured on recorded
per-example losses (``benchmarks/guard_dump.py``, ``benchmarks/guard_rules.py``; SmolLM2-135M,
Pig Latin as chat records, fixed 1e-3; benchmarks/RESULTS.md, "On a real model"): with
θ = 0.85, 32 of 40 swapped answers at steps 12-32 (and 32 of 40 with that burst moved to step
5) and 20 of 20 random letters at 40-50 were rejected, against 2.1% of clean examples before
step 40 and 0.8% after; τ alone rejected none of them. On plain prompts at the same rate the
model stayed near 2.5 nats and the test rejected 9-11% of clean examples: it needs a model
that reads its prompts well. It is opt-in (``contrast = False`` by default; the ``smollm2-*``
scenarios turn it on): on the built-in model's guard-shift scenario it delayed the declared shift
from 33 to 85 steps (seed 0), a target τ alone met.

Noise or shift. A lasting change of the data looks like noise at first: every example is
rejected. When at least ``trigger_share`` of the batch was rejected on ``trigger_steps``
consecutive steps, the guard asks for a *probation* (``action = "probation"``): the runner saves
a stability snapshot, and the guard admits every finite example at ``probation_lr``, keeping τ
frozen at its value on entry. The new data is *learnable* when, over the last ``judge_steps``
steps, at least ``pass_share`` of the examples fall below that τ: the model reaches the loss of
clean data on examples it has never trained on, which noise cannot (its loss cannot fall below
the entropy of the noise). Then the guard declares a shift (``action = "shift"``): its reference
restarts from the new data and the policy re-bases its stress. If that does not happen within
``probation_steps`` steps, the data is noise: the guard asks for a rollback to the snapshot
(``action = "rollback"``), which undoes every probation update, and keeps rejecting without a
new probation for ``backoff_steps`` steps (doubled after each failed probation). If most of the
batch passes τ at once, the burst ended during the probation: it is rolled back too.

Measured (medium model, seed 1, 40 probation steps from steps 150 and 400 of a fixed-2e-3 run):
random letters and another word's answer never had an example below τ, at 5e-4 or 1e-3; a
reversed-word rule passed τ for 30% of the examples (4-step average) after 20-24 steps at 1e-3,
after 29 steps or not within 40 at 5e-4, and its loss fell too slowly at Mirror's 1e-4 to decide
within 40 steps. The guard study then showed that this probe was too kind: in `guard-shift`
(the reversed-word rule from step 250, on the guarded run's own model) a probation at 1e-3 let
only 0-12% of the examples pass τ after 30 steps, in all 5 seeds, and every shift was rolled
back, while noise and the shift both fell to about half their entry loss. At Single's rate,
2e-3, the shift was declared 33-39 steps after it began in 4 of 5 seeds (63 in the fifth), and
random letters and swapped answers still had no example below τ after 60 steps. Hence
``probation_lr = 2e-3`` and ``probation_steps = 60`` by default (a probation still fits inside
the seed's 100-step shock windows).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ulora_remote.control.guard import Verdict, example_losses
from ulora_remote.errors import ConfigurationError
from ulora_remote.losses import BatchLosses

__all__ = ["ScreenConfig", "ScreenGuard"]

Phase = Literal["normal", "probation", "backoff"]


@dataclass(frozen=True, kw_only=True)
class ScreenConfig:
    """The screening guard's parameters (see the module docstring). Counts are in examples
    (``window``, ``min_history``, ``contrast_history``) or steps; losses in nats per target
    token; ``contrast_max`` and ``contrast_gate`` are ratios of two such losses. ``contrast``
    false: τ alone judges (the rule before the contrast test)."""

    z: float = 4.0
    min_loss: float = 1.0
    window: int = 400
    min_history: int = 160
    trigger_share: float = 0.75
    trigger_steps: int = 5
    probation_steps: int = 60
    judge_steps: int = 4
    pass_share: float = 0.25
    probation_lr: float = 2e-3
    backoff_steps: int = 60
    contrast: bool = False
    contrast_max: float = 0.85
    contrast_gate: float = 0.7
    contrast_history: int = 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.z) and self.z > 0 and math.isfinite(self.min_loss)
                and self.min_loss >= 0):
            raise ConfigurationError(f"screen z={self.z}, min_loss={self.min_loss}: need a "
                                     "finite z > 0 and a finite min_loss ≥ 0")
        if not 2 <= self.min_history <= self.window:
            raise ConfigurationError(f"screen min_history={self.min_history}, window="
                                     f"{self.window}: need 2 ≤ min_history ≤ window")
        if not (0 < self.trigger_share <= 1 and 0 < self.pass_share <= 1):
            raise ConfigurationError("screen trigger_share and pass_share must lie in (0, 1]")
        if not 1 <= self.judge_steps <= self.probation_steps or self.trigger_steps < 1:
            raise ConfigurationError(
                f"screen judge_steps={self.judge_steps}, probation_steps="
                f"{self.probation_steps}, trigger_steps={self.trigger_steps}: need "
                "1 ≤ judge_steps ≤ probation_steps and trigger_steps ≥ 1")
        if not (math.isfinite(self.probation_lr) and self.probation_lr > 0):
            raise ConfigurationError(f"screen probation_lr={self.probation_lr}: must be > 0")
        if not (0 < self.contrast_gate <= self.contrast_max and math.isfinite(self.contrast_max)
                and 1 <= self.contrast_history <= self.window):
            raise ConfigurationError(
                f"screen contrast_gate={self.contrast_gate}, contrast_max={self.contrast_max}, "
                f"contrast_history={self.contrast_history}: need 0 < contrast_gate ≤ "
                "contrast_max (finite) and 1 ≤ contrast_history ≤ window")


@dataclass
class _TaskState:
    """One task's reference: its recently accepted example losses, and how many steps in a row
    most of its examples were rejected."""

    accepted: deque[float]
    streak: int = 0
    ratios: deque[float] = field(default_factory=deque)  # accepted own/contrast loss ratios


@dataclass
class _State:
    tasks: dict[str, _TaskState] = field(default_factory=dict)
    phase: Phase = "normal"
    task: str = ""  # the task on probation
    since: int = -1  # the step the probation started, or the step the backoff ends
    threshold: float = math.inf  # its τ, frozen at the start of the probation
    recent: deque[tuple[int, int]] = field(default_factory=deque)  # (examples, passed) per step
    contrast: bool = False  # whether the contrast test applied when the probation began
    failures: int = 0
    rejected: int = 0


class ScreenGuard:
    """Per-example screening with a probation for sustained rejection (module docstring).

    Each task of a multi-task stream (``Example.task``) has its own reference, trigger and
    probation, so a task that is still learning is never judged against another task's losses;
    a single-task stream is the task ``""``.
    """

    def __init__(self, config: ScreenConfig | None = None) -> None:
        self.config = config or ScreenConfig()
        self._s = _State()

    @property
    def phase(self) -> Phase:
        return self._s.phase

    def threshold(self, task: str = "") -> float:
        """τ of ``task`` for the next batch: inf while fewer than ``min_history`` of its
        examples were accepted."""
        cfg, window = self.config, self._task(task).accepted
        if len(window) < cfg.min_history:
            return math.inf
        median = statistics.median(window)
        mad = statistics.median(abs(x - median) for x in window)
        return max(median + cfg.z * 1.4826 * mad, cfg.min_loss)

    def contrast_on(self, task: str = "") -> bool:
        """Whether ``task``'s examples are held to the contrast test: its model reads its
        prompts (the lower quartile of the own/contrast ratios of its recently accepted
        examples, at least ``contrast_history`` of them, is ≤ ``contrast_gate``). A quartile,
        not the median: a burst of noise that arrives before the test applies is accepted, and
        its ratios near 1 held the median of a real run above the gate for the whole burst."""
        cfg, ratios = self.config, self._task(task).ratios
        return (cfg.contrast and len(ratios) >= cfg.contrast_history
                and sorted(ratios)[len(ratios) // 4] <= cfg.contrast_gate)

    @property
    def uses_contrast(self) -> bool:
        """Whether ``judge`` wants the contrast losses (``ScreenConfig.contrast``)."""
        return self.config.contrast

    def judge(self, step: int, screened: BatchLosses,
              tasks: Sequence[str] | None = None,
              contrast: BatchLosses | None = None) -> Verdict:
        """``contrast``: each example's answer under another example's prompt
        (``ulora_remote.control.contrast``), or None: then only τ judges."""
        losses = example_losses(screened)
        ratios = (tuple(x / c if c > 0 else math.nan
                        for x, c in zip(losses, example_losses(contrast), strict=True))
                  if contrast is not None and self.config.contrast
                  else (math.nan,) * len(losses))
        names = tuple(tasks) if tasks is not None else ("",) * len(losses)
        if self._s.phase == "probation":
            return self._probation(step, losses, ratios, names)
        if self._s.phase == "backoff" and step >= self._s.since:
            self._s.phase = "normal"
        return self._screen(step, losses, ratios, names)

    def _task(self, task: str) -> _TaskState:
        if task not in self._s.tasks:
            self._s.tasks[task] = _TaskState(deque(maxlen=self.config.window),
                                             ratios=deque(maxlen=self.config.window))
        return self._s.tasks[task]

    def _passes(self, x: float, ratio: float, tau: float, contrast: bool) -> bool:
        """Below τ, and (where the contrast test applies and the example has a contrast) an
        answer that fits its own prompt better than another one: ratio ≤ ``contrast_max``.
        A loss at or below ``min_loss`` passes the contrast test as it passes τ: an answer the
        model already predicts well under any prompt (one it has trained on in an earlier
        epoch) shows no advantage of its own prompt, and is no noise."""
        cfg = self.config
        fits = (not contrast or not math.isfinite(ratio) or ratio <= cfg.contrast_max
                or x <= cfg.min_loss)
        return math.isfinite(x) and x <= tau and fits

    # -- normal screening -------------------------------------------------------------------------
    def _keep(self, losses: tuple[float, ...], ratios: tuple[float, ...],
              names: tuple[str, ...], skip: str | None = None
              ) -> tuple[tuple[bool, ...], dict[str, float]]:
        """Screen every example (those of task ``skip`` aside: kept if finite) against its
        task's τ and contrast test, and add the kept losses and ratios to their task's
        reference."""
        taus = {t: self.threshold(t) for t in dict.fromkeys(names)}
        on = {t: self.contrast_on(t) for t in taus}
        keep = tuple(math.isfinite(x) if t == skip else self._passes(x, r, taus[t], on[t])
                     for x, r, t in zip(losses, ratios, names, strict=True))
        for x, r, t, k in zip(losses, ratios, names, keep, strict=True):
            if k and t != skip:
                self._task(t).accepted.append(x)
                if math.isfinite(r):
                    self._task(t).ratios.append(r)
        return keep, taus

    def _screen(self, step: int, losses: tuple[float, ...], ratios: tuple[float, ...],
                names: tuple[str, ...]) -> Verdict:
        s, cfg = self._s, self.config
        keep, taus = self._keep(losses, ratios, names)
        rejected = len(keep) - sum(keep)
        s.rejected += rejected
        for task in taus:  # the tasks present in this batch
            flags = [k for k, t in zip(keep, names, strict=True) if t == task]
            share = 1.0 - sum(flags) / len(flags)
            state = self._task(task)
            state.streak = state.streak + 1 if share >= cfg.trigger_share else 0
        note = f"screen: {rejected}/{len(keep)} rejected" if rejected else ""
        if s.phase == "normal":
            for task, tau in taus.items():
                # A probation needs a reference to judge the new data against: τ, or the
                # contrast test (a burst of swapped answers while τ is not yet defined).
                judged = math.isfinite(tau) or self.contrast_on(task)
                if self._task(task).streak >= cfg.trigger_steps and judged:
                    return self._start_probation(step, losses, names, keep, task, tau)
        return Verdict(keep=keep, note=note)

    # -- probation --------------------------------------------------------------------------------
    def _start_probation(self, step: int, losses: tuple[float, ...], names: tuple[str, ...],
                         keep: tuple[bool, ...], task: str, tau: float) -> Verdict:
        s = self._s
        s.phase, s.task, s.since, s.threshold = "probation", task, step, tau
        s.contrast = self.contrast_on(task)
        self._task(task).streak = 0
        s.recent = deque(maxlen=self.config.judge_steps)
        admitted = tuple(k or (t == task and math.isfinite(x))
                         for x, t, k in zip(losses, names, keep, strict=True))
        on = f" of task {task!r}" if task else ""
        return Verdict(keep=admitted, action="probation", lr=self.config.probation_lr,
                       note=f"screen: {self.config.trigger_steps} steps mostly rejected{on}; "
                            f"probation at lr {self.config.probation_lr:g}")

    def _probation(self, step: int, losses: tuple[float, ...], ratios: tuple[float, ...],
                   names: tuple[str, ...]) -> Verdict:
        s, cfg = self._s, self.config
        keep, _ = self._keep(losses, ratios, names, skip=s.task)
        mine = [(x, r) for x, r, t in zip(losses, ratios, names, strict=True)
                if t == s.task and math.isfinite(x)]
        elapsed = step - s.since
        if mine:  # a step without examples of the task on probation tells nothing
            # An example passes as it would in normal screening, against the frozen τ and the
            # contrast test as it stood on entry.
            passed = sum(self._passes(x, r, s.threshold, s.contrast) for x, r in mine)
            before = _share(deque(list(s.recent)[-(cfg.judge_steps - 1):]))
            s.recent.append((len(mine), passed))
            now, share = passed / len(mine), _share(s.recent)
            if before <= _BACK_LOW and now >= _BACK_HIGH:
                return self._back_to_normal(now)
            if len(s.recent) == cfg.judge_steps and share >= cfg.pass_share:
                return self._declare_shift(keep, mine, share)
        share = _share(s.recent)
        if elapsed >= cfg.probation_steps:
            return self._fail(step, share)
        return Verdict(keep=keep, lr=cfg.probation_lr,
                       note=f"screen: probation step {elapsed}, {share:.0%} of the new examples "
                            "pass")

    def _declare_shift(self, keep: tuple[bool, ...], mine: list[tuple[float, float]],
                       share: float) -> Verdict:
        s = self._s
        s.phase, s.failures = "normal", 0
        state = self._task(s.task)
        state.accepted.clear()  # the new data is the new normal: restart the reference from it
        state.accepted.extend(x for x, _ in mine)
        state.ratios.clear()
        state.ratios.extend(r for _, r in mine if math.isfinite(r))
        return Verdict(keep=keep, action="shift",
                       note=f"screen: {share:.0%} of the new examples pass; shift declared")

    def _back_to_normal(self, now: float) -> Verdict:
        # Most of the task's examples pass τ at once: the old data is back (a learned rule rises
        # over many steps). Undo the probation's updates, which were made on the burst.
        self._s.phase = "normal"
        return Verdict(keep=(), action="rollback",
                       note=f"screen: {now:.0%} of the new examples pass again at once; the "
                            "burst ended, rolled back")

    def _fail(self, step: int, share: float) -> Verdict:
        s, cfg = self._s, self.config
        s.failures += 1
        s.phase, s.since = "backoff", step + cfg.backoff_steps * 2 ** (s.failures - 1)
        # The runner rolls back and calls judge again for this step, now in backoff.
        return Verdict(keep=(), action="rollback",
                       note=f"screen: only {share:.0%} of the new examples pass after "
                            f"{cfg.probation_steps} steps; not learnable, rolled back")

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        s = self._s
        state = {k: v for k, v in asdict(s).items() if k not in ("tasks", "recent")}
        state["tasks"] = {t: {"accepted": list(v.accepted), "streak": v.streak,
                              "ratios": list(v.ratios)} for t, v in s.tasks.items()}
        state["recent"] = [list(r) for r in s.recent]
        return {"config": asdict(self.config), "state": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ConfigurationError("screen guard state was saved with other parameters; "
                                     "build the guard the way the run was built")
        raw = dict(state["state"])
        raw["tasks"] = {t: _TaskState(deque(v["accepted"], maxlen=self.config.window),
                                      int(v["streak"]),
                                      deque(v["ratios"], maxlen=self.config.window))
                        for t, v in raw["tasks"].items()}
        raw["recent"] = deque((tuple(r) for r in raw["recent"]), maxlen=self.config.judge_steps)
        self._s = _State(**raw)


# "The old data is back": the share passing τ jumps from at most _BACK_LOW (over the previous
# judge_steps - 1 steps) to _BACK_HIGH or more in one step. In the measurements a learnable rule
# never did (its largest one-step rise was 0.375, from a level above 0.125), and a burst that
# ended after 6 probation steps at 1e-3 let about 75% pass at once.
_BACK_LOW, _BACK_HIGH = 0.125, 0.5


def _share(recent: deque[tuple[int, int]]) -> float:
    total = sum(n for n, _ in recent)
    return sum(p for _, p in recent) / total if total else 0.0
