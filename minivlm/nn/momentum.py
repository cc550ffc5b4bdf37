"""A momentum (EMA) copy of a model and a queue of its features (chapter 04: ALBEF; reused by
BLIP in chapter 06 and BLIP-2 in chapter 12).

MoCo (He et al., 2020) introduced both to contrastive learning: a *momentum encoder* whose
weights trail the trained encoder's as an exponential moving average,

    θ_m ← m·θ_m + (1 − m)·θ        (m close to 1: 0.995 in ALBEF)

so its features change slowly and stay comparable across many steps; and a *queue* of those
features from recent batches, used as extra negatives without encoding them again. ALBEF also
uses the momentum model as a teacher (momentum distillation, `minivlm.losses.soft_cross_entropy`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.utils import check_tensor


def check_momentum(momentum) -> float:
    """A float in [0, 1]: 0 copies the online weights, 1 freezes the copy."""
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1] (e.g. 0.995), got {momentum!r}")
    return float(momentum)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of `module`: same weights, requires_grad=False on every parameter.
    No optimizer sees it; only `momentum_update` changes it."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place, for every parameter: target ← momentum·target + (1 − momentum)·online.

    The two modules must have the same parameter names and shapes (target = momentum_copy(online)).
    Runs without autograd: the momentum model never receives a gradient.
    """
    m = check_momentum(momentum)
    theirs = dict(online.named_parameters())
    mine = dict(target.named_parameters())
    if mine.keys() != theirs.keys():
        extra, missing = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
        raise ValueError(f"target and online must have the same parameters (target = momentum_copy(online)); "
                         f"only in target: {extra[:3]}, only in online: {missing[:3]}")
    for name, p_target in mine.items():
        p_online = theirs[name]
        if p_target.shape != p_online.shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(p_target.shape)} in target but "
                             f"{tuple(p_online.shape)} in online")
        p_target.mul_(m).add_(p_online.detach(), alpha=1.0 - m)


class FeatureQueue(nn.Module):
    """A first-in-first-out queue of `size` feature vectors of width `dim` (buffers, so they are
    saved with a checkpoint and move with .to(device)).

    It starts full of random unit vectors, as in MoCo and ALBEF. `enqueue` overwrites the oldest
    entries with a batch and moves the pointer on, wrapping around to the start: after k·B
    enqueued rows the queue holds the newest `size` of them. As in ALBEF, the batch size must
    divide `size`, so a batch is never split across the wrap.
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.size, self.dim = size, dim
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # where the next batch goes

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        """Write the rows of x (B, dim) over the oldest B entries."""
        check_tensor("x", x, ndim=2, dtype="float")
        b = x.shape[0]
        if x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        if b < 1 or self.size % b:
            raise ValueError(f"the queue size ({self.size}) must be a multiple of the batch size, got a batch of {b} "
                             f"(choose a queue size divisible by your batch size, e.g. {max(b, 1) * max(1, self.size // max(b, 1))})")
        p = int(self.ptr)
        self.features[p:p + b] = x.detach().to(self.features.dtype)
        self.ptr.fill_((p + b) % self.size)

    def ordered(self) -> torch.Tensor:
        """The entries from oldest to newest: (size, dim)."""
        p = int(self.ptr)
        return torch.cat([self.features[p:], self.features[:p]])

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
