"""The heads several models share, each written once.

* The contrastive head, `ContrastiveHead` (chapter 02: CLIP): an image projection and a text
  projection into one embedding space, and a learned temperature τ. ITC multiplies the cosine
  similarities by `scale()` = 1 / τ. Used by CLIP, ALBEF, VLMo (and BEiT-3 through it), BLIP, CoCa.
* The tied word head, `MLMHead` and `LMHead` (chapter 03: ViLT): BERT's prediction head,

      logits = LayerNorm(act(W·h + b)) · Eᵀ + bias        E: the word-embedding matrix (V, D)

  whose output layer *is* the word embeddings (weight tying: a word's input and output vectors
  are one), plus a bias of its own. `MLMHead` scores masked words (ViLT, ALBEF, VLMo, BEiT-3);
  `LMHead` is the same head scoring next words in BLIP's decoder (chapter 06).

Both are mixins, like `minivlm.nn.inputs.TextInputs`: the model lists them before nn.Module
and calls `init_contrastive_head` / `init_word_head` in its `__init__`, which register the
parameters on the model itself under the names the models have always had (`image_projection`,
`log_scale`, `mlm_transform`, ...). State dicts, the zoo's weight files and the Hugging Face key
maps are therefore unchanged. `check_temperature` checks a config's temperature fields.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.nn.blocks import ACTIVATIONS
from minivlm.utils import check_number


def check_temperature(name: str, temperature, max_name: str, max_scale) -> None:
    """A config's two contrastive-head fields: the initial temperature `name` in (0, 1], and the
    clamp `max_name` on 1 / temperature, a finite number no smaller than 1 / temperature (a scale
    that starts clamped gets no gradient, so the temperature would never learn)."""
    check_number(name, temperature, 0.0, 1.0, lo_open=True)
    check_number(max_name, max_scale, 0.0, math.inf, lo_open=True, hi_open=True)
    if 1 / temperature > max_scale:
        raise ValueError(f"{max_name} must be at least 1 / {name} = {1 / temperature:.4g}, got {max_scale!r}: the "
                         f"scale would start clamped, where it gets no gradient; raise {max_name} or {name}")


class ContrastiveHead:
    """Mixin for an nn.Module with a `config`: ITC's projections and learned temperature.

    The temperature is learned in log space, as log(1 / τ): exp keeps it positive, and a
    multiplicative quantity gets additive gradient steps. Two class attributes name what the
    models call it: CLIP keeps the paper's `logit_scale` clamped at `config.max_logit_scale`,
    the BERT-style models (ALBEF, VLMo, BLIP, CoCa) use `log_scale` and `config.max_scale`."""

    scale_name = "log_scale"  # the parameter holding log(1 / temperature)
    max_scale_field = "max_scale"  # the config field scale() is clamped at

    def init_contrastive_head(self, image_dim: int, text_dim: int, embed_dim: int, temperature: float,
                              bias: bool = True) -> None:
        """image_projection (image_dim → embed_dim), text_projection (text_dim → embed_dim), and the
        parameter `scale_name` = log(1 / temperature). CLIP and CoCa project without a bias."""
        self.image_projection = nn.Linear(image_dim, embed_dim, bias=bias)
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=bias)
        self.register_parameter(self.scale_name, nn.Parameter(torch.tensor(math.log(1 / temperature))))

    def scale(self) -> torch.Tensor:
        """1 / temperature, the factor on ITC's cosine similarities: exp of the learned log,
        clamped at the config's maximum (100 by default: a temperature of at least 0.01)."""
        return getattr(self, self.scale_name).exp().clamp(max=getattr(self.config, self.max_scale_field))


class TiedWordHead:
    """BERT's prediction head, tied to the word embeddings (see the module docstring). Mixin for an
    nn.Module with `config.act`; `MLMHead` and `LMHead` give it its name and its method.

    The model calls `init_word_head` in its `__init__`. Class attributes: `word_head`, the prefix
    of the three parameters' names (`{word_head}_transform`, `{word_head}_norm`, `{word_head}_bias`),
    and `tied_embedding`, the path of the nn.Embedding whose weight the output layer shares."""

    word_head = "mlm"
    tied_embedding = "token_embedding"

    def init_word_head(self, dim: int, vocab_size: int, eps: float) -> None:
        """The transform (a D → D Linear), its LayerNorm and the output bias (V,); the output layer's
        weight is not a parameter of its own (the word embeddings')."""
        setattr(self, f"{self.word_head}_transform", nn.Linear(dim, dim))
        setattr(self, f"{self.word_head}_norm", nn.LayerNorm(dim, eps=eps))
        setattr(self, f"{self.word_head}_bias", nn.Parameter(torch.zeros(vocab_size)))

    def _word_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, V)."""
        transform, norm, bias = (getattr(self, f"{self.word_head}_{part}") for part in ("transform", "norm", "bias"))
        x = norm(ACTIVATIONS[self.config.act](transform(hidden)))  # (B, T, D)
        return F.linear(x, self.get_submodule(self.tied_embedding).weight, bias)  # x · Eᵀ + bias


class MLMHead(TiedWordHead):
    """The tied word head for masked words: `mlm_transform`, `mlm_norm`, `mlm_bias` (ViLT, ALBEF,
    VLMo, BEiT-3)."""

    word_head = "mlm"

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) text hidden states → (B, T, V) word logits at every position; the output layer
        is the word-embedding matrix (tied)."""
        return self._word_logits(hidden)


class LMHead(TiedWordHead):
    """The tied word head for next words: `lm_transform`, `lm_norm`, `lm_bias` (BLIP's decoder)."""

    word_head = "lm"

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) decoder hidden states → (B, T, V) next-word logits; the output layer is the
        word-embedding matrix (tied)."""
        return self._word_logits(hidden)
