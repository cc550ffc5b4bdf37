"""BLIP: one model that understands and generates, and a way to clean its own data (chapter 06).

Li, Li, Xiong and Hoi, "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation", 2022.

Encoder-only models (CLIP, ALBEF) retrieve and match but cannot write a caption; encoder-decoder
models write but retrieve badly. BLIP's *multimodal mixture of encoder-decoder* (MED) is one
text Transformer run in three modes over one image encoder (a ViT):

    mode        first token   self-attention        cross-attention   head   loss
    "text"      [CLS] <bos>   bidirectional (SA)    none              proj   ITC (with ALBEF's momentum)
    "encoder"   [ENC]         bidirectional (SA)    every block       ITM    ITM (ALBEF's hard negatives)
    "decoder"   [DEC]         causal (SA_dec)       every block       LM     LM (label smoothing 0.1)

Encoder and decoder share every weight (embeddings, cross-attention, feed-forward, norms)
except the self-attention: the paper found that sharing it hurt, because encoding and decoding
need different self-attention, while sharing the rest trains faster and saves parameters.

CapFilt (bootstrapping) then cleans noisy web data: a *captioner* (the decoder, fine-tuned on a
small clean set) writes a synthetic caption for each web image, a *filter* (the ITM encoder,
fine-tuned alike) removes the web and synthetic captions it judges unmatched, and a new model is
pretrained on what is left (`capfilt`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.pairs import check_batch, check_pair_set
from minivlm.eval import interval
from minivlm.generate import caption_texts, check_images_to_caption
from minivlm.losses import check_alpha, itm_loss, itm_negatives, lm_loss, momentum_itc
from minivlm.models.albef import ALBEFPretrainer
from minivlm.nn import ViT, masks
from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import Block
from minivlm.nn.heads import ContrastiveHead, LMHead
from minivlm.nn.inputs import (
    TextInputs,
    check_encoder_config,
    check_images,
    check_pairs,
    check_text,
    fill_token_ids,
    register_image_stats,
)
from minivlm.nn.momentum import check_momentum, momentum_update
from minivlm.utils import check_int, check_number, check_same_batch, check_strings, check_tensor, eval_mode

MODES = ("text", "encoder", "decoder")
LOSSES = ("itc", "itm", "lm")


@dataclass
class BLIPConfig:
    """Small defaults for 32×32 ShapesWorld images; ids left as None come from the course
    tokenizer ([ENC] and [DEC] are its spare tokens <extra_0> and <extra_1>). BLIP's ViT-B/16 +
    BERT-base values are in the comments."""

    image_size: int = 32
    patch_size: int = 4
    dim: int = 64  # the text side's width (768)
    vision_dim: int | None = None  # the ViT's width; None: dim (768; 1024 for ViT-L)
    vision_depth: int = 3  # 12
    text_depth: int = 3  # 12, each with cross-attention (used by the encoder and decoder modes)
    heads: int = 4  # 12
    vision_heads: int | None = None  # None: heads
    mlp_ratio: float = 4.0
    embed_dim: int = 64  # ITC space (256)
    vocab_size: int | None = None
    max_text_len: int = 32  # 35 in pretraining
    act: str = "gelu"
    eps: float = 1e-5  # the ViT's LayerNorms (1e-5 in transformers' BLIP vision config)
    text_eps: float = 1e-5  # the text side's (BERT: 1e-12)
    text_norm_first: bool = True  # pre-LN text blocks with a final norm; False: BERT's post-LN
    pos_init_std: float = 1.0  # image positions as large as the patches (chapter 03's lesson)
    vision_pre_norm: bool = True  # chapter 02's CLIP layout, so that its trained tower can initialise ours
    patch_bias: bool = False
    temp: float = 0.07
    max_scale: float = 100.0
    label_smoothing: float = 0.1  # on the LM loss (0.1)
    # training (BLIPPretrainer: ALBEF's momentum model and queues, chapter 04)
    queue_size: int = 256  # 57,600
    momentum: float = 0.99  # 0.995
    alpha: float = 0.4  # ITC distillation weight (0.4)
    alpha_warmup: int = 150
    distill: bool = True
    hard_negatives: bool = True
    pad_id: int | None = None
    mask_id: int | None = None
    bos_id: int | None = None  # [CLS]: the unimodal text encoder's first token
    eos_id: int | None = None  # [SEP]: ends a caption
    enc_id: int | None = None  # [ENC]: the image-grounded encoder's first token
    dec_id: int | None = None  # [DEC]: the decoder's first token, a caption's start
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self, enc_id="<extra_0>", dec_id="<extra_1>")
        self.vision_dim = self.dim if self.vision_dim is None else self.vision_dim
        self.vision_heads = self.heads if self.vision_heads is None else self.vision_heads
        check_encoder_config(self, ints=("vision_dim", "vision_heads", "vision_depth", "text_depth", "embed_dim",
                                         "queue_size"))
        if self.vision_dim % self.vision_heads:
            raise ValueError(f"vision_dim={self.vision_dim} must be divisible by vision_heads={self.vision_heads}")
        check_number("text_eps", self.text_eps, 0, 1.0, lo_open=True)
        check_int("alpha_warmup", self.alpha_warmup, lo=0)
        check_momentum(self.momentum)
        check_alpha(self.alpha)


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    return mode


def med_masks(attention_mask: torch.Tensor, mode: str, n_image: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention masks of one MED mode, True = may attend.

    attention_mask (B, T): True on real text tokens. Returns
      self_mask (B, T, T): every text token sees every real token ("text", "encoder") or the
                           real tokens up to itself ("decoder": causal);
      cross_mask (B, T, n_image): every text token sees every image token ("encoder",
                           "decoder"), None for "text" (no cross-attention).
    """
    check_tensor("attention_mask", attention_mask, ndim=2)
    check_mode(mode)
    b, t = attention_mask.shape
    self_mask = masks.padding(attention_mask).expand(b, t, t)  # (B, T, T): real keys only
    if mode == "decoder":
        self_mask = self_mask & masks.causal(t, attention_mask.device)
    if mode == "text":
        return self_mask, None
    check_int("n_image", n_image)
    return self_mask, torch.ones(b, t, n_image, dtype=torch.bool, device=attention_mask.device)


class MEDBlock(Block):
    """One BERT layer of MED: a Block with cross-attention (shared by encoder and decoder) and
    a second self-attention, `attn_dec` with its own norm, that only the decoder mode uses."""

    def __init__(self, dim: int, heads: int, context_dim: int, mlp_ratio: float, act: str, eps: float,
                 norm_first: bool):
        super().__init__(dim, heads, mlp_ratio=mlp_ratio, cross_attention=True, context_dim=context_dim, act=act,
                         eps=eps, norm_first=norm_first)
        self.attn_dec = MultiHeadAttention(dim, heads)
        self.norm1_dec = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mode: str, mask: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, need_weights: bool = False) -> torch.Tensor:
        attn, norm = (self.attn_dec, self.norm1_dec) if mode == "decoder" else (self.attn, self.norm1)
        x = self.sublayer(x, norm, lambda h: attn(h, mask=mask, need_weights=need_weights))
        if mode != "text":  # "encoder" and "decoder" look at the image in every block
            x = self.sublayer(x, self.norm_cross, lambda h: self.cross_attn(h, context, context_mask, need_weights))
        return self.sublayer(x, self.norm2, self.mlp)


class BLIP(TextInputs, ContrastiveHead, LMHead, nn.Module):
    """Image encoder (ViT) + MED text Transformer (three modes) + ITC projections and
    temperature, ITM head, LM head (tied to the word embeddings)."""

    def __init__(self, config: BLIPConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or BLIPConfig()
        self.visual = ViT(image_size=c.image_size, patch_size=c.patch_size, dim=c.vision_dim, depth=c.vision_depth,
                          heads=c.vision_heads, mlp_ratio=c.mlp_ratio, pool="cls", act=c.act, eps=c.eps,
                          pre_norm=c.vision_pre_norm, patch_bias=c.patch_bias)
        nn.init.normal_(self.visual.pos_embedding, std=c.pos_init_std)
        # BERT's embeddings: words + positions, then a LayerNorm
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, c.max_text_len, c.dim) * 0.02)
        self.embed_norm = nn.LayerNorm(c.dim, eps=c.text_eps)
        self.blocks = nn.ModuleList(MEDBlock(c.dim, c.heads, c.vision_dim, c.mlp_ratio, c.act, c.text_eps,
                                             c.text_norm_first) for _ in range(c.text_depth))
        # pre-LN needs a final norm; post-LN blocks end normalised already
        self.text_norm = nn.LayerNorm(c.dim, eps=c.text_eps) if c.text_norm_first else nn.Identity()
        self.init_contrastive_head(c.vision_dim, c.dim, c.embed_dim, c.temp)  # image/text_projection, log_scale
        self.itm_head = nn.Linear(c.dim, 2)
        self.init_word_head(c.dim, c.vocab_size, c.text_eps)  # lm_transform, lm_norm, lm_bias (tied to token_embedding)
        register_image_stats(self, c)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------------ the image
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] → (tokens (B, 1 + N, D_v), ITC feature (B, E) of unit norm)."""
        check_images(images, self.config.image_size)
        tokens = self.visual.forward_features((images - self.image_mean) / self.image_std)  # (B, 1 + N, D_v)
        return tokens, F.normalize(self.image_projection(tokens[:, 0]), dim=-1)

    # ------------------------------------------------------------------------------ the text, three modes
    def check_inputs(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str,
                     image_tokens: torch.Tensor | None) -> torch.Tensor:
        """text_forward's inputs: a known mode, ids (B, T) with their attention mask (B, T) (None:
        every token real), and image_tokens (B, 1 + N, D_v) in the modes that cross-attend ("text"
        ignores them). Returns the attention mask."""
        c = self.config
        check_mode(mode)
        attention_mask = check_text(ids, attention_mask, c)
        if mode != "text":
            if image_tokens is None:
                raise ValueError(f"mode {mode!r} cross-attends to the image: pass image_tokens (B, 1 + N, {c.vision_dim})")
            check_tensor("image_tokens", image_tokens, ndim=3, dtype="float")
            if image_tokens.shape[0] != ids.shape[0] or image_tokens.shape[2] != c.vision_dim:
                raise ValueError(f"image_tokens must be ({ids.shape[0]}, 1 + N, {c.vision_dim}) for ids of shape "
                                 f"{tuple(ids.shape)}, got {tuple(image_tokens.shape)}")
        return attention_mask

    def text_forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str,
                     image_tokens: torch.Tensor | None = None, need_weights: bool = False) -> torch.Tensor:
        """The MED text Transformer in `mode` over ids (B, T) as given (the caller chooses the first
        token); image_tokens (B, 1 + N, D_v) for "encoder" and "decoder". Returns (B, T, D)."""
        attention_mask = self.check_inputs(ids, attention_mask, mode, image_tokens)
        n_image = 0 if mode == "text" else image_tokens.shape[1]
        self_mask, cross_mask = med_masks(attention_mask.bool(), mode, n_image)
        x = self.embed_norm(self.token_embedding(ids) + self.pos_embedding[:, :ids.shape[1]])  # (B, T, D)
        for block in self.blocks:  # "text" blocks skip their cross-attention: image_tokens go unread
            x = block(x, mode, self_mask, image_tokens, cross_mask, need_weights)
        return self.text_norm(x)

    def forward(self, images: torch.Tensor | None, texts, mode: str, attention_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """BLIP in the mode the caller names: texts (B strings, or ids (B, T) "<bos> ... <eos>" with
        their attention_mask) get the mode's first token ([CLS], [ENC] or [DEC]) and run through the
        MED text Transformer, cross-attending to images (B, 3, H, W) in "encoder" and "decoder"
        ("text" ignores them: pass None). Returns the text tokens (B, T, D), for
        text_projection ("text"), itm_logits ("encoder") or lm_logits ("decoder")."""
        check_mode(mode)
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        image_tokens = None
        if mode != "text":
            if images is None:
                raise ValueError(f"mode {mode!r} cross-attends to the image: pass images (B, 3, H, W)")
            image_tokens, _ = self.encode_image(images)  # (B, 1 + N, D_v)
            check_same_batch(images=images, texts=ids)
        return self.text_forward(self.with_first_token(ids, mode), attention_mask, mode, image_tokens, need_weights)

    def encode_text(self, texts, attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unimodal text encoder: B strings or ids (B, T) ("<bos> ... <eos>") → (tokens
        (B, T, D), ITC feature (B, E) of unit norm from the [CLS] token, attention_mask (B, T))."""
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        tokens = self.text_forward(ids, attention_mask, "text")
        return tokens, F.normalize(self.text_projection(tokens[:, 0]), dim=-1), attention_mask

    def with_first_token(self, ids: torch.Tensor, mode: str) -> torch.Tensor:
        """ids with their first token ([CLS]) replaced by the mode's own: [CLS], [ENC] or [DEC]."""
        c = self.config
        first = {"text": c.bos_id, "encoder": c.enc_id, "decoder": c.dec_id}[check_mode(mode)]
        out = ids.clone()
        out[:, 0] = first
        return out

    # ------------------------------------------------------------------------------ heads
    # scale() (1 / temperature for ITC) and lm_logits(decoded) ("decoder" mode → next-word logits)
    # are ContrastiveHead's and LMHead's (nn/heads.py)

    def itm_logits(self, encoded: torch.Tensor) -> torch.Tensor:
        """(B, T, D) from the "encoder" mode → (B, 2) on the [ENC] token; column 1 scores "match"."""
        return self.itm_head(encoded[:, 0])

    def cross_attention_maps(self) -> list[torch.Tensor]:
        """Each block's cross-attention weights (B, H, T, 1 + N) from the last call with need_weights=True."""
        return [b.cross_attn.last_weights for b in self.blocks]

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def match_probability(self, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """P(match) from the ITM head for each (image, caption) pair: (B,)."""
        check_pairs(images, captions, batch_size, "captions")
        out = []
        with eval_mode(self):
            for a in range(0, len(captions), batch_size):
                image_tokens, _ = self.encode_image(images[a:a + batch_size])
                ids, mask = self.tokenize(list(captions[a:a + batch_size]))
                encoded = self.text_forward(self.with_first_token(ids, "encoder"), mask, "encoder", image_tokens)
                out.append(self.itm_logits(encoded).softmax(1)[:, 1])
        return torch.cat(out)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int | None = None, num_beams: int = 1, do_sample: bool = False,
                top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0, generator: torch.Generator | None = None,
                batch_size: int = 256) -> list[str]:
        """A caption per image from the decoder mode: start at [DEC], decode with
        `minivlm.generate.generate` (greedy by default; beam search with num_beams > 1; nucleus
        sampling with do_sample=True, top_p < 1) until <eos> or max_len tokens ([DEC] and <eos>
        included; default: max_text_len)."""
        c = self.config
        check_images_to_caption(images)
        check_images(images, c.image_size)
        check_int("batch_size", batch_size)
        tok = self.get_tokenizer()
        out = []
        with eval_mode(self):
            for a in range(0, len(images), batch_size):
                image_tokens, _ = self.encode_image(images[a:a + batch_size])

                def next_logits(ids, rows, image_tokens=image_tokens):
                    return self.lm_logits(self.text_forward(ids, None, "decoder", image_tokens[rows]))[:, -1]

                out += caption_texts(next_logits, len(image_tokens), c.dec_id, c.eos_id, c.pad_id, max_len,
                                     c.max_text_len, tok, image_tokens.device, num_beams=num_beams,
                                     do_sample=do_sample, top_p=top_p, top_k=top_k, temperature=temperature,
                                     generator=generator)
        return out


# ----------------------------------------------------------------------------- training


class BLIPPretrainer(ALBEFPretrainer):
    """BLIP's pretraining state: ALBEF's (chapter 04) momentum copy of the model, queues of
    momentum image and text features for ITC, and a step counter. `losses` chooses which of ITC,
    ITM and LM a step computes: all three to pretrain; ("lm",) to fine-tune a captioner,
    ("itc", "itm") a filter (CapFilt)."""

    model_type = BLIP

    def __init__(self, model: BLIP, queue_seed: int = 0, losses: Sequence[str] = LOSSES):
        super().__init__(model, queue_seed)
        check_strings("losses", losses)
        if any(k not in LOSSES for k in losses):
            raise ValueError(f"losses must be a non-empty list drawn from {list(LOSSES)}, got {losses!r}")
        self.losses = tuple(losses)

    def forward(self, batch: dict) -> dict:
        return _blip_losses(self, batch)


def _blip_losses(trainer: BLIPPretrainer, batch: dict) -> dict:
    m, mom, c = trainer.model, trainer.momentum, trainer.config
    images = batch.get("images") if isinstance(batch, dict) else None
    b = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else 0
    positives = check_batch(batch, b, keys=("images", "ids", "attention_mask"))
    ids, mask = batch["ids"], batch["attention_mask"].bool()
    logs, total = {}, 0.0
    image_tokens, image_feat = m.encode_image(images)  # (B, 1 + N, D_v), (B, E)

    if "itc" in trainer.losses or "itm" in trainer.losses:
        # ---- the unimodal encoders: ITC against the batch and the momentum queues (ALBEF's)
        alpha = trainer.alpha()
        _, text_feat, _ = m.encode_text(m.with_first_token(ids, "text"), mask)
        with torch.no_grad():
            if trainer.training:
                momentum_update(mom, m, c.momentum)
            image_feat_m = mom.encode_image(images)[1]
            text_feat_m = mom.encode_text(m.with_first_token(ids, "text"), mask)[1]
        itc, sim_i2t, sim_t2i = momentum_itc(trainer, image_feat, text_feat, image_feat_m, text_feat_m, positives,
                                             alpha)
        if "itc" in trainer.losses:
            total = total + itc
            logs.update(itc=itc.detach(), alpha=alpha, temp=1.0 / m.scale().detach())

    if "itm" in trainer.losses:
        # ---- the image-grounded encoder ([ENC]): B positives, B + B hard negatives
        neg_text, neg_image = itm_negatives(sim_i2t, sim_t2i, positives, c.hard_negatives)
        enc_ids = m.with_first_token(ids, "encoder")
        encoded = m.text_forward(torch.cat([enc_ids, enc_ids[neg_text], enc_ids]),
                                 torch.cat([mask, mask[neg_text], mask]), "encoder",
                                 torch.cat([image_tokens, image_tokens, image_tokens[neg_image]]))  # (3B, T, D)
        logits = m.itm_logits(encoded)
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(images.device)
        itm = itm_loss(logits, labels)
        total = total + itm
        logs.update(itm=itm.detach(), itm_acc=(logits.argmax(1) == labels).float().mean().detach())

    if "lm" in trainer.losses:
        # ---- the image-grounded decoder ([DEC]): each caption word from the words before it
        dec_ids = m.with_first_token(ids, "decoder")
        logits = m.lm_logits(m.text_forward(dec_ids, mask, "decoder", image_tokens))  # (B, T, V)
        lm = lm_loss(logits, dec_ids, mask, c.label_smoothing)
        total = total + lm
        logs["lm"] = lm.detach()

    if trainer.training:
        trainer.step += 1
    return {"loss": total, **logs}


def pretrain_step(trainer: BLIPPretrainer, batch: dict) -> dict:
    """BLIP's loss for `minivlm.train.fit`: the sum of the trainer's losses, by default ITC
    (momentum distillation and queues, as ALBEF) + ITM (hard negatives drawn by ITC similarity)
    + LM (next word, label smoothing 0.1). The batch: images, ids "<bos> ... <eos>",
    attention_mask, optional positives (B, B)."""
    core = getattr(trainer, "module", trainer)
    if not isinstance(core, BLIPPretrainer):
        raise TypeError(f"pretrain_step trains a BLIPPretrainer(model), got {type(core).__name__}")
    return trainer(batch)


# ----------------------------------------------------------------------------- data: a web set, a clean set


# ----------------------------------------------------------------------------- CapFilt


@torch.no_grad()
def capfilt(captioner: BLIP, filt: BLIP, web: dict, do_sample: bool = True, top_p: float = 0.9,
            num_beams: int = 3, threshold: float = 0.5, seed: int = 0, batch_size: int = 256) -> dict:
    """Bootstrap a web pair set (one caption per image): the captioner writes a synthetic caption
    per image (nucleus sampling with `top_p`, or beam search with `num_beams` when do_sample is
    False); the filter keeps a web or synthetic caption when its ITM says P(match) > threshold.

    Returns dict(data: the bootstrapped pair set (same images; kept web captions, then kept
    synthetic ones), synthetic (N,) captions, web_kept (N,) bool, synthetic_kept (N,) bool,
    web_match / synthetic_match (N,) the filter's probabilities)."""
    check_pair_set(web)
    if len(web["captions"]) != len(web["images"]) or not torch.equal(torch.as_tensor(web["image_ids"]),
                                                                        torch.arange(len(web["images"]))):
        raise ValueError("capfilt bootstraps a web set with one caption per image, in image order "
                         "(see image_text_pairs)")
    check_number("threshold", threshold, 0.0, 1.0, lo_open=True, hi_open=True)
    g = torch.Generator().manual_seed(seed)
    images = web["images"]
    synthetic = captioner.caption(images, do_sample=do_sample, top_p=top_p, num_beams=1 if do_sample else num_beams,
                                  generator=g, batch_size=batch_size)
    synthetic = [s if s else "." for s in synthetic]  # an empty caption still gets judged (and dropped)
    web_match = filt.match_probability(images, list(web["captions"]), batch_size)
    synthetic_match = filt.match_probability(images, synthetic, batch_size)
    web_kept, synthetic_kept = web_match > threshold, synthetic_match > threshold
    keep_web, keep_syn = web_kept.nonzero().flatten(), synthetic_kept.nonzero().flatten()
    data = {"images": images, "scenes": web["scenes"],
            "captions": [web["captions"][i] for i in keep_web.tolist()] + [synthetic[i] for i in keep_syn.tolist()],
            "image_ids": torch.cat([keep_web, keep_syn])}
    return {"data": data, "synthetic": synthetic, "web_kept": web_kept, "synthetic_kept": synthetic_kept,
            "web_match": web_match, "synthetic_match": synthetic_match}


def filter_scores(web_kept: torch.Tensor, clean: torch.Tensor) -> dict:
    """How well the filter caught the noisy web captions: precision (of the captions it
    removed, the share that were noisy) and recall (of the noisy captions, the share it
    removed), each with a Wilson interval; plus the count removed and the count noisy."""

    check_tensor("web_kept", web_kept, ndim=1, dtype="bool")
    check_tensor("clean", clean, ndim=1, dtype="bool")
    if web_kept.shape != clean.shape:
        raise ValueError(f"web_kept and clean must have the same length, got {len(web_kept)} and {len(clean)}")
    removed, noisy = ~web_kept, ~clean
    return {"precision": interval(noisy[removed].tolist()) if bool(removed.any()) else None,
            "recall": interval(removed[noisy].tolist()) if bool(noisy.any()) else None,
            "removed": int(removed.sum()), "noisy": int(noisy.sum())}


# ----------------------------------------------------------------------------- evaluation


# The zoo's BLIP drops the paper's label smoothing: spread over our 603 tokens, of which captions use
# 37, it teaches the decoder to put about 9 % of its probability on words no caption contains, and
# nucleus sampling then draws them (chapter 06 measures it).
BLIP_CONFIG = dict(image_size=32, patch_size=4, dim=64, vision_depth=3, text_depth=2, heads=4, embed_dim=64,
                   max_text_len=32, label_smoothing=0.0)
