"""Chapter 02 checks: the reference passes, the stub says "not implemented yet", and each
plausible wrong version fails with its own message."""
import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.eval import recall_at_k as library_recall
from minivlm.grading.ch02 import reference_classifier, reference_clip_loss, reference_scores


def stub(*args, **kwargs):
    raise NotImplementedError("write this part")


# ----------------------------------------------------------------------------- references


def good_clip_loss(logits):
    return reference_clip_loss(logits)


def good_scores(i, t, s):
    return reference_scores(i, t, s)


def good_classifier(encode_text, names, templates):
    return reference_classifier(encode_text, names, templates)


def good_recall(sim, k):
    n = sim.shape[0]
    target = sim[torch.arange(n), torch.arange(n)]
    return float((((sim >= target[:, None]).sum(1) - 1) < k).float().mean())


def _labels(x):
    return torch.arange(len(x))


WRONG = {
    "02.clip_loss": [
        (lambda z: F.cross_entropy(z, _labels(z)), "one-sided"),
        (lambda z: F.cross_entropy(z.t(), _labels(z)), "one-sided"),
        (lambda z: F.cross_entropy(z, _labels(z)) + F.cross_entropy(z.t(), _labels(z)), "summed: CLIP averages"),
        (lambda z: (F.cross_entropy(z, _labels(z), reduction="sum") + F.cross_entropy(z.t(), _labels(z),
                                                                                    reduction="sum")) / 2,
         "summed over the batch"),
        (lambda z: (F.cross_entropy(z, _labels(z).roll(1)) + F.cross_entropy(z.t(), _labels(z).roll(1))) / 2,
         "labels are not the diagonal"),
        (lambda z: z.diag().mean(), "expected"),
    ],
    "02.scores": [
        (lambda i, t, s: F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).t(), "temperature is missing"),
        (lambda i, t, s: s * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).t(), "logit_scale is a log"),
        (lambda i, t, s: s.exp() * i @ t.t(), "not normalised"),
        (lambda i, t, s: s.exp() * F.normalize(i, dim=0) @ F.normalize(t, dim=0).t(), "wrong axis"),
        (lambda i, t, s: reference_scores(i, t, s).t(), "wrong shape"),
    ],
    "02.zero_shot_classifier": [
        (lambda enc, names, ts: reference_classifier(enc, names, ts[:1]), "only the first template"),
        (lambda enc, names, ts: torch.stack([enc([t.format(c) for t in ts]).mean(0) for c in names]),
         "not renormalised"),
        (lambda enc, names, ts: F.normalize(enc([t.format(c) for c in names for t in ts])
                                            .view(len(ts), len(names), -1).mean(0), dim=-1), "mixed up"),
    ],
    "02.recall_at_k": [
        (lambda sim, k: good_recall(sim, k + 1) if k + 1 <= sim.shape[1] else 1.0, "off by one"),
        (lambda sim, k: good_recall(sim, k - 1) if k > 1 else 0.0, "off by one"),
        (lambda sim, k: float(((sim > sim.diagonal()[:, None]).sum(1) < k).float().mean()), "ties must count against"),
    ],
}
GOOD = {"02.clip_loss": good_clip_loss, "02.scores": good_scores, "02.zero_shot_classifier": good_classifier,
        "02.recall_at_k": good_recall}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_chapter_02_has_at_least_four_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("02"))


def test_references_agree_with_the_library():
    from minivlm.losses import clip_loss

    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    scale = torch.tensor(2.0)
    logits = reference_scores(image, text, scale)
    lib = clip_loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale.exp())
    torch.testing.assert_close(reference_clip_loss(logits), lib)
    sim = torch.randn(20, 20, generator=g)
    for k in (1, 3):
        assert good_recall(sim, k) == library_recall(sim, k)
