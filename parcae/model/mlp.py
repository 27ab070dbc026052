"""The GELU MLP W_out GELU(W_up x) on the CPU as one autograd node, backward written out.

At the widths a study sweeps on CPU a step is bound by memory traffic and op count more than by
arithmetic. As one node the MLP computes GELU'(u) beside GELU(u) in the forward, in place of u
(which nothing else keeps), and scales the incoming gradient by it in place in the backward:
no separate GELU node, no fresh hidden-width buffers for the slope or its product. On the
benchmark CPU ``aten::gelu_backward`` ran several times slower inside a step than alone; with
the slope from the forward and the fused node, +2% tokens/s at tiny (LOG.md, 2026-12-05).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


class MLPFunction(torch.autograd.Function):
    """y = W_out g, g = GELU(u), u = W_up x; GELU'(u) = Phi(u) + u phi(u) saved as ``slope``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w_up: Tensor, w_out: Tensor) -> Tensor:
        u = F.linear(x, w_up)
        g = F.gelu(u)
        slope = torch.ops.aten.gelu_backward.grad_input(torch.ones_like(u), u, grad_input=u)
        ctx.save_for_backward(x, w_up, w_out, g, slope)
        ctx.save_for_forward(x, w_up, w_out, g, slope)
        return F.linear(g, w_out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, w_up, w_out, g, slope = ctx.saved_tensors
        need_x, need_up, need_out = ctx.needs_input_grad
        gu = (gy @ w_out).mul_(slope) if need_x or need_up else None
        gx = gu @ w_up if need_x else None
        g_up = gu.flatten(0, -2).t() @ x.flatten(0, -2) if need_up else None
        g_out = gy.flatten(0, -2).t() @ g.flatten(0, -2) if need_out else None
        return gx, g_up, g_out

    @staticmethod
    def jvp(ctx: Any, tx: Tensor | None, t_up: Tensor | None, t_out: Tensor | None) -> Tensor:
        x, w_up, w_out, g, slope = ctx.saved_tensors
        tu = F.linear(tx, w_up) if tx is not None else torch.zeros_like(slope)
        if t_up is not None:
            tu = tu + F.linear(x, t_up)
        ty = F.linear(tu * slope, w_out)
        return ty if t_out is None else ty + F.linear(g, t_out)


def mlp(x: Tensor, w_up: Tensor, w_out: Tensor) -> Tensor:
    """W_out GELU(W_up x) with exact (erf) GELU: the node above on the CPU while a graph is
    recorded; elsewhere the built-in ops (no graph to save for; off the CPU, where the slowdown
    was not measured; under ``torch.compile``, which fuses them)."""
    if x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return MLPFunction.apply(x, w_up, w_out)
    return F.linear(F.gelu(F.linear(x, w_up)), w_out)
