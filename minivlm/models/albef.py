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

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.masking import IGNORE_INDEX, mlm_mask
from minivlm.data.shapesworld import ShapesWorld
from minivlm.losses import check_alpha, itm_loss, mix_targets, mlm_loss, sample_negatives, soft_cross_entropy
from minivlm.models.inputs import (
    TextInputs,
    check_encoder_config,
    check_ids_in_vocab,
    check_image_stats,
    check_images,
    check_pairs,
    fill_token_ids,
    register_image_stats,
)
from minivlm.models.vilt import evaluate_itm  # noqa: F401  (the same ITM protocol, re-exported for chapter 04)
from minivlm.nn import TextTransformer, Transformer, ViT, masks
from minivlm.nn.blocks import ACTIVATIONS
from minivlm.nn.momentum import FeatureQueue, check_momentum, momentum_copy, momentum_update
from minivlm.utils import check_int, check_number, check_tensor, eval_mode


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
    pad_id: int | None = None
    mask_id: int | None = None
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self)
        check_encoder_config(self, ("image_size", "patch_size", "dim", "vision_depth", "text_depth", "fusion_depth",
                                    "heads", "embed_dim", "vocab_size", "max_text_len", "queue_size"))
        check_int("alpha_warmup", self.alpha_warmup, lo=0)
        check_number("mlp_ratio", self.mlp_ratio, 0, float("inf"), lo_open=True)
        check_number("pos_init_std", self.pos_init_std, 0, float("inf"))
        check_number("eps", self.eps, 0, 1.0, lo_open=True)
        check_number("temp", self.temp, 0.001, 1.0, lo_open=True)
        check_number("max_scale", self.max_scale, 1.0, 1e4)
        check_momentum(self.momentum)
        check_alpha(self.alpha)
        for name in ("distill", "hard_negatives", "vision_pre_norm", "patch_bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_ids_in_vocab(self)
        check_image_stats(self)


class ALBEF(TextInputs, nn.Module):
    """Image encoder (ViT), text encoder, fusion encoder (cross-attention), ITC projections and
    temperature, ITM and MLM heads. The momentum copy and the queues live in `ALBEFPretrainer`,
    so a saved ALBEF holds only what inference needs."""

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
        self.image_projection = nn.Linear(c.dim, c.embed_dim)
        self.text_projection = nn.Linear(c.dim, c.embed_dim)
        # learned as log(1 / temperature), as CLIP does: ALBEF's code learns the temperature itself
        # with lr 1e-4; at our lr 2e-3 that collapsed it from 0.07 to 0.01 within 400 steps
        self.log_scale = nn.Parameter(torch.tensor(-math.log(c.temp)))
        self.itm_head = nn.Linear(c.dim, 2)
        self.mlm_transform = nn.Linear(c.dim, c.dim)
        self.mlm_norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))  # the decoder's weight is the word embeddings'
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
        if text_tokens.shape[0] != image_tokens.shape[0]:
            raise ValueError(f"batch sizes must match, got text_tokens={text_tokens.shape[0]}, "
                             f"image_tokens={image_tokens.shape[0]}")
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
    def scale(self) -> torch.Tensor:
        """1 / temperature, the factor on ITC's cosine similarities: exp(log_scale), clamped at max_scale."""
        return self.log_scale.exp().clamp(max=self.config.max_scale)

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, T, D) fused tokens → (B, 2) on the first token; column 1 scores "match"."""
        return self.itm_head(fused[:, 0])

    def mlm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, V) word logits; the output layer is the word embedding matrix (tied)."""
        x = self.mlm_norm(ACTIVATIONS[self.config.act](self.mlm_transform(fused)))
        return F.linear(x, self.text.token_embedding.weight, self.mlm_bias)

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


def init_vision_from_clip(model: ALBEF, clip) -> ALBEF:
    """Start ALBEF's image encoder from a trained CLIP's image tower (chapter 02's zoo CLIP), as
    the paper starts from an ImageNet-trained ViT (DeiT) and a pretrained BERT. The ViTs must
    have the same layout (image and patch size, width, depth, heads, pre-norm, patch bias).
    Copies the weights in place and returns `model`."""
    theirs = clip.visual.state_dict()
    mine = model.visual.state_dict()
    problems = [f"{k}: ours {tuple(v.shape)}, CLIP's {tuple(theirs[k].shape) if k in theirs else 'missing'}"
                for k, v in mine.items() if k not in theirs or theirs[k].shape != v.shape]
    problems += [f"{k}: only in CLIP's tower" for k in theirs if k not in mine]
    if problems:
        raise ValueError(f"this CLIP's image tower does not fit ALBEF's (config image_size, patch_size, dim, "
                         f"vision_depth, heads, vision_pre_norm, patch_bias must match): {problems[:3]}")
    if tuple(clip.config.image_mean) != model.config.image_mean or tuple(clip.config.image_std) != model.config.image_std:
        raise ValueError(f"CLIP normalises images with mean {clip.config.image_mean}, std {clip.config.image_std}; "
                         f"this ALBEF with {model.config.image_mean}, {model.config.image_std}")
    model.visual.load_state_dict(theirs)
    return model



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
    images, ids, mask = batch["images"], batch["ids"], batch["attention_mask"]
    b = images.shape[0]
    if c.queue_size % b:
        raise ValueError(f"queue_size={c.queue_size} must be a multiple of the batch size, got a batch of {b}")
    positives = _check_batch(batch, b)  # (B, B): caption j is true of image i
    alpha = trainer.alpha()
    scale = m.scale()

    # ---- pass 1: the two unimodal encoders, ITC against the batch and the queues
    image_tokens, image_feat = m.encode_image(images)  # (B, 1 + N, D), (B, E)
    text_tokens, text_feat, _ = m.encode_text(ids, mask)  # (B, T, D), (B, E)
    with torch.no_grad():
        if trainer.training:
            momentum_update(mom, m, c.momentum)
        image_tokens_m, image_feat_m = mom.encode_image(images)
        _, text_feat_m, _ = mom.encode_text(ids, mask)
    itc, sim_i2t, sim_t2i = momentum_itc(trainer, image_feat, text_feat, image_feat_m, text_feat_m, positives, alpha)

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


def momentum_itc(trainer: ALBEFPretrainer, image_feat: torch.Tensor, text_feat: torch.Tensor,
                 image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, positives: torch.Tensor, alpha: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITC of B images and B texts against the batch and the trainer's queues of momentum
    features, with targets mixed with the momentum model's similarities when distilling; the
    momentum features then join the queues (in training). Features: (B, E) unit rows, `_m` from
    the momentum model; positives (B, B): caption j is true of image i.
    Returns (loss, image→text similarities (B, B), text→image (B, B)), both times 1/temperature,
    for drawing ITM's hard negatives."""
    m, c, b = trainer.model, trainer.config, image_feat.shape[0]
    scale = m.scale()
    with torch.no_grad():
        image_all = torch.cat([image_feat_m, trainer.image_queue.features])  # (B + Q, E)
        text_all = torch.cat([text_feat_m, trainer.text_queue.features])
        # targets: every true caption of an image in the batch is a positive (normalised), the queue none
        hard = torch.zeros(b, b + c.queue_size, device=image_feat.device)
        hard_i2t, hard_t2i = hard.clone(), hard.clone()
        hard_i2t[:, :b] = positives.float() / positives.float().sum(1, keepdim=True)
        hard_t2i[:, :b] = positives.t().float() / positives.t().float().sum(1, keepdim=True)
        if c.distill:
            targets_i2t = mix_targets(hard_i2t, scale * image_feat_m @ text_all.t(), alpha)
            targets_t2i = mix_targets(hard_t2i, scale * text_feat_m @ image_all.t(), alpha)
        else:
            targets_i2t, targets_t2i = hard_i2t, hard_t2i
    sim_i2t = scale * image_feat @ text_all.t()  # (B, B + Q)
    sim_t2i = scale * text_feat @ image_all.t()
    itc = (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2
    if trainer.training:
        trainer.image_queue.enqueue(image_feat_m)
        trainer.text_queue.enqueue(text_feat_m)
    return itc, sim_i2t[:, :b], sim_t2i[:, :b]


def itm_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, positives: torch.Tensor, hard: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM's negatives for a batch: (a wrong caption for each image (B,), a wrong image for each
    caption (B,)), drawn in proportion to the softmax of the ITC similarities (B, B) (hard) or
    uniformly, never a positive."""
    if not hard:  # uniform over the allowed columns: softmax of a constant
        sim_i2t = sim_t2i = torch.zeros_like(sim_i2t)
    return sample_negatives(sim_i2t, positives), sample_negatives(sim_t2i, positives.t())


def _check_batch(batch: dict, b: int,
                 keys: tuple[str, ...] = ("images", "ids", "attention_mask", "mlm_ids", "mlm_labels")) -> torch.Tensor:
    """Every entry agrees on B (checked before any state changes); returns `positives` (B, B)."""
    if not isinstance(batch, dict):
        raise TypeError(f"batch must be a dict (see pretrain_batches), got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; pretrain_batches(...)(step) makes a complete one")
    for key in keys[1:]:
        x = batch[key]
        check_tensor(f"batch['{key}']", x, ndim=2)
        if x.shape != batch["ids"].shape or x.shape[0] != b:
            raise ValueError(f"batch['{key}'] has shape {tuple(x.shape)}, but images has {b} rows and ids shape "
                             f"{tuple(batch['ids'].shape)}: every entry of a batch must have the same batch size")
    positives = batch.get("positives")
    if positives is None:
        return torch.eye(b, dtype=torch.bool, device=batch["images"].device)
    check_tensor("batch['positives']", positives, ndim=2, dtype="bool")
    if positives.shape != (b, b) or not bool(positives.diagonal().all()):
        raise ValueError(f"batch['positives'] must be (B, B) = ({b}, {b}) bool with a true diagonal (a caption is "
                         f"a positive of its own image), got shape {tuple(positives.shape)}")
    return positives


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
    """
    core = getattr(trainer, "module", trainer)
    if not isinstance(core, ALBEFPretrainer):
        raise TypeError(f"pretrain_step trains an ALBEFPretrainer(model), got {type(core).__name__}")
    return trainer(batch)


# ----------------------------------------------------------------------------- training data


def _step_world(seed: int, step: int, image_size: int, noise: float) -> ShapesWorld:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return ShapesWorld(seed=seed * 1_000_003 + step, image_size=image_size, split="train", noise=noise)


def pretrain_batches(batch_size: int = 64, seed: int = 0, image_size: int = 32, noise: float = 0.0,
                     tokenizer=None, max_text_len: int = 32, relational_fraction: float = 0.3,
                     mask_prob: float = 0.15):
    """A function step -> batch of image-caption pairs on the train split, deterministic given `seed`.

    noise: ShapesWorld's knob, the share of pairs whose caption describes another scene (web
    noise). Clean captions are a paraphrase or, for 30 % of multi-object scenes, a true relation.
    The batch: images, ids / attention_mask ("<bos> ... <eos>"), mlm_ids / mlm_labels (15 % of
    words masked, 80/10/10), positives (B, B) bool: caption j is true of image i (always on the
    diagonal: the data's own pairing, noisy or not), and clean (B,) bool: which captions are real.
    """
    from minivlm.data.tokenizer import Tokenizer

    check_int("batch_size", batch_size, lo=2)
    check_number("noise", noise, 0.0, 1.0)
    tok = tokenizer or Tokenizer.from_world()

    def batch(step: int) -> dict:
        world = _step_world(seed, step, image_size, noise)
        g = torch.Generator().manual_seed(world.seed)
        scenes = world.sample(batch_size)
        noisy, clean = world.noisy_captions(scenes, noise)
        captions = [world.mixed_caption(s, relational_fraction) if ok else cap
                    for s, cap, ok in zip(scenes, noisy, clean.tolist())]
        ids, mask = tok(captions, max_text_len, add_bos=True, add_eos=True)
        mlm_ids, mlm_labels = mlm_mask(ids, tok, prob=mask_prob, generator=g)
        truths = [ShapesWorld.true_captions(s) for s in scenes]
        positives = torch.tensor([[captions[j] in truths[i] for j in range(batch_size)] for i in range(batch_size)])
        positives |= torch.eye(batch_size, dtype=torch.bool)
        return {"images": world.render(scenes), "ids": ids, "attention_mask": mask, "mlm_ids": mlm_ids,
                "mlm_labels": mlm_labels, "positives": positives, "clean": clean}

    return batch


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def itc_similarity(model: ALBEF, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(N_images, N_texts) cosine similarities of the ITC features: one pass per image and per text.
    Any model whose encode_image / encode_text return the unit feature second serves (VLMo's dual
    mode, chapter 05)."""
    check_tensor("images", images, ndim=4, dtype="float")
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
        raise TypeError("captions must be a non-empty list of strings")
    check_int("batch_size", batch_size)
    with eval_mode(model):
        img = torch.cat([model.encode_image(images[a:a + batch_size])[1] for a in range(0, len(images), batch_size)])
        txt = torch.cat([model.encode_text(list(captions[a:a + batch_size]))[1]
                         for a in range(0, len(captions), batch_size)])
    return img @ txt.t()


def retrieve(model: ALBEF, images: torch.Tensor, captions: Sequence[str], rerank_k: int = 16,
             batch_size: int = 256) -> dict:
    """Image → text retrieval as ALBEF does it: rank every caption by ITC similarity (one
    encoder pass per image and per caption), then re-rank each image's top `rerank_k` by the
    ITM head (k fusion passes per image). rerank_k=1 keeps the ITC ranking.

    Returns dict(scores (N_images, N_texts): the final ranking scores (the ITM match logit
    margin for the top k, placed above every other caption, whose ITC similarity follows),
    itc (N_images, N_texts), itc_seconds, rerank_seconds, fusion_passes: N_images · k).
    """
    if not isinstance(rerank_k, int) or isinstance(rerank_k, bool) or rerank_k < 1:
        raise ValueError(f"rerank_k must be an int >= 1 (1: ITC ranking alone), got {rerank_k!r}")
    t0 = time.perf_counter()
    sim = itc_similarity(model, images, captions, batch_size)  # (N, M)
    itc_seconds = time.perf_counter() - t0
    k = min(rerank_k, sim.shape[1])
    scores = sim.clone()
    t0 = time.perf_counter()
    if k > 1:
        top = sim.topk(k, dim=1).indices  # (N, k)
        with eval_mode(model):
            text_tokens, _, mask = model.encode_text(list(captions))  # (M, T, D): each caption once
            image_tokens, _ = model.encode_image(images)  # (N, 1 + P, D)
            rows = torch.arange(len(images)).repeat_interleave(k)
            cols = top.flatten()
            margins = []
            for a in range(0, len(rows), batch_size):
                r, cidx = rows[a:a + batch_size], cols[a:a + batch_size]
                logits = model.itm_logits(model.fuse(text_tokens[cidx], mask[cidx], image_tokens[r]))
                margins.append(logits[:, 1] - logits[:, 0])
        margin = torch.cat(margins).view(len(images), k)
        # the re-ranked k sit above every other caption (ITC similarities lie in [-1, 1])
        scores.scatter_(1, top, margin - margin.min() + 3.0)
    return {"scores": scores, "itc": sim, "itc_seconds": itc_seconds, "rerank_seconds": time.perf_counter() - t0,
            "fusion_passes": len(images) * k if k > 1 else 0}


def evaluate_retrieval(model: ALBEF, data: dict, rerank_k: int = 16) -> dict:
    """Image → text R@1 (with a Wilson interval) on a ShapesBench `retrieval` set (caption i
    belongs to image i, all captions distinct), ITC alone and after re-ranking the top k."""
    from minivlm.eval import interval

    out = retrieve(model, data["images"], data["captions"], rerank_k)
    target = torch.arange(len(data["captions"]))
    hits_itc = (out["itc"].argmax(1).cpu() == target).tolist()
    hits = (out["scores"].argmax(1).cpu() == target).tolist()
    return {"itc_r1": interval(hits_itc), "r1": interval(hits), **out}


def evaluate_hard_itm(model: ALBEF, data: dict) -> dict:
    """ITM on a ShapesBench `hard_itm` set: each image with its true caption and a caption one
    fact away. accuracy: the head says "match" (P > 0.5) for the true caption and "no match"
    for the negative, over 2N decisions; pair_accuracy: P(true) > P(negative), over N images
    (the only one a dual encoder like CLIP can be given: compare similarities). Both with
    intervals, overall and per kind (colour, shape, size, relation)."""
    from minivlm.eval import interval

    n = len(data["captions"])
    images = data["images"]
    p_true = model.match_probability(images, [c[0] for c in data["captions"]])
    p_neg = model.match_probability(images, [c[1] for c in data["captions"]])
    decisions = torch.cat([p_true > 0.5, p_neg <= 0.5]).tolist()
    pairs = (p_true > p_neg).tolist()
    per_kind = {}
    for kind in dict.fromkeys(data["kinds"]):
        idx = [i for i in range(n) if data["kinds"][i] == kind]
        per_kind[kind] = interval([pairs[i] for i in idx])
    return {"accuracy": interval(decisions), "pair_accuracy": interval(pairs), "per_kind": per_kind,
            "p_true": p_true.cpu(), "p_negative": p_neg.cpu()}
