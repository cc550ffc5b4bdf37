"""Chapter 07 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message: wrong values, no gradient (.data, .detach(), a loss
rebuilt from .item()), inputs changed in place, padding ignored or on the wrong side, size-1
inputs (one token, one query, one caption; .squeeze() at B = 1), the model's mode changed, an
argument ignored, typed-in results."""
import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.grading import run
from minivlm.grading.ch07 import (
    coca_loss_reference,
    pool_reference,
    reference_content_share,
    reference_unimodal_input,
)
from minivlm.losses import clip_loss, lm_loss
from minivlm.nn import masks

GOOD = {"07.attentional_pool": pool_reference, "07.unimodal_input": reference_unimodal_input,
        "07.coca_loss": coca_loss_reference, "07.content_share": reference_content_share}


# ----------------------------------------------------------------------------- wrong versions: attentional_pool


def _pool_squeezed(c, q, h, m):
    return pool_reference(c, q, h, m).squeeze()


def _pool_in_place(c, q, h, m):
    out = pool_reference(c, q, h, m)
    with torch.no_grad():
        c.mul_(m[..., None])
    return out


WRONG_POOL = [
    (lambda c, q, h, m: pool_reference(c, q, h), "the mask is ignored"),
    (lambda c, q, h, m: pool_reference(c, q, h, ~m | (~m).logical_not().all(1, keepdim=True)), "the mask is inverted"),
    (lambda c, q, h, m: pool_reference(c, q, h, m, after=True), "zeroed after the softmax"),
    (lambda c, q, h, m: pool_reference(c * m[..., None], q, h), "zeroed instead of hidden"),
    (lambda c, q, h, m: pool_reference(c, q, h, m, softmax_dim=-2), "or over the queries"),
    (lambda c, q, h, m: pool_reference(c, q, h, ~m), "the mask inverted?"),
    (lambda c, q, h, m: pool_reference(c, q, h, m, scale=False), "not scaled"),
    (lambda c, q, h, m: pool_reference(c, q, 1, m), "one head instead of"),
    (lambda c, q, h, m: ((c * m[..., None]).sum(1, keepdim=True) / m.sum(1)[:, None, None]).expand(
        c.shape[0], q.shape[0], c.shape[2]), "the queries are ignored"),
    (lambda c, q, h, m: pool_reference(c, q, h, m)[:, :1], "one vector per query"),
    (_pool_squeezed, "one vector per query"),
    (lambda c, q, h, m: pool_reference(c.detach(), q, h, m), "no gradient reaches context"),
    (lambda c, q, h, m: pool_reference(c, q.data, h, m), "no gradient reaches queries"),
    (lambda c, q, h, m: pool_reference(c, q, h, m).detach(), "carries no gradient"),
    (_pool_in_place, "modified in place"),
]


# ----------------------------------------------------------------------------- wrong versions: unimodal_input


def _uni(words, attention_mask, cls, *, first=False, causal=True, padding="keys", cls_key=True, detach=False,
         squeeze=False):
    b, t, _ = words.shape
    x = torch.cat([cls.expand(b, 1, -1), words] if first else [words, cls.expand(b, 1, -1)], dim=1)
    valid = torch.cat([attention_mask.bool(), torch.full((b, 1), cls_key)], dim=1)
    if first:
        valid = valid.roll(1, dims=1)
    mask = masks.causal(t + 1).expand(b, t + 1, t + 1) if causal else torch.ones(b, t + 1, t + 1, dtype=torch.bool)
    if padding == "keys":
        mask = mask & valid[:, None, :]
    elif padding == "rows":
        mask = mask & valid[:, :, None]
    if detach:
        x = x.detach()
    if squeeze:
        x, mask = x.squeeze(), mask.squeeze()
    return x, mask


def _uni_after_last(words, attention_mask, cls):
    lengths = attention_mask.sum(1)
    x = torch.stack([torch.cat([words[i, :lengths[i]], cls[None], words[i, lengths[i]:]]) for i in range(len(words))])
    return x, reference_unimodal_input(words, attention_mask, cls)[1]


def _uni_cls_data(words, attention_mask, cls):
    x, mask = reference_unimodal_input(words, attention_mask, cls.data)
    return x, mask


WRONG_UNIMODAL = [
    (lambda *a: _uni(*a, first=True), "the CLS comes first"),
    (_uni_after_last, "right after each caption's last real word"),
    (lambda *a: _uni(*a, causal=False), "the mask is not causal"),
    (lambda *a: _uni(*a, padding="none"), "does not hide the padding"),
    (lambda *a: _uni(*a, padding="rows"), "on the queries (rows)"),
    (lambda *a: _uni(*a, cls_key=False), "the CLS is hidden as a key"),
    (lambda *a: (_uni(*a)[0], ~_uni(*a)[1]), "the mask is inverted"),
    (lambda *a: (_uni(*a)[0], _uni(*a)[1].transpose(1, 2)), "values differ"),
    (lambda *a: (_uni(*a)[0], _uni(*a)[1].int()), "must be a bool tensor"),
    (lambda w, m, c: (_uni(w, m, c)[0], torch.cat([m, torch.ones(len(m), 1, dtype=torch.bool)], 1)),
     "a padding mask only"),
    (lambda *a: _uni(*a, squeeze=True), "x must be (B, T + 1, D)"),
    (lambda *a: _uni(*a, detach=True), "carries no gradient"),
    (_uni_cls_data, "no gradient reaches cls"),
    (lambda *a: _uni(*a)[0], "must return a tuple"),
]


# ----------------------------------------------------------------------------- wrong versions: coca_loss


def _unshifted(image, text, logits, ids, mask, scale, w_con, w_cap):
    return w_con * clip_loss(image, text, scale) + w_cap * F.cross_entropy(logits[mask], ids[mask])


def _per_caption_mean(image, text, logits, ids, mask, scale, w_con, w_cap):
    per = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids[:, 1:].shape)
    keep = mask[:, 1:].float()
    rows = keep.sum(1) > 0
    cap = ((per * keep).sum(1)[rows] / keep.sum(1)[rows]).mean()
    return w_con * clip_loss(image, text, scale) + w_cap * cap


def _summed(image, text, logits, ids, mask, scale, w_con, w_cap):
    per = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids[:, 1:].shape)
    return w_con * clip_loss(image, text, scale) + w_cap * (per * mask[:, 1:]).sum()


WRONG_LOSS = [
    (lambda i, t, lg, ids, m, s, wc, wp: wp * clip_loss(i, t, s) + wc * lm_loss(lg, ids, m), "weights are swapped"),
    (_unshifted, "not shifted"),
    (lambda i, t, lg, ids, m, s, wc, wp: wc * clip_loss(i, t, s) + wp * lm_loss(lg, ids, None), "padding counted"),
    (lambda i, t, lg, ids, m, s, wc, wp: wc * F.cross_entropy(s * i @ t.t(), torch.arange(len(i)))
     + wp * lm_loss(lg, ids, m), "one direction only"),
    (lambda i, t, lg, ids, m, s, wc, wp: wc * clip_loss(i, t, 1.0) + wp * lm_loss(lg, ids, m), "temperature"),
    (lambda i, t, lg, ids, m, s, wc, wp: clip_loss(i, t, s) + lm_loss(lg, ids, m), "a weight is missing"),
    (_per_caption_mean, "the mean of per-row means"),
    (_summed, "the sum over the target tokens"),
    (lambda *a: torch.tensor(coca_loss_reference(*a).item()), "carries no gradient"),
    (lambda i, t, lg, ids, m, s, wc, wp: coca_loss_reference(i, t, lg, ids, m, s.item(), wc, wp),
     "no gradient reaches scale"),
    (lambda i, t, lg, ids, m, s, wc, wp: coca_loss_reference(i.detach(), t, lg, ids, m, s, wc, wp),
     "no gradient reaches image"),
    (lambda i, t, lg, ids, m, s, wc, wp: coca_loss_reference(i, t, lg.data, ids, m, s, wc, wp),
     "no gradient reaches logits"),
    (lambda *a: coca_loss_reference(*a).reshape(1, 1).expand(2, 2), "the loss must be a scalar"),
]


# ----------------------------------------------------------------------------- wrong versions: content_share


@torch.no_grad()
def _share(model, images, *, where="output", scale=True, cls=False, axis="images", position=False, percent=False,
           train=False, typed=False, unbiased=False):
    if train:
        model.eval()
    x = (images - model.image_mean) / model.image_std if scale else images
    if where == "output":
        tokens = model.visual.forward_features(x)
        tokens = tokens if cls else tokens[:, 1:]
    else:
        tokens = model.visual.patch_embed(x) + model.visual.pos_embedding[:, 1:]
    total = tokens.flatten(0, 1).var(0, unbiased=unbiased).sum()
    across = tokens.var(0 if axis == "images" else 1, unbiased=unbiased).sum(-1).mean()
    share = float(across / total)
    if position:
        share = 1 - share
    if percent:
        share *= 100
    if typed:
        share = 0.9
    return share


WRONG_SHARE = [
    (lambda m, i: _share(m, i, scale=False), "the images were not scaled"),
    (lambda m, i: _share(m, i, cls=True), "the CLS token was counted"),
    (lambda m, i: _share(m, i, axis="positions"), "the position's share"),
    (lambda m, i: _share(m, i, position=True), "that is the position's share"),
    (lambda m, i: _share(m, i, percent=True), "percentage"),
    (lambda m, i: _share(m, i, unbiased=True), "the unbiased ones"),
    (lambda m, i: _share(m, i, train=True), "left in eval mode"),
    (lambda m, i: _share(m, i, typed=True), "but this model's patch tokens give"),
    (lambda m, i: (i.mul_(0.5), reference_content_share(m, i))[1], "modified in place"),
    (lambda m, i: {"content": reference_content_share(m, i)}, "must return one number"),
]

WRONG = {"07.attentional_pool": WRONG_POOL, "07.unimodal_input": WRONG_UNIMODAL, "07.coca_loss": WRONG_LOSS,
         "07.content_share": WRONG_SHARE}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG, draws={"07.content_share": 2})


def test_chapter_07_has_at_least_three_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("07"))
    assert len(grading.tasks_for_chapter("07")) >= 3


def test_correct_answers_written_another_way_pass():
    """A loop over heads with a (B, 1, N) key mask, masks built by hand, and a loss on the library's
    pieces with the scale given as a float-valued tensor are all correct."""

    def pool_loop(context, queries, heads, mask):
        b, n, d = context.shape
        dh = d // heads
        outs = []
        for h in range(heads):
            s = slice(h * dh, (h + 1) * dh)
            scores = queries[None, :, s] @ context[..., s].transpose(1, 2) / dh ** 0.5  # (B, Q, N)
            outs.append(scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1) @ context[..., s])
        return torch.cat(outs, -1)

    def unimodal_by_hand(words, attention_mask, cls):
        b, t, d = words.shape
        x = torch.cat([words, cls[None, None].expand(b, 1, d)], 1)
        keys = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], 1)
        return x, torch.ones(t + 1, t + 1, dtype=torch.bool).tril()[None] & keys[:, None, :]

    for task, fn in (("07.attentional_pool", pool_loop), ("07.unimodal_input", unimodal_by_hand)):
        for _ in range(3):
            result = run(task, fn)
            assert result.passed, (task, result.message)


def test_unimodal_reference_is_what_coca_decodes():
    """The reference [words ; CLS] and mask, through CoCa's unimodal half, give CoCa's text feature."""
    from minivlm.models.coca import COCA_CONFIG, CoCa, CoCaConfig

    torch.manual_seed(0)
    model = CoCa(CoCaConfig(**COCA_CONFIG)).eval()
    ids, mask = model.tokenize(["a red circle.", "there are two shapes: a blue square and a green star."])
    with torch.no_grad():
        x, attn = reference_unimodal_input(model.token_embedding(ids), mask, model.cls_embedding)
        hidden = model.unimodal(x + model.pos_embedding[:, :x.shape[1]], mask=attn)
        feature = F.normalize(model.text_projection(model.cls_norm(hidden[:, -1])), dim=-1)
        torch.testing.assert_close(feature, model.decode(ids, mask)[0])


def test_std1_positions_drown_the_content_at_init():
    from minivlm.data import ShapesBench
    from minivlm.models.coca import COCA_CONFIG, CoCa, CoCaConfig

    images = ShapesBench(seed=3).captioning(32)["images"]
    shares = {}
    for std in (0.02, 1.0):
        torch.manual_seed(0)
        shares[std] = reference_content_share(CoCa(CoCaConfig(**{**COCA_CONFIG, "pos_init_std": std})).eval(), images)
    assert shares[0.02] > 0.8 and shares[1.0] < 0.2
