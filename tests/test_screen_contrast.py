"""The screening guard's contrast test on hand-made per-example losses (pure Python, no model):
heterogeneous clean data, fluent noise while the model is still learning, and a shift; and the
contrast pairs the runner builds."""

from __future__ import annotations

import math
import random

from ulora_remote.backend import Example, ForwardBackwardResult, Message
from ulora_remote.chat import chat_example
from ulora_remote.control.contrast import contrast_batch, contrast_result, partners
from ulora_remote.control.guard import ContrastGuard, ZScoreGuard
from ulora_remote.control.screen import ScreenConfig, ScreenGuard

CFG = ScreenConfig(window=80, min_history=40, trigger_steps=3, probation_steps=10,
                   judge_steps=3, backoff_steps=20, contrast=True)


def _fb(losses: list[float]) -> ForwardBackwardResult:
    """Examples of 4 target tokens each with the given mean losses (nats per token)."""
    return ForwardBackwardResult(tuple(4 * x for x in losses), (4.0,) * len(losses))


def _clean(rng: random.Random, level: float) -> tuple[float, float]:
    """A clean example at ``level`` whose difficulty varies by an order of magnitude, and its
    loss under another prompt: 1.5-4x higher (its own prompt tells the model something)."""
    own = level * math.exp(rng.uniform(-1.2, 1.2))
    return own, own * rng.uniform(1.5, 4.0)


def _noise(rng: random.Random, level: float) -> tuple[float, float]:
    """A fluent wrong answer (another question's): a loss inside the clean range, and no
    better under its own prompt than under another one (own/contrast 0.8-1.25; measured on
    SmolLM2-135M, swapped answers' quartiles were 0.87, 0.97, 1.06)."""
    own = level * math.exp(rng.uniform(0.0, 0.8))
    return own, own / rng.uniform(0.8, 1.25)


def _judge(guard: ScreenGuard, t: int, pairs: list[tuple[float, float]]) -> tuple[bool, ...]:
    verdict = guard.judge(t, _fb([o for o, _ in pairs]), None, _fb([c for _, c in pairs]))
    return verdict.keep


def _learning(t: int) -> float:
    """The clean loss level of a model still learning: from 6 nats down to 0.5."""
    return 0.5 + 5.5 * math.exp(-t / 30)


def test_heterogeneous_clean_data_is_kept_while_the_model_learns() -> None:
    rng = random.Random(0)
    guard = ScreenGuard(CFG)
    rejected = 0
    for t in range(200):
        rejected += 8 - sum(_judge(guard, t, [_clean(rng, _learning(t)) for _ in range(8)]))
    assert guard.contrast_on()
    assert rejected / 1600 <= 0.01


def test_fluent_noise_is_rejected_while_the_model_is_still_learning() -> None:
    rng = random.Random(1)
    caught = {True: 0, False: 0}  # contrast on / off
    for contrast in (True, False):
        guard = ScreenGuard(ScreenConfig(**{**CFG.__dict__, "contrast": contrast}))
        for t in range(40):
            batch = [_clean(rng, _learning(t)) for _ in range(8)]
            noisy = 5 <= t < 35
            if noisy:  # 25% swapped answers from step 5, long before τ exists (40 examples)
                batch[1], batch[6] = _noise(rng, _learning(t)), _noise(rng, _learning(t))
            keep = _judge(guard, t, batch)
            if noisy:
                caught[contrast] += (not keep[1]) + (not keep[6])
    assert caught[True] >= 0.8 * 60
    assert caught[False] <= 0.2 * 60  # losses alone: inside the clean range, and no τ early


def test_the_contrast_waits_until_the_model_reads_its_prompts() -> None:
    guard = ScreenGuard(CFG)
    for t in range(4):  # an untrained model: no advantage of the own prompt anywhere
        assert _judge(guard, t, [(5.0, 5.0 * f) for f in (0.9, 1.1) * 4]) == (True,) * 8
    assert not guard.contrast_on()


def _warm(guard: ScreenGuard, rng: random.Random, steps: int = 10) -> int:
    for t in range(steps):
        assert _judge(guard, t, [_clean(rng, 0.3) for _ in range(8)]) == (True,) * 8
    return steps


def test_a_shift_passes_the_contrast_and_is_declared_after_a_probation() -> None:
    """A new rule (reversed words): its answers fit their own prompts (ratio 0.5) but their
    loss starts far above τ; on probation one more example of the batch falls below τ each
    step, as measured on the built-in model."""
    rng = random.Random(2)
    guard = ScreenGuard(CFG)
    t = _warm(guard, rng)
    actions = []
    for j in range(CFG.trigger_steps + CFG.probation_steps):
        below = max(0, min(8, j - CFG.trigger_steps + 1))
        own = [0.5] * below + [4.0] * (8 - below)
        verdict = guard.judge(t + j, _fb(own), None, _fb([2 * x for x in own]))
        actions.append(verdict.action)
        if verdict.action == "shift":
            break
    assert actions.count("probation") == 1 and actions[-1] == "shift"
    assert "rollback" not in actions and guard.phase == "normal"


def test_whole_batches_of_fluent_noise_open_a_probation_that_is_rolled_back() -> None:
    """Swapped answers at the clean loss level: τ alone would keep them all; the contrast
    rejects them, and on probation they never come to fit their prompts."""
    rng = random.Random(3)
    guard = ScreenGuard(CFG)
    t = 10
    for k in range(t):
        _judge(guard, k, [_clean(rng, 0.6) for _ in range(8)])
    tau = guard.threshold()
    assert CFG.min_loss * 1.2 < tau < math.inf
    level = (CFG.min_loss + tau) / 2  # below τ, above the floor under which ratios mean nothing
    actions = []
    for j in range(CFG.trigger_steps + CFG.probation_steps + 1):
        pairs = [(level, level * rng.uniform(0.9, 1.1)) for _ in range(8)]
        verdict = guard.judge(t + j, _fb([o for o, _ in pairs]), None,
                              _fb([c for _, c in pairs]))
        actions.append(verdict.action)
        if j < CFG.trigger_steps - 1:
            assert not any(verdict.keep)
        if verdict.action == "rollback":
            break
    assert actions.count("probation") == 1 and actions[-1] == "rollback"


def test_an_answer_predicted_well_under_any_prompt_is_not_rejected() -> None:
    """A clean answer trained on in an earlier epoch: tiny loss under its own prompt and
    under another one. Below ``min_loss`` the ratio means nothing, as for τ."""
    rng = random.Random(6)
    guard = ScreenGuard(CFG)
    t = _warm(guard, rng)
    assert guard.contrast_on()
    assert _judge(guard, t, [(0.05, 0.055)] * 4 + [(3.0, 3.1)] * 4) == (True,) * 4 + (False,) * 4


def test_without_contrast_losses_only_tau_judges() -> None:
    rng = random.Random(4)
    guard = ScreenGuard(CFG)
    t = _warm(guard, rng)
    assert guard.judge(t, _fb([0.3] * 8)).keep == (True,) * 8  # e.g. the HF Trainer's guard


def test_state_round_trip_keeps_the_contrast_reference() -> None:
    rng = random.Random(5)
    guard = ScreenGuard(CFG)
    _warm(guard, rng)
    copy = ScreenGuard(CFG)
    copy.load_state_dict(guard.state_dict())
    assert copy.contrast_on() and copy.state_dict() == guard.state_dict()


def test_only_the_screening_guard_asks_for_contrast_pairs() -> None:
    assert isinstance(ScreenGuard(CFG), ContrastGuard) and ScreenGuard(CFG).uses_contrast
    assert not isinstance(ZScoreGuard(), ContrastGuard)
    assert not ScreenGuard(ScreenConfig(contrast=False)).uses_contrast
    assert not ScreenGuard().uses_contrast  # opt-in until it meets the built-in suite too


def test_contrast_pairs_stay_within_a_task_and_swap_only_the_prompt() -> None:
    batch = [Example("a ->", " x", task="p"), Example("b ->", " y", task="q"),
             Example("c ->", " z", task="p"), Example("d ->", " w", task="p")]
    assert partners(batch) == (2, None, 3, 0)
    pairs = contrast_batch(batch)
    assert [(e.prompt, e.completion) for e in pairs] == [("c ->", " x"), ("d ->", " z"),
                                                         ("a ->", " w")]
    result = contrast_result(batch, _fb([1.0, 2.0, 3.0]))
    assert result.weight_sums == (4.0, 0.0, 4.0, 4.0)
    assert result.nll_sums == (4.0, 0.0, 8.0, 12.0)


def test_a_conversation_keeps_its_answers_and_system_and_takes_the_partners_questions() -> None:
    one = chat_example([Message("system", "s"), Message("user", "q1"),
                        Message("assistant", "a1"), Message("user", "q2"),
                        Message("assistant", "a2")])
    two = chat_example([Message("user", "r1"), Message("assistant", "b1")])
    first, second = contrast_batch([one, two])
    assert [(m.role, m.content) for m in first.messages] == [
        ("system", "s"), ("user", "r1"), ("assistant", "a1"), ("user", "r1"),
        ("assistant", "a2")]
    assert [(m.role, m.content) for m in second.messages] == [("user", "q1"),
                                                              ("assistant", "b1")]


def test_a_shock_batch_flags_the_examples_it_corrupted_in_chat_form_too() -> None:
    from ulora_remote.scenarios.pig_latin import PigLatinTask
    from ulora_remote.scenarios.shocks import Schedule, ShockStream

    task = PigLatinTask(0, 8, system="Pig Latin.")
    stream = ShockStream(task, batch_size=8, schedule=Schedule([(2, 4)]),
                         kind="swapped-answer", fraction=0.25)
    clean, shock = stream.batch(1), stream.batch(2)
    assert clean.corrupted == () and not clean.shock
    assert sum(shock.corrupted) == 2 and shock.shock
    for e, c, flag in zip(shock.examples, task.train_batch(2, 8), shock.corrupted, strict=True):
        assert e.messages[0] == Message("system", "Pig Latin.")
        assert e.messages[1] == c.messages[1]  # the same question
        assert (e.completion != c.completion) == flag
