"""Compute accounting, in one place.

Parameters are counted on a meta-device copy of the real model, so the accounting can
never drift from the architecture. Conventions:

- N (``params``): every parameter except the token embedding (tied to the LM head).
- unrolled N (``params_unrolled``): non-core parameters once, core parameters ``loops`` times.
- training FLOPs per token: 6 per parameter per token on steps with gradient, 2 on
  forward-only loop steps, the LM head counted (6 V d), embedding lookups not; attention
  scores and values add 4 L d per layer per token forward (no causal discount), times 3
  with gradient. Loop-step counts are exact expectations under the depth sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from parcae.model.config import ModelConfig


@dataclass(frozen=True)
class Accounting:
    params: int
    """Unique non-embedding parameters N."""
    params_unrolled: int
    """Non-core parameters plus core parameters times the training loop count."""
    core_params: int
    """Parameters of the shared core (all of them)."""
    head_params: int
    """The LM head (the tied embedding matrix), counted in FLOPs only."""
    steps_nograd: float
    """Expected loop steps per sequence run without gradient."""
    steps_grad: float
    """Expected loop steps per sequence run with gradient."""
    flops_per_token: float
    """Training FLOPs per token (forward and backward)."""

    def tokens_for(self, flops: float) -> int:
        """Training tokens D that a FLOP budget C buys."""
        return int(flops // self.flops_per_token)

    def flops_for(self, tokens: int) -> float:
        return self.flops_per_token * tokens


def expected_steps(cfg: ModelConfig) -> tuple[float, float]:
    """E[n] and E[k]: loop steps without and with gradient per sequence.

    T ~ max(Poisson(loops), 1) (or T = loops when ``cfg.fixed_depth``, which includes
    loops = 1); n = max(T - mu_bwd, 0),
    k = min(T, mu_bwd). The baseline runs its untied core once.
    """
    if not cfg.looped:
        return 0.0, 1.0
    bwd = cfg.mu_bwd
    if cfg.fixed_depth:
        return float(max(cfg.loops - bwd, 0)), float(min(cfg.loops, bwd))
    mu = cfg.loops
    top = int(mu + 20 * math.sqrt(mu) + 20)
    pmf = [math.exp(t * math.log(mu) - mu - math.lgamma(t + 1)) for t in range(top)]
    pmf[1] += pmf[0]  # the clamp T >= 1 moves P(T = 0) onto T = 1
    pmf[0] = 0.0
    e_n = sum(p * max(t - bwd, 0) for t, p in enumerate(pmf))
    e_k = sum(p * min(t, bwd) for t, p in enumerate(pmf))
    return e_n, e_k


def account(cfg: ModelConfig, seq_len: int) -> Accounting:
    """Parameter counts and training FLOPs per token for a model trained on ``seq_len``."""
    from parcae.model.looped import LoopedLM  # the model imports this package's config

    with torch.device("meta"):
        model = LoopedLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    head = model.embed.weight.numel()
    core = sum(p.numel() for p in model.core_parameters())
    other = total - head - core
    n, k = expected_steps(cfg)
    core_blocks = len(model.core.blocks)
    outer_blocks = cfg.prelude_layers + cfg.coda_layers
    attn = 4 * seq_len * cfg.d_model
    flops = (6 * (other + head + core * k) + 2 * core * n
             + attn * (3 * (outer_blocks + core_blocks * k) + core_blocks * n))
    loops = cfg.loops if cfg.looped else 1
    return Accounting(params=total - head, params_unrolled=other + core * loops,
                      core_params=core, head_params=head, steps_nograd=n, steps_grad=k,
                      flops_per_token=float(flops))
