"""Attentional pooling: a few learned queries read a whole set of tokens (chapter 07, CoCa).

CoCa pools the image encoder's tokens with learned queries that cross-attend to them: one query
gives the image embedding of the contrastive loss, n queries give the tokens its captioning
decoder reads. The same module, with self-attention among the queries, is the core of
Flamingo's Perceiver Resampler (chapter 11), BLIP-2's Q-Former (12) and Qwen-VL's resampler
(16): whatever the number of input tokens, the output has n_queries tokens, and since attention
is a weighted sum over a set, reordering the input tokens changes nothing.

    pooler = AttentionalPooler(dim=64, context_dim=64, n_queries=16, heads=4)
    pooled = pooler(image_tokens)  # (B, N, 64) -> (B, 16, 64), for any N
"""
from __future__ import annotations

import torch
from torch import nn

from minivlm.nn import masks
from minivlm.nn.attention import MultiHeadAttention
from minivlm.utils import check_int, check_tensor


class AttentionalPooler(nn.Module):
    """(B, N, context_dim) tokens → (B, n_queries, dim): learned queries, optionally attending to
    each other first, cross-attend to the layer-normed tokens (CoCa: LN on queries and tokens,
    no residual, as in open_clip's implementation)."""

    def __init__(self, dim: int, context_dim: int | None = None, n_queries: int = 1, heads: int = 4,
                 self_attention: bool = False, eps: float = 1e-5):
        super().__init__()
        check_int("dim", dim)
        check_int("n_queries", n_queries)  # a pooler with zero queries would return nothing
        check_int("heads", heads)
        context_dim = dim if context_dim is None else context_dim
        check_int("context_dim", context_dim)
        if not isinstance(self_attention, bool):
            raise TypeError(f"self_attention must be True or False, got {self_attention!r}")
        self.dim, self.context_dim, self.n_queries = dim, context_dim, n_queries
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * 0.02)
        self.self_attn = MultiHeadAttention(dim, heads) if self_attention else None
        self.norm_self = nn.LayerNorm(dim, eps=eps) if self_attention else None
        self.norm_queries = nn.LayerNorm(dim, eps=eps)
        self.norm_context = nn.LayerNorm(context_dim, eps=eps)
        self.cross_attn = MultiHeadAttention(dim, heads, context_dim=context_dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """context (B, N, context_dim); context_mask (B, N) True on real tokens (None: all real).
        Returns (B, n_queries, dim)."""
        check_tensor("context", context, ndim=3, dtype="float")
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be (B, N, {self.context_dim}), got {tuple(context.shape)}")
        if context.shape[1] == 0:
            raise ValueError("context has no tokens to pool (N = 0)")
        mask = None
        if context_mask is not None:
            check_tensor("context_mask", context_mask, ndim=2)
            if context_mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must have shape {tuple(context.shape[:2])}, "
                                 f"got {tuple(context_mask.shape)}")
            mask = masks.padding(context_mask.bool())  # (B, 1, N)
        q = self.queries.expand(context.shape[0], -1, -1)  # (B, Q, D)
        if self.self_attn is not None:  # the queries share what they know before they read
            q = q + self.self_attn(self.norm_self(q), need_weights=need_weights)
        return self.cross_attn(self.norm_queries(q), self.norm_context(context), mask, need_weights)
