"""VLMo: one Mixture-of-Modality-Experts Transformer, a dual encoder and a fusion encoder (chapter 05).

Bao, Wang, Dong, Liu, Mohammed, Aggarwal, Som, Piao and Wei, "VLMo: Unified Vision-Language
Pre-Training with Mixture-of-Modality-Experts", 2022.

A dual encoder (CLIP, chapter 02) retrieves fast: N images and N texts are encoded once each and
scored by one matrix product. A fusion encoder (ViLT, ALBEF: chapters 03-04) matches better, but
must run once per (image, text) pair: N² passes. VLMo is one Transformer that is both. Every
block shares its self-attention across modalities and has one feed-forward expert per modality
(`minivlm.nn.multiway.MoMEBlock`): a vision expert (V-FFN), a language expert (L-FFN) and, in the
top `vl_depth` blocks, a vision-language expert (VL-FFN). The *mode* decides which expert a token
uses in each block:

    mode      input               bottom blocks            top vl_depth blocks    head
    image     [CLS ; patches]     V                        V                      ITC on CLS
    text      [<bos> ; words]     L                        L                      ITC on <bos>, MLM
    fusion    [image ; text]      V for image, L for text  VL for every token     ITM on <bos>, MLM

Training is staged as in the paper (`set_stage`): masked image modelling on images alone trains
attention and the vision experts (`mim_step`); then, those frozen, masked language modelling on
texts alone trains the language experts (`text_mlm_step`); then image-text pairs train everything
with ITC + ITM (negatives from chapter 04's sampler) + MLM (`pair_step`).

Three departures from the paper, said and measured in the chapter: ITM's negative images are drawn
uniformly (`VLMoConfig.negatives`; the paper draws both sides by similarity, which left our ITM at
chance); the paper's image stage is BEiT's masked image modelling (block-masked patches, predict
a dVAE's visual tokens; chapter 08 builds a visual tokenizer); ours masks patches at random and
predicts each masked patch's pixels normalised by that patch's own mean and spread (MAE's target;
`VLMoConfig.mim_mask`, `mim_target`: raw pixels under block masks learned little more than the mean
patch); VLMo puts the text first in the fused sequence; we put the image first, and pool the
text's first token wherever it stands.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivlm.data.masking import IGNORE_INDEX, block_mask, random_mask
from minivlm.data.pairs import check_batch, check_batch_keys, pretrain_batches
from minivlm.eval import bootstrap, interval, itc_similarity
from minivlm.losses import itm_loss, mlm_loss, multi_positive_itc, sample_negatives
from minivlm.nn import masks
from minivlm.nn.heads import ContrastiveHead, MLMHead
from minivlm.nn.inputs import (
    TextInputs,
    check_encoder_config,
    check_images,
    check_pairs,
    fill_token_ids,
    register_image_stats,
)
from minivlm.nn.multiway import MoMEBlock
from minivlm.nn.text import check_token_ids
from minivlm.nn.vit import PatchEmbed, patchify
from minivlm.utils import check_int, check_number, check_tensor, eval_mode, unwrap

VISION, LANGUAGE, VL = 0, 1, 2  # expert indices in every MoME block
MODES = ("image", "text", "fusion")
STAGES = ("image", "text", "pairs")
NEGATIVES = ("hard", "mixed", "random")
MIM_MASKS = ("random", "block")  # MAE / SimMIM; BEiT
MIM_TARGETS = ("normalized", "pixels")  # each patch's pixels minus its mean, over its spread (MAE); raw pixels


@dataclass
class VLMoConfig:
    """Small defaults for 32×32 ShapesWorld images; vocab_size / pad_id / mask_id left as None
    come from the course tokenizer. VLMo-Base's values are in the comments."""

    image_size: int = 32
    patch_size: int = 8  # 16 on 224×224
    dim: int = 64  # 768
    depth: int = 4  # 12
    vl_depth: int = 2  # top blocks with a vision-language expert (2 of 12)
    heads: int = 4  # 12
    mlp_ratio: float = 4.0
    embed_dim: int = 64  # ITC space
    vocab_size: int | None = None
    max_text_len: int = 32  # <bos> and <eos> included (40)
    act: str = "gelu"
    eps: float = 1e-5
    pos_init_std: float = 1.0  # image positions start as large as the patches (chapter 03's lesson)
    temp: float = 0.07  # initial ITC temperature, learned as log(1 / temperature)
    max_scale: float = 100.0  # 1 / temperature clamped here
    # ITM negatives: "hard" = the paper's, a caption per image and an image per caption drawn by ITC
    # similarity; "mixed" = the caption drawn by similarity, the image uniformly; "random" = both uniformly.
    # At our scale "hard" left ITM at "always no match" for 600 steps (see the chapter): we train "mixed".
    negatives: str = "mixed"
    mim_ratio: float = 0.4  # share of patches masked for masked image modelling (BEiT: 40 %)
    mim_mask: str = "random"  # which patches: "random" (MAE, SimMIM) or "block" (BEiT, `block_mask`)
    mim_target: str = "normalized"  # what to predict: "normalized" (per patch, MAE) or "pixels"
    pad_id: int | None = None
    mask_id: int | None = None
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self)
        check_encoder_config(self, ints=("depth", "embed_dim"))
        check_int("vl_depth", self.vl_depth, lo=0)
        if self.vl_depth > self.depth:
            raise ValueError(f"vl_depth={self.vl_depth} cannot exceed depth={self.depth}")
        check_number("mim_ratio", self.mim_ratio, 0.0, 1.0, lo_open=True)
        for name, value, allowed in (("negatives", self.negatives, NEGATIVES), ("mim_mask", self.mim_mask, MIM_MASKS),
                                     ("mim_target", self.mim_target, MIM_TARGETS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VLMo(TextInputs, ContrastiveHead, MLMHead, nn.Module):
    """Image and word embeddings, a stack of MoME blocks, one final norm, and the heads: ITC
    projections + temperature, ITM, MLM (tied to the word embeddings), MIM (patch pixels)."""

    def __init__(self, config: VLMoConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or VLMoConfig()
        n = c.num_patches
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.dim)
        self.image_cls = nn.Parameter(torch.randn(1, 1, c.dim) * 0.02)
        self.image_pos = nn.Parameter(torch.randn(1, 1 + n, c.dim) * c.pos_init_std)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dim))  # replaces masked patches (MIM)
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.text_pos = nn.Parameter(torch.randn(1, c.max_text_len, c.dim) * 0.01)
        # BERT's embedding LayerNorm: without it, word embeddings (std 0.02) are drowned by the
        # image tokens' attention output in the first fusion block
        self.text_embedding_norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.type_embedding = nn.Embedding(2, c.dim)  # 0: image token, 1: text token
        nn.init.normal_(self.type_embedding.weight, std=0.02)
        bottom, top = ("vision", "language"), ("vision", "language", "vl")
        self.blocks = nn.ModuleList(
            MoMEBlock(c.dim, c.heads, top if i >= c.depth - c.vl_depth else bottom, c.mlp_ratio, act=c.act, eps=c.eps)
            for i in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.init_contrastive_head(c.dim, c.dim, c.embed_dim, c.temp)  # image/text_projection, log_scale
        self.itm_head = nn.Linear(c.dim, 2)
        self.init_word_head(c.dim, c.vocab_size, c.eps)  # mlm_transform, mlm_norm, mlm_bias (tied to token_embedding)
        self.mim_head = nn.Linear(c.dim, c.patch_size * c.patch_size * 3)
        register_image_stats(self, c)
        self.tokenizer = tokenizer
        self.passes = {mode: 0 for mode in MODES}  # sequences run through the Transformer, by mode

    # ------------------------------------------------------------------------------ embeddings
    def embed_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] → (B, 1 + N, D); patches where patch_mask (B, N) is True
        are replaced by the learned mask token (masked image modelling)."""
        check_images(images, self.config.image_size)
        x = self.patch_embed((images - self.image_mean) / self.image_std)  # (B, N, D)
        if patch_mask is not None:
            check_tensor("patch_mask", patch_mask, ndim=2, dtype="bool")
            if tuple(patch_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"patch_mask must have shape (B, N) = {tuple(x.shape[:2])}, "
                                 f"got {tuple(patch_mask.shape)}")
            x = torch.where(patch_mask.to(x.device)[..., None], self.mask_token.to(x.dtype), x)
        x = torch.cat([self.image_cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        return x + self.image_pos + self.type_embedding.weight[0]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) → (B, T, D)."""
        check_token_ids(ids, self.config.vocab_size, self.config.max_text_len, "max_text_len")
        x = self.token_embedding(ids) + self.text_pos[:, :ids.shape[1]]  # (B, T, D)
        return self.text_embedding_norm(x) + self.type_embedding.weight[1]

    # ------------------------------------------------------------------------------ routing
    def routes(self, mode: str, n_image: int, n_text: int, device=None) -> list[torch.Tensor]:
        """The expert index of every token in every block: a list of `depth` tensors (T,),
        T = n_image + n_text, the image tokens first. image mode: V everywhere; text mode: L
        everywhere; fusion mode: V for image tokens and L for text tokens in the bottom blocks,
        VL for every token in the top `vl_depth` blocks."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "image" and n_text or mode == "text" and n_image:
            raise ValueError(f"{mode} mode takes only {mode} tokens, got {n_image} image and {n_text} text tokens")
        own = torch.cat([torch.full((n_image,), VISION), torch.full((n_text,), LANGUAGE)]).to(device)
        first_vl = self.config.depth - self.config.vl_depth
        return [torch.full_like(own, VL) if mode == "fusion" and i >= first_vl else own
                for i in range(self.config.depth)]

    def run(self, x: torch.Tensor, mode: str, n_image: int, mask: torch.Tensor | None = None,
            need_weights: bool = False) -> torch.Tensor:
        """The MoME Transformer on embedded tokens x (B, T, D), the first n_image of them image
        tokens, routed for `mode`; mask: True = may attend (see `masks.expand`). → (B, T, D)."""
        routes = self.routes(mode, n_image, x.shape[1] - n_image, x.device)
        for block, route in zip(self.blocks, routes):
            x = block(x, route, mask, need_weights)
        self.passes[mode] += x.shape[0]
        return self.norm(x)

    # ------------------------------------------------------------------------------ the three modes
    def encode_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-only mode: → (tokens (B, 1 + N, D), ITC feature of the CLS token (B, E), unit norm)."""
        x = self.embed_image(images, patch_mask)
        tokens = self.run(x, "image", x.shape[1])
        return tokens, F.normalize(self.image_projection(tokens[:, 0]), dim=-1)

    def encode_text(self, texts, attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text-only mode: B strings or ids (B, T) → (tokens (B, T, D), ITC feature of <bos> (B, E),
        attention_mask (B, T) bool)."""
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        tokens = self.run(self.embed_text(ids), "text", 0, masks.padding(attention_mask))
        return tokens, F.normalize(self.text_projection(tokens[:, 0]), dim=-1), attention_mask

    def fuse(self, images: torch.Tensor, texts, attention_mask: torch.Tensor | None = None,
             need_weights: bool = False) -> torch.Tensor:
        """Fusion mode: [image ; text] through every block, attention across both modalities.
        images (B, 3, H, W), texts (B strings or ids (B, T)) → (B, 1 + N + T, D)."""
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        if images.shape[0] != ids.shape[0]:
            raise ValueError(f"batch sizes must match, got images={images.shape[0]}, texts={ids.shape[0]}")
        return self.fuse_embedded(self.embed_image(images), self.embed_text(ids), attention_mask, need_weights)

    def check_fusion_inputs(self, image_x: torch.Tensor, text_x: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """fuse_embedded's inputs: float image_x (B, 1 + N, D) and text_x (B, T, D), attention_mask (B, T)."""
        check_tensor("image_x", image_x, ndim=3, dtype="float")
        check_tensor("text_x", text_x, ndim=3, dtype="float")
        check_tensor("attention_mask", attention_mask, ndim=2)
        if text_x.shape[0] != image_x.shape[0] or tuple(attention_mask.shape) != tuple(text_x.shape[:2]):
            raise ValueError(f"batch sizes must match and attention_mask must be (B, T) of text_x: got image_x "
                             f"{tuple(image_x.shape)}, text_x {tuple(text_x.shape)}, attention_mask "
                             f"{tuple(attention_mask.shape)}")

    def fuse_embedded(self, image_x: torch.Tensor, text_x: torch.Tensor, attention_mask: torch.Tensor,
                      need_weights: bool = False) -> torch.Tensor:
        """Fusion mode on embedded tokens: image_x (B, 1 + N, D), text_x (B, T, D), attention_mask (B, T)."""
        self.check_fusion_inputs(image_x, text_x, attention_mask)
        b, n_image = image_x.shape[0], image_x.shape[1]
        valid = torch.cat([torch.ones(b, n_image, dtype=torch.bool, device=image_x.device),
                           attention_mask.bool().to(image_x.device)], dim=1)  # (B, 1 + N + T)
        return self.run(torch.cat([image_x, text_x], dim=1), "fusion", n_image, masks.padding(valid), need_weights)

    def forward(self, images: torch.Tensor, texts, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion mode (see `fuse`)."""
        return self.fuse(images, texts, attention_mask)

    # ------------------------------------------------------------------------------ heads
    @property
    def n_image_tokens(self) -> int:
        return 1 + self.config.num_patches

    # scale() (1 / temperature) and mlm_logits(text_tokens) are ContrastiveHead's and MLMHead's
    # (nn/heads.py); mlm_logits takes text tokens of text mode, or the text part of fusion mode

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N + T, D) fused tokens → (B, 2) on the text's first token; column 1 scores "match"."""
        return self.itm_head(fused[:, self.n_image_tokens])

    def mim_pixels(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) image tokens → (B, N, P·P·3): each patch's predicted target (`mim_targets`)."""
        return self.mim_head(image_tokens[:, 1:])

    def mim_targets(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) → (B, N, P·P·3), what masked image modelling predicts for every patch:
        its pixels scaled as the model's input ("pixels"), or, with mim_target="normalized", each
        patch minus its own mean over its own standard deviation, all channels together (MAE's
        per-patch normalisation: a grey patch becomes 0, a patch of one flat colour the pattern of
        its channels' offsets, the same wherever it stands; an edge a unit-spread pattern)."""
        check_images(images, self.config.image_size)
        patches = patchify((images - self.image_mean) / self.image_std, self.config.patch_size)
        if self.config.mim_target == "pixels":
            return patches
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def match_probability(self, images: torch.Tensor, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """P(match) from the ITM head in fusion mode, for each (image, text) pair: (B,)."""
        check_pairs(images, texts, batch_size)
        with eval_mode(self):
            out = [self.itm_logits(self.fuse(images[a:a + batch_size], list(texts[a:a + batch_size]))).softmax(1)[:, 1]
                   for a in range(0, len(texts), batch_size)]
        return torch.cat(out)


# ----------------------------------------------------------------------------- staged pretraining


def stage_parameters(model: VLMo, stage: str, shared: bool = True) -> list[str]:
    """Names of the parameters a stage trains.

    stage "image": image embeddings, vision experts, MIM head; "text": word embeddings, language
    experts, MLM head; "pairs": everything. shared=True adds the shared parts (self-attention with
    its LayerNorm, the final norm, the type embeddings, the ITC temperature) to an "image" or
    "text" stage; VLMo's second stage runs with them frozen (shared=False)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be True or False, got {shared!r}")
    names = [n for n, _ in model.named_parameters()]
    if stage == "pairs":
        return names
    own = {"image": ("patch_embed.", "image_cls", "image_pos", "mask_token", "mim_head."),
           "text": ("token_embedding.", "text_pos", "text_embedding_norm.", "mlm_transform.", "mlm_norm.", "mlm_bias")}[stage]
    expert = f".ffn.experts.{VISION if stage == 'image' else LANGUAGE}."

    def keep(name: str) -> bool:
        if name.startswith(own) or expert in name:
            return True
        is_shared = name.startswith(("norm.", "type_embedding.", "log_scale")) or ".norm1." in name or ".attn." in name
        return shared and is_shared

    return [n for n in names if keep(n)]


def set_stage(model: VLMo, stage: str, shared: bool = True) -> list[str]:
    """requires_grad=True on the parameters `stage_parameters` names, False on the rest.
    Returns those names (`minivlm.train.fit` optimises exactly the trainable ones)."""
    names = set(stage_parameters(model, stage, shared))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return sorted(names)


def mim_step(model: VLMo, batch: dict) -> dict:
    """Stage 1, masked image modelling in image-only mode: block-masked patches (batch
    "patch_mask", True = masked) are replaced by the mask token; the MIM head predicts their
    targets (`VLMo.mim_targets`); the loss is the mean squared error on the masked patches only."""
    m = unwrap(model, VLMo)
    check_batch_keys(batch, ("images", "patch_mask"), "stage_batches")
    images, patch_mask = batch["images"], batch["patch_mask"]
    tokens, _ = m.encode_image(images, patch_mask)
    err = (m.mim_pixels(tokens) - m.mim_targets(images)).pow(2).mean(-1)  # (B, N)
    chosen = patch_mask.to(err.device)
    if not bool(chosen.any()):
        raise ValueError("patch_mask masks no patch: masked image modelling needs at least one masked patch")
    loss = err[chosen].mean()
    return {"loss": loss, "mim": loss.detach()}


def text_mlm_step(model: VLMo, batch: dict) -> dict:
    """Stage 2, masked language modelling in text-only mode (15 % of words, 80/10/10)."""
    m = unwrap(model, VLMo)
    check_batch_keys(batch, ("mlm_ids", "mlm_labels", "attention_mask"), "stage_batches")
    tokens, _, _ = m.encode_text(batch["mlm_ids"], batch["attention_mask"])
    loss = mlm_loss(m.mlm_logits(tokens), batch["mlm_labels"])
    return {"loss": loss, "mlm": loss.detach()}


def pair_step(model: VLMo, batch: dict) -> dict:
    """Stage 3, image-text pairs: ITC + ITM + MLM, as the paper.

    ITC: image-only and text-only modes, InfoNCE with the learned temperature over the batch
         (every true caption of an image in the batch is a positive);
    ITM: fusion mode on the B true pairs and 2B negatives, a wrong caption per image and a wrong
         image per caption, never a positive; drawn by ITC softmax (hard) or uniformly, as
         `config.negatives` says; on <bos>;
    MLM: fusion mode on the masked captions.
    """

    m = unwrap(model, VLMo)
    check_batch_keys(batch, ("images", "ids", "attention_mask", "mlm_ids", "mlm_labels"), "stage_batches")
    images, ids, mask = batch["images"], batch["ids"], batch["attention_mask"].bool()
    b = images.shape[0]
    positives = check_batch(batch, b)
    scale = m.scale()

    # ---- ITC: the dual-encoder modes
    _, image_feat = m.encode_image(images)
    _, text_feat, _ = m.encode_text(ids, mask)
    sim = scale * image_feat @ text_feat.t()  # (B, B)
    itc = multi_positive_itc(sim, positives.bool())

    # ---- ITM: fusion mode on B positives and 2B negatives (config.negatives says how they are drawn)
    image_x, text_x = m.embed_image(images), m.embed_text(ids)
    with torch.no_grad():
        uniform = torch.zeros_like(sim)  # the softmax of a constant: uniform over the allowed columns
        text_weights = uniform if m.config.negatives == "random" else sim.detach()
        image_weights = sim.detach().t() if m.config.negatives == "hard" else uniform
        neg_text = sample_negatives(text_weights, positives)  # (B,) a wrong caption for each image
        neg_image = sample_negatives(image_weights, positives.t())  # (B,) a wrong image for each caption
    fused = m.fuse_embedded(torch.cat([image_x, image_x, image_x[neg_image]]),
                            torch.cat([text_x, text_x[neg_text], text_x]),
                            torch.cat([mask, mask[neg_text], mask]))  # (3B, 1 + N + T, D)
    itm_logits = m.itm_logits(fused)
    itm_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(images.device)
    itm = itm_loss(itm_logits, itm_labels)

    # ---- MLM: fusion mode on the masked captions
    fused_mlm = m.fuse_embedded(image_x, m.embed_text(batch["mlm_ids"]), mask)
    mlm = mlm_loss(m.mlm_logits(fused_mlm[:, m.n_image_tokens:]), batch["mlm_labels"])
    with torch.no_grad():
        itm_acc = (itm_logits.argmax(1) == itm_labels).float().mean()
    return {"loss": itc + itm + mlm, "itc": itc.detach(), "itm": itm.detach(), "mlm": mlm.detach(),
            "itm_acc": itm_acc, "temp": 1.0 / scale.detach()}


STEP_FUNCTIONS = {"image": mim_step, "text": text_mlm_step, "pairs": pair_step}


def stage_batches(stage: str, batch_size: int = 64, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                  mim_ratio: float = 0.4, noise: float = 0.0, max_text_len: int = 32, mim_mask: str = "random"):
    """A function step -> batch for a stage, deterministic given `seed`: chapter 04's
    `pretrain_batches` (ShapesWorld train scenes, captions, 15 % MLM masking, positives), plus a
    patch mask for the image stage (`mim_mask`: "random" or BEiT's "block"). A stage reads only its
    own keys: the image stage the images, the text stage the captions, the pairs stage both."""

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if mim_mask not in MIM_MASKS:
        raise ValueError(f"mim_mask must be one of {MIM_MASKS}, got {mim_mask!r}")
    check_int("patch_size", patch_size)
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
    pairs = pretrain_batches(batch_size, seed=seed, image_size=image_size, noise=noise, max_text_len=max_text_len)
    grid = image_size // patch_size

    def batch(step: int) -> dict:
        out = pairs(step)
        if stage == "image":
            g = torch.Generator().manual_seed(seed * 7_919 + step)
            out["patch_mask"] = (random_mask if mim_mask == "random" else block_mask)(batch_size, grid, mim_ratio,
                                                                                    generator=g)
        return out

    return batch


@torch.no_grad()
def unimodal_check(model: VLMo, stage: str, train_seed: int = 0, heldout_seed: int = 99_999, n_train: int = 8,
                   n_heldout: int = 4, batch_size: int = 64) -> dict:
    """Does a unimodal stage beat its trivial predictor? Each scored item of `n_heldout` held-out
    batches (`stage_batches`, seed `heldout_seed`) gets the model's loss and the trivial one's:
      - "image": the squared error on each masked patch (the target of `VLMo.mim_targets`), against
        predicting the mean target patch of `n_train` training batches (seed `train_seed`);
      - "text": the cross-entropy on each masked word, against the words' frequencies in the
        training batches' masked words (add-one smoothed over the vocabulary).
    Returns {"model", "trivial", "gain"}: bootstrap Estimates of the mean losses and of the paired
    gain trivial − model (above 0: the stage learned more than the constant)."""
    m = unwrap(model, VLMo)
    if stage not in ("image", "text"):
        raise ValueError(f"stage must be 'image' or 'text' (a unimodal stage), got {stage!r}")
    for name, value in (("n_train", n_train), ("n_heldout", n_heldout), ("batch_size", batch_size)):
        check_int(name, value)
    c = m.config
    kw = dict(image_size=c.image_size, patch_size=c.patch_size, mim_ratio=c.mim_ratio, max_text_len=c.max_text_len,
              mim_mask=c.mim_mask)
    train, heldout = stage_batches(stage, batch_size, train_seed, **kw), stage_batches(stage, batch_size, heldout_seed, **kw)
    device = next(m.parameters()).device
    with eval_mode(m):
        if stage == "image":
            mean_patch = torch.cat([m.mim_targets(train(i)["images"].to(device)).flatten(0, 1)
                                    for i in range(n_train)]).mean(0)  # (P·P·3,)
            model_loss, trivial_loss = [], []
            for i in range(n_heldout):
                b = heldout(i)
                images, chosen = b["images"].to(device), b["patch_mask"].to(device)
                target = m.mim_targets(images)
                model_loss.append((m.mim_pixels(m.encode_image(images, chosen)[0]) - target).pow(2).mean(-1)[chosen])
                trivial_loss.append((mean_patch - target).pow(2).mean(-1)[chosen])
        else:
            counts = torch.ones(c.vocab_size)
            for i in range(n_train):
                labels = train(i)["mlm_labels"]
                counts += torch.bincount(labels[labels != IGNORE_INDEX], minlength=c.vocab_size).float()
            log_freq = (counts / counts.sum()).log().to(device)
            model_loss, trivial_loss = [], []
            for i in range(n_heldout):
                b = heldout(i)
                labels = b["mlm_labels"].to(device)
                chosen = labels != IGNORE_INDEX
                logits = m.mlm_logits(m.encode_text(b["mlm_ids"].to(device), b["attention_mask"].to(device))[0])
                model_loss.append(-logits.log_softmax(-1)[chosen].gather(1, labels[chosen][:, None])[:, 0])
                trivial_loss.append(-log_freq[labels[chosen]])
    model_loss, trivial_loss = torch.cat(model_loss).cpu(), torch.cat(trivial_loss).cpu()
    return {"model": bootstrap(model_loss), "trivial": bootstrap(trivial_loss), "gain": bootstrap(trivial_loss - model_loss)}


# ----------------------------------------------------------------------------- retrieval, three ways


def _check_texts(texts) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise TypeError(f"texts must be a non-empty list of strings, got {type(texts).__name__}")


@torch.no_grad()
def fusion_scores(model: VLMo, images: torch.Tensor, texts: Sequence[str], pairs: torch.Tensor | None = None,
                  batch_size: int = 512) -> torch.Tensor:
    """Fusion mode: the ITM log-odds (match − no match) of (image, text) pairs, one joint pass each.

    pairs: (P, 2) long (image index, text index); None: every pair, N_images · N_texts passes,
    returned as a (N_images, N_texts) matrix (otherwise a (P,) vector)."""
    check_tensor("images", images, ndim=4, dtype="float")
    _check_texts(texts)
    check_int("batch_size", batch_size)
    full = pairs is None
    if full:
        pairs = torch.cartesian_prod(torch.arange(len(images)), torch.arange(len(texts)))
    check_tensor("pairs", pairs, ndim=2, dtype="int")
    if pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2) = (image index, text index), got {tuple(pairs.shape)}")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs[:, 0].max()) >= len(images)
                          or int(pairs[:, 1].max()) >= len(texts)):
        raise ValueError(f"pairs index images in [0, {len(images) - 1}] and texts in [0, {len(texts) - 1}], got "
                         f"image indices in [{int(pairs[:, 0].min())}, {int(pairs[:, 0].max())}] and text indices "
                         f"in [{int(pairs[:, 1].min())}, {int(pairs[:, 1].max())}]")
    with eval_mode(model):
        image_x = model.embed_image(images)  # (N, 1 + P, D): embeddings once, the Transformer per pair
        ids, mask = model.tokenize(list(texts))
        text_x = model.embed_text(ids)
        out = []
        for a in range(0, len(pairs), batch_size):
            i, j = pairs[a:a + batch_size, 0], pairs[a:a + batch_size, 1]
            logits = model.itm_logits(model.fuse_embedded(image_x[i], text_x[j], mask[j]))
            out.append(logits[:, 1] - logits[:, 0])
    scores = torch.cat(out)
    return rearrange(scores, "(i t) -> i t", i=len(images), t=len(texts)) if full else scores


def retrieval_passes(n_images: int, n_texts: int, mode: str, k: int = 16) -> int:
    """Transformer passes that `retrieve` needs for n_images queries and n_texts candidates:
    dual N + M, fusion N · M, rerank N + M + N · min(k, M)."""
    for name, value in (("n_images", n_images), ("n_texts", n_texts), ("k", k)):
        check_int(name, value)
    if mode == "dual":
        return n_images + n_texts
    if mode == "fusion":
        return n_images * n_texts
    if mode == "rerank":
        return n_images + n_texts + n_images * min(k, n_texts)
    raise ValueError(f"mode must be 'dual', 'fusion' or 'rerank', got {mode!r}")


def retrieve(model: VLMo, images: torch.Tensor, texts: Sequence[str], mode: str = "dual", k: int = 16,
             batch_size: int = 512) -> dict:
    """Image → text retrieval in one of VLMo's ways:

    "dual":   rank by dual-mode similarity; N_images + N_texts Transformer passes;
    "fusion": score every pair in fusion mode; N_images · N_texts passes;
    "rerank": dual top-k, then fusion re-ranks those k per image; N_images + N_texts + N_images · k passes.
    Returns dict(scores (N_images, N_texts), seconds, passes: counted by the model, formula: by the formula).
    """
    n, m = len(images), len(texts)
    formula = retrieval_passes(n, m, mode, k)  # also checks mode and k
    before = sum(model.passes.values())
    t0 = time.perf_counter()
    if mode == "fusion":
        scores = fusion_scores(model, images, texts, batch_size=batch_size)
    else:
        scores = itc_similarity(model, images, texts)
        if mode == "rerank":
            k = min(k, m)
            top = scores.topk(k, dim=1).indices  # (N, k)
            pairs = torch.stack([torch.arange(n).repeat_interleave(k), top.flatten()], dim=1)
            fused = rearrange(fusion_scores(model, images, texts, pairs, batch_size), "(n k) -> n k", n=n, k=k)
            # the re-ranked k sit above every other text (cosine similarities lie in [-1, 1])
            scores = scores.scatter(1, top, fused - fused.min() + 3.0)
    return {"scores": scores, "seconds": time.perf_counter() - t0,
            "passes": sum(model.passes.values()) - before, "formula": formula}


def evaluate_retrieval(model: VLMo, data: dict, modes: Sequence[str] = ("dual", "rerank", "fusion"), k: int = 16,
                       batch_size: int = 512) -> dict:
    """Image → text R@1 (Wilson interval), wall time and passes of each mode on a ShapesBench
    `retrieval` set (caption i belongs to image i)."""

    target = torch.arange(len(data["captions"]))
    out = {}
    for mode in modes:
        r = retrieve(model, data["images"], data["captions"], mode, k, batch_size)
        hits = (r["scores"].argmax(1).cpu() == target).tolist()
        out[mode] = {"r1": interval(hits), "seconds": r["seconds"], "passes": r["passes"], "formula": r["formula"]}
    return out


VLMO_CONFIG = dict(image_size=32, patch_size=8, dim=64, depth=4, vl_depth=2, heads=4, embed_dim=64, max_text_len=32)
