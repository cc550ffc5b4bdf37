"""Vector quantisation: the visual tokenizer's codebook (chapter 08, BEiT-3's VQ-KD tokenizer from
BEiT-2; reused in chapter 21).

A vector quantiser keeps a codebook of K vectors e_0 … e_{K-1} and replaces each input vector z by
its nearest code,

    k = argmin_j ||z − e_j||²,        q = e_k,

so that a continuous feature map becomes a grid of integer *visual tokens* k that a masked-image
model can predict with a cross-entropy loss, exactly as a language model predicts word ids.

Three things make this trainable (VQ-VAE, van den Oord et al., 2017):

- **Straight-through estimator.** argmin has no gradient. The output is written
  q_st = z + sg[q − z] (sg = stop-gradient, `.detach()`): its value is q, but its gradient with
  respect to z is the identity, so whatever gradient the decoder sends to q is copied to z.
- **Codebook loss** ||sg[z] − q||² pulls the chosen codes towards the inputs assigned to them
  (only the codebook gets its gradient).
- **Commitment loss** β·||z − sg[q]||² pulls the encoder's outputs towards their codes (only z gets
  its gradient), so they do not drift away from the codebook; β = 0.25 in VQ-VAE and BEiT-2.

Instead of the codebook loss, the codes can move by an exponential moving average of the inputs
assigned to them (VQ-VAE-2, and BEiT-2's tokenizer): per code, the EMA of its count n_j and of the
sum s_j of its inputs, and e_j = s_j / n_j. This is k-means run online, one mini-batch at a time;
the counts are Laplace-smoothed, n_j ← (n_j + ε) / (n + K·ε) · n, so that a code with no input
never divides by zero.

Why BEiT-2 normalises: with plain Euclidean distance a few codes near the data win almost every
input and the rest are never chosen again ("dead codes"; low codebook usage). BEiT-2 (after
ViT-VQGAN) L2-normalises both the inputs and the codes before the search, so the distance is
||ẑ − ê||² = 2 − 2·cos(z, e): only the direction matters, the codes live on the unit sphere where
no code can sit far from the data, and most of the 8192 codes stay in use. `normalize=False`
gives plain VQ-VAE. `perplexity` (exp of the entropy of code usage: K when all codes are used
equally, 1 when one code takes everything) and `codebook_stats` measure the usage.

Shapes: z is (..., D) with any leading shape, e.g. (B, N, D) patch features; `indices` has the
leading shape (B, N); `quantized` has z's shape.

    vq = VectorQuantizer(codebook_size=512, dim=32)
    out = vq(features)                                    # features (B, N, 32)
    out.indices                                           # (B, N) visual tokens in [0, 512)
    loss = reconstruction_loss(decoder(out.quantized)) + out.loss
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.utils import check_dtype, check_int, check_number, check_tensor


class Quantized(NamedTuple):
    """What `VectorQuantizer.forward` returns for an input z of shape (..., D)."""

    quantized: torch.Tensor   # (..., D) the chosen codes; gradient passes straight through to z
    indices: torch.Tensor     # (...) long, the chosen code per vector
    loss: torch.Tensor        # () codebook + β·commitment loss (commitment only with EMA)
    perplexity: torch.Tensor  # () exp(entropy of this batch's code usage), between 1 and K
    usage: torch.Tensor       # (K,) long, how many vectors of this batch chose each code


def _perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(−Σ p log p) with p = counts / total; 0·log 0 counts as 0 (xlogy)."""
    p = counts.double() / counts.sum()
    return torch.exp(-torch.xlogy(p, p).sum())


class VectorQuantizer(nn.Module):
    """(..., dim) vectors → their nearest of `codebook_size` codes, with a straight-through gradient.

    codebook_size: K, the number of codes (visual-token vocabulary; 8192 in BEiT-2).
    dim: D, the width of each code and input vector.
    beta: weight β of the commitment loss.
    normalize: L2-normalise inputs and codes before the search (cosine distance, BEiT-2's VQ-KD);
        False gives Euclidean VQ as in VQ-VAE.
    ema: None trains the codebook by gradient (the codebook loss); a decay in (0, 1) (0.99 in
        BEiT-2) moves the codes by exponential moving averages in training mode instead, and the
        codebook is then a buffer, not a parameter.
    eps: the Laplace-smoothing constant of the EMA cluster sizes.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, normalize: bool = True,
                 ema: float | None = None, eps: float = 1e-5):
        super().__init__()
        check_int("codebook_size", codebook_size, lo=2)  # one code would carry no information
        check_int("dim", dim)
        check_number("beta", beta, lo=0)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
        if ema is not None:
            check_number("ema", ema, lo=0, hi=1, lo_open=True, hi_open=True)
        check_number("eps", eps, lo=0, lo_open=True)
        self.codebook_size, self.dim, self.beta = codebook_size, dim, float(beta)
        self.normalize, self.ema, self.eps = normalize, ema, float(eps)
        codebook = torch.randn(codebook_size, dim)  # (K, D)
        if ema is None:
            self.codebook = nn.Parameter(codebook)
        else:
            # Nothing here is trained by the optimizer: buffers are saved and moved with the module
            # but are not parameters. Each code starts as if it had been assigned one input, itself,
            # so that codebook = embed_sum / cluster_size holds from the first step.
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,) EMA of counts
            self.register_buffer("embed_sum", codebook.clone())  # (K, D) EMA of summed inputs

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, "
                f"normalize={self.normalize}, ema={self.ema}")

    def codes(self) -> torch.Tensor:
        """The codebook as the search sees it, (K, D): unit vectors when normalize=True."""
        return F.normalize(self.codebook, dim=-1) if self.normalize else self.codebook

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Integer indices (...) in [0, K) → their code vectors (..., D), e.g. to decode predicted
        visual tokens."""
        check_tensor("indices", indices, dtype="int")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size - 1}], "
                             f"got values in [{int(indices.min())}, {int(indices.max())}]")
        return F.embedding(indices.long(), self.codes())

    def _check_input(self, z: torch.Tensor) -> None:
        check_tensor("z", z, dtype="float")
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}), got {tuple(z.shape)}")
        if z.numel() == 0:
            raise ValueError(f"z has no vectors to quantise (shape {tuple(z.shape)})")
        check_dtype("z", z, self.codebook.dtype)
        if not bool(torch.isfinite(z).all()):  # every distance would be NaN: argmin picks code 0
            raise ValueError(f"z must be finite, got {int((~torch.isfinite(z)).sum())} NaN/inf value(s) of "
                             f"{z.numel()} (shape {tuple(z.shape)})")

    def forward(self, z: torch.Tensor) -> Quantized:
        """z (..., D) float → Quantized(quantized (..., D), indices (...), loss (), perplexity (),
        usage (K,)). In training mode with ema set, also moves the codes (see the module docstring)."""
        self._check_input(z)
        flat = z.reshape(-1, self.dim)  # (M, D), M = number of vectors
        if self.normalize:
            flat = F.normalize(flat, dim=-1)
        codes = self.codes()  # (K, D)

        # ||z − e||² = ||z||² − 2 z·e + ||e||²: one (M, K) matmul instead of an (M, K, D) tensor of
        # differences. ||z||² is the same for every code, but kept so these are true distances.
        with torch.no_grad():
            distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t()
                         + codes.pow(2).sum(1))  # (M, K)
            indices = distances.argmin(dim=1)  # (M,)
        q = codes[indices]  # (M, D), differentiable w.r.t. the codebook

        commitment = F.mse_loss(flat, q.detach())  # moves z only
        if self.ema is None:
            loss = F.mse_loss(q, flat.detach()) + self.beta * commitment  # codebook term moves codes only
        else:
            loss = self.beta * commitment  # the EMA update below replaces the codebook term
            if self.training:
                self._ema_update(flat.detach(), indices)

        usage = torch.bincount(indices, minlength=self.codebook_size)  # (K,)
        q = q.view_as(z)
        # Straight-through: the value is q, the gradient w.r.t. z is the identity. It is copied to
        # the raw z (not to the normalised one), so the encoder sees the decoder's gradient unchanged.
        quantized = z + (q - z).detach()
        return Quantized(quantized, indices.view(z.shape[:-1]), loss, _perplexity(usage).to(z.dtype), usage)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """One online k-means step: EMA of each code's count and input sum, code = sum / count."""
        decay = self.ema
        one_hot = F.one_hot(indices, self.codebook_size).to(flat.dtype)  # (M, K)
        self.cluster_size.mul_(decay).add_(one_hot.sum(0), alpha=1 - decay)  # (K,)
        self.embed_sum.mul_(decay).add_(one_hot.t() @ flat, alpha=1 - decay)  # (K, D)
        n = self.cluster_size.sum()
        # Laplace smoothing: the total count is unchanged, and no code's count is ever zero.
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, counts: torch.Tensor,
                     generator: torch.Generator | None = None) -> int:
        """Re-initialise every code whose count is 0 to a randomly chosen input vector of z (..., D);
        return how many codes were restarted.

        A dead code is never chosen, so neither its gradient nor its EMA ever moves it back towards
        the data; placing it on a real input gives it a chance to win some. Call it every few
        hundred steps with the usage counts accumulated since the last call (sum of `usage`).
        """
        self._check_input(z)
        check_tensor("counts", counts)
        if counts.shape != (self.codebook_size,):
            raise ValueError(f"counts must have shape ({self.codebook_size},), got {tuple(counts.shape)}")
        dead = (counts == 0).nonzero().squeeze(1)  # (n_dead,)
        if len(dead) == 0:
            return 0
        flat = z.detach().reshape(-1, self.dim)
        rows = torch.randint(len(flat), (len(dead),), generator=generator).to(flat.device)
        new = flat[rows].to(self.codebook.dtype)  # (n_dead, D)
        self.codebook[dead] = new
        if self.ema is not None:  # the EMA state must agree, or the next update pulls the code back
            self.embed_sum[dead] = new
            self.cluster_size[dead] = 1.0
        return len(dead)


def codebook_stats(counts: torch.Tensor) -> dict:
    """Codebook usage from counts (K,) accumulated over many batches (sum of `Quantized.usage`):
    {"perplexity": exp of the usage entropy (K at best), "dead": codes never used,
    "used_fraction": fraction of the K codes used at least once}."""
    check_tensor("counts", counts, ndim=1)
    if counts.numel() == 0:
        raise ValueError("counts must have one entry per code, got an empty tensor")
    if (counts < 0).any():
        raise ValueError(f"counts must be >= 0, got a minimum of {counts.min().item()}")
    if counts.sum() == 0:
        raise ValueError("counts are all zero: no vector has been quantised yet")
    dead = int((counts == 0).sum())
    return {"perplexity": float(_perplexity(counts)), "dead": dead,
            "used_fraction": (counts.numel() - dead) / counts.numel()}
