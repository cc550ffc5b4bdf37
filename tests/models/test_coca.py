"""CoCa (chapter 07): one text pass gives both losses, the decoder's halves, the appended CLS, bad input."""
import pytest
import torch

from minivlm.data.pairs import caption_batches
from minivlm.models.coca import CoCa, CoCaConfig, coca_step
from minivlm.train import fit

TINY = dict(image_size=16, patch_size=8, dim=32, vision_depth=1, unimodal_depth=1, multimodal_depth=1, heads=2,
            embed_dim=16, caption_queries=4, max_text_len=16)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return CoCa(CoCaConfig(**{**TINY, **kw})).eval()


def batch(n=4, seed=0):
    return caption_batches(n, seed=seed, image_size=16, max_text_len=16)(0)


def test_one_text_pass_per_step_gives_both_losses():
    model = tiny().train()
    calls = []
    model.unimodal.register_forward_hook(lambda *a: calls.append("unimodal"))
    model.multimodal.register_forward_hook(lambda *a: calls.append("multimodal"))
    out = coca_step(model, batch())
    assert calls == ["unimodal", "multimodal"]
    c = model.config
    assert torch.allclose(out["loss"], c.contrastive_weight * out["contrastive"] + c.caption_weight * out["caption"])


def test_words_are_causal_and_the_appended_cls_sees_every_real_word():
    model = tiny()
    b = batch(2)
    ids, mask = b["ids"], b["attention_mask"]
    _, queries = model.image_features(b["images"])
    feat, logits = model.decode(ids, mask, queries)
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 5) % 100 + 10
    feat2, logits2 = model.decode(changed, mask, queries)
    assert torch.allclose(logits[:, :3], logits2[:, :3], atol=1e-6) and not torch.allclose(logits[:, 3], logits2[:, 3])
    assert not torch.allclose(feat, feat2, atol=1e-5), "the CLS embedding must depend on every real word"
    padded = ids.clone()
    padded[~mask] = 7
    assert torch.allclose(model.decode(padded, mask)[0], feat, atol=1e-6), "padding must not reach the CLS"


def test_text_embedding_ignores_the_image_and_captions_do_not():
    model = tiny()
    b = batch(2)
    _, q = model.image_features(b["images"])
    f1, l1 = model.decode(b["ids"], b["attention_mask"], q)
    f2, l2 = model.decode(b["ids"], b["attention_mask"], q.flip(0))
    assert torch.equal(f1, f2) and not torch.allclose(l1, l2)
    feat, queries = model.image_features(b["images"])
    assert feat.shape == (2, 16) and queries.shape == (2, 4, 32)
    assert torch.allclose(feat.norm(dim=-1), torch.ones(2))


def test_training_lowers_both_losses():
    model = tiny().train()
    fixed = batch(8)
    history = fit(model, coca_step, lambda step: fixed, 40, lr=3e-3, device="cpu", progress=False)
    assert history.last("caption", 5) < 0.7 * history.losses["caption"][0]
    assert history.last("contrastive", 5) < history.losses["contrastive"][0]


def test_caption_runs_and_respects_max_len():
    model = tiny()
    images = batch(3)["images"]
    out = model.caption(images, max_len=5)
    assert len(out) == 3 and all(len(model.tokenize([c])[0][0]) <= 5 for c in out)
    assert model.caption(images, num_beams=2, max_len=6) == model.caption(images, num_beams=2, max_len=6)
    with pytest.raises(ValueError, match="max_text_len=16"):
        model.caption(images, max_len=17)


@pytest.mark.parametrize("kw, match", [
    (dict(caption_queries=0), "caption_queries"),
    (dict(contrastive_weight=-1.0), "contrastive_weight"),
    (dict(caption_weight=-0.5), "caption_weight"),
    (dict(contrastive_weight=0.0, caption_weight=0.0), "both 0"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        CoCaConfig(**{**TINY, **kw})


def test_bad_input():
    model = tiny()
    b = batch(2)
    with pytest.raises(ValueError, match="image_queries must be"):
        model.decode(b["ids"], b["attention_mask"], torch.randn(3, 4, 32))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model.decode(b["ids"], b["attention_mask"][:, :2])
    with pytest.raises(TypeError, match="coca_step trains a CoCa"):
        coca_step(torch.nn.Linear(2, 2), b)
    with pytest.raises(ValueError, match="batch must be a dict"):
        coca_step(model, {"images": b["images"]})
