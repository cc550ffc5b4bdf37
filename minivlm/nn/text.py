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

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, need_weights: bool = False):
        """ids: (B, T) integer; attention_mask: (B, T), True/1 on real tokens (None: all real)."""
        self.check_ids(ids)
        t = ids.shape[1]
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2)
            if attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
        mask = masks.combine(
            masks.causal(t, ids.device) if self.causal else None,
            masks.padding(attention_mask) if attention_mask is not None else None,
        )
        x = self.token_embedding(ids) + self.pos_embedding[:, :t]  # (B, T, D)
        return self.norm(self.transformer(x, mask=mask, need_weights=need_weights))
