"""Flamingo's gated cross-attention dense block: how a frozen language model learns to look
(chapter 11).

Alayrac et al., "Flamingo: a Visual Language Model for Few-Shot Learning", NeurIPS 2022, §2.2.

A block inserted before a frozen LLM layer adds two residual updates, each scaled by a learned
gate that starts at zero:

    x = x + tanh(α) · CrossAttn(LN(x), visual, media mask)
    x = x + tanh(β) · FFW(LN(x))

With α = β = 0 the block is the identity, so at initialisation the model is the frozen LLM
exactly; training opens the gates as far as looking at the image helps. Without the gates
(`gated=False`: VisualGPT / VC-GPT-style fusion, GPT-2's `add_cross_attention`) a randomly
initialised cross-attention disturbs the LLM from the first step.

A text token whose media mask row is all False (text before the first image) gets zero
cross-attention output: a softmax over no keys would otherwise spread over all of them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import MLP, GatedMLP, make_norm, mlp_width
from minivlm.utils import check_dtype, check_int, check_number, check_tensor


class GatedCrossAttentionBlock(nn.Module):
    """x (B, T, dim), visual (B, M, context_dim), media_mask (B, T, M) -> (B, T, dim).

    gated: tanh gates α, β (scalars, zero at the start); False: plain residual sums.
    feedforward: the second, feed-forward update (False: cross-attention only, as GPT-2's
    cross-attention sub-layer). norm, mlp, act, bias, mlp_ratio / mlp_hidden: the layout of the
    LLM it joins (flamingo-pytorch: LayerNorm, GELU MLP, no bias; Idefics: RMSNorm, SwiGLU)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, gated: bool = True,
                 feedforward: bool = True, mlp_ratio: float = 4.0, mlp_hidden: int | None = None, norm: str = "layernorm",
                 mlp: str = "mlp", act: str = "gelu", bias: bool = False, eps: float = 1e-5):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        for name, value in (("gated", gated), ("feedforward", feedforward), ("bias", bias)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        check_number("mlp_ratio", mlp_ratio, 0, math.inf, lo_open=True, hi_open=True)
        self.dim, self.gated = dim, gated
        self.norm_cross = make_norm(norm, dim, eps)
        # a few visual tokens per image: the written-out attention beats the fused CPU kernel there
        self.cross_attn = MultiHeadAttention(dim, heads, bias=bias, context_dim=context_dim, fused=False)
        self.attn_gate = nn.Parameter(torch.zeros(1)) if gated else None
        if feedforward:
            self.norm_ff = make_norm(norm, dim, eps)
            self.ff = (MLP if mlp == "mlp" else GatedMLP)(dim, mlp_width(dim, mlp_ratio, mlp, mlp_hidden), act=act,
                                                          bias=bias)
            self.ff_gate = nn.Parameter(torch.zeros(1)) if gated else None
        else:
            self.norm_ff = self.ff = self.ff_gate = None

    def gates(self) -> dict[str, float]:
        """tanh of each gate now: {"attn": tanh(α), "ff": tanh(β)} (1.0 where there is no gate)."""
        def value(g):
            return 1.0 if g is None else float(torch.tanh(g.detach()).item())
        return {"attn": value(self.attn_gate), **({"ff": value(self.ff_gate)} if self.ff is not None else {})}

    def forward(self, x: torch.Tensor, visual: torch.Tensor, media_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """media_mask (B, T, M) bool, True where text token t may see visual token m (`masks.media`);
        None: every token sees every visual token."""
        check_tensor("x", x, ndim=3, dtype="float")
        check_tensor("visual", visual, ndim=3, dtype="float")
        check_dtype("x", x, self.norm_cross.weight.dtype)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, T, {self.dim}), got {tuple(x.shape)}")
        if visual.shape[0] != x.shape[0]:
            raise ValueError(f"x and visual must have the same batch, got {x.shape[0]} and {visual.shape[0]}")
        seen = None
        if media_mask is not None:
            check_tensor("media_mask", media_mask, ndim=3, dtype="bool")
            want = (x.shape[0], x.shape[1], visual.shape[1])
            if tuple(media_mask.shape) != want:
                raise ValueError(f"media_mask must be (B, T, M) = {want}, got {tuple(media_mask.shape)}")
            seen = media_mask.any(dim=-1, keepdim=True)  # (B, T, 1): does the token see any image?
        h = self.cross_attn(self.norm_cross(x), visual, media_mask, need_weights)
        if seen is not None:
            h = h * seen  # text with no image before it: zero, not an average over every image
        x = x + (h if self.attn_gate is None else torch.tanh(self.attn_gate) * h)
        if self.ff is not None:
            h = self.ff(self.norm_ff(x))
            x = x + (h if self.ff_gate is None else torch.tanh(self.ff_gate) * h)
        return x
