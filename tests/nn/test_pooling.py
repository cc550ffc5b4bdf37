"""The attentional pooler (chapter 07; chapters 11, 12 and 16 build on it)."""
import pytest
import torch

from minivlm.nn.pooling import AttentionalPooler


@pytest.mark.parametrize("self_attention", [False, True])
def test_output_size_is_independent_of_the_number_of_tokens(self_attention):
    pooler = AttentionalPooler(16, context_dim=12, n_queries=5, heads=2, self_attention=self_attention)
    for n in (1, 7, 40):
        assert pooler(torch.randn(3, n, 12)).shape == (3, 5, 16)


@pytest.mark.parametrize("self_attention", [False, True])
def test_permuting_the_tokens_changes_nothing(self_attention):
    torch.manual_seed(0)
    pooler = AttentionalPooler(16, context_dim=12, n_queries=4, heads=2, self_attention=self_attention)
    x = torch.randn(2, 9, 12)
    perm = torch.randperm(9)
    assert torch.allclose(pooler(x), pooler(x[:, perm]), atol=1e-6)
    assert not torch.allclose(pooler(x), pooler(x + torch.randn_like(x)), atol=1e-3)


def test_padded_tokens_are_ignored_and_the_formula_holds():
    torch.manual_seed(1)
    pooler = AttentionalPooler(8, n_queries=3, heads=2)
    x = torch.randn(2, 6, 8)
    valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    out = pooler(x, valid)
    assert torch.allclose(out[0], pooler(x[:1, :4])[0], atol=1e-6)
    # the formula: softmax(q kᵀ/√d) v per head, q from LN(queries), k and v from LN(tokens)
    a = pooler.cross_attn
    q = a.q_proj(pooler.norm_queries(pooler.queries))  # (Q, D)
    kv = pooler.norm_context(x[1])
    k, v = a.k_proj(kv), a.v_proj(kv)
    heads = [((q[:, h * 4:(h + 1) * 4] @ k[:, h * 4:(h + 1) * 4].t()) / 2).softmax(-1) @ v[:, h * 4:(h + 1) * 4]
             for h in range(2)]
    assert torch.allclose(out[1], a.out_proj(torch.cat(heads, -1)), atol=1e-5)


def test_gradient_reaches_the_queries():
    pooler = AttentionalPooler(8, n_queries=2, heads=2)
    pooler(torch.randn(2, 5, 8)).sum().backward()
    assert pooler.queries.grad is not None and pooler.queries.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_queries=0), ValueError, "n_queries"),
    (dict(heads=3), ValueError, "divisible"),
    (dict(self_attention="yes"), TypeError, "self_attention"),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        AttentionalPooler(8, **kwargs)


def test_bad_input():
    pooler = AttentionalPooler(8, context_dim=6, n_queries=2, heads=2)
    with pytest.raises(ValueError, match=r"context must be \(B, N, 6\)"):
        pooler(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="no tokens"):
        pooler(torch.randn(2, 0, 6))
    with pytest.raises(ValueError, match="context_mask must have shape"):
        pooler(torch.randn(2, 5, 6), torch.ones(2, 4, dtype=torch.bool))


def test_a_seeded_pooler_draws_queries_then_self_attention_then_cross_attention():
    """The order of the random draws is part of a seeded model: CoCa's and MAPL's live runs (chapters
    07, 10) start from the weights this order gives, and their notebooks assert what those runs reach."""
    from minivlm.nn.attention import MultiHeadAttention

    torch.manual_seed(0)
    pooler = AttentionalPooler(32, context_dim=24, n_queries=4, heads=4, self_attention=True)
    torch.manual_seed(0)
    queries = torch.randn(4, 32) * 0.02
    self_attn = MultiHeadAttention(32, 4)
    cross_attn = MultiHeadAttention(32, 4, context_dim=24)
    assert torch.equal(pooler.queries, queries)
    for mine, want in ((pooler.self_attn, self_attn), (pooler.cross_attn, cross_attn)):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), want.state_dict().values()))
