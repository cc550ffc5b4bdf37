"""The pre-LN Transformer block and a stack of them (chapter 01), with BERT's post-LN layout
as an option (chapter 06) and the Llama layout's pieces (chapter 09).

Pre-LN (normalise *before* each sub-layer, add the residual after) trains stably without
learning-rate warm-up tricks, which is why GPT-2, ViT and CLIP all use it. Post-LN, the
original Transformer's and BERT's layout, normalises *after* the residual sum: x = LN(x + f(x)).
BERT-based models (BLIP's text side, BLIP-2's Q-Former) need it to load their weights.

Llama keeps pre-norm and changes the parts (chapter 09): RMSNorm for LayerNorm, a gated MLP
(SwiGLU) for the GELU MLP, no biases, and rotary positions inside attention
(`minivlm.nn.rope`). Each is an option here; the defaults are GPT-2's, CLIP's and ViT's.
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
    "silu": F.silu,  # x·σ(x), "swish": the gate of Llama's SwiGLU
}
NORMS = ("layernorm", "rmsnorm")
MLPS = ("mlp", "glu")


class RMSNorm(nn.Module):
    """x / √(mean(x²) + eps) · weight over the last axis (Zhang and Sennrich, 2019; Llama,
    chapter 09): LayerNorm without subtracting the mean and without a bias. Cheaper, and it
    trains as well."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        check_int("dim", dim)
        check_number("eps", eps, 0, math.inf, lo_open=True, hi_open=True)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 whatever x's dtype, cast back before the weight, as Llama does: a mean of
        # squares in float16 overflows past |x| ≈ 256
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(norm: str, dim: int, eps: float) -> nn.Module:
    """norm: "layernorm" (nn.LayerNorm, weight and bias) or "rmsnorm" (`RMSNorm`, weight only)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    return nn.LayerNorm(dim, eps=eps) if norm == "layernorm" else RMSNorm(dim, eps=eps)


def _check_mlp(dim: int, hidden: int, dropout: float, act: str) -> None:
    check_int("dim", dim)
    check_int("hidden", hidden)
    check_number("dropout", dropout, 0, 1, hi_open=True)
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")


class MLP(nn.Module):
    """Two linear layers with an activation between: dim → hidden → dim."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act: str = "gelu", bias: bool = True):
        super().__init__()
        _check_mlp(dim, hidden, dropout, act)
        self.fc1, self.fc2 = nn.Linear(dim, hidden, bias=bias), nn.Linear(hidden, dim, bias=bias)
        self.act, self.drop = ACTIVATIONS[act], nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class GatedMLP(nn.Module):
    """down(act(gate(x)) · up(x)): a gated linear unit MLP (Shazeer, "GLU Variants Improve
    Transformer", 2020). With act="silu" it is SwiGLU, Llama's MLP (chapter 09); the linears
    carry Llama's names so that its checkpoints read alike. One hidden unit has three weight
    vectors instead of two: `glu_hidden` picks the width that keeps the parameter count."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act: str = "silu", bias: bool = True):
        super().__init__()
        _check_mlp(dim, hidden, dropout, act)
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act, self.drop = ACTIVATIONS[act], nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x)))


def glu_hidden(hidden: int, multiple_of: int = 8) -> int:
    """The gated MLP's width with the parameters of a plain MLP of width `hidden`: 2/3 of it
    (3 matrices instead of 2), rounded up to a multiple of `multiple_of` as Llama does (widths
    that split evenly into hardware tiles)."""
    check_int("hidden", hidden)
    check_int("multiple_of", multiple_of)
    return -(-(2 * hidden // 3) // multiple_of) * multiple_of


def mlp_width(dim: int, mlp_ratio: float, mlp: str = "mlp", mlp_hidden: int | None = None) -> int:
    """A block's MLP width: mlp_hidden if given, else int(dim · mlp_ratio) for mlp="mlp" and
    `glu_hidden` of that for mlp="glu" (the same parameter count)."""
    if mlp not in MLPS:
        raise ValueError(f"mlp must be one of {list(MLPS)}, got {mlp!r}")
    if mlp_hidden is not None:
        check_int("mlp_hidden", mlp_hidden)
        return mlp_hidden
    return int(dim * mlp_ratio) if mlp == "mlp" else glu_hidden(int(dim * mlp_ratio))


class Block(nn.Module):
    """x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + MLP(LN(x)): each sub-layer f adds
    f(LN(x)) to x. norm_first=False gives the post-LN layout, x = LN(x + f(x)), per sub-layer.

    The Llama layout's options (chapter 09): norm="rmsnorm"; mlp="glu" with act="silu"
    (SwiGLU); bias=False (no bias in any attention or MLP linear); kv_heads < heads
    (grouped-query attention). mlp_hidden: the MLP's width (None: int(dim · mlp_ratio) for
    mlp="mlp", `glu_hidden` of it for mlp="glu")."""

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
        norm: str = "layernorm",
        mlp: str = "mlp",
        mlp_hidden: int | None = None,
        bias: bool = True,
        kv_heads: int | None = None,
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
        mlp_hidden = mlp_width(dim, mlp_ratio, mlp, mlp_hidden)
        self.norm1 = make_norm(norm, dim, eps)
        self.attn = MultiHeadAttention(dim, heads, dropout, bias=bias, kv_heads=kv_heads)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout, bias=bias, context_dim=context_dim) \
            if cross_attention else None
        self.norm_cross = make_norm(norm, dim, eps) if cross_attention else None
        self.norm2 = make_norm(norm, dim, eps)
        self.mlp = (MLP if mlp == "mlp" else GatedMLP)(dim, mlp_hidden, dropout, act, bias)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache=None,
        rotary=None,
        after_attention=None,
    ) -> torch.Tensor:
        """x: (B, T, dim) → (B, T, dim); context: (B, Tk, context_dim), for a cross-attention block;
        cache: this block's `LayerCache` (decoding with a KV cache, chapter 09); rotary: (cos,
        sin) for the self-attention's queries and keys (RoPE, chapter 09); after_attention: a
        function x -> x run between the self-attention and the MLP, where GPT-2's cross-attention
        sits (chapter 11 adds one to a frozen block this way)."""
        check_tensor("x", x, ndim=3, dtype="float")
        check_dtype("x", x, self.norm1.weight.dtype)
        x = self.sublayer(x, self.norm1, lambda h: self.drop(
            self.attn(h, mask=mask, need_weights=need_weights, cache=cache, rotary=rotary)))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context=(B, Tk, context_dim)")
            x = self.sublayer(x, self.norm_cross,
                              lambda h: self.drop(self.cross_attn(h, context, context_mask, need_weights)))
        if after_attention is not None:
            x = after_attention(x)
        return self.sublayer(x, self.norm2, self.mlp)

    def sublayer(self, x: torch.Tensor, norm: nn.Module, f) -> torch.Tensor:
        """One residual sub-layer: x + f(norm(x)) (pre-LN) or norm(x + f(x)) (post-LN)."""
        return x + f(norm(x)) if self.norm_first else norm(x + f(x))


class Transformer(nn.Module):
    """A stack of `depth` pre-LN blocks (no final norm: the model that owns it adds one);
    block_kwargs: `Block`'s options."""

    def __init__(self, dim: int, depth: int, heads: int, **block_kwargs):
        super().__init__()
        # depth 0 would be an identity that trains nothing; no model in the course builds one.
        check_int("depth", depth)
        self.blocks = nn.ModuleList(Block(dim, heads, **block_kwargs) for _ in range(depth))

    def forward(self, x, mask=None, context=None, context_mask=None, need_weights: bool = False, cache=None,
                rotary=None, hooks=None):
        """cache: a `KVCache` with one layer per block, or None; rotary: (cos, sin) for every block.
        hooks: {block index: (where, fn)}, fn: x -> x run "before" block i or "after_attention"
        inside it (chapter 11: layers added to a frozen LLM)."""
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"the KV cache has {len(cache.layers)} layers, this Transformer {len(self.blocks)} blocks")
        hooks = check_hooks(hooks, len(self.blocks))
        for i, block in enumerate(self.blocks):
            where, fn = hooks.get(i, (None, None))
            if where == "before":
                x = fn(x)
            x = block(x, mask, context, context_mask, need_weights, None if cache is None else cache.layers[i],
                      rotary=rotary, after_attention=fn if where == "after_attention" else None)
        return x

    def attention_maps(self) -> list[torch.Tensor]:
        """Self-attention weights of each block from the last call with need_weights=True."""
        return [b.attn.last_weights for b in self.blocks]


HOOK_PLACES = ("before", "after_attention")


def check_hooks(hooks, depth: int) -> dict:
    """hooks: None or {block index in [0, depth): (where in HOOK_PLACES, callable)}; returns a dict."""
    if hooks is None:
        return {}
    if not isinstance(hooks, dict):
        raise TypeError(f"hooks must be a dict {{block index: (where, fn)}}, got {type(hooks).__name__}")
    for i, entry in hooks.items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth:
            raise ValueError(f"hook keys must be block indices in [0, {depth - 1}], got {i!r}")
        if not (isinstance(entry, tuple) and len(entry) == 2 and entry[0] in HOOK_PLACES and callable(entry[1])):
            raise ValueError(f"hooks[{i}] must be (where, fn) with where in {list(HOOK_PLACES)}, got {entry!r}")
    return hooks
