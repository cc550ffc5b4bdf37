"""ALBEF: align the two towers with a contrastive loss, then fuse them (chapter 04).

Li, Selvaraju, Gotmare, Joty, Xiong and Hoi, "Align before Fuse: Vision and Language
Representation Learning with Momentum Distillation", 2021.

Fusion encoders before ALBEF (ViLT, chapter 03, and the region-based models it replaced) fed
image and word tokens that had never met into one Transformer, which then had to align *and*
fuse them. ALBEF aligns first:

    image tokens  = ViT(image)                                   (B, 1 + N, D)
    text tokens   = text encoder(words)   (the first layers of a BERT, no image)   (B, T, D)
    ITC           = contrastive loss on the projected first tokens (CLIP's, chapter 02, with
                    a momentum encoder and queues of its features as extra negatives)
    fused         = fusion encoder(text tokens, cross-attending to the image tokens)
                    (the last layers of the BERT, each with cross-attention)      (B, T, D)
    ITM           = match / no match on fused[:, 0], with hard negatives drawn by ITC similarity
    MLM           = masked words predicted from the fused tokens

Training (`ALBEFPretrainer`) keeps a momentum (EMA) copy of the model and two queues, and can
distil: ITC and MLM targets mixed with the momentum model's own predictions (MoD).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.masking import IGNORE_INDEX
from minivlm.data.pairs import check_batch, check_batch_keys
from minivlm.losses import (
    check_alpha,
    itm_loss,
    itm_negatives,
    mlm_loss,
    momentum_itc,
    soft_cross_entropy,
)
from minivlm.nn import TextTransformer, Transformer, ViT, masks
from minivlm.nn.heads import ContrastiveHead, MLMHead
from minivlm.nn.inputs import (
    TextInputs,
    check_encoder_config,
    check_images,
    check_pairs,
    fill_token_ids,
    register_image_stats,
)
from minivlm.nn.momentum import FeatureQueue, check_momentum, momentum_copy, momentum_update
from minivlm.utils import check_int, check_same_batch, check_tensor, eval_mode

ITC_TARGETS = ("captions", "one_hot")


@dataclass
class ALBEFConfig:
    """Small defaults for 32×32 ShapesWorld images; vocab_size / pad_id / mask_id left as None
    come from the course tokenizer. The ALBEF paper's values are in the comments."""

    image_size: int = 32
    patch_size: int = 8
    dim: int = 64  # both towers (ViT-B/16 and BERT-base: 768)
    vision_depth: int = 3  # 12
    text_depth: int = 2  # text encoder: BERT layers 1-6
    fusion_depth: int = 2  # fusion encoder: BERT layers 7-12, each with cross-attention
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 64  # ITC space (256)
    vocab_size: int | None = None
    max_text_len: int = 32  # <bos> and <eos> included (30)
    act: str = "gelu"
    eps: float = 1e-5
    pos_init_std: float = 1.0  # image positions start as large as the patches (chapter 03's lesson)
    vision_pre_norm: bool = True  # the ViT layout of chapter 02's CLIP (a LayerNorm before the blocks,
    patch_bias: bool = False  # no patch bias), so its trained image tower can initialise ours
    temp: float = 0.07  # initial ITC temperature (0.07), learned (see ALBEF.scale)
    max_scale: float = 100.0  # 1 / temperature is clamped here, i.e. temperature >= 0.01
    # training (used by ALBEFPretrainer)
    queue_size: int = 256  # momentum features kept as extra ITC negatives (65,536); a multiple of the batch
    momentum: float = 0.99  # EMA coefficient of the momentum model (0.995; see the chapter for ours)
    alpha: float = 0.4  # distillation weight (0.4), ramped up from 0 over `alpha_warmup` steps
    alpha_warmup: int = 150  # the paper ramps α over its first epoch
    distill: bool = True  # momentum distillation (MoD) on ITC and MLM
    hard_negatives: bool = True  # ITM negatives drawn by ITC similarity (False: uniformly)
    # ITC's targets: "captions" = every caption in the batch that is true of the image is a positive
    # (ShapesWorld knows which; no in-batch false negatives), "one_hot" = only the image's own caption,
    # as the paper, where a duplicate caption in the batch is a false negative MoD may soften
    itc_targets: str = "captions"
    itc_only: bool = False  # train ITC alone (no ITM, no MLM: a control arm; the fusion encoder stays untrained)
    pad_id: int | None = None
    mask_id: int | None = None
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self)
        check_encoder_config(self, ints=("vision_depth", "text_depth", "fusion_depth", "embed_dim", "queue_size"))
        check_int("alpha_warmup", self.alpha_warmup, lo=0)
        check_momentum(self.momentum)
        check_alpha(self.alpha)
        if self.itc_targets not in ITC_TARGETS:
            raise ValueError(f"itc_targets must be one of {ITC_TARGETS}, got {self.itc_targets!r}")
        if not isinstance(self.itc_only, bool):
            raise TypeError(f"itc_only must be True or False, got {self.itc_only!r}")


class ALBEF(TextInputs, ContrastiveHead, MLMHead, nn.Module):
    """Image encoder (ViT), text encoder, fusion encoder (cross-attention), ITC projections and
    temperature, ITM and MLM heads. The momentum copy and the queues live in `ALBEFPretrainer`,
    so a saved ALBEF holds only what inference needs."""

    tied_embedding = "text.token_embedding"  # the MLM head's output layer (MLMHead)

    def __init__(self, config: ALBEFConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or ALBEFConfig()
        self.visual = ViT(image_size=c.image_size, patch_size=c.patch_size, dim=c.dim, depth=c.vision_depth,
                          heads=c.heads, mlp_ratio=c.mlp_ratio, pool="cls", act=c.act, eps=c.eps,
                          pre_norm=c.vision_pre_norm, patch_bias=c.patch_bias)
        nn.init.normal_(self.visual.pos_embedding, std=c.pos_init_std)
        # the text encoder: bidirectional (BERT), its first token <bos> plays [CLS]
        self.text = TextTransformer(c.vocab_size, max_len=c.max_text_len, dim=c.dim, depth=c.text_depth,
                                    heads=c.heads, mlp_ratio=c.mlp_ratio, causal=False, act=c.act, eps=c.eps)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)  # BERT's init; the MLM decoder shares it
        # the fusion encoder: self-attention over the text, then cross-attention to the image tokens
        self.fusion = Transformer(c.dim, c.fusion_depth, c.heads, mlp_ratio=c.mlp_ratio, act=c.act, eps=c.eps,
                                  cross_attention=True)
        self.fusion_norm = nn.LayerNorm(c.dim, eps=c.eps)
        # ITC: image_projection, text_projection, log_scale. The temperature is learned as
        # log(1 / temperature), as CLIP does: ALBEF's code learns the temperature itself with lr
        # 1e-4; at our lr 2e-3 that collapsed it from 0.07 to 0.01 within 400 steps
        self.init_contrastive_head(c.dim, c.dim, c.embed_dim, c.temp)
        self.itm_head = nn.Linear(c.dim, 2)
        self.init_word_head(c.dim, c.vocab_size, c.eps)  # mlm_transform, mlm_norm, mlm_bias: BERT's tied MLM head
        register_image_stats(self, c)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------------ the three encoders
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] → (tokens (B, 1 + N, D), ITC feature (B, E) of unit norm)."""
        check_images(images, self.config.image_size)
        tokens = self.visual.forward_features((images - self.image_mean) / self.image_std)  # (B, 1 + N, D)
        return tokens, F.normalize(self.image_projection(tokens[:, 0]), dim=-1)

    def encode_text(self, texts, attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """texts: B strings or ids (B, T) → (tokens (B, T, D), ITC feature (B, E), attention_mask (B, T))."""
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        tokens = self.text(ids, attention_mask)  # (B, T, D); checks ids and mask
        return tokens, F.normalize(self.text_projection(tokens[:, 0]), dim=-1), attention_mask

    def fuse(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor,
             need_weights: bool = False) -> torch.Tensor:
        """The fusion encoder: text tokens (B, T, D) attend to each other (padding masked) and,
        in every layer, to all image tokens (B, 1 + N, D). Returns fused text tokens (B, T, D)."""
        check_tensor("text_tokens", text_tokens, ndim=3, dtype="float")
        check_tensor("image_tokens", image_tokens, ndim=3, dtype="float")
        check_same_batch(text_tokens=text_tokens, image_tokens=image_tokens)
        x = self.fusion(text_tokens, mask=masks.padding(attention_mask.bool()), context=image_tokens,
                        need_weights=need_weights)
        return self.fusion_norm(x)

    def forward(self, images: torch.Tensor, texts, attention_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """images (B, 3, H, W), texts (B strings or ids (B, T)) → fused text tokens (B, T, D)."""
        n = texts.shape[0] if isinstance(texts, torch.Tensor) else len(texts) if isinstance(texts, (list, tuple)) else None
        if n is not None and images.shape[0] != n:
            raise ValueError(f"batch sizes must match, got images={images.shape[0]}, texts={n}")
        image_tokens, _ = self.encode_image(images)
        text_tokens, _, attention_mask = self.encode_text(texts, attention_mask)
        return self.fuse(text_tokens, attention_mask, image_tokens, need_weights)

    # ------------------------------------------------------------------------------ heads
    # scale() (1 / temperature) and mlm_logits(fused) are ContrastiveHead's and MLMHead's (nn/heads.py)

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, T, D) fused tokens → (B, 2) on the first token; column 1 scores "match"."""
        return self.itm_head(fused[:, 0])

    def cross_attention_maps(self) -> list[torch.Tensor]:
        """Each fusion layer's cross-attention weights (B, H, T, 1 + N) from the last call with need_weights=True."""
        return [b.cross_attn.last_weights for b in self.fusion.blocks]

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def match_probability(self, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """P(match) from the ITM head for each (image, caption) pair: (B,)."""
        check_pairs(images, captions, batch_size, "captions")
        with eval_mode(self):
            out = [self.itm_logits(self(images[a:a + batch_size], list(captions[a:a + batch_size]))).softmax(1)[:, 1]
                   for a in range(0, len(captions), batch_size)]
        return torch.cat(out)


# ----------------------------------------------------------------------------- training


class ALBEFPretrainer(nn.Module):
    """What pretraining adds to an ALBEF: its momentum copy, a queue of momentum image features
    and one of text features, and a step counter (for α's ramp). Pass it to `minivlm.train.fit`
    with `pretrain_step`; only `self.model`'s parameters are trained (the momentum copy has
    requires_grad=False), and a checkpoint of the trainer holds all of it, so a resumed run
    continues exactly."""

    model_type = ALBEF  # BLIP's trainer (chapter 06) is this one with another model and loss

    def __init__(self, model: ALBEF, queue_seed: int = 0):
        super().__init__()
        if not isinstance(model, self.model_type):
            name = self.model_type.__name__
            raise TypeError(f"model must be {'an' if name[0] in 'AEIOU' else 'a'} {name}, got {type(model).__name__}")
        self.model = model
        self.momentum = momentum_copy(model)
        g = torch.Generator().manual_seed(queue_seed)
        c = model.config
        self.image_queue = FeatureQueue(c.queue_size, c.embed_dim, generator=g)
        self.text_queue = FeatureQueue(c.queue_size, c.embed_dim, generator=g)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def config(self) -> ALBEFConfig:
        return self.model.config

    def alpha(self) -> float:
        """The distillation weight now: α·min(1, step / alpha_warmup), 0 without MoD."""
        c = self.config
        if not c.distill:
            return 0.0
        return c.alpha * min(1.0, int(self.step) / c.alpha_warmup) if c.alpha_warmup else c.alpha

    def forward(self, batch: dict) -> dict:
        """One pretraining step's losses: ITC + ITM + MLM (see `pretrain_step`)."""
        return _pretrain_losses(self, batch)


def _pretrain_losses(trainer: ALBEFPretrainer, batch: dict) -> dict:
    m, mom, c = trainer.model, trainer.momentum, trainer.config
    check_batch_keys(batch, ("images", "ids", "attention_mask", "mlm_ids", "mlm_labels"), "pretrain_batches")
    images, ids, mask = batch["images"], batch["ids"], batch["attention_mask"]
    b = images.shape[0]
    if c.queue_size % b:
        raise ValueError(f"queue_size={c.queue_size} must be a multiple of the batch size, got a batch of {b}")
    positives = check_batch(batch, b)  # (B, B): caption j is true of image i
    alpha = trainer.alpha()
    scale = m.scale()
    itc_positives = positives if c.itc_targets == "captions" else torch.eye(b, dtype=torch.bool, device=positives.device)

    # ---- pass 1: the two unimodal encoders, ITC against the batch and the queues
    image_tokens, image_feat = m.encode_image(images)  # (B, 1 + N, D), (B, E)
    text_tokens, text_feat, _ = m.encode_text(ids, mask)  # (B, T, D), (B, E)
    with torch.no_grad():
        if trainer.training:
            momentum_update(mom, m, c.momentum)
        image_tokens_m, image_feat_m = mom.encode_image(images)
        _, text_feat_m, _ = mom.encode_text(ids, mask)
    itc, sim_i2t, sim_t2i = momentum_itc(trainer, image_feat, text_feat, image_feat_m, text_feat_m, itc_positives,
                                         alpha)
    if c.itc_only:
        if trainer.training:
            trainer.step += 1
        return {"loss": itc, "itc": itc.detach(), "alpha": alpha, "temp": 1.0 / scale.detach()}

    # ---- pass 2: the fusion encoder on B positive pairs and 2B negatives, ITM
    fused_pos = m.fuse(text_tokens, mask, image_tokens)
    neg_text, neg_image = itm_negatives(sim_i2t, sim_t2i, positives, c.hard_negatives)
    fused_neg = m.fuse(torch.cat([text_tokens[neg_text], text_tokens]), torch.cat([mask[neg_text], mask]),
                       torch.cat([image_tokens, image_tokens[neg_image]]))  # (2B, T, D)
    itm_logits = m.itm_logits(torch.cat([fused_pos, fused_neg]))  # (3B, 2)
    itm_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(images.device)
    itm = itm_loss(itm_logits, itm_labels)

    # ---- pass 3: masked captions through the text and fusion encoders, MLM (+ distillation)
    mlm_ids, labels = batch["mlm_ids"], batch["mlm_labels"]
    logits = m.mlm_logits(m.fuse(m.encode_text(mlm_ids, mask)[0], mask, image_tokens))  # (B, T, V)
    mlm = mlm_loss(logits, labels)
    chosen = labels != IGNORE_INDEX
    if c.distill and bool(chosen.any()):
        with torch.no_grad():
            logits_m = mom.mlm_logits(mom.fuse(mom.encode_text(mlm_ids, mask)[0], mask, image_tokens_m))
        distilled = soft_cross_entropy(logits[chosen], logits_m[chosen].softmax(-1))
        mlm = (1 - alpha) * mlm + alpha * distilled
    if trainer.training:
        trainer.step += 1
    with torch.no_grad():
        itm_acc = (itm_logits.argmax(1) == itm_labels).float().mean()
    return {"loss": itc + itm + mlm, "itc": itc.detach(), "itm": itm.detach(), "mlm": mlm.detach(),
            "itm_acc": itm_acc, "alpha": alpha, "temp": 1.0 / scale.detach()}


def pretrain_step(trainer: ALBEFPretrainer, batch: dict) -> dict:
    """ALBEF's loss for `minivlm.train.fit`: ITC + ITM + MLM, three passes, as the paper.

    1. the image and text encoders; ITC (InfoNCE with temperature) of each image against the
       B captions of the batch and the `queue_size` momentum text features of earlier batches
       (and each caption against images alike), targets mixed with the momentum model's
       similarities when distilling;
    2. the fusion encoder on the B true pairs and on 2B negatives, one hard negative caption
       per image and one hard negative image per caption, drawn in proportion to the ITC
       softmax (`minivlm.losses.sample_negatives`), never a positive; ITM on the first token;
    3. the masked captions (15 %) through text and fusion encoders; MLM, mixed with the
       momentum model's predictions when distilling.
    The momentum model is updated (EMA) and the queues receive its features at every step.
    With config.itc_targets="one_hot" ITC's positive is the image's own caption only (ITM's negatives
    still never draw a caption that is true of the image); with config.itc_only, step 1 alone.
    """
    core = getattr(trainer, "module", trainer)
    if not isinstance(core, ALBEFPretrainer):
        raise TypeError(f"pretrain_step trains an ALBEFPretrainer(model), got {type(core).__name__}")
    return trainer(batch)


# ----------------------------------------------------------------------------- training data


# ----------------------------------------------------------------------------- evaluation



ALBEF_CONFIG = dict(image_size=32, patch_size=4, dim=64, vision_depth=3, text_depth=2, fusion_depth=2, heads=4,
                    embed_dim=64, max_text_len=32)
