"""BEiT-3: images as a foreign language, one masked-data-modelling objective (chapter 08).

Wang, Bao, Dong, Bjorck, Peng, Liu, Aggarwal, Mohammed, Singhal, Som and Wei, "Image as a
Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks", 2022; with
Bao et al., "BEiT" (2021), Peng et al., "BEiT v2" (2022) and Bao et al., "VL-BEiT" (2022).

The line of papers:

    BEiT     mask image patches and predict their *discrete visual tokens* (a dVAE's codes):
             BERT's masked language modelling, on images.
    BEiT-2   the visual tokens come from VQ-KD: a tokenizer whose codes must let a decoder
             rebuild a teacher's (CLIP's) patch features, so a token means what CLIP sees
             there, not which pixels are there.
    VL-BEiT  one Transformer, masked modelling of images, texts and image-text pairs.
    BEiT-3   VLMo's Multiway Transformer (chapter 05) trained by masked data modelling alone:
               images  [CLS ; patches]      40 % of the patches block-masked → their visual tokens
               texts   [<bos> ; words]      15 % of the words masked          → the words
               pairs   [image ; text]       40 % of the patches and 50 % of the words masked
             one loss (cross-entropy on masked tokens) for the three; no ITC, no ITM. They come
             back as fine-tuning heads: retrieval (the dual modes + ITC), VQA (the fusion mode +
             a classifier), captioning (the fusion mode with the image bidirectional and the
             text causal: the prefix-LM mask of chapter 01).

The network is VLMo's, unchanged (`BEiT3` subclasses `VLMo`: embeddings, the three routing modes,
the MoME blocks of `minivlm.nn.multiway`); what changes is the objective and the heads.

The visual tokenizer (BEiT-2's VQ-KD at our scale):

    images → patch embedding + Transformer → (B, N, code_dim)
           → VectorQuantizer: nearest of K unit-norm codes          → visual tokens (B, N) in [0, K)
           → decoder Transformer → (B, N, teacher_dim)
    loss   = 1 − cos(decoder output, the teacher's patch feature)  + the quantiser's commitment loss
    teacher = the zoo CLIP's image tower (chapter 02), its patch tokens averaged onto our grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.masking import IGNORE_INDEX, block_mask, mlm_mask
from minivlm.data.pairs import check_batch, check_batch_keys, pretrain_batches
from minivlm.data.shapesworld import VQA_ANSWER_VOCAB
from minivlm.data.tokenizer import Tokenizer
from minivlm.generate import caption_texts, check_images_to_caption
from minivlm.losses import mlm_loss, multi_positive_itc, nothing_to_average
from minivlm.models.vlmo import VLMo, VLMoConfig
from minivlm.nn import Transformer, masks
from minivlm.nn.inputs import check_encoder_config, check_images, register_image_stats
from minivlm.nn.quantize import Quantized, VectorQuantizer
from minivlm.nn.vit import PatchEmbed
from minivlm.utils import check_int, check_number, check_strings, check_tensor, eval_mode, unwrap

# ----------------------------------------------------------------------------- the visual tokenizer


@dataclass
class VisualTokenizerConfig:
    """BEiT-2's VQ-KD tokenizer, small: a ViT-B encoder, 8,192 codes of width 32 and a 3-layer
    decoder in the paper (in the comments); here it must fit ShapesWorld's 32×32 images."""

    image_size: int = 32
    patch_size: int = 8  # the grid of the BEiT-3 model it feeds (16 on 224×224)
    dim: int = 64  # 768
    depth: int = 2  # 12
    decoder_depth: int = 1  # 3
    heads: int = 4
    mlp_ratio: float = 4.0
    code_dim: int = 32  # 32
    codebook_size: int = 64  # 8192
    beta: float = 1.0  # commitment weight (BEiT-2: 1, with the codes moved by EMA)
    ema: float | None = 0.99  # 0.99; None trains the codes by gradient
    teacher_dim: int = 64  # width of the teacher's patch features (the zoo CLIP: 64)
    act: str = "gelu"
    eps: float = 1e-5
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        check_encoder_config(self, ints=("depth", "decoder_depth", "code_dim", "teacher_dim"))
        check_int("codebook_size", self.codebook_size, lo=2)
        check_number("beta", self.beta, 0.0, float("inf"))
        if self.ema is not None:
            check_number("ema", self.ema, 0.0, 1.0, lo_open=True, hi_open=True)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2


class VisualTokenizer(nn.Module):
    """images → (B, N) visual tokens, trained to let its decoder rebuild a teacher's patch features."""

    def __init__(self, config: VisualTokenizerConfig | None = None):
        super().__init__()
        self.config = c = config or VisualTokenizerConfig()
        block = dict(mlp_ratio=c.mlp_ratio, act=c.act, eps=c.eps)
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.dim)
        self.encoder_pos = nn.Parameter(torch.randn(1, c.num_patches, c.dim) * 0.02)
        self.encoder = Transformer(c.dim, c.depth, c.heads, **block)
        self.encoder_norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.to_code = nn.Linear(c.dim, c.code_dim)
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, beta=c.beta, normalize=True, ema=c.ema)
        self.from_code = nn.Linear(c.code_dim, c.dim)
        self.decoder_pos = nn.Parameter(torch.randn(1, c.num_patches, c.dim) * 0.02)
        self.decoder = Transformer(c.dim, c.decoder_depth, c.heads, **block)
        self.decoder_norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.to_teacher = nn.Linear(c.dim, c.teacher_dim)
        register_image_stats(self, c)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] → (B, N, code_dim), before quantisation."""
        check_images(images, self.config.image_size)
        x = self.patch_embed((images - self.image_mean) / self.image_std) + self.encoder_pos
        return self.to_code(self.encoder_norm(self.encoder(x)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """images → (the decoder's guess of the teacher's patch features (B, N, teacher_dim), the
        quantiser's output: codes, visual tokens (B, N), commitment loss, usage)."""
        q = self.quantizer(self.encode(images))
        y = self.decoder(self.from_code(q.quantized) + self.decoder_pos)
        return self.to_teacher(self.decoder_norm(y)), q

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """images (B, 3, H, W) → visual tokens (B, N) long, row-major over the patch grid, the
        order of `minivlm.nn.vit.patchify` and of `block_mask`."""
        with eval_mode(self):
            return torch.cat([self.quantizer(self.encode(images[a:a + batch_size])).indices
                              for a in range(0, len(images), batch_size)])


@torch.no_grad()
def teacher_features(clip, images: torch.Tensor, grid: int) -> torch.Tensor:
    """The zoo CLIP's image tower as VQ-KD's teacher: its patch tokens after the final LayerNorm,
    averaged onto a grid × grid layout (the CLIP's 8×8 patches of 4 pixels → our 4×4 of 8 pixels).
    images (B, 3, H, W) in [0, 1] → (B, grid², D)."""
    check_int("grid", grid)
    check_images(images, clip.config.image_size)
    with eval_mode(clip):
        tokens = clip.visual.forward_features((images - clip.image_mean) / clip.image_std)[:, 1:]  # (B, n², D)
    b, n2, d = tokens.shape
    n = int(round(n2 ** 0.5))
    if n % grid:
        raise ValueError(f"the teacher's {n}×{n} patch grid cannot be averaged onto {grid}×{grid}")
    x = tokens.transpose(1, 2).reshape(b, d, n, n)  # (B, D, n, n), row-major patches
    return F.avg_pool2d(x, n // grid).flatten(2).transpose(1, 2)  # (B, grid², D)


def vqkd_step(model: VisualTokenizer, batch: dict) -> dict:
    """VQ-KD's loss for `minivlm.train.fit`: 1 − cosine(decoded, teacher feature), averaged over
    patches, + the quantiser's loss. batch: images (B, 3, H, W), targets (B, N, teacher_dim)."""
    unwrap(model, VisualTokenizer, "vqkd_step")
    check_batch_keys(batch, ("images", "targets"), "tokenizer_batches")
    prediction, q = model(batch["images"])
    if prediction.shape != batch["targets"].shape:
        raise ValueError(f"batch['targets'] must be (B, N, teacher_dim) = {tuple(prediction.shape)}, "
                         f"got {tuple(batch['targets'].shape)}")
    cosine = F.cosine_similarity(prediction, batch["targets"], dim=-1).mean()
    return {"loss": 1 - cosine + q.loss, "cosine": cosine.detach(), "perplexity": q.perplexity.detach()}


def tokenizer_batches(teacher, batch_size: int = 64, seed: int = 0, image_size: int = 32, grid: int = 4):
    """step → dict(images, targets = the teacher's patch features on a grid × grid layout), on
    ShapesWorld's training scenes (chapter 04's stream; the captions are not used)."""

    images = pretrain_batches(batch_size, seed=seed, image_size=image_size)

    def batch(step: int) -> dict:
        x = images(step)["images"]
        return {"images": x, "targets": teacher_features(teacher, x, grid)}

    return batch


@torch.no_grad()
def code_usage(tokenizer: VisualTokenizer, images: torch.Tensor) -> torch.Tensor:
    """How often each code is chosen over the patches of `images`: (K,) long counts, for
    `minivlm.nn.quantize.codebook_stats` (perplexity, dead codes)."""
    return torch.bincount(tokenizer.tokenize(images).flatten(), minlength=tokenizer.config.codebook_size)


# ----------------------------------------------------------------------------- BEiT-3


@dataclass
class BEiT3Config(VLMoConfig):
    """VLMo's configuration (the same Multiway network) plus masked data modelling and the
    fine-tuning heads. BEiT-3's values are in the comments; `negatives` is VLMo's and unused."""

    codebook_size: int = 64  # the visual tokenizer's K (8192)
    mim_ratio: float = 0.4  # patches block-masked, in images and in pairs (40 %)
    text_mask_ratio: float = 0.15  # words masked in texts alone (15 %)
    pair_mask_ratio: float = 0.5  # words masked in image-text pairs (50 %)
    caption_mask_ratio: float = 0.6  # words masked in captioning fine-tuning (0.6 in BEiT-3's code)
    answers: tuple[str, ...] | None = None  # the VQA classifier's answers (None: ShapesWorld's)

    def __post_init__(self):
        if self.answers is None:

            self.answers = VQA_ANSWER_VOCAB
        super().__post_init__()  # VLMo's checks, and the answers'
        check_int("codebook_size", self.codebook_size, lo=2)
        for name in ("text_mask_ratio", "pair_mask_ratio", "caption_mask_ratio"):
            check_number(name, getattr(self, name), 0.0, 1.0, hi_open=True)
        if self.mim_ratio >= 1.0:
            raise ValueError(f"mim_ratio must lie in (0, 1), got {self.mim_ratio}")


class BEiT3(VLMo):
    """VLMo's Multiway Transformer with BEiT-3's heads: visual-token prediction for masked patches
    (`mim_logits`), the tied word head for masked words (`mlm_logits`, VLMo's), ITC projections
    for retrieval (VLMo's), a VQA classifier, and captioning with a masked token at the end."""

    def __init__(self, config: BEiT3Config | None = None, tokenizer=None):
        c = config or BEiT3Config()
        if not isinstance(c, BEiT3Config):
            raise TypeError(f"config must be a BEiT3Config, got {type(c).__name__}")
        super().__init__(c, tokenizer)
        del self.itm_head  # BEiT-3 pretrains without image-text matching
        self.mim_head = nn.Linear(c.dim, c.codebook_size)  # a visual token per patch, not pixels
        self.vqa_pooler = nn.Sequential(nn.Linear(c.dim, c.dim), nn.Tanh())  # on the fused image CLS
        self.vqa_head = nn.Sequential(nn.Linear(c.dim, 2 * c.dim), nn.LayerNorm(2 * c.dim, eps=c.eps), nn.GELU(),
                                      nn.Linear(2 * c.dim, len(c.answers)))

    # ------------------------------------------------------------------------------ heads
    def mim_logits(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) image tokens → (B, N, K) scores over the visual tokens of each patch."""
        return self.mim_head(image_tokens[:, 1:])

    def mim_pixels(self, image_tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("BEiT-3 predicts visual tokens, not pixels: use mim_logits")

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("BEiT-3 has no image-text matching head: retrieve with the dual modes "
                                  "(encode_image / encode_text) after retrieval fine-tuning")

    def vqa_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N + T, D) fused tokens → (B, A) scores over config.answers, from the image CLS
        (the first token, as BEiT-3's VQA head)."""
        return self.vqa_head(self.vqa_pooler(fused[:, 0]))

    # ------------------------------------------------------------------------------ captioning
    def caption_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """BEiT-3's captioning mask over [image ; text]: the image tokens see each other (and no
        text), each text token sees the whole image and the real text tokens up to itself.
        attention_mask (B, T) → (B, L, L) bool, L = 1 + N + T."""
        check_tensor("attention_mask", attention_mask, ndim=2)
        b, t = attention_mask.shape
        n = self.n_image_tokens
        valid = torch.cat([torch.ones(b, n, dtype=torch.bool, device=attention_mask.device),
                           attention_mask.bool()], dim=1)  # (B, L)
        return masks.prefix(n + t, n, attention_mask.device)[None] & masks.padding(valid)

    def caption_logits(self, image_x: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embedded images (B, 1 + N, D) and (partly masked) ids (B, T) under `caption_mask` →
        word scores (B, T, V) at every text position."""
        text_x = self.embed_text(ids)
        x = torch.cat([image_x, text_x], dim=1)
        fused = self.run(x, "fusion", image_x.shape[1], self.caption_mask(attention_mask))
        return self.mlm_logits(fused[:, image_x.shape[1]:])

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int | None = None, num_beams: int = 1,
                do_sample: bool = False, top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> list[str]:
        """A caption per image, as BEiT-3 decodes: the text so far + one <mask> at the end; the
        word predicted for the <mask> is appended, until <eos> or max_len tokens."""
        c = self.config
        check_images_to_caption(images)
        tok = self.get_tokenizer()
        with eval_mode(self):
            image_x = self.embed_image(images)

            def next_logits(ids, rows):
                x = torch.cat([ids, torch.full_like(ids[:, :1], c.mask_id)], dim=1)
                return self.caption_logits(image_x[rows], x, torch.ones_like(x, dtype=torch.bool))[:, -1]

            # the <mask> takes one position: the caption itself may use max_text_len - 1
            return caption_texts(next_logits, len(images), tok.bos_id, tok.eos_id, c.pad_id, max_len,
                                 c.max_text_len - 1, tok, image_x.device, num_beams=num_beams, do_sample=do_sample,
                                 top_p=top_p, top_k=top_k, temperature=temperature, generator=generator)

    # ------------------------------------------------------------------------------ VQA
    @torch.no_grad()
    def answer(self, images: torch.Tensor, questions: Sequence[str], batch_size: int = 256) -> list[str]:
        """Answer each question about its image (fusion mode, the VQA head): strings from config.answers."""
        check_strings("questions", questions)
        check_tensor("images", images, ndim=4, dtype="float")
        check_int("batch_size", batch_size)
        if len(images) != len(questions):
            raise ValueError(f"one question per image: got {len(images)} images and {len(questions)} questions")
        with eval_mode(self):
            logits = torch.cat([self.vqa_logits(self.fuse(images[a:a + batch_size], list(questions[a:a + batch_size])))
                                for a in range(0, len(images), batch_size)])
        return [self.config.answers[i] for i in logits.argmax(1).tolist()]


def _beit3(model) -> BEiT3:
    core = unwrap(model, VLMo)
    if not isinstance(core, BEiT3):
        raise TypeError(f"expected a BEiT3, got {type(core).__name__}")
    return core


# ----------------------------------------------------------------------------- masked data modelling


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the chosen positions only: logits (B, N, K), targets (B, N) long, chosen
    (B, N) bool (the masked patches). The image half of masked data modelling. Nothing chosen
    gives 0, attached to the graph (`minivlm.losses`' rule for empty inputs)."""
    check_tensor("chosen", chosen, ndim=2, dtype="bool")
    if logits.shape[:2] != targets.shape or targets.shape != chosen.shape:
        raise ValueError(f"logits (B, N, K), targets (B, N) and chosen (B, N) must agree, got "
                         f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(chosen.shape)}")
    if not bool(chosen.any()):
        return nothing_to_average(logits)
    return F.cross_entropy(logits[chosen], targets[chosen])


def mdm_step(model: BEiT3, batch: dict) -> dict:
    """BEiT-3's pretraining step: masked data modelling on a batch of images, one of texts and
    one of image-text pairs (BEiT-3 draws its batches the same way), one cross-entropy each:

        image  image-only mode, block-masked patches → their visual tokens
        text   text-only mode, 15 % of the words masked → the words
        pair   fusion mode, masked patches → visual tokens and 50 % of the words masked → the words
    loss = image + text + pair (the pair's two terms averaged). batch from `mdm_batches`."""
    m = _beit3(model)
    check_batch_keys(batch, ("images", "patch_mask", "visual_tokens", "text_ids", "text_labels", "text_mask", "pair_images",
                  "pair_patch_mask", "pair_visual_tokens", "pair_ids", "pair_labels", "pair_mask"), "mdm_batches")
    for key in ("patch_mask", "pair_patch_mask"):  # block masking always masks: none is a broken batch
        if isinstance(batch[key], torch.Tensor) and not bool(batch[key].any()):
            raise ValueError(f"no position is masked in batch[{key!r}]: expected a block mask of "
                             f"mim_ratio={m.config.mim_ratio} of the patches (mdm_batches makes one)")
    tokens, _ = m.encode_image(batch["images"], batch["patch_mask"])
    image = masked_token_loss(m.mim_logits(tokens), batch["visual_tokens"], batch["patch_mask"])
    text_tokens, _, _ = m.encode_text(batch["text_ids"], batch["text_mask"])
    text = mlm_loss(m.mlm_logits(text_tokens), batch["text_labels"])
    n = m.n_image_tokens
    fused = m.fuse_embedded(m.embed_image(batch["pair_images"], batch["pair_patch_mask"]),
                            m.embed_text(batch["pair_ids"]), batch["pair_mask"])
    pair_image = masked_token_loss(m.mim_logits(fused[:, :n]), batch["pair_visual_tokens"], batch["pair_patch_mask"])
    pair_text = mlm_loss(m.mlm_logits(fused[:, n:]), batch["pair_labels"])
    pair = (pair_image + pair_text) / 2
    return {"loss": image + text + pair, "image": image.detach(), "text": text.detach(),
            "pair_image": pair_image.detach(), "pair_text": pair_text.detach()}


def mdm_batches(visual_tokenizer: VisualTokenizer, batch_size: int = 64, seed: int = 0, image_size: int = 32,
                patch_size: int = 8, mim_ratio: float = 0.4, text_mask_ratio: float = 0.15,
                pair_mask_ratio: float = 0.5, max_text_len: int = 32):
    """step → a batch for `mdm_step`: three independent draws of ShapesWorld's training pairs
    (chapter 04's stream): the images of one (image-only), the captions of another (text-only)
    and a third as pairs. Visual tokens come from `visual_tokenizer` on the unmasked images."""

    if not isinstance(visual_tokenizer, VisualTokenizer):
        raise TypeError(f"visual_tokenizer must be a VisualTokenizer, got {type(visual_tokenizer).__name__}")
    tc = visual_tokenizer.config
    if tc.image_size != image_size or tc.patch_size != patch_size:
        raise ValueError(f"the visual tokenizer works on {tc.image_size}-pixel images in patches of "
                         f"{tc.patch_size}, the model on {image_size} and {patch_size}: they must agree")
    for name, value in (("mim_ratio", mim_ratio), ("text_mask_ratio", text_mask_ratio),
                        ("pair_mask_ratio", pair_mask_ratio)):
        check_number(name, value, 0.0, 1.0, hi_open=True)
    tok = Tokenizer.from_world()
    streams = [pretrain_batches(batch_size, seed=seed * 3 + k, image_size=image_size, max_text_len=max_text_len)
               for k in range(3)]
    grid = image_size // patch_size

    def batch(step: int) -> dict:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        images, texts, pairs = (s(step) for s in streams)
        patch_mask = block_mask(batch_size, grid, mim_ratio, generator=g)
        pair_patch_mask = block_mask(batch_size, grid, mim_ratio, generator=g)
        text_ids, text_labels = mlm_mask(texts["ids"], tok, prob=text_mask_ratio, generator=g)
        pair_ids, pair_labels = mlm_mask(pairs["ids"], tok, prob=pair_mask_ratio, generator=g)
        return {"images": images["images"], "patch_mask": patch_mask,
                "visual_tokens": visual_tokenizer.tokenize(images["images"]),
                "text_ids": text_ids, "text_labels": text_labels, "text_mask": texts["attention_mask"],
                "pair_images": pairs["images"], "pair_patch_mask": pair_patch_mask,
                "pair_visual_tokens": visual_tokenizer.tokenize(pairs["images"]),
                "pair_ids": pair_ids, "pair_labels": pair_labels, "pair_mask": pairs["attention_mask"]}

    return batch


# ----------------------------------------------------------------------------- fine-tuning


def vqa_step(model: BEiT3, batch: dict) -> dict:
    """VQA fine-tuning: fusion mode on (image, question), the answer classifier on the image CLS.
    batch: images, ids, attention_mask, labels (B,) indices into config.answers (chapter 03's
    `vqa_batches`)."""
    m = _beit3(model)
    check_batch_keys(batch, ("images", "ids", "attention_mask", "labels"), "minivlm.data.pairs.vqa_batches")
    logits = m.vqa_logits(m.fuse(batch["images"], batch["ids"], batch["attention_mask"]))
    loss = F.cross_entropy(logits, batch["labels"])
    return {"loss": loss, "acc": (logits.argmax(1) == batch["labels"]).float().mean()}


def retrieval_step(model: BEiT3, batch: dict) -> dict:
    """Retrieval fine-tuning: image-only and text-only modes, the contrastive loss on the image
    CLS and the text's <bos> (every true caption in the batch a positive). batch: images, ids,
    attention_mask, positives (chapter 04's `pretrain_batches`)."""

    m = _beit3(model)
    check_batch_keys(batch, ("images", "ids", "attention_mask"), "minivlm.data.pairs.pretrain_batches")
    positives = check_batch(batch, batch["images"].shape[0], keys=("ids", "attention_mask"))
    _, image_feat = m.encode_image(batch["images"])
    _, text_feat, _ = m.encode_text(batch["ids"], batch["attention_mask"])
    scale = m.scale()
    loss = multi_positive_itc(scale * image_feat @ text_feat.t(), positives.bool())
    return {"loss": loss, "temp": 1.0 / scale.detach()}


def caption_inputs(ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, ratio: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BEiT-3's captioning fine-tuning input: each real token after <bos> (words and <eos>) is
    replaced by <mask> with probability `ratio`, at least one per caption. → (inputs, labels
    with IGNORE_INDEX at the unmasked positions)."""
    check_tensor("ids", ids, ndim=2, dtype="int")
    check_number("ratio", ratio, 0.0, 1.0, lo_open=True)
    eligible = attention_mask.bool().clone()
    eligible[:, 0] = False  # <bos> starts every caption; it is never predicted
    if not bool(eligible.any(1).all()):
        rows = (~eligible.any(1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} hold no token after <bos> (a caption ends with <eos> at least)")
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = eligible & (draw < ratio)
    # a caption with nothing chosen would teach nothing: mask its eligible token with the smallest draw
    none = ~chosen.any(1)
    if bool(none.any()):
        first = torch.where(eligible, draw, torch.full_like(draw, 2.0)).argmin(1)
        chosen[none, first[none]] = True
    inputs = ids.masked_fill(chosen, mask_id)
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))


def caption_step(model: BEiT3, batch: dict) -> dict:
    """Captioning fine-tuning as BEiT-3: under `caption_mask` (the image bidirectional, the text
    causal), masked words are predicted from the image and the words before them. batch: images,
    ids ("<bos> ... <eos>"), attention_mask, caption_ids (masked), caption_labels (`caption_batches`)."""
    m = _beit3(model)
    check_batch_keys(batch, ("images", "caption_ids", "caption_labels", "attention_mask"), "caption_batches")
    logits = m.caption_logits(m.embed_image(batch["images"]), batch["caption_ids"], batch["attention_mask"])
    loss = mlm_loss(logits, batch["caption_labels"])
    return {"loss": loss}


def caption_batches(batch_size: int = 64, seed: int = 0, image_size: int = 32, max_text_len: int = 32,
                    ratio: float = 0.6):
    """step → a captioning batch (chapter 04's ShapesWorld pairs, `caption_inputs` applied)."""

    mask_id = Tokenizer.from_world().mask_id
    pairs = pretrain_batches(batch_size, seed=seed, image_size=image_size, max_text_len=max_text_len)

    def batch(step: int) -> dict:
        b = pairs(step)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        ids, labels = caption_inputs(b["ids"], b["attention_mask"], mask_id, ratio, generator=g)
        return {"images": b["images"], "ids": b["ids"], "attention_mask": b["attention_mask"], "caption_ids": ids,
                "caption_labels": labels}

    return batch


__all__: Sequence[str] = (
    "VisualTokenizerConfig", "VisualTokenizer", "teacher_features", "vqkd_step", "tokenizer_batches",
    "code_usage",
    "BEiT3Config", "BEiT3", "masked_token_loss", "mdm_step", "mdm_batches", "vqa_step",
    "retrieval_step", "caption_inputs", "caption_step", "caption_batches",
)


TOKENIZER_CONFIG = dict(image_size=32, patch_size=8, dim=64, depth=2, decoder_depth=1, heads=4, code_dim=32,
                        codebook_size=64, teacher_dim=64)


BEIT3_CONFIG = dict(image_size=32, patch_size=8, dim=64, depth=4, vl_depth=2, heads=4, embed_dim=64, max_text_len=32,
                    codebook_size=64)
