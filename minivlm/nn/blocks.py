"""The pre-LN Transformer block and a stack of them (chapter 01), with BERT's post-LN layout
as an option (chapter 06).

Pre-LN (normalise *before* each sub-layer, add the residual after) trains stably without
learning-rate warm-up tricks, which is why GPT-2, ViT and CLIP all use it. Post-LN, the
original Transformer's and BERT's layout, normalises *after* the residual sum: x = LN(x + f(x)).
BERT-based models (BLIP's text side, BLIP-2's Q-Former) need it to load their weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.nn.attention import MultiHeadAttention
from minivlm.utils import check_dtype, check_int, check_number, check_tensor


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702x): the GELU approximation OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Two linear layers with an activation between: dim → hidden → dim."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act: str = "gelu"):
        super().__init__()
        check_int("dim", dim)
        check_int("hidden", hidden)
        check_number("dropout", dropout, 0, 1, hi_open=True)
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act, self.drop = ACTIVATIONS[act], nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + MLP(LN(x)): each sub-layer f adds
    f(LN(x)) to x. norm_first=False gives the post-LN layout, x = LN(x + f(x)), per sub-layer."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cross_attention: bool = False,
        context_dim: int | None = None,
        act: str = "gelu",
        eps: float = 1e-5,
        norm_first: bool = True,
    ):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        if not isinstance(norm_first, bool):
            raise TypeError(f"norm_first must be True (pre-LN) or False (post-LN), got {norm_first!r}")
        self.norm_first = norm_first
        check_number("mlp_ratio", mlp_ratio, 0, math.inf, lo_open=True, hi_open=True)
        if int(dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio} leaves the MLP no hidden unit (int({dim} * {mlp_ratio}) = 0)")
        check_number("eps", eps, 0, math.inf, lo_open=True, hi_open=True)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout, context_dim=context_dim) if cross_attention else None
        self.norm_cross = nn.LayerNorm(dim, eps=eps) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout, act)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache=None,
    ) -> torch.Tensor:
        """x: (B, T, dim) → (B, T, dim); context: (B, Tk, context_dim), for a cross-attention block;
        cache: this block's `LayerCache` (decoding with a KV cache, chapter 09)."""
        check_tensor("x", x, ndim=3, dtype="float")
        check_dtype("x", x, self.norm1.weight.dtype)
        x = self.sublayer(x, self.norm1,
                          lambda h: self.drop(self.attn(h, mask=mask, need_weights=need_weights, cache=cache)))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context=(B, Tk, context_dim)")
            x = self.sublayer(x, self.norm_cross,
                              lambda h: self.drop(self.cross_attn(h, context, context_mask, need_weights)))
        return self.sublayer(x, self.norm2, self.mlp)

    def sublayer(self, x: torch.Tensor, norm: nn.Module, f) -> torch.Tensor:
        """One residual sub-layer: x + f(norm(x)) (pre-LN) or norm(x + f(x)) (post-LN)."""
        return x + f(norm(x)) if self.norm_first else norm(x + f(x))


class Transformer(nn.Module):
    """A stack of `depth` pre-LN blocks (no final norm: the model that owns it adds one)."""

    def __init__(self, dim: int, depth: int, heads: int, **block_kwargs):
        super().__init__()
        # depth 0 would be an identity that trains nothing; no model in the course builds one.
        check_int("depth", depth)
        self.blocks = nn.ModuleList(Block(dim, heads, **block_kwargs) for _ in range(depth))

    def forward(self, x, mask=None, context=None, context_mask=None, need_weights: bool = False, cache=None):
        """cache: a `KVCache` with one layer per block, or None."""
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"the KV cache has {len(cache.layers)} layers, this Transformer {len(self.blocks)} blocks")
        for i, block in enumerate(self.blocks):
            x = block(x, mask, context, context_mask, need_weights, None if cache is None else cache.layers[i])
        return x

    def attention_maps(self) -> list[torch.Tensor]:
        """Self-attention weights of each block from the last call with need_weights=True."""
        return [b.attn.last_weights for b in self.blocks]
