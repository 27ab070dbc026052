"""How the injected input e enters each loop step: the variants compared on equal footing.

Each variant maps (h, e) to the core's input and reports the stability of its linear part.
The model picks one class from ``INJECTIONS`` when it is built; ``forward`` never branches
on a name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from parcae.model.config import ModelConfig


class Injection(nn.Module):
    """Base: h_{t+1} = R(self(h_t, e)); ``start`` picks the loop's initial state."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def start(self, h0: Tensor, e: Tensor) -> Tensor:
        return h0

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

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        a_bar, b_bar, _ = self.discretized()
        return a_bar * h + F.linear(e, b_bar)

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

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return self.W(torch.cat((h, e), dim=-1))

    @torch.no_grad()
    def spectra(self) -> dict[str, float]:
        w1 = self.W.weight[:, : self.W.out_features].float()
        return {"rho_A": torch.linalg.eigvals(w1).abs().max().item(),
                "norm_W1": torch.linalg.matrix_norm(w1, 2).item()}


class Add(Injection):
    """h + e: A-bar = I, so the state can grow like T e."""

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h + e


class NoInjection(Injection):
    """Plain looping: start from e and never see it again."""

    def start(self, h0: Tensor, e: Tensor) -> Tensor:
        return e

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h


INJECTIONS: dict[str, type[Injection]] = {
    "diagonal": Diagonal, "linear": Concat, "add": Add, "none": NoInjection,
    "baseline": NoInjection,
}


def build_injection(cfg: ModelConfig) -> Injection:
    return INJECTIONS[cfg.injection](cfg)



def softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))

