"""The Llama layout's block pieces (chapter 09): RMSNorm, the gated (SwiGLU) MLP and its width,
no biases, grouped-query attention, and defaults that keep every existing module and key."""
import pytest
import torch
import torch.nn.functional as F

from minivlm.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from minivlm.nn.blocks import MLP, Block, GatedMLP, RMSNorm, glu_hidden, mlp_width
from minivlm.nn.text import TextTransformer


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- RMSNorm
def test_rmsnorm_equals_the_formula_and_torch():
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(rand(24, seed=1))
    x = 3 * rand(4, 5, 24, seed=2) + 1.5  # a mean far from 0: LayerNorm would give something else
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), want, atol=1e-6)
    assert torch.allclose(norm(x), F.rms_norm(x, (24,), norm.weight, eps=1e-5), atol=1e-6)
    assert (norm(x) - F.layer_norm(x, (24,), norm.weight, eps=1e-5)).abs().max() > 0.1
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # no bias


def test_rmsnorm_computes_in_float32_and_returns_the_input_dtype():
    norm = RMSNorm(8).half()
    x = torch.full((2, 8), 300.0, dtype=torch.float16)  # 300² overflows float16 (max 65504)
    out = norm(x)
    assert out.dtype == torch.float16 and torch.allclose(out.float(), torch.ones(2, 8), atol=1e-3)


# ----------------------------------------------------------------------------- gated MLP
def test_swiglu_equals_the_formula():
    mlp = GatedMLP(16, 40, act="silu")
    x = rand(3, 7, 16, seed=3)
    g, u, d = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    want = d(F.silu(g(x)) * u(x))
    hand = (F.silu(x @ g.weight.T + g.bias) * (x @ u.weight.T + u.bias)) @ d.weight.T + d.bias
    assert torch.allclose(mlp(x), want) and torch.allclose(mlp(x), hand, atol=1e-6)
    swapped = d(F.silu(u(x)) * g(x))  # gate and up are not interchangeable
    assert (mlp(x) - swapped).abs().max() > 1e-3
    assert [n for n, _ in GatedMLP(16, 40, bias=False).named_parameters()] == \
        ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]


def test_glu_width_keeps_the_parameter_count():
    assert glu_hidden(512) == 344 and glu_hidden(48) == 32 and glu_hidden(96, multiple_of=1) == 64
    for dim, ratio in ((128, 4.0), (64, 4.0), (96, 8 / 3)):
        plain = sum(p.numel() for p in MLP(dim, int(dim * ratio), bias=False).parameters())
        width = mlp_width(dim, ratio, "glu")
        gated = sum(p.numel() for p in GatedMLP(dim, width, bias=False).parameters())
        assert width % 8 == 0 and abs(gated - plain) <= 3 * dim * 8  # at most one multiple of 8 apart
    assert mlp_width(64, 4.0, "glu", mlp_hidden=100) == 100 and mlp_width(64, 4.0) == 256
    with pytest.raises(ValueError, match="mlp must be one of"):
        mlp_width(64, 4.0, "swish")


# ----------------------------------------------------------------------------- grouped-query attention
def test_grouped_query_attention_shares_each_key_value_head():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 8, kv_heads=2).eval()
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (8, 32)  # 2 heads of width 4
    x = rand(2, 5, 32, seed=4)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    q = attn.q_proj(x).view(2, 5, 8, 4).transpose(1, 2)
    k = attn.k_proj(x).view(2, 5, 2, 4).transpose(1, 2)
    v = attn.v_proj(x).view(2, 5, 2, 4).transpose(1, 2)
    # query head h reads key/value head h // 4 (Hugging Face's repeat_kv)
    out, _ = scaled_dot_product_attention(q, k[:, [h // 4 for h in range(8)]], v[:, [h // 4 for h in range(8)]], mask)
    want = attn.out_proj(out.transpose(1, 2).reshape(2, 5, 32))
    assert torch.allclose(attn(x, mask=mask), want, atol=1e-6)
    assert torch.allclose(attn(x, mask=mask, need_weights=True), want, atol=1e-6)
    wrong, _ = scaled_dot_product_attention(q, k[:, [h % 2 for h in range(8)]], v[:, [h % 2 for h in range(8)]], mask)
    assert (attn.out_proj(wrong.transpose(1, 2).reshape(2, 5, 32)) - want).abs().max() > 1e-3
    with pytest.raises(ValueError, match="heads=8 must be a multiple of kv_heads=3"):
        MultiHeadAttention(32, 8, kv_heads=3)


# ----------------------------------------------------------------------------- Block and TextTransformer
def test_llama_block_has_no_bias_and_llama_names():
    block = Block(32, 4, norm="rmsnorm", mlp="glu", act="silu", bias=False, kv_heads=2)
    names = [n for n, _ in block.named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert set(names) == {"norm1.weight", "norm2.weight", "attn.q_proj.weight", "attn.k_proj.weight",
                          "attn.v_proj.weight", "attn.out_proj.weight", "mlp.gate_proj.weight",
                          "mlp.up_proj.weight", "mlp.down_proj.weight"}
    assert isinstance(block.norm1, RMSNorm) and block.mlp.gate_proj.out_features == 88  # glu_hidden(128)
    x = rand(2, 4, 32, seed=5)
    h = x + block.attn(block.norm1(x))  # pre-norm, as before: only the parts changed
    assert torch.allclose(block(x), h + block.mlp(block.norm2(h)), atol=1e-6)


def test_defaults_keep_every_module_and_key():
    block = Block(32, 4, cross_attention=True)
    assert isinstance(block.norm1, torch.nn.LayerNorm) and isinstance(block.mlp, MLP)
    assert sorted(block.state_dict()) == sorted(
        f"{m}.{p}" for m in ("norm1", "norm2", "norm_cross", "mlp.fc1", "mlp.fc2", "attn.q_proj", "attn.k_proj",
                             "attn.v_proj", "attn.out_proj", "cross_attn.q_proj", "cross_attn.k_proj",
                             "cross_attn.v_proj", "cross_attn.out_proj") for p in ("weight", "bias"))
    text = TextTransformer(50, max_len=8, dim=16, depth=1, heads=2)
    assert {"token_embedding.weight", "pos_embedding", "norm.weight", "norm.bias"} <= set(text.state_dict())
    rope = TextTransformer(50, max_len=8, dim=16, depth=1, heads=2, positions="rope", norm="rmsnorm")
    assert "pos_embedding" not in rope.state_dict() and "norm.bias" not in rope.state_dict()
    assert not any("inv_freq" in k for k in rope.state_dict())  # a function of head_dim and base, not saved


def test_text_transformer_position_ids():
    torch.manual_seed(0)
    text = TextTransformer(50, max_len=8, dim=16, depth=1, heads=2).eval()
    ids = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(6))
    default = text(ids)
    assert torch.equal(text(ids, position_ids=torch.arange(4).expand(2, 4)), default)
    moved = text(ids, position_ids=torch.tensor([[4, 5, 6, 7], [0, 1, 2, 3]]))
    assert torch.equal(moved[1], default[1]) and (moved[0] - default[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 7\].*got values in \[0, 8\]"):
        text(ids, position_ids=torch.tensor([[0, 1, 2, 8], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match=r"position_ids must have shape \(2, 4\), got \(1, 4\)"):
        text(ids, position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="integer"):
        text(ids, position_ids=torch.zeros(2, 4))
    rope = TextTransformer(50, max_len=8, dim=16, depth=1, heads=2, positions="rope").eval()
    far = rope(ids, position_ids=torch.arange(100, 104).expand(2, 4))  # no table: any position >= 0
    assert torch.allclose(far, rope(ids), atol=1e-4)  # causal, all shifted alike: relative positions only
    with pytest.raises(ValueError, match=r"position_ids must be >= 0, got values in \[-1, 3\]"):
        rope(ids, position_ids=torch.tensor([[-1, 0, 1, 2], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="positions must be 'learned' or 'rope'"):
        TextTransformer(50, positions="alibi")
    with pytest.raises(ValueError, match="norm must be one of"):
        TextTransformer(50, norm="batchnorm")
