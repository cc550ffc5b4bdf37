"""Multi-head attention, self and cross, with boolean masks (chapter 01).

`scaled_dot_product_attention` is the from-scratch formula the chapter derives;
`MultiHeadAttention` uses PyTorch's fused `F.scaled_dot_product_attention` for speed and
falls back to the from-scratch path when you ask for the attention weights (to plot them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from minivlm.nn import masks
from minivlm.nn.rope import apply_rotary
from minivlm.utils import check_dtype, check_int, check_number, check_tensor


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d) v, written out. q: (..., Tq, d), k and v: (..., Tk, d).

    mask: boolean, broadcastable to (..., Tq, Tk), True = may attend.
    Returns (output (..., Tq, d), weights (..., Tq, Tk)).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class LayerCache:
    """One self-attention layer's keys and values so far: k and v (B, H, T, d), growing on T."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' k, v (B, H, t, d) after the cached ones; return all of them."""
        if self.k is not None:
            if k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]:
                raise ValueError(f"new keys {tuple(k.shape)} do not fit the cached keys {tuple(self.k.shape)} "
                                 "(batch, heads and head width must match; only the time axis grows)")
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # time is axis 2
        self.k, self.v = k, v
        return k, v


class KVCache:
    """The keys and values of every self-attention layer for the tokens decoded so far (chapter 09).

    Without a cache, decoding token t+1 re-runs the model on all t tokens before it: O(t) work
    per token, O(T²) for a text of T tokens (and O(T³) attention). With it, each layer keeps the
    keys and values it already computed, and a step feeds only the new token: its query attends
    to the cached keys. `len(cache)` is the number of tokens cached.
    """

    def __init__(self, depth: int):
        check_int("depth", depth)
        self.layers = [LayerCache() for _ in range(depth)]

    def __len__(self) -> int:
        return len(self.layers[0])

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self.layers)}, tokens={len(self)})"

    def select(self, rows: torch.Tensor) -> "KVCache":
        """Keep batch rows `rows` (B',) in that order (beam search reorders its beams)."""
        for layer in self.layers:
            if layer.k is not None:
                layer.k, layer.v = layer.k[rows], layer.v[rows]
        return self


class MultiHeadAttention(nn.Module):
    """Multi-head attention. Self-attention when `context` is None, cross-attention otherwise
    (queries from x, keys and values from context, which may have its own width).

    kv_heads < heads: grouped-query attention (Ainslie et al. 2023; Llama 2-3, SmolLM; chapter
    09): keys and values have only kv_heads heads, each shared by heads / kv_heads query heads.
    Fewer key/value projections, and a KV cache kv_heads / heads the size.

    fused=False: always the written-out softmax(q kᵀ / √d) v, never PyTorch's fused kernel, which
    on the CPU is slower for a handful of queries (a resampler's 8 latents: chapter 11)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True, context_dim: int | None = None,
                 kv_heads: int | None = None, fused: bool = True):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        if dim % heads != 0:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        kv_heads = heads if kv_heads is None else kv_heads
        check_int("kv_heads", kv_heads)
        if heads % kv_heads:
            raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads} (each key/value head serves "
                             "a group of query heads)")
        check_number("dropout", dropout, 0, 1, hi_open=True)
        if context_dim is not None:
            check_int("context_dim", context_dim)
        for name, value in (("bias", bias), ("fused", fused)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.dim, self.heads, self.kv_heads, self.dropout, self.fused = dim, heads, kv_heads, dropout, fused
        self.context_dim = dim if context_dim is None else context_dim
        kv_dim = dim // heads * kv_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(self.context_dim, kv_dim, bias=bias)
        self.v_proj = nn.Linear(self.context_dim, kv_dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.last_weights: torch.Tensor | None = None  # (B, H, Tq, Tk), set when need_weights=True

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: LayerCache | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, Tq, dim); context: (B, Tk, context_dim) or None; mask: see `masks.expand`.
        Returns (B, Tq, dim). With need_weights=True the weights are kept in `last_weights`.
        cache (self-attention only): the keys and values of earlier tokens; x's are appended to
        it, and x's queries attend to all of them (the mask is then (Tq, past + Tq)).
        rotary (self-attention only): (cos, sin), each (B, Tq, head_dim), from
        `minivlm.nn.rope.RotaryEmbedding` at x's positions: queries and keys are rotated (RoPE)."""
        check_tensor("x", x, ndim=3, dtype="float")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have last dim {self.dim}, got shape {tuple(x.shape)}")
        check_dtype("x", x, self.q_proj.weight.dtype)
        if context is None:
            context = x
        elif cache is not None or rotary is not None:
            raise ValueError("a KV cache and rotary positions are for self-attention: pass context=None with them")
        else:
            check_tensor("context", context, ndim=3, dtype="float")
            if context.shape[-1] != self.context_dim:
                raise ValueError(f"context must have last dim {self.context_dim}, got shape {tuple(context.shape)}")
            check_dtype("context", context, self.k_proj.weight.dtype)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"batch sizes must match, got x={x.shape[0]}, context={context.shape[0]}")
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.heads)
        k = rearrange(self.k_proj(context), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(context), "b t (h d) -> b h t d", h=self.kv_heads)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            # keys are cached rotated: a token's rotation depends on its own position only
            k, v = cache.append(k, v)  # (B, kv_heads, past + Tq, d)
        if self.kv_heads != self.heads:  # key/value head j serves query heads j·g .. j·g + g - 1
            g = self.heads // self.kv_heads
            k, v = (repeat(t, "b h t d -> b (h g) t d", g=g) for t in (k, v))
        b, tq, tk = x.shape[0], x.shape[1], k.shape[2]
        if mask is not None:
            mask = masks.expand(mask, b, tq, tk)
        if need_weights or not self.fused:
            out, weights = scaled_dot_product_attention(q, k, v, mask)
            if need_weights:
                self.last_weights = weights.detach()
            out = F.dropout(out, self.dropout, self.training) if self.dropout else out
        else:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))
