"""How the injected input e enters each loop step: the variants compared on equal footing.

Each variant maps (h, e) to the core's input and reports the stability of its linear part.
What does not change across loop steps (B-bar e, A-bar) is computed once per forward by
``prepare``; each step then applies only the part acting on h. The model picks one class from
``INJECTIONS`` when it is built; ``forward`` never branches on a name.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from parcae.model.config import ModelConfig


class Drive(NamedTuple):
    """The loop-invariant part of an injection, computed once per forward by ``prepare``."""

    a: Tensor | None
    """The linear map's parameters acting on h (A-bar, or W_h); None where it is the identity."""
    u: Tensor
    """The per-token input entering every step (B-bar e, W_e e, or e), shape (B, L, d)."""

    def rows(self, index: Tensor | slice) -> Drive:
        """The drive of a subset of the batch's sequences."""
        return Drive(self.a, self.u[index])


class Injection(nn.Module):
    """Base: h_{t+1} = R(self(h_t, *prepare(e))); ``start`` picks the loop's initial state."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def start(self, h0: Tensor, e: Tensor) -> Tensor:
        return h0

    def prepare(self, e: Tensor) -> Drive:
        """The loop-invariant work, once per forward."""
        return Drive(None, e)

    def step_weights(self) -> int:
        """Weight elements multiplied per token on every loop step outside the core (what
        ``prepare`` cannot hoist); the compute accounting charges them per step."""
        return 0

    def spectra(self) -> dict[str, float]:
        """Stability figures of the linear part (rho_A, ...)."""
        return {"rho_A": 1.0}


class Diagonal(Injection):
    """Parcae: A-bar * h + B-bar e with A = -exp(A_log), A-bar = exp(dt A), B-bar = dt B.

    A-bar lies in (0, 1) for any parameter values, so the linear part always contracts.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d = cfg.d_model
        self.A_log = nn.Parameter(torch.zeros(d))
        self.dt_bias = nn.Parameter(torch.zeros(d))
        self.B = nn.Parameter(torch.eye(d))
        if cfg.bound_b:
            spectral_norm(self, "B")

    def discretized(self) -> tuple[Tensor, Tensor, Tensor]:
        dt = F.softplus(self.dt_bias)
        a_bar = torch.exp(dt * -torch.exp(self.A_log))
        return a_bar, dt[:, None] * self.B, dt

    def prepare(self, e: Tensor) -> Drive:
        a_bar, b_bar, _ = self.discretized()
        return Drive(a_bar, F.linear(e, b_bar))

    def forward(self, h: Tensor, a: Tensor, u: Tensor) -> Tensor:
        return torch.addcmul(u, a, h)  # A-bar h + B-bar e

    @torch.no_grad()
    def spectra(self) -> dict[str, float]:
        a_bar, b_bar, _ = self.discretized()
        return {"rho_A": a_bar.max().item(), "mean_A": a_bar.mean().item(),
                "norm_B": torch.linalg.matrix_norm(b_bar.float(), 2).item()}


class Concat(Injection):
    """Huginn-style adapter W [h; e]; W_1 (the h part) is unconstrained and may reach rho >= 1."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.W = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)

    def prepare(self, e: Tensor) -> Drive:
        w_h, w_e = self.W.weight.split(self.W.out_features, dim=1)
        return Drive(w_h.contiguous(), F.linear(e, w_e))  # W [h; e] = W_h h + W_e e

    def forward(self, h: Tensor, a: Tensor, u: Tensor) -> Tensor:
        return F.linear(h, a) + u

    def step_weights(self) -> int:
        return self.W.out_features ** 2

    @torch.no_grad()
    def spectra(self) -> dict[str, float]:
        w1 = self.W.weight[:, : self.W.out_features].float()
        return {"rho_A": torch.linalg.eigvals(w1).abs().max().item(),
                "norm_W1": torch.linalg.matrix_norm(w1, 2).item()}


class Add(Injection):
    """h + e: A-bar = I, so the state can grow like T e."""

    def forward(self, h: Tensor, a: None, u: Tensor) -> Tensor:
        return h + u


class NoInjection(Injection):
    """Plain looping: start from e and never see it again."""

    def start(self, h0: Tensor, e: Tensor) -> Tensor:
        return e

    def forward(self, h: Tensor, a: None, u: Tensor) -> Tensor:
        return h


INJECTIONS: dict[str, type[Injection]] = {
    "diagonal": Diagonal, "linear": Concat, "add": Add, "none": NoInjection,
    "baseline": NoInjection,
}


def build_injection(cfg: ModelConfig) -> Injection:
    return INJECTIONS[cfg.injection](cfg)


def softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))

