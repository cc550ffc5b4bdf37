"""ViLT (chapter 03): the single-stream encoder, its joint padding mask, the heads, the regions
pipeline, the MLM/ITM/VQA data and steps, and that a tiny one learns."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from minivlm.data import ShapesBench, ShapesWorld
from minivlm.data.masking import IGNORE_INDEX
from minivlm.data.pairs import oracle_regions, vqa_batches
from minivlm.data.shapesworld import VQA_ANSWER_VOCAB, VQA_KINDS
from minivlm.data.tokenizer import Tokenizer
from minivlm.eval import answer_hits, evaluate_itm, evaluate_vqa, interval
from minivlm.losses import itm_loss, mlm_loss
from minivlm.models import ViLT, ViLTConfig
from minivlm.models.vilt import (
    box_features,
    crop_regions,
    mismatched_partners,
    pretrain_batches,
    pretrain_step,
    vqa_step,
)

TOK = Tokenizer.from_world()
SPECIAL_IDS = torch.tensor(sorted(TOK.id(s) for s in TOK.specials))
TEXTS = ["a red circle .", "two blue squares above a green star .", "what color is the cross?"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine a second thread that has
    to wait for its core made these tests 10-20x slower (as ShapesWorld's renderer found)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(**kw) -> ViLT:
    cfg = dict(dim=32, depth=2, heads=4, patch_size=8, max_text_len=32)
    cfg.update(kw)
    torch.manual_seed(0)
    return ViLT(ViLTConfig(**cfg)).eval()


def images(b: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def differs(a, b, by: float = 1e-3) -> bool:
    return (a - b).abs().max().item() > by


# ----------------------------------------------------------------------------- config


def test_config_defaults_come_from_the_tokenizer():
    c = ViLTConfig()
    assert c.vocab_size == len(TOK) and c.pad_id == TOK.pad_id and c.mask_id == TOK.mask_id
    assert c.answers == VQA_ANSWER_VOCAB and c.num_patches == 16 and c.image_tokens == 17
    assert ViLTConfig(visual="regions", max_regions=3).image_tokens == 4
    assert ViLTConfig(answers=["yes", "no"]).answers == ("yes", "no")


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(dim=30, heads=4), r"dim=30 .*heads=4"),
        (dict(image_size=30, patch_size=4), r"image_size=30 .*patch_size=4"),
        (dict(visual="grid"), r"\['patches', 'regions'\], got 'grid'"),
        (dict(dim=0), r"dim must be an int >= 1, got 0"),
        (dict(depth=-2), r"depth must be an int >= 1, got -2"),
        (dict(heads=True), r"heads must be an int >= 1, got True"),
        (dict(patch_size=4.0), r"patch_size must be an int >= 1, got 4\.0"),
        (dict(image_size=0), r"image_size must be an int >= 1, got 0"),
        (dict(max_regions=0), r"max_regions must be an int >= 1, got 0"),
        (dict(region_size=-1), r"region_size must be an int >= 1, got -1"),
        (dict(max_text_len=2), r"max_text_len must be >= 3.*got 2"),
        (dict(answers=("yes",)), r"answers.*\('yes',\)"),
        (dict(answers=("yes", "no", "yes")), r"answers.*distinct"),
        (dict(pad_id=10_000), r"pad_id must lie in \[0, 602\], got 10000"),
        (dict(act="swish"), r"act must be one of .*'swish'"),
        (dict(dropout=1.0), r"dropout.*\[0, 1\).*1\.0"),
        (dict(mlp_ratio=0), r"mlp_ratio.*got 0"),
    ],
)
def test_config_errors_name_expected_and_actual(kw, match):
    with pytest.raises(ValueError, match=match):
        ViLTConfig(**kw)


# ----------------------------------------------------------------------------- the encoder


def reference_forward(m: ViLT, imgs: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The architecture of the module docstring written out from the parameters."""
    c = m.config
    t = ids.shape[1]
    text = F.layer_norm(m.word_embeddings.weight[ids] + m.text_pos[0, :t], (c.dim,), m.text_norm.weight,
                        m.text_norm.bias, c.eps) + m.modality_embed.weight[0]
    patches = rearrange((imgs - 0.5) / 0.5, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=c.patch_size, p2=c.patch_size)
    patches = patches @ m.patch_embed.proj.weight.T + m.patch_embed.proj.bias
    cls = m.image_cls.expand(len(imgs), 1, c.dim)
    image = torch.cat([cls, patches], dim=1) + m.image_pos + m.modality_embed.weight[1]
    x = torch.cat([text, image], dim=1)
    valid = torch.cat([mask, torch.ones(len(imgs), 1 + c.num_patches, dtype=torch.bool)], dim=1)
    for block in m.transformer.blocks:
        x = block(x, valid[:, None, :])
    return F.layer_norm(x, (c.dim,), m.norm.weight, m.norm.bias, c.eps)


def test_forward_is_text_then_image_cls_then_patches():
    m = tiny()
    with torch.no_grad():  # non-trivial norms and biases, so that a skipped one shows
        for p in (m.text_norm.weight, m.text_norm.bias, m.norm.weight, m.norm.bias, m.patch_embed.proj.bias):
            p.add_(torch.randn_like(p) * 0.5)
    imgs = images(3)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    out = m(imgs, ids, mask)
    t = ids.shape[1]
    assert out.shape == (3, t + 1 + m.config.num_patches, m.config.dim)
    close(out, reference_forward(m, imgs, ids, mask))
    close(m(imgs, TEXTS), out)  # strings are tokenised as "<bos> words <eos>"


def test_single_stream_every_token_sees_both_modalities():
    m = tiny()
    imgs = images(2)
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    t = ids.shape[1]
    base = m(imgs, ids, mask)
    other_image = m(images(2, seed=1), ids, mask)
    assert differs(other_image[:, :t], base[:, :t])  # words attend to the image
    other_text = ids.clone()
    other_text[:, 2] = TOK.id("yellow")
    assert differs(m(imgs, other_text, mask)[:, t:], base[:, t:])  # patches attend to the words


def test_padding_changes_neither_real_text_tokens_nor_image_tokens():
    m = tiny()
    imgs = images(3, seed=2)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    t = ids.shape[1]
    base = m(imgs, ids, mask)
    # four more padded positions, holding ordinary words to make sure the mask (not the id) hides them
    extra = torch.full((3, 4), TOK.id("red"))
    padded = m(imgs, torch.cat([ids, extra], 1), torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1))
    close(padded[:, :t][mask], base[:, :t][mask])
    close(padded[:, t + 4:], base[:, t:])
    # words hidden inside the existing padding do not matter either
    noisy = torch.where(mask, ids, torch.full_like(ids, TOK.id("star")))
    close(m(imgs, noisy, mask)[:, :t][mask], base[:, :t][mask])
    # row 0 alone, without the padding the batch gave it
    alone_ids, alone_mask = TOK(TEXTS[:1], add_bos=True, add_eos=True)
    assert alone_ids.shape[1] < t
    alone = m(imgs[:1], alone_ids, alone_mask)
    n0 = alone_ids.shape[1]
    close(alone[0, :n0], base[0, :n0])
    close(alone[0, n0:], base[0, t:])
    # and the mask does something: unmasking the padding changes the image tokens of row 0
    assert differs(m(imgs, ids, torch.ones_like(mask))[0, t:], base[0, t:])


def test_modality_embedding_is_added_per_modality_and_matters():
    m = tiny()
    imgs = images(2, seed=3)
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    text0, image0, out0 = m.embed_text(ids), m.embed_image(imgs), m(imgs, ids, mask)
    delta = torch.randn(2, m.config.dim)
    with torch.no_grad():
        m.modality_embed.weight += delta
    close(m.embed_text(ids) - text0, delta[0].expand_as(text0))  # every text token, by type 0
    close(m.embed_image(imgs) - image0, delta[1].expand_as(image0))  # every image token (CLS too), by type 1
    with torch.no_grad():
        m.modality_embed.weight.zero_()
    assert differs(m(imgs, ids, mask), out0)


def test_mlm_decoder_is_tied_to_the_word_embeddings():
    m = tiny()
    h = torch.randn(2, 5, m.config.dim)
    logits = m.mlm_logits(h)
    assert logits.shape == (2, 5, len(TOK))
    x = m.mlm_norm(F.gelu(m.mlm_transform(h)))
    close(logits, x @ m.word_embeddings.weight.T + m.mlm_bias)
    assert not any(p.shape == (len(TOK), m.config.dim) for n, p in m.named_parameters() if n != "word_embeddings.weight")
    v = TOK.id("circle")
    with torch.no_grad():
        m.word_embeddings.weight[v] = torch.randn(m.config.dim)
    after = m.mlm_logits(h)
    assert differs(after[..., v], logits[..., v])
    close(after[..., v], x @ m.word_embeddings.weight[v] + m.mlm_bias[v])
    keep = torch.arange(len(TOK)) != v
    close(after[..., keep], logits[..., keep])  # every other word's logit is untouched


def test_pool_is_tanh_of_the_first_text_token():
    m = tiny()
    hidden = m(images(2), TEXTS[:2])
    close(m.pool(hidden), torch.tanh(m.pooler(hidden[:, 0])))
    assert m.itm_logits(m.pool(hidden)).shape == (2, 2) and m.vqa_logits(m.pool(hidden)).shape == (2, len(VQA_ANSWER_VOCAB))


# ----------------------------------------------------------------------------- regions


def test_crop_regions_against_hand_crops():
    imgs = images(2, seed=4, size=16)
    # boxes aligned to the pixel grid, 4 pixels a side: a 4 x 4 crop is exactly those pixels
    corners = [[(0, 0), (3, 5), (12, 12)], [(8, 2), (1, 11), (6, 6)]]  # (column, row) of the top-left pixel
    boxes = torch.tensor([[[c / 16, r / 16, (c + 4) / 16, (r + 4) / 16] for c, r in row] for row in corners])
    crops = crop_regions(imgs, boxes, 4)
    assert crops.shape == (2, 3, 4 * 4 * 3)
    for b in range(2):
        for k, (c, r) in enumerate(corners[b]):
            want = imgs[b, :, r:r + 4, c:c + 4].permute(1, 2, 0).reshape(-1)  # (row, column, channel)
            close(crops[b, k], want)
    # a box twice the crop size averages 2 x 2 pixel blocks (bilinear at the blocks' centres)
    box = torch.tensor([[[4 / 16, 8 / 16, 12 / 16, 16 / 16]]]).repeat(2, 1, 1)
    want = F.avg_pool2d(imgs[:, :, 8:16, 4:12], 2).permute(0, 2, 3, 1).reshape(2, 1, -1)
    close(crop_regions(imgs, box, 4), want)
    # the full-image box at the image's own size gives the image back
    full = crop_regions(imgs, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]).repeat(2, 1, 1), 16)
    close(full, imgs.permute(0, 2, 3, 1).reshape(2, 1, -1))


def test_oracle_regions_are_the_scene_boxes():
    world = ShapesWorld(seed=7, image_size=32)
    scenes = world.sample(12)
    boxes, mask = oracle_regions(scenes, max_regions=4)
    assert boxes.shape == (12, 4, 4) and mask.dtype == torch.bool
    for i, scene in enumerate(scenes):
        assert mask[i].tolist() == [k < len(scene) for k in range(4)]
        for k, obj in enumerate(scene.objects):
            assert boxes[i, k].tolist() == pytest.approx(list(obj.box), abs=1e-6)
        assert (boxes[i, len(scene):] == torch.tensor([0.0, 0.0, 1.0, 1.0])).all()
    assert {len(s) for s in scenes} != {4}  # some padding slots were exercised
    with pytest.raises(ValueError, match=r"has 3 objects, more than max_regions=2"):
        oracle_regions([s for s in scenes if len(s) == 3][:1], max_regions=2)
    feats = box_features(boxes)
    close(feats[..., :4], boxes)
    close(feats[..., 4], (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))


def test_regions_mode_length_and_padded_slots_do_not_matter():
    m = tiny(visual="regions", max_regions=4, region_size=4)
    world = ShapesWorld(seed=8, image_size=32)
    scenes = world.sample(3, n_objects=2)
    imgs = world.render(scenes)
    boxes, box_mask = oracle_regions(scenes, 4)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    t = ids.shape[1]
    out = m(imgs, ids, mask, boxes=boxes, box_mask=box_mask)
    assert out.shape == (3, t + 1 + 4, m.config.dim)
    real = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool), box_mask], 1)  # (B, L) real tokens
    # move the masked (padding) boxes: nothing real changes
    moved = boxes.clone()
    moved[:, 2:] = torch.tensor([0.1, 0.2, 0.5, 0.9])
    close(m(imgs, ids, mask, boxes=moved, box_mask=box_mask)[real], out[real])
    # move a real box: the output changes (the region pixels and the box coordinates are inputs)
    shifted = boxes.clone()
    shifted[:, 0] = torch.tensor([0.0, 0.0, 0.5, 0.5])
    assert differs(m(imgs, ids, mask, boxes=shifted, box_mask=box_mask)[real], out[real])
    # box_mask=None treats every slot as real: the padding slots then do matter
    assert differs(m(imgs, ids, mask, boxes=boxes)[:, :t][mask], out[:, :t][mask])
    # and the region tokens are built as the docstring says: crop + box embedding, normalised
    x = (imgs - 0.5) / 0.5
    tokens = m.region_norm(m.region_embed(crop_regions(x, boxes, 4)) + m.box_embed(box_features(boxes)))
    close(m.embed_image(imgs, boxes)[:, 1:], tokens + m.modality_embed.weight[1])


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda m: m(images(2, size=16), TEXTS[:2]), ValueError, r"\(\?, 3, 32, 32\).*\(2, 3, 16, 16\)"),
        (lambda m: m(images(2) * 2, TEXTS[:2]), ValueError, r"\[0\.0, 1\.0\].*got values in"),
        (lambda m: m(images(2) - 0.5, TEXTS[:2]), ValueError, r"\[0\.0, 1\.0\].*got values in \[-"),
        (lambda m: m(images(2).double().long(), TEXTS[:2]), ValueError, "floating"),
        (lambda m: m(images(1), ["a red circle " * 12]), ValueError, r"38 tokens.*max_len=32"),
        (lambda m: m(images(1), torch.full((1, 33), 200)), ValueError, r"33 tokens.*max_text_len=32"),
        (lambda m: m(images(1), torch.tensor([[1, 603, 2]])), ValueError, r"\[0, 602\].*603"),
        (lambda m: m(images(1), torch.tensor([[1.0, 200.0, 2.0]])), ValueError, "integer"),
        (lambda m: m(images(3), TEXTS[:2]), ValueError, r"images=3, texts=2"),
        (lambda m: m(images(1), "a red circle"), TypeError, r"list of strings, got str.*wrap it in a list"),
        (lambda m: m(images(1), []), TypeError, "non-empty list"),
        (lambda m: m(images(2), torch.full((2, 4), 200), torch.ones(2, 5, dtype=torch.bool)), ValueError,
         r"attention_mask.*\(2, 4\).*\(2, 5\)"),
        (lambda m: m(images(1), ["a red circle"], torch.ones(1, 5, dtype=torch.bool)), ValueError, "only for token ids"),
        (lambda m: m(images(1), ["a red circle"], boxes=torch.rand(1, 4, 4)), ValueError, "regions-mode"),
        (lambda m: m.answer(images(2), "what color is the circle?"), TypeError, "list of strings"),
        (lambda m: m.answer(images(2), ["what color is the circle?"]), ValueError, r"images=2, texts=1"),
    ],
)
def test_bad_inputs_name_expected_and_actual(call, err, match):
    with pytest.raises(err, match=match):
        call(tiny(depth=1))


def test_regions_mode_bad_boxes():
    m = tiny(depth=1, visual="regions")
    imgs = images(2)
    with pytest.raises(ValueError, match=r"needs boxes \(B, R, 4\)"):
        m(imgs, TEXTS[:2])
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 3, 4\)"):
        m(imgs, TEXTS[:2], boxes=torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"boxes must lie in \[0\.0, 1\.0\]"):
        m(imgs, TEXTS[:2], boxes=torch.rand(2, 4, 4) + 1)
    with pytest.raises(ValueError, match=r"box_mask must be a bool"):
        m(imgs, TEXTS[:2], boxes=torch.rand(2, 4, 4), box_mask=torch.ones(2, 4))


def test_answer_handles_unknown_words_and_matches_the_vqa_head():
    m = tiny().train()
    imgs = images(3, seed=5)
    questions = ["what is the flibbertigibbet doing?", "how many zorbs are there?", "what color is the circle?"]
    got = m.answer(imgs, questions, batch_size=2)
    assert all(a in m.config.answers for a in got)
    assert m.training  # answer() evaluates in eval mode and restores the mode
    ids, mask = m.tokenize(questions)
    assert (ids[0] == TOK.unk_id).sum() == 2
    logits = m.vqa_logits(m.pool(m(imgs, ids, mask)))
    assert got == [m.config.answers[i] for i in logits.argmax(1).tolist()]
    prob = m.match_probability(imgs, questions)
    close(prob, m.itm_logits(m.pool(m(imgs, ids, mask))).softmax(1)[:, 1])


# ----------------------------------------------------------------------------- data


def test_mismatched_partners_pick_scenes_with_other_objects():
    world = ShapesWorld(seed=9, image_size=16)
    scenes = world.sample(12, n_objects=1, compositions=[("red", "circle"), ("blue", "star"), ("green", "square")])
    partners = mismatched_partners(scenes, torch.Generator().manual_seed(0))
    assert len(partners) == 12
    for i, j in enumerate(partners):
        assert sorted(scenes[j].names) != sorted(scenes[i].names)
    assert partners == mismatched_partners(scenes, torch.Generator().manual_seed(0))
    # uniform among the candidates: over many draws scene 0 gets every other-object scene as a partner
    g = torch.Generator().manual_seed(1)
    seen = {mismatched_partners(scenes, g)[0] for _ in range(200)}
    assert seen == {j for j, s in enumerate(scenes) if s.names != scenes[0].names}
    with pytest.raises(ValueError, match="same objects"):
        mismatched_partners([scenes[0], scenes[0]], torch.Generator())


def text_of(ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(row[m].tolist()) for row, m in zip(ids, mask)]


def test_pretrain_batches_itm_negatives_and_mlm_labels():
    seed, b = 3, 32
    batches = pretrain_batches(batch_size=b, seed=seed, image_size=16)
    labels, chosen, words = [], 0, 0
    for step in range(4):
        batch = batches(step)
        world = ShapesWorld(seed=seed * 1_000_003 + step, image_size=16, split="train")  # the step's scene stream
        scenes = world.sample(b)
        assert torch.equal(batch["images"], world.render(scenes))
        captions = text_of(batch["ids"], batch["attention_mask"])
        itm = text_of(batch["itm_ids"], batch["itm_mask"])
        for i, label in enumerate(batch["itm_labels"].tolist()):
            if label == 1:
                assert itm[i] == captions[i]
            else:  # the caption of another scene of the batch, one with a different set of objects
                sources = [j for j in range(b) if captions[j] == itm[i]]
                assert any(sorted(scenes[j].names) != sorted(scenes[i].names) for j in sources), i
                # and not true of scene i by chance (a relation both scenes share)
                assert TOK.decode(list(itm[i])) not in ShapesWorld.true_captions(scenes[i]), i
        labels += batch["itm_labels"].tolist()
        # MLM: targets only at real words, equal to the original ids; inputs change only there
        ids, mlm_ids, mlm_labels = batch["ids"], batch["mlm_ids"], batch["mlm_labels"]
        target = mlm_labels != IGNORE_INDEX
        assert not (target & torch.isin(ids, SPECIAL_IDS)).any()
        assert torch.equal(mlm_labels[target], ids[target])
        assert torch.equal(mlm_ids[~target], ids[~target])
        assert (mlm_ids[target] == TOK.mask_id).float().mean() > 0.5
        chosen += int(target.sum())
        words += int((~torch.isin(ids, SPECIAL_IDS)).sum())
        boxes, box_mask = oracle_regions(scenes)
        assert torch.equal(batch["boxes"], boxes) and torch.equal(batch["box_mask"], box_mask)
    assert 0.3 < sum(labels) / len(labels) < 0.7  # half the pairs mismatched (128 pairs, ±4 sigma)
    assert 0.10 < chosen / words < 0.20  # 15 % of ~2,000 words
    # deterministic for a seed, different for another
    a, b2 = pretrain_batches(batch_size=b, seed=seed, image_size=16), pretrain_batches(batch_size=b, seed=seed, image_size=16)
    for step in (1, 0, 1):  # a batch depends on its step alone, not on the calls before it
        x, y = a(step), b2(step)
        assert all(torch.equal(x[k], y[k]) for k in x)
    z = pretrain_batches(batch_size=b, seed=seed + 1, image_size=16)(0)
    assert not torch.equal(z["images"], pretrain_batches(batch_size=b, seed=seed, image_size=16)(0)["images"])


def test_vqa_batches_labels_index_the_answers():
    batches = vqa_batches(batch_size=24, seed=2, image_size=16)
    world = ShapesWorld(seed=2 * 1_000_003 + 0, image_size=16, split="train")  # step 0's scene stream
    batch = batches(0)
    data = world.vqa_sample(24)  # the same stream
    assert torch.equal(batch["images"], world.render(data["scenes"]))
    assert [VQA_ANSWER_VOCAB[i] for i in batch["labels"].tolist()] == data["answers"]
    assert TOK.batch_decode(batch["ids"]) == data["questions"]
    assert batch["labels"].dtype == torch.long
    # another answer list: labels index into that one
    short = ("no", "yes") + tuple(a for a in VQA_ANSWER_VOCAB if a not in ("yes", "no"))
    other = vqa_batches(batch_size=24, seed=2, image_size=16, answers=short)(0)
    assert [short[i] for i in other["labels"].tolist()] == data["answers"]
    again = vqa_batches(batch_size=24, seed=2, image_size=16)(0)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    with pytest.raises(ValueError, match="missing"):
        vqa_batches(4, answers=("yes", "no"))


# ----------------------------------------------------------------------------- steps and learning


@pytest.mark.parametrize("visual", ["patches", "regions"])
def test_pretrain_step_is_mlm_plus_itm(visual):
    m = tiny(depth=1, visual=visual).train()
    batch = pretrain_batches(batch_size=8, seed=1)(0)
    out = pretrain_step(m, batch)
    assert set(out) == {"loss", "mlm", "itm", "itm_acc"}
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    regions = {"boxes": batch["boxes"], "box_mask": batch["box_mask"]} if visual == "regions" else {}
    t = batch["mlm_ids"].shape[1]
    mlm = mlm_loss(m.mlm_logits(m(batch["images"], batch["mlm_ids"], batch["attention_mask"], **regions)[:, :t]),
                   batch["mlm_labels"])
    logits = m.itm_logits(m.pool(m(batch["images"], batch["itm_ids"], batch["itm_mask"], **regions)))
    itm = itm_loss(logits, batch["itm_labels"])
    close(out["mlm"], mlm.detach())
    close(out["itm"], itm.detach())
    close(out["loss"], mlm + itm)
    assert out["itm_acc"].item() == pytest.approx((logits.argmax(1) == batch["itm_labels"]).float().mean().item())
    out["loss"].backward()
    assert m.word_embeddings.weight.grad.abs().sum() > 0 and m.itm_head.weight.grad.abs().sum() > 0


def test_vqa_step_loss_and_accuracy():
    m = tiny(depth=1).train()
    batch = vqa_batches(batch_size=8, seed=1)(0)
    out = vqa_step(m, batch)
    assert set(out) == {"loss", "acc"} and out["loss"].requires_grad and torch.isfinite(out["loss"])
    logits = m.vqa_logits(m.pool(m(batch["images"], batch["ids"], batch["attention_mask"])))
    close(out["loss"], F.cross_entropy(logits, batch["labels"]))
    assert out["acc"].item() == pytest.approx((logits.argmax(1) == batch["labels"]).float().mean().item())
    out["loss"].backward()
    assert m.vqa_head[0].weight.grad.abs().sum() > 0 and m.patch_embed.proj.weight.grad.abs().sum() > 0


def test_tiny_vilt_overfits_one_vqa_batch():
    """16 questions of every kind, 27 possible answers: the loss must fall from about log(27) ≈ 3.3
    to near zero, and the model must then answer every one of them right."""
    m = tiny(depth=1).train()
    batch = vqa_batches(batch_size=16, seed=0)(0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    before = vqa_step(m, batch)["loss"].item()
    for _ in range(150):
        loss = vqa_step(m, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = vqa_step(m, batch)
    assert before > 2.5 and after["loss"].item() < 0.05, (before, after["loss"].item())
    assert after["acc"].item() == 1.0


# ----------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def bench():
    return ShapesBench(image_size=32, seed=1234)


@pytest.mark.parametrize("visual", ["patches", "regions"])
def test_evaluate_vqa_is_consistent_with_its_hits(bench, visual):
    m = tiny(depth=1, visual=visual)
    data = bench.vqa(n=24)
    out = evaluate_vqa(m, data)
    boxes = oracle_regions(data["scenes"]) if visual == "regions" else (None, None)
    assert out["predictions"] == m.answer(data["images"], data["questions"], *boxes)
    assert out["hits"] == answer_hits(out["predictions"], data["answers"])
    assert out["overall"] == interval(out["hits"]) and out["overall"].n == 24
    assert out["overall"].value == pytest.approx(sum(out["hits"]) / 24)
    assert list(out["per_kind"]) == list(VQA_KINDS)
    for kind, est in out["per_kind"].items():
        kind_hits = [h for h, k in zip(out["hits"], data["kinds"]) if k == kind]
        assert est.n == 4 and est.value == pytest.approx(sum(kind_hits) / 4)


def test_evaluate_itm_is_consistent_with_its_hits(bench):
    m = tiny(depth=1)
    data = bench.itm(n=24)
    out = evaluate_itm(m, data)
    prob = out["probability"]
    assert prob.shape == (24,) and ((prob > 0) & (prob < 1)).all()
    close(prob, m.match_probability(data["images"], data["captions"]))
    assert out["hits"] == ((prob > 0.5).long() == data["labels"]).tolist()
    assert out["accuracy"] == interval(out["hits"]) and out["accuracy"].n == 24
    # a model sure that everything matches scores exactly the share of true pairs
    with torch.no_grad():
        m.itm_head.weight.zero_()
        m.itm_head.bias.copy_(torch.tensor([-5.0, 5.0]))
    sure = evaluate_itm(m, data)
    assert sure["accuracy"].value == pytest.approx(data["labels"].float().mean().item())
