"""The looped LM: prelude -> recurrent core looped T times -> coda -> tied head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from parcae.model.blocks import RMSNorm, Stack
from parcae.model.config import ModelConfig
from parcae.model.injection import Drive, build_injection
from parcae.model.rope import rope_tables
from parcae.model.schedule import ActiveRows, AllRows

SQRT2 = math.sqrt(2.0)
TRUNCATION = 3.0
"""The like-init state is cut at +-3 std, as the Parcae reference draws it."""


def like_init(e: Tensor, std: float) -> Tensor:
    """h_0 ~ Normal(0, std^2) truncated to +-3 std, by inverting the CDF of a uniform draw:
    exact, and a quarter of the time of ``nn.init.trunc_normal_``'s rejection loop at the
    tiny preset (one draw per forward, LOG.md)."""
    edge = math.erf(TRUNCATION / SQRT2)
    return torch.empty_like(e).uniform_(-edge, edge).erfinv_().mul_(std * SQRT2)


def zero_state(e: Tensor, std: float) -> Tensor:
    return torch.zeros_like(e)


STATE_INITS = {"like-init": like_init, "zero": zero_state}


class LoopedLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, f = cfg.d_model, cfg.n_heads, cfg.ffn_mult
        core_layers = cfg.core_layers * (1 if cfg.looped else cfg.loops)  # baseline: untied
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.prelude = Stack(cfg.prelude_layers, d, h, f)
        self.inject_norm = RMSNorm(d) if cfg.normalize_injection else nn.Identity()
        self.injection = build_injection(cfg)
        self.core = Stack(core_layers, d, h, f)
        self.C = nn.Linear(d, d, bias=False)
        self.coda = Stack(cfg.coda_layers, d, h, f)
        self.norm = RMSNorm(d)
        self.head_dim = d // h
        self.schedule = ActiveRows() if cfg.active_only else AllRows()
        self.initial_state = STATE_INITS[cfg.state_init]

    def compile_core(self) -> None:
        """torch.compile the core in place (parameter names unchanged). Shapes are dynamic:
        active-only loop steps run a varying number of sequences (at least two, see
        ``ActiveRows``)."""
        self.core.compile(dynamic=True)
        if isinstance(self.schedule, ActiveRows):
            self.schedule = ActiveRows(min_rows=2)

    def core_parameters(self) -> list[nn.Parameter]:
        """Parameters applied once per loop step (counted per step in the compute accounting)."""
        return list(self.core.parameters())

    def encode(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Injected input e = Norm(P(s)), the loop's initial state, and the RoPE tables."""
        rope = rope_tables(idx.shape[1], self.head_dim, self.cfg.rope_base, idx.device)
        e = self.inject_norm(self.prelude(self.embed(idx), rope))
        return e, self.injection.start(self.initial_state(e, self.cfg.init_std), e), rope

    def step(self, h: Tensor, drive: Drive, rope: Tensor) -> Tensor:
        """One loop step h_{t+1} = R(A-bar h_t + B-bar e); ``drive = injection.prepare(e)``
        holds the loop-invariant A-bar and B-bar e, computed once per forward."""
        return self.core(self.injection(h, *drive), rope)

    def decode(self, h: Tensor, rope: Tensor) -> Tensor:
        return nn.functional.linear(self.norm(self.coda(self.C(h), rope)), self.embed.weight)

    def forward(self, idx: Tensor, steps: Tensor | int, grad_steps: int | None = None) -> Tensor:
        """Logits after ``steps`` loop steps (an int, or one count per sequence).

        Sequences of a batch are right-aligned so they all end on the last step; only the last
        ``grad_steps`` steps keep a graph (truncated backprop), the earlier ones run without
        gradient (``parcae.model.schedule``).
        """
        e, h, rope = self.encode(idx)
        drive = self.injection.prepare(e)
        depths = torch.as_tensor(steps).expand(idx.shape[0]).tolist()
        h = self.schedule.run(lambda z, d: self.step(z, d, rope), h, drive, depths, grad_steps)
        return self.decode(h, rope)

    @torch.no_grad()
    def loop_states(self, idx: Tensor, steps: int) -> tuple[Tensor, list[Tensor]]:
        """The injected input e and the states h_1..h_T of a fixed-depth pass (for monitors)."""
        e, h, rope = self.encode(idx)
        drive = self.injection.prepare(e)
        states = []
        for _ in range(steps):
            h = self.step(h, drive, rope)
            states.append(h)
        return e, states
