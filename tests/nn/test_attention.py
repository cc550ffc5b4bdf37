import pytest
import torch

from minivlm.nn import MultiHeadAttention, masks, scaled_dot_product_attention


def copy_to_torch(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention holding the same weights as ours."""
    kdim = ours.context_dim
    ref = torch.nn.MultiheadAttention(ours.dim, ours.heads, batch_first=True, kdim=kdim, vdim=kdim)
    with torch.no_grad():
        if kdim == ours.dim:
            ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        else:
            ref.q_proj_weight.copy_(ours.q_proj.weight)
            ref.k_proj_weight.copy_(ours.k_proj.weight)
            ref.v_proj_weight.copy_(ours.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding"])
def test_self_attention_equals_torch(mask_kind, need_weights):
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4)
    ref = copy_to_torch(ours)
    x = torch.randn(3, 7, 32)
    valid = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0]], dtype=torch.bool)
    mask = {"none": None, "causal": masks.causal(7), "padding": masks.padding(valid)}[mask_kind]
    got = ours(x, mask=mask, need_weights=need_weights)
    if mask_kind == "padding":
        want, _ = ref(x, x, x, key_padding_mask=~valid)
    else:
        want, _ = ref(x, x, x, attn_mask=None if mask is None else ~mask)  # torch: True = blocked
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cross_attention_equals_torch_with_other_context_width():
    torch.manual_seed(1)
    ours = MultiHeadAttention(16, 2, context_dim=24)
    ref = copy_to_torch(ours)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 24)
    want, _ = ref(x, ctx, ctx)
    torch.testing.assert_close(ours(x, ctx), want, atol=1e-5, rtol=1e-5)


def test_scratch_formula_weights_rows_sum_to_one_and_respect_mask():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    out, w = scaled_dot_product_attention(q, k, v, masks.causal(6))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6))
    assert (w.triu(1) == 0).all()
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_need_weights_stores_attention_maps():
    torch.manual_seed(3)
    m = MultiHeadAttention(8, 2)
    m(torch.randn(1, 4, 8), mask=masks.causal(4), need_weights=True)
    assert m.last_weights.shape == (1, 2, 4, 4)
    assert torch.all(m.last_weights[..., 0, 1:] == 0)


def test_fully_masked_query_gives_finite_output():
    m = MultiHeadAttention(8, 2)
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, :2, :2] = True  # query 2 may attend to nothing
    out = m(torch.randn(1, 3, 8), mask=mask)
    assert torch.isfinite(out).all()


def test_bad_inputs_name_expected_and_actual():
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="last dim 8, got shape"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="batch sizes must match"):
        m(torch.randn(2, 3, 8), torch.randn(3, 3, 8))
    with pytest.raises(ValueError, match="does not fit"):
        m(torch.randn(2, 3, 8), mask=masks.causal(4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([[1.0]])
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
