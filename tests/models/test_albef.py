"""ALBEF (chapter 04): the three encoders, the pretraining step's momentum model, queues and
losses against their formulas, the training data, and ITC retrieval re-ranked by ITM."""
import pytest
import torch
import torch.nn.functional as F
from negative_recorder import Recorder

from minivlm.data import ShapesBench, ShapesWorld
from minivlm.data.masking import IGNORE_INDEX
from minivlm.data.pairs import pretrain_batches
from minivlm.data.tokenizer import Tokenizer
from minivlm.eval import evaluate_hard_itm, evaluate_retrieval, itc_similarity, retrieve
from minivlm.losses import soft_cross_entropy
from minivlm.models.albef import ALBEF, ALBEFConfig, ALBEFPretrainer, pretrain_step

TOK = Tokenizer.from_world()
TEXTS = ["a red circle.", "two shapes: a blue square and a green star.", "a small white cross above a cyan diamond"]
B = 8  # the pretraining batch; TINY's queue holds 4 of them


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (see tests/models/test_vilt.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TINY = dict(dim=32, heads=2, vision_depth=1, text_depth=1, fusion_depth=1, embed_dim=16, queue_size=32)


def tiny(**kw) -> ALBEF:
    torch.manual_seed(0)
    return ALBEF(ALBEFConfig(**{**TINY, **kw}))


def trainer(perturb: bool = True, **kw) -> ALBEFPretrainer:
    """A trainer whose online model has drifted from its momentum copy (as after some training),
    so that EMA formulas and "which model's features" checks can tell the two apart."""
    tr = ALBEFPretrainer(tiny(**kw))
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in tr.model.parameters():
                if p.ndim:  # all but the temperature
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return tr.train()


def images(b: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def batch():
    return pretrain_batches(batch_size=B, seed=0)(0)


# ----------------------------------------------------------------------------- config


def test_config_defaults_come_from_the_tokenizer():
    c = ALBEFConfig()
    assert c.vocab_size == len(TOK) and c.pad_id == TOK.pad_id and c.mask_id == TOK.mask_id
    assert ALBEFConfig(alpha_warmup=0, alpha=0, momentum=1).alpha_warmup == 0


@pytest.mark.parametrize("name", ["dim", "heads", "vision_depth", "text_depth", "fusion_depth", "embed_dim",
                                  "queue_size", "patch_size", "max_text_len"])
@pytest.mark.parametrize("value", [0, -2, True, 2.0])
def test_config_ints_must_be_positive_ints(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got {value!r}"):
        ALBEFConfig(**{**TINY, name: value})


@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(dim=30, heads=4), ValueError, r"dim=30 must be divisible by heads=4"),
        (dict(image_size=30), ValueError, r"image_size=30 .*patch_size=8"),
        (dict(alpha=1.5), ValueError, r"alpha .*\[0, 1\], got 1\.5"),
        (dict(alpha=-0.1), ValueError, r"alpha .*\[0, 1\], got -0\.1"),
        (dict(momentum=1.01), ValueError, r"momentum must be a float in \[0, 1\].*1\.01"),
        (dict(momentum=-1), ValueError, r"momentum .*got -1"),
        (dict(alpha_warmup=-1), ValueError, r"alpha_warmup must be an int >= 0, got -1"),
        (dict(alpha_warmup=2.5), ValueError, r"alpha_warmup must be an int >= 0, got 2\.5"),
        (dict(temp=0.0), ValueError, r"temp .*got 0\.0"),
        (dict(distill=1), TypeError, r"distill must be True or False, got 1"),
        (dict(hard_negatives="yes"), TypeError, r"hard_negatives must be True or False"),
        (dict(pad_id=10_000), ValueError, r"pad_id must lie in \[0, 602\], got 10000"),
        (dict(act="swish"), ValueError, r"act must be one of .*'swish'"),
        (dict(max_text_len=2), ValueError, r"max_text_len must be >= 3.*got 2"),
        (dict(itc_targets="soft"), ValueError, r"itc_targets must be one of \('captions', 'one_hot'\), got 'soft'"),
        (dict(itc_only=1), TypeError, r"itc_only must be True or False, got 1"),
    ],
)
def test_config_errors_name_expected_and_actual(kw, err, match):
    with pytest.raises(err, match=match):
        ALBEFConfig(**{**TINY, **kw})


# ----------------------------------------------------------------------------- the encoders


def test_encode_image_tokens_and_unit_feature():
    m = tiny()
    imgs = images(3)
    tokens, feat = m.encode_image(imgs)
    assert tokens.shape == (3, 1 + 16, 32) and feat.shape == (3, 16)
    close(tokens, m.visual.forward_features((imgs - 0.5) / 0.5))  # normalised with mean = std = 0.5
    close(feat, F.normalize(m.image_projection(tokens[:, 0]), dim=-1))  # ITC on the [CLS] token
    close(feat.norm(dim=1), torch.ones(3))
    close(m.encode_image(imgs[1:2])[1], feat[1:2])  # each image on its own


def test_encode_text_strings_equal_ids():
    m = tiny()
    tokens, feat, mask = m.encode_text(TEXTS)
    ids, mask_tok = TOK(TEXTS, add_bos=True, add_eos=True)
    assert torch.equal(mask, mask_tok)
    assert tokens.shape == (3, ids.shape[1], 32) and feat.shape == (3, 16)
    t_ids, f_ids, _ = m.encode_text(ids, mask_tok)
    close(tokens, t_ids)
    close(feat, F.normalize(m.text_projection(tokens[:, 0]), dim=-1))  # the <bos> token plays [CLS]
    close(feat.norm(dim=1), torch.ones(3))


def test_fuse_shape_and_that_text_attends_to_the_image():
    m = tiny()
    imgs = images(3)
    fused = m(imgs, TEXTS)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    assert fused.shape == (3, ids.shape[1], 32)
    text_tokens, _, _ = m.encode_text(TEXTS)
    close(fused, m.fuse(text_tokens, mask, m.encode_image(imgs)[0]))
    other = m(images(3, seed=1), TEXTS)
    assert (other[:, 0] - fused[:, 0]).abs().max() > 1e-3  # the fused [CLS] depends on the image
    assert m.itm_logits(fused).shape == (3, 2)
    close(m.itm_logits(fused), m.itm_head(fused[:, 0]))


def test_padding_does_not_change_the_fused_first_token():
    m = tiny()
    imgs = images(3, seed=2)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    base = m.itm_logits(m(imgs, ids, mask))
    # 5 more positions, masked; filled with real words (not <pad>) so that only the mask can hide them
    extra = torch.randint(10, len(TOK), (3, 5), generator=torch.Generator().manual_seed(3))
    padded_ids = torch.cat([ids, extra], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    close(m.itm_logits(m(imgs, padded_ids, padded_mask)), base)
    # and a caption alone (no padding at all) scores as in the padded batch
    close(m.itm_logits(m(imgs[:1], TEXTS[:1])), base[:1])


def test_scale_is_the_learned_inverse_temperature_clamped():
    m = tiny(temp=0.07, max_scale=50.0)
    close(m.scale(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        m.log_scale.fill_(10.0)  # e^10 = 22,026
    assert m.scale().item() == pytest.approx(50.0)


def test_mlm_logits_use_the_tied_word_embeddings():
    m = tiny()
    fused = m(images(2), TEXTS[:2])
    logits = m.mlm_logits(fused)
    assert logits.shape == (2, fused.shape[1], len(TOK))
    x = m.mlm_norm(F.gelu(m.mlm_transform(fused)))
    close(logits, x @ m.text.token_embedding.weight.T + m.mlm_bias)


def test_cross_attention_maps():
    m = tiny(fusion_depth=2)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    out = m(images(3), ids, mask, need_weights=True)
    maps = m.cross_attention_maps()
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (3, 2, ids.shape[1], 1 + 16)  # (B, H, T text queries, 1 + N image keys)
        close(w.sum(-1), torch.ones(3, 2, ids.shape[1]))
    close(m(images(3), ids, mask), out)  # asking for the weights changes nothing


def test_match_probability_is_the_itm_softmax_in_any_batch_size():
    m = tiny()
    imgs = images(3)
    want = m.itm_logits(m(imgs, TEXTS)).softmax(1)[:, 1]
    close(m.match_probability(imgs, TEXTS), want)
    close(m.match_probability(imgs, TEXTS, batch_size=2), want)
    m.train()
    m.match_probability(imgs, TEXTS)
    assert m.training and torch.is_grad_enabled()  # mode and grad mode restored


# ----------------------------------------------------------------------------- bad input


def test_images_of_the_wrong_size_or_range():
    m = tiny()
    with pytest.raises(ValueError, match=r"images must have shape \(\?, 3, 32, 32\), got \(2, 3, 16, 16\)"):
        m.encode_image(images(2, size=16))
    with pytest.raises(ValueError, match=r"images must have shape \(\?, 3, 32, 32\)"):
        m.encode_image(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"images must lie in \[0\.0, 1\.0\], got values in \[0\.0\d*, 255\]"):
        m(images(3) * 255, TEXTS)
    with pytest.raises(ValueError, match=r"images must lie in \[0\.0, 1\.0\]"):
        m.match_probability(images(3) - 0.5, TEXTS)
    with pytest.raises(ValueError, match="images must have 4 dims"):
        m.encode_image(torch.rand(3, 32, 32))


def test_a_bare_string_is_a_type_error():
    m = tiny()
    with pytest.raises(TypeError, match="wrap it in a list"):
        m.encode_text("a red circle.")
    with pytest.raises(TypeError, match="wrap it in a list"):
        m(images(1), "a red circle.")
    with pytest.raises(TypeError, match="list of strings"):
        m.match_probability(images(1), "a red circle.")
    with pytest.raises(TypeError, match="list of strings"):
        itc_similarity(m, images(1), "a red circle.")
    with pytest.raises(TypeError, match="list of strings"):
        retrieve(m, images(1), "a red circle.")
    with pytest.raises(TypeError, match="list of strings"):
        m.encode_text(["a red circle.", 3])


def test_mismatched_batch_sizes():
    m = tiny()
    with pytest.raises(ValueError, match="batch sizes must match, got images=3, texts=2"):
        m(images(3), TEXTS[:2])
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    with pytest.raises(ValueError, match="batch sizes must match, got images=3, texts=2"):
        m(images(3), ids, mask)
    with pytest.raises(ValueError, match="batch sizes must match, got text_tokens=2, image_tokens=3"):
        m.fuse(m.encode_text(ids, mask)[0], mask, m.encode_image(images(3))[0])
    with pytest.raises(ValueError, match="need as many captions as images.*images=3, captions=2"):
        m.match_probability(images(3), TEXTS[:2])


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_rerank_k_must_be_a_positive_int(k):
    m = tiny()
    with pytest.raises(ValueError, match=rf"rerank_k must be an int >= 1 .*got {k!r}"):
        retrieve(m, images(3), TEXTS, rerank_k=k)
    with pytest.raises(ValueError, match="rerank_k"):
        evaluate_retrieval(m, {"images": images(3), "captions": TEXTS}, rerank_k=k)


def test_trainer_and_step_need_the_right_types():
    with pytest.raises(TypeError, match="model must be an ALBEF, got Linear"):
        ALBEFPretrainer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ALBEFPretrainer.*got ALBEF"):
        pretrain_step(tiny(), {})


def test_queue_size_not_a_multiple_of_the_batch(batch):
    tr = trainer(queue_size=30)
    with pytest.raises(ValueError, match=r"queue_size=30 must be a multiple of the batch size, got a batch of 8"):
        pretrain_step(tr, batch)
    assert int(tr.step) == 0


def state(tr: ALBEFPretrainer) -> dict:
    return {k: v.clone() for k, v in tr.state_dict().items()}


@pytest.mark.parametrize("keys", [("positives",), ("mlm_labels",), ("ids", "attention_mask", "mlm_ids", "mlm_labels")],
                         ids=["positives", "mlm_labels", "texts"])
def test_a_batch_whose_parts_disagree_on_B_is_rejected_before_any_update(batch, keys):
    """Images of 8 pairs but some other entry of 4: a clear ValueError, and a failed step must
    not have moved the momentum model, written the queues or counted a step."""
    tr = trainer()
    bad = dict(batch)
    for k in keys:
        bad[k] = batch[k][:4, :4] if k == "positives" else batch[k][:4]
    before = state(tr)
    with pytest.raises(Exception) as info:
        pretrain_step(tr, bad)
    after = tr.state_dict()
    changed = sorted({k.split(".")[0] for k in before if not torch.equal(before[k], after[k])})
    problems = []
    if not (isinstance(info.value, ValueError) and "batch" in str(info.value)):
        problems.append(f"raised {type(info.value).__name__}: {info.value}")
    if changed:
        problems.append(f"the rejected batch changed {changed}")
    assert not problems, problems


# ----------------------------------------------------------------------------- pretraining: the momentum model


def test_no_gradient_reaches_the_momentum_model(batch):
    tr = trainer()
    out = pretrain_step(tr, batch)
    assert set(out) >= {"loss", "itc", "itm", "mlm", "itm_acc", "alpha", "temp"}
    out["loss"].backward()
    for name, p in tr.momentum.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    for name, p in tr.model.named_parameters():  # every online parameter is trained
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the trainer's own parameters, the ones an optimizer gets, are the online model's only
    trainable = {id(p) for p in tr.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in tr.model.parameters()}


def test_momentum_weights_after_one_step_follow_the_ema_formula(batch):
    tr = trainer(momentum=0.7)
    opt = torch.optim.SGD(tr.model.parameters(), lr=1.0)
    old = {k: p.clone() for k, p in tr.momentum.named_parameters()}
    online_before = {k: p.detach().clone() for k, p in tr.model.named_parameters()}
    pretrain_step(tr, batch)["loss"].backward()
    opt.step()
    online_after = dict(tr.model.named_parameters())
    after_formula_differs = False
    for name, p in tr.momentum.named_parameters():
        close(p, 0.7 * old[name] + 0.3 * online_before[name], atol=1e-6)
        wrong = 0.7 * old[name] + 0.3 * online_after[name].detach()
        after_formula_differs |= bool((p - wrong).abs().max() > 1e-4)
    assert after_formula_differs  # the test can tell "before the optimizer step" from "after"


def test_queues_advance_by_b_and_hold_momentum_features(batch):
    tr = trainer()
    q_img, q_txt = tr.image_queue.features.clone(), tr.text_queue.features.clone()
    for step in range(5):  # 5 batches of 8 in a queue of 32: wraps around once
        p = int(tr.image_queue.ptr)
        assert p == int(tr.text_queue.ptr) == step * B % 32
        pretrain_step(tr, batch)
        assert int(tr.image_queue.ptr) == int(tr.text_queue.ptr) == (step + 1) * B % 32
        with torch.no_grad():  # the momentum model as it is now (it was updated before encoding)
            img_m = tr.momentum.encode_image(batch["images"])[1]
            txt_m = tr.momentum.encode_text(batch["ids"], batch["attention_mask"])[1]
            img_online = tr.model.encode_image(batch["images"])[1]
        close(tr.image_queue.features[p:p + B], img_m)
        close(tr.text_queue.features[p:p + B], txt_m)
        assert (tr.image_queue.features[p:p + B] - img_online).abs().max() > 1e-3  # not the online model's
        if step < 4:  # the rest of the ring untouched (still the initial random features)
            assert torch.equal(tr.image_queue.features[p + B:], q_img[p + B:])
            assert torch.equal(tr.text_queue.features[p + B:], q_txt[p + B:])


def test_step_counter_and_alpha_ramp(batch):
    tr = trainer(alpha=0.4, alpha_warmup=4)
    alphas = [pretrain_step(tr, batch)["alpha"] for _ in range(3)]
    assert int(tr.step) == 3
    assert alphas == pytest.approx([0.0, 0.1, 0.2])  # the α used by each step: before it is counted
    for k in range(10):
        tr.step.fill_(k)
        assert tr.alpha() == pytest.approx(0.4 * min(1.0, k / 4))
    no_mod = trainer(alpha=0.4, alpha_warmup=4, distill=False)
    for k in (0, 2, 4, 100):
        no_mod.step.fill_(k)
        assert no_mod.alpha() == 0.0
    assert pretrain_step(no_mod, batch)["alpha"] == 0.0 and int(no_mod.step) == 101
    assert trainer(alpha=0.3, alpha_warmup=0).alpha() == pytest.approx(0.3)  # no warm-up: α from the start


def test_eval_mode_changes_no_state(batch):
    tr = trainer()
    before = state(tr)
    tr.eval()
    with torch.no_grad():
        out = pretrain_step(tr, batch)
    assert torch.isfinite(out["loss"])
    after = tr.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)



@pytest.mark.parametrize("distill,hard_negatives", [(False, True), (True, True), (True, False)])
def test_losses_equal_the_paper_formulas(batch, monkeypatch, distill, hard_negatives):
    """ITC against the batch and the queue with (mixed) soft targets, ITM on B positives and 2B
    sampled negatives, MLM (+ distillation), recomputed from the models after the step."""
    tr = trainer(distill=distill, hard_negatives=hard_negatives, alpha=0.4, alpha_warmup=4)
    tr.step.fill_(6)  # past the warm-up: α = 0.4
    positives = torch.eye(B, dtype=torch.bool)
    positives[0, 1] = True  # caption 1 is also true of image 0 (not the other way round)
    data = {**batch, "positives": positives}
    q_img, q_txt = tr.image_queue.features.clone(), tr.text_queue.features.clone()
    rec = Recorder()
    monkeypatch.setattr("minivlm.losses.sample_negatives", rec)  # itm_negatives draws with it
    out = pretrain_step(tr, data)

    m, mom, alpha = tr.model, tr.momentum, 0.4 if distill else 0.0
    imgs, ids, mask = data["images"], data["ids"], data["attention_mask"]
    with torch.no_grad():
        img_tok, img = m.encode_image(imgs)
        txt_tok, txt, _ = m.encode_text(ids, mask)
        img_tok_m, img_m = mom.encode_image(imgs)
        txt_m = mom.encode_text(ids, mask)[1]
        scale = m.scale()
        text_all, image_all = torch.cat([txt_m, q_txt]), torch.cat([img_m, q_img])
        hard_i2t = torch.zeros(B, B + 32)
        hard_i2t[:, :B] = positives / positives.sum(1, keepdim=True).float()  # row 0: 1/2 on captions 0 and 1
        hard_t2i = torch.zeros(B, B + 32)
        hard_t2i[:, :B] = positives.T / positives.T.sum(1, keepdim=True).float()  # row 1: 1/2 on images 0 and 1
        assert hard_i2t[0, :2].tolist() == [0.5, 0.5] and hard_t2i[1, :2].tolist() == [0.5, 0.5]
        t_i2t = (1 - alpha) * hard_i2t + alpha * (scale * img_m @ text_all.T).softmax(1)
        t_t2i = (1 - alpha) * hard_t2i + alpha * (scale * txt_m @ image_all.T).softmax(1)
        sim_i2t, sim_t2i = scale * img @ text_all.T, scale * txt @ image_all.T
        itc = (-(t_i2t * sim_i2t.log_softmax(1)).sum(1).mean() - (t_t2i * sim_t2i.log_softmax(1)).sum(1).mean()) / 2
        close(out["itc"], itc)

        # ITM: a negative caption per image drawn by i2t similarity, a negative image per caption by t2i
        (s_text, ex_text, neg_text), (s_image, ex_image, neg_image) = rec.calls
        assert torch.equal(ex_text, positives) and torch.equal(ex_image, positives.T)
        if hard_negatives:
            close(s_text, sim_i2t[:, :B])
            close(s_image, sim_t2i[:, :B])
        else:  # uniform: the softmax of a constant
            assert (s_text == s_text[0, 0]).all() and (s_image == s_image[0, 0]).all()
        pairs_text = torch.cat([txt_tok, txt_tok[neg_text], txt_tok])
        pairs_mask = torch.cat([mask, mask[neg_text], mask])
        pairs_image = torch.cat([img_tok, img_tok, img_tok[neg_image]])
        logits = m.itm_logits(m.fuse(pairs_text, pairs_mask, pairs_image))
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long()
        close(out["itm"], F.cross_entropy(logits, labels))
        close(out["itm_acc"], (logits.argmax(1) == labels).float().mean())

        # MLM on the masked captions, with the image; distilled toward the momentum model's guesses
        labels = data["mlm_labels"]
        chosen = labels != IGNORE_INDEX
        mlm_logits = m.mlm_logits(m.fuse(m.encode_text(data["mlm_ids"], mask)[0], mask, img_tok))
        mlm = F.cross_entropy(mlm_logits[chosen], labels[chosen])
        if distill:
            teacher = mom.mlm_logits(mom.fuse(mom.encode_text(data["mlm_ids"], mask)[0], mask, img_tok_m))
            mlm = (1 - alpha) * mlm + alpha * soft_cross_entropy(mlm_logits[chosen], teacher[chosen].softmax(-1))
        close(out["mlm"], mlm)
        close(out["loss"], out["itc"] + out["itm"] + out["mlm"])
        assert out["alpha"] == pytest.approx(alpha)


def test_a_checkpoint_resumes_exactly(batch):
    tr = trainer()
    pretrain_step(tr, batch)
    resumed = ALBEFPretrainer(tiny(), queue_seed=5)  # other weights, other queues
    resumed.load_state_dict(tr.state_dict())
    assert int(resumed.step) == 1 and int(resumed.image_queue.ptr) == B
    torch.manual_seed(7)
    a = pretrain_step(tr, batch)
    torch.manual_seed(7)
    b = pretrain_step(resumed, batch)
    for k in ("loss", "itc", "itm", "mlm"):
        close(a[k], b[k], atol=1e-6)


# ----------------------------------------------------------------------------- pretraining data


def rebuild(seed: int, step: int, b: int, noise: float, image_size: int = 32):
    """The scenes and captions of pretrain_batches(b, seed, noise=noise)(step), from the world alone."""
    world = ShapesWorld(seed=seed * 1_000_003 + step, image_size=image_size, split="train", noise=noise)
    scenes = world.sample(b)
    noisy, clean = world.noisy_captions(scenes, noise)
    captions = [world.mixed_caption(s, 0.3) if ok else c for s, c, ok in zip(scenes, noisy, clean.tolist())]
    return world, scenes, captions


def test_pretrain_batches_positives_and_noise():
    seed, b, noise = 4, 32, 0.4
    batches = pretrain_batches(batch_size=b, seed=seed, image_size=16, noise=noise)
    clean_total, off_diagonal = [], 0
    for step in range(4):
        x = batches(step)
        world, scenes, captions = rebuild(seed, step, b, noise, image_size=16)
        assert torch.equal(x["images"], world.render(scenes))
        assert torch.equal(x["ids"], TOK(captions, 32, add_bos=True, add_eos=True)[0])
        truths = [ShapesWorld.true_captions(s) for s in scenes]
        for i in range(b):
            for j in range(b):
                assert bool(x["positives"][i, j]) == (i == j or captions[j] in truths[i]), (i, j)
        assert x["positives"].diagonal().all() and x["positives"].dtype == torch.bool
        off_diagonal += int(x["positives"].sum()) - b
        # clean captions are true of their own image, noisy ones describe another scene
        for i in range(b):
            assert (captions[i] in truths[i]) == bool(x["clean"][i]), i
        clean_total += x["clean"].tolist()
        # MLM: targets only where the input was masked, equal to the original ids
        target = x["mlm_labels"] != IGNORE_INDEX
        assert torch.equal(x["mlm_labels"][target], x["ids"][target])
        assert torch.equal(x["mlm_ids"][~target], x["ids"][~target])
    assert off_diagonal > 0  # the data has captions true of two images of a batch, so the check above bites
    # 128 Bernoulli(0.4): sd 0.043; [0.25, 0.55] is ±3.5 sd
    assert 0.25 < 1 - sum(clean_total) / len(clean_total) < 0.55
    assert pretrain_batches(batch_size=b, seed=seed, image_size=16)(0)["clean"].all()  # noise=0: all clean


def test_pretrain_batches_are_deterministic_per_seed_and_step():
    a, b = pretrain_batches(batch_size=8, seed=2, noise=0.4), pretrain_batches(batch_size=8, seed=2, noise=0.4)
    for step in (1, 0, 1):  # a batch depends on (seed, step) alone, not on the calls before it
        x, y = a(step), b(step)
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a(0)["images"], a(1)["images"])
    assert not torch.equal(pretrain_batches(batch_size=8, seed=3)(0)["images"], a(0)["images"])
    for bad in (dict(batch_size=1), dict(batch_size=8.0), dict(noise=1.5), dict(noise=-0.1)):
        with pytest.raises(ValueError, match="batch_size|noise"):
            pretrain_batches(**bad)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        a(-1)


def test_a_few_steps_on_the_data_run_and_stay_finite():
    tr = trainer()
    opt = torch.optim.AdamW(tr.model.parameters(), lr=1e-3)
    batches = pretrain_batches(batch_size=B, seed=1, noise=0.2)
    for step in range(3):
        out = pretrain_step(tr, batches(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert all(torch.isfinite(torch.as_tensor(out[k])).all() for k in ("loss", "itc", "itm", "mlm"))
        assert float(out["temp"]) >= 1 / tr.config.max_scale - 1e-6


# ----------------------------------------------------------------------------- retrieval and evaluation

CAPTIONS = ["a red circle.", "a blue square.", "a green star and a white cross.", "there is a yellow triangle.",
            "a cyan diamond above a red square", "an image with a large orange star."]


@pytest.fixture(scope="module")
def ranker():
    m = tiny()
    with torch.no_grad():  # a sharper ITM head than at init, so that margins spread out
        m.itm_head.weight.mul_(20.0)
    return m.eval()


def test_itc_similarity_is_cosine_of_the_features(ranker):
    imgs = images(6, seed=4)
    sim = itc_similarity(ranker, imgs, CAPTIONS)
    close(sim, ranker.encode_image(imgs)[1] @ ranker.encode_text(CAPTIONS)[1].T)
    close(itc_similarity(ranker, imgs, CAPTIONS, batch_size=4), sim)
    assert sim.abs().max() <= 1 + 1e-6


def test_retrieve_with_k1_is_itc(ranker):
    imgs = images(6, seed=4)
    out = retrieve(ranker, imgs, CAPTIONS, rerank_k=1)
    assert torch.equal(out["scores"], out["itc"])
    close(out["itc"], itc_similarity(ranker, imgs, CAPTIONS))
    assert out["fusion_passes"] == 0  # nothing re-ranked: no fusion pass


@pytest.mark.parametrize("k,batch_size", [(3, 256), (3, 4), (10, 256)])
def test_retrieve_reranks_the_itc_top_k_by_itm_margin(ranker, k, batch_size):
    imgs = images(6, seed=4)
    out = retrieve(ranker, imgs, CAPTIONS, rerank_k=k, batch_size=batch_size)
    sim, scores = out["itc"], out["scores"]
    kk = min(k, len(CAPTIONS))
    assert out["fusion_passes"] == 6 * kk
    top = sim.topk(kk, dim=1).indices
    shifts, margins = [], []
    for i in range(6):
        chosen = set(top[i].tolist())
        assert set(scores[i].topk(kk).indices.tolist()) == chosen  # the same k captions on top
        rest = [j for j in range(len(CAPTIONS)) if j not in chosen]
        if rest:
            assert torch.equal(scores[i, rest], sim[i, rest])  # the others keep their ITC order and score
            assert scores[i, top[i]].min() > scores[i, rest].max()
        for j in top[i].tolist():  # the model called directly on the pair
            with torch.no_grad():
                logits = ranker.itm_logits(ranker(imgs[i:i + 1], [CAPTIONS[j]]))[0]
            margin = float(logits[1] - logits[0])
            shifts.append(float(scores[i, j]) - margin)
            margins.append(margin)
    # final score = ITM margin + one constant for every image: the order among the k is the margin's
    assert max(shifts) - min(shifts) < 1e-4
    assert max(margins) - min(margins) > 0.1  # margins differ, so a wrong pairing would show


def test_evaluate_retrieval_counts_hits(ranker):
    data = {"images": images(6, seed=4), "captions": CAPTIONS}
    res = evaluate_retrieval(ranker, data, rerank_k=3)
    target = torch.arange(6)
    assert res["itc_r1"].value == pytest.approx((res["itc"].argmax(1) == target).float().mean().item())
    assert res["r1"].value == pytest.approx((res["scores"].argmax(1) == target).float().mean().item())
    assert res["r1"].n == res["itc_r1"].n == 6 and res["fusion_passes"] == 18
    same = evaluate_retrieval(ranker, data, rerank_k=1)
    assert same["r1"].value == same["itc_r1"].value


def test_evaluate_hard_itm(ranker):
    data = ShapesBench(image_size=32, seed=1234).hard_itm(n=8)
    res = evaluate_hard_itm(ranker, data)
    p_true = ranker.match_probability(data["images"], [t for t, _ in data["captions"]])
    p_neg = ranker.match_probability(data["images"], [n for _, n in data["captions"]])
    close(res["p_true"], p_true)
    close(res["p_negative"], p_neg)
    assert res["accuracy"].n == 16 and res["pair_accuracy"].n == 8
    assert res["accuracy"].value == pytest.approx(torch.cat([p_true > 0.5, p_neg <= 0.5]).float().mean().item())
    assert res["pair_accuracy"].value == pytest.approx((p_true > p_neg).float().mean().item())
    assert set(res["per_kind"]) == {"color", "shape", "size", "relation"}
    for kind, est in res["per_kind"].items():
        idx = [i for i, k in enumerate(data["kinds"]) if k == kind]
        assert est.n == len(idx) == 2
        assert est.value == pytest.approx((p_true[idx] > p_neg[idx]).float().mean().item())


# ----------------------------------------------------------------------------- control arms (chapter 04)


def test_itc_only_trains_the_encoders_and_nothing_of_the_fusion(batch):
    tr = trainer(itc_only=True)
    out = pretrain_step(tr, batch)
    assert set(out) == {"loss", "itc", "alpha", "temp"} and torch.equal(out["loss"].detach(), out["itc"])
    out["loss"].backward()
    reached = {n for n, p in tr.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("visual.") for n in reached) and any(n.startswith("text.") for n in reached)
    assert not any(n.startswith(("fusion.", "itm_head.")) for n in reached), sorted(reached)
    assert int(tr.step) == 1


def test_one_hot_itc_targets_ignore_the_other_true_captions(batch):
    """With one-hot targets, ITC on a batch whose captions repeat equals ITC with the identity as
    positives; with the default targets it does not (the batch has off-diagonal positives)."""
    eye = {**batch, "positives": torch.eye(B, dtype=torch.bool)}
    repeated = eye["positives"].clone()
    repeated[0, 1] = repeated[1, 0] = True  # as if captions 0 and 1 were both true of images 0 and 1
    repeated = {**batch, "positives": repeated}
    one_hot = pretrain_step(trainer(itc_only=True, itc_targets="one_hot", distill=False), repeated)["itc"]
    by_eye = pretrain_step(trainer(itc_only=True, distill=False), eye)["itc"]
    captions = pretrain_step(trainer(itc_only=True, distill=False), repeated)["itc"]
    close(one_hot, by_eye)
    assert (one_hot - captions).abs() > 1e-3
