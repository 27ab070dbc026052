"""Pre-norm transformer blocks: RMSNorm, RoPE, QK-norm causal attention, GELU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae.model.mlp import mlp
from parcae.model.norm import rms_norm
from parcae.model.rope import apply_rope


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, with a weight of ``shape`` (its last entry that
    dimension; leading entries broadcast against the input from the right)."""

    def __init__(self, *shape: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class QKNorm(RMSNorm):
    """QK-norm of queries and keys in one op: x is (..., 2, heads, head_dim), the 2 being
    (query, key), each with its own weight over the head dimension."""

    def __init__(self, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__(2, 1, head_dim, eps=eps)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.qk_norm = QKNorm(d_model // n_heads)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        b, n, d = x.shape
        # split, not sliced: its backward joins the parts' gradients with no zero-filled buffer
        qk, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).split((2, 1), 2)
        q, k = apply_rope(self.qk_norm(qk), rope).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v.squeeze(2).transpose(1, 2), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return mlp(x, self.up.weight, self.out.weight)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = MLP(d_model, ffn_mult * d_model)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """Blocks applied in sequence; an empty stack is the identity."""

    def __init__(self, n: int, d_model: int, n_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, ffn_mult) for _ in range(n))

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, rope)
        return x
