"""BLIP (chapter 06): MED's modes and sharing, masks, training subsets, captioning, CapFilt, data."""
import pytest
import torch

from minivlm.data import ShapesWorld
from minivlm.data.pairs import check_pair_set, image_text_pairs, merge_pair_sets, pair_batches
from minivlm.eval import caption_references, true_caption_rate
from minivlm.losses import lm_loss
from minivlm.models.blip import BLIP, BLIPConfig, BLIPPretrainer, capfilt, filter_scores, med_masks, pretrain_step
from minivlm.nn.blocks import Block
from minivlm.train import fit

TINY = dict(image_size=16, patch_size=8, dim=32, vision_depth=1, text_depth=2, heads=2, embed_dim=16, queue_size=8,
            max_text_len=16)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return BLIP(BLIPConfig(**{**TINY, **kw})).eval()


def inputs(model, b=2, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 100, (b, t), generator=g)
    images = torch.rand(b, 3, 16, 16, generator=g)
    with torch.no_grad():
        image_tokens, _ = model.encode_image(images)
    return ids, images, image_tokens


def run_modes(model, ids, image_tokens, mask=None):
    with torch.no_grad():
        return {m: model.text_forward(ids, mask, m, image_tokens) for m in ("text", "encoder", "decoder")}


@pytest.mark.parametrize("part, changes", [
    ("attn_dec", {"decoder"}), ("norm1_dec", {"decoder"}), ("attn", {"text", "encoder"}),
    ("cross_attn", {"encoder", "decoder"}), ("mlp", {"text", "encoder", "decoder"}),
])
def test_encoder_and_decoder_share_everything_but_self_attention(part, changes):
    model = tiny()
    ids, _, image_tokens = inputs(model)
    before = run_modes(model, ids, image_tokens)
    with torch.no_grad():
        for p in getattr(model.blocks[1], part).parameters():
            p.add_(0.3)
    after = run_modes(model, ids, image_tokens)
    assert {m for m in before if not torch.equal(before[m], after[m])} == changes


def test_text_block_parameters_are_a_cross_attention_block_plus_one_self_attention():
    model = tiny()
    c = model.config
    reference = Block(c.dim, c.heads, cross_attention=True, context_dim=c.vision_dim)
    extra = sum(p.numel() for p in model.blocks[0].attn_dec.parameters()) + 2 * c.dim
    assert sum(p.numel() for p in model.blocks[0].parameters()) == sum(p.numel() for p in reference.parameters()) + extra


def test_decoder_is_causal_encoder_is_not_and_text_mode_ignores_the_image():
    model = tiny()
    ids, _, image_tokens = inputs(model, t=7)
    changed = ids.clone()
    changed[:, 4:] = (changed[:, 4:] + 7) % 100
    a, b = run_modes(model, ids, image_tokens), run_modes(model, changed, image_tokens)
    assert torch.allclose(a["decoder"][:, :4], b["decoder"][:, :4], atol=1e-6)
    assert not torch.allclose(a["encoder"][:, :4], b["encoder"][:, :4], atol=1e-4)
    other = run_modes(model, ids, image_tokens.flip(0))
    assert torch.equal(a["text"], other["text"])
    assert not torch.allclose(a["encoder"], other["encoder"]) and not torch.allclose(a["decoder"], other["decoder"])


def test_padding_never_changes_real_positions():
    model = tiny()
    ids, _, image_tokens = inputs(model, t=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    changed = ids.clone()
    changed[0, 4:] = 3
    for mode in ("text", "encoder", "decoder"):
        with torch.no_grad():
            a = model.text_forward(ids, mask, mode, image_tokens)
            b = model.text_forward(changed, mask, mode, image_tokens)
        assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6), mode


def test_forward_runs_the_named_mode_from_its_own_first_token():
    model = tiny()
    ids, images, image_tokens = inputs(model, t=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    with torch.no_grad():
        for mode in ("text", "encoder", "decoder"):
            want = model.text_forward(model.with_first_token(ids, mode), mask, mode, image_tokens)
            assert torch.equal(model(images, ids, mode, mask), want), mode
            assert not torch.allclose(model(images, ids, mode, mask), model.text_forward(ids, mask, mode, image_tokens))
        assert torch.equal(model(None, ids, "text", mask), model(images, ids, "text", mask))  # text ignores images
        captions = ["a red circle .", "a blue square and a green star ."]
        caption_ids, caption_mask = model.tokenize(captions)
        want = model.text_forward(model.with_first_token(caption_ids, "decoder"), caption_mask, "decoder", image_tokens)
        assert torch.equal(model(images, captions, "decoder"), want)
    with pytest.raises(ValueError, match="mode 'encoder' cross-attends to the image: pass images"):
        model(None, ids, "encoder")
    with pytest.raises(ValueError, match="batch sizes must match, got images=1, texts=2"):
        model(images[:1], ids, "decoder")
    with pytest.raises(ValueError, match="mode must be one of"):
        model(images, ids, "fusion")


def test_med_masks_values():
    valid = torch.tensor([[True, True, True, False]])
    s_text, c_text = med_masks(valid, "text", 5)
    s_enc, c_enc = med_masks(valid, "encoder", 5)
    s_dec, c_dec = med_masks(valid, "decoder", 5)
    assert c_text is None and c_enc.shape == c_dec.shape == (1, 4, 5) and c_enc.all()
    assert s_text.shape == (1, 4, 4) and torch.equal(s_text, s_enc)
    assert s_enc[0].tolist() == [[True, True, True, False]] * 4
    expected = torch.tril(torch.ones(4, 4, dtype=torch.bool)) & valid[0]
    assert torch.equal(s_dec[0], expected)
    with pytest.raises(ValueError, match="mode must be one of"):
        med_masks(valid, "fusion", 5)


@pytest.mark.parametrize("call, match", [
    (lambda m, ids, it: m.text_forward(ids, None, "fusion", it), "mode must be one of"),
    (lambda m, ids, it: m.text_forward(ids, None, "encoder"), "pass image_tokens"),
    (lambda m, ids, it: m.text_forward(ids, None, "decoder", it[:, :, :8]), "image_tokens must be"),
    (lambda m, ids, it: m.text_forward(ids, None, "decoder", it[:1]), "image_tokens must be"),
    (lambda m, ids, it: m.text_forward(ids + 1000, None, "text"), "token ids must lie in"),
    (lambda m, ids, it: m.text_forward(torch.ones(2, 17, dtype=torch.long), None, "text"), "max_text_len=16"),
    (lambda m, ids, it: m.text_forward(ids, torch.ones(2, 3, dtype=torch.bool), "text"), "attention_mask must have"),
    (lambda m, ids, it: m.encode_image(torch.rand(2, 3, 32, 32)), "images"),
    (lambda m, ids, it: m.caption(torch.rand(1, 3, 16, 16), max_len=17), "max_text_len=16"),
    (lambda m, ids, it: m.caption(torch.rand(1, 3, 16, 16), num_beams=0), "num_beams"),
    (lambda m, ids, it: m.caption(torch.rand(1, 3, 16, 16), do_sample=True, top_p=0.0), "top_p"),
    (lambda m, ids, it: m.caption(torch.rand(1, 3, 16, 16), do_sample=True, temperature=0.0), "temperature"),
])
def test_bad_input_is_named(call, match):
    model = tiny()
    ids, _, image_tokens = inputs(model)
    with pytest.raises(ValueError, match=match):
        call(model, ids, image_tokens)


@pytest.mark.parametrize("kw, error, match", [
    (dict(vision_dim=30, vision_heads=4), ValueError, "vision_dim=30"),
    (dict(label_smoothing=1.0), ValueError, "label_smoothing"),
    (dict(text_norm_first=1), TypeError, "text_norm_first"),
    (dict(enc_id=10_000), ValueError, "enc_id"),
])
def test_bad_config_is_named(kw, error, match):
    with pytest.raises(error, match=match):
        BLIPConfig(**{**TINY, **kw})


def test_first_token_and_tied_lm_head():
    model = tiny()
    ids = torch.tensor([[1, 50, 51, 2]])
    dec = model.with_first_token(ids, "decoder")
    assert dec.tolist() == [[model.config.dec_id, 50, 51, 2]] and ids[0, 0].item() == 1
    assert model.with_first_token(ids, "encoder")[0, 0].item() == model.config.enc_id
    assert not any("lm" in k and k.endswith("weight") and v.shape[0] == model.config.vocab_size
                   for k, v in model.state_dict().items())
    x = torch.randn(1, 3, model.config.dim)
    before = model.lm_logits(x)
    with torch.no_grad():
        model.token_embedding.weight[7] += 1.0
    after = model.lm_logits(x)
    assert not torch.allclose(before[..., 7], after[..., 7]) and torch.allclose(before[..., 8], after[..., 8])


def batch_of(model, n=4, seed=3):
    data = image_text_pairs(8, noise=0.0, seed=seed, image_size=16)
    return pair_batches(data, n, seed=0, max_text_len=model.config.max_text_len)


def grads(model, losses):
    trainer = BLIPPretrainer(model, losses=losses).train()
    out = pretrain_step(trainer, batch_of(model)(0))
    out["loss"].backward()
    return out, {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_loss_subsets_train_only_their_parts():
    out, touched = grads(tiny(), ("lm",))
    assert set(out) == {"loss", "lm"}
    assert not any(n.startswith(("itm_head", "image_projection", "text_projection")) or
                   (n.startswith("blocks.") and ".attn." in n) for n in touched)
    assert any("attn_dec" in n for n in touched) and any(n.startswith("lm_") for n in touched)
    out, touched = grads(tiny(), ("itc", "itm"))
    assert {"itc", "itm", "itm_acc"} <= set(out) and "lm" not in out
    assert not any("attn_dec" in n or n.startswith("lm_") for n in touched)
    model = tiny()
    trainer = BLIPPretrainer(model).train()
    queue = trainer.text_queue.features.clone()
    out = pretrain_step(trainer, batch_of(model)(0))
    assert torch.allclose(out["loss"], out["itc"] + out["itm"] + out["lm"])
    assert int(trainer.step) == 1 and not torch.equal(queue, trainer.text_queue.features)
    trainer.eval()
    with torch.no_grad():
        pretrain_step(trainer, batch_of(model)(1))
    assert int(trainer.step) == 1


def test_trainer_checks_its_arguments():
    with pytest.raises(ValueError, match="losses must be"):
        BLIPPretrainer(tiny(), losses=("mlm",))
    with pytest.raises(TypeError, match="losses must be a list of strings, got one str 'lm'"):  # not 'l', 'm'
        BLIPPretrainer(tiny(), losses="lm")
    with pytest.raises(TypeError, match="model must be a BLIP"):
        BLIPPretrainer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BLIPPretrainer"):
        pretrain_step(torch.nn.Linear(2, 2), {})


def test_overfits_one_caption_and_decodes_it_greedy_and_beam():
    model = tiny().train()
    data = image_text_pairs(4, noise=0.0, seed=5, image_size=16)
    data["captions"] = ["a red star."] * 4
    trainer = BLIPPretrainer(model, losses=("lm",))
    fit(trainer, pretrain_step, pair_batches(data, 4, seed=0, max_text_len=16), 60, lr=1e-2, device="cpu",
        progress=False)
    model.eval()
    assert model.caption(data["images"]) == ["a red star."] * 4
    assert model.caption(data["images"], num_beams=3) == ["a red star."] * 4
    out = model.caption(data["images"], do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert len(out) == 4 and all(isinstance(c, str) for c in out)


def test_captions_fit_max_len_when_tokenised_again():
    model = tiny()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for max_len in (3, 6):
        captions = model.caption(images, max_len=max_len, do_sample=True, generator=torch.Generator().manual_seed(1))
        ids, _ = model.tokenize(captions)
        assert ids.shape[1] <= max_len
    assert model.caption(images) == model.caption(images)


def test_pair_data():
    data = image_text_pairs(400, noise=0.3, seed=0, image_size=16)
    assert data["images"].shape == (400, 3, 16, 16) and len(data["captions"]) == 400
    assert abs(1 - data["clean"].float().mean().item() - 0.3) < 0.07
    batches = pair_batches(data, 16, seed=2)
    a, b = batches(5), batches(5)
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["images"], b["images"])
    assert not torch.equal(a["ids"], batches(6)["ids"]) and a["positives"].diagonal().all()
    dup = {"images": data["images"][:2], "scenes": data["scenes"][:2], "captions": ["x.", "y.", "z."],
           "image_ids": torch.tensor([0, 0, 1])}
    p = pair_batches(dup, 8, seed=0)(0)["positives"]
    picks = [i for i in range(8)]
    assert all(p[i, j] for i in picks for j in picks if torch.equal(p[i], p[j]))  # same image: positives
    merged = merge_pair_sets(dup, {**dup, "captions": [], "image_ids": torch.tensor([], dtype=torch.long)}, dup)
    assert merged["image_ids"].tolist() == [0, 0, 1, 4, 4, 5] and len(merged["images"]) == 6
    with pytest.raises(ValueError, match="image_ids must lie"):
        check_pair_set({**dup, "image_ids": torch.tensor([0, 0, 2])})
    with pytest.raises(ValueError, match="one image id per caption"):
        check_pair_set({**dup, "image_ids": torch.tensor([0, 1])})


def test_capfilt_keeps_what_the_filter_believes(monkeypatch):
    web = image_text_pairs(4, noise=0.5, seed=1, image_size=16)
    captioner, filt = tiny(), tiny(1)
    monkeypatch.setattr(captioner, "caption", lambda images, **kw: ["s0.", "s1.", "s2.", "s3."])
    probs = {tuple(web["captions"]): torch.tensor([0.9, 0.2, 0.6, 0.4]),
             ("s0.", "s1.", "s2.", "s3."): torch.tensor([0.1, 0.8, 0.7, 0.5])}
    monkeypatch.setattr(filt, "match_probability", lambda images, caps, bs=256: probs[tuple(caps)])
    out = capfilt(captioner, filt, web)
    assert out["web_kept"].tolist() == [True, False, True, False]
    assert out["synthetic_kept"].tolist() == [False, True, True, False]
    assert out["data"]["captions"] == [web["captions"][0], web["captions"][2], "s1.", "s2."]
    assert out["data"]["image_ids"].tolist() == [0, 2, 1, 2]
    with pytest.raises(ValueError, match="one caption per image"):
        capfilt(captioner, filt, {**web, "captions": web["captions"] * 2, "image_ids": torch.arange(4).repeat(2)})


def test_filter_scores_by_hand():
    kept = torch.tensor([True, False, False, True, False, True])
    clean = torch.tensor([True, False, True, False, False, True])
    s = filter_scores(kept, clean)  # removed 1, 2, 4; noisy 1, 3, 4
    assert s["removed"] == 3 and s["noisy"] == 3
    assert s["precision"].value == pytest.approx(2 / 3) and s["recall"].value == pytest.approx(2 / 3)
    assert filter_scores(torch.ones(3, dtype=torch.bool), torch.tensor([True, False, True]))["precision"] is None


def test_truth_of_captions_and_references():
    world = ShapesWorld(seed=3)
    a, b = world.sample(2, n_objects=1)
    assert true_caption_rate([ShapesWorld.captions(a)[2], ShapesWorld.captions(b)[0]], [a, a]) == [True, False]
    refs = caption_references([a, b])
    assert len(refs[0]) == 6 and refs[1] == ShapesWorld.captions(b)


def test_lm_loss_is_the_shifted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    by_hand = torch.stack([-logits[b, t].log_softmax(-1)[ids[b, t + 1]] for b in range(2) for t in range(4)
                           if mask[b, t + 1]]).mean()
    assert torch.allclose(lm_loss(logits, ids, mask), by_hand)
    smooth = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].masked_fill(~mask[:, 1:], -100)
                                               .reshape(-1), label_smoothing=0.1)
    assert torch.allclose(lm_loss(logits, ids, mask, label_smoothing=0.1), smooth)
    lm_loss(logits, ids, mask).backward()
    assert logits.grad[1, 2:].abs().sum() == 0 and logits.grad[:, -1].abs().sum() == 0 and logits.grad[1, 1].abs().sum() > 0
    for args, match in (((logits, ids[:, :4]), "must agree"), ((logits[:, :1], ids[:, :1]), "at least 2"),
                        ((logits, ids, None, 1.0), "label_smoothing"), ((logits, ids, mask[:, :3]), "attention_mask")):
        with pytest.raises(ValueError, match=match):
            lm_loss(*args)
