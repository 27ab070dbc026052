"""The compute accounting against counts done by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from parcae.compute import account, executed_ratio, expected_steps
from parcae.model import ModelConfig, build_model
from parcae.module import DepthSampler

TINY = ModelConfig(d_model=64, n_heads=2, prelude_layers=1, core_layers=1, coda_layers=1,
                   vocab_size=256, loops=4, depth_sampling="fixed")
# One block at d = 64, head dim 32: qkv 3d^2 + out d^2 + up 4d^2 + down 4d^2 = 49152,
# two block norms 2d = 128, q/k norms 2*32 = 64.
BLOCK = 49152 + 128 + 64
DIAGONAL = 64 + 64 + 64 * 64  # A_log, dt_bias, B
EXTRA = 64 + 64 * 64 + 64  # injection norm, C, final norm
HEAD = 256 * 64


def test_parameter_counts_match_hand_counts():
    acct = account(TINY, seq_len=32)
    assert acct.params == 3 * BLOCK + DIAGONAL + EXTRA == 156480
    assert acct.params_unrolled == 2 * BLOCK + DIAGONAL + EXTRA + 4 * BLOCK == 304512
    assert acct.head_params == HEAD


def test_flops_per_token_match_hand_count_for_fixed_depth():
    acct = account(TINY, seq_len=32)
    # mu_bwd = 2: two loop steps with gradient, two without
    other = 2 * BLOCK + DIAGONAL + EXTRA
    attn = 4 * 32 * 64  # scores and values, per layer per token, forward
    expected = (6 * (other + HEAD + 2 * BLOCK) + 2 * 2 * BLOCK
                + attn * (3 * (2 + 2) + 2))
    assert expected == 1645312
    assert acct.flops_per_token == expected


def test_baseline_counts_its_untied_core_once():
    base = account(replace(TINY, injection="baseline"), seq_len=32)
    assert base.params == 6 * BLOCK + EXTRA  # 4 untied core blocks, no injection parameters
    assert base.params_unrolled == base.params
    attn = 4 * 32 * 64
    assert base.flops_per_token == 6 * (base.params + HEAD) + 3 * attn * 6


def test_one_loop_is_one_step_not_poisson_of_one():
    cfg = replace(TINY, loops=1, depth_sampling="poisson")
    assert expected_steps(cfg) == (0.0, 1.0)  # Poisson(1) clamped at 1 would be 1.37
    assert account(cfg, seq_len=32).flops_per_token == account(
        replace(cfg, depth_sampling="fixed"), seq_len=32).flops_per_token


@pytest.mark.parametrize("mu", [2, 5, 8, 12])
def test_poisson_expected_steps(mu):
    cfg = replace(TINY, loops=mu, depth_sampling="poisson")
    n, k = expected_steps(cfg)
    assert n + k == pytest.approx(mu + math.exp(-mu), rel=1e-9)  # E[max(P, 1)]
    assert 0 < k <= cfg.mu_bwd
    assert cfg.mu_bwd == math.ceil(mu / 2)


def test_budget_round_trip():
    acct = account(TINY, seq_len=32)
    assert acct.tokens_for(acct.flops_for(12345)) == 12345
    assert acct.tokens_for(acct.flops_per_token * 0.5) == 0


def test_linear_injection_charges_its_h_half_on_every_loop_step():
    cfg = replace(TINY, injection="linear")
    acct = account(cfg, seq_len=32)
    d, attn = 64, 4 * 32 * 64
    w_h = d * d  # W_h h runs every step; W_e e is hoisted out of the loop and runs once
    other = 2 * BLOCK + 2 * d * d + EXTRA
    assert acct.params == other + BLOCK
    assert acct.flops_step_grad == 6 * (BLOCK + w_h) + 3 * attn
    assert acct.flops_step_nograd == 2 * (BLOCK + w_h) + attn
    assert acct.flops_once == 6 * (other - w_h + HEAD) + 3 * attn * 2
    assert acct.flops_per_token == acct.flops_once + 2 * acct.flops_step_grad \
        + 2 * acct.flops_step_nograd


def executed_over(cfg: ModelConfig, batches: int, batch: int, seq_len: int) -> float:
    """Executed FLOPs of ``batches`` training batches: the depths the trainer's sampler draws,
    the loop steps the model's schedule runs for them."""
    schedule = build_model(cfg).schedule
    depths = DepthSampler(cfg, seed=0)
    counts = {"grad": 0, "nograd": 0}
    for _ in range(batches):
        grad, nograd = schedule.executed(depths(batch).tolist(), cfg.mu_bwd)
        counts = {"grad": counts["grad"] + grad, "nograd": counts["nograd"] + nograd}
    return account(cfg, seq_len).executed_flops(batches * batch * seq_len, counts)


@pytest.mark.parametrize("active_only", [True, False])
@pytest.mark.parametrize("injection", ["diagonal", "linear", "baseline"])
def test_fixed_depth_executed_flops_equal_the_accounted_exactly(injection, active_only):
    cfg = replace(TINY, injection=injection, loops=5, active_only=active_only)
    acct = account(cfg, seq_len=32)
    assert executed_over(cfg, 7, 4, 32) == acct.flops_for(7 * 4 * 32)
    assert executed_ratio(cfg, 32, 4, active_only) == 1.0


@pytest.mark.parametrize("mu", [4, 8])
def test_poisson_executed_flops_active_only_converge_all_run_exceed(mu):
    cfg = replace(TINY, loops=mu, depth_sampling="poisson")
    tokens = 4000 * 8 * 32
    accounted = account(cfg, seq_len=32).flops_for(tokens)
    active = executed_over(replace(cfg, active_only=True), 4000, 8, 32) / accounted
    all_run = executed_over(replace(cfg, active_only=False), 4000, 8, 32) / accounted
    assert active == pytest.approx(1.0, abs=0.01)  # 32,000 sequences: sampling noise ~0.3%
    # every sequence of a batch runs the batch's deepest T: measured as the formula says
    assert all_run > 1.1
    assert all_run == pytest.approx(executed_ratio(cfg, 32, 8, active_only=False), abs=0.01)


def test_all_run_expectation_of_a_batch_of_one_is_the_per_sequence_one():
    cfg = replace(TINY, loops=6, depth_sampling="poisson")
    assert expected_steps(cfg, batch=1) == pytest.approx(expected_steps(cfg), rel=1e-12)
    n8, k8 = expected_steps(cfg, batch=8)
    n1, k1 = expected_steps(cfg)
    assert n8 > n1 and k8 > k1  # the deepest of 8 draws runs longer than one draw
