"""Our CLIP against Hugging Face transformers' CLIPModel (an independent implementation).

A tiny randomly initialised CLIPModel is built from a config (nothing is downloaded), its
weights are copied with `CLIP.from_hf`, and both must give the same embeddings and logits.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from minivlm.models import CLIP  # noqa: E402

VOCAB, CONTEXT, EOS = 100, 16, 7


def hf_clip(act="quick_gelu", eos=EOS, seed=0, **vision_kw):
    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  hidden_act=act, layer_norm_eps=1e-5)
    text = dict(common, vocab_size=VOCAB, max_position_embeddings=CONTEXT, eos_token_id=eos, pad_token_id=0,
                bos_token_id=1)
    vision = dict(common, image_size=32, patch_size=8, num_channels=3)
    vision.update(vision_kw)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # random LayerNorm affine params and a non-default temperature, so a
        for name, p in model.named_parameters():  # swapped or missing copy cannot pass unnoticed
            if "layer_norm" in name or "layrnorm" in name or "final_layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(3.0)
    return model


def ids_with_eos(b, t, eos_positions, eos=EOS, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, VOCAB, (b, t), generator=g)  # ≥ 8: no accidental eos (7) before the real one
    for i, p in enumerate(eos_positions):
        ids[i, p] = eos
    return ids


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_embeddings_and_logits_match_transformers(act):
    hf = hf_clip(act)
    ours = CLIP.from_hf(hf).eval()
    images = torch.rand(5, 3, 32, 32)
    mean = torch.tensor(ours.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ours.config.image_std).view(1, 3, 1, 1)
    pixel_values = (images - mean) / std  # what HF's image processor would hand its model
    ids = ids_with_eos(5, 12, [3, 11, 6, 0, 8])
    ids[1, 4] = VOCAB - 1  # a high id before the eos: pooling must still pick the first eos
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # row 0 is padded after its eos
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=pixel_values, attention_mask=mask)
        img, txt, scale = ours(images, ids, mask.bool())
    torch.testing.assert_close(img, out.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(txt, out.text_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(scale * img @ txt.t(), out.logits_per_image, rtol=0, atol=1e-4)
    assert scale.item() == pytest.approx(torch.tensor(3.0).exp().item(), rel=1e-6)
    # the comparison is meaningful: embeddings differ across inputs
    assert (img @ img.t()).min() < 0.99 and (txt @ txt.t()).min() < 0.99


def test_legacy_eos_rule():
    """A config with eos_token_id == 2 makes HF pool at the highest id (OpenAI's end-of-text is the
    last id of its vocabulary); from_hf pools at the first id vocab_size - 1, which agrees."""
    hf = hf_clip(eos=2)
    ours = CLIP.from_hf(hf).eval()
    assert ours.config.eos_id == VOCAB - 1
    ids = ids_with_eos(3, 10, [4, 9, 2], eos=VOCAB - 1, seed=3).clamp(max=VOCAB - 2)
    for i, p in enumerate([4, 9, 2]):
        ids[i, p] = VOCAB - 1
    with torch.no_grad():
        theirs = hf.get_text_features(input_ids=ids)
        theirs = theirs.pooler_output if hasattr(theirs, "pooler_output") else theirs
        torch.testing.assert_close(ours.encode_text(ids), torch.nn.functional.normalize(theirs, dim=-1),
                                   rtol=0, atol=1e-5)


def test_unrepresentable_configs_raise():
    hf = hf_clip()
    hf.config.vision_config.hidden_act = "silu"
    hf.config.text_config.hidden_act = "silu"
    with pytest.raises(ValueError, match="hidden_act"):
        CLIP.from_hf(hf)
    hf = hf_clip()
    hf.config.text_config.intermediate_size = 96
    with pytest.raises(ValueError, match="MLP ratio"):
        CLIP.from_hf(hf)


def test_benchmark_builds_the_same_architecture():
    """bench_clip's transformers model has our configuration: from_hf reads back the same
    architecture, and the parameter counts agree. (Pooling differs: the course's eos id is 2,
    which transformers reads as its legacy "pool at the highest id" rule; the cost is the same.)"""
    from minivlm.benchmarks import bench_clip, hf_clip_like
    from minivlm.models import CLIPConfig

    cfg = CLIPConfig(vision_dim=32, vision_depth=1, text_dim=32, text_depth=1, embed_dim=16, context_length=32,
                     patch_size=8, act="gelu")
    hf, _ = hf_clip_like(cfg)
    ours = CLIP.from_hf(hf.eval(), image_mean=cfg.image_mean, image_std=cfg.image_std)
    for key in ("vision_dim", "vision_depth", "text_dim", "text_depth", "embed_dim", "context_length", "patch_size",
                "act", "vocab_size", "mlp_ratio", "eps"):
        assert getattr(ours.config, key) == getattr(cfg, key), key
    r = bench_clip(batch_size=4, repeats=1, warmup=0, vision_dim=32, vision_depth=1, text_dim=32, text_depth=1,
                   embed_dim=16, patch_size=8)
    assert r["params_ours"] == r["params_theirs"] > 0
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"],
                                                                                       rel=2e-3)  # both rounded
