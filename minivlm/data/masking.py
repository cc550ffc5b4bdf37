"""Masking for masked-language modelling (chapter 03; reused by ALBEF, VLMo, BLIP, BEiT-3).

BERT's recipe, which ViLT keeps: choose each real word with probability `prob` (15 %); of the
chosen, 80 % become `<mask>`, 10 % a random word, 10 % stay as they are. The model must predict
the original word at every chosen position, so it cannot learn that only `<mask>` positions
matter (the random and kept 10 %s make it model every word). Special tokens (`<bos>`, `<eos>`,
`<pad>` ...) are never chosen: predicting them teaches nothing and padding is not text.
"""
from __future__ import annotations

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
