"""RMSNorm with its backward pass written out.

Autograd differentiates ``F.rms_norm`` on CPU through its decomposition (pow, mean, rsqrt and
two products: five backward nodes per norm); at the widths a study sweeps on CPU a step is
bound by the number of ops, and the closed form below is one node: +2% tokens/s at tiny and
small (LOG.md), and 1% more with the built-in op where no graph is recorded. It defines
``jvp`` for the monitors' forward-mode Lipschitz estimate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class RMSNormFunction(torch.autograd.Function):
    """y = x r w, r = (mean_last(x^2) + eps)^(-1/2); w broadcasts against x from the right."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, eps: float) -> Tensor:
        # F.rms_norm's fused kernel, which also returns r
        y, r = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], None, eps)
        ctx.save_for_backward(x, w, r)
        ctx.save_for_forward(x, w, r)
        return (y * w).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, w, r = ctx.saved_tensors
        xhat = x * r
        gx = gw = None
        if ctx.needs_input_grad[0]:
            g = gy * w
            # r (g - xhat mean(g xhat)): g with its component along xhat removed, rescaled
            gx = torch.addcmul(g, xhat, (g * xhat).mean(-1, keepdim=True), value=-1).mul_(r)
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = (gy * xhat).reshape(-1, *x.shape[x.dim() - w.dim():]).sum(0)
            broadcast = [i for i, n in enumerate(w.shape) if n == 1 < gw.shape[i]]
            gw = (gw.sum(broadcast, keepdim=True) if broadcast else gw).to(w.dtype)
        return gx, gw, None

    @staticmethod
    def jvp(ctx: Any, tx: Tensor | None, tw: Tensor | None, _: None) -> Tensor:
        x, w, r = ctx.saved_tensors
        xhat = x * r
        out = torch.zeros_like(xhat) if tx is None else torch.addcmul(
            tx * r, xhat, (xhat * tx).mean(-1, keepdim=True) * r, value=-1) * w
        return (out if tw is None else out + xhat * tw).to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension; ``weight`` broadcasts against x from the right (its
    size-1 dimensions shared). The written-out backward is used where it pays: on the CPU while
    a graph is recorded. Elsewhere the built-in op: one fused kernel without a graph, a fused
    backward off the CPU, a decomposition that ``torch.compile`` fuses."""
    if x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return RMSNormFunction.apply(x, weight, eps)
    if weight.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x, (x.shape[-1],), None, eps) * weight
