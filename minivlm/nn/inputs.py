"""The input boundary the BERT-style models share (ViLT in chapter 03, ALBEF in chapter 04, ...):
the course tokenizer's ids filled into a config and the checks every config shares, "<bos> words
<eos>" batches from strings, and images in [0, 1] normalised by the config's mean and std."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Sequence

import torch
from torch import nn

from minivlm.data.tokenizer import Tokenizer
from minivlm.nn.blocks import ACTIVATIONS
from minivlm.nn.heads import check_temperature
from minivlm.nn.text import check_token_ids
from minivlm.utils import check_int, check_number, check_range, check_shape, check_strings, check_tensor

# The special tokens a config may name, and where they come from in the course tokenizer. A model
# with more (BLIP's [ENC] and [DEC]) names its own: fill_token_ids(config, enc_id="<extra_0>").
SPECIAL_TOKENS = {"pad_id": "<pad>", "mask_id": "<mask>", "bos_id": "<bos>", "eos_id": "<eos>"}

# Fields most configs share, checked wherever a config has them: sizes (ints >= 1), and numbers
# with their ranges (check_number's arguments); a contrastive head's temperature by check_temperature.
SHARED_INTS = ("image_size", "patch_size", "dim", "heads", "vocab_size", "max_text_len")
SHARED_NUMBERS = {
    "mlp_ratio": dict(lo=0, hi=math.inf, lo_open=True),
    "eps": dict(lo=0, hi=1.0, lo_open=True),
    "dropout": dict(lo=0, hi=1, hi_open=True),
    "pos_init_std": dict(lo=0, hi=math.inf),
    "label_smoothing": dict(lo=0.0, hi=1.0, hi_open=True),
}


def token_id_fields(config) -> list[str]:
    """The config's token-id fields (pad_id, mask_id, ...), in declaration order."""
    return [f.name for f in fields(config) if f.name.endswith("_id")]


def fill_token_ids(config, **tokens: str) -> None:
    """Set config.vocab_size and every token id left as None from the course tokenizer: the
    SPECIAL_TOKENS by their names there, any other id field by the token given in `tokens`."""
    tokens = {**SPECIAL_TOKENS, **tokens}
    names = token_id_fields(config)
    if config.vocab_size is not None and all(getattr(config, name) is not None for name in names):
        return

    tok = Tokenizer.from_world()
    if config.vocab_size is None:
        config.vocab_size = len(tok)
    for name in names:
        if getattr(config, name) is None:
            setattr(config, name, tok.id(tokens[name]))


def check_encoder_config(config, ints: tuple[str, ...] = ()) -> None:
    """What every BERT/ViT-style config must satisfy, for the fields it has: SHARED_INTS and the
    named `ints` >= 1, image_size divisible by patch_size, dim by heads, room for "<bos> word
    <eos>", a known activation, SHARED_NUMBERS in their ranges, every field declared `bool` True
    or False, at least 2 distinct answers, token ids in the vocabulary, and 3 image means and stds
    (answers and image statistics are stored as tuples)."""
    for name in [n for n in SHARED_INTS if hasattr(config, n)] + list(ints):
        check_int(name, getattr(config, name))
    if config.image_size % config.patch_size:
        raise ValueError(f"image_size={config.image_size} must be divisible by patch_size={config.patch_size}")
    if config.dim % config.heads:
        raise ValueError(f"dim={config.dim} must be divisible by heads={config.heads}")
    if hasattr(config, "max_text_len") and config.max_text_len < 3:
        raise ValueError(f"max_text_len must be >= 3 (<bos>, a word, <eos>), got {config.max_text_len}")
    if config.act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {config.act!r}")
    for name, bounds in SHARED_NUMBERS.items():
        if hasattr(config, name):
            check_number(name, getattr(config, name), **bounds)
    if hasattr(config, "temp"):  # a contrastive head's initial temperature and its clamp (nn/heads.py)
        check_temperature("temp", config.temp, "max_scale", config.max_scale)
    for f in fields(config):
        if f.type in (bool, "bool") and not isinstance(getattr(config, f.name), bool):
            raise TypeError(f"{f.name} must be True or False, got {getattr(config, f.name)!r}")
    if hasattr(config, "answers"):  # a VQA classifier's classes
        config.answers = tuple(check_strings("answers", config.answers))
        if len(config.answers) < 2 or len(set(config.answers)) != len(config.answers):
            raise ValueError(f"answers must be at least 2 distinct strings, got {config.answers!r}")
    check_ids_in_vocab(config)
    check_image_stats(config)


def check_ids_in_vocab(config) -> None:
    """Every token-id field (pad_id, mask_id, ...) an int in [0, vocab_size)."""
    for name in token_id_fields(config):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < config.vocab_size:
            raise ValueError(f"{name} must lie in [0, {config.vocab_size - 1}], got {value!r}")


def check_image_stats(config) -> None:
    """image_mean / image_std: 3 numbers each, std > 0; stored as tuples."""
    if len(config.image_mean) != 3 or len(config.image_std) != 3 or min(config.image_std) <= 0:
        raise ValueError(f"image_mean/image_std must be 3 values (std > 0), got {config.image_mean}, {config.image_std}")
    config.image_mean, config.image_std = tuple(config.image_mean), tuple(config.image_std)


def register_image_stats(module: nn.Module, config) -> None:
    """Buffers image_mean / image_std (1, 3, 1, 1) from the config; not saved with the weights
    (they are part of the config)."""
    module.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)


def check_images(images, image_size: int) -> None:
    """Float (B, 3, image_size, image_size) with values in [0, 1]."""
    check_tensor("images", images, ndim=4, dtype="float")
    check_shape("images", images, [None, 3, image_size, image_size])
    check_range("images", images, 0.0, 1.0)


def check_text(ids: torch.Tensor, attention_mask: torch.Tensor | None, config) -> torch.Tensor:
    """Token ids (B, T) of the config's vocabulary, T <= max_text_len, and their attention mask
    (B, T). Returns the mask (None: every token real, all True)."""
    check_token_ids(ids, config.vocab_size, config.max_text_len, "max_text_len")
    if attention_mask is None:
        attention_mask = torch.ones_like(ids, dtype=torch.bool)
    check_tensor("attention_mask", attention_mask, ndim=2)
    if attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
    return attention_mask


class TextInputs:
    """Mixin for an nn.Module with `config.vocab_size`, `config.max_text_len` and an attribute
    `tokenizer` (None: the course tokenizer, fetched on first use)."""

    def get_tokenizer(self):
        if self.tokenizer is None:

            tok = Tokenizer.from_world()
            if len(tok) != self.config.vocab_size:
                name = type(self).__name__
                raise ValueError(f"this model (vocab_size={self.config.vocab_size}) was not built for the course "
                                 f"tokenizer (vocab {len(tok)}): pass token ids, or a tokenizer to "
                                 f"{name}(config, tokenizer=...)")
            self.tokenizer = tok
        return self.tokenizer

    def ids_and_mask(self, texts, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) with their attention mask (None: every token real), or B strings
        tokenised with theirs → (ids (B, T), attention_mask (B, T) bool)."""
        if isinstance(texts, torch.Tensor):
            if attention_mask is None:
                attention_mask = torch.ones_like(texts, dtype=torch.bool)
            check_tensor("attention_mask", attention_mask, ndim=2)
            if attention_mask.shape != texts.shape:
                raise ValueError(f"attention_mask must have shape {tuple(texts.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            return texts, attention_mask.bool()
        if attention_mask is not None:
            raise ValueError("attention_mask is only for token ids; strings are tokenised with their own mask")
        ids, mask = self.tokenize(texts)
        return ids, mask.bool()

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """list[str] → ids (B, T), attention_mask (B, T): "<bos> words <eos>", right-padded, on
        the model's device. Unknown words become <unk>; a text longer than max_text_len is an error."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts \
                or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a non-empty list of strings, got {type(texts).__name__}"
                            + (" (one string: wrap it in a list)" if isinstance(texts, str) else ""))
        ids, mask = self.get_tokenizer()(list(texts), self.config.max_text_len, add_bos=True, add_eos=True,
                                         truncation=False)
        dev = next(self.parameters()).device
        return ids.to(dev), mask.to(dev)


def check_pairs(images, texts, batch_size, name: str = "texts") -> None:
    """Inputs of a pairwise scorer (ITM's match probability): images (B, 3, H, W) float, a list
    of B strings called `name`, and a batch size >= 1."""
    check_tensor("images", images, ndim=4, dtype="float")
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if len(images) != len(texts) or not len(texts):
        raise ValueError(f"need as many {name} as images (at least one), got images={len(images)}, "
                         f"{name}={len(texts)}")
    check_int("batch_size", batch_size)
