"""Retrieval and zero-shot evaluation (chapter 02 introduces them on CLIP; chapters 04–08 reuse
them): zero-shot accuracy, recall@k, Winoground-style swap scores, and retrieval over the
`DualEncoder` interface — ITC similarities, ALBEF's ITC-then-ITM re-ranking (chapter 04) and R@1
with its interval. Ties always count *against* the model: a model that gives every candidate the
same score must not look good, so "correct" means strictly better than every wrong candidate.
"""
from __future__ import annotations

import time
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange

from minivlm.data.shapesworld import COLORS, RELATIONS, SHAPES, with_article
from minivlm.eval.stats import Estimate, interval
from minivlm.utils import check_int, check_shape, check_strings, check_tensor, eval_mode


@runtime_checkable
class DualEncoder(Protocol):
    """What retrieval and zero-shot evaluation need of a model: two towers that embed images and
    texts apart. CLIP (chapter 02) returns the unit features; ALBEF, BLIP, CoCa and VLMo (chapters
    04–07) return (tokens, unit feature[, mask]) with the unit (B, E) feature second.
    `unit_features` reads either."""

    def encode_image(self, images: torch.Tensor): ...

    def encode_text(self, texts): ...


def unit_features(out) -> torch.Tensor:
    """The (B, E) unit feature of a DualEncoder's encode_image / encode_text output."""
    return out if isinstance(out, torch.Tensor) else out[1]


def _check_finite(name: str, x: torch.Tensor) -> None:
    """ValueError unless every entry of x is finite: NaN compares False with everything, so a
    NaN score would silently turn into a hit (or a miss) instead of an error."""
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must be finite, got {int(bad.sum())} non-finite value(s) out of {x.numel()} "
                         f"(first at index {first}: {x[first].item()})")


def zero_shot_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose label logit is strictly larger than every other logit.

    logits (N, C) float, labels (N,) int in [0, C).
    """
    check_tensor("logits", logits, ndim=2, dtype="float")
    check_tensor("labels", labels, ndim=1, dtype="int")
    _check_finite("logits", logits)
    N, C = logits.shape
    if labels.shape[0] != N:
        raise ValueError(f"labels must have shape ({N},) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    if N == 0:
        raise ValueError("logits must have at least one row")
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"labels must lie in [0, {C - 1}], got values in [{int(labels.min())}, {int(labels.max())}]")
    target = logits.gather(1, labels.view(-1, 1))  # (N, 1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))  # (N, C), the label masked out
    correct = (others < target).all(dim=1)
    return float(correct.float().mean())


def _as_target_sets(targets, Nq: int, Nc: int) -> list[set[int]]:
    if targets is None:
        if Nc < Nq:
            raise ValueError(f"default targets arange(Nq) need Nc >= Nq, got similarity ({Nq}, {Nc})")
        return [{i} for i in range(Nq)]
    if isinstance(targets, torch.Tensor):
        check_tensor("targets", targets, ndim=1, dtype="int")
        sets = [{int(t)} for t in targets]
    elif isinstance(targets, (list, tuple)):
        sets = [{int(t) for t in ts} if isinstance(ts, (set, frozenset, list, tuple)) else {int(ts)} for ts in targets]
    else:
        raise TypeError(f"targets must be None, a LongTensor (Nq,) or a list of sets, got {type(targets).__name__}")
    if len(sets) != Nq:
        raise ValueError(f"targets must have one entry per query ({Nq}), got {len(sets)}")
    for q, ts in enumerate(sets):
        if not ts:
            raise ValueError(f"targets[{q}] is empty: every query needs a correct candidate")
        if min(ts) < 0 or max(ts) >= Nc:
            raise ValueError(f"targets[{q}] must lie in [0, {Nc - 1}], got {sorted(ts)}")
    return sets


def recall_at_k(similarity: torch.Tensor, k: int, targets=None) -> float:
    """Fraction of queries with a correct candidate among their top k.

    similarity (Nq, Nc): row q scores every candidate for query q. targets: None (query i's
    correct candidate is i), a LongTensor (Nq,), or a list of sets of correct candidates.
    Ties count against: a target's rank is the number of *other* candidates scoring >= it
    (other correct candidates scoring higher do not count), and it is found if that rank < k.
    """
    check_tensor("similarity", similarity, ndim=2, dtype="float")
    _check_finite("similarity", similarity)
    Nq, Nc = similarity.shape
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k > Nc:
        raise ValueError(f"k={k} is larger than the number of candidates ({Nc})")
    if Nq == 0:
        raise ValueError("similarity must have at least one query")
    sets = _as_target_sets(targets, Nq, Nc)
    is_target = torch.zeros(Nq, Nc, dtype=torch.bool)
    for q, ts in enumerate(sets):
        is_target[q, list(ts)] = True
    # Best (highest-scoring) correct candidate per query, and how many wrong ones reach it.
    best = similarity.masked_fill(~is_target, float("-inf")).max(dim=1).values  # (Nq,)
    rank = ((similarity >= best[:, None]) & ~is_target).sum(dim=1)  # (Nq,)
    return float((rank < k).float().mean())


def retrieval_metrics(similarity: torch.Tensor) -> dict[str, float]:
    """Image-to-text and text-to-image R@1 and R@5 for a (N_images, N_texts) similarity whose
    diagonal holds the matching pairs (N_images == N_texts, at least 5)."""
    check_tensor("similarity", similarity, ndim=2, dtype="float")
    N = check_shape("similarity", similarity, ["N", "N"])["N"]
    _check_finite("similarity", similarity)
    if N < 5:
        raise ValueError(f"retrieval_metrics needs at least 5 pairs for R@5, got {N}")
    return {
        "i2t_r1": recall_at_k(similarity, 1),
        "i2t_r5": recall_at_k(similarity, 5),
        "t2i_r1": recall_at_k(similarity.T, 1),
        "t2i_r5": recall_at_k(similarity.T, 5),
    }


def swap_scores(scores: torch.Tensor) -> dict[str, float]:
    """Winoground's text, image and group scores from scores (N, 2, 2), where scores[n, i, j] is
    the score of image i with caption j (caption i is the correct one for image i).

    text: each image prefers its own caption, s[0,0] > s[0,1] and s[1,1] > s[1,0];
    image: each caption prefers its own image, s[0,0] > s[1,0] and s[1,1] > s[0,1];
    group: both. Strict inequalities, so ties fail. Chance is 0.25 / 0.25 / 1/6.
    """
    check_tensor("scores", scores, ndim=3, dtype="float")
    check_shape("scores", scores, [None, 2, 2])
    _check_finite("scores", scores)
    if scores.shape[0] == 0:
        raise ValueError("scores must hold at least one example")
    s = scores
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    return {"text": float(text.float().mean()), "image": float(image.float().mean()),
            "group": float((text & image).float().mean())}


@torch.no_grad()
def itc_similarity(model: DualEncoder, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(N_images, N_texts) cosine similarities of the ITC features: one pass per image and per text.
    Any DualEncoder serves: CLIP, ALBEF, BLIP, CoCa, VLMo's dual mode (chapter 05)."""
    check_tensor("images", images, ndim=4, dtype="float")
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
        raise TypeError("captions must be a non-empty list of strings")
    check_int("batch_size", batch_size)
    with eval_mode(model):
        img = torch.cat([unit_features(model.encode_image(images[a:a + batch_size]))
                         for a in range(0, len(images), batch_size)])
        txt = torch.cat([unit_features(model.encode_text(list(captions[a:a + batch_size])))
                         for a in range(0, len(captions), batch_size)])
    return img @ txt.t()


def retrieve(model, images: torch.Tensor, captions: Sequence[str], rerank_k: int = 16,
             batch_size: int = 256) -> dict:
    """Image → text retrieval as ALBEF does it: rank every caption by ITC similarity (one
    encoder pass per image and per caption), then re-rank each image's top `rerank_k` by the
    ITM head (k fusion passes per image). rerank_k=1 keeps the ITC ranking.

    Returns dict(scores (N_images, N_texts): the final ranking scores (the ITM match logit
    margin for the top k, placed above every other caption, whose ITC similarity follows),
    itc (N_images, N_texts), itc_seconds, rerank_seconds, fusion_passes: N_images · k).
    """
    if not isinstance(rerank_k, int) or isinstance(rerank_k, bool) or rerank_k < 1:
        raise ValueError(f"rerank_k must be an int >= 1 (1: ITC ranking alone), got {rerank_k!r}")
    t0 = time.perf_counter()
    sim = itc_similarity(model, images, captions, batch_size)  # (N, M)
    itc_seconds = time.perf_counter() - t0
    k = min(rerank_k, sim.shape[1])
    scores = sim.clone()
    t0 = time.perf_counter()
    if k > 1:
        top = sim.topk(k, dim=1).indices  # (N, k)
        with eval_mode(model):
            text_tokens, _, mask = model.encode_text(list(captions))  # (M, T, D): each caption once
            image_tokens, _ = model.encode_image(images)  # (N, 1 + P, D)
            rows = torch.arange(len(images)).repeat_interleave(k)
            cols = top.flatten()
            margins = []
            for a in range(0, len(rows), batch_size):
                r, cidx = rows[a:a + batch_size], cols[a:a + batch_size]
                logits = model.itm_logits(model.fuse(text_tokens[cidx], mask[cidx], image_tokens[r]))
                margins.append(logits[:, 1] - logits[:, 0])
        margin = torch.cat(margins).view(len(images), k)
        # the re-ranked k sit above every other caption (ITC similarities lie in [-1, 1])
        scores.scatter_(1, top, margin - margin.min() + 3.0)
    return {"scores": scores, "itc": sim, "itc_seconds": itc_seconds, "rerank_seconds": time.perf_counter() - t0,
            "fusion_passes": len(images) * k if k > 1 else 0}


def evaluate_retrieval(model: DualEncoder, data: dict, rerank_k: int = 16) -> dict:
    """Image → text R@1 (with a Wilson interval) on a ShapesBench `retrieval` set (caption i
    belongs to image i, all captions distinct), ITC alone and after re-ranking the top k."""
    out = retrieve(model, data["images"], data["captions"], rerank_k)
    target = torch.arange(len(data["captions"]))
    hits_itc = (out["itc"].argmax(1).cpu() == target).tolist()
    hits = (out["scores"].argmax(1).cpu() == target).tolist()
    return {"itc_r1": interval(hits_itc), "r1": interval(hits), **out}


# Prompt templates for zero-shot classification with the course's CLIP (prompt ensembling, CLIP
# paper §3.1.4). They follow the caption styles the model was trained on; the class name brings its
# own article ("an orange star"), see `class_prompts`.
CLIP_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "there is {}.",
    "a picture of {}.",
    "one shape: {}.",
    "an image with {}.",
)


def class_prompts(class_names) -> list[str]:
    """"orange star" -> "an orange star": the class names as a caption would write them."""
    check_strings("class_names", class_names)
    return [with_article(name) for name in class_names]


def zero_shot_classifier(model: DualEncoder, class_names: Sequence[str], templates: Sequence[str] = ("{}",),
                         batch_size: int = 256) -> torch.Tensor:
    """Text prototypes for zero-shot classification: (C, E), one unit vector per class.

    Each class name is written into every template ("a picture of a {}."), the K prompts are
    embedded, their unit embeddings averaged and the mean renormalised: prompt ensembling
    (CLIP paper §3.1.4, chapter 02), which averages away the wording and keeps the concept.
    Any DualEncoder serves (CLIP; CoCa, ALBEF and BLIP in chapter 07).
    """
    if isinstance(class_names, str) or isinstance(templates, str):
        raise TypeError("class_names and templates must be lists of strings")
    if len(class_names) == 0 or len(templates) == 0:
        raise ValueError(f"need at least one class and one template, got {len(class_names)} and {len(templates)}")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"every template needs a '{{}}' placeholder for the class name, got {bad}")
    check_int("batch_size", batch_size)
    prompts = [t.format(c) for c in class_names for t in templates]  # class-major: C blocks of K
    with torch.no_grad(), eval_mode(model):
        emb = torch.cat([unit_features(model.encode_text(prompts[a:a + batch_size]))
                         for a in range(0, len(prompts), batch_size)])  # (C·K, E)
    emb = rearrange(emb, "(c k) e -> c k e", c=len(class_names))
    return F.normalize(emb.mean(dim=1), dim=-1)  # (C, E)


def zero_shot_logits(model: DualEncoder, images: torch.Tensor, classifier: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    """images (N, 3, H, W), classifier (C, E) from `zero_shot_classifier` → (N, C) logits
    (scaled cosine similarities; softmax over C gives the class probabilities)."""
    check_tensor("images", images, ndim=4, dtype="float")
    check_tensor("classifier", classifier, ndim=2, dtype="float")
    check_int("batch_size", batch_size)
    if classifier.shape[1] != model.config.embed_dim:
        raise ValueError(f"classifier must be (C, {model.config.embed_dim}), got {tuple(classifier.shape)}")
    dev = next(model.parameters()).device
    with torch.no_grad(), eval_mode(model):
        image_emb = torch.cat([unit_features(model.encode_image(images[a:a + batch_size].to(dev)))
                               for a in range(0, len(images), batch_size)])  # (N, E)
        return model.scale() * image_emb @ classifier.to(dev).t()


def classify_zero_shot(model: DualEncoder, data: dict, templates: Sequence[str] = CLIP_TEMPLATES) -> torch.Tensor:
    """(N, C) zero-shot logits on a ShapesBench `classification` set: its class names written as
    captions (`class_prompts`) into every template, then `zero_shot_logits`."""
    classifier = zero_shot_classifier(model, class_prompts(data["class_names"]), templates)
    return zero_shot_logits(model, data["images"], classifier)


def evaluate_zero_shot(model: DualEncoder, data: dict, templates: Sequence[str] = CLIP_TEMPLATES) -> dict:
    """Zero-shot classification on a ShapesBench `classification` set (`classify_zero_shot`), with
    Wilson intervals: the class right ("accuracy"), and separately its colour and its shape right.
    A model that reads colour but not shape scores 100 % on colour and about one in six on shape."""
    predicted = classify_zero_shot(model, data, templates).argmax(1).cpu().tolist()
    classes, labels = data["classes"], data["labels"].tolist()
    return {"accuracy": interval([p == t for p, t in zip(predicted, labels)]),
            "color": interval([classes[p][0] == classes[t][0] for p, t in zip(predicted, labels)]),
            "shape": interval([classes[p][1] == classes[t][1] for p, t in zip(predicted, labels)])}


def attribute_only_retrieval(data: dict, attribute: str) -> Estimate:
    """The image→text R@1 of a reader blind to everything but one attribute, on a ShapesBench
    `retrieval` set: the trivial predictor a retrieval model must beat to show it reads the rest.

    It knows each image's objects' `attribute` ("color" or "shape") and reads only those words of a
    caption. A caption that lists the objects is consistent with an image whose multiset of values
    is exactly the caption's; a relation ("a red circle left of a blue star") with one that has at
    least those values. Among the consistent captions it picks one at random: each image scores
    1 / (number consistent) when its own caption is among them (always, for true captions).
    Returns the mean over images with its bootstrap interval."""
    if attribute not in ("color", "shape"):
        raise ValueError(f"attribute must be 'color' or 'shape', got {attribute!r}")
    if not isinstance(data, dict) or not {"scenes", "captions"} <= set(data):
        raise ValueError("data must be a ShapesBench retrieval set (a dict with 'scenes' and 'captions')")
    vocabulary = set(COLORS if attribute == "color" else SHAPES)

    def values(caption: str) -> dict[str, int]:
        words = [w.strip(".,;:") for w in caption.lower().split()]
        return {v: words.count(v) for v in vocabulary if v in words}

    read = [(values(c), any(r in c for r in RELATIONS)) for c in data["captions"]]
    expected = []
    for i, scene in enumerate(data["scenes"]):
        have = [getattr(o, attribute) for o in scene.objects]
        have = {v: have.count(v) for v in set(have)}
        consistent = [j for j, (bag, relation) in enumerate(read)
                      if (all(have.get(v, 0) >= k for v, k in bag.items()) if relation else bag == have)]
        expected.append(1.0 / len(consistent) if i in consistent else 0.0)
    return interval(expected)
