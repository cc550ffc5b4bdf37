"""Text Transformer: token + position embeddings, a stack of blocks, a final norm
(chapter 01; the text tower of CLIP in chapter 02, the tiny LLM in chapter 09).
"""
from __future__ import annotations

import torch
from torch import nn

from minivlm.nn import masks
from minivlm.nn.blocks import Transformer
from minivlm.utils import check_int, check_tensor


def check_token_ids(ids: torch.Tensor, vocab_size: int, max_len: int, limit: str = "max_len") -> None:
    """ids: integer (B, T) with T <= max_len (named `limit` in the message) and every id in [0, vocab_size)."""
    check_tensor("ids", ids, ndim=2, dtype="int")
    if ids.shape[1] > max_len:
        raise ValueError(f"text has {ids.shape[1]} tokens, longer than {limit}={max_len}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size - 1}], got values in [{int(ids.min())}, {int(ids.max())}]")


class TextTransformer(nn.Module):
    """ids (B, T) → hidden states (B, T, dim). Causal by default (GPT/CLIP text tower);
    causal=False gives a bidirectional encoder (BERT)."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 32,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        causal: bool = True,
        dropout: float = 0.0,
        act: str = "gelu",
        eps: float = 1e-5,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("dim", dim), ("depth", depth),
                            ("heads", heads)):
            check_int(name, value)
        self.vocab_size, self.max_len, self.causal = vocab_size, max_len, causal
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, dim) * 0.01)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio=mlp_ratio, dropout=dropout, act=act, eps=eps)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def check_ids(self, ids: torch.Tensor) -> None:
        check_token_ids(ids, self.vocab_size, self.max_len, "the context max_len")

    def forward(self, ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                need_weights: bool = False, *, inputs_embeds: torch.Tensor | None = None, cache=None):
        """ids: (B, T) integer, or inputs_embeds: (B, T, dim) token embeddings in their place (an
        image spliced in among the words, chapter 10); attention_mask: (B, T), True/1 on real
        tokens (None: all real); cache: a `KVCache` (chapter 09): the T tokens continue the
        len(cache) tokens it holds, their keys and values are added to it, and attention_mask,
        if given, covers all len(cache) + T tokens."""
        if (ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of ids (B, T) and inputs_embeds (B, T, dim)")
        past = 0 if cache is None else len(cache)
        if ids is not None:
            check_tensor("ids", ids, ndim=2, dtype="int")
            x = None
        else:
            check_tensor("inputs_embeds", inputs_embeds, ndim=3, dtype="float")
            if inputs_embeds.shape[-1] != self.token_embedding.embedding_dim:
                raise ValueError(f"inputs_embeds must have last dim {self.token_embedding.embedding_dim}, got "
                                 f"shape {tuple(inputs_embeds.shape)}")
            x = inputs_embeds
        b, t = (ids if ids is not None else inputs_embeds).shape[:2]
        if past + t > self.max_len:
            cached = f" ({past} cached + {t} new)" if past else ""
            raise ValueError(f"text has {past + t} tokens{cached}, longer than the context max_len={self.max_len}")
        if ids is not None:
            self.check_ids(ids)
            x = self.token_embedding(ids)
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2)
            if attention_mask.shape != (b, past + t):
                raise ValueError(f"attention_mask must have shape {(b, past + t)}, got {tuple(attention_mask.shape)}")
        # one new token with a cache and no padding sees every key: no mask at all (the fast path)
        causal = masks.causal(t, x.device, past) if self.causal and t > 1 else None
        mask = masks.combine(causal, masks.padding(attention_mask) if attention_mask is not None else None)
        x = x + self.pos_embedding[:, past:past + t]  # (B, T, D)
        return self.norm(self.transformer(x, mask=mask, need_weights=need_weights, cache=cache))
