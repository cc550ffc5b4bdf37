"""Chapter 03 checks: the reference passes, the stub says "not implemented yet", and each
plausible wrong version fails with its own message: wrong values, no gradient, inputs changed in
place, empty and size-1 inputs, the structure of random draws (a coin per caption, per batch, per
position of the batch, one random word per call, a seed fixed inside), exact dtypes, an argument
ignored, typed-in results."""
import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.data.masking import mlm_mask as library_mlm_mask
from minivlm.data.shapesworld import COLORS
from minivlm.grading.ch03 import reference_image_ablation, reference_joint_input
from minivlm.losses import mlm_loss as library_mlm_loss
from minivlm.models.vilt import ViLT, ViLTConfig, mismatched_partners


def stub(*args, **kwargs):
    raise NotImplementedError("write this part")


# ----------------------------------------------------------------------------- references (the library)


class _Vocab:
    """The tokenizer interface that the library's mlm_mask reads, built from the exercise's arguments."""

    def __init__(self, special_ids, mask_id, word_ids):
        self._special_ids = set(special_ids.tolist())
        self.mask_id = mask_id
        self._size = int(max(special_ids.max(), word_ids.max())) + 1
        assert set(word_ids.tolist()) == set(range(self._size)) - self._special_ids

    def __len__(self):
        return self._size


def good_mlm_mask(ids, special_ids, mask_id, word_ids, prob=0.15):
    return library_mlm_mask(ids, _Vocab(special_ids, mask_id, word_ids), prob=prob)


def good_itm_pairs(scenes, captions):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    partners = mismatched_partners(scenes, g)
    negative = torch.rand(len(scenes), generator=g) < 0.5
    texts = [captions[partners[i]] if negative[i] else captions[i] for i in range(len(scenes))]
    return texts, (~negative).long()


GOOD = {"03.joint_input": reference_joint_input, "03.mlm_mask": good_mlm_mask, "03.mlm_loss": library_mlm_loss,
        "03.itm_pairs": good_itm_pairs, "03.image_ablation": reference_image_ablation}


# ----------------------------------------------------------------------------- wrong versions: joint_input


def _joint(text, image, modality, text_mask, image_mask, m_text=0, m_image=1, image_first=False, mask=None):
    a, b = text + modality[m_text], image + modality[m_image]
    x = torch.cat([b, a] if image_first else [a, b], dim=1)
    if mask is None:
        mask = reference_joint_input(text, image, modality, text_mask, image_mask)[1]
    return x, mask


def _joint_in_place(text, image, modality, text_mask, image_mask):
    out = reference_joint_input(text, image, modality, text_mask, image_mask)
    with torch.no_grad():
        text += 1
    return out


def _keys(valid):
    return valid[:, None, :].expand(-1, valid.shape[1], -1)


def _valid(k, im):
    return torch.cat([k, im], 1)


WRONG_JOINT = [
    (lambda t, i, m, k, im: (torch.cat([t, i], 1), reference_joint_input(t, i, m, k, im)[1]),
     "modality embeddings are missing"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, m_image=0), "both modalities get row 0"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, m_text=1), "both modalities get row 1"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, m_text=1, m_image=0), "rows are swapped"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, image_first=True), "image tokens come first"),
    (lambda t, i, m, k, im: (torch.cat([(t + m[0]) * k[..., None], (i + m[1]) * im[..., None]], 1),
                             reference_joint_input(t, i, m, k, im)[1]), "padded tokens were zeroed"),
    (_joint_in_place, "modified in place"),
    (lambda t, i, m, k, im: _joint(t.detach(), i, m, k, im), "no gradient reaches text_tokens"),
    (lambda t, i, m, k, im: _joint(t, i, m.data, k, im), "no gradient reaches modality"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=_valid(k, torch.ones_like(im))[:, None].expand(
        -1, k.shape[1] + im.shape[1], -1)), "image_mask is ignored"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=_keys(_valid(k, im)).transpose(1, 2)), "on the queries"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=_keys(_valid(k, im)) & _keys(_valid(k, im)).transpose(1, 2)),
     "rows as well as the columns"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=~_keys(_valid(k, im))), "inverted"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=_keys(torch.cat([im, k], 1))), "image part first"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=_valid(k, im)), "(B, T + N)"),
    (lambda t, i, m, k, im: _joint(t, i, m, k, im, mask=_keys(_valid(k, im)).float()), "bool tensor"),
]


# ----------------------------------------------------------------------------- wrong versions: mlm_mask


def _masking(ids, special_ids, mask_id, word_ids, prob=0.15, *, maskable=None, chosen=None, mask_frac=0.8,
             random_frac=0.1, pool=None, labels="original", in_place=False):
    """The recipe with one knob turned: which positions may be chosen, the 80/10/10 split, where random words
    come from, what the labels hold, and whether ids itself is changed."""
    if maskable is None:
        maskable = ~torch.isin(ids, special_ids)
    if chosen is None:
        chosen = maskable & (torch.rand(ids.shape) < prob)
    fate = torch.rand(ids.shape)
    to_mask = chosen & (fate < mask_frac)
    to_random = chosen & (fate >= mask_frac) & (fate < mask_frac + random_frac)
    pool = word_ids if pool is None else pool
    random_words = pool[torch.randint(len(pool), ids.shape)]
    original = ids.clone()
    inputs = ids if in_place else ids.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_words[to_random]
    if labels == "original":
        labels = torch.where(chosen, original, -100)
    elif labels == "everywhere":
        labels = original
    elif labels == "zero":
        labels = torch.where(chosen, original, 0)
    elif labels == "mask_id":
        labels = torch.where(chosen, mask_id, -100)
    elif labels == "inputs":
        labels = torch.where(chosen, inputs, -100)
    return inputs, labels


def _fixed_count(ids, special_ids, mask_id, word_ids, prob=0.15):
    """15 % of all T positions per row (padding and specials counted), taken among the real words."""
    maskable = ~torch.isin(ids, special_ids)
    chosen = torch.zeros_like(maskable)
    for i in range(len(ids)):
        real = maskable[i].nonzero().flatten()
        k = min(round(prob * ids.shape[1]), len(real))
        chosen[i, real[torch.randperm(len(real))[:k]]] = True
    return _masking(ids, special_ids, mask_id, word_ids, prob, chosen=chosen)


def _one_coin_per_caption(ids, special_ids, mask_id, word_ids, prob=0.15):
    maskable = ~torch.isin(ids, special_ids)
    return _masking(ids, special_ids, mask_id, word_ids, prob, chosen=maskable & (torch.rand(len(ids), 1) < prob))


def _one_coin_per_column(ids, special_ids, mask_id, word_ids, prob=0.15):
    maskable = ~torch.isin(ids, special_ids)
    return _masking(ids, special_ids, mask_id, word_ids, prob, chosen=maskable & (torch.rand(1, ids.shape[1]) < prob))


def _one_random_word(ids, special_ids, mask_id, word_ids, prob=0.15):
    one = word_ids[torch.randint(len(word_ids), (1,))]
    return _masking(ids, special_ids, mask_id, word_ids, prob, pool=one)


def _fixed_seed_mask(ids, special_ids, mask_id, word_ids, prob=0.15):
    torch.manual_seed(0)
    return _masking(ids, special_ids, mask_id, word_ids, prob)


WRONG_MASK = [
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, maskable=torch.ones_like(ids, dtype=torch.bool)),
     "padding was masked"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, maskable=ids != 0), "special tokens"),
    (_fixed_count, "15 % of all positions"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, labels="everywhere"), "labels on every position"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, labels="zero"), "not 0"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, mask_frac=1.0, random_frac=0.0),
     "every chosen word became <mask>"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, mask_frac=0.8, random_frac=0.0), "80 % / 10 % / 10 %"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, labels="mask_id"), "labels hold the <mask> id"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, labels="inputs"), "labels hold the replaced word"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, in_place=True), "modified in place"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob, pool=torch.arange(int(w.max()) + 1)),
     "random replacement is a special token"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, 0.15), "use the prob argument"),
    (_one_coin_per_caption, "one coin per caption"),
    (_one_coin_per_column, "one coin per position"),
    (_one_random_word, "one random word was drawn per call"),
    (_fixed_seed_mask, "a seed fixed inside"),
    (lambda ids, s, m, w, prob=0.15: (lambda x, y: (x, y.int()))(*_masking(ids, s, m, w, prob)), "torch.long"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob) if ids.shape[1] > 3 else (ids, ids * 0 - 100),
     "a caption of one word"),
    (lambda ids, s, m, w, prob=0.15: _masking(ids, s, m, w, prob) if len(ids) else (ids, ids[:, :0]), "shape"),
]


# ----------------------------------------------------------------------------- wrong versions: mlm_loss


def _flat(logits, labels):
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def _detached_zero_when_empty(z, y):
    if not (y != -100).any():
        return torch.tensor(0.0, requires_grad=True)  # a new leaf: no grad_fn, so backward() reaches nothing
    return library_mlm_loss(z, y)


def _half_through_data(z, y):
    return (library_mlm_loss(z, y) + library_mlm_loss(z.data, y)) / 2  # the right value, half the gradient


def _labels_in_place(z, y):
    out = library_mlm_loss(z, y)
    y[y == -100] = -101
    return out


WRONG_LOSS = [
    (lambda z, y: F.cross_entropy(*_flat(z, y), reduction="sum") / y.numel(), "averaged over every position"),
    (lambda z, y: F.cross_entropy(*_flat(z, y), reduction="sum"), "summed"),
    (lambda z, y: F.cross_entropy(_flat(z, y)[0], _flat(z, y)[1].clamp(min=0)), "labelled -100 are counted"),
    (lambda z, y: F.cross_entropy(*_flat(z[:, :-1], y[:, 1:])), "shifted by one"),
    (lambda z, y: F.cross_entropy(_flat(z, y)[0].softmax(-1), _flat(z, y)[1]), "softmax before the cross-entropy"),
    (lambda z, y: F.cross_entropy(z.transpose(1, 2), y), "gives NaN"),
    (lambda z, y: library_mlm_loss(z, y).item(), "Python number"),
    (lambda z, y: library_mlm_loss(z, y).detach(), "detached"),
    (lambda z, y: F.cross_entropy(*_flat(z, y), reduction="none"), "one number"),
    (_detached_zero_when_empty, "detached 0"),
    (lambda z, y: library_mlm_loss(z, y) if (y != -100).any() else torch.tensor(0.0), "detached 0"),
    (_half_through_data, "with respect to logits differs"),
    (_labels_in_place, "labels was modified in place"),
    (lambda z, y: library_mlm_loss(z, y) if z.shape[1] > 1 else library_mlm_loss(z, y) * 0, "1×1×5"),
]


# ----------------------------------------------------------------------------- wrong versions: itm_pairs


def _pairs(scenes, captions, partner_ok, negative=None, invert=False):
    """Negatives from partners j != i with partner_ok(i, j); negative (B,) bool says which pairs."""
    b = len(scenes)
    if negative is None:
        negative = torch.rand(b) < 0.5
    texts = []
    for i in range(b):
        others = [j for j in range(b) if j != i and partner_ok(i, j)]
        texts.append(captions[others[int(torch.randint(len(others), (1,)))]] if negative[i] else captions[i])
    labels = (~negative).long()
    return texts, 1 - labels if invert else labels


def _differs(scenes):
    return lambda i, j: sorted(scenes[i].names) != sorted(scenes[j].names)


def _fixed_seed_pairs(scenes, captions):
    torch.manual_seed(0)
    return _pairs(scenes, captions, _differs(scenes))


WRONG_ITM = [
    (lambda s, c: (list(c), (torch.rand(len(s)) < 0.5).long()), "own caption"),
    (lambda s, c: _pairs(s, c, lambda i, j: c[i] != c[j]), "describes the same objects"),
    (lambda s, c: _pairs(s, c, lambda i, j: s[i].names != s[j].names), "another order"),
    (lambda s, c: _pairs(s, c, _differs(s), invert=True), "inverted"),
    (lambda s, c: _pairs(s, c, _differs(s), negative=torch.ones(len(s), dtype=torch.bool)), "every pair is a negative"),
    (lambda s, c: _pairs(s, c, _differs(s), negative=torch.zeros(len(s), dtype=torch.bool)), "no pair is a negative"),
    (lambda s, c: _pairs(s, c, _differs(s), negative=torch.arange(len(s)) < len(s) // 2), "at random"),
    (lambda s, c: (_pairs(s, c, _differs(s))[0], _pairs(s, c, _differs(s))[1].bool()), "integer class indices"),
    (lambda s, c: (c.__setitem__(0, c[-1]), good_itm_pairs(s, c))[1], "modified in place"),
    (lambda s, c: _pairs(s, c, _differs(s), negative=(torch.rand(1) < 0.5).expand(len(s))), "one coin per batch"),
    (lambda s, c: (lambda t, y: (t, y.int()))(*good_itm_pairs(s, c)), "torch.long (int64), got torch.int32"),
    (_fixed_seed_pairs, "a seed fixed inside"),
    (lambda s, c: (s.reverse(), good_itm_pairs(list(reversed(s)), c))[1], "scenes list was modified"),
]

# ----------------------------------------------------------------------------- wrong versions: image_ablation


@torch.no_grad()
def _ablation(model, images, captions, words, *, shuffle="roll", first_only=False, fixed_words=None, own_model=False,
              percent=False, swap=False, train_mode=False, in_place=False, typed=False):
    """The reference measurement with one knob turned."""
    if own_model:
        from minivlm import zoo

        model = zoo.load("vilt_pretrained").eval()
    if train_mode:
        model.train()
    words = words if fixed_words is None else fixed_words
    tok = model.get_tokenizer()
    ids, text_mask = model.tokenize(list(captions))
    target = torch.isin(ids, torch.tensor([tok.id(w) for w in words]))
    if first_only:
        target = target & (target.int().cumsum(1) == 1)
    masked = ids.masked_fill(target, tok.mask_id)
    if shuffle == "roll":
        other = images.roll(1, dims=0)
    elif shuffle == "none":
        other = images
    if in_place:
        images.copy_(images.roll(1, dims=0))
        other = images
    out = {}
    for arm, shown in (("true", images if not in_place else images.roll(-1, dims=0)), ("shuffled", other)):
        logits = model.mlm_logits(model(shown, masked, text_mask)[:, : ids.shape[1]])
        out[arm] = float((logits.argmax(-1)[target] == ids[target]).float().mean())
    out["n"] = int(target.sum())
    if swap:
        out["true"], out["shuffled"] = out["shuffled"], out["true"]
    if percent:
        out = {"true": 100 * out["true"], "shuffled": 100 * out["shuffled"], "n": out["n"]}
    if typed:
        out = {"true": 0.6, "shuffled": 0.2, "n": out["n"]}
    return out


WRONG_ABLATION = [
    (lambda *a: _ablation(*a, shuffle="none"), "still see their own images"),
    (lambda *a: _ablation(*a, first_only=True), "mask every occurrence"),
    (lambda *a: _ablation(*a, fixed_words=list(COLORS)), "(shape words, the zoo's"),
    (lambda *a: _ablation(*a, own_model=True), "an untrained ViLT"),
    (lambda *a: _ablation(*a, percent=True), "percentage"),
    (lambda *a: _ablation(*a, swap=True), "swapped"),
    (lambda *a: _ablation(*a, train_mode=True), "training mode"),
    (lambda *a: _ablation(*a, in_place=True), "images was changed in place"),
    (lambda *a: _ablation(*a, typed=True), "but the model scores"),
    (lambda *a: (a[2], a[3]), "must return a dict"),
]

WRONG = {"03.joint_input": WRONG_JOINT, "03.mlm_mask": WRONG_MASK, "03.mlm_loss": WRONG_LOSS,
         "03.itm_pairs": WRONG_ITM, "03.image_ablation": WRONG_ABLATION}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG, draws={"03.mlm_mask": 2, "03.itm_pairs": 2, "03.image_ablation": 2})


def test_chapter_03_has_at_least_three_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("03"))
    assert len(grading.tasks_for_chapter("03")) >= 3


def test_joint_reference_is_what_a_region_vilt_builds():
    """The check's reference, fed through a region ViLT's own transformer, gives exactly ViLT.forward."""
    from minivlm.data import ShapesWorld
    from minivlm.data.pairs import oracle_regions

    torch.manual_seed(0)
    model = ViLT(ViLTConfig(dim=32, depth=2, heads=2, visual="regions")).eval()
    world = ShapesWorld(seed=0)
    scenes = world.sample(4)
    images = world.render(scenes)
    boxes, box_mask = oracle_regions(scenes)
    assert not box_mask.all()  # some empty slots
    ids, mask = model.tokenize([world.caption(s) for s in scenes])
    modality = model.modality_embed.weight
    with torch.no_grad():
        text = model.embed_text(ids) - modality[0]
        image = model.embed_image(images, boxes) - modality[1]
        image_mask = torch.cat([torch.ones(4, 1, dtype=torch.bool), box_mask], 1)
        x, attn = reference_joint_input(text, image, modality, mask, image_mask)
        ours = model.norm(model.transformer(x, mask=attn))
        torch.testing.assert_close(ours, model(images, ids, mask, boxes=boxes, box_mask=box_mask))


def test_the_zoo_vilt_reads_colour_from_the_image():
    from minivlm import zoo
    from minivlm.data import ShapesWorld
    from minivlm.data.shapesworld import COLORS

    world = ShapesWorld(seed=11, split="test")
    scenes = world.sample(128)
    out = reference_image_ablation(zoo.load("vilt_pretrained").eval(), world.render(scenes),
                                   [world.caption(s) for s in scenes], list(COLORS))
    assert out["n"] > 128 and out["true"] > out["shuffled"] + 0.25
