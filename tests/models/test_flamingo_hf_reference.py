"""The ungated cross-attention decoder (VisualGPT / VC-GPT style, chapter 11's first model: our
GPT with a `GatedCrossAttentionBlock(gated=False, feedforward=False)` inside every layer, after
the self-attention) against transformers' VisionEncoderDecoderModel: a tiny ViT encoder and a
GPT-2 decoder with `add_cross_attention=True`, every parameter perturbed, logits within 1e-5."""
from __future__ import annotations

import pytest
import torch

from minivlm.models.gpt import GPT
from minivlm.nn.gated import GatedCrossAttentionBlock

transformers = pytest.importorskip("transformers")


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def cross_blocks_from_gpt2(decoder, dim: int, heads: int) -> list[GatedCrossAttentionBlock]:
    """GPT-2's cross-attention sub-layers (ln_cross_attn, q_attn, c_attn = [k ; v], c_proj: Conv1D
    (in, out) matrices) as our ungated blocks."""
    blocks = []
    for h in decoder.transformer.h:
        ca = h.crossattention
        block = GatedCrossAttentionBlock(dim, heads, gated=False, feedforward=False, bias=True,
                                         eps=decoder.config.layer_norm_epsilon)
        kv_w, kv_b = ca.c_attn.weight.t(), ca.c_attn.bias  # (2·dim, dim), (2·dim,)
        block.load_state_dict({k: v.detach().clone() for k, v in {
            "norm_cross.weight": h.ln_cross_attn.weight, "norm_cross.bias": h.ln_cross_attn.bias,
            "cross_attn.q_proj.weight": ca.q_attn.weight.t(), "cross_attn.q_proj.bias": ca.q_attn.bias,
            "cross_attn.k_proj.weight": kv_w[:dim], "cross_attn.k_proj.bias": kv_b[:dim],
            "cross_attn.v_proj.weight": kv_w[dim:], "cross_attn.v_proj.bias": kv_b[dim:],
            "cross_attn.out_proj.weight": ca.c_proj.weight.t(), "cross_attn.out_proj.bias": ca.c_proj.bias}.items()})
        blocks.append(block)
    return blocks


def test_ungated_cross_attention_decoder_equals_vision_encoder_decoder():
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    dim, heads = 48, 4
    encoder = ViTModel(ViTConfig(hidden_size=dim, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4), add_pooling_layer=False)
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=90, n_positions=32, n_embd=dim, n_layer=2, n_head=heads,
                                         add_cross_attention=True, is_decoder=True, bos_token_id=1, eos_token_id=2))
    ved = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    perturb(ved)
    assert not hasattr(ved, "enc_to_dec_proj") or ved.enc_to_dec_proj is None  # equal widths: no projection

    llm = GPT.from_hf(decoder)
    blocks = cross_blocks_from_gpt2(decoder, dim, heads)
    pixels = torch.rand(3, 3, 16, 16)
    ids = torch.randint(3, 90, (3, 11))
    with torch.no_grad():
        want = ved(pixel_values=pixels, decoder_input_ids=ids).logits
        visual = encoder(pixel_values=pixels).last_hidden_state  # (B, 1 + N, dim): what the decoder reads
        hooks = {i: ("after_attention", lambda x, b=b: b(x, visual)) for i, b in enumerate(blocks)}
        got = llm(ids, hooks=hooks)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and the hooks are what makes the difference: without them it is GPT-2 alone, which differs
    with torch.no_grad():
        assert not torch.allclose(llm(ids), want, atol=1e-3)
