"""Attentional pooling: a few learned queries read a whole set of tokens (chapter 07, CoCa), and
Flamingo's Perceiver Resampler, a stack of such reads (chapter 11).

CoCa pools the image encoder's tokens with learned queries that cross-attend to them: one query
gives the image embedding of the contrastive loss, n queries give the tokens its captioning
decoder reads. The same module, with self-attention among the queries, is the core of
Flamingo's Perceiver Resampler (chapter 11), BLIP-2's Q-Former (12) and Qwen-VL's resampler
(16): whatever the number of input tokens, the output has n_queries tokens, and since attention
is a weighted sum over a set, reordering the input tokens changes nothing.

    pooler = AttentionalPooler(dim=64, context_dim=64, n_queries=16, heads=4)
    pooled = pooler(image_tokens)  # (B, N, 64) -> (B, 16, 64), for any N

`LatentAttention` is the one read both are made of: latents (queries) cross-attend to the
layer-normed tokens. Flamingo's resampler adds three things (Alayrac et al. 2022, §2.1 and its
appendix): the latents also attend to *themselves* (keys and values are [tokens ; latents]),
each read is a residual update followed by a feed-forward one, and `depth` reads are stacked;
a learned time embedding per frame lets a video's frames (or several views) share one set of
latents.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from minivlm.nn import masks
from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import MLP
from minivlm.utils import check_int, check_number, check_tensor


class LatentAttention(nn.Module):
    """Latents (B, Q, dim) read tokens (B, N, context_dim): attention from LN(latents) to LN(tokens),
    or, with attend_to_latents=True (Flamingo's resampler), to [LN(tokens) ; LN(latents)] (then
    context_dim must equal dim). Returns the read, (B, Q, dim), with no residual: the caller
    decides (CoCa's pooler returns it, the resampler adds it to the latents)."""

    def __init__(self, dim: int, context_dim: int | None = None, heads: int = 4, attend_to_latents: bool = False,
                 bias: bool = True, eps: float = 1e-5):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        context_dim = dim if context_dim is None else context_dim
        check_int("context_dim", context_dim)
        for name, value in (("attend_to_latents", attend_to_latents), ("bias", bias)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if attend_to_latents and context_dim != dim:
            raise ValueError(f"attend_to_latents joins tokens and latents into one key set: context_dim must equal "
                             f"dim, got context_dim={context_dim}, dim={dim}")
        self.dim, self.context_dim, self.attend_to_latents = dim, context_dim, attend_to_latents
        self.norm_queries = nn.LayerNorm(dim, eps=eps)
        self.norm_context = nn.LayerNorm(context_dim, eps=eps)
        # a resampler's few latents: the written-out attention beats the fused CPU kernel there
        self.cross_attn = MultiHeadAttention(dim, heads, bias=bias, context_dim=context_dim, fused=not attend_to_latents)

    def check_context(self, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Validate context (B, N, context_dim) and its mask (B, N); return the key mask (B, 1, N) or None."""
        check_tensor("context", context, ndim=3, dtype="float")
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be (B, N, {self.context_dim}), got {tuple(context.shape)}")
        if context.shape[1] == 0:
            raise ValueError("context has no tokens to pool (N = 0)")
        if context_mask is None:
            return None
        check_tensor("context_mask", context_mask, ndim=2)
        if context_mask.shape != context.shape[:2]:
            raise ValueError(f"context_mask must have shape {tuple(context.shape[:2])}, got "
                             f"{tuple(context_mask.shape)}")
        return masks.padding(context_mask.bool())  # (B, 1, N)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """latents (B, Q, dim), context (B, N, context_dim), context_mask (B, N) True on real tokens."""
        mask = self.check_context(context, context_mask)
        q = self.norm_queries(latents)
        kv = self.norm_context(context)
        if self.attend_to_latents:  # the latents are keys too: every latent may attend to every latent
            kv = torch.cat([kv, q], dim=1)  # (B, N + Q, dim)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1, q.shape[1])], dim=-1)
        return self.cross_attn(q, kv, mask, need_weights)


class AttentionalPooler(LatentAttention):
    """(B, N, context_dim) tokens → (B, n_queries, dim): learned queries, optionally attending to
    each other first, cross-attend to the layer-normed tokens (CoCa: LN on queries and tokens,
    no residual, as in open_clip's implementation)."""

    def __init__(self, dim: int, context_dim: int | None = None, n_queries: int = 1, heads: int = 4,
                 self_attention: bool = False, eps: float = 1e-5):
        check_int("n_queries", n_queries)  # a pooler with zero queries would return nothing
        check_int("dim", dim)
        check_int("heads", heads)
        if not isinstance(self_attention, bool):
            raise TypeError(f"self_attention must be True or False, got {self_attention!r}")
        # random draws in the order this pooler always made them (queries, self-attention, then the
        # read's cross-attention), so that a seeded CoCa or MAPL starts from the same weights
        queries = torch.randn(n_queries, dim) * 0.02
        self_attn = MultiHeadAttention(dim, heads) if self_attention else None
        super().__init__(dim, context_dim, heads, eps=eps)
        self.n_queries = n_queries
        self.queries = nn.Parameter(queries)
        self.self_attn = self_attn
        self.norm_self = nn.LayerNorm(dim, eps=eps) if self_attention else None

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """context (B, N, context_dim); context_mask (B, N) True on real tokens (None: all real).
        Returns (B, n_queries, dim)."""
        self.check_context(context, context_mask)
        q = self.queries.expand(context.shape[0], -1, -1)  # (B, Q, D)
        if self.self_attn is not None:  # the queries share what they know before they read
            q = q + self.self_attn(self.norm_self(q), need_weights=need_weights)
        return super().forward(q, context, context_mask, need_weights)


class PerceiverResampler(nn.Module):
    """Flamingo's Perceiver Resampler: any number of frames × tokens in, n_latents tokens out.

        x = tokens + time_embedding[frame]            (B, F, N, dim), flattened to (B, F·N, dim)
        repeat depth times:
            latents = latents + LatentAttention(latents, x)   keys and values: [LN(x) ; LN(latents)]
            latents = latents + FFW(LN(latents))
        return LN(latents)                            (B, n_latents, dim)

    max_frames: the time embeddings (None: none, as Idefics' resampler); act, ff_mult: the
    feed-forward (flamingo-pytorch: GELU; Idefics: ReLU); bias: in every linear (Flamingo: none).
    Latents start as N(0, 1), as in flamingo-pytorch and Idefics."""

    def __init__(self, dim: int, depth: int = 2, n_latents: int = 8, heads: int = 4, max_frames: int | None = 1,
                 ff_mult: float = 4.0, act: str = "gelu", bias: bool = False, eps: float = 1e-5):
        super().__init__()
        check_int("dim", dim)
        check_int("depth", depth)
        check_int("n_latents", n_latents)
        if max_frames is not None:
            check_int("max_frames", max_frames)
        check_number("ff_mult", ff_mult, 0, math.inf, lo_open=True, hi_open=True)
        if int(dim * ff_mult) < 1:
            raise ValueError(f"ff_mult={ff_mult} leaves the feed-forward no hidden unit")
        self.dim, self.n_latents, self.max_frames = dim, n_latents, max_frames
        self.latents = nn.Parameter(torch.randn(n_latents, dim))
        self.time_embedding = nn.Parameter(torch.randn(max_frames, 1, dim)) if max_frames else None
        self.attn = nn.ModuleList(LatentAttention(dim, heads=heads, attend_to_latents=True, bias=bias, eps=eps)
                                  for _ in range(depth))
        self.norm_ff = nn.ModuleList(nn.LayerNorm(dim, eps=eps) for _ in range(depth))
        self.ff = nn.ModuleList(MLP(dim, int(dim * ff_mult), act=act, bias=bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, dim) tokens of one image, or (B, F, N, dim) of F frames; mask: (B, N) or
        (B, F, N), True on real tokens (None: all real). Returns (B, n_latents, dim)."""
        check_tensor("x", x, dtype="float")
        if x.ndim == 3:
            x = x[:, None]
            mask = None if mask is None else mask[:, None]
        if x.ndim != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, N, {self.dim}) or (B, F, N, {self.dim}), got {tuple(x.shape)}")
        b, frames, n, _ = x.shape
        if self.time_embedding is not None:
            if frames > self.max_frames:
                raise ValueError(f"x has {frames} frames, more than max_frames={self.max_frames}")
            x = x + self.time_embedding[:frames]
        elif frames > 1:
            raise ValueError(f"x has {frames} frames, but this resampler has no time embeddings (max_frames=None)")
        if mask is not None:
            check_tensor("mask", mask)
            if tuple(mask.shape) != (b, frames, n):
                raise ValueError(f"mask must have shape {(b, frames, n) if frames > 1 else (b, n)}, got "
                                 f"{tuple(mask.shape)}")
            mask = mask.reshape(b, frames * n)
        x = x.reshape(b, frames * n, self.dim)
        latents = self.latents.expand(b, -1, -1)
        for attn, norm_ff, ff in zip(self.attn, self.norm_ff, self.ff):
            latents = latents + attn(latents, x, mask)
            latents = latents + ff(norm_ff(latents))
        return self.norm(latents)
