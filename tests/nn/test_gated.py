"""Flamingo's gated cross-attention block and media-location mask (chapter 11)."""
from __future__ import annotations

import pytest
import torch

from minivlm.nn import masks
from minivlm.nn.gated import GatedCrossAttentionBlock
from minivlm.nn.pooling import PerceiverResampler


def test_media_mask_by_hand():
    # tokens:      t0  <img> t2  t3  <img> t5
    loc = torch.tensor([[False, True, False, False, True, False]])
    got = masks.media(loc, n_media=2, tokens_per_media=2)[0].int()
    want = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(got, want)
    every = masks.media(loc, 2, 2, only_immediate=False)[0].int()
    assert torch.equal(every[5], torch.tensor([1, 1, 1, 1])) and torch.equal(every[0], torch.zeros(4, dtype=torch.int))
    # a row with fewer images never sees the padded image slots
    loc2 = torch.tensor([[True, False, False, False, False, False]])
    assert not masks.media(loc2, 2, 2, only_immediate=False)[0, :, 2:].any()


def test_media_mask_errors():
    with pytest.raises(ValueError, match="tokens_per_media"):
        masks.media(torch.zeros(1, 3, dtype=torch.bool), 1, 0)
    with pytest.raises(TypeError, match="only_immediate"):
        masks.media(torch.zeros(1, 3, dtype=torch.bool), 1, 1, only_immediate="yes")


def test_zero_gates_are_the_identity_bit_for_bit():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(16, 2, context_dim=8)
    x, visual = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    assert torch.equal(block(x, visual), x)
    assert block.gates() == {"attn": 0.0, "ff": 0.0}
    # the gates still get gradients at zero: d tanh(α)/dα = 1 there
    (block(x, visual) ** 2).sum().backward()
    assert block.attn_gate.grad.abs().item() > 0 and block.ff_gate.grad.abs().item() > 0
    assert block.cross_attn.q_proj.weight.grad.abs().sum() == 0  # scaled by tanh(0) = 0


def test_ungated_block_changes_the_stream_from_step_zero():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(16, 2, gated=False, feedforward=False)
    x, visual = torch.randn(2, 5, 16), torch.randn(2, 6, 16)
    assert not torch.allclose(block(x, visual), x)
    assert block.gates() == {"attn": 1.0} and block.ff is None


def test_text_before_the_first_image_gets_nothing_from_images():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(16, 2, feedforward=False)
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
    loc = torch.tensor([[False, False, True, False]])
    x, visual = torch.randn(1, 4, 16), torch.randn(1, 3, 16)
    out = block(x, visual, masks.media(loc, 1, 3))
    assert torch.equal(out[0, :2], x[0, :2]) and not torch.allclose(out[0, 2:], x[0, 2:])


def test_gated_block_bad_input():
    block = GatedCrossAttentionBlock(16, 2)
    with pytest.raises(ValueError, match=r"media_mask must be \(B, T, M\)"):
        block(torch.randn(1, 4, 16), torch.randn(1, 3, 16), torch.ones(1, 4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="media_mask must be a bool tensor"):
        block(torch.randn(1, 4, 16), torch.randn(1, 3, 16), torch.ones(1, 4, 3))
    with pytest.raises(ValueError, match="same batch"):
        block(torch.randn(2, 4, 16), torch.randn(1, 3, 16))
    with pytest.raises(TypeError, match="gated"):
        GatedCrossAttentionBlock(16, 2, gated=1)


def test_resampler_frames_flatten_into_one_token_set():
    """F frames of N tokens are one set of F·N tokens once each frame's time embedding is added
    (the paper's video input); the output is n_latents tokens whatever F and N are."""
    torch.manual_seed(0)
    r = PerceiverResampler(16, depth=1, n_latents=3, heads=2, max_frames=4)
    x = torch.randn(2, 3, 5, 16)
    flat = (x + r.time_embedding[:3]).reshape(2, 15, 16)
    r_plain = PerceiverResampler(16, depth=1, n_latents=3, heads=2, max_frames=None)
    r_plain.load_state_dict({k: v for k, v in r.state_dict().items() if k != "time_embedding"})
    torch.testing.assert_close(r(x), r_plain(flat))
    # reordering tokens inside the set changes nothing (attention reads a set)
    perm = torch.randperm(15)
    torch.testing.assert_close(r_plain(flat[:, perm]), r_plain(flat), atol=1e-5, rtol=1e-5)
    # a mask drops tokens exactly
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[:, 10:] = False
    torch.testing.assert_close(r_plain(flat, mask), r_plain(flat[:, :10]), atol=1e-5, rtol=1e-5)


def test_resampler_bad_input():
    r = PerceiverResampler(16, depth=1, n_latents=3, heads=2, max_frames=2)
    with pytest.raises(ValueError, match="more than max_frames"):
        r(torch.randn(1, 3, 4, 16))
    with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
        r(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        r(torch.randn(1, 4, 16), torch.ones(1, 5, dtype=torch.bool))


def test_transformer_hooks_run_where_asked_and_reject_bad_entries():
    from minivlm.nn.blocks import Transformer

    torch.manual_seed(0)
    net = Transformer(16, 2, 2)
    x = torch.randn(1, 3, 16)
    calls = []

    def hook(name):
        def fn(h):
            calls.append(name)
            return h
        return fn

    torch.testing.assert_close(net(x, hooks={0: ("before", hook("b0")), 1: ("after_attention", hook("a1"))}), net(x))
    assert calls == ["b0", "a1"]
    with pytest.raises(ValueError, match="block indices in \\[0, 1\\]"):
        net(x, hooks={2: ("before", hook("x"))})
    with pytest.raises(ValueError, match="where in"):
        net(x, hooks={0: ("inside", hook("x"))})
    with pytest.raises(TypeError, match="hooks must be a dict"):
        net(x, hooks=[hook("x")])


def test_written_out_attention_equals_the_fused_kernel():
    """MultiHeadAttention(fused=False), which the resampler and the gated blocks use, gives the
    fused kernel's output and gradients, with a mask, and stores no weights unless asked."""
    from minivlm.nn.attention import MultiHeadAttention

    torch.manual_seed(0)
    fused = MultiHeadAttention(16, 4, context_dim=8)
    plain = MultiHeadAttention(16, 4, context_dim=8, fused=False)
    plain.load_state_dict(fused.state_dict())
    x, ctx = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 7, 8)
    mask = torch.rand(2, 5, 7) > 0.4
    a, b = fused(x, ctx, mask), plain(x, ctx, mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
    assert plain.last_weights is None
    with pytest.raises(TypeError, match="fused"):
        MultiHeadAttention(16, 4, fused="no")
