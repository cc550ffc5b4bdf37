"""Intervals for every measured number (chapter 00 introduces them): Wilson intervals for a share
of hits, bootstrap intervals for any other statistic, and perplexity with its interval (chapter 09).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


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


def to_record(e: Estimate) -> dict:
    """An Estimate as a zoo manifest stores it: value, interval and sample size, rounded."""
    return {"value": round(e.value, 4), "low": round(e.low, 4), "high": round(e.high, 4), "n": e.n}
