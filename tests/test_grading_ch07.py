"""Chapter 07 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message."""
import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.grading.ch07 import coca_loss_reference, pool_reference
from minivlm.losses import clip_loss, lm_loss

GOOD = {"07.attentional_pool": pool_reference, "07.split_outputs": lambda h: (h[:, -1], h[:, :-1]),
        "07.coca_loss": coca_loss_reference}

WRONG_POOL = [
    (lambda c, q, h: c.mean(1, keepdim=True).expand(c.shape[0], q.shape[0], c.shape[2]), "queries are ignored"),
    (lambda c, q, h: pool_reference(c, q, h, softmax_dim=-2), "softmax over the queries"),
    (lambda c, q, h: pool_reference(c, q, h, scale=False), "not scaled"),
    (lambda c, q, h: pool_reference(c, q, 1), "one head instead of"),
    (lambda c, q, h: pool_reference(c, q, h)[:, :1], "one vector per query"),
]
WRONG_SPLIT = [
    (lambda h: (h[:, 0], h[:, 1:]), "first token pooled"),
    (lambda h: (h.mean(1), h[:, :-1]), "a mean over the tokens"),
    (lambda h: (h[:, -1], h), "CLS is left among the words"),
    (lambda h: (h[:, -1:], h[:, :-1]), "one vector per caption"),
    (lambda h: h[:, -1], "return a pair"),
]


def _unshifted(image, text, logits, ids, mask, scale, w_con, w_cap):
    return w_con * clip_loss(image, text, scale) + w_cap * F.cross_entropy(logits[mask], ids[mask])


WRONG_LOSS = [
    (lambda i, t, lg, ids, m, s, wc, wp: wp * clip_loss(i, t, s) + wc * lm_loss(lg, ids, m), "weights are swapped"),
    (_unshifted, "not shifted"),
    (lambda i, t, lg, ids, m, s, wc, wp: wc * clip_loss(i, t, s) + wp * lm_loss(lg, ids, None), "padding counted"),
    (lambda i, t, lg, ids, m, s, wc, wp: wc * F.cross_entropy(s * i @ t.t(), torch.arange(len(i)))
     + wp * lm_loss(lg, ids, m), "one direction only"),
    (lambda i, t, lg, ids, m, s, wc, wp: wc * clip_loss(i, t, 1.0) + wp * lm_loss(lg, ids, m), "temperature"),
    (lambda i, t, lg, ids, m, s, wc, wp: clip_loss(i, t, s) + lm_loss(lg, ids, m), "a weight is missing"),
]

WRONG = {"07.attentional_pool": WRONG_POOL, "07.split_outputs": WRONG_SPLIT, "07.coca_loss": WRONG_LOSS}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)
