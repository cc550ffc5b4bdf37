"""Chapter 02 checks: the reference passes, the stub says "not implemented yet", and each
plausible wrong version fails with its own message: wrong values, no gradient, inputs changed in
place, size-1 inputs, an argument ignored, a fixed seed, typed-in results."""
import math

import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm import grading
from minivlm.eval import recall_at_k as library_recall
from minivlm.grading.ch02 import (
    experiment_loss,
    paired_features,
    positive_targets,
    reference_classifier,
    reference_clip_loss,
    reference_multi_positive_loss,
    reference_recall_at_k,
    scale_floor,
)

# ----------------------------------------------------------------------------- 02.multi_positive_loss


def _labels(x):
    return torch.arange(len(x))


def _soft(z, groups, rows=True, cols=True, combine=lambda a, b: (a + b) / 2, normalise=True):
    same = (groups[:, None] == groups[None, :]).float()
    t = same / same.sum(1, keepdim=True) if normalise else same
    r = -(t * z.log_softmax(1)).sum(1).mean()
    c = -(t * z.log_softmax(0)).sum(0).mean()
    if rows and cols:
        return combine(r, c)
    return r if rows else c


def _mil_nce(z, groups):
    same = groups[:, None] == groups[None, :]
    return (-(z.softmax(1) * same).sum(1).log().mean() - (z.softmax(0) * same).sum(0).log().mean()) / 2


def _loss_in_place(z, groups):
    out = reference_multi_positive_loss(z, groups)
    groups.zero_()
    return out


def _loss_breaks_at_one(z, groups):
    if len(z) == 1:
        return torch.tensor(float("nan"))
    return reference_multi_positive_loss(z, groups)


WRONG_LOSS = [
    (lambda z, grp: reference_clip_loss(z), "the groups are ignored"),
    (lambda z, grp: _soft(z, grp, normalise=False), "does not sum to 1"),
    (_mil_nce, "MIL-NCE"),
    (lambda z, grp: _soft(z, grp, cols=False), "one-sided: only the image→text"),
    (lambda z, grp: _soft(z, grp, rows=False), "one-sided: only the text→image"),
    (lambda z, grp: _soft(z, grp, combine=lambda a, b: a + b), "summed: average them"),
    (lambda z, grp: reference_multi_positive_loss(z, grp) * len(grp), "summed over the batch"),
    (lambda z, grp: reference_multi_positive_loss(z, grp).item(), "Python number"),
    (lambda z, grp: reference_multi_positive_loss(z.detach(), grp), "carries no gradient"),
    (lambda z, grp: torch.tensor(reference_multi_positive_loss(z, grp).item(), requires_grad=True),
     "carries no gradient"),
    (lambda z, grp: (_soft(z.data, grp, cols=False) + _soft(z, grp, rows=False)) / 2, "with respect to logits differs"),
    (_loss_in_place, "groups was changed in place"),
    (_loss_breaks_at_one, "is NaN"),
    (lambda z, grp: F.cross_entropy(z, _labels(z), reduction="none"), "one number"),
]

# ----------------------------------------------------------------------------- 02.zero_shot_classifier


def _classifier_in_place(enc, names, templates):
    out = reference_classifier(enc, names, templates)
    templates.append("{}!")
    return out


WRONG_CLASSIFIER = [
    (lambda enc, names, ts: reference_classifier(enc, names, ts[:1]), "only the first template"),
    (lambda enc, names, ts: torch.stack([enc([t.format(c) for t in ts]).mean(0) for c in names]), "not renormalised"),
    (lambda enc, names, ts: F.normalize(enc([t.format(c) for c in names for t in ts])
                                        .view(len(ts), len(names), -1).mean(0), dim=-1), "mixed up"),
    (lambda enc, names, ts: reference_classifier(enc, names, ["{}"]), "templates are ignored"),
    (_classifier_in_place, "templates was changed in place"),
    (lambda enc, names, ts: reference_classifier(enc, names, ts) if len(names) > 1 else enc(names)[:0],
     "wrong shape"),
]

# ----------------------------------------------------------------------------- 02.recall_at_k


def _best(sim, correct):
    return sim.masked_fill(~correct, float("-inf")).max(1).values


def _recall_in_place(sim, correct, k):
    out = reference_recall_at_k(sim, correct, k)
    sim.mul_(0)
    return out


WRONG_RECALL = [
    (lambda s, c, k: float((((s >= s.masked_fill(~c, float("inf")).min(1).values[:, None]) & ~c).sum(1) < k)
                           .float().mean()), "every correct candidate was required"),
    (lambda s, c, k: float((((s > _best(s, c)[:, None]) & ~c).sum(1) < k).float().mean()), "ties count in the model"),
    (lambda s, c, k: float(((s >= _best(s, c)[:, None]).sum(1) - 1 < k).float().mean()), "counted as competitors"),
    (lambda s, c, k: library_recall(s, k) if s.shape[0] <= s.shape[1] else 1.0, "the correct argument is ignored"),
    (lambda s, c, k: reference_recall_at_k(s, c, k + 1) if k + 1 <= s.shape[1] else 1.0, "off by one"),
    (lambda s, c, k: reference_recall_at_k(s, c, max(k - 1, 1)), "off by one"),
    (lambda s, c, k: 100 * reference_recall_at_k(s, c, k), "percentage"),
    (_recall_in_place, "similarity was changed in place"),
    (lambda s, c, k: reference_recall_at_k(s, c, k) if s.numel() > 1 else 0.0, "(1, 1)"),
]

# ----------------------------------------------------------------------------- 02.temperature_experiment


def _experiment(image, text, learn_scale, steps, seed, *, seeded=True, fixed_seed=None, learn=None, use_exp=True,
                report="final", start=0.0, train_steps=None, typed=False):
    """The reference recipe, with one knob turned."""
    g = torch.Generator().manual_seed(seed if fixed_seed is None else fixed_seed) if seeded else None
    w_i = (torch.randn(image.shape[1], 8, generator=g) / image.shape[1] ** 0.5).requires_grad_()
    w_t = (torch.randn(text.shape[1], 8, generator=g) / text.shape[1] ** 0.5).requires_grad_()
    learn = learn_scale if learn is None else learn
    t = torch.tensor(start, requires_grad=learn)

    def loss_now():
        cos = F.normalize(image @ w_i, dim=-1) @ F.normalize(text @ w_t, dim=-1).t()
        return reference_clip_loss((t.exp() if use_exp else t) * cos)

    opt = torch.optim.Adam([w_i, w_t] + ([t] if learn else []), lr=0.01)
    last = None
    for _ in range(steps if train_steps is None else train_steps):
        loss = loss_now()
        last = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = loss_now().item()
    loss = final if report == "final" or last is None else last
    if typed:
        loss = 0.1 if learn_scale else 3.3
    return {"w_image": w_i.detach(), "w_text": w_t.detach(), "logit_scale": t.detach(), "loss": loss}


WRONG_EXPERIMENT = [
    (lambda *a: _experiment(*a, seeded=False), "two runs with the same seed"),
    (lambda *a: _experiment(*a, fixed_seed=0), "the seed argument is ignored"),
    (lambda *a: _experiment(*a, start=math.log(1 / 0.07)), "start it at 0"),
    (lambda *a: _experiment(*a, learn=True), "with learn_scale=False the log-scale moved"),
    (lambda *a: _experiment(*a, learn=False), "with learn_scale=True the log-scale did not move"),
    (lambda *a: _experiment(*a, report="last step"), "report the loss of the returned parameters"),
    (lambda *a: _experiment(*a, typed=True), "report the loss of the returned parameters"),
    (lambda *a: _experiment(*a, use_exp=False), "logit_scale is a log"),
    (lambda image, text, learn_scale, steps, seed: _experiment(image, text, learn_scale, steps, seed,
                                                               train_steps=min(steps, 5)),
     "learned scale is only"),
    (lambda *a: {"w_image": torch.zeros(3, 3)}, "must return a dict"),
]


def _reference_experiment(image, text, learn_scale, steps, seed):
    return _experiment(image, text, learn_scale, steps, seed)


GOOD = {
    "02.multi_positive_loss": reference_multi_positive_loss,
    "02.zero_shot_classifier": reference_classifier,
    "02.recall_at_k": reference_recall_at_k,
    "02.temperature_experiment": _reference_experiment,
}
WRONG = {"02.multi_positive_loss": WRONG_LOSS, "02.zero_shot_classifier": WRONG_CLASSIFIER,
         "02.recall_at_k": WRONG_RECALL, "02.temperature_experiment": WRONG_EXPERIMENT}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_chapter_02_tasks():
    assert grading.tasks_for_chapter("02") == list(GOOD)


def test_references_agree_with_the_library():
    from minivlm.losses import clip_loss

    g = torch.Generator().manual_seed(0)
    image, text = F.normalize(torch.randn(5, 8, generator=g), dim=-1), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    logits = 7.0 * image @ text.t()
    # every pair its own group: CLIP's loss, as the library computes it
    torch.testing.assert_close(reference_multi_positive_loss(logits, torch.arange(5) * 3), clip_loss(image, text, 7.0))
    torch.testing.assert_close(reference_clip_loss(logits), clip_loss(image, text, 7.0))
    groups = torch.tensor([4, 9, 4, 2, 9])
    assert torch.allclose(positive_targets(groups).sum(1), torch.ones(5))
    sim = torch.randn(6, 9, generator=g)
    correct = torch.zeros(6, 9, dtype=torch.bool)
    correct[torch.arange(6), torch.arange(6)] = True
    for k in (1, 3):
        assert reference_recall_at_k(sim, correct, k) == library_recall(sim, k)


def test_the_experiment_shows_the_floor_and_the_learned_scale():
    image, text = paired_features(64, torch.Generator().manual_seed(0))
    fixed = _reference_experiment(image, text, False, 300, 0)
    learned = _reference_experiment(image, text, True, 300, 0)
    assert float(fixed["logit_scale"]) == 0.0 and float(learned["logit_scale"]) > math.log(5)
    assert fixed["loss"] >= scale_floor(64, 1.0)
    assert learned["loss"] < fixed["loss"] - 1.0
    recomputed = experiment_loss(image, text, learned["w_image"], learned["w_text"], learned["logit_scale"])
    assert abs(float(recomputed) - learned["loss"]) < 1e-5
