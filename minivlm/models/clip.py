"""CLIP: a dual encoder trained to match images with their captions (chapter 02).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021.

Two towers map each modality into one shared space: a ViT for images (the CLS token), a causal
text Transformer for captions (the end-of-text token). Both outputs are linearly projected to
`embed_dim` and L2-normalised, so a dot product is a cosine similarity. Training pulls the B
matching pairs of a batch together and pushes the B² - B others apart (`minivlm.losses.clip_loss`),
with a learned temperature. At test time a class name written into a prompt ("a photo of a
{}") becomes a classifier: zero-shot classification, helpers at the bottom of this file.

`CLIP.from_hf` copies the weights of a Hugging Face `transformers` CLIPModel into this model;
the test suite uses it to check our implementation against that independent one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivlm.data.tokenizer import Tokenizer
from minivlm.losses import clip_loss, multi_positive_itc
from minivlm.nn import TextTransformer, ViT
from minivlm.nn.blocks import ACTIVATIONS
from minivlm.nn.heads import ContrastiveHead, check_temperature
from minivlm.utils import check_int, check_number, check_range, check_same_batch, check_shape, check_tensor, eval_mode


def _reject_bare_string(texts) -> None:
    """A str is a sequence of characters: iterating it would embed one 'text' per character."""
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got one str {texts[:40]!r}: pass [{texts[:40]!r}]")


@dataclass
class CLIPConfig:
    """Small defaults: trains on a CPU in about a minute on 32×32 ShapesWorld images.

    vocab_size / eos_id left as None are filled in from the course tokenizer
    (`minivlm.data.Tokenizer.from_world()`).
    """

    # image tower (a ViT)
    image_size: int = 32
    patch_size: int = 4
    vision_dim: int = 64
    vision_depth: int = 3
    vision_heads: int = 4
    # text tower (a causal Transformer, GPT-2 style)
    vocab_size: int | None = None
    context_length: int = 32
    text_dim: int = 64
    text_depth: int = 3
    text_heads: int = 4
    # shared
    mlp_ratio: float = 4.0
    embed_dim: int = 64  # the joint embedding space both towers project into
    act: str = "gelu"
    pre_norm: bool = True  # a LayerNorm before the image Transformer, as in CLIP's ViT
    eps: float = 1e-5
    dropout: float = 0.0
    init_temperature: float = 0.07  # logit_scale starts at log(1/0.07), as in the paper
    max_logit_scale: float = 100.0  # the paper clips exp(logit_scale) at 100 for stability
    eos_id: int | None = None  # text is pooled at the first end-of-text token
    pad_id: int = 0
    # images arrive in [0, 1]; the model normalises them channel-wise before the patch embedding
    # ((x - mean) / std). 0.5/0.5 maps to [-1, 1]; from_hf sets OpenAI's statistics.
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self):
        if self.vocab_size is None or self.eos_id is None:

            tok = Tokenizer.from_world()
            self.vocab_size = len(tok) if self.vocab_size is None else self.vocab_size
            self.eos_id = tok.eos_id if self.eos_id is None else self.eos_id
        for name in ("image_size", "patch_size", "vision_dim", "vision_depth", "vision_heads", "vocab_size",
                     "context_length", "text_dim", "text_depth", "text_heads", "embed_dim"):
            check_int(name, getattr(self, name))
        for name in ("eos_id", "pad_id"):
            check_int(name, getattr(self, name), lo=0)
        check_number("mlp_ratio", self.mlp_ratio, 0, math.inf, lo_open=True, hi_open=True)
        check_number("eps", self.eps, 0, math.inf, lo_open=True, hi_open=True)
        check_number("dropout", self.dropout, 0, 1, hi_open=True)
        check_temperature("init_temperature", self.init_temperature, "max_logit_scale", self.max_logit_scale)
        if not isinstance(self.pre_norm, bool):
            raise TypeError(f"pre_norm must be True or False, got {self.pre_norm!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        for name, dim, heads in (("vision", self.vision_dim, self.vision_heads), ("text", self.text_dim, self.text_heads)):
            if dim % heads:
                raise ValueError(f"{name}_dim={dim} must be divisible by {name}_heads={heads}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        for name in ("eos_id", "pad_id"):
            if not getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must lie in [0, {self.vocab_size - 1}], got {getattr(self, name)}")
        for name, lo in (("image_mean", -math.inf), ("image_std", 0)):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
                raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}")
            for channel, v in zip("RGB", values):
                check_number(f"{name} ({channel})", v, lo, math.inf, lo_open=True, hi_open=True)
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)


class CLIP(ContrastiveHead, nn.Module):
    """Image tower + text tower + two projections + a learned temperature."""

    scale_name, max_scale_field = "logit_scale", "max_logit_scale"  # the paper's names (ContrastiveHead)

    def __init__(self, config: CLIPConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = config = config or CLIPConfig()
        self.visual = ViT(
            image_size=config.image_size,
            patch_size=config.patch_size,
            dim=config.vision_dim,
            depth=config.vision_depth,
            heads=config.vision_heads,
            mlp_ratio=config.mlp_ratio,
            pool="cls",
            dropout=config.dropout,
            act=config.act,
            pre_norm=config.pre_norm,
            patch_bias=False,  # CLIP's patch embedding (a stride-P conv) has no bias
            eps=config.eps,
        )
        self.text = TextTransformer(
            vocab_size=config.vocab_size,
            max_len=config.context_length,
            dim=config.text_dim,
            depth=config.text_depth,
            heads=config.text_heads,
            mlp_ratio=config.mlp_ratio,
            causal=True,  # causal so that the text tower could also be a language model (paper §2.4)
            dropout=config.dropout,
            act=config.act,
            eps=config.eps,
        )
        # image_projection, text_projection (no bias) and logit_scale = log(1 / init_temperature),
        # learned in log space: exp keeps it positive, and a multiplicative quantity gets additive steps
        self.init_contrastive_head(config.vision_dim, config.text_dim, config.embed_dim, config.init_temperature,
                                   bias=False)
        # Projections start with unit-variance outputs (std = width^-1/2), as in OpenAI's code.
        nn.init.normal_(self.image_projection.weight, std=config.vision_dim**-0.5)
        nn.init.normal_(self.text_projection.weight, std=config.text_dim**-0.5)
        mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std).view(1, 3, 1, 1)
        # Not saved with the weights: they are part of the config.
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        self.tokenizer = tokenizer  # for encode_text(list[str]); the course tokenizer when None

    # ------------------------------------------------------------------------------ towers
    # scale(), the factor on cosine similarities (exp(logit_scale) clamped at max_logit_scale), is
    # ContrastiveHead's (minivlm/nn/heads.py)

    def check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        check_tensor("images", images, ndim=4, dtype="float")
        check_shape("images", images, [None, 3, s, s])
        check_range("images", images, 0.0, 1.0)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: float (B, 3, H, W) in [0, 1] → (B, embed_dim), unit norm."""
        self.check_images(images)
        x = (images - self.image_mean) / self.image_std
        # The final LayerNorm is applied to the CLS token only (OpenAI's ln_post(x[:, 0])): the
        # same result as self.visual(x), without normalising N patch tokens CLIP throws away.
        tokens = self.visual.forward_features(x, norm=False)  # (B, 1 + N, vision_dim)
        pooled = self.visual.norm(tokens[:, 0])  # (B, vision_dim)
        return F.normalize(self.image_projection(pooled), dim=-1)  # (B, E)

    def get_tokenizer(self):
        if self.tokenizer is None:

            tok = Tokenizer.from_world()
            if len(tok) != self.config.vocab_size or tok.eos_id != self.config.eos_id:
                raise ValueError(
                    f"this model (vocab_size={self.config.vocab_size}, eos_id={self.config.eos_id}) was not built "
                    f"for the course tokenizer (vocab {len(tok)}, eos {tok.eos_id}): pass token ids, or a "
                    "tokenizer to CLIP(config, tokenizer=...)"
                )
            self.tokenizer = tok
        return self.tokenizer

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """list[str] → (ids (B, T), attention_mask (B, T)) on the model's device."""
        _reject_bare_string(texts)
        if len(texts) == 0 or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a non-empty list of strings")
        # Too long a text is an error rather than silently cut (as in OpenAI's clip.tokenize).
        ids, mask = self.get_tokenizer()(list(texts), self.config.context_length, truncation=False)
        dev = self.logit_scale.device
        return ids.to(dev), mask.to(dev)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) → (B,) index of the first end-of-text token in each row."""
        is_eos = ids == self.config.eos_id  # (B, T)
        has_eos = is_eos.any(dim=1)
        if not bool(has_eos.all()):
            rows = (~has_eos).nonzero().flatten().tolist()
            raise ValueError(f"every text must contain the end-of-text token (id {self.config.eos_id}); rows {rows} do not")
        return is_eos.int().argmax(dim=1)  # argmax returns the first maximal index

    def encode_text(self, texts, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """texts: list[str] (tokenised with the model's tokenizer) or ids LongTensor (B, T), T ≤
        context_length, each row with an end-of-text token. Returns (B, embed_dim), unit norm.

        The text is summarised by the hidden state at its first end-of-text token: with causal
        attention that token is the only one that has seen the whole caption. For the same
        reason, tokens after it (padding) cannot change the result.
        """
        if isinstance(texts, torch.Tensor):
            ids = texts
        else:
            if attention_mask is not None:
                raise ValueError("attention_mask is only for token ids; strings are tokenised with their own mask")
            ids, attention_mask = self.tokenize(texts)
        hidden = self.text(ids, attention_mask)  # (B, T, text_dim); validates ids and mask
        positions = self.eos_positions(ids)  # (B,)
        pooled = hidden[torch.arange(ids.shape[0], device=ids.device), positions]  # (B, text_dim)
        return F.normalize(self.text_projection(pooled), dim=-1)  # (B, E)

    def forward(self, images: torch.Tensor, texts, attention_mask: torch.Tensor | None = None):
        """images (B, 3, H, W) in [0, 1], texts (B strings or ids (B, T)) →
        (image_features (B, E), text_features (B, E), logit_scale: exponentiated and clamped)."""
        check_tensor("images", images)
        _reject_bare_string(texts)
        n_texts = texts.shape[0] if isinstance(texts, torch.Tensor) else len(texts)
        if images.shape[0] != n_texts:
            raise ValueError(f"batch sizes must match, got images={images.shape[0]}, texts={n_texts}")
        return self.encode_image(images), self.encode_text(texts, attention_mask), self.scale()

    # ------------------------------------------------------------------- Hugging Face import
    @classmethod
    def from_hf(
        cls,
        hf_model,
        image_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        image_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        tokenizer=None,
    ) -> "CLIP":
        """Build a CLIP with the configuration and weights of a `transformers` CLIPModel.

        image_mean/image_std: the normalisation its image processor applies (OpenAI's by
        default), so that our model, which takes [0, 1] images, sees the same pixel values.
        tokenizer: optional, only needed to call encode_text with strings.

        Text pooling follows the HF model's rule: at the first `eos_token_id`; a legacy config
        with eos_token_id == 2 pools at the highest token id in each row, which is the first
        occurrence of id vocab_size - 1 (OpenAI's end-of-text token) when it is present.
        Raises ValueError for configurations this model cannot represent.
        """
        hc = hf_model.config
        tc, vc = hc.text_config, hc.vision_config
        problems = []
        to_ours = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
        if tc.hidden_act != vc.hidden_act:
            problems.append(f"text hidden_act {tc.hidden_act!r} != vision hidden_act {vc.hidden_act!r}")
        if vc.hidden_act not in to_ours:
            problems.append(f"hidden_act {vc.hidden_act!r} is not one of {sorted(to_ours)}")
        if tc.layer_norm_eps != vc.layer_norm_eps:
            problems.append(f"layer_norm_eps differs between towers ({tc.layer_norm_eps} vs {vc.layer_norm_eps})")
        ratio = vc.intermediate_size / vc.hidden_size
        if int(tc.hidden_size * ratio) != tc.intermediate_size or int(vc.hidden_size * ratio) != vc.intermediate_size:
            problems.append(
                f"the MLP ratio must be the same in both towers, got vision {vc.intermediate_size}/{vc.hidden_size}, "
                f"text {tc.intermediate_size}/{tc.hidden_size}"
            )
        if getattr(vc, "num_channels", 3) != 3:
            problems.append(f"num_channels must be 3, got {vc.num_channels}")
        eos = tc.eos_token_id
        if not isinstance(eos, int):
            problems.append(f"eos_token_id must be one int, got {eos!r}")
        if problems:
            raise ValueError("cannot represent this CLIPModel: " + "; ".join(problems))
        eos = tc.vocab_size - 1 if eos == 2 else eos  # see the docstring: HF's legacy argmax rule
        scale = float(hf_model.logit_scale.detach().exp())
        config = CLIPConfig(
            image_size=vc.image_size,
            patch_size=vc.patch_size,
            vision_dim=vc.hidden_size,
            vision_depth=vc.num_hidden_layers,
            vision_heads=vc.num_attention_heads,
            vocab_size=tc.vocab_size,
            context_length=tc.max_position_embeddings,
            text_dim=tc.hidden_size,
            text_depth=tc.num_hidden_layers,
            text_heads=tc.num_attention_heads,
            mlp_ratio=ratio,
            embed_dim=hc.projection_dim,
            act=to_ours[vc.hidden_act],
            pre_norm=True,
            eps=vc.layer_norm_eps,
            max_logit_scale=max(100.0, scale),  # HF does not clamp; never clamp an imported scale
            eos_id=eos,
            pad_id=tc.pad_token_id if isinstance(tc.pad_token_id, int) else 0,
            image_mean=tuple(image_mean),
            image_std=tuple(image_std),
        )
        model = cls(config, tokenizer=tokenizer)
        model.load_state_dict(hf_state_dict_to_ours(hf_model.state_dict(), vc.num_hidden_layers, tc.num_hidden_layers))
        return model


def _hf_layers(sd: dict, src: str, dst: str, depth: int) -> dict:
    """HF CLIPEncoderLayer weights → our Block weights (same math, different names)."""
    names = {
        "layer_norm1": "norm1",
        "self_attn.q_proj": "attn.q_proj",
        "self_attn.k_proj": "attn.k_proj",
        "self_attn.v_proj": "attn.v_proj",
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm2": "norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out = {}
    for i in range(depth):
        for theirs, ours in names.items():
            for p in ("weight", "bias"):
                out[f"{dst}.{i}.{ours}.{p}"] = sd[f"{src}.{i}.{theirs}.{p}"]
    return out


def hf_state_dict_to_ours(sd: dict, vision_depth: int, text_depth: int) -> dict:
    """Rename (and where needed reshape) a transformers CLIPModel state dict for `CLIP`."""
    v, t = "vision_model", "text_model"
    conv = sd[f"{v}.embeddings.patch_embedding.weight"]  # (D, C, P, P), a stride-P conv
    out = {
        # A stride-P conv is a linear map of each flattened patch; our patchify flattens in
        # (p1, p2, c) order, so the kernel is flattened the same way.
        "visual.patch_embed.proj.weight": rearrange(conv, "d c p1 p2 -> d (p1 p2 c)"),
        "visual.cls_token": sd[f"{v}.embeddings.class_embedding"].view(1, 1, -1),
        "visual.pos_embedding": sd[f"{v}.embeddings.position_embedding.weight"].unsqueeze(0),
        "visual.norm_pre.weight": sd[f"{v}.pre_layrnorm.weight"],  # (sic: HF's spelling)
        "visual.norm_pre.bias": sd[f"{v}.pre_layrnorm.bias"],
        "visual.norm.weight": sd[f"{v}.post_layernorm.weight"],
        "visual.norm.bias": sd[f"{v}.post_layernorm.bias"],
        "text.token_embedding.weight": sd[f"{t}.embeddings.token_embedding.weight"],
        "text.pos_embedding": sd[f"{t}.embeddings.position_embedding.weight"].unsqueeze(0),
        "text.norm.weight": sd[f"{t}.final_layer_norm.weight"],
        "text.norm.bias": sd[f"{t}.final_layer_norm.bias"],
        "image_projection.weight": sd["visual_projection.weight"],
        "text_projection.weight": sd["text_projection.weight"],
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    out.update(_hf_layers(sd, f"{v}.encoder.layers", "visual.transformer.blocks", vision_depth))
    out.update(_hf_layers(sd, f"{t}.encoder.layers", "text.transformer.blocks", text_depth))
    return {k: val.detach().clone() for k, val in out.items()}


# ----------------------------------------------------------------------------- zero-shot helpers


def _batches(n: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _encode_texts(model: CLIP, texts, batch_size: int) -> torch.Tensor:
    """list[str] or ids (N, T) or (ids, attention_mask) → (N, E), in batches."""
    if isinstance(texts, tuple) and len(texts) == 2 and isinstance(texts[0], torch.Tensor):
        ids, mask = texts
        return torch.cat([model.encode_text(ids[a:b], mask[a:b]) for a, b in _batches(len(ids), batch_size)])
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings (got one string)")
    return torch.cat([model.encode_text(texts[a:b]) for a, b in _batches(len(texts), batch_size)])


def encode_images(model: CLIP, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (N, E) unit-norm image embeddings, in batches, without gradients."""
    check_tensor("images", images, ndim=4, dtype="float")
    dev = model.logit_scale.device
    with eval_mode(model):
        return torch.cat([model.encode_image(images[a:b].to(dev)) for a, b in _batches(len(images), batch_size)])


def encode_texts(model: CLIP, texts, batch_size: int = 256) -> torch.Tensor:
    """list[str], ids (N, T) or (ids, attention_mask) → (N, E) unit-norm text embeddings."""
    with eval_mode(model):
        return _encode_texts(model, texts, batch_size)


def similarity(model: CLIP, images: torch.Tensor, texts, batch_size: int = 256) -> torch.Tensor:
    """Cosine similarity of every image with every text: (N_images, N_texts), in [-1, 1].

    texts: list[str], ids (N, T) or a tuple (ids, attention_mask). Used for retrieval:
    argmax over a row finds an image's best caption, over a column a caption's best image.
    """
    image_emb = encode_images(model, images, batch_size)  # (N_i, E)
    text_emb = encode_texts(model, texts, batch_size)  # (N_t, E)
    return image_emb @ text_emb.t()


def swap_similarity(model: CLIP, images: torch.Tensor, captions, batch_size: int = 256) -> torch.Tensor:
    """Winoground-style scores for a relation-swap set (`ShapesBench.swap`): images
    (N, 2, 3, H, W) and N caption pairs → (N, 2, 2) cosine similarities, where
    scores[n, i, j] is image i with caption j: the input of `minivlm.eval.swap_scores`."""
    check_tensor("images", images, ndim=5, dtype="float")
    n = images.shape[0]
    if images.shape[1] != 2 or len(captions) != n or any(len(pair) != 2 for pair in captions):
        raise ValueError(f"expected images (N, 2, 3, H, W) and N caption pairs, got images {tuple(images.shape)} "
                         f"and {len(captions)} caption entries")
    e = model.config.embed_dim
    image_emb = encode_images(model, images.flatten(0, 1), batch_size).view(n, 2, e)  # (N, 2, E)
    text_emb = encode_texts(model, [c for pair in captions for c in pair], batch_size).view(n, 2, e)  # (N, 2, E)
    return torch.einsum("nie,nje->nij", image_emb, text_emb)  # (N, 2 images, 2 captions)


def clip_step(model: nn.Module, batch: dict) -> dict:
    """One training step's loss for `minivlm.train.fit`.

    batch: dict(images=(B, 3, H, W) in [0, 1], ids=(B, T), attention_mask=(B, T) optional,
    positives=(B, B) bool optional). With "positives" (chapter 04's `pretrain_batches`: every caption
    in the batch that is true of image i), the loss is `multi_positive_itc`, the targets ALBEF's ITC
    trains with; without, CLIP's one caption per image (`clip_loss`).
    Returns {"loss": scalar tensor with grad, "logit_scale": the current exp(logit_scale)}.
    `model` may be a CLIP or a wrapper around one (DistributedDataParallel).
    """
    if not isinstance(batch, dict) or "images" not in batch or "ids" not in batch:
        raise ValueError(f"batch must be a dict with 'images' and 'ids' (and 'attention_mask'), got {type(batch)}")
    dev = next(model.parameters()).device
    images, ids = batch["images"].to(dev), batch["ids"].to(dev)
    mask = batch.get("attention_mask")
    mask = mask.to(dev) if mask is not None else None
    check_same_batch(images=images, ids=ids)
    image_features, text_features, scale = model(images, ids, mask)
    if batch.get("positives") is not None:
        loss = multi_positive_itc(scale * image_features @ text_features.t(), batch["positives"].to(dev))
    else:
        loss = clip_loss(image_features, text_features, scale)
    return {"loss": loss, "logit_scale": scale.detach()}


def init_vision_from_clip(model: nn.Module, clip: CLIP) -> nn.Module:
    """Start a model's image encoder (`model.visual`, a ViT) from a trained CLIP's image tower
    (chapter 02's zoo CLIP), as ALBEF (chapter 04) starts from an ImageNet-trained ViT and BLIP
    (chapter 06) from CLIP's. The ViTs must have the same layout (image and patch size, width,
    depth, heads, pre-norm, patch bias) and the same image normalisation.
    Copies the weights in place and returns `model`."""
    theirs = clip.visual.state_dict()
    mine = model.visual.state_dict()
    problems = [f"{k}: ours {tuple(v.shape)}, CLIP's {tuple(theirs[k].shape) if k in theirs else 'missing'}"
                for k, v in mine.items() if k not in theirs or theirs[k].shape != v.shape]
    problems += [f"{k}: only in CLIP's tower" for k in theirs if k not in mine]
    if problems:
        raise ValueError(f"this CLIP's image tower does not fit the model's (config image_size, patch_size, dim, "
                         f"vision_depth, heads, vision_pre_norm, patch_bias must match): {problems[:3]}")
    if tuple(clip.config.image_mean) != model.config.image_mean or tuple(clip.config.image_std) != model.config.image_std:
        raise ValueError(f"CLIP normalises images with mean {clip.config.image_mean}, std {clip.config.image_std}; "
                         f"this {type(model).__name__} with {model.config.image_mean}, {model.config.image_std}")
    model.visual.load_state_dict(theirs)
    return model
