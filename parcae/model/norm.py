"""RMSNorm on the CPU, forward and backward written out.

Autograd differentiates ``F.rms_norm`` on CPU through its decomposition (pow, mean, rsqrt and
two products: five backward nodes per norm); at the widths a study sweeps on CPU a step is
bound by the number of ops, and the closed form below is one node: +2% tokens/s at tiny and
small (LOG.md). The forward takes r from ``vector_norm`` (one reduction, no x^2 buffer): +1.4 to
+2.3% more. It defines ``jvp`` for the monitors' forward-mode Lipschitz estimate.
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
        y, r = normalize(x, w, eps)
        ctx.save_for_backward(x, w, r)
        ctx.save_for_forward(x, w, r)
        return y

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


def normalize(x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x r w, r), with r = (mean_last(x^2) + eps)^(-1/2) from the vector norm and the weight
    applied in place: fewer passes over x than the built-in op's decomposition on CPU."""
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True,
                                 dtype=torch.promote_types(x.dtype, torch.float32))
    r = r.square_().mul_(1 / x.shape[-1]).add_(eps).rsqrt_()
    return (x * r).mul_(w).to(x.dtype), r


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension; ``weight`` broadcasts against x from the right (its
    size-1 dimensions shared). On the CPU the forward above, and the written-out backward while
    a graph is recorded. Elsewhere the built-in op: a fused kernel with a fused backward off the
    CPU, a decomposition that ``torch.compile`` fuses."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        if torch.is_grad_enabled():
            return RMSNormFunction.apply(x, weight, eps)
        return normalize(x, weight, eps)[0]
    if weight.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x, (x.shape[-1],), None, eps) * weight
