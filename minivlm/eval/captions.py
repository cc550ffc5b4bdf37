"""Caption evaluation (chapter 06): BLEU-4 and CIDEr-D, equal to the COCO evaluation's, and
`evaluate_captions`, which captions ShapesBench images with any model that has
`caption(images, max_len=..., num_beams=...)` and scores them against every paraphrase of each
scene.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch

from minivlm.data.shapesworld import ShapesWorld
from minivlm.eval.stats import interval
from minivlm.utils import check_int, check_number, check_strings


def caption_tokens(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: "A red circle." -> ["a", "red", "circle"]."""
    if not isinstance(text, str):
        raise TypeError(f"captions must be str, got {type(text).__name__}")
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def ngram_counts(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            gram = tuple(words[i:i + k])
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def _check_captions(candidates, references) -> tuple[list[list[str]], list[list[list[str]]]]:
    if isinstance(candidates, str) or not isinstance(candidates, (list, tuple)) or not candidates:
        raise TypeError(f"candidates must be a non-empty list of strings, got {type(candidates).__name__}")
    if not isinstance(references, (list, tuple)) or len(references) != len(candidates):
        n = len(references) if isinstance(references, (list, tuple)) else type(references).__name__
        raise ValueError(f"need one list of references per candidate: {len(candidates)} candidates, references {n}")
    refs = []
    for i, r in enumerate(references):
        if isinstance(r, str) or not isinstance(r, (list, tuple)) or not r:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {r!r}")
        refs.append([caption_tokens(x) for x in r])
    return [caption_tokens(c) for c in candidates], refs


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> float:
    """Corpus BLEU-n: the geometric mean of the clipped n-gram precisions (1 to n), counted over
    the whole corpus, times the brevity penalty exp(1 − r/c) when the candidates' total length c
    is below r, the sum over candidates of the reference length closest to each (ties: the
    shorter). The tiny constants are the COCO evaluation's, so that a zero count gives a tiny
    score, not a crash."""

    check_int("n", n)
    cands, refs = _check_captions(candidates, references)
    matched, guessed = [0] * n, [0] * n
    cand_len = ref_len = 0
    for words, ref_words in zip(cands, refs):
        counts = ngram_counts(words, n)
        best: dict[tuple[str, ...], int] = {}  # the most times each n-gram occurs in one reference
        for r in ref_words:
            for gram, c in ngram_counts(r, n).items():
                best[gram] = max(best.get(gram, 0), c)
        for gram, c in counts.items():
            matched[len(gram) - 1] += min(c, best.get(gram, 0))
        for k in range(1, n + 1):
            guessed[k - 1] += max(0, len(words) - k + 1)
        cand_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
    tiny, small = 1e-15, 1e-9
    log_precision = sum(math.log((matched[k] + tiny) / (guessed[k] + small)) for k in range(n)) / n
    ratio = (cand_len + tiny) / (ref_len + small)
    penalty = 1.0 if ratio >= 1 else math.exp(1 - 1 / ratio)
    return penalty * math.exp(log_precision)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D: for n = 1..n, TF-IDF vectors of n-gram counts (IDF from how many images' references
    contain the n-gram, over this corpus), the candidate's vector clipped at the reference's, cosine
    similarity, times a Gaussian penalty on the length difference (sigma 6), averaged over n and
    over the references, times 10. Returns (the corpus mean, the score of each candidate), the
    latter for `interval`. As the COCO evaluation, the length compared is the number of bigrams.
    A corpus of one image is a ValueError: every IDF is 0 there, and so would be every score."""

    check_int("n", n)
    check_number("sigma", sigma, 0, math.inf, lo_open=True)
    cands, refs = _check_captions(candidates, references)
    if len(refs) < 2:  # the IDF of every n-gram is log(1 / 1) = 0: every caption would score 0
        raise ValueError(f"CIDEr-D needs a corpus of at least 2 images (its IDF weighs each n-gram by the images "
                         f"whose references lack it), got candidates and references for {len(refs)}")
    doc_freq: dict[tuple[str, ...], int] = {}
    for ref_words in refs:
        for gram in {g for r in ref_words for g in ngram_counts(r, n)}:
            doc_freq[gram] = doc_freq.get(gram, 0) + 1
    log_images = math.log(len(refs))

    def tfidf(words):
        vec: list[dict] = [{} for _ in range(n)]
        for gram, c in ngram_counts(words, n).items():
            vec[len(gram) - 1][gram] = c * (log_images - math.log(max(1, doc_freq.get(gram, 0))))
        norms = [math.sqrt(sum(v * v for v in d.values())) for d in vec]
        return vec, norms, max(0, len(words) - 1)

    scores = []
    for words, ref_words in zip(cands, refs):
        vec_c, norm_c, len_c = tfidf(words)
        total = 0.0
        for r in ref_words:
            vec_r, norm_r, len_r = tfidf(r)
            penalty = math.exp(-((len_c - len_r) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                dot = sum(min(v, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, v in vec_c[k].items())
                if norm_c[k] and norm_r[k]:
                    dot /= norm_c[k] * norm_r[k]
                total += dot * penalty
        scores.append(10.0 * total / n / len(ref_words))
    return sum(scores) / len(scores), scores


def true_caption_rate(captions: Sequence[str], scenes: Sequence) -> list[bool]:
    """Whether each caption is exactly one of its scene's true captions (a paraphrase or a true
    relation): a strict measure of a captioner's correctness on ShapesWorld."""
    check_strings("captions", captions)
    if len(captions) != len(scenes):
        raise ValueError(f"need one scene per caption, got {len(captions)} captions and {len(scenes)} scenes")
    return [c in ShapesWorld.true_captions(s) for c, s in zip(captions, scenes)]


def caption_references(scenes: Sequence) -> list[list[str]]:
    """The references of a ShapesWorld image: every paraphrase of its caption (six)."""
    return [ShapesWorld.captions(s) for s in scenes]


def evaluate_captions(model, images: torch.Tensor, scenes: Sequence, num_beams: int = 1,
                      max_len: int | None = None) -> dict:
    """Caption images (greedy, or beam search) and score them against every paraphrase of their
    scene: CIDEr-D (with a bootstrap interval over images, and each image's score for paired
    comparisons), BLEU-4 (corpus), and the share of captions exactly true of their scene (Wilson
    interval)."""
    captions = model.caption(images, max_len=max_len, num_beams=num_beams)
    refs = caption_references(scenes)
    cider, per_image = cider_d(captions, refs)
    return {"captions": captions, "cider": interval(per_image), "cider_per_image": per_image, "cider_corpus": cider,
            "bleu4": bleu(captions, refs), "true": interval(true_caption_rate(captions, scenes))}
