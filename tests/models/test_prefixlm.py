"""PrefixLM (chapter 07): the prefix-LM mask over [patches ; words], suffix-only loss, captioning, bad input."""
import pytest
import torch

from minivlm.data.pairs import caption_batches
from minivlm.models.prefixlm import PrefixLM, PrefixLMConfig, prefixlm_step, random_prefix_lengths
from minivlm.train import fit

TINY = dict(image_size=16, patch_size=8, dim=32, depth=2, heads=2, max_text_len=16)


def tiny(seed=0):
    torch.manual_seed(seed)
    return PrefixLM(PrefixLMConfig(**TINY)).eval()


def batch(n=3, seed=0):
    return caption_batches(n, seed=seed, image_size=16, max_text_len=16)(0)


def test_prefix_is_bidirectional_and_suffix_causal():
    model = tiny()
    b = batch()
    ids, mask = b["ids"], b["attention_mask"]
    prefix = torch.tensor([3, 3, 3])
    base = model(b["images"], ids, mask, prefix)
    changed = ids.clone()
    changed[:, 2] = (changed[:, 2] + 3) % 90 + 10  # a prefix word
    out = model(b["images"], changed, mask, prefix)
    assert not torch.allclose(out[:, 1], base[:, 1], atol=1e-5), "prefix positions see the whole prefix"
    later = ids.clone()
    later[:, 4] = (later[:, 4] + 3) % 90 + 10  # a suffix word
    out = model(b["images"], later, mask, prefix)
    assert torch.allclose(out[:, :4], base[:, :4], atol=1e-6), "nothing before a suffix word may see it"
    m = model.attention_mask(mask, prefix)
    n = model.num_patches
    assert m[0, :n + 3, :n + 3].all() and not m[0, n + 3, n + 4]


def test_loss_counts_only_the_suffix():
    model = tiny().train()
    b = batch()
    b["prefix_len"] = torch.tensor([2, 2, 2])
    base = prefixlm_step(model, b)["loss"]
    b2 = dict(b)
    logits = model(b["images"], b["ids"], b["attention_mask"], b["prefix_len"])
    from minivlm.losses import lm_loss
    in_suffix = torch.arange(b["ids"].shape[1])[None] >= 2
    assert torch.allclose(base, lm_loss(logits, b["ids"], b["attention_mask"] & in_suffix))
    b2["prefix_len"] = torch.tensor([1, 1, 1])
    assert not torch.allclose(prefixlm_step(model, b2)["loss"], base)


def test_random_prefix_lengths_stay_in_range():
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8, [True, True] + [False] * 6])
    draws = torch.stack([random_prefix_lengths(mask, torch.Generator().manual_seed(s)) for s in range(200)])
    assert draws.min() >= 1 and (draws[:, 0] <= 4).all() and (draws[:, 1] <= 7).all() and (draws[:, 2] == 1).all()
    assert set(draws[:, 1].tolist()) == {1, 2, 3, 4, 5, 6, 7}
    with pytest.raises(ValueError, match="at least 2 tokens"):
        random_prefix_lengths(torch.tensor([[True, False]]))


def test_learns_and_captions():
    model = tiny().train()
    fixed = batch(8)
    history = fit(model, prefixlm_step, lambda step: fixed, 40, lr=3e-3, device="cpu", progress=False)
    assert history.last("loss", 5) < 0.6 * history.losses["loss"][0]
    out = model.eval().caption(fixed["images"][:2], max_len=8)
    assert len(out) == 2 and all(len(model.tokenize([c])[0][0]) <= 8 for c in out)


def test_bad_input():
    model = tiny()
    b = batch(2)
    with pytest.raises(ValueError, match="prefix_len must hold 2 values"):
        model(b["images"], b["ids"], b["attention_mask"], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prefix_len must hold 2 values"):
        model(b["images"], b["ids"], b["attention_mask"], 99)
    with pytest.raises(ValueError, match="batch sizes must match"):
        model(b["images"][:1], b["ids"], b["attention_mask"])
    with pytest.raises(TypeError, match="prefixlm_step trains a PrefixLM"):
        prefixlm_step(torch.nn.Linear(2, 2), b)
