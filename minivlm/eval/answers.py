"""Answer and matching evaluation: VQA accuracy with its answer normalisation (chapter 00), VQA
and ITM on ShapesBench sets (ViLT, chapter 03), ITM against hard negatives one fact away (ALBEF,
chapter 04). Any model with `answer(images, questions)` or `match_probability(images, captions)`
is evaluated the same way.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from minivlm.data.pairs import oracle_regions
from minivlm.eval.stats import interval
from minivlm.utils import check_keys, check_same_length, check_strings, check_tensor

_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, number words -> digits: "Two." -> "2"."""
    if not isinstance(text, str):
        raise TypeError(f"answers must be str, got {type(text).__name__}")
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to the answer after `normalize_answer` (exact match)."""
    hits = answer_hits(predictions, answers)
    return sum(hits) / len(hits)


def answer_hits(predictions: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """Per-question correctness behind `vqa_accuracy` (for intervals and per-kind breakdowns)."""
    if not isinstance(predictions, (list, tuple)) or not isinstance(answers, (list, tuple)):
        raise TypeError("predictions and answers must be lists of str")
    if len(predictions) != len(answers):
        raise ValueError(f"predictions and answers must have the same length, got {len(predictions)} "
                         f"and {len(answers)}")
    if not answers:
        raise ValueError("answers must not be empty")
    hits = []
    for p, a in zip(predictions, answers):
        p, a = normalize_answer(p), normalize_answer(a)
        hits.append(bool(a) and p == a)  # an answer that normalises to nothing ("the") never matches
    return hits


def answer_prior(answers: Sequence[str], kinds: Sequence[str]) -> dict[str, str]:
    """The blind baseline of VQA: for each question kind, its most frequent answer in `answers`
    (training data). A model that never looks at the image can reach this (chapter 03)."""
    check_strings("answers", answers)
    check_strings("kinds", kinds)
    if len(answers) != len(kinds) or not answers:
        raise ValueError(f"answers and kinds must be non-empty and of one length, got {len(answers)} and {len(kinds)}")
    counts: dict[str, dict[str, int]] = {}
    for a, k in zip(answers, kinds):
        counts.setdefault(k, {})
        counts[k][a] = counts[k].get(a, 0) + 1
    # ties broken by the answer's text, so the baseline does not depend on dict order
    return {k: min(c, key=lambda a: (-c[a], a)) for k, c in counts.items()}


def evaluate_hard_itm(model, data: dict) -> dict:
    """ITM on a ShapesBench `hard_itm` set: each image with its true caption and a caption one
    fact away. accuracy: the head says "match" (P > 0.5) for the true caption and "no match"
    for the negative, over 2N decisions; pair_accuracy: P(true) > P(negative), over N images
    (the only one a dual encoder like CLIP can be given: compare similarities). Both with
    intervals, overall and per kind (colour, shape, size, relation)."""
    _check_set(data, ("images", "captions", "kinds"), "ShapesBench.hard_itm")
    n = len(data["captions"])
    if any(not isinstance(c, (list, tuple)) or len(c) != 2 for c in data["captions"]):
        raise ValueError("data['captions'] must hold a (true caption, negative) pair per image")
    images = data["images"]
    p_true = model.match_probability(images, [c[0] for c in data["captions"]])
    p_neg = model.match_probability(images, [c[1] for c in data["captions"]])
    decisions = torch.cat([p_true > 0.5, p_neg <= 0.5]).tolist()
    pairs = (p_true > p_neg).tolist()
    per_kind = {}
    for kind in dict.fromkeys(data["kinds"]):
        idx = [i for i in range(n) if data["kinds"][i] == kind]
        per_kind[kind] = interval([pairs[i] for i in idx])
    return {"accuracy": interval(decisions), "pair_accuracy": interval(pairs), "per_kind": per_kind,
            "p_true": p_true.cpu(), "p_negative": p_neg.cpu()}


def evaluate_vqa(model, data: dict) -> dict:
    """VQA accuracy on a ShapesBench `vqa` set, overall and per question kind, with intervals.
    Returns dict(predictions, hits, overall: Estimate, per_kind: {kind: Estimate})."""
    _check_set(data, ("images", "questions", "answers", "kinds"), "ShapesBench.vqa")
    predictions = model.answer(*_eval_inputs(model, data, "questions"))
    hits = answer_hits(predictions, data["answers"])
    per_kind = {}
    for kind in dict.fromkeys(data["kinds"]):
        per_kind[kind] = interval([h for h, k in zip(hits, data["kinds"]) if k == kind])
    return {"predictions": predictions, "hits": hits, "overall": interval(hits), "per_kind": per_kind}


def evaluate_itm(model, data: dict) -> dict:
    """ITM accuracy on a ShapesBench `itm` set (a pair counts as "match" when P(match) > 0.5).
    Works for any model with `match_probability(images, captions)` (ViLT, ALBEF)."""
    _check_set(data, ("images", "captions", "labels"), "ShapesBench.itm")
    labels = data["labels"]
    check_tensor("data['labels']", labels, ndim=1, dtype="int")
    if len(labels) != len(data["captions"]) or (len(labels) and not bool(((labels == 0) | (labels == 1)).all())):
        raise ValueError(f"data['labels'] must hold a 0 or 1 per caption ({len(data['captions'])}), got "
                         f"{len(labels)} labels with values {sorted(set(labels.tolist()))[:5]}")
    prob = model.match_probability(*_eval_inputs(model, data, "captions"))
    hits = ((prob > 0.5).long().cpu() == labels.cpu()).tolist()
    return {"probability": prob.cpu(), "hits": hits, "accuracy": interval(hits)}


def _check_set(data, keys: tuple[str, ...], maker: str) -> None:
    """A ShapesBench set: a dict with `keys`, the text lists of strings, one entry per image."""
    check_keys("data", data, keys, maker)
    check_tensor("data['images']", data["images"], ndim=4, dtype="float")
    for key in ("questions", "answers", "kinds"):
        if key in keys:
            check_strings(f"data[{key!r}]", data[key])
    check_same_length(**{f"data[{k!r}]": data[k] for k in keys if k != "labels"})


def _eval_inputs(model, data: dict, texts: str) -> tuple:
    """(images, texts) of a ShapesBench set on the model's device, plus (boxes, box_mask), the
    oracle boxes, for a regions-mode ViLT. Any model with `match_probability(images, texts)`
    (ALBEF, chapter 04) can be evaluated the same way."""
    dev = next(model.parameters()).device
    if getattr(model.config, "visual", "patches") != "regions":
        return data["images"].to(dev), data[texts]
    check_keys("data", data, ("scenes",), "ShapesBench (a regions-mode model reads the scenes' boxes)")
    boxes, box_mask = oracle_regions(data["scenes"], model.config.max_regions)
    return data["images"].to(dev), data[texts], boxes.to(dev), box_mask.to(dev)
