"""Initialisation, in one place (the reference init described in README.md, "The model")."""

from __future__ import annotations

import torch
from torch import nn

from parcae.model.blocks import MLP, Attention, RMSNorm
from parcae.model.injection import Concat, Diagonal, softplus_inverse
from parcae.model.looped import LoopedLM


@torch.no_grad()
def init_weights(model: LoopedLM) -> None:
    """Normal(0, init_std) weights; block output projections zero so every block starts as
    the identity; C = I; injection at the reference point A-bar = a_bar_init, B = I."""
    cfg = model.cfg
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=cfg.init_std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
    for module in model.modules():  # after the loop above, which would redraw them
        if isinstance(module, Attention | MLP):
            nn.init.zeros_(module.out.weight)
    nn.init.eye_(model.C.weight)
    a_bar = cfg.a_bar_init
    dt = -torch.log(torch.tensor(a_bar)).item()  # A_log = 0 means A = -1, so A-bar = exp(-dt)
    inj = model.injection
    if isinstance(inj, Diagonal):
        inj.A_log.zero_()
        inj.dt_bias.fill_(softplus_inverse(dt))
        b = inj.parametrizations.B.original if hasattr(inj, "parametrizations") else inj.B
        nn.init.eye_(b)
    elif isinstance(inj, Concat):
        d = cfg.d_model
        inj.W.weight.zero_()
        inj.W.weight[:, :d].copy_(a_bar * torch.eye(d))
        inj.W.weight[:, d:].copy_(dt * torch.eye(d))
