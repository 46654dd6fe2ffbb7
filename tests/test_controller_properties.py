"""Property tests of the controller on arbitrary loss sequences (hypothesis)."""

from __future__ import annotations

import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from ulora_remote import ControllerConfig, UnifiedController

losses = st.lists(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)

configs = st.builds(
    ControllerConfig,
    alpha=st.floats(min_value=0.01, max_value=0.99),
    beta=st.floats(min_value=0.01, max_value=0.99),
    theta0=st.floats(min_value=0.05, max_value=0.45),
    theta1=st.floats(min_value=0.5, max_value=0.95),
    cooldown=st.integers(min_value=0, max_value=40),
    derivative_gain=st.sampled_from([0.0, 0.5, 3.0]),
)


@settings(max_examples=200, deadline=None)
@given(cfg=configs, seq=losses)
def test_phi_stays_in_open_unit_interval_and_e_smooth_non_negative(
    cfg: ControllerConfig, seq: list[float]
) -> None:
    c = UnifiedController(cfg)
    for x in seq:
        d = c.decide(x)
        assert 0.0 < d.phi < 1.0
        assert d.e_smooth >= 0.0


@settings(max_examples=200, deadline=None)
@given(cfg=configs, seq=losses)
def test_no_switch_within_the_cooldown(cfg: ControllerConfig, seq: list[float]) -> None:
    c = UnifiedController(cfg)
    switches = [d.step for d in (c.decide(x) for x in seq) if d.switched]
    assert all(b - a >= cfg.cooldown for a, b in zip(switches, switches[1:], strict=False))


def _threshold_mode(phi: float, cfg: ControllerConfig) -> int:
    return 0 if phi < cfg.theta0 else (1 if phi < cfg.theta1 else 2)


@settings(max_examples=200, deadline=None)
@given(cfg=configs, seq=losses)
def test_mode_agrees_with_thresholds_once_the_cooldown_allows(
    cfg: ControllerConfig, seq: list[float]
) -> None:
    c = UnifiedController(cfg)
    last_switch: int | None = None
    for x in seq:
        d = c.decide(x)
        allowed = last_switch is None or d.step - last_switch >= cfg.cooldown
        if allowed:
            assert d.mode == _threshold_mode(d.phi, cfg)
        if d.switched:
            last_switch = d.step
        assert d.lr == cfg.lrs[d.mode]


@settings(max_examples=200, deadline=None)
@given(seq=losses)
def test_report_form_never_exceeds_one_half(seq: list[float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        c = UnifiedController(formula="report")
    for x in seq:
        assert c.decide(x).phi <= 0.5


@settings(max_examples=100, deadline=None)
@given(seq=losses, cut=st.integers(min_value=0, max_value=300))
def test_state_round_trip_anywhere(seq: list[float], cut: int) -> None:
    cfg = ControllerConfig.preset("tinker", mirror_lock=True)
    whole = UnifiedController(cfg)
    expected = [whole.decide(x) for x in seq]
    cut = min(cut, len(seq))
    head = UnifiedController(cfg)
    got = [head.decide(x) for x in seq[:cut]]
    tail = UnifiedController(cfg)
    tail.load_state_dict(head.state_dict())
    got += [tail.decide(x) for x in seq[cut:]]
    assert got == expected
