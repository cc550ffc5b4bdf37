"""ShapesBench metrics (chapter 00 introduces them; chapter 02 first uses them on CLIP).

Zero-shot accuracy, retrieval recall@k, Winoground-style swap scores, VQA accuracy, intervals,
and the caption metrics BLEU and CIDEr-D (chapter 06, equal to the COCO evaluation's). Ties
always count *against* the model: a model that gives every candidate the same score must not
look good, so "correct" means strictly better than every wrong candidate.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from minivlm.utils import check_shape, check_tensor


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


# ----------------------------------------------------------------------------- intervals
# Every headline number of a chapter is printed with its sample size and a 95 % interval
# (COURSE.md, "Measuring honestly"): Wilson's interval for a proportion (an accuracy, a recall),
# a percentile bootstrap for anything else.


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95 % interval [low, high] and the sample size n."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def __str__(self) -> str:
        return self.format()

    def format(self, percent: bool = True) -> str:
        """"71.3 % [68.4, 74.1] (n=1,000)", or plain numbers with percent=False."""
        if percent:
            return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n:,})"
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n:,})"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def wilson(successes: int, n: int, z: float = 1.96) -> Estimate:
    """Wilson's score interval for a proportion successes / n (better than ±z·√(p(1-p)/n) near
    0 and 1, and never outside [0, 1])."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not isinstance(successes, (int, np.integer)) or isinstance(successes, bool) or not 0 <= successes <= n:
        raise ValueError(f"successes must be an int in [0, n={n}], got {successes!r}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), int(n), "wilson")


def bootstrap(values, statistic: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000,
              seed: int = 0) -> Estimate:
    """Percentile-bootstrap 95 % interval of `statistic` over `values` (resampled with replacement)."""
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("values must be finite, got NaN or inf")
    if not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return Estimate(float(statistic(x)), float(lo), float(hi), len(x), "bootstrap")


def interval(values) -> Estimate:
    """95 % interval of the mean of `values`: Wilson when they are all 0/1 (hits of an accuracy),
    a bootstrap otherwise. values: a list, array or tensor of numbers or bools."""
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if np.isin(x, (0.0, 1.0)).all():
        return wilson(int(x.sum()), len(x))
    return bootstrap(x)


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
    if len(answers) != len(kinds) or not answers:
        raise ValueError(f"answers and kinds must be non-empty and of one length, got {len(answers)} and {len(kinds)}")
    counts: dict[str, dict[str, int]] = {}
    for a, k in zip(answers, kinds):
        counts.setdefault(k, {})
        counts[k][a] = counts[k].get(a, 0) + 1
    # ties broken by the answer's text, so the baseline does not depend on dict order
    return {k: min(c, key=lambda a: (-c[a], a)) for k, c in counts.items()}


# ----------------------------------------------------------------------------- perplexity (chapter 09)


def perplexity(token_logprobs, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """exp(−mean log-probability per token) of a language model on some text, with a bootstrap
    interval over documents.

    token_logprobs: one 1-D sequence per document, the natural-log probability the model gave
    each of its tokens (log p(token t | tokens before it), padding left out). The mean runs over
    all tokens of all documents (a long document weighs more), and the interval resamples whole
    documents, since the tokens of one document are not independent. A model that spreads its
    probability evenly over V tokens has perplexity V; one that is always sure and right, 1.
    """
    if isinstance(token_logprobs, torch.Tensor) or not isinstance(token_logprobs, (list, tuple)) \
            or not token_logprobs:
        raise TypeError("token_logprobs must be a non-empty list with one 1-D sequence of log-probabilities per "
                        f"document, got {type(token_logprobs).__name__}")
    docs = []
    for i, lp in enumerate(token_logprobs):
        x = np.asarray(lp.detach().cpu() if isinstance(lp, torch.Tensor) else lp, dtype=np.float64)
        if x.ndim != 1 or len(x) == 0:
            raise ValueError(f"document {i}: log-probabilities must be a non-empty 1-D sequence, got shape {x.shape}")
        if not np.isfinite(x).all() or (x > 1e-6).any():
            raise ValueError(f"document {i}: log-probabilities must be finite and <= 0 (natural log of a "
                             f"probability), got values in [{x.min():.4g}, {x.max():.4g}]")
        docs.append(x)
    sums = np.array([d.sum() for d in docs])
    counts = np.array([len(d) for d in docs], dtype=np.float64)

    def ppl(index: np.ndarray) -> float:
        index = index.astype(int)
        return float(np.exp(-sums[index].sum() / counts[index].sum()))

    return bootstrap(np.arange(len(docs), dtype=np.float64), ppl, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------- caption metrics
# BLEU-4 (Papineni et al., 2002) and CIDEr-D (Vedantam et al., 2015), as the COCO caption
# evaluation computes them (chapter 06 introduces them; every captioning chapter reuses them).
# Both compare a generated caption with the references of its image through n-gram counts.


def caption_tokens(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: "A red circle." -> ["a", "red", "circle"]."""
    if not isinstance(text, str):
        raise TypeError(f"captions must be str, got {type(text).__name__}")
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _ngrams(words: list[str], n: int) -> dict[tuple[str, ...], int]:
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
    from minivlm.utils import check_int

    check_int("n", n)
    cands, refs = _check_captions(candidates, references)
    matched, guessed = [0] * n, [0] * n
    cand_len = ref_len = 0
    for words, ref_words in zip(cands, refs):
        counts = _ngrams(words, n)
        best: dict[tuple[str, ...], int] = {}  # the most times each n-gram occurs in one reference
        for r in ref_words:
            for gram, c in _ngrams(r, n).items():
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
    latter for `interval`. As the COCO evaluation, the length compared is the number of bigrams."""
    from minivlm.utils import check_int, check_number

    check_int("n", n)
    check_number("sigma", sigma, 0, math.inf, lo_open=True)
    cands, refs = _check_captions(candidates, references)
    doc_freq: dict[tuple[str, ...], int] = {}
    for ref_words in refs:
        for gram in {g for r in ref_words for g in _ngrams(r, n)}:
            doc_freq[gram] = doc_freq.get(gram, 0) + 1
    log_images = math.log(len(refs))

    def tfidf(words):
        vec: list[dict] = [{} for _ in range(n)]
        for gram, c in _ngrams(words, n).items():
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
