"""ViLT: one Transformer over words and image patches, no vision encoder (chapter 03).

Kim, Son and Kim, "ViLT: Vision-and-Language Transformer Without Convolution or Region
Supervision", 2021.

Single-stream models before ViLT (VisualBERT, VL-BERT, UNITER) fed a BERT with words and with
region features from an object detector: most of their compute and latency was the detector.
ViLT keeps the single stream and replaces the detector with ViT's linear patch embedding:

    text tokens  = LN(word + position) + modality[0]          (B, T, D)  "<bos> what color ... <eos>"
    image tokens = [image CLS ; patches] + position + modality[1]   (B, 1 + N, D)
    hidden       = Transformer([text ; image], joint padding mask)   (B, T + 1 + N, D)
    pooled       = tanh(W · hidden[:, 0])                        the first text token (<bos>, BERT's [CLS])

and three heads: masked-language modelling (MLM, tied to the word embeddings), image-text
matching (ITM, match / no match on the pooled token) and VQA (a classifier over the answer
vocabulary on the pooled token). `visual="regions"` swaps the patches for region features from
an oracle detector (ShapesWorld's exact boxes), the VisualBERT-style pipeline ViLT removed.

`ViLT.from_hf` copies the weights of a Hugging Face `transformers` ViltModel (or
ViltForQuestionAnswering / ViltForMaskedLM); the tests use it to check this model against that
independent implementation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivlm.data.masking import mlm_mask
from minivlm.data.pairs import check_batch_keys, oracle_regions, step_world
from minivlm.data.shapesworld import VQA_ANSWER_VOCAB, ShapesWorld
from minivlm.data.tokenizer import Tokenizer
from minivlm.losses import itm_loss, mlm_loss
from minivlm.nn import PatchEmbed, Transformer, masks
from minivlm.nn.heads import MLMHead
from minivlm.nn.inputs import (
    TextInputs,
    check_encoder_config,
    check_images,
    check_text,
    fill_token_ids,
    register_image_stats,
)
from minivlm.utils import check_range, check_same_batch, check_shape, check_tensor

VISUALS = ("patches", "regions")


@dataclass
class ViLTConfig:
    """Small defaults that train on a CPU in about a minute (32×32 ShapesWorld images).

    vocab_size / pad_id / mask_id left as None come from the course tokenizer.
    """

    image_size: int = 32
    patch_size: int = 8
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int | None = None
    max_text_len: int = 32  # text positions, <bos> and <eos> included
    answers: tuple[str, ...] = VQA_ANSWER_VOCAB  # the VQA head classifies over these
    act: str = "gelu"
    eps: float = 1e-5
    dropout: float = 0.0
    pad_id: int | None = None
    mask_id: int | None = None
    visual: str = "patches"  # "patches" (ViLT) or "regions" (VisualBERT-style, oracle boxes)
    max_regions: int = 4  # regions mode: at most this many boxes per image
    region_size: int = 8  # regions mode: each box is cropped and resized to region_size × region_size
    pos_init_std: float = 1.0  # initial scale of the patch position embeddings (see ViLT.__init__)
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        fill_token_ids(self)
        check_encoder_config(self, ints=("depth", "max_regions", "region_size"))
        if self.visual not in VISUALS:
            raise ValueError(f"visual must be one of {list(VISUALS)}, got {self.visual!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_tokens(self) -> int:
        """Image tokens after the text: the image CLS, then the patches (or the region slots)."""
        return 1 + (self.num_patches if self.visual == "patches" else self.max_regions)


class ViLT(TextInputs, MLMHead, nn.Module):
    """The single-stream encoder with its MLM, ITM and VQA heads."""

    tied_embedding = "word_embeddings"  # the MLM head's output layer (MLMHead)

    def __init__(self, config: ViLTConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or ViLTConfig()
        # ---- text embeddings (BERT's: word + position, then a LayerNorm)
        self.word_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.text_pos = nn.Parameter(torch.randn(1, c.max_text_len, c.dim) * 0.02)
        self.text_norm = nn.LayerNorm(c.dim, eps=c.eps)
        # ---- image embeddings (ViT's: linear patch projection, a CLS token, positions)
        self.image_cls = nn.Parameter(torch.randn(1, 1, c.dim) * 0.02)
        if c.visual == "patches":
            self.patch_embed = PatchEmbed(c.patch_size, 3, c.dim)
            # Positions start as large as the patch contents (std pos_init_std): questions about
            # where things are need them. With ViT's usual 0.02 our ViLT never learned "left or
            # right?" (chance after 400 steps of position questions alone); with 1.0, in 150.
            self.image_pos = nn.Parameter(torch.randn(1, 1 + c.num_patches, c.dim) * c.pos_init_std)
        else:  # regions: a cropped box's pixels + its coordinates, VisualBERT/UNITER style
            self.region_embed = nn.Linear(3 * c.region_size**2, c.dim)
            self.box_embed = nn.Linear(5, c.dim)  # x0, y0, x1, y1, area
            self.region_norm = nn.LayerNorm(c.dim, eps=c.eps)
            self.image_pos = nn.Parameter(torch.randn(1, 1, c.dim) * 0.02)  # the image CLS only
        # ---- which modality a token comes from: 0 text, 1 image
        self.modality_embed = nn.Embedding(2, c.dim)
        # ---- one Transformer over [text ; image]
        self.transformer = Transformer(c.dim, c.depth, c.heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout, act=c.act,
                                       eps=c.eps)
        self.norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.pooler = nn.Linear(c.dim, c.dim)
        # ---- heads
        self.init_word_head(c.dim, c.vocab_size, c.eps)  # mlm_transform, mlm_norm, mlm_bias; decoder: word_embeddings
        self.itm_head = nn.Linear(c.dim, 2)
        self.vqa_head = nn.Sequential(nn.Linear(c.dim, 2 * c.dim), nn.LayerNorm(2 * c.dim), nn.GELU(),
                                      nn.Linear(2 * c.dim, len(c.answers)))
        nn.init.normal_(self.word_embeddings.weight, std=0.02)  # BERT's init; the MLM decoder shares it
        nn.init.normal_(self.modality_embed.weight, std=0.02)
        register_image_stats(self, c)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------------ inputs
    def check_images(self, images: torch.Tensor) -> None:
        check_images(images, self.config.image_size)

    def check_inputs(self, images: torch.Tensor, texts, attention_mask: torch.Tensor | None,
                     boxes: torch.Tensor | None, box_mask: torch.Tensor | None):
        """forward's inputs: images (B, 3, H, W) in [0, 1]; texts, B strings or ids (B, T) with their
        attention mask (None: every token real); boxes (B, R, 4) and box_mask (B, R) in regions mode
        only (None: every box real). Returns (ids, attention_mask, boxes, box_mask)."""
        ids, attention_mask = self.ids_and_mask(texts, attention_mask)
        self.check_images(images)
        check_text(ids, attention_mask, self.config)
        b = check_same_batch(images=images, texts=ids)
        if self.config.visual == "regions":
            boxes, box_mask = self._check_boxes(boxes, box_mask, b)
        elif boxes is not None or box_mask is not None:
            raise ValueError("boxes are for a regions-mode ViLT (visual='regions'); this model uses patches")
        return ids, attention_mask, boxes, box_mask

    # ------------------------------------------------------------------------------ embeddings
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) → (B, T, D): LN(word + position) + the text modality embedding."""
        x = self.text_norm(self.word_embeddings(ids) + self.text_pos[:, : ids.shape[1]])
        return x + self.modality_embed.weight[0]

    def embed_image(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] → (B, 1 + N, D): the image CLS, then one token per patch
        (or per region, with boxes (B, R, 4)), each + position + the image modality embedding."""
        x = (images - self.image_mean) / self.image_std
        if self.config.visual == "patches":
            tokens = self.patch_embed(x)  # (B, N, D)
        else:
            crops = crop_regions(x, boxes, self.config.region_size)  # (B, R, 3·s·s)
            tokens = self.region_norm(self.region_embed(crops) + self.box_embed(box_features(boxes)))  # (B, R, D)
        cls = self.image_cls.expand(len(images), -1, -1)
        if self.config.visual == "patches":
            out = torch.cat([cls, tokens], dim=1) + self.image_pos  # (B, 1 + N, D)
        else:
            out = torch.cat([cls + self.image_pos, tokens], dim=1)  # regions carry their box instead
        return out + self.modality_embed.weight[1]

    # ------------------------------------------------------------------------------ the encoder
    def forward(self, images: torch.Tensor, texts, attention_mask: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None, box_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1]; texts: B strings or ids (B, T) (with attention_mask
        (B, T), True on real tokens). Regions mode also takes boxes (B, R, 4) in [0, 1]
        (x0, y0, x1, y1) and box_mask (B, R) (True on real boxes; see `oracle_regions`).

        Returns the final hidden states (B, T + 1 + N, D): text first, then the image tokens.
        need_weights=True keeps every block's attention weights (`attention_maps`).
        """
        ids, attention_mask, boxes, box_mask = self.check_inputs(images, texts, attention_mask, boxes, box_mask)
        b = ids.shape[0]
        image_valid = torch.ones(b, 1, dtype=torch.bool, device=ids.device)  # the image CLS
        if self.config.visual == "regions":
            image_valid = torch.cat([image_valid, box_mask], dim=1)  # (B, 1 + R)
        else:
            image_valid = image_valid.expand(b, 1 + self.config.num_patches)
        x = torch.cat([self.embed_text(ids), self.embed_image(images, boxes)], dim=1)  # (B, T + 1 + N, D)
        valid = torch.cat([attention_mask.bool(), image_valid], dim=1)  # (B, T + 1 + N) the joint padding mask
        x = self.transformer(x, mask=masks.padding(valid), need_weights=need_weights)
        return self.norm(x)

    def _check_boxes(self, boxes, box_mask, b: int):
        r = self.config.max_regions
        if boxes is None:
            raise ValueError("a regions-mode ViLT needs boxes (B, R, 4) and box_mask (B, R): see oracle_regions(scenes)")
        check_tensor("boxes", boxes, ndim=3, dtype="float")
        check_shape("boxes", boxes, [b, r, 4])
        if box_mask is None:
            box_mask = torch.ones(b, r, dtype=torch.bool, device=boxes.device)
        check_tensor("box_mask", box_mask, ndim=2, dtype="bool")
        check_shape("box_mask", box_mask, [b, r])
        check_range("boxes", boxes, 0.0, 1.0)
        return boxes, box_mask

    # ------------------------------------------------------------------------------ Hugging Face import
    @classmethod
    def from_hf(cls, hf_model, tokenizer=None, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                image_std: Sequence[float] = (0.5, 0.5, 0.5)) -> "ViLT":
        """Build a ViLT with the configuration and weights of a `transformers` ViltModel,
        ViltForQuestionAnswering or ViltForMaskedLM (transformers itself is never imported here).

        image_mean/image_std: the normalisation its image processor applies (ViLT's: 0.5, 0.5),
        so that our model, which takes [0, 1] images, sees the same pixel values.
        tokenizer: optional, only needed to call the model with strings; its pad_id / mask_id
        (when it has them) go into the config.

        The VQA head comes from ViltForQuestionAnswering (answers = config.id2label, in label
        order), the MLM head from ViltForMaskedLM; heads the model has no weights for (always
        ITM: transformers' retrieval head has one logit, ours two) keep their random init.
        Two differences that leave the outputs equal: BERT's token-type embedding (every id 0
        here) is folded into text_pos; and transformers' ViltEmbeddings.visual_embed shuffles
        the patch tokens (torch.multinomial, even when it keeps them all), so its image hidden
        states come out permuted while ours keep row-major order. Only square image_size
        inputs: transformers interpolates the positions for other sizes, this model does not.
        Raises ValueError, listing every problem, for configurations this model cannot represent.
        """
        hc = hf_model.config
        kinds = {k.__name__ for k in type(hf_model).__mro__} & {"ViltModel", "ViltForQuestionAnswering",
                                                                  "ViltForMaskedLM"}
        to_ours = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}
        problems = []
        if not kinds:
            problems.append(f"expected a ViltModel, ViltForQuestionAnswering or ViltForMaskedLM, got "
                            f"{type(hf_model).__name__}")
        if not hc.qkv_bias:
            problems.append("qkv_bias=False (our attention projections always have a bias)")
        if hc.num_channels != 3:
            problems.append(f"num_channels must be 3, got {hc.num_channels}")
        sizes = {}
        for name in ("image_size", "patch_size"):
            value = getattr(hc, name)
            pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
            if len(pair) != 2 or pair[0] != pair[1]:
                problems.append(f"{name} must be square, got {value!r}")
            sizes[name] = pair[0]
        if sizes["image_size"] % sizes["patch_size"]:
            problems.append(f"image_size={sizes['image_size']} must be divisible by patch_size={sizes['patch_size']}")
        num_patches = (sizes["image_size"] // sizes["patch_size"]) ** 2
        if isinstance(hc.max_image_length, int) and 0 <= hc.max_image_length < num_patches:
            problems.append(f"max_image_length={hc.max_image_length} keeps a random subset of the {num_patches} "
                            "patches at every call (set hf_model.config.max_image_length = -1 to keep them all)")
        if hc.hidden_act not in to_ours:
            problems.append(f"hidden_act {hc.hidden_act!r} is not one of {sorted(to_ours)}")
        mlp_ratio = hc.intermediate_size / hc.hidden_size
        if int(hc.hidden_size * mlp_ratio) != hc.intermediate_size:
            problems.append(f"intermediate_size={hc.intermediate_size} is not int(hidden_size * ratio) for any ratio")
        if hc.modality_type_vocab_size < 2:
            problems.append(f"modality_type_vocab_size must be >= 2 (text, image), got {hc.modality_type_vocab_size}")
        answers = VQA_ANSWER_VOCAB
        if "ViltForQuestionAnswering" in kinds:
            answers = tuple(str(hc.id2label[i]) for i in range(len(hc.id2label)))
            head_norm = hf_model.classifier[1]
            if head_norm.eps != 1e-5:  # ours is nn.LayerNorm's default
                problems.append(f"the VQA head's LayerNorm eps must be 1e-5, got {head_norm.eps}")
            if getattr(hf_model.classifier[2], "approximate", "none") != "none":
                problems.append("the VQA head's GELU must be the exact (erf) one")
        if "ViltForMaskedLM" in kinds:
            words = hf_model.vilt.embeddings.text_embeddings.word_embeddings.weight
            if not torch.equal(hf_model.mlm_score.decoder.weight, words):
                problems.append("the MLM decoder weight is not tied to the word embeddings (ours always is)")
        if problems:
            raise ValueError("cannot represent this Vilt model: " + "; ".join(problems))
        pad_id, mask_id = getattr(tokenizer, "pad_id", None), getattr(tokenizer, "mask_id", None)
        if pad_id is None and isinstance(hc.pad_token_id, int):
            pad_id = hc.pad_token_id
        config = ViLTConfig(
            image_size=sizes["image_size"],
            patch_size=sizes["patch_size"],
            dim=hc.hidden_size,
            depth=hc.num_hidden_layers,
            heads=hc.num_attention_heads,
            mlp_ratio=mlp_ratio,
            vocab_size=hc.vocab_size,
            max_text_len=hc.max_position_embeddings,
            answers=answers,
            act=to_ours[hc.hidden_act],
            eps=hc.layer_norm_eps,
            dropout=float(hc.hidden_dropout_prob),
            pad_id=pad_id,  # None: the course tokenizer's
            mask_id=mask_id,
            image_mean=tuple(image_mean),
            image_std=tuple(image_std),
        )
        model = cls(config, tokenizer=tokenizer)
        weights = hf_state_dict_to_ours(hf_model.state_dict(), hc.num_hidden_layers)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        heads = ("itm_head.", "vqa_head.", "mlm_transform.", "mlm_norm.", "mlm_bias", "pooler.")
        stray = [k for k in missing if not k.startswith(heads)]
        if unexpected or stray:
            raise ValueError(f"weight names do not match: not in our model {unexpected}, not in theirs {stray}")
        return model

    def attention_maps(self) -> list[torch.Tensor]:
        """Each block's attention weights (B, H, L, L) from the last call with need_weights=True."""
        return self.transformer.attention_maps()

    # ------------------------------------------------------------------------------ heads
    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) → (B, D): tanh(W · the first token), BERT's pooler (the <bos> token here)."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    # mlm_logits(text_hidden): (B, T, D) → (B, T, V) word logits, BERT's head with the word
    # embedding matrix as its output layer (weight tying): MLMHead's (nn/heads.py)

    def itm_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, 2): column 1 scores "the text describes the image"."""
        return self.itm_head(pooled)

    def vqa_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, A) scores over config.answers."""
        return self.vqa_head(pooled)

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def answer(self, images: torch.Tensor, questions: Sequence[str], boxes=None, box_mask=None,
               batch_size: int = 256) -> list[str]:
        """Answer each question about its image: a list of strings from config.answers."""
        logits = self._batched(lambda sl: self.vqa_logits(self.pool(self(
            images[sl], list(questions[sl]), boxes=_sl(boxes, sl), box_mask=_sl(box_mask, sl)))),
            images, questions, batch_size)
        return [self.config.answers[i] for i in logits.argmax(dim=1).tolist()]

    @torch.no_grad()
    def match_probability(self, images: torch.Tensor, captions: Sequence[str], boxes=None, box_mask=None,
                          batch_size: int = 256) -> torch.Tensor:
        """P(match) from the ITM head for each (image, caption) pair: (B,)."""
        logits = self._batched(lambda sl: self.itm_logits(self.pool(self(
            images[sl], list(captions[sl]), boxes=_sl(boxes, sl), box_mask=_sl(box_mask, sl)))),
            images, captions, batch_size)
        return logits.softmax(dim=1)[:, 1]

    def _batched(self, fn, images, texts, batch_size):
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        check_tensor("images", images, ndim=4, dtype="float")
        if len(images) != len(texts):
            raise ValueError(f"batch sizes must match, got images={len(images)}, texts={len(texts)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if len(texts) == 0:
            raise ValueError("need at least one (image, text) pair, got none")
        was_training = self.training
        self.eval()
        try:
            dev = self.text_pos.device
            outs = [fn(slice(a, a + batch_size)) for a in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(outs).to(dev)


def _sl(x, sl):
    return None if x is None else x[sl]


# ----------------------------------------------------------------------------- regions (VisualBERT-style)


def box_features(boxes: torch.Tensor) -> torch.Tensor:
    """(B, R, 4) → (B, R, 5): the coordinates and the area, the location features of UNITER."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return torch.cat([boxes, area[..., None]], dim=-1)


def crop_regions(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop every box out of its image and resize it to size × size (bilinear), like RoIAlign.

    images (B, C, H, W), boxes (B, R, 4) in [0, 1] → (B, R, size·size·C), each crop flattened
    in (row, column, channel) order. One grid_sample call for every box at once.
    """
    b, c, _, _ = images.shape
    r = boxes.shape[1]
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size  # (s,) in (0, 1)
    x0, y0, x1, y1 = boxes.unbind(-1)  # (B, R) each
    xs = x0[..., None] + (x1 - x0)[..., None] * steps  # (B, R, s) sample points in [0, 1]
    ys = y0[..., None] + (y1 - y0)[..., None] * steps
    grid = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), dim=-1)  # (B, R, s, s, 2)
    grid = rearrange(grid * 2 - 1, "b r h w two -> b (r h) w two")  # grid_sample wants [-1, 1]
    crops = F.grid_sample(images, grid, mode="bilinear", align_corners=False)  # (B, C, R·s, s)
    return rearrange(crops, "b c (r h) w -> b r (h w c)", r=r, c=c)


# ----------------------------------------------------------------------------- training data


def mismatched_partners(scenes, generator: torch.Generator, captions: Sequence[str] | None = None) -> list[int]:
    """For each scene i, the index of another scene of the batch whose set of objects differs:
    the source of ITM's negative captions. With `captions` (caption j belongs to scene j), a
    partner's caption must also not be true of scene i by chance (a relation both scenes share)."""
    names = [tuple(sorted(s.names)) for s in scenes]
    truths = [ShapesWorld.true_captions(s) for s in scenes] if captions is not None else None
    out = []
    for i in range(len(scenes)):
        candidates = [j for j in range(len(scenes)) if names[j] != names[i]
                      and (truths is None or captions[j] not in truths[i])]
        if not candidates:
            raise ValueError("every scene of the batch has the same objects: no negative caption exists")
        out.append(candidates[int(torch.randint(len(candidates), (1,), generator=generator))])
    return out


def pretrain_batches(batch_size: int = 64, seed: int = 0, image_size: int = 32, tokenizer=None,
                     max_text_len: int = 32, relational_fraction: float = 0.3, mask_prob: float = 0.15,
                     max_regions: int = 4):
    """A function step -> MLM + ITM batch on the train split, deterministic given `seed`.

    The batch holds B scenes with a caption each (30 % of multi-object scenes captioned by a
    relation), and
      mlm_ids / mlm_labels: the captions with 15 % of their words masked (80/10/10), for MLM on
                            the true pairs;
      itm_ids / itm_mask / itm_labels: the captions, where half the pairs (chosen at random) get
                            the caption of another scene with different objects (label 0);
      boxes / box_mask:     the oracle boxes, for a regions-mode model.
    """

    tok = tokenizer or Tokenizer.from_world()

    def batch(step: int) -> dict:
        world = step_world(seed, step, image_size)
        g = torch.Generator().manual_seed(world.seed)
        scenes = world.sample(batch_size)
        captions = [world.mixed_caption(scene, relational_fraction) for scene in scenes]
        ids, mask = tok(captions, max_text_len, add_bos=True, add_eos=True)
        mlm_ids, mlm_labels = mlm_mask(ids, tok, prob=mask_prob, generator=g)
        partners = mismatched_partners(scenes, g, captions)
        negative = torch.rand(batch_size, generator=g) < 0.5  # (B,) which pairs get a wrong caption
        itm_captions = [captions[partners[i]] if negative[i] else captions[i] for i in range(batch_size)]
        itm_ids, itm_mask = tok(itm_captions, max_text_len, add_bos=True, add_eos=True)
        boxes, box_mask = oracle_regions(scenes, max_regions)
        return {"images": world.render(scenes), "ids": ids, "attention_mask": mask, "mlm_ids": mlm_ids,
                "mlm_labels": mlm_labels, "itm_ids": itm_ids, "itm_mask": itm_mask,
                "itm_labels": (~negative).long(), "boxes": boxes, "box_mask": box_mask}

    return batch


# ----------------------------------------------------------------------------- step functions for `fit`


def _regions(model, batch) -> dict:
    core = getattr(model, "module", model)  # a DistributedDataParallel wrapper or the model
    if core.config.visual == "regions":
        check_batch_keys(batch, ("boxes", "box_mask"), "pretrain_batches / vqa_batches (a regions-mode ViLT)")
        return {"boxes": batch["boxes"], "box_mask": batch["box_mask"]}
    return {}


def pretrain_step(model: ViLT, batch: dict) -> dict:
    """MLM + ITM, two forward passes as in the paper's code: the masked captions with their true
    images (MLM), then the half-mismatched pairs (ITM). Loss = MLM + ITM."""
    core = getattr(model, "module", model)
    check_batch_keys(batch, ("images", "attention_mask", "mlm_ids", "mlm_labels", "itm_ids", "itm_mask", "itm_labels"),
                     "pretrain_batches")
    regions = _regions(core, batch)
    t = batch["mlm_ids"].shape[1]
    hidden = model(batch["images"], batch["mlm_ids"], batch["attention_mask"], **regions)  # (B, L, D)
    mlm = mlm_loss(core.mlm_logits(hidden[:, :t]), batch["mlm_labels"])
    itm_logits = core.itm_logits(core.pool(model(batch["images"], batch["itm_ids"], batch["itm_mask"], **regions)))
    itm = itm_loss(itm_logits, batch["itm_labels"])
    itm_acc = (itm_logits.argmax(1) == batch["itm_labels"]).float().mean()
    return {"loss": mlm + itm, "mlm": mlm.detach(), "itm": itm.detach(), "itm_acc": itm_acc}


def vqa_step(model: ViLT, batch: dict) -> dict:
    """VQA fine-tuning: cross-entropy of the answer classifier on the pooled token."""
    core = getattr(model, "module", model)
    check_batch_keys(batch, ("images", "ids", "attention_mask", "labels"), "vqa_batches")
    hidden = model(batch["images"], batch["ids"], batch["attention_mask"], **_regions(core, batch))
    logits = core.vqa_logits(core.pool(hidden))
    loss = F.cross_entropy(logits, batch["labels"])
    return {"loss": loss, "acc": (logits.argmax(1) == batch["labels"]).float().mean()}


# ----------------------------------------------------------------------------- evaluation


# ---- Hugging Face import


def hf_state_dict_to_ours(sd: dict, depth: int) -> dict:
    """Rename (and where needed reshape) the state dict of a transformers ViltModel,
    ViltForQuestionAnswering or ViltForMaskedLM for `ViLT` (see `ViLT.from_hf`).

    Keys for the heads appear only when `sd` has them (VQA classifier, MLM head, pooler).
    """
    p = "vilt." if any(k.startswith("vilt.") for k in sd) else ""  # the heads wrap a ViltModel as `vilt`
    e, t = f"{p}embeddings", f"{p}embeddings.text_embeddings"
    conv = sd[f"{e}.patch_embeddings.projection.weight"]  # (D, C, P, P), a stride-P conv
    out = {
        "word_embeddings.weight": sd[f"{t}.word_embeddings.weight"],
        # BERT adds a token-type embedding; ViLT's token types are all 0, so row 0 is a constant
        # that folds into the positions: LN(word + position + type[0]) = LN(word + text_pos)
        "text_pos": (sd[f"{t}.position_embeddings.weight"] + sd[f"{t}.token_type_embeddings.weight"][0]).unsqueeze(0),
        "text_norm.weight": sd[f"{t}.LayerNorm.weight"],
        "text_norm.bias": sd[f"{t}.LayerNorm.bias"],
        # A stride-P conv is a linear map of each flattened patch; our patchify flattens in
        # (p1, p2, c) order, so the kernel is flattened the same way.
        "patch_embed.proj.weight": rearrange(conv, "d c p1 p2 -> d (p1 p2 c)"),
        "patch_embed.proj.bias": sd[f"{e}.patch_embeddings.projection.bias"],
        "image_cls": sd[f"{e}.cls_token"],
        "image_pos": sd[f"{e}.position_embeddings"],
        "modality_embed.weight": sd[f"{e}.token_type_embeddings.weight"][:2],  # 0 text, 1 image (2: NLVR2's 2nd image)
        "norm.weight": sd[f"{p}layernorm.weight"],
        "norm.bias": sd[f"{p}layernorm.bias"],
    }
    names = {
        "layernorm_before": "norm1",
        "attention.attention.query": "attn.q_proj",
        "attention.attention.key": "attn.k_proj",
        "attention.attention.value": "attn.v_proj",
        "attention.output.dense": "attn.out_proj",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    for i in range(depth):
        for theirs, ours in names.items():
            for w in ("weight", "bias"):
                out[f"transformer.blocks.{i}.{ours}.{w}"] = sd[f"{p}encoder.layer.{i}.{theirs}.{w}"]
    optional = {f"{p}pooler.dense": "pooler", "classifier.0": "vqa_head.0", "classifier.1": "vqa_head.1",
                "classifier.3": "vqa_head.3", "mlm_score.transform.dense": "mlm_transform",
                "mlm_score.transform.LayerNorm": "mlm_norm"}
    for theirs, ours in optional.items():
        if f"{theirs}.weight" in sd:
            out[f"{ours}.weight"], out[f"{ours}.bias"] = sd[f"{theirs}.weight"], sd[f"{theirs}.bias"]
    if "mlm_score.decoder.weight" in sd:
        if not torch.equal(sd["mlm_score.decoder.weight"], out["word_embeddings.weight"]):
            raise ValueError("the MLM decoder weight is not tied to the word embeddings (ours always is)")
        # the output bias: the decoder's in recent transformers, a separate `mlm_score.bias` in older ones
        out["mlm_bias"] = sd["mlm_score.decoder.bias"] if "mlm_score.decoder.bias" in sd else sd["mlm_score.bias"]
    return {k: v.detach().clone() for k, v in out.items()}


VILT_CONFIG = dict(image_size=32, patch_size=8, dim=64, depth=4, heads=4, max_text_len=32, pos_init_std=1.0)
