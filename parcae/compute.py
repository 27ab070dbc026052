"""Compute accounting, in one place.

Parameters are counted on a meta-device copy of the real model, so the accounting can
never drift from the architecture. Conventions:

- N (``params``): every parameter except the token embedding (tied to the LM head).
- unrolled N (``params_unrolled``): non-core parameters once, core parameters ``loops`` times.
- training FLOPs per token: 6 per parameter per token on steps with gradient, 2 on
  forward-only loop steps, the LM head counted (6 V d), embedding lookups not; attention
  scores and values add 4 L d per layer per token forward (no causal discount), times 3
  with gradient. Every loop step is charged the core plus the injection's per-step weights
  (``Injection.step_weights``); the rest of the injection runs once per forward.

Two FLOP figures per run:

- accounted (``flops``, the budget C): loop steps per sequence are their exact expectations
  under the depth sampling, whatever the batch;
- executed (``flops_executed``): the loop steps the training forward passes actually ran,
  counted per (sequence, step) pair (``LoopedLMModule.loop_steps``), under the scheme in force:
  active-only (each sequence runs its own T steps; executed -> accounted over many batches) or
  all-run (every sequence of a batch runs max_i T_i steps; executed > accounted). For fixed
  depth both are equal.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
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
    flops_once: int
    """Training FLOPs per token outside the loop (prelude, once-per-forward injection work,
    C, coda, head), forward and backward."""
    flops_step_grad: int
    """FLOPs per token of one loop step with gradient (core, per-step injection, attention)."""
    flops_step_nograd: int
    """FLOPs per token of one forward-only loop step."""
    seq_len: int
    """Tokens per sequence the attention cost was counted for."""
    flops_per_token: float
    """Accounted training FLOPs per token: ``flops_once`` plus the expected loop steps."""

    def tokens_for(self, flops: float) -> int:
        """Training tokens D that a FLOP budget C buys."""
        return int(flops // self.flops_per_token)

    def flops_for(self, tokens: int) -> float:
        return self.flops_per_token * tokens

    def executed_flops(self, tokens: int, loop_steps: Mapping[str, int]) -> float:
        """FLOPs the training passes ran over ``tokens`` tokens whose loop steps
        ``loop_steps`` counts ({"grad": .., "nograd": ..}: (sequence, loop step) pairs)."""
        loop = loop_steps["grad"] * self.flops_step_grad \
            + loop_steps["nograd"] * self.flops_step_nograd
        return float(tokens * self.flops_once + self.seq_len * loop)  # exact integers


def _clamped_poisson(mu: int) -> list[float]:
    """P(T = t) for T = max(Poisson(mu), 1), t = 0 .. far into the tail."""
    top = int(mu + 20 * math.sqrt(mu) + 20)
    pmf = [math.exp(t * math.log(mu) - mu - math.lgamma(t + 1)) for t in range(top)]
    pmf[1] += pmf[0]  # the clamp T >= 1 moves P(T = 0) onto T = 1
    pmf[0] = 0.0
    return pmf


def expected_steps(cfg: ModelConfig, batch: int | None = None) -> tuple[float, float]:
    """E[n] and E[k]: loop steps without and with gradient per sequence.

    T ~ max(Poisson(loops), 1) (or T = loops when ``cfg.fixed_depth``, which includes
    loops = 1); n = max(T - mu_bwd, 0), k = min(T, mu_bwd). The baseline runs its untied
    core once. With ``batch``, the all-run scheme's expectation instead: every sequence of a
    batch of that size runs T = max_i T_i steps.
    """
    if not cfg.looped:
        return 0.0, 1.0
    bwd = cfg.mu_bwd
    if cfg.fixed_depth:
        return float(max(cfg.loops - bwd, 0)), float(min(cfg.loops, bwd))
    pmf = _clamped_poisson(cfg.loops)
    if batch is not None:  # P(max of batch draws = t) = F(t)^batch - F(t-1)^batch
        cdf = list(itertools.accumulate(pmf))
        pmf = [cdf[t] ** batch - (cdf[t - 1] ** batch if t else 0.0) for t in range(len(cdf))]
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
    per_step = core + model.injection.step_weights()
    n, k = expected_steps(cfg)
    core_blocks = len(model.core.blocks)
    outer_blocks = cfg.prelude_layers + cfg.coda_layers
    attn = 4 * seq_len * cfg.d_model
    once = 6 * (other - (per_step - core) + head) + 3 * attn * outer_blocks
    step_grad = 6 * per_step + 3 * attn * core_blocks
    step_nograd = 2 * per_step + attn * core_blocks
    loops = cfg.loops if cfg.looped else 1
    return Accounting(params=total - head, params_unrolled=other + core * loops,
                      core_params=core, head_params=head, steps_nograd=n, steps_grad=k,
                      flops_once=once, flops_step_grad=step_grad,
                      flops_step_nograd=step_nograd, seq_len=seq_len,
                      flops_per_token=float(once + step_grad * k + step_nograd * n))


def executed_ratio(cfg: ModelConfig, seq_len: int, batch: int, active_only: bool) -> float:
    """Expected executed / accounted FLOPs of a training run: 1 for active-only loop steps
    and fixed depth; above 1 for the all-run scheme (waiting sequences compute too)."""
    acct = account(cfg, seq_len)
    n, k = (acct.steps_nograd, acct.steps_grad) if active_only else expected_steps(cfg, batch)
    executed = acct.flops_once + acct.flops_step_grad * k + acct.flops_step_nograd * n
    return executed / acct.flops_per_token
