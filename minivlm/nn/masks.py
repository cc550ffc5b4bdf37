"""Every attention mask in the course, built in one place (chapter 01).

Convention: a boolean mask where **True means "may attend"**. A mask is (Tq, Tk) when it is
the same for every sequence, (B, Tq, Tk) when it differs per sequence, and it may carry a
head axis (B, H, Tq, Tk). `combine` ANDs masks with broadcasting.
"""
from __future__ import annotations

import torch

from minivlm.utils import check_int, check_tensor


def bidirectional(t: int, device=None) -> torch.Tensor:
    """(T, T) all True: every token sees every token (BERT, ViT, the ALBEF fusion encoder)."""
    check_int("t", t, lo=0)
    return torch.ones(t, t, dtype=torch.bool, device=device)


def causal(t: int, device=None, past: int = 0) -> torch.Tensor:
    """(T, T) lower-triangular: token i sees tokens 0..i (GPT, every captioning decoder).

    past > 0 (decoding with a KV cache, chapter 09): the T new tokens follow `past` cached ones,
    so the mask is (T, past + T) and new token i, at position past + i, sees keys 0..past + i.
    """
    check_int("t", t, lo=0)
    check_int("past", past, lo=0)
    return torch.ones(t, past + t, dtype=torch.bool, device=device).tril(diagonal=past)


def prefix(t: int, prefix_len: int | torch.Tensor, device=None) -> torch.Tensor:
    """Prefix-LM mask (SimVLM, UniLM seq2seq): the first `prefix_len` tokens see each other
    in full; every later token sees the whole prefix and the tokens before it.

    prefix_len: an int, giving (T, T), or a LongTensor (B,), giving (B, T, T).
    """
    check_int("t", t, lo=0)
    if isinstance(prefix_len, torch.Tensor):
        check_tensor("prefix_len", prefix_len, ndim=1, dtype="int")
        if (prefix_len < 0).any() or (prefix_len > t).any():
            raise ValueError(f"prefix_len must lie in [0, {t}], got {prefix_len.tolist()}")
        keys = torch.arange(t, device=prefix_len.device)
        in_prefix = keys[None, None, :] < prefix_len[:, None, None]  # (B, 1, T)
        return causal(t, prefix_len.device)[None] | in_prefix
    check_int("prefix_len", prefix_len, lo=0)
    if not 0 <= prefix_len <= t:
        raise ValueError(f"prefix_len must lie in [0, {t}], got {prefix_len}")
    mask = causal(t, device)
    mask[:, :prefix_len] = True
    return mask


def unilm(t: int, source_len: int, device=None) -> torch.Tensor:
    """UniLM's sequence-to-sequence mask: the source segment is bidirectional, the target
    segment is causal and sees all of the source. It is exactly the prefix-LM mask."""
    return prefix(t, source_len, device)


def padding(valid: torch.Tensor) -> torch.Tensor:
    """Key-padding mask from a (B, Tk) bool/0-1 tensor that is True on real tokens.

    Returns (B, 1, Tk): every query may attend to the real keys only.
    """
    check_tensor("valid", valid, ndim=2)
    return valid.bool()[:, None, :]


def combine(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """AND of masks with broadcasting; None entries are ignored (None if all are None)."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m.bool() if out is None else out & m.bool()
    return out


def expand(mask: torch.Tensor, batch: int, tq: int, tk: int) -> torch.Tensor:
    """Validate `mask` and bring it to (B, 1 or H, Tq, Tk) for attention.

    Accepts (Tq, Tk), (B, Tq, Tk), (B, 1, Tk) and (B, H, Tq, Tk) boolean masks.
    """
    check_tensor("mask", mask, dtype="bool")
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    elif mask.ndim != 4:
        raise ValueError(f"mask must have 2, 3 or 4 dims, got shape {tuple(mask.shape)}")
    b, _, q, k = mask.shape
    if b not in (1, batch) or q not in (1, tq) or k != tk:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit batch={batch}, queries={tq}, keys={tk}"
        )
    # A query that may attend to nothing (a padded query in a padded batch, say) would give
    # NaN from the softmax; let it see every key instead. Its output is padding anyway.
    return mask | ~mask.any(dim=-1, keepdim=True)


def media(media_locations: torch.Tensor, n_media: int, tokens_per_media: int, only_immediate: bool = True
          ) -> torch.Tensor:
    """Flamingo's media-location mask for interleaved documents (chapter 11): which visual tokens
    each text token may cross-attend to.

    media_locations (B, T) bool: True at each `<image>` token, where an image sits in the text.
    The visual tokens are (B, n_media · tokens_per_media): image m's tokens are columns
    m·tokens_per_media .. (m + 1)·tokens_per_media - 1, images in the order they occur.

    Token t's image count c(t) = the number of `<image>` tokens at or before t (an `<image>`
    token reads its own image). only_immediate=True (Flamingo): t sees only image c(t)'s tokens;
    False: every image up to c(t). Returns (B, T, n_media · tokens_per_media) bool. A token
    before the first image sees nothing: its row is all False, and the cross-attention must give
    it zero output (a softmax over no keys is not zero; `nn.gated` zeroes those rows).
    """
    check_tensor("media_locations", media_locations, ndim=2)
    check_int("n_media", n_media, lo=0)
    check_int("tokens_per_media", tokens_per_media)
    if not isinstance(only_immediate, bool):
        raise TypeError(f"only_immediate must be True or False, got {only_immediate!r}")
    count = media_locations.bool().long().cumsum(dim=1)  # (B, T): c(t), 0 before the first image
    image_of_column = torch.arange(n_media, device=count.device).repeat_interleave(tokens_per_media) + 1  # (M·K,)
    if only_immediate:
        return count[:, :, None] == image_of_column[None, None, :]
    return count[:, :, None] >= image_of_column[None, None, :]
