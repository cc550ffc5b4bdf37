"""Checks for the chapter 02 exercises (exercises/02_clip): CLIP's loss, scores, zero-shot
classifier and recall@k.

Each check runs the learner's function on fresh random inputs (or small hand-made cases with a
known answer), compares it with the library's reference (minivlm.losses, minivlm.eval), and
when it differs, tries to name the plausible mistake: a one-sided loss, a missing temperature,
an ensemble that is not renormalised, an off-by-one in recall@k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.eval import recall_at_k
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_shape,
    fresh_generator,
    is_close,
    register,
    tensor_answer,
)


def _scalar(name: str, got) -> torch.Tensor:
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        return torch.tensor(float(got))
    if not isinstance(got, torch.Tensor):
        raise GradingFailure(f"{name} must return a scalar tensor, got {type(got).__name__}")
    if got.numel() != 1:
        raise GradingFailure(f"{name} must return one number (a scalar), got a tensor of shape {tuple(got.shape)}")
    return got.reshape(())



# ----------------------------------------------------------------------------- 02.clip_loss


def reference_clip_loss(logits: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


@register("02.clip_loss", title="The symmetric contrastive loss from logits")
def check_clip_loss(fn) -> None:
    g = fresh_generator()
    # Not square-symmetric on purpose: the two directions give different losses.
    for n in (5, 9, 2):
        logits = torch.randn(n, n, generator=g) * 3
        got = _scalar("clip_loss", call(fn, logits.clone()))
        want = reference_clip_loss(logits)
        if is_close(got, want):
            continue
        labels = torch.arange(n)
        rows, cols = F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels)
        if is_close(got, rows) or is_close(got, cols):
            raise GradingFailure(
                "the loss is one-sided: it only has the image→text (rows) or the text→image (columns) cross-entropy; "
                "CLIP averages both: (loss_rows + loss_cols) / 2"
            )
        if is_close(got, rows + cols):
            raise GradingFailure("the two cross-entropies are summed: CLIP averages them, (loss_rows + loss_cols) / 2")
        if is_close(got, reference_clip_loss(logits) * n) or is_close(got, (rows + cols) * n / 2):
            raise GradingFailure("the loss is summed over the batch: take the mean over the N pairs")
        shifted = torch.roll(labels, 1)
        if is_close(got, (F.cross_entropy(logits, shifted) + F.cross_entropy(logits.t(), shifted)) / 2):
            raise GradingFailure("the labels are not the diagonal: pair i is (image i, text i), so labels = arange(N)")
        raise GradingFailure(f"clip_loss of random {n}×{n} logits: expected {float(want):.5f}, got {float(got):.5f}")
    # A perfect batch (huge diagonal) must give a loss near 0, a uniform one ln N.
    n = 6
    perfect = torch.eye(n) * 50
    if float(_scalar("clip_loss", call(fn, perfect))) > 1e-3:
        raise GradingFailure("logits with a large diagonal (every pair clearly matched) should give a loss near 0")
    uniform = torch.zeros(n, n)
    expect_close("clip_loss(zeros(6, 6)) (should be ln 6)", _scalar("clip_loss", call(fn, uniform)),
                 torch.log(torch.tensor(6.0)), atol=1e-4)


# ----------------------------------------------------------------------------- 02.scores


def reference_scores(image_features, text_features, logit_scale) -> torch.Tensor:
    i = F.normalize(image_features, dim=-1)
    t = F.normalize(text_features, dim=-1)
    return logit_scale.exp() * i @ t.t()


@register("02.scores", title="Normalise and score (scaled cosine similarities)")
def check_scores(fn) -> None:
    g = fresh_generator()
    for n, m, d in ((4, 6, 8), (7, 3, 16)):
        # features with very different norms, so that a missing normalisation shows
        image = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).mul(5).add(0.2)
        text = torch.randn(m, d, generator=g) * torch.rand(m, 1, generator=g).mul(5).add(0.2)
        logit_scale = torch.tensor(float(torch.empty(1).uniform_(1.5, 3.5, generator=g)))  # log of the scale
        got = tensor_answer("scores", call(fn, image.clone(), text.clone(), logit_scale.clone()))
        expect_shape(f"scores(image {n}×{d}, text {m}×{d})", got, (n, m))
        want = reference_scores(image, text, logit_scale)
        if is_close(got, want):
            continue
        cos = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        if is_close(got, cos):
            raise GradingFailure("the temperature is missing: multiply the cosine similarities by exp(logit_scale)")
        if is_close(got, logit_scale * cos):
            raise GradingFailure("logit_scale is a log: multiply by exp(logit_scale), not by logit_scale itself")
        if is_close(got, logit_scale.exp() * image @ text.t()):
            raise GradingFailure("the features are not normalised: L2-normalise each row before the dot product")
        if is_close(got, logit_scale.exp() * F.normalize(image, dim=0) @ F.normalize(text, dim=0).t()):
            raise GradingFailure("normalised along the wrong axis: each feature *vector* (each row, dim=-1) must have norm 1")
        if is_close(got, want.t()):
            raise GradingFailure("the result is transposed: rows are images, columns are texts")
        expect_close("scores", got, want)


# ----------------------------------------------------------------------------- 02.zero_shot_classifier


def _fake_text_encoder(dim: int, g: torch.Generator):
    """A deterministic 'text tower': each word has a random vector, a prompt is the normalised sum."""
    table: dict[str, torch.Tensor] = {}

    def encode_text(texts):
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"encode_text takes a list of strings, got {type(texts).__name__}")
        rows = []
        for text in texts:
            v = torch.zeros(dim)
            for k, word in enumerate(text.replace(".", " .").split()):
                if word not in table:
                    table[word] = torch.randn(dim, generator=g)
                v = v + table[word] * (1 + 0.3 * k)  # position-weighted, so word order matters a little
            rows.append(v)
        return F.normalize(torch.stack(rows), dim=-1)  # (K, E), unit rows like CLIP's encode_text

    return encode_text


def reference_classifier(encode_text, class_names, templates) -> torch.Tensor:
    rows = []
    for name in class_names:
        emb = encode_text([t.format(name) for t in templates])  # (K, E)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)  # (C, E)


@register("02.zero_shot_classifier", title="A zero-shot classifier from class names and templates")
def check_zero_shot_classifier(fn) -> None:
    g = fresh_generator()
    dim = 12
    encode_text = _fake_text_encoder(dim, g)
    class_names = ["red circle", "blue square", "green star", "white cross"]
    templates = ["a {}.", "a picture of a {}.", "there is a {}.", "an image with a small {}."]
    got = tensor_answer("zero_shot_classifier", call(fn, encode_text, class_names, templates))
    expect_shape(f"zero_shot_classifier({len(class_names)} classes, {len(templates)} templates)", got,
                 (len(class_names), dim))
    want = reference_classifier(encode_text, class_names, templates)
    if not is_close(got, want):
        if is_close(got, reference_classifier(encode_text, class_names, templates[:1])):
            raise GradingFailure("only the first template is used: embed the class with every template and average")
        unnormalised = torch.stack([encode_text([t.format(c) for t in templates]).mean(0) for c in class_names])
        if is_close(got, unnormalised):
            raise GradingFailure("the averaged embeddings are not renormalised: a mean of unit vectors is shorter than "
                                 "1, so L2-normalise each class vector again")
        if is_close(got, F.normalize(encode_text([t.format(c) for c in class_names for t in templates])
                                   .view(len(templates), len(class_names), dim).mean(0), dim=-1)):
            raise GradingFailure("prompts and classes are mixed up: the prompts were built class by class "
                                 "(c0t0, c0t1, ...) but averaged as if template by template; keep the same order")
        norms = got.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise GradingFailure(f"each class vector must have norm 1, got norms {[round(float(x), 3) for x in norms]}")
        expect_close("zero_shot_classifier", got, want)
    # a single template: the classifier is just the prompts' embeddings
    got1 = tensor_answer("zero_shot_classifier", call(fn, encode_text, class_names[:2], ["{}"]))
    expect_close("zero_shot_classifier(2 classes, one template '{}')", got1, encode_text(class_names[:2]))


# ----------------------------------------------------------------------------- 02.recall_at_k


@register("02.recall_at_k", title="Recall@k for retrieval")
def check_recall_at_k(fn) -> None:
    # A hand-made case: the correct candidate of query i is i; its rank (0 = best) is 0, 1, 2, 4.
    sim = torch.tensor([
        [0.9, 0.1, 0.2, 0.0, 0.3],   # rank 0
        [0.8, 0.7, 0.1, 0.0, 0.2],   # rank 1
        [0.5, 0.6, 0.4, 0.1, 0.0],   # rank 2
        [0.5, 0.6, 0.7, 0.1, 0.8],   # rank 4
    ])
    want = {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75, 4: 0.75, 5: 1.0}  # 0: what a top-0 would give
    for k, w in list(want.items())[1:]:
        got = float(_scalar(f"recall_at_k(sim, {k})", call(fn, sim.clone(), k)))
        if abs(got - w) < 1e-6:
            continue
        if k + 1 in want and abs(got - want[k + 1]) < 1e-6 and want[k + 1] != w:
            raise GradingFailure(f"off by one: recall_at_k(sim, {k}) counted the top {k + 1}; a match is found when "
                                 f"fewer than k wrong candidates score above it (its rank < k, ranks start at 0)")
        if k - 1 in want and abs(got - want[k - 1]) < 1e-6 and want[k - 1] != w:
            raise GradingFailure(f"off by one: recall_at_k(sim, {k}) counted only the top {k - 1}; the top k includes "
                                 f"the k-th best candidate")
        raise GradingFailure(f"recall_at_k on a hand-made 4×5 similarity with k={k}: expected {w}, got {got}")
    # Ties count against the model: a wrong candidate with the same score as the match is ranked above it.
    tied = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.0, 0.1, 0.3]])
    got = float(_scalar("recall_at_k(tied, 1)", call(fn, tied, 1)))
    if abs(got - 1 / 3) > 1e-6:
        raise GradingFailure(f"ties must count against the model (a wrong candidate scoring the same as the match "
                             f"ranks above it): on a case with two ties recall@1 should be 1/3, got {got:.4f}")
    # Fresh random similarities against the library's metric.
    g = fresh_generator()
    sim = torch.randn(30, 40, generator=g)
    for k in (1, 5, 10):
        expect_close(f"recall_at_k(random 30×40, {k})", _scalar("recall_at_k", call(fn, sim.clone(), k)),
                     torch.tensor(recall_at_k(sim, k)), atol=1e-6)
