"""Masking for masked-language modelling (chapter 03; reused by ALBEF, VLMo, BLIP, BEiT-3) and for
masked image modelling (chapter 05: `random_mask`, `block_mask`; BEiT-3 in chapter 08).

BERT's recipe, which ViLT keeps: choose each real word with probability `prob` (15 %); of the
chosen, 80 % become `<mask>`, 10 % a random word, 10 % stay as they are. The model must predict
the original word at every chosen position, so it cannot learn that only `<mask>` positions
matter (the random and kept 10 %s make it model every word). Special tokens (`<bos>`, `<eos>`,
`<pad>` ...) are never chosen: predicting them teaches nothing and padding is not text.
"""
from __future__ import annotations

import math

import torch

from minivlm.utils import check_tensor

IGNORE_INDEX = -100  # a label the cross-entropy skips (PyTorch's default ignore_index)


def mlm_mask(
    ids: torch.Tensor,
    tokenizer,
    prob: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) → (inputs (B, T), labels (B, T)).

    inputs: ids with the chosen words replaced (80 % `<mask>`, 10 % a random non-special word,
    10 % unchanged); labels: the original id at chosen positions, IGNORE_INDEX elsewhere.
    tokenizer: gives `mask_id`, the special ids (never chosen) and the vocabulary size.
    """
    check_tensor("ids", ids, ndim=2, dtype="int")
    for name, value in (("prob", prob), ("mask_fraction", mask_fraction), ("random_fraction", random_fraction)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if mask_fraction + random_fraction > 1.0:
        raise ValueError(f"mask_fraction + random_fraction must be <= 1, got {mask_fraction} + {random_fraction}")
    vocab = len(tokenizer)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"ids must lie in [0, {vocab - 1}], got values in [{int(ids.min())}, {int(ids.max())}]")
    special = torch.tensor(sorted(tokenizer._special_ids), device=ids.device)
    words = torch.tensor([i for i in range(vocab) if i not in tokenizer._special_ids], device=ids.device)

    def uniform(shape):
        return torch.rand(shape, generator=generator).to(ids.device)

    maskable = ~torch.isin(ids, special)  # (B, T) real words only: no specials, no padding
    chosen = maskable & (uniform(ids.shape) < prob)  # (B, T)
    # One draw decides what happens to each chosen word: [0, 0.8) mask, [0.8, 0.9) random, else keep.
    fate = uniform(ids.shape)
    to_mask = chosen & (fate < mask_fraction)
    to_random = chosen & (fate >= mask_fraction) & (fate < mask_fraction + random_fraction)
    random_words = words[(uniform(ids.shape) * len(words)).long().clamp(max=len(words) - 1)]

    inputs = ids.clone()
    inputs[to_mask] = tokenizer.mask_id
    inputs[to_random] = random_words[to_random]
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def block_mask(batch_size: int, grid: int, ratio: float = 0.4, min_patches: int = 2, min_aspect: float = 0.3,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """BEiT's block-wise masking for masked image modelling (chapter 05; reused by BEiT-3, chapter 08).

    Masking single patches at random is too easy on images: a masked patch is copied from its
    neighbours. BEiT masks rectangles instead: draw a block of random area (min_patches up to
    what is still needed) and aspect ratio (in [min_aspect, 1 / min_aspect], log-uniform), place it
    at random, and repeat until at least `ratio` of the grid × grid patches are masked.

    Returns a bool mask (batch_size, grid · grid), True = masked, in the row-major patch order
    of `minivlm.nn.vit.patchify`. Every mask is a union of rectangles with at least
    ceil(ratio · grid²) patches; a block may overshoot that by a few patches.
    """
    for name, value in (("batch_size", batch_size), ("grid", grid), ("min_patches", min_patches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value, lo in (("ratio", ratio, 0.0), ("min_aspect", min_aspect, 1e-3)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo < value <= 1.0:
            raise ValueError(f"{name} must be a number in ({lo}, 1], got {value!r}")
    total = grid * grid
    target = math.ceil(ratio * total - 1e-9)  # 0.07 · 100 is 7.000000000000001 in floats

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    def randint(n: int) -> int:  # in [0, n)
        return int(torch.randint(n, (), generator=generator))

    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    out = torch.zeros(batch_size, grid, grid, dtype=torch.bool)
    for b in range(batch_size):
        mask = out[b]
        while int(mask.sum()) < target:
            needed = target - int(mask.sum())
            area = uniform(min(min_patches, needed), needed)
            aspect = math.exp(uniform(log_lo, log_hi))
            h = max(1, min(grid, round(math.sqrt(area * aspect))))
            w = max(1, min(grid, round(math.sqrt(area / aspect))))
            top, left = randint(grid - h + 1), randint(grid - w + 1)
            mask[top:top + h, left:left + w] = True
    return out.view(batch_size, total)


def random_mask(batch_size: int, grid: int, ratio: float = 0.4, generator: torch.Generator | None = None) -> torch.Tensor:
    """MAE's and SimMIM's masking: in each image, exactly ceil(ratio · grid²) patches chosen
    uniformly at random. Returns a bool mask (batch_size, grid · grid), True = masked, in the
    row-major patch order of `minivlm.nn.vit.patchify` (the same layout as `block_mask`)."""
    for name, value in (("batch_size", batch_size), ("grid", grid)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    total = grid * grid
    k = math.ceil(ratio * total - 1e-9)
    chosen = torch.rand(batch_size, total, generator=generator).argsort(dim=1)[:, :k]  # (B, k) a random k per image
    return torch.zeros(batch_size, total, dtype=torch.bool).scatter_(1, chosen, True)
