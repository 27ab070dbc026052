"""Pre-norm transformer blocks: RMSNorm, RoPE, QK-norm causal attention, GELU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, base: float, device: torch.device) -> Tensor:
    """cos/sin tables of shape (2, seq_len, head_dim/2)."""
    dims = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
    inv_freq = base ** (-dims / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.stack((angles.cos(), angles.sin()))


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of the head dimension; x is (B, H, L, Dh)."""
    cos, sin = rope[0].to(x.dtype), rope[1].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        head_dim = d_model // n_heads
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        q = apply_rope(self.q_norm(q).transpose(1, 2), rope)
        k = apply_rope(self.k_norm(k).transpose(1, 2), rope)
        y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.gelu(self.up(x)))


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
