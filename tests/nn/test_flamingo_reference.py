"""Flamingo's pieces against two independent implementations, on tiny random configs with every
parameter perturbed (chapter 11):

- lucidrains' flamingo-pytorch (`PerceiverResampler`, `GatedCrossAttentionBlock`, media masks);
- transformers' Idefics, a Flamingo reimplementation (`IdeficsPerceiverResampler`,
  `IdeficsGatedCrossAttentionLayer`: RMSNorm and a SwiGLU feed-forward, as a Llama LLM has).

flamingo-pytorch resamples each "time" step of its (B, T, N, D) input with its own latents; the
parity is checked per image (T = 1 per call), which is how `minivlm.models.flamingo` uses it.
"""
from __future__ import annotations

import pytest
import torch

from minivlm.nn import masks
from minivlm.nn.gated import GatedCrossAttentionBlock
from minivlm.nn.pooling import PerceiverResampler

fp = pytest.importorskip("flamingo_pytorch", reason="flamingo-pytorch is a test-only reference (make install)")


def perturb(*modules: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter moved off its initial value (a zero gate, a LayerNorm's ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def split_kv(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k, v = weight.chunk(2, dim=0)  # flamingo-pytorch's to_kv: (2·inner, dim), k rows first
    return k, v


def load_resampler_from_flamingo_pytorch(ours: PerceiverResampler, theirs) -> None:
    state = {"latents": theirs.latents, "time_embedding": theirs.media_pos_emb, "norm.weight": theirs.norm.weight,
             "norm.bias": theirs.norm.bias}
    for i, (attn, ff) in enumerate(theirs.layers):
        k, v = split_kv(attn.to_kv.weight)
        state.update({
            f"attn.{i}.norm_queries.weight": attn.norm_latents.weight, f"attn.{i}.norm_queries.bias": attn.norm_latents.bias,
            f"attn.{i}.norm_context.weight": attn.norm_media.weight, f"attn.{i}.norm_context.bias": attn.norm_media.bias,
            f"attn.{i}.cross_attn.q_proj.weight": attn.to_q.weight, f"attn.{i}.cross_attn.k_proj.weight": k,
            f"attn.{i}.cross_attn.v_proj.weight": v, f"attn.{i}.cross_attn.out_proj.weight": attn.to_out.weight,
            f"norm_ff.{i}.weight": ff[0].weight, f"norm_ff.{i}.bias": ff[0].bias,
            f"ff.{i}.fc1.weight": ff[1].weight, f"ff.{i}.fc2.weight": ff[3].weight,
        })
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()})


def test_resampler_equals_flamingo_pytorch():
    torch.manual_seed(0)
    dim, heads, depth, latents = 32, 4, 2, 5
    theirs = fp.PerceiverResampler(dim=dim, depth=depth, dim_head=dim // heads, heads=heads, num_latents=latents,
                                   num_media_embeds=1, ff_mult=2)
    ours = PerceiverResampler(dim, depth=depth, n_latents=latents, heads=heads, max_frames=1, ff_mult=2)
    perturb(theirs)
    load_resampler_from_flamingo_pytorch(ours, theirs)
    x = torch.randn(3, 11, dim)
    want = theirs(x)[:, 0]  # (B, 1, L, D): one "time" step
    torch.testing.assert_close(ours(x), want, atol=1e-5, rtol=1e-5)
    # any number of tokens in, the same number of latents out
    assert ours(torch.randn(2, 3, dim)).shape == ours(torch.randn(2, 40, dim)).shape == (2, latents, dim)


def load_block_from_flamingo_pytorch(ours: GatedCrossAttentionBlock, theirs) -> None:
    a, ff = theirs.attn, theirs.ff
    k, v = split_kv(a.to_kv.weight)
    ours.load_state_dict({k_: t.detach().clone() for k_, t in {
        "norm_cross.weight": a.norm.weight, "norm_cross.bias": a.norm.bias,
        "cross_attn.q_proj.weight": a.to_q.weight, "cross_attn.k_proj.weight": k, "cross_attn.v_proj.weight": v,
        "cross_attn.out_proj.weight": a.to_out.weight, "attn_gate": theirs.attn_gate,
        "norm_ff.weight": ff[0].weight, "norm_ff.bias": ff[0].bias, "ff.fc1.weight": ff[1].weight,
        "ff.fc2.weight": ff[3].weight, "ff_gate": theirs.ff_gate}.items()})


def interleaved_locations(b: int, t: int, n_images: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) bool: n_images <image> positions per row, at random places, never at position 0 (so
    every row has text before its first image)."""
    loc = torch.zeros(b, t, dtype=torch.bool)
    for row in range(b):
        loc[row, 1 + torch.randperm(t - 1, generator=g)[:n_images]] = True
    return loc


@pytest.mark.parametrize("only_immediate", [True, False])
def test_gated_block_and_media_mask_equal_flamingo_pytorch(only_immediate):
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    dim, heads, n_images, per_image, t = 32, 4, 3, 5, 14
    theirs = fp.GatedCrossAttentionBlock(dim=dim, dim_head=dim // heads, heads=heads, ff_mult=2,
                                         only_attend_immediate_media=only_immediate)
    ours = GatedCrossAttentionBlock(dim, heads, mlp_ratio=2)
    perturb(theirs)
    load_block_from_flamingo_pytorch(ours, theirs)
    x, media = torch.randn(2, t, dim), torch.randn(2, n_images, per_image, dim)
    loc = interleaved_locations(2, t, n_images, g)
    want = theirs(x, media, media_locations=loc)
    mask = masks.media(loc, n_images, per_image, only_immediate=only_immediate)
    got = ours(x, media.flatten(1, 2), mask)
    seen = loc.cumsum(1) > 0  # tokens at or after their row's first image
    torch.testing.assert_close(got[seen], want[seen], atol=1e-5, rtol=1e-5)
    # text before the first image: ours adds nothing from the images; flamingo-pytorch does the
    # same when attending only to the immediate image, but with only_attend_immediate_media=False
    # its softmax over no allowed key spreads over every image (the bug class chapter 11 names)
    no_image = ours.ff_gate.tanh() * ours.ff(ours.norm_ff(x))
    torch.testing.assert_close(got[~seen], (x + no_image)[~seen], atol=1e-6, rtol=1e-6)
    if only_immediate:
        torch.testing.assert_close(got[~seen], want[~seen], atol=1e-5, rtol=1e-5)
    else:
        assert not torch.allclose(got[~seen], want[~seen], atol=1e-3)


def test_media_mask_equals_flamingo_pytorch_attention_pattern():
    """The mask itself, read off flamingo-pytorch's attention: a key whose value is changed moves
    a text token's output only if the token may attend to it."""
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)
    dim, n_images, per_image, t = 16, 3, 2, 10
    block = fp.GatedCrossAttentionBlock(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=True)
    perturb(block)
    x, media = torch.randn(1, t, dim), torch.randn(1, n_images, per_image, dim)
    loc = interleaved_locations(1, t, n_images, g)
    base = block.attn(x, media, media_locations=loc)
    seen = torch.zeros(t, n_images * per_image, dtype=torch.bool)
    for col in range(n_images * per_image):
        moved = media.clone().flatten(1, 2)
        moved[0, col] += 5.0
        out = block.attn(x, moved.view_as(media), media_locations=loc)
        seen[:, col] = (out - base).abs().amax(-1)[0] > 1e-6
    assert torch.equal(masks.media(loc, n_images, per_image)[0], seen)


# ----------------------------------------------------------------------------- Idefics (transformers)
def idefics_config(dim: int, heads: int, vision_dim: int, hidden: int):
    from transformers import IdeficsConfig

    # alpha_initializer="normal" crashes in transformers 5.x (torch.normal with size=(1)): build with zeros, then
    # fill the gates (perturb does)
    return IdeficsConfig(hidden_size=dim, num_attention_heads=heads, intermediate_size=hidden, hidden_act="silu",
                         rms_norm_eps=1e-6, alpha_initializer="zeros", alpha_type="float", qk_layer_norms=False,
                         vision_config={"embed_dim": vision_dim, "num_attention_heads": 2, "intermediate_size": 32,
                                        "num_hidden_layers": 1, "image_size": 8, "patch_size": 4},
                         perceiver_config={"qk_layer_norms_perceiver": False}, vocab_size=50, num_hidden_layers=1)


def test_resampler_equals_idefics():
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    torch.manual_seed(3)
    dim, heads, depth, latents = 24, 3, 2, 4
    cfg = idefics_config(32, 4, dim, 48)
    theirs = IdeficsPerceiverResampler(cfg, dim, depth, heads, dim // heads, latents)
    ours = PerceiverResampler(dim, depth=depth, n_latents=latents, heads=heads, max_frames=None, act="relu")
    perturb(theirs)
    state = {"latents": theirs.latents, "norm.weight": theirs.layer_norm.weight, "norm.bias": theirs.layer_norm.bias}
    for i, (attn, mlp) in enumerate(theirs.blocks):
        state.update({
            f"attn.{i}.norm_queries.weight": attn.latents_layer_norm.weight,
            f"attn.{i}.norm_queries.bias": attn.latents_layer_norm.bias,
            f"attn.{i}.norm_context.weight": attn.context_layer_norm.weight,
            f"attn.{i}.norm_context.bias": attn.context_layer_norm.bias,
            f"attn.{i}.cross_attn.q_proj.weight": attn.q_proj.weight, f"attn.{i}.cross_attn.k_proj.weight": attn.k_proj.weight,
            f"attn.{i}.cross_attn.v_proj.weight": attn.v_proj.weight,
            f"attn.{i}.cross_attn.out_proj.weight": attn.output_proj.weight,
            f"norm_ff.{i}.weight": mlp.ln.weight, f"norm_ff.{i}.bias": mlp.ln.bias,
            f"ff.{i}.fc1.weight": mlp.fc.weight, f"ff.{i}.fc2.weight": mlp.c_proj.weight,
        })
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    x = torch.randn(2, 9, dim)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_gated_block_equals_idefics_layer():
    from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

    torch.manual_seed(4)
    g = torch.Generator().manual_seed(4)
    dim, heads, vision_dim, hidden, n_images, per_image, t = 32, 4, 24, 40, 2, 3, 9
    cfg = idefics_config(dim, heads, vision_dim, hidden)
    cfg._attn_implementation = "eager"
    theirs = IdeficsGatedCrossAttentionLayer(cfg, layer_idx=0).eval()
    ours = GatedCrossAttentionBlock(dim, heads, context_dim=vision_dim, norm="rmsnorm", mlp="glu", act="silu",
                                    mlp_hidden=hidden, eps=1e-6)
    perturb(theirs)
    ca = theirs.cross_attn
    ours.load_state_dict({k: v.detach().clone() for k, v in {
        "norm_cross.weight": theirs.input_layernorm.weight, "cross_attn.q_proj.weight": ca.q_proj.weight,
        "cross_attn.k_proj.weight": ca.k_proj.weight, "cross_attn.v_proj.weight": ca.v_proj.weight,
        "cross_attn.out_proj.weight": ca.o_proj.weight, "attn_gate": theirs.alpha_cross_attn,
        "norm_ff.weight": theirs.post_attention_layernorm.weight, "ff.gate_proj.weight": theirs.mlp.gate_proj.weight,
        "ff.up_proj.weight": theirs.mlp.up_proj.weight, "ff.down_proj.weight": theirs.mlp.down_proj.weight,
        "ff_gate": theirs.alpha_dense}.items()})
    x, visual = torch.randn(2, t, dim), torch.randn(2, n_images * per_image, vision_dim)
    loc = interleaved_locations(2, t, n_images, g)
    mask = masks.media(loc, n_images, per_image)  # (B, T, M) True = may attend
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)[:, None]
    gate = mask.any(-1).long()  # Idefics: zero the output of text that sees no image
    want = theirs(x, image_hidden_states=visual, image_attention_mask=additive, cross_attention_gate=gate)
    want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(ours(x, visual, mask), want, atol=1e-5, rtol=1e-5)
