"""CLIP (chapter 02): embeddings, temperature, eos pooling, input checks, and that it learns."""
import math

import pytest
import torch
import torch.nn.functional as F

from minivlm.data.tokenizer import Tokenizer
from minivlm.eval import zero_shot_classifier, zero_shot_logits
from minivlm.losses import clip_loss
from minivlm.models import CLIP, CLIPConfig
from minivlm.models.clip import clip_step, similarity, swap_similarity

TOK = Tokenizer.from_world()


def tiny(**kw) -> CLIP:
    cfg = dict(vision_dim=32, vision_depth=2, vision_heads=4, text_dim=32, text_depth=2, text_heads=4,
               embed_dim=16, context_length=16, patch_size=8)
    cfg.update(kw)
    torch.manual_seed(0)
    return CLIP(CLIPConfig(**cfg)).eval()


def random_ids(b, t, eos_at, seed=0, vocab=len(TOK)):
    """(b, t) ids of ordinary words (no eos) with an eos at position eos_at[i] in row i."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, vocab, (b, t), generator=g)  # ids ≥ 20 are never <eos> (id 2)
    for i, p in enumerate(eos_at):
        ids[i, p] = TOK.eos_id
    return ids


def test_config_defaults_come_from_the_tokenizer():
    cfg = CLIPConfig()
    assert cfg.vocab_size == len(TOK) and cfg.eos_id == TOK.eos_id and cfg.pad_id == TOK.pad_id
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="act"):
        CLIPConfig(act="swish")


def test_embeddings_are_unit_norm():
    m = tiny()
    img = m.encode_image(torch.rand(5, 3, 32, 32))
    txt = m.encode_text(random_ids(5, 10, [3, 9, 0, 5, 7]))
    assert img.shape == (5, 16) and txt.shape == (5, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(5))
    # and not all the same direction: the towers see their input
    assert (img @ img.t()).min() < 0.999 and (txt @ txt.t()).min() < 0.999


def test_logit_scale_init_and_clamp():
    m = tiny()
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    _, _, scale = m(torch.rand(2, 3, 32, 32), random_ids(2, 6, [5, 5]))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
    _, _, scale = m(torch.rand(2, 3, 32, 32), random_ids(2, 6, [5, 5]))
    assert scale.item() == pytest.approx(100.0)
    assert tiny(init_temperature=0.5).scale().item() == pytest.approx(2.0)


def test_eos_pooling_position():
    m = tiny()
    ids = random_ids(3, 12, [4, 7, 11], seed=1)
    base = m.encode_text(ids)
    after = ids.clone()
    after[0, 5:] = 30  # tokens after the first eos (row 0's eos is at 4): causal, so invisible
    after[1, 8:] = torch.tensor([TOK.eos_id, 40, 41, 42])  # a second eos later does not move the pooling
    torch.testing.assert_close(m.encode_text(after), base, rtol=0, atol=1e-6)
    before = ids.clone()
    before[0, 2] = 31 if ids[0, 2] != 31 else 32  # one token before the eos
    out = m.encode_text(before)
    assert (out[0] - base[0]).abs().max() > 1e-4  # row 0 changes
    torch.testing.assert_close(out[1:], base[1:], rtol=0, atol=1e-6)  # the others do not
    # the pooled vector is the hidden state at the eos, projected: check against a manual gather
    hidden = m.text(ids)
    manual = F.normalize(m.text_projection(hidden[torch.arange(3), torch.tensor([4, 7, 11])]), dim=-1)
    torch.testing.assert_close(base, manual)


def test_padding_does_not_change_the_text_embedding():
    m = tiny()
    ids, mask = TOK(["a red circle .", "two blue squares above a green star ."], max_len=16)
    base = m.encode_text(ids, mask)
    padded_ids = torch.cat([ids, torch.full((2, 4), TOK.pad_id)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(m.encode_text(padded_ids, padded_mask), base, rtol=0, atol=1e-6)
    # row 0 alone, without the padding the batch gave it
    short, short_mask = TOK(["a red circle ."], max_len=16)
    assert short.shape[1] < ids.shape[1]
    torch.testing.assert_close(m.encode_text(short, short_mask)[0], base[0], rtol=0, atol=1e-6)


def test_strings_and_ids_agree():
    m = tiny()
    texts = ["a red circle .", "a big yellow triangle left of a cross ."]
    ids, mask = TOK(texts, max_len=16)
    torch.testing.assert_close(m.encode_text(texts), m.encode_text(ids, mask))
    images = torch.rand(2, 3, 32, 32)
    a, b = m(images, texts), m(images, ids, mask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize(
    "images,texts,err",
    [
        (torch.rand(2, 3, 16, 16), None, ValueError),  # wrong size
        (torch.rand(2, 1, 32, 32), None, ValueError),  # wrong channels
        (torch.rand(2, 3, 32, 32) * 255, None, ValueError),  # values out of [0, 1]
        (torch.rand(2, 3, 32, 32) - 0.5, None, ValueError),  # negative values
        (torch.randint(0, 2, (2, 3, 32, 32)), None, ValueError),  # integer images
        (torch.rand(3, 32, 32), None, ValueError),  # no batch axis
        (None, torch.tensor([[5, 2], [len(TOK), 2]]), ValueError),  # id out of range
        (None, torch.tensor([[-1, 2], [5, 2]]), ValueError),  # negative id
        (None, random_ids(2, 17, [3, 3]), ValueError),  # longer than context_length (16)
        (None, random_ids(2, 6, [3, 3]).float(), ValueError),  # float ids
        (None, torch.tensor([[40, 41, 2], [40, 41, 42]]), ValueError),  # row 1 has no eos
        (None, ["a red circle " * 10], ValueError),  # a string longer than the context
        (torch.rand(3, 3, 32, 32), random_ids(2, 6, [3, 3]), ValueError),  # mismatched batch sizes
        (torch.rand(2, 3, 32, 32), ["a red circle"], ValueError),  # mismatched batch sizes, strings
        ([[0.5]], None, TypeError),  # not a tensor
    ],
)
def test_bad_inputs_raise(images, texts, err):
    m = tiny()
    with pytest.raises(err):
        if images is not None and texts is not None:
            m(images, texts)
        elif images is not None:
            m.encode_image(images)
        else:
            m.encode_text(texts)


def test_error_messages_name_expected_and_actual():
    m = tiny()
    with pytest.raises(ValueError, match=r"\(\?, 3, 32, 32\).*\(2, 3, 16, 16\)"):
        m.encode_image(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        m.encode_text(torch.tensor([[40, 2], [40, 41]]))
    with pytest.raises(ValueError, match=r"attention_mask"):
        m.encode_text(random_ids(2, 6, [3, 3]), torch.ones(2, 5, dtype=torch.bool))


def test_zero_shot_helpers_match_manual_computation():
    m = tiny()
    classes, templates = ["circle", "square", "star"], ["a {} .", "a picture of a {} .", "a small {} ."]
    proto = zero_shot_classifier(m, classes, templates)
    assert proto.shape == (3, 16)
    for c, name in enumerate(classes):
        emb = m.encode_text([t.format(name) for t in templates])  # (K, E)
        torch.testing.assert_close(proto[c], F.normalize(emb.mean(0), dim=0))
    images = torch.rand(5, 3, 32, 32)
    logits = zero_shot_logits(m, images, proto, batch_size=2)  # batched in 2 + 2 + 1
    torch.testing.assert_close(logits, m.scale() * m.encode_image(images) @ proto.t())
    texts = ["a red circle .", "a blue star .", "two squares ."]
    sim = similarity(m, images, texts, batch_size=2)
    torch.testing.assert_close(sim, m.encode_image(images) @ m.encode_text(texts).t())
    assert sim.abs().max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="placeholder"):
        zero_shot_classifier(m, classes, ["a photo"])


def test_helpers_restore_training_mode():
    m = tiny().train()
    zero_shot_classifier(m, ["circle"], ["a {} ."])
    assert m.training


def test_clip_step_returns_the_clip_loss():
    m = tiny()
    images = torch.rand(4, 3, 32, 32)
    ids, mask = TOK(["a red circle .", "a blue star .", "two squares .", "a cross ."], max_len=16)
    out = clip_step(m, dict(images=images, ids=ids, attention_mask=mask))
    img, txt, scale = m(images, ids, mask)
    torch.testing.assert_close(out["loss"], clip_loss(img, txt, scale))
    assert out["loss"].requires_grad and out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-6)
    # with the batch's positives (captions 0 and 2 both true of images 0 and 2), the multi-positive loss
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 2] = positives[2, 0] = True
    multi = clip_step(m, dict(images=images, ids=ids, attention_mask=mask, positives=positives))["loss"]
    rows = -(scale * img @ txt.t()).log_softmax(1)
    cols = -(scale * img @ txt.t()).log_softmax(0)
    by_hand = sum(rows[i, positives[i]].mean() + cols[positives[:, i], i].mean() for i in range(4)) / 8
    torch.testing.assert_close(multi, by_hand)
    eye = clip_step(m, dict(images=images, ids=ids, attention_mask=mask, positives=torch.eye(4, dtype=torch.bool)))
    torch.testing.assert_close(eye["loss"], out["loss"])


def test_tiny_clip_learns_eight_pairs():
    """8 solid-colour-quadrant images, each with its own caption: the loss must fall from
    about log(8) ≈ 2.08 to near zero, and every image must retrieve its own caption."""
    from minivlm.train import fit

    g = torch.Generator().manual_seed(0)
    colours = torch.rand(8, 3, 1, 1, generator=g)
    images = colours.expand(8, 3, 32, 32).clone()
    images[:, :, :16, :16] = 1 - images[:, :, :16, :16]  # a little structure
    words = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
    captions = [f"a {w} {s} ." for w, s in zip(words, ["circle", "square", "star", "cross"] * 2)]
    ids, mask = TOK(captions, max_len=16)
    batch = dict(images=images, ids=ids, attention_mask=mask)
    m = tiny(vision_depth=1, text_depth=1).train()
    before = clip_step(m, batch)["loss"].item()
    hist = fit(m, clip_step, lambda i: batch, steps=40, lr=3e-3, progress=False)
    after = hist.losses["loss"][-1]
    assert before > 1.5 and after < 0.1, (before, after)
    sim = similarity(m, images, captions)
    assert torch.equal(sim.argmax(dim=1), torch.arange(8))


def test_image_tower_is_the_vit_cls_feature():
    """encode_image inlines the ViT (final norm on the CLS token only): it must equal the
    library ViT's pooled output, projected and normalised."""
    m = tiny()
    images = torch.rand(3, 3, 32, 32)
    want = F.normalize(m.image_projection(m.visual((images - 0.5) / 0.5)), dim=-1)
    torch.testing.assert_close(m.encode_image(images), want)


def test_swap_similarity_matches_pairwise_similarity_and_checks_shapes():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(vision_depth=1, text_depth=1)).eval()
    images = torch.rand(3, 2, 3, 32, 32)
    captions = [("a red circle.", "a blue square."), ("a green star.", "a white cross."), ("a red star.", "a cyan circle.")]
    got = swap_similarity(model, images, captions)
    for n in range(3):
        want = similarity(model, images[n], list(captions[n]))  # (2 images, 2 captions)
        torch.testing.assert_close(got[n], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="caption pairs"):
        swap_similarity(model, images, captions[:2])
