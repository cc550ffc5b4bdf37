"""CoCa: contrastive and captioning losses in one image-text model, one text pass per step (chapter 07).

Yu, Wang, Vasudevan, Yeung, Seyedhosseini and Wu, "CoCa: Contrastive Captioners are Image-Text
Foundation Models", 2022.

ALBEF and BLIP (chapters 04 and 06) run the caption through their text Transformer two or three
times per step, once per loss. CoCa cuts its text decoder in half and runs it once:

    image tokens   = ViT(image)                                          (B, 1 + N, D_v)
    image embed    = contrastive pooler (1 learned query)     → ITC      (B, E)
    image queries  = captioning pooler (n learned queries)    → read by the decoder (B, n, D)
    unimodal half  : causal self-attention only, over [words ; CLS]: the CLS appended at the end
                     sees every word, and its output is the text embedding for ITC
    multimodal half: causal self-attention + cross-attention to the image queries, over the words;
                     an LM head predicts each next word (captioning)
    loss           = λ_con · contrastive (CLIP's, chapter 02) + λ_cap · captioning (next word)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.bench import ShapesBench
from minivlm.eval import classify_zero_shot, evaluate_captions, interval, itc_similarity, to_record
from minivlm.generate import caption_texts, check_images_to_caption
from minivlm.losses import clip_loss, lm_loss
from minivlm.nn import Transformer, ViT, masks
from minivlm.nn.heads import ContrastiveHead
from minivlm.nn.inputs import (
    TextInputs,
    check_encoder_config,
    check_images,
    check_text,
    fill_token_ids,
    register_image_stats,
)
from minivlm.nn.pooling import AttentionalPooler
from minivlm.utils import check_int, check_number, check_tensor, eval_mode, unwrap


@dataclass
class CoCaConfig:
    """Small defaults for 32×32 ShapesWorld images; CoCa-Base's values in the comments."""

    image_size: int = 32
    patch_size: int = 4
    dim: int = 64  # 768
    vision_depth: int = 3  # 12
    unimodal_depth: int = 2  # 12: the decoder's first half, text only
    multimodal_depth: int = 2  # 12: the second half, with cross-attention to the image queries
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 64  # the contrastive space
    caption_queries: int = 16  # 256: the captioning pooler's learned queries
    vocab_size: int | None = None
    max_text_len: int = 32  # words, <bos> and <eos> included; the CLS is one more position
    act: str = "gelu"
    eps: float = 1e-5
    temp: float = 0.07
    max_scale: float = 100.0
    contrastive_weight: float = 1.0  # λ_con (1)
    caption_weight: float = 2.0  # λ_cap (2)
    label_smoothing: float = 0.0  # (0.1 in CoCa's captioning fine-tunes)
    # CLIP's ViT positions (std 0.02). Chapter 03's fusion encoders start them as large as the
    # patches (std 1); behind CLIP's pre-norm that drowns what the patches show, and the
    # contrastive half learned 3x slower (measured in the chapter: the zoo's "coca_pos1" arm)
    pos_init_std: float = 0.02
    vision_pre_norm: bool = True  # chapter 02's CLIP layout, so that its tower can initialise ours
    patch_bias: bool = False
    pad_id: int | None = None
    mask_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self)
        check_encoder_config(self, ints=("vision_depth", "unimodal_depth", "multimodal_depth", "embed_dim",
                                         "caption_queries"))
        for name in ("contrastive_weight", "caption_weight"):
            check_number(name, getattr(self, name), 0.0, float("inf"), hi_open=True)
        if self.contrastive_weight == 0 and self.caption_weight == 0:
            raise ValueError("contrastive_weight and caption_weight are both 0: nothing would be trained")


class CoCa(TextInputs, ContrastiveHead, nn.Module):
    """ViT + two attentional poolers + a text decoder split into unimodal and multimodal halves."""

    def __init__(self, config: CoCaConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or CoCaConfig()
        self.visual = ViT(image_size=c.image_size, patch_size=c.patch_size, dim=c.dim, depth=c.vision_depth,
                          heads=c.heads, mlp_ratio=c.mlp_ratio, pool="cls", act=c.act, eps=c.eps,
                          pre_norm=c.vision_pre_norm, patch_bias=c.patch_bias)
        nn.init.normal_(self.visual.pos_embedding, std=c.pos_init_std)
        self.contrastive_pooler = AttentionalPooler(c.dim, n_queries=1, heads=c.heads, eps=c.eps)
        self.caption_pooler = AttentionalPooler(c.dim, n_queries=c.caption_queries, heads=c.heads, eps=c.eps)
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.cls_embedding = nn.Parameter(torch.randn(c.dim) * 0.02)  # appended after the words
        self.pos_embedding = nn.Parameter(torch.randn(1, c.max_text_len + 1, c.dim) * 0.01)
        self.unimodal = Transformer(c.dim, c.unimodal_depth, c.heads, mlp_ratio=c.mlp_ratio, act=c.act, eps=c.eps)
        self.cls_norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.multimodal = Transformer(c.dim, c.multimodal_depth, c.heads, mlp_ratio=c.mlp_ratio, act=c.act,
                                      eps=c.eps, cross_attention=True)
        self.text_norm = nn.LayerNorm(c.dim, eps=c.eps)
        # image_projection, text_projection (no bias, as CLIP's) and log_scale = log(1 / temp)
        self.init_contrastive_head(c.dim, c.dim, c.embed_dim, c.temp, bias=False)
        register_image_stats(self, c)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------------ the image
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] → (ITC feature (B, E) of unit norm, caption queries
        (B, caption_queries, D) for the multimodal half)."""
        check_images(images, self.config.image_size)
        tokens = self.visual.forward_features((images - self.image_mean) / self.image_std)  # (B, 1 + N, D)
        pooled = self.contrastive_pooler(tokens)[:, 0]  # (B, D)
        return F.normalize(self.image_projection(pooled), dim=-1), self.caption_pooler(tokens)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption queries (B, n, D), ITC feature (B, E)): the order ALBEF's and BLIP's
        encode_image use (tokens first, unit feature second), so their retrieval code serves."""
        feature, queries = self.image_features(images)
        return queries, feature

    # ------------------------------------------------------------------------------ the text: one pass
    def check_inputs(self, ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     image_queries: torch.Tensor | None) -> torch.Tensor:
        """decode's inputs: ids (B, T) with their attention mask (None: every token real) and, if
        given, image_queries (B, n, D). Returns the attention mask."""
        c = self.config
        attention_mask = check_text(ids, attention_mask, c)
        if image_queries is not None:
            check_tensor("image_queries", image_queries, ndim=3, dtype="float")
            if image_queries.shape[0] != ids.shape[0] or image_queries.shape[2] != c.dim:
                raise ValueError(f"image_queries must be ({ids.shape[0]}, n, {c.dim}), got {tuple(image_queries.shape)}")
        return attention_mask

    def decode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               image_queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass of the decoder over ids (B, T): returns (text embedding (B, E) of unit norm from
        the appended CLS, next-word logits (B, T, V) from the multimodal half, or None when
        image_queries is None: the unimodal half alone, for retrieval)."""
        attention_mask = self.check_inputs(ids, attention_mask, image_queries)
        b, t = ids.shape
        words = self.token_embedding(ids)  # (B, T, D)
        x = torch.cat([words, self.cls_embedding.expand(b, 1, -1)], dim=1) + self.pos_embedding[:, :t + 1]
        valid = torch.cat([attention_mask.bool(), torch.ones(b, 1, dtype=torch.bool, device=ids.device)], dim=1)
        mask = masks.causal(t + 1, ids.device) & masks.padding(valid)  # the CLS, last, sees every real word
        x = self.unimodal(x, mask=mask)  # (B, T + 1, D)
        text_feature = F.normalize(self.text_projection(self.cls_norm(x[:, -1])), dim=-1)
        if image_queries is None:
            return text_feature, None
        y = self.multimodal(x[:, :t], mask=mask[..., :t, :t], context=image_queries)  # the words only
        logits = F.linear(self.text_norm(y), self.token_embedding.weight)  # (B, T, V), tied
        return text_feature, logits

    def encode_text(self, texts, attention_mask: torch.Tensor | None = None
                    ) -> tuple[None, torch.Tensor, torch.Tensor]:
        """B strings or ids (B, T) → (None, ITC feature (B, E), attention_mask): the unimodal half only."""
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        return None, self.decode(ids, attention_mask)[0], attention_mask

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int | None = None, num_beams: int = 1,
                do_sample: bool = False, top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> list[str]:
        """A caption per image: start at <bos>, decode with `minivlm.generate.generate` until <eos>
        or max_len tokens (<bos> and <eos> included; default max_text_len)."""
        c = self.config
        check_images_to_caption(images)
        with eval_mode(self):
            _, queries = self.image_features(images)

            def next_logits(ids, rows):
                return self.decode(ids, None, queries[rows])[1][:, -1]

            return caption_texts(next_logits, len(images), c.bos_id, c.eos_id, c.pad_id, max_len, c.max_text_len,
                                 self.get_tokenizer(), queries.device, num_beams=num_beams, do_sample=do_sample,
                                 top_p=top_p, top_k=top_k, temperature=temperature, generator=generator)


def coca_step(model: CoCa, batch: dict) -> dict:
    """CoCa's loss for `minivlm.train.fit`: λ_con · CLIP's contrastive loss on (pooled image, CLS)
    + λ_cap · next-word loss, from ONE pass of the text. batch: images (B, 3, H, W), ids
    "<bos> ... <eos>" (B, T), attention_mask (B, T)."""
    core = unwrap(model, CoCa, "coca_step")
    if not isinstance(batch, dict) or any(k not in batch for k in ("images", "ids", "attention_mask")):
        raise ValueError("batch must be a dict with images, ids and attention_mask")
    c = core.config
    image_feature, queries = core.image_features(batch["images"])
    text_feature, logits = core.decode(batch["ids"], batch["attention_mask"], queries)
    contrastive = clip_loss(image_feature, text_feature, core.scale())
    caption = lm_loss(logits, batch["ids"], batch["attention_mask"], c.label_smoothing)
    loss = c.contrastive_weight * contrastive + c.caption_weight * caption
    return {"loss": loss, "contrastive": contrastive.detach(), "caption": caption.detach(),
            "temp": 1.0 / core.scale().detach()}


def captions_of(model: CoCa, images: torch.Tensor, batch_size: int = 256, **kwargs) -> list[str]:
    """model.caption over images in batches."""
    check_images_to_caption(images)
    check_int("batch_size", batch_size)
    out: list[str] = []
    for a in range(0, len(images), batch_size):
        out += model.caption(images[a:a + batch_size], **kwargs)
    return out


__all__: Sequence[str] = ("CoCaConfig", "CoCa", "coca_step", "captions_of")


COCA_CONFIG = dict(image_size=32, patch_size=4, dim=64, vision_depth=3, unimodal_depth=2, multimodal_depth=2,
                   heads=4, embed_dim=64, caption_queries=16, max_text_len=32)


def coca_metrics(model, bench_seed: int = 1234, caption_n: int = 256, retrieval_n: int = 256) -> dict:
    """Chapter 07's ShapesBench figures of a CoCa or a PrefixLM, as its zoo manifest stores them
    (value, 95 % interval, n): captions (both models); zero-shot and retrieval (CoCa, the model
    with a contrastive head)."""
    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    cap = bench.captioning(caption_n)
    ev = evaluate_captions(model, cap["images"], cap["scenes"])
    out = {"cider": to_record(ev["cider"]), "bleu4": round(ev["bleu4"], 4), "caption_true": to_record(ev["true"])}
    if hasattr(model, "encode_text"):
        for split in ("seen", "heldout"):
            data = bench.classification(split)
            hits = (classify_zero_shot(model, data).argmax(1) == data["labels"]).tolist()
            out[f"zero_shot_{split}"] = to_record(interval(hits))
        ret = bench.retrieval(retrieval_n)
        hits = (itc_similarity(model, ret["images"], ret["captions"]).argmax(1) == torch.arange(retrieval_n)).tolist()
        out["i2t_r1"] = to_record(interval(hits))
    return out
