"""Chapter 03 checks: the reference passes, the stub says "not implemented yet", and each
plausible wrong version fails with its own message."""
import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.data.masking import mlm_mask as library_mlm_mask
from minivlm.grading.ch03 import reference_single_stream_input
from minivlm.losses import mlm_loss as library_mlm_loss
from minivlm.models.vilt import mismatched_partners


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


GOOD = {"03.single_stream_input": reference_single_stream_input, "03.mlm_mask": good_mlm_mask,
        "03.mlm_loss": library_mlm_loss, "03.itm_pairs": good_itm_pairs}


# ----------------------------------------------------------------------------- wrong versions: single_stream_input


def _stream(text, image, modality, mask, m_text=0, m_image=1, image_first=False, valid=None):
    a, b = text + modality[m_text], image + modality[m_image]
    x = torch.cat([b, a] if image_first else [a, b], dim=1)
    if valid is None:
        valid = reference_single_stream_input(text, image, modality, mask)[1]
    return x, valid


def _in_place_stream(text, image, modality, mask):
    text += modality[0]
    image += modality[1]
    return reference_single_stream_input(text - modality[0], image - modality[1], modality, mask)


def _image_ones(image, dtype=torch.bool):
    return torch.ones(image.shape[:2], dtype=dtype)


WRONG_STREAM = [
    (lambda t, i, m, k: (torch.cat([t, i], 1), reference_single_stream_input(t, i, m, k)[1]), "modality embeddings are missing"),
    (lambda t, i, m, k: _stream(t, i, m, k, m_image=0), "both modalities get row 0"),
    (lambda t, i, m, k: _stream(t, i, m, k, m_text=1), "both modalities get row 1"),
    (lambda t, i, m, k: _stream(t, i, m, k, m_text=1, m_image=0), "rows are swapped"),
    (lambda t, i, m, k: _stream(t, i, m, k, image_first=True), "image tokens come first"),
    (lambda t, i, m, k: ((torch.cat([(t + m[0]) * k[..., None], i + m[1]], 1)),
                         reference_single_stream_input(t, i, m, k)[1]), "padded text tokens were zeroed"),
    (_in_place_stream, "modified in place"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([k, _image_ones(i, torch.float)], 1)), "bool tensor"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([k, _image_ones(i)], 1).t()), "transposed"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([k, _image_ones(i)], 1)[:, None]), "masks.padding"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([k, ~_image_ones(i)], 1)), "image tokens are marked invalid"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([torch.ones_like(k), _image_ones(i)], 1)),
     "padded text positions are marked valid"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([~k, _image_ones(i)], 1)), "text mask is inverted"),
    (lambda t, i, m, k: _stream(t, i, m, k, valid=torch.cat([_image_ones(i), k], 1)), "image part first"),
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
]


# ----------------------------------------------------------------------------- wrong versions: mlm_loss


def _flat(logits, labels):
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


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
]

WRONG = {"03.single_stream_input": WRONG_STREAM, "03.mlm_mask": WRONG_MASK, "03.mlm_loss": WRONG_LOSS,
         "03.itm_pairs": WRONG_ITM}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_chapter_03_has_at_least_three_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("03"))
    assert len(grading.tasks_for_chapter("03")) >= 3


def test_single_stream_reference_is_what_vilt_forward_builds():
    """The check's reference, fed through a ViLT's own transformer, gives exactly ViLT.forward."""
    from minivlm.models.vilt import ViLT, ViLTConfig
    from minivlm.nn import masks

    torch.manual_seed(0)
    model = ViLT(ViLTConfig(dim=32, depth=2, heads=2)).eval()
    ids, mask = model.tokenize(["a red circle.", "there are two shapes: a blue square and a green star."])
    images = torch.rand(2, 3, 32, 32)
    text = model.text_norm(model.word_embeddings(ids) + model.text_pos[:, : ids.shape[1]])  # (B, T, D)
    x_img = (images - model.image_mean) / model.image_std
    image = torch.cat([model.image_cls.expand(2, -1, -1), model.patch_embed(x_img)], 1) + model.image_pos
    x, valid = reference_single_stream_input(text, image, model.modality_embed.weight, mask)
    with torch.no_grad():
        ours = model.norm(model.transformer(x, mask=masks.padding(valid)))
        torch.testing.assert_close(ours, model(images, ids, mask))
