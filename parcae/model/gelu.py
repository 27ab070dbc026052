"""Exact GELU whose derivative is taken in the forward pass, on the CPU.

On the benchmark CPU ``aten::gelu_backward`` runs several times slower inside a training step
than on the same tensors alone (LOG.md, 2026-12-05); computing GELU'(x) beside GELU(x) leaves
the backward one product: +0 to +3% tokens/s at tiny and small. The derivative is saved in
place of x, so memory is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class GeluFunction(torch.autograd.Function):
    """y = x Phi(x); dy/dx = Phi(x) + x phi(x), computed by the forward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        slope = torch.ops.aten.gelu_backward(torch.ones_like(x), x)
        ctx.save_for_backward(slope)
        ctx.save_for_forward(slope)
        return F.gelu(x)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> Tensor:
        (slope,) = ctx.saved_tensors
        return gy * slope

    @staticmethod
    def jvp(ctx: Any, tx: Tensor) -> Tensor:
        (slope,) = ctx.saved_tensors
        return tx * slope


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU: the function above on the CPU while a graph is recorded; elsewhere the
    built-in op (no graph to save for; off the CPU, since the slowdown was measured on the CPU
    only; under ``torch.compile``, which fuses it)."""
    if x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return GeluFunction.apply(x)
    return F.gelu(x)
