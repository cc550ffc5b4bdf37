"""Rotary position embeddings, RoPE (chapter 09: the Llama layout of the course's GPT).

Su, Lu, Pan, Murtadha, Wen and Liu, "RoFormer: Enhanced Transformer with Rotary Position
Embedding", 2021.

A learned position table adds "where" to each token once, at the input. RoPE instead rotates
every query and key inside attention: the head's d channels are d/2 pairs, and pair i of the
token at position p turns by the angle p·θᵢ, θᵢ = base^(-2i/d) (fast turns for the first pairs,
slow ones for the last). A rotation by p·θ of q and by s·θ of k leaves q·k depending on p - s
only, so attention scores see *relative* positions, and there is no position parameter at all.

Pairs follow Hugging Face Llama's "rotate half" convention: channel j is paired with channel
j + d/2 (not with j + 1, the paper's interleaved layout), so Llama checkpoints load as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from minivlm.utils import check_int, check_number, check_tensor


class RotaryEmbedding(nn.Module):
    """position_ids (B, T) integer -> (cos, sin), each (B, T, head_dim): the rotation of every
    channel pair at every position, for `apply_rotary`."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        check_int("head_dim", head_dim, lo=2)
        if head_dim % 2:
            raise ValueError(f"RoPE rotates channel pairs: head_dim must be even, got {head_dim}")
        check_number("base", base, 1.0, float("inf"), lo_open=True, hi_open=True)
        self.head_dim, self.base = head_dim, base
        # not a parameter and not saved: it is a function of head_dim and base
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (head_dim / 2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor("position_ids", position_ids, ndim=2, dtype="int")
        # float32 even in a half-precision model: p·θ at p in the thousands needs the mantissa
        angles = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, head_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # channels j and j + d/2 share an angle
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x₁, x₂) -> (-x₂, x₁) on the two halves of the last axis: a quarter turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x (B, H, T, head_dim) by (cos, sin) (B, T, head_dim) from
    `RotaryEmbedding`: each pair (a, b) becomes (a·cos - b·sin, b·cos + a·sin)."""
    check_tensor("x", x, ndim=4, dtype="float")
    want = (x.shape[0], x.shape[2], x.shape[3])
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, ndim=3, dtype="float")
        if t.shape != want:
            raise ValueError(f"{name} must have shape (B, T, head_dim) = {want} for x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # the same angle for every head
    return x * cos + rotate_half(x) * sin
