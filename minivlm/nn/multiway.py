"""Multiway layers: one expert per modality, chosen token by token (chapter 05; reused by
BEiT-3 in chapter 08 and CogVLM's visual expert in chapter 17).

VLMo's Mixture-of-Modality-Experts (MoME) Transformer keeps one self-attention shared by every
token and gives each modality its own feed-forward network (FFN), an "expert":

    x = x + SelfAttention(LN(x))                 shared: image and text tokens attend to each other
    x = x + FFN_e(LN_e(x))    for each token, e = its expert (vision, language, vision-language)

The expert is not chosen by a learned router (as in a sparse mixture of experts) but by a
per-token index the caller gives: `modality[b, t] = e`. Routing by index, not by position, lets
one sequence mix modalities in any order ([image ; text], [text ; image], interleaved), which
chapter 17 needs. A token's output depends only on its own expert, so the tokens routed to an
expert are gathered, run through it together, and scattered back.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import MLP
from minivlm.utils import check_dtype, check_int, check_number, check_strings, check_tensor


def check_modality(modality: torch.Tensor, x: torch.Tensor, num_experts: int) -> torch.Tensor:
    """modality: integer (T,) or (B, T) for tokens x (B, T, D), each value in [0, num_experts).
    Returns it expanded to (B, T)."""
    check_tensor("modality", modality, dtype="int")
    b, t = x.shape[0], x.shape[1]
    if modality.ndim == 1:
        if modality.shape[0] != t:
            raise ValueError(f"modality (T,) must have one entry per token, T={t}, got shape {tuple(modality.shape)}")
        modality = modality.unsqueeze(0).expand(b, t)
    elif modality.ndim != 2 or tuple(modality.shape) != (b, t):
        raise ValueError(f"modality must have shape (T,) = ({t},) or (B, T) = ({b}, {t}) for tokens of shape "
                         f"{tuple(x.shape)}, got {tuple(modality.shape)}")
    if modality.numel() and (int(modality.min()) < 0 or int(modality.max()) >= num_experts):
        raise ValueError(f"modality values are expert indices in [0, {num_experts - 1}] ({num_experts} experts), "
                         f"got values in [{int(modality.min())}, {int(modality.max())}]")
    return modality.to(x.device)


class Multiway(nn.Module):
    """Wrap one module per expert; each token goes through the expert its modality index names.

    experts: modules mapping (n, D) → (n, D_out) token by token (a Linear, an MLP, a LayerNorm + MLP ...).
    forward(x (B, T, D), modality (T,) or (B, T)) → (B, T, D_out). An expert no token uses is not run,
    so it receives no gradient.
    """

    def __init__(self, experts: Sequence[nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        if isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList):
            raise TypeError(f"experts must be a list of modules, one per expert, got one {type(experts).__name__} "
                            f"(wrap it: [module] for a single expert)")
        if not isinstance(experts, (list, tuple, nn.ModuleList)) or not experts \
                or not all(isinstance(e, nn.Module) for e in experts):
            raise TypeError(f"experts must be a non-empty list of nn.Module, got {type(experts).__name__}")
        if names is not None and len(check_strings("names", names)) != len(experts):
            raise ValueError(f"need one name per expert, got {len(names)} names for {len(experts)} experts")
        self.experts = nn.ModuleList(experts)
        self.names = tuple(names) if names is not None else tuple(str(i) for i in range(len(experts)))

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, ndim=3, dtype="float")
        modality = check_modality(modality, x, len(self.experts))
        out = None
        for e, expert in enumerate(self.experts):
            chosen = modality == e  # (B, T)
            if not bool(chosen.any()):
                continue
            y = expert(x[chosen])  # (n_e, D_out): only this expert's tokens
            if out is None:
                out = x.new_zeros(*x.shape[:2], y.shape[-1])
            out[chosen] = y.to(out.dtype)
        if out is None:  # no token at all (T = 0): the output width is the experts'
            width = self.experts[0](x.reshape(-1, x.shape[-1])[:0]).shape[-1]
            out = x.new_zeros(*x.shape[:2], width)
        return out


class FeedForwardExpert(nn.Sequential):
    """LayerNorm then MLP: in VLMo each expert has its own pre-FFN LayerNorm."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act: str = "gelu", eps: float = 1e-5):
        super().__init__(nn.LayerNorm(dim, eps=eps), MLP(dim, hidden, dropout, act))


class MoMEBlock(nn.Module):
    """A pre-LN block with shared self-attention and a Multiway feed-forward:

        x = x + Attn(LN(x), mask);  x = x + Multiway[LN_e + FFN_e](x, modality)

    experts: the names of this block's experts, in index order (VLMo: ("vision", "language") in the
    bottom blocks, ("vision", "language", "vl") in the top ones)."""

    def __init__(self, dim: int, heads: int, experts: Sequence[str] = ("vision", "language"), mlp_ratio: float = 4.0,
                 dropout: float = 0.0, act: str = "gelu", eps: float = 1e-5):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        check_number("mlp_ratio", mlp_ratio, 0, math.inf, lo_open=True, hi_open=True)
        if len(set(check_strings("experts", experts))) != len(experts):
            raise ValueError(f"experts must be distinct names (at least one), got {experts!r}")
        hidden = int(dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio} leaves the FFN no hidden unit")
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn = Multiway([FeedForwardExpert(dim, hidden, dropout, act, eps) for _ in experts], names=experts)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """x (B, T, dim), modality (T,) or (B, T) expert indices, mask: see `masks.expand`."""
        check_tensor("x", x, ndim=3, dtype="float")
        check_dtype("x", x, self.norm1.weight.dtype)
        x = x + self.drop(self.attn(self.norm1(x), mask=mask, need_weights=need_weights))
        return x + self.drop(self.ffn(x, modality))
