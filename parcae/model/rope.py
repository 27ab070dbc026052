"""Rotary position embedding: pairs of adjacent head dimensions rotate by position x frequency.

Pairs are adjacent, (x_0, x_1), (x_2, x_3), ..., so that on the CPU a pair is one complex
number and the rotation one complex product: a single op each way instead of the three (product,
swap, fused add) that rotating (first half, second half) pairs takes, +2% tokens/s at tiny and
small (LOG.md, 2026-12-05). Elsewhere (bf16 has no complex type; under ``torch.compile``) the
same rotation is written in real arithmetic.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_tables(seq_len: int, head_dim: int, base: float, device: torch.device) -> Tensor:
    """(cos, sin) of position x frequency, shape (seq_len, 1, 1, head_dim / 2, 2): the rotation
    of each pair at each position, broadcasting over batch, (query, key) and heads."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                        / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.stack((angles.cos(), angles.sin()), -1)[:, None, None]


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate the pairs of x (B, L, ..., Dh): (x_2j, x_2j+1) -> (x_2j cos - x_2j+1 sin,
    x_2j+1 cos + x_2j sin) at each position."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) \
            and not torch.compiler.is_compiling():
        z = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(z * torch.view_as_complex(rope.to(x.dtype))).flatten(-2)
    return rotate_real(x, rope)


def rotate_real(x: Tensor, rope: Tensor) -> Tensor:
    """``apply_rope`` in real arithmetic."""
    cos, sin = rope.to(x.dtype).unbind(-1)
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), -1).flatten(-2)
