"""PrefixLM (SimVLM, VirTex's successors): one Transformer reads the image and writes the caption (chapter 07).

Wang, Yu, Yu, Dai, Tsvetkov and Cao, "SimVLM: Simple Visual Language Model Pretraining with
Weak Supervision", 2022; Desai and Johnson, "VirTex: Learning Visual Representations from
Textual Annotations", 2021.

No contrastive loss, no matching head, no second pass: the image patches and a caption go
through one Transformer as one sequence,

    [ patch_1 ... patch_N ; <bos> w_1 ... w_k | w_k+1 ... <eos> ]
      ------------------ prefix ------------   ----- suffix -----

with chapter 01's prefix-LM mask: the prefix (the image and the first k words) attends to
itself in both directions, the suffix causally. Each caption is split at a random k, and only
the suffix is predicted, so the model learns to continue a caption from any point; k = 0 (the
prefix is the image and <bos>) is captioning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.generate import caption_texts, check_images_to_caption
from minivlm.losses import lm_loss
from minivlm.nn import Transformer, masks
from minivlm.nn.inputs import (
    TextInputs,
    check_encoder_config,
    check_images,
    check_text,
    fill_token_ids,
    register_image_stats,
)
from minivlm.nn.vit import PatchEmbed
from minivlm.utils import check_same_batch, check_tensor, eval_mode, unwrap


@dataclass
class PrefixLMConfig:
    image_size: int = 32
    patch_size: int = 4
    dim: int = 64
    depth: int = 5  # about CoCa's vision + decoder layers at the chapter's sizes
    heads: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int | None = None
    max_text_len: int = 32
    act: str = "gelu"
    eps: float = 1e-5
    pos_init_std: float = 0.02
    pad_id: int | None = None
    mask_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self)
        check_encoder_config(self, ints=("depth",))


class PrefixLM(TextInputs, nn.Module):
    """Patch embeddings + word embeddings, one pre-LN Transformer under the prefix-LM mask, a
    next-word head tied to the word embeddings."""

    def __init__(self, config: PrefixLMConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or PrefixLMConfig()
        self.num_patches = (c.image_size // c.patch_size) ** 2
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.dim)
        self.image_pos = nn.Parameter(torch.randn(1, self.num_patches, c.dim) * c.pos_init_std)
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.text_pos = nn.Parameter(torch.randn(1, c.max_text_len, c.dim) * 0.02)
        self.transformer = Transformer(c.dim, c.depth, c.heads, mlp_ratio=c.mlp_ratio, act=c.act, eps=c.eps)
        self.norm = nn.LayerNorm(c.dim, eps=c.eps)
        register_image_stats(self, c)
        self.tokenizer = tokenizer

    def attention_mask(self, text_mask: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        """(B, N + T, N + T) bool: the prefix-LM mask over [patches ; words] with the image and the
        first prefix_len (B,) words as the prefix, padded words hidden."""
        b, t = text_mask.shape
        n = self.num_patches
        valid = torch.cat([torch.ones(b, n, dtype=torch.bool, device=text_mask.device), text_mask.bool()], dim=1)
        return masks.prefix(n + t, n + prefix_len) & masks.padding(valid)

    def check_inputs(self, images: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     prefix_len: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's inputs: images (B, 3, H, W) in [0, 1], ids (B, T) with their attention mask
        (None: every token real), prefix_len an int or (B,) in [1, T]. Returns (attention_mask,
        prefix_len (B,))."""
        c = self.config
        check_images(images, c.image_size)
        attention_mask = check_text(ids, attention_mask, c)
        b, t = check_same_batch(images=images, ids=ids), ids.shape[1]
        if isinstance(prefix_len, int) and not isinstance(prefix_len, bool):
            prefix_len = torch.full((b,), prefix_len, dtype=torch.long, device=ids.device)
        check_tensor("prefix_len", prefix_len, ndim=1, dtype="int")
        if prefix_len.shape[0] != b or bool((prefix_len < 1).any()) or bool((prefix_len > t).any()):
            raise ValueError(f"prefix_len must hold {b} values in [1, {t}] (<bos> is always in the prefix, and the "
                             f"prefix cannot be longer than the text), got {prefix_len.tolist()}")
        return attention_mask, prefix_len

    def forward(self, images: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                prefix_len: torch.Tensor | int = 1) -> torch.Tensor:
        """images (B, 3, H, W), ids (B, T) "<bos> ...", prefix_len: words in the prefix (<bos>
        included), an int or (B,). Returns next-word logits (B, T, V) at the text positions."""
        attention_mask, prefix_len = self.check_inputs(images, ids, attention_mask, prefix_len)
        image = self.patch_embed((images - self.image_mean) / self.image_std) + self.image_pos  # (B, N, D)
        words = self.token_embedding(ids) + self.text_pos[:, :ids.shape[1]]  # (B, T, D)
        x = self.transformer(torch.cat([image, words], dim=1), mask=self.attention_mask(attention_mask, prefix_len))
        return F.linear(self.norm(x[:, self.num_patches:]), self.token_embedding.weight)  # (B, T, V)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int | None = None, num_beams: int = 1,
                do_sample: bool = False, top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> list[str]:
        """A caption per image: the prefix is the image and <bos>; decode until <eos> or max_len."""
        c = self.config
        check_images_to_caption(images)
        check_images(images, c.image_size)
        with eval_mode(self):
            def next_logits(ids, rows):
                return self(images[rows], ids, None, 1)[:, -1]

            return caption_texts(next_logits, len(images), c.bos_id, c.eos_id, c.pad_id, max_len, c.max_text_len,
                                 self.get_tokenizer(), images.device, num_beams=num_beams, do_sample=do_sample,
                                 top_p=top_p, top_k=top_k, temperature=temperature, generator=generator)


def random_prefix_lengths(attention_mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A split point per caption, uniform over 1 (the image and <bos> only: captioning) to
    length - 1 (all but the last token in the prefix): (B,) long."""
    check_tensor("attention_mask", attention_mask, ndim=2)
    lengths = attention_mask.long().sum(1)  # (B,)
    if bool((lengths < 2).any()):
        raise ValueError("every caption needs at least 2 tokens (<bos> and one more) to split into prefix and suffix")
    u = torch.rand(len(lengths), generator=generator).to(lengths.device)
    return 1 + (u * (lengths - 1).float()).long().clamp(max=lengths - 2)


def prefixlm_step(model: PrefixLM, batch: dict) -> dict:
    """SimVLM's loss for `minivlm.train.fit`: each caption split at a random point, the words
    after it predicted from the image and the words before (next-word loss on the suffix only).
    batch: images, ids "<bos> ... <eos>", attention_mask."""
    unwrap(model, PrefixLM, "prefixlm_step")
    if not isinstance(batch, dict) or any(k not in batch for k in ("images", "ids", "attention_mask")):
        raise ValueError("batch must be a dict with images, ids and attention_mask")
    ids, mask = batch["ids"], batch["attention_mask"].bool()
    prefix_len = batch.get("prefix_len")
    if prefix_len is None:
        prefix_len = random_prefix_lengths(mask)
    logits = model(batch["images"], ids, mask, prefix_len)
    in_suffix = torch.arange(ids.shape[1], device=ids.device)[None, :] >= prefix_len[:, None]  # (B, T)
    loss = lm_loss(logits, ids, mask & in_suffix)  # targets: the real suffix tokens only
    return {"loss": loss, "prefix_len": prefix_len.float().mean().detach()}


PREFIXLM_CONFIG = dict(image_size=32, patch_size=4, dim=64, depth=5, heads=4, max_text_len=32)
