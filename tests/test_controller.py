"""The Unified-LoRA controller against the seeds' numbers and its own contract."""

from __future__ import annotations

import math
import warnings

import pytest

from ulora_remote import (
    PRESETS,
    ConfigurationError,
    ControllerConfig,
    InputError,
    UnifiedController,
)


def run(controller: UnifiedController, losses: list[float]) -> list:
    return [controller.decide(x) for x in losses]


# -- golden values from the seeds -----------------------------------------------------------


def test_first_updates_match_hand_computed_values() -> None:
    # From φ=0.5, Ê=1.0 with L=0.5, α=0.1, β=0.9:
    #   Ê1 = 0.9·1 + 0.1·0.5 = 0.95; φ1 = 0.9·0.5 + 0.1·0.95/1.95
    #   Ê2 = 0.9·0.95 + 0.05 = 0.905; φ2 = 0.9·φ1 + 0.1·0.905/1.905
    c = UnifiedController()
    d1, d2 = run(c, [0.5, 0.5])
    assert d1.e_smooth == pytest.approx(0.95, abs=1e-15)
    assert d1.phi == pytest.approx(0.4987179487179487, abs=1e-15)
    assert d2.e_smooth == pytest.approx(0.905, abs=1e-15)
    assert d2.phi == pytest.approx(0.4963527155259439, abs=1e-15)
    assert (d1.step, d2.step, c.step) == (0, 1, 2)


def test_constant_loss_half_settles_at_one_third_in_multi() -> None:
    # Seed 000's Tinker log: "[250] Mode=1 φ=0.333 E_s=0.500 lr=5e-4".
    c = UnifiedController.from_preset("tinker")
    d = run(c, [0.5] * 400)[-1]
    assert d.e_smooth == pytest.approx(0.5, abs=1e-6)
    assert d.phi == pytest.approx(1 / 3, abs=1e-6)
    assert (d.mode, d.mode_name, d.lr) == (1, "Multi", 5e-4)


def test_shock_level_loss_settles_in_mirror() -> None:
    # Seed 000's Tinker log: "[350] Mode=2 φ=0.827 E_s=4.979 lr=1e-4".
    c = UnifiedController.from_preset("tinker")
    d = run(c, [4.979] * 400)[-1]
    assert d.e_smooth == pytest.approx(4.979, abs=1e-6)
    assert d.phi == pytest.approx(4.979 / 5.979, abs=1e-6)  # ≈ 0.833
    assert round(d.phi, 3) == 0.833
    assert (d.mode, d.mode_name, d.lr) == (2, "Mirror", 1e-4)


def test_low_loss_reaches_single() -> None:
    c = UnifiedController()
    d = run(c, [0.1] * 400)[-1]
    assert d.phi == pytest.approx(0.1 / 1.1, abs=1e-6)
    assert (d.mode, d.lr) == (0, 5e-5)


def test_report_form_fixed_point_and_bound() -> None:
    with pytest.warns(UserWarning, match="Mirror unreachable|unreachable"):
        c = UnifiedController(formula="report")
    # X = L/(1+L) = 0.8 for L = 4; Ê → 0.8; φ → 0.8/1.8.
    d = run(c, [4.0] * 400)[-1]
    assert d.e_smooth == pytest.approx(0.8, abs=1e-6)
    assert d.phi == pytest.approx(0.8 / 1.8, abs=1e-6)
    assert d.mode == 1


def test_report_form_without_unreachable_mirror_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UnifiedController(formula="report", theta0=0.2, theta1=0.45)


def test_quick_start_runs_verbatim_with_a_stand_in_optimizer() -> None:
    """Seed 000's quick start, unchanged but for the stand-ins it assumes exist."""

    class Loss:
        def __init__(self, value: float) -> None:
            self.value = value

        def item(self) -> float:
            return self.value

        def backward(self) -> None:
            pass

    class Outputs:
        def __init__(self, loss: Loss) -> None:
            self.loss = loss

    class Optimizer:
        def __init__(self) -> None:
            self.param_groups = [{"lr": 0.0}]
            self.steps = 0

        def step(self) -> None:
            self.steps += 1

        def zero_grad(self) -> None:
            pass

    train_loader = [{"x": i} for i in range(50)]
    optimizer = Optimizer()
    seen: list[float] = []

    def model(**batch: int) -> Outputs:
        return Outputs(Loss(3.0 / (1 + batch["x"])))

    # --- seed 000, verbatim ---
    from ulora_remote import UnifiedController

    controller = UnifiedController(alpha=0.1, beta=0.9, theta0=0.3, theta1=0.7)

    for step, batch in enumerate(train_loader):  # noqa: B007 - the seed's loop, verbatim
        outputs = model(**batch)
        loss = outputs.loss

        new_lr = controller.update(loss.item())

        for g in optimizer.param_groups:
            g["lr"] = new_lr

        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seen.append(new_lr)
    # --- end ---

    assert all(isinstance(x, float) for x in seen)
    assert set(seen) <= {5e-5, 3e-5, 1e-5}
    assert optimizer.steps == 50 and optimizer.param_groups[0]["lr"] == seen[-1]
    assert controller.step == 50
    assert 0 < controller.phi < 1 and controller.mode in (0, 1, 2) and controller.E_smooth > 0


# -- presets and config validation ------------------------------------------------------------


def test_presets() -> None:
    assert PRESETS["reference"].lrs == (5e-5, 3e-5, 1e-5)
    assert PRESETS["reference"].cooldown == 0
    assert PRESETS["tinker"].lrs == (2e-3, 5e-4, 1e-4)
    assert PRESETS["tinker"].cooldown == 30
    assert UnifiedController().config == PRESETS["reference"]
    assert ControllerConfig.preset("tinker", cooldown=0).cooldown == 0
    with pytest.raises(ConfigurationError, match="unknown controller preset 'fast'"):
        ControllerConfig.preset("fast")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"theta0": 0.7, "theta1": 0.3}, "theta0"),
        ({"theta0": 0.5, "theta1": 0.5}, "theta0"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"beta": 1.01}, "beta"),
        ({"lr_single": -1e-4}, "lr_single"),
        ({"lr_mirror": math.nan}, "lr_mirror"),
        ({"cooldown": -1}, "cooldown"),
        ({"cooldown": 2.5}, "cooldown"),
        ({"formula": "paper"}, "formula"),
        ({"alpha_e": 2.0}, "alpha_e"),
        ({"theta1": 1.0}, "theta1"),
        ({"derivative_gain": -1.0}, "derivative_gain"),
        ({"gamma": 0.1}, "gamma"),
    ],
)
def test_invalid_config_is_rejected_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        UnifiedController(**kwargs)


def test_alpha_and_beta_one_are_allowed() -> None:
    UnifiedController(alpha=1.0, beta=1.0)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_is_maximal_stress_and_keeps_state_finite(bad: float) -> None:
    c = UnifiedController()
    run(c, [0.5] * 20)
    e_before, phi_before = c.E_smooth, c.phi
    d = c.decide(bad)
    assert d.e_smooth == e_before  # the EMA is not fed a non-finite value
    assert d.phi == pytest.approx(0.9 * phi_before + 0.1 * 1.0)  # D = 1
    for _ in range(100):
        d = c.decide(bad)
    assert math.isfinite(d.e_smooth) and math.isfinite(d.phi)
    assert 0 < d.phi < 1 and d.mode == 2


def test_negative_loss_raises_and_says_why() -> None:
    c = UnifiedController()
    with pytest.raises(InputError, match="negative"):
        c.update(-0.1)
    assert c.step == 0


def test_external_stress_is_mixed_after_normalisation() -> None:
    c = UnifiedController(alpha_e=0.5)
    d = c.decide(1.0, external_stress=1.0)
    e = 0.9 * 1.0 + 0.1 * 1.0
    assert d.phi == pytest.approx(0.9 * 0.5 + 0.1 * (0.5 * e / (1 + e) + 0.5 * 1.0))
    with pytest.raises(InputError, match="external_stress"):
        c.decide(1.0, external_stress=1.5)


# -- cooldown, Mirror-lock, derivative reaction -------------------------------------------------


def test_cooldown_spaces_switches_and_jumps_straight_to_the_target() -> None:
    c = UnifiedController(cooldown=30, alpha=1.0, beta=1e-9)
    # alpha=1, beta≈0: φ follows L/(1+L) at once, so the target mode changes every step.
    losses = [0.1, 9.0, 0.1, 9.0] * 20
    decisions = run(c, losses)
    switches = [d.step for d in decisions if d.switched]
    assert switches[0] == 0  # the first switch is always allowed (Multi → Single)
    assert all(b - a >= 30 for a, b in zip(switches, switches[1:], strict=False))
    jumps = {(decisions[s - 1].mode, decisions[s].mode) for s in switches[1:]}
    assert jumps <= {(0, 2), (2, 0)}  # straight to the target, never through Multi


def test_mirror_lock_waits_for_phi_below_theta1_minus_h() -> None:
    # alpha=1, beta=0.5: φ = Ê/(1+Ê) and Ê halves towards each loss, so values are exact.
    cfg = dict(alpha=1.0, beta=0.5, lock_hysteresis=0.1, lock_patience=1)
    locked = UnifiedController(mirror_lock=True, **cfg)
    free = UnifiedController(**cfg)
    for c in (locked, free):
        run(c, [9.0, 9.0])  # Ê = 5, 7: φ = 0.875, Mirror
        assert c.mode == 2
    for c in (locked, free):
        run(c, [0.0])  # Ê = 3.5, φ ≈ 0.778: Mirror for both
    d_locked, d_free = locked.decide(0.0), free.decide(0.0)  # Ê = 1.75, φ ≈ 0.636
    assert 0.6 < d_locked.phi < 0.7
    assert d_free.mode == 1 and d_locked.mode == 2  # below θ1 but not below θ1 − h
    d_locked = locked.decide(0.0)  # Ê = 0.875, φ ≈ 0.467 < 0.6
    assert d_locked.mode == 1 and d_locked.switched


def test_mirror_lock_waits_until_the_smoothed_loss_stops_rising() -> None:
    c = UnifiedController(alpha=1.0, beta=0.5, mirror_lock=True, lock_hysteresis=0.0,
                          lock_patience=4, theta1=0.6)
    run(c, [9.0, 9.0])
    assert c.mode == 2
    modes = [d.mode for d in run(c, [0.0, 0.0, 0.0])]  # Ê falls: calm 1, 2, 3
    assert modes == [2, 2, 2] and c.phi < 0.6  # φ is low, but only 3 calm updates
    d = c.decide(1.0)  # Ê rises 0.875 → 0.9375: the calm count starts again
    assert d.phi < 0.6 and d.mode == 2
    modes = [d.mode for d in run(c, [0.0] * 4)]
    assert modes[:3] == [2, 2, 2] and modes[3] in (0, 1)


def test_derivative_reaction_moves_phi_sooner_on_a_rise_only() -> None:
    plain, fast = UnifiedController(), UnifiedController(derivative_gain=5.0)
    # Ê starts at 1.0 and falls towards 0.3: no rise, so no boost and identical φ.
    a, b = run(plain, [0.3] * 50), run(fast, [0.3] * 50)
    assert a == b
    p, f = plain.decide(20.0), fast.decide(20.0)
    e = 0.9 * a[-1].e_smooth + 0.1 * 20.0
    d_now, d_prev = e / (1 + e), a[-1].e_smooth / (1 + a[-1].e_smooth)
    assert p.phi == pytest.approx(0.9 * a[-1].phi + 0.1 * d_now, abs=1e-12)
    boosted = min(1.0, d_now + 5.0 * (d_now - d_prev))
    assert f.phi == pytest.approx(0.9 * b[-1].phi + 0.1 * boosted, abs=1e-12)
    assert f.phi > p.phi


# -- state round trip ----------------------------------------------------------------------------


def test_state_round_trip_continues_bit_identically() -> None:
    losses = [3.0 / (1 + i % 37) + (5.0 if 40 <= i < 60 else 0.0) for i in range(200)]
    cfg = ControllerConfig.preset("tinker", mirror_lock=True, derivative_gain=2.0)
    whole = UnifiedController(cfg)
    expected = run(whole, losses)

    first = UnifiedController(cfg)
    head = run(first, losses[:97])
    state = first.state_dict()
    import json

    restored = UnifiedController(cfg)
    restored.load_state_dict(json.loads(json.dumps(state)))
    tail = run(restored, losses[97:])
    assert head + tail == expected


def test_load_state_refuses_a_different_config() -> None:
    state = UnifiedController(cooldown=5).state_dict()
    with pytest.raises(ConfigurationError, match="cooldown"):
        UnifiedController(cooldown=6).load_state_dict(state)
