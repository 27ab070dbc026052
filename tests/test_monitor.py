"""Divergence, collapse and learning rules on constructed state traces (no training)."""

from __future__ import annotations

import math

import pytest

from parcae.monitor import (
    RULES,
    MonitorConfig,
    final_status,
    geometric_growth,
    judge,
    learned,
    spectral_radius,
    state_ratio,
)

CFG = MonitorConfig()
E_NORM = 8.0  # ||e|| of an RMS-normed input at d = 64


def row(norms: list[float], step: int = 0, **extra: float) -> dict[str, float]:
    """A trace row as the monitor writes it, from the mean state norm per loop step."""
    out = {"step": float(step), "tokens": 512.0 * step, "loss": 3.0, "grad_norm": 1.0,
           **{f"state_norm_{t + 1}": n for t, n in enumerate(norms)},
           "state_norm_last": norms[-1], "max_state_norm": max(norms),
           "state_ratio": norms[-1] / E_NORM, "rho_A": 0.5}
    out.update(extra)
    return out


def geometric(scale: float, rate: float, loops: int = 8) -> list[float]:
    return [scale * rate ** t for t in range(1, loops + 1)]


def additive(scale: float, loops: int = 8) -> list[float]:
    return [scale * t for t in range(1, loops + 1)]


def growing(make, points: int = 3) -> list[dict[str, float]]:
    """A trace whose states grow by 50% between monitor points."""
    return [row(make(1.5 ** i), step=10 * i) for i in range(points)]


def test_geometric_growth_fires_on_geometric_states():
    verdict = geometric_growth(growing(lambda s: geometric(s, 1.3)), CFG)
    assert verdict is not None and verdict.rule == "geometric_growth"
    assert "1.3" in verdict.reason and "1.1" in verdict.reason  # the ratio and the limit


def test_additive_growth_is_not_geometric():
    # h_t = t e: ratios 1 + 1/t are above 1 + eps early but fade towards 1
    assert geometric_growth(growing(additive), CFG) is None
    # ... even where every later ratio exceeds 1 + eps (a short loop of three steps)
    short = growing(lambda s: additive(s, loops=3))
    assert all(r["state_norm_3"] / r["state_norm_2"] > 1 + CFG.growth_eps for r in short)
    assert geometric_growth(short, CFG) is None


def test_geometric_growth_needs_patience_and_growth_across_training():
    trace = growing(lambda s: geometric(s, 1.3))
    assert geometric_growth(trace[:2], CFG) is None  # two points, patience is three
    steady = [row(geometric(1.0, 1.3), step=10 * i) for i in range(3)]
    assert geometric_growth(steady, CFG) is None  # not growing across training
    assert geometric_growth(trace, MonitorConfig(growth_eps=0.5)) is None  # 1.3 < 1.5


def test_converging_states_never_diverge():
    # a contracting recurrence approaching its fixed point, states growing over training
    trace = [row([s * (1 - 0.5 ** t) for t in range(1, 9)], step=10 * i)
             for i, s in enumerate((10.0, 20.0, 40.0))]
    assert judge(trace, CFG) is None


def test_spectral_radius_needs_rho_above_one_and_a_growing_state():
    trace = [{**r, "rho_A": 1.2} for r in growing(additive)]
    verdict = spectral_radius(trace, CFG)
    assert verdict is not None and "1.2" in verdict.reason
    steady = [row(additive(1.0), step=10 * i, rho_A=1.2) for i in range(3)]
    assert spectral_radius(steady, CFG) is None
    # add's linear part is the identity, rho = 1 exactly: additive, not geometric, growth
    assert spectral_radius([{**r, "rho_A": 1.0} for r in trace], CFG) is None
    mixed = [{**r, "rho_A": rho} for r, rho in zip(trace, (1.2, 0.9, 1.2), strict=True)]
    assert spectral_radius(mixed, CFG) is None  # not sustained


def test_state_ratio_and_the_absolute_limits():
    big = [row(additive(E_NORM * 100))]  # ||h_T|| / ||e|| = 800
    verdict = state_ratio(big, CFG)
    assert verdict is not None and "800" in verdict.reason
    assert judge([row(additive(1.0))], CFG) is None
    assert judge([row(additive(2e3))], CFG).rule == "state_ratio"  # before the norm limit
    lenient = MonitorConfig(max_state_ratio=1e9)
    assert judge([row(additive(2e3))], lenient).rule == "state_norm_limit"
    assert judge([row(additive(1.0), loss=60.0)], lenient).rule == "loss_limit"


def test_non_finite_comes_before_the_last_resorts():
    trace = [row(additive(1.0), loss=math.nan)]
    verdict = judge(trace, CFG)
    assert verdict.rule == "non_finite" and "loss = nan" in verdict.reason
    inf_state = [row([1.0, math.inf, math.inf, math.inf])]
    assert judge(inf_state, CFG).rule == "non_finite"


def test_rules_are_asked_in_the_documented_order():
    assert list(RULES) == ["geometric_growth", "spectral_radius", "state_ratio", "non_finite",
                           "state_norm_limit", "loss_limit"]
    # a trace breaking every rule at once gets the first
    trace = [{**r, "rho_A": 2.0, "loss": 99.0} for r in growing(lambda s: geometric(s, 3.0))]
    assert judge(trace, CFG).rule == "geometric_growth"


@pytest.mark.parametrize(("val", "base", "expected"), [
    (2.0, 3.0, True), (2.96, 3.0, False), (2.94, 3.0, True), (3.2, 3.0, False),
    (None, 3.0, None)])
def test_learned_means_below_the_baseline_by_the_margin(val, base, expected):
    assert learned(val, base, CFG) is expected


def test_collapsed_needs_no_learning_and_one_state():
    assert final_status("ok", False, 0.95, CFG) == "collapsed"
    assert final_status("ok", False, 0.5, CFG) == "ok"  # did not learn, but no collapse
    assert final_status("ok", True, 0.99, CFG) == "ok"
    assert final_status("diverged", False, 0.99, CFG) == "diverged"
    assert final_status("ok", None, None, CFG) == "ok"
