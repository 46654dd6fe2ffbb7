"""The baseline rules and the scale-free stress on scripted loss sequences (pure Python)."""

from __future__ import annotations

import math
import random

import pytest

from ulora_remote.control.config import ControllerConfig
from ulora_remote.control.controller import UnifiedController
from ulora_remote.control.guard import Guard, ZScoreGuard
from ulora_remote.control.policies import (
    FixedPolicy,
    PlateauPolicy,
    PlateauRule,
)
from ulora_remote.control.policy import NO_MODE, LrPolicy, Signal
from ulora_remote.control.screen import ScreenGuard
from ulora_remote.control.snapshots import SnapshotKeeper
from ulora_remote.control.stress import RatioStress, RatioStressConfig
from ulora_remote.errors import ConfigurationError, InputError
from ulora_remote.losses import BatchLosses

# -- reduce-on-plateau ---------------------------------------------------------------------------


def test_plateau_lowers_after_patience_plus_one_bad_steps() -> None:
    rule = PlateauRule(1.0, factor=0.5, patience=2, threshold=0.0)
    lrs = [rule.step(x) for x in (3.0, 2.0, 2.0, 2.0, 2.0, 1.0)]
    # 3 and 2 improve; three non-improving steps exceed patience 2 → halve on the third.
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


def test_plateau_relative_threshold_needs_a_real_improvement() -> None:
    rule = PlateauRule(1.0, factor=0.5, patience=0, threshold=0.1)
    assert rule.step(10.0) == 1.0  # first value always improves on inf
    assert rule.step(9.5) == 0.5  # 9.5 is not below 10·0.9: a bad step, patience 0 → reduce
    assert rule.step(8.0) == 0.5  # 8 < 9: better, no change


def test_plateau_cooldown_ignores_bad_steps_and_min_lr_floors() -> None:
    rule = PlateauRule(1.0, factor=0.1, patience=0, cooldown=2, min_lr=0.05, threshold=0.0)
    lrs = [rule.step(5.0) for _ in range(6)]
    # step 2 reduces to 0.1; two cooldown steps; then 0.1·0.1 = 0.01 is floored at 0.05.
    assert lrs == [1.0, 0.1, 0.1, 0.1, 0.05, 0.05]


def test_plateau_nan_counts_as_a_bad_step() -> None:
    rule = PlateauRule(1.0, factor=0.5, patience=0)
    rule.step(1.0)
    assert rule.step(math.nan) == 0.5


@pytest.mark.parametrize(
    ("factor", "patience", "threshold", "cooldown", "min_lr"),
    [(0.5, 3, 1e-4, 0, 0.0), (0.1, 0, 0.05, 2, 1e-3), (0.7, 5, 0.0, 4, 0.2),
     (0.3, 1, 0.01, 1, 0.0)],
)
def test_plateau_matches_pytorch_reduce_lr_on_plateau(
    factor: float, patience: int, threshold: float, cooldown: int, min_lr: float
) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=factor, patience=patience, threshold=threshold,
        threshold_mode="rel", cooldown=cooldown, min_lr=min_lr,
    )
    ours = PlateauRule(1.0, factor=factor, patience=patience, threshold=threshold,
                       cooldown=cooldown, min_lr=min_lr)
    rng = random.Random(patience * 31 + cooldown)
    level = 5.0
    for _ in range(400):
        level *= rng.choice((0.97, 1.0, 1.0, 1.02))  # drifts, plateaus and bumps
        loss = level + rng.random() * 0.3
        ref.step(loss)
        assert ours.step(loss) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_plateau_state_round_trip_continues_identically() -> None:
    a = PlateauRule(1.0, factor=0.5, patience=1, cooldown=1)
    for x in (3.0, 3.0, 3.0, 2.0):
        a.step(x)
    b = PlateauRule(1.0, factor=0.5, patience=1, cooldown=1)
    b.load_state_dict(a.state_dict())
    assert [a.step(x) for x in (2.5, 2.5, 2.5)] == [b.step(x) for x in (2.5, 2.5, 2.5)]


@pytest.mark.parametrize("kwargs", [{"factor": 1.0}, {"patience": -1}, {"min_lr": -1.0}])
def test_plateau_rejects_bad_options(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        PlateauRule(1.0, **kwargs)


# -- loss z-score skip ---------------------------------------------------------------------------


def _noisy(n: int, level: float = 1.0, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.uniform(-0.05, 0.05) for _ in range(n)]


class _Screen:
    """The batch-level z-score guard fed one batch loss at a time (one example, one token)."""

    def __init__(self, **kwargs: float) -> None:
        self.guard = ZScoreGuard(**kwargs)  # type: ignore[arg-type]

    def screen(self, loss: float) -> bool:
        return not any(self.guard.judge(0, BatchLosses((loss,), (1.0,))).keep)


def test_zskip_accepts_everything_until_the_history_is_long_enough() -> None:
    screen = _Screen(z=3.0, window=10, min_history=5)
    assert [screen.screen(x) for x in (1.0, 9.0, 1.0, 50.0)] == [False] * 4
    assert screen.guard.threshold() == math.inf
    assert isinstance(screen.guard, Guard)


def test_zskip_skips_a_spike_and_then_accepts_clean_batches_again() -> None:
    screen = _Screen(z=3.0, window=20, min_history=10)
    assert not any(screen.screen(x) for x in _noisy(20))
    threshold = screen.guard.threshold()
    assert 1.0 < threshold < 1.2
    assert screen.screen(5.0)  # the shock
    assert screen.guard.threshold() == threshold  # a skipped loss never enters the window
    assert not screen.screen(1.01)  # recovery: clean losses pass again
    assert screen.guard.skipped == 1


def test_zskip_keeps_skipping_a_long_shock_and_any_non_finite_loss() -> None:
    screen = _Screen(z=3.0, window=20, min_history=10)
    for x in _noisy(20):
        screen.screen(x)
    assert all(screen.screen(4.0 + 0.1 * i) for i in range(100))
    assert screen.screen(math.nan) and screen.screen(math.inf)
    clone = ZScoreGuard(z=3.0, window=20, min_history=10)
    clone.load_state_dict(screen.guard.state_dict())
    assert clone.threshold() == screen.guard.threshold() and clone.skipped == 102


def test_zskip_judges_the_batch_mean_and_keeps_all_or_nothing() -> None:
    guard = ZScoreGuard(z=3.0, window=20, min_history=10)
    for x in _noisy(20):
        guard.judge(0, BatchLosses((x, x), (1.0, 1.0)))
    # one outlier example in four lifts the batch mean per token past the threshold
    spiky = guard.judge(1, BatchLosses((1.0, 1.0, 1.0, 9.0), (1.0,) * 4))
    assert spiky.keep == (False,) * 4
    calm = guard.judge(2, BatchLosses((2.0, 2.0), (2.0, 2.0)))
    assert calm.keep == (True, True)


def test_zskip_rejects_a_history_longer_than_its_window() -> None:
    with pytest.raises(ConfigurationError, match="min_history"):
        ZScoreGuard(window=10, min_history=20)


# -- the baseline policies ------------------------------------------------------------------------


def test_baseline_policies_keep_phi_and_replace_only_the_lr() -> None:
    losses = [2.0, 1.5, 1.5, 1.5, 1.5, 0.5]
    plain = UnifiedController.from_preset("tinker")
    plateau = PlateauPolicy(PlateauRule(2e-3, factor=0.5, patience=2, threshold=0.0),
                            UnifiedController.from_preset("tinker"))
    fixed = FixedPolicy(5e-4, UnifiedController.from_preset("tinker"))
    for x in losses:
        a, b, c = plain.decide(x), plateau.observe(Signal(x)), fixed.observe(Signal(x))
        assert (a.phi, a.e_smooth) == (b.phi, b.e_smooth) == (c.phi, c.e_smooth)
        assert b.mode == c.mode == NO_MODE and c.lr == 5e-4
        assert (b.mode_name, c.mode_name) == ("plateau", "fixed")
    assert plateau.rule.lr == 1e-3 and plateau.initial_decision().lr == 1e-3
    assert fixed.initial_decision().lr == 5e-4
    assert all(isinstance(p, LrPolicy) for p in (plain, plateau, fixed))


def test_a_plateau_reduction_is_marked_as_a_switch_with_its_reason() -> None:
    plateau = PlateauPolicy(PlateauRule(2e-3, factor=0.5, patience=1, threshold=0.0),
                            UnifiedController.from_preset("tinker"))
    decisions = [plateau.observe(Signal(x)) for x in (1.0, 1.0, 1.0)]
    assert [d.switched for d in decisions] == [False, False, True]
    assert decisions[-1].lr == 1e-3 and "plateau" in decisions[-1].reason


def test_baseline_policy_state_round_trip() -> None:
    def make() -> PlateauPolicy:
        return PlateauPolicy(PlateauRule(2e-3, patience=2),
                             UnifiedController.from_preset("tinker"))
    a = make()
    for x in _noisy(8):
        a.observe(Signal(x))
    b = make()
    b.load_state_dict(a.state_dict())
    assert a.observe(Signal(1.0)) == b.observe(Signal(1.0))


def test_a_fixed_policy_needs_a_finite_positive_lr() -> None:
    for bad in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(ConfigurationError):
            FixedPolicy(bad, UnifiedController())


# -- snapshots -------------------------------------------------------------------------------------


def _decisions(modes: list[int]):
    ctrl = UnifiedController.from_preset("tinker")
    base = ctrl.decide(1.0)
    prev = 1
    out = []
    for i, m in enumerate(modes):
        out.append(base.__class__(i, 1.0, 1.0, 0.5, m, "x", 1e-3, m != prev))
        prev = m
    return out


def test_snapshot_keeper_saves_while_stable_and_rolls_back_to_the_oldest_once() -> None:
    keeper = SnapshotKeeper(every=5, keep=2)
    decisions = _decisions([1] * 12 + [2] * 3 + [1] * 5)
    saved = []
    for d in decisions:
        if keeper.due(d.step):
            keeper.add(d.step, f"ref{d.step}")
            saved.append(d.step)
        keeper.observe(d)
        if keeper.pending:
            assert keeper.take_rollback() == (5, "ref5")  # 10 is newer: may be damaged
            assert not keeper.due(d.step + 1)  # no snapshot while in Mirror
    # Mirror at 12-14: no snapshot at 15 (decided on the mode of step 14); 20 is past the end.
    assert saved == [0, 5, 10]
    assert keeper.rollbacks == 1


def test_snapshot_keeper_without_snapshots_has_nothing_to_restore() -> None:
    keeper = SnapshotKeeper(every=5)
    keeper.observe(_decisions([2])[0])
    assert keeper.pending and keeper.take_rollback() is None and not keeper.pending


# -- the scale-free stress -------------------------------------------------------------------------


def _run_with_shock(level: float) -> list[float]:
    """Falling from 8× the level to the level, then a 5× shock for 60 steps, then clean."""
    return ([level * (1 + 7 * math.exp(-i / 20)) for i in range(150)]
            + [5 * level] * 60 + [level] * 150)


def test_ratio_stress_ignores_a_high_starting_loss_and_falling_loss() -> None:
    stress = RatioStress()
    values = [stress.update(x) for x in _run_with_shock(1.0)[:150]]
    assert max(values) == 0.0


def test_ratio_stress_is_scale_free() -> None:
    small, large = RatioStress(), RatioStress()
    for x in _run_with_shock(0.2):
        d_small = small.update(x)
        d_large = large.update(x * 10)
        assert d_small == pytest.approx(d_large, abs=1e-9)


def test_ratio_stress_rises_on_a_shock_stays_up_and_falls_after() -> None:
    stress = RatioStress()
    d = [stress.update(x) for x in _run_with_shock(1.0)]
    assert d[160] > 0.7  # ten steps into the 5× shock
    assert min(d[170:210]) > 0.6  # the clipped slow average keeps a long shock stressful
    assert d[300] < 1e-3  # clean loss again: the stress is gone


def test_ratio_stress_treats_non_finite_loss_as_full_stress_without_poisoning() -> None:
    stress = RatioStress()
    stress.update(1.0)
    assert stress.update(math.nan) == 1.0
    assert stress.fast == 1.0 and stress.slow == 1.0


def _scale_free(cfg: ControllerConfig) -> UnifiedController:
    return UnifiedController(cfg, stress=RatioStress())


def test_scale_free_controller_stays_out_of_mirror_at_a_high_start_unlike_the_default() -> None:
    cfg = ControllerConfig.preset("tinker", cooldown=0)
    default, scale_free = UnifiedController(cfg), _scale_free(cfg)
    start = _run_with_shock(1.0)[:150]
    default_modes = [default.decide(x).mode for x in start]
    free_modes = [scale_free.decide(x).mode for x in start]
    assert 2 in default_modes  # Ê/(1+Ê) reads a loss of 8 as stress
    assert 2 not in free_modes and free_modes[-1] == 0  # falling loss: Single, highest LR


def test_scale_free_controller_enters_mirror_on_a_shock_and_recovers() -> None:
    ctrl = _scale_free(ControllerConfig.preset("tinker", cooldown=0))
    modes = [ctrl.decide(x).mode for x in _run_with_shock(0.3)]
    assert max(modes[150:210]) == 2
    assert modes[-1] == 0
    clone = _scale_free(ControllerConfig.preset("tinker", cooldown=0))
    clone.load_state_dict(ctrl.state_dict())
    assert clone.decide(1.5) == ctrl.decide(1.5)


def test_scale_free_controller_rejects_negative_loss_and_the_report_formula() -> None:
    ctrl = _scale_free(ControllerConfig())
    with pytest.raises(InputError):
        ctrl.decide(-1.0)
    with pytest.raises(ConfigurationError, match="formula='readme'"):
        UnifiedController(ControllerConfig(formula="report", theta1=0.4), stress=RatioStress())
    with pytest.raises(ConfigurationError, match="different stress"):
        UnifiedController().load_state_dict(ctrl.state_dict())


def test_ratio_stress_config_rejects_a_fast_average_slower_than_the_slow_one() -> None:
    with pytest.raises(ConfigurationError, match="fast_beta"):
        RatioStressConfig(fast_beta=0.99, slow_beta=0.9)


# -- from a scenario ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "kind", "label"),
    [
        (['controller.method="plateau"', "controller.lr=2e-3"], PlateauPolicy, "plateau-2e-3"),
        (['controller.method="fixed"', 'controller.guard.kind="zskip"', "controller.guard.z=4.0"],
         FixedPolicy, "fixed-5e-4-zskip"),
        (['controller.method="seed"', 'controller.stress="ratio"'], UnifiedController,
         "seed-ratio"),
        (['controller.method="seed"'], UnifiedController, "seed"),
        ([], UnifiedController, "guarded"),
    ],
)
def test_scenario_selects_the_policy(overrides: list[str], kind: type, label: str) -> None:
    from ulora_remote.scenarios import load_scenario

    from ulora_remote.run.builders import build_settings, method_label

    scenario = load_scenario("pig-latin-shock", overrides)
    policy = scenario.controller.build()
    assert isinstance(policy, kind) and method_label(scenario) == label
    assert not hasattr(build_settings(scenario, "x"), "fixed_lr")
    guards = scenario.controller.build_guards()
    expected = {"fixed-5e-4-zskip": [ZScoreGuard], "guarded": [ScreenGuard]}.get(label, [])
    assert [type(g) for g in guards] == expected
    if kind is PlateauPolicy:
        assert policy.initial_decision().lr == 2e-3


def test_scenario_rejects_ratio_stress_on_a_baseline_and_names_the_key() -> None:
    from ulora_remote.scenarios import load_scenario

    with pytest.raises(ConfigurationError, match="unknown key 'controller.stress'"):
        load_scenario("pig-latin-shock", ['controller.method="fixed"', 'controller.stress="ratio"'])


def test_snapshots_are_set_only_for_the_controller_method() -> None:
    from ulora_remote.scenarios import load_scenario

    from ulora_remote.run.builders import build_settings

    on = load_scenario("pig-latin-shock", ["controller.snapshots.every=25"])
    assert build_settings(on, "x").snapshot_every == 25
    assert build_settings(load_scenario("pig-latin-shock"), "x").snapshot_every == 0
    with pytest.raises(ConfigurationError, match="unknown key 'controller.snapshots'"):
        load_scenario("pig-latin-shock", ["controller.snapshots.every=25",
                                          'controller.method="fixed"'])


def test_the_shipped_zskip_scenario_screens_at_the_studys_best_fixed_lr() -> None:
    from ulora_remote.scenarios import load_scenario

    scenario = load_scenario("pig-latin-zskip")
    policy, guards = scenario.controller.build(), scenario.controller.build_guards()
    assert isinstance(policy, FixedPolicy) and policy.initial_decision().lr == 2e-3
    assert len(guards) == 1 and isinstance(guards[0], ZScoreGuard)
    assert (guards[0].z, guards[0].window) == (3.0, 50)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('controller.method="zskip"', "controller.method = 'zskip' is not known — choose one"),
        ("controller.fixed_lr=1e-3", "unknown key 'controller.fixed_lr' — valid keys"),
        ("controller.policy.zskip_z=3", "unknown key 'controller.policy' — valid keys"),
    ],
)
def test_keys_no_release_had_get_the_ordinary_message(override: str, message: str) -> None:
    from ulora_remote.scenarios import load_scenario

    with pytest.raises(ConfigurationError, match=message):
        load_scenario("pig-latin-shock", [override])
