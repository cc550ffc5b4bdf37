"""Block's post-LN (BERT) layout, chapter 06: x = LN(x + f(x)) per sub-layer, against the formula
and against transformers' BertLayer with copied weights."""
import pytest
import torch

from minivlm.nn import masks
from minivlm.nn.blocks import Block, Transformer


def randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def test_post_ln_block_is_the_bert_formula_with_padding_and_cross_attention():
    block = randomised(Block(16, 2, cross_attention=True, context_dim=12, norm_first=False))
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    mask = masks.padding(valid)
    h = block.norm1(x + block.attn(x, mask=mask))
    h = block.norm_cross(h + block.cross_attn(h, ctx))
    want = block.norm2(h + block.mlp(h))
    assert torch.allclose(block(x, mask=mask, context=ctx), want, atol=1e-6)


def test_pre_ln_default_is_unchanged():
    block = randomised(Block(16, 2))
    x = torch.randn(2, 5, 16)
    h = x + block.attn(block.norm1(x))
    assert torch.allclose(block(x), h + block.mlp(block.norm2(h)), atol=1e-6)
    post = Block(16, 2, norm_first=False)
    post.load_state_dict(block.state_dict())
    assert not torch.allclose(post.eval()(x), block(x), atol=1e-3)


def test_transformer_passes_the_layout_to_every_block_and_checks_it():
    stack = Transformer(16, 3, 2, norm_first=False)
    assert [b.norm_first for b in stack.blocks] == [False] * 3
    with pytest.raises(TypeError, match="norm_first"):
        Block(16, 2, norm_first="post")


def test_post_ln_block_equals_bert_layer():
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertLayer

    config = transformers.BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=64, hidden_act="gelu",
                                     layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    bert = BertLayer(config).eval()
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ours = Block(16, 2, mlp_ratio=4, eps=1e-12, act="gelu", norm_first=False).eval()
    a = bert.attention
    pairs = {"attn.q_proj": a.self.query, "attn.k_proj": a.self.key, "attn.v_proj": a.self.value,
             "attn.out_proj": a.output.dense, "norm1": a.output.LayerNorm, "mlp.fc1": bert.intermediate.dense,
             "mlp.fc2": bert.output.dense, "norm2": bert.output.LayerNorm}
    state = {f"{ours_name}.{k}": v for ours_name, mod in pairs.items() for k, v in mod.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(2, 6, 16)
    out = bert(x)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(ours(x), out, atol=1e-5)
