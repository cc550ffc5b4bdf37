"""Text Transformer: token + position embeddings, a stack of blocks, a final norm
(chapter 01; the text tower of CLIP in chapter 02, the tiny LLM in chapter 09).

Positions are a learned table added to the token embeddings (GPT-2, CLIP) or, with
positions="rope", rotations of every block's queries and keys (Llama, chapter 09;
`minivlm.nn.rope`): then there is no position parameter at all.
"""
from __future__ import annotations

import torch
from torch import nn

from minivlm.nn import masks
from minivlm.nn.blocks import Transformer, make_norm
from minivlm.nn.rope import RotaryEmbedding
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
    causal=False gives a bidirectional encoder (BERT).

    norm: "layernorm" or "rmsnorm", in every block and at the end; positions: "learned" (a
    (1, max_len, dim) table) or "rope" (rotary, with `rope_base`); block_kwargs: more of
    `Block`'s options (mlp, mlp_hidden, bias, kv_heads)."""

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
        norm: str = "layernorm",
        positions: str = "learned",
        rope_base: float = 10000.0,
        **block_kwargs,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("dim", dim), ("depth", depth),
                            ("heads", heads)):
            check_int(name, value)
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', got {positions!r}")
        self.vocab_size, self.max_len, self.causal, self.positions = vocab_size, max_len, causal, positions
        self.token_embedding = nn.Embedding(vocab_size, dim)
        if positions == "learned":
            self.pos_embedding = nn.Parameter(torch.randn(1, max_len, dim) * 0.01)
        else:
            if dim % heads:
                raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
            self.rotary = RotaryEmbedding(dim // heads, rope_base)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio=mlp_ratio, dropout=dropout, act=act, eps=eps,
                                       norm=norm, **block_kwargs)
        self.norm = make_norm(norm, dim, eps)

    def check_ids(self, ids: torch.Tensor) -> None:
        check_token_ids(ids, self.vocab_size, self.max_len, "the context max_len")

    def forward(self, ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                need_weights: bool = False, *, inputs_embeds: torch.Tensor | None = None, cache=None,
                position_ids: torch.Tensor | None = None, hooks=None):
        """ids: (B, T) integer, or inputs_embeds: (B, T, dim) token embeddings in their place (an
        image spliced in among the words, chapter 10); attention_mask: (B, T), True/1 on real
        tokens (None: all real); cache: a `KVCache` (chapter 09): the T tokens continue the
        len(cache) tokens it holds, their keys and values are added to it, and attention_mask,
        if given, covers all len(cache) + T tokens. position_ids: (B, T) integer, each token's
        position (None: len(cache) + 0..T-1): a left-padded row counts from its first real
        token (chapter 09); learned positions must lie in [0, max_len). hooks: functions run
        between or inside the blocks (`minivlm.nn.blocks.Transformer`; chapter 11)."""
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
        if position_ids is not None:
            check_tensor("position_ids", position_ids, ndim=2, dtype="int")
            if position_ids.shape != (b, t):
                raise ValueError(f"position_ids must have shape {(b, t)}, got {tuple(position_ids.shape)}")
            high = self.max_len - 1 if self.positions == "learned" else None
            if position_ids.numel() and (int(position_ids.min()) < 0
                                         or (high is not None and int(position_ids.max()) > high)):
                limit = f"lie in [0, {high}] (learned positions, max_len={self.max_len})" if high is not None \
                    else "be >= 0"
                raise ValueError(f"position_ids must {limit}, got values in [{int(position_ids.min())}, "
                                 f"{int(position_ids.max())}]")
        # one new token with a cache and no padding sees every key: no mask at all (the fast path)
        causal = masks.causal(t, x.device, past) if self.causal and t > 1 else None
        mask = masks.combine(causal, masks.padding(attention_mask) if attention_mask is not None else None)
        rotary = None
        if self.positions == "learned":
            pos = self.pos_embedding[:, past:past + t] if position_ids is None else self.pos_embedding[0, position_ids]
            x = x + pos  # (B, T, D)
        else:
            if position_ids is None:
                position_ids = torch.arange(past, past + t, device=x.device).expand(b, t)
            rotary = self.rotary(position_ids)  # cos, sin: (B, T, head_dim)
        return self.norm(self.transformer(x, mask=mask, need_weights=need_weights, cache=cache, rotary=rotary,
                                          hooks=hooks))
