"""The compute accounting against counts done by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from parcae.compute import account, expected_steps
from parcae.model import ModelConfig

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
