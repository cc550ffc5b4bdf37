"""Rotary position embeddings (chapter 09): relative positions in the scores, rotations that keep
norms, position 0 the identity, Hugging Face Llama's rotate-half convention, and RoPE inside
attention with the KV cache (keys cached rotated)."""
import math

import pytest
import torch

from minivlm.nn.attention import KVCache, MultiHeadAttention
from minivlm.nn.rope import RotaryEmbedding, apply_rotary, rotate_half


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rotate(x, positions, base=10000.0):
    """x (B, H, T, d) rotated to positions (B, T)."""
    cos, sin = RotaryEmbedding(x.shape[-1], base)(positions)
    return apply_rotary(x, cos.double(), sin.double())


def test_scores_depend_only_on_the_position_offset():
    q, k = rand(2, 3, 5, 16, seed=1), rand(2, 3, 5, 16, seed=2)
    pq = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(3))
    pk = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(4))
    shift = int(torch.randint(1, 500, (), generator=torch.Generator().manual_seed(12)))  # both shifted alike
    # the same scores, up to the angles' float32 rounding (RoPE computes them in float32, as Llama does)
    scores = rotate(q, pq) @ rotate(k, pk).transpose(-1, -2)
    shifted = rotate(q, pq + shift) @ rotate(k, pk + shift).transpose(-1, -2)
    assert torch.allclose(scores, shifted, atol=1e-4)
    # ... and the positions do matter: another offset gives other scores
    other = rotate(q, pq + 1) @ rotate(k, pk).transpose(-1, -2)
    assert (other - scores).abs().max() > 1e-2


def test_rotation_keeps_norms_and_position_zero_is_the_identity():
    x = rand(2, 4, 6, 8, seed=5)
    positions = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(6))
    rotated = rotate(x, positions)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    assert torch.equal(rotate(x, torch.zeros(2, 6, dtype=torch.long)), x)
    assert (rotated - x).abs().max() > 0.1


def test_angles_by_hand():
    """Channel pair (j, j + d/2) of position p turns by p · base^(-2j/d)."""
    d, base = 8, 100.0
    cos, sin = RotaryEmbedding(d, base)(torch.tensor([[0, 3, 7]]))
    assert cos.shape == sin.shape == (1, 3, d)
    for t, p in enumerate((0, 3, 7)):
        for j in range(d // 2):
            angle = p * base ** (-2 * j / d)
            for c in (j, j + d // 2):
                assert cos[0, t, c].item() == pytest.approx(math.cos(angle), abs=1e-6)
                assert sin[0, t, c].item() == pytest.approx(math.sin(angle), abs=1e-6)
    x = rand(1, 1, 3, d, seed=7).float()
    out = apply_rotary(x, cos, sin)
    a, b = x[..., :d // 2], x[..., d // 2:]  # the rotate-half pairs: channel j with j + d/2
    c, s = cos[None, ..., :d // 2], sin[None, ..., :d // 2]
    assert torch.allclose(out, torch.cat([a * c - b * s, b * c + a * s], -1), atol=1e-6)
    assert torch.equal(rotate_half(torch.arange(4.0)), torch.tensor([-2.0, -3.0, 0.0, 1.0]))


def test_equals_transformers_llama_rotary():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as hf

    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500.0)
    positions = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(8))
    q, k = rand(2, 4, 7, 16, seed=9).float(), rand(2, 4, 7, 16, seed=10).float()
    their_cos, their_sin = hf.LlamaRotaryEmbedding(cfg)(q, positions)
    cos, sin = RotaryEmbedding(16, 500.0)(positions)
    assert torch.allclose(cos, their_cos, atol=1e-6) and torch.allclose(sin, their_sin, atol=1e-6)
    want_q, want_k = hf.apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.allclose(apply_rotary(q, cos, sin), want_q, atol=1e-6)
    assert torch.allclose(apply_rotary(k, cos, sin), want_k, atol=1e-6)


def test_attention_with_rope_and_a_cache_equals_without():
    """Keys are cached already rotated: feeding tokens one at a time through the cache gives the
    same outputs as the whole causal sequence at once."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, kv_heads=2).double().eval()
    x = rand(2, 6, 32, seed=11)
    rope = RotaryEmbedding(8)
    positions = torch.arange(6).expand(2, 6)
    cos, sin = (t.double() for t in rope(positions))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    full = attn(x, mask=causal, rotary=(cos, sin))
    cache = KVCache(1)
    steps = [attn(x[:, t:t + 1], cache=cache.layers[0], rotary=(cos[:, t:t + 1], sin[:, t:t + 1])) for t in range(6)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-12)
    assert len(cache) == 6 and cache.layers[0].k.shape == (2, 2, 6, 8)  # 2 key/value heads cached
    assert (attn(x, mask=causal) - full).abs().max() > 1e-3  # the rotation does change the output


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="base"):
        RotaryEmbedding(8, base=1.0)
    rope = RotaryEmbedding(8)
    with pytest.raises(ValueError, match="integer"):
        rope(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="2 dims"):
        rope(torch.zeros(3, dtype=torch.long))
    cos, sin = rope(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"cos must have shape \(B, T, head_dim\) = \(2, 4, 8\)"):
        apply_rotary(torch.zeros(2, 1, 4, 8), cos, sin)
    attn = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match="self-attention"):
        attn(torch.zeros(2, 3, 16), context=torch.zeros(2, 5, 16), rotary=(cos, sin))
