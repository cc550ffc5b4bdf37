"""Flamingo: a frozen LLM that learns to look, through gated cross-attention (chapter 11).

Alayrac, Donahue, Luc, Miech, Barr, Hasson, Lenc, Mensch, Millican, Reynolds, Ring, Rutherford,
Cabi, Han, Gong, Samangooei, Monteiro, Menick, Borgeaud, Brock, Nematzadeh, Sharifzadeh,
Binkowski, Barreira, Vinyals, Zisserman and Simonyan, "Flamingo: a Visual Language Model for
Few-Shot Learning", NeurIPS 2022. Before it, in the same spirit: VisualGPT (Chen et al. 2022)
and VC-GPT (Luo et al. 2022), cross-attention from a pretrained decoder to image features.

Both pretrained models stay frozen: chapter 02's CLIP image tower and chapter 09's LLM. Two
trained parts join them:

    images (B, M, 3, H, W) -> frozen ViT -> tokens (B·M, 1 + N, Dv)
        -> Perceiver Resampler (`nn.pooling`)  -> L visual tokens per image (B, M·L, Dv)
    "<bos> <image> a red circle. <image> ..." -> frozen LLM, and before each of its layers
        x = x + tanh(α) · CrossAttn(x, visual tokens, media mask)   (`nn.gated`)
        x = x + tanh(β) · FFW(x)

α = β = 0 at the start, so the model begins as the frozen LLM exactly. The media mask
(`nn.masks.media`) lets each text token see only the image just before it; the LLM's own
causal self-attention carries what earlier images showed to later tokens.

Ablations are config options (`FlamingoConfig`): visual="mean" (one token per image) or
"patches" (all 1 + N tokens, no resampler); every=2 (a block before every second layer);
gated=False and placement="after_attention" (VisualGPT / VC-GPT: ungated cross-attention inside
each layer, where GPT-2's `add_cross_attention` puts it); only_immediate=False (each token sees
every earlier image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from minivlm.data.interleaved import IMAGE, Document, collate, text_only
from minivlm.data.worldtext import RecallItem, qa_prompt
from minivlm.eval import answer_hits, interval
from minivlm.losses import lm_loss
from minivlm.models.clip import CLIP
from minivlm.models.frozen import PrefixVLM, splice
from minivlm.models.gpt import GPT
from minivlm.nn import masks
from minivlm.nn.blocks import HOOK_PLACES
from minivlm.nn.gated import GatedCrossAttentionBlock
from minivlm.nn.pooling import PerceiverResampler
from minivlm.train import default_optimizer
from minivlm.utils import check_int, check_keys, check_number, check_range, check_shape, check_tensor, eval_mode, freeze

VISUALS = ("resampler", "mean", "patches")


@dataclass
class FlamingoConfig:
    """visual: how an image becomes tokens for the cross-attention ("resampler": n_latents
    latents; "mean": the mean of the ViT's tokens, 1 per image; "patches": all of them).
    every: a gated block before LLM layers 0, every, 2·every, ...; gated: tanh gates at zero
    (False: plain residual sums); feedforward: the block's gated FFW; placement: "before" each
    chosen layer (Flamingo) or "after_attention" inside it (GPT-2's cross-attention place);
    only_immediate: each token sees the image just before it (False: every earlier image)."""

    visual: str = "resampler"
    n_latents: int = 8
    resampler_depth: int = 2
    heads: int = 4
    ff_mult: float = 2.0
    every: int = 1
    gated: bool = True
    feedforward: bool = True
    placement: str = "before"
    only_immediate: bool = True

    def __post_init__(self):
        if self.visual not in VISUALS:
            raise ValueError(f"visual must be one of {list(VISUALS)}, got {self.visual!r}")
        if self.placement not in HOOK_PLACES:
            raise ValueError(f"placement must be one of {list(HOOK_PLACES)}, got {self.placement!r}")
        for name in ("n_latents", "resampler_depth", "heads", "every"):
            check_int(name, getattr(self, name))
        check_number("ff_mult", self.ff_mult, 0, 64, lo_open=True)
        for name in ("gated", "feedforward", "only_immediate"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


class Flamingo(nn.Module):
    """A frozen zoo CLIP image tower and a frozen zoo LLM, joined by a resampler and gated
    cross-attention blocks. forward(images, n_images, ids) -> logits (B, T, V).

    model = Flamingo(zoo.load("clip"), zoo.load("llm"), FlamingoConfig())
    The modules passed in become this model's own: build each model from its own zoo.load(...)."""

    def __init__(self, clip: CLIP, llm: GPT, config: FlamingoConfig | None = None, tokenizer=None):
        super().__init__()
        if not isinstance(clip, CLIP):
            raise TypeError(f"clip must be a minivlm CLIP (e.g. zoo.load('clip')), got {type(clip).__name__}")
        if not isinstance(llm, GPT):
            raise TypeError(f"llm must be a minivlm GPT (e.g. zoo.load('llm')), got {type(llm).__name__}")
        self.config = c = config or FlamingoConfig()
        self.tokenizer = tokenizer or llm.get_tokenizer()
        self.image_id = self.tokenizer.image_id
        self.image_size = clip.config.image_size
        self.visual = freeze(clip.visual)
        self.register_buffer("image_mean", clip.image_mean.detach().clone(), persistent=False)
        self.register_buffer("image_std", clip.image_std.detach().clone(), persistent=False)
        self.llm = freeze(llm)
        self.vision_dim = vision_dim = clip.config.vision_dim
        lc = llm.config
        if vision_dim % c.heads:
            raise ValueError(f"heads={c.heads} must divide the vision width {vision_dim}")
        if lc.dim % c.heads:
            raise ValueError(f"heads={c.heads} must divide the language model's width {lc.dim}")
        self.resampler = PerceiverResampler(vision_dim, c.resampler_depth, c.n_latents, c.heads, max_frames=1,
                                            ff_mult=c.ff_mult) if c.visual == "resampler" else None
        self.layers = [i for i in range(lc.depth) if i % c.every == 0]
        self.xattn = nn.ModuleDict({str(i): GatedCrossAttentionBlock(
            lc.dim, c.heads, context_dim=vision_dim, gated=c.gated, feedforward=c.feedforward, mlp_ratio=c.ff_mult,
            norm=lc.norm, mlp=lc.mlp, act=lc.act, bias=lc.bias, eps=lc.eps) for i in self.layers})
        # Flamingo trains the embedding of its <image> marker: it starts as the frozen LLM's row
        with torch.no_grad():
            self.image_token = nn.Parameter(llm.token_embedding.weight[self.image_id].detach().clone())

    # ------------------------------------------------------------------ images -> visual tokens
    @property
    def tokens_per_image(self) -> int:
        c = self.config
        n = (self.image_size // self.visual.patch_embed.patch_size) ** 2 + 1  # patches + CLS
        return {"resampler": c.n_latents, "mean": 1, "patches": n}[c.visual]

    def check_images(self, images: torch.Tensor, n_images: torch.Tensor) -> None:
        s = self.image_size
        check_tensor("images", images, ndim=5, dtype="float")
        check_shape("images", images, [None, None, 3, s, s])
        check_range("images", images, 0.0, 1.0)
        check_tensor("n_images", n_images, ndim=1, dtype="int")
        if len(n_images) != len(images):
            raise ValueError(f"n_images must give one count per row of images ({len(images)}), got {len(n_images)}")
        if bool((n_images < 0).any()) or bool((n_images > images.shape[1]).any()):
            raise ValueError(f"n_images must lie in [0, {images.shape[1]}] (images has room for {images.shape[1]} per "
                             f"row), got {n_images.tolist()}")

    def visual_tokens(self, images: torch.Tensor, n_images: torch.Tensor) -> torch.Tensor:
        """images (B, M, 3, H, W) in [0, 1], row b's first n_images[b] real -> (B, M·L, Dv): L
        tokens per image (`tokens_per_image`), zeros for the padding images."""
        self.check_images(images, n_images)
        b, m = images.shape[:2]
        real = torch.arange(m, device=images.device)[None] < n_images.to(images.device)[:, None]  # (B, M)
        out = images.new_zeros(b, m, self.tokens_per_image, self.vision_dim)
        if bool(real.any()):
            with torch.no_grad():  # the image tower is frozen: no graph through it
                tokens = self.visual.forward_features((images[real] - self.image_mean) / self.image_std)
            if self.resampler is not None:
                tokens = self.resampler(tokens)
            elif self.config.visual == "mean":
                tokens = tokens.mean(dim=1, keepdim=True)
            out[real] = tokens
        return out.flatten(1, 2)

    # ------------------------------------------------------------------ the language model, looking
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The LLM's token embeddings of ids, with the trained <image> embedding at each <image>."""
        embeds = self.llm.embed(ids)
        return torch.where((ids == self.image_id)[..., None], self.image_token.to(embeds.dtype), embeds)

    def media_mask(self, ids: torch.Tensor, n_media: int) -> torch.Tensor:
        """(B, T, n_media · L): which visual tokens each token of ids may read (`nn.masks.media`)."""
        return masks.media(ids == self.image_id, n_media, self.tokens_per_image, self.config.only_immediate)

    def hooks(self, visual: torch.Tensor, media_mask: torch.Tensor | None) -> dict:
        """The LLM's hooks: each gated block, reading `visual` under `media_mask`."""
        place = self.config.placement
        return {i: (place, lambda x, block=self.xattn[str(i)]: block(x, visual, media_mask)) for i in self.layers}

    def check_inputs(self, images: torch.Tensor, n_images: torch.Tensor, ids: torch.Tensor) -> None:
        """images and n_images (`check_images`), and ids (B, T) with n_images[b] <image> tokens in row b."""
        self.check_images(images, n_images)
        check_tensor("ids", ids, ndim=2, dtype="int")
        if len(images) != len(ids):
            raise ValueError(f"one row of images per row of ids: got {len(images)} and {len(ids)}")
        counts = (ids == self.image_id).sum(1).cpu()
        if not torch.equal(counts, n_images.cpu()):
            row = int((counts != n_images.cpu()).nonzero()[0])
            raise ValueError(f"each row needs one <image> token per image: row {row} has {int(counts[row])} <image> "
                             f"tokens and n_images={int(n_images[row])}")

    def forward(self, images: torch.Tensor, n_images: torch.Tensor, ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, M, 3, H, W); n_images (B,); ids (B, T) with n_images[b] <image> tokens in row
        b -> next-token logits (B, T, V)."""
        self.check_inputs(images, n_images, ids)
        visual = self.visual_tokens(images, n_images)
        return self.llm(inputs_embeds=self.embed(ids), attention_mask=attention_mask,
                        hooks=self.hooks(visual, self.media_mask(ids, images.shape[1])))

    def gates(self) -> dict[int, dict[str, float]]:
        """{LLM layer: {"attn": tanh(α), "ff": tanh(β)}}: how far each block has opened."""
        return {i: self.xattn[str(i)].gates() for i in self.layers}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, n_images: torch.Tensor, prompts: Sequence[str], max_new_tokens: int,
                     **decoding) -> list[list[int]]:
        """The ids each prompt continues with (greedy by default), through the LLM's KV cache and
        `minivlm.generate`: the visual tokens are computed once per document; each step feeds
        only the new token, whose media-mask row is read off the whole text so far."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of strings")
        if len(prompts) != len(images):
            raise ValueError(f"one prompt per row of images: got {len(images)} rows and {len(prompts)} prompts")
        prompt, mask = self.llm.encode_prompts(prompts, self.tokenizer)
        self.check_inputs(images, n_images, prompt)
        m = images.shape[1]
        with eval_mode(self):
            visual = self.visual_tokens(images, n_images)

            def hooks(ids, rows, past):
                return self.hooks(visual[rows], self.media_mask(ids, m)[:, past:])

            out = self.llm.generate(prompt, max_new_tokens, embed=lambda ids, rows: self.embed(ids),
                                    attention_mask=mask, hooks=hooks, **decoding)
        return [row[prompt.shape[1]:] for row in out.tolist()]

    def complete(self, images: torch.Tensor, n_images: torch.Tensor, prompts: Sequence[str], max_new_tokens: int = 8,
                 stop: str | None = ".", **decoding) -> list[str]:
        """The text each prompt ("... <image> ...") continues with, up to `stop` (None: <eos>),
        special tokens such as <extra_3> kept."""
        stop_ids = {self.tokenizer.encode(stop)[0]} if stop else set()
        stop_ids.add(self.llm.config.eos_id)
        out = []
        for row in self.generate_ids(images, n_images, prompts, max_new_tokens, **decoding):
            cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
            out.append(self.tokenizer.decode(row[:cut], skip_special=False).replace("<pad>", "").strip())
        return out

    def _one_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) single images -> the (B, 1, 3, H, W) documents of one image each, n_images (B,)."""
        check_tensor("images", images, ndim=4, dtype="float")
        return images[:, None], torch.ones(len(images), dtype=torch.long, device=images.device)

    def caption(self, images: torch.Tensor, max_len: int | None = 32, **decoding) -> list[str]:
        """A caption per image: the continuation of "<bos> <image>" (greedy by default), at most
        max_len - 2 words (None: 32), as chapter 10's prefix models caption."""
        max_len = 32 if max_len is None else max_len
        check_int("max_len", max_len, lo=3)
        docs, n = self._one_image(images)
        return self.complete(docs, n, [IMAGE] * len(images), max_len - 2, stop=None, **decoding)

    def ask(self, images: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 4) -> list[str]:
        """The answer to each question about its image, up to the first "." (greedy): the prompt
        is "<image> question: ... answer:" (never trained as such unless the documents hold VQA)."""
        docs, n = self._one_image(images)
        return self.complete(docs, n, [f"{IMAGE} {qa_prompt(q)}" for q in questions], max_new_tokens, stop=".")

    def no_images(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, n_images) for b documents of text alone: one blank slot each, none of them used."""
        dev = self.image_token.device
        return (torch.zeros(b, 1, 3, self.image_size, self.image_size, device=dev),
                torch.zeros(b, dtype=torch.long, device=dev))

    def complete_text(self, prompts: Sequence[str], max_new_tokens: int = 8, stop: str | None = ".") -> list[str]:
        """Text alone through the whole model, no image: the gated feed-forward layers still act on
        every token, so after training this is not the frozen LLM (its fact recall is measured so)."""
        return self.complete(*self.no_images(len(prompts)), prompts, max_new_tokens, stop=stop)

    # ------------------------------------------------------------------ what is trained
    def stored_state_dict(self) -> dict:
        """The trained parts only (the zoo stores these): resampler, gated blocks, <image> row."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("llm.", "visual."))}


FLAMINGO_CONFIG = dict(visual="resampler", n_latents=8, resampler_depth=2, heads=4, ff_mult=2.0, every=1)


def flamingo_optimizer(model: Flamingo, lr: float, gate_lr_mult: float = 1.0, weight_decay: float = 0.0):
    """AdamW over the trainable parts, the tanh gates at gate_lr_mult × lr. A gate starts at 0 and
    Adam moves it by about lr a step, so at lr 3e-3 it needs hundreds of steps to reach tanh ≈ 0.5:
    chapter 11 measures what a faster gate changes (the paper trains 500k steps and needs none)."""
    check_number("gate_lr_mult", gate_lr_mult, 0, 1e4, lo_open=True)
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("_gate")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("_gate")]
    optimizer = default_optimizer(rest, lr=lr, weight_decay=weight_decay)
    if gates:
        optimizer.add_param_group({"params": gates, "weight_decay": 0.0, "lr": lr * gate_lr_mult})
    return optimizer


def flamingo_step(model: Flamingo, batch: dict) -> dict:
    """The LM loss on interleaved documents for `minivlm.train.fit`: every real text token but
    <bos> and <image> is a target (batch from `minivlm.data.interleaved.interleaved_batches`)."""
    check_keys("batch", batch, ("images", "n_images", "ids", "attention_mask", "loss_mask"), "interleaved_batches")
    logits = model(batch["images"], batch["n_images"], batch["ids"], batch["attention_mask"])
    return {"loss": lm_loss(logits, batch["ids"], batch["loss_mask"])}


# ----------------------------------------------------------------------------- k-shot evaluation
@torch.no_grad()
def kshot_accuracy(model: Flamingo, docs: Sequence[Document], images: bool = True, batch_size: int = 64) -> dict:
    """Ask each k-shot document (`minivlm.data.interleaved.kshot_documents`) greedily: a hit when
    the first generated tokens are exactly the answer's. images=False: the text-only control
    (every <image> removed, no image given). Returns dict(predictions, hits, accuracy (Estimate))."""
    docs = _kshot_docs(docs)
    tok = model.tokenizer
    dev = model.image_token.device
    out = {"predictions": [], "hits": []}
    for a in range(0, len(docs), batch_size):
        chunk = docs[a:a + batch_size]
        if images:
            batch = collate(chunk, tok, model.llm.config.max_len, add_eos=False)
            imgs, n, prompts = batch["images"].to(dev), batch["n_images"].to(dev), [d.text for d in chunk]
        else:
            (imgs, n), prompts = model.no_images(len(chunk)), [text_only(d) for d in chunk]
        answers = [tok.encode(d.answer) for d in chunk]
        _score(model.generate_ids(imgs, n, prompts, max(len(x) for x in answers)), answers, tok, out)
    return {**out, "accuracy": interval(out["hits"])}


def _kshot_docs(docs) -> list[Document]:
    docs = list(docs)
    if not docs or not all(isinstance(d, Document) and d.answer is not None for d in docs):
        raise TypeError("docs must be a non-empty list of k-shot Documents (from kshot_documents)")
    return docs


def _score(rows: list[list[int]], answers: list[list[int]], tok, out: dict) -> None:
    """Append each row's first len(answer) generated ids, decoded, to out["predictions"], and
    whether they are exactly the answer's ids to out["hits"]."""
    for row, ans in zip(rows, answers):
        out["predictions"].append(tok.decode(row[:len(ans)], skip_special=False))
        out["hits"].append(row[:len(ans)] == ans)


@torch.no_grad()
def prefix_kshot_accuracy(prefix, docs: Sequence[Document], batch_size: int = 64) -> dict:
    """Chapter 10's prefix model (`minivlm.models.frozen.PrefixVLM`) given the same k-shot
    documents: each <image> becomes its K prefix embeddings (K <image> tokens, the images'
    prefixes spliced in reading order), then greedy decoding as `kshot_accuracy`. The control
    that asks whether cross-attention adds anything over a prefix that never learned episodes.
    Returns dict(predictions, hits, accuracy (Estimate))."""

    if not isinstance(prefix, PrefixVLM):
        raise TypeError(f"prefix must be a PrefixVLM (chapter 10, e.g. zoo.load('clipcap')), got {type(prefix).__name__}")
    docs = _kshot_docs(docs)
    tok, k = prefix.tokenizer, prefix.config.n_prefix
    llm = prefix.llm
    dev = next(prefix.parameters()).device
    out = {"predictions": [], "hits": []}
    for a in range(0, len(docs), batch_size):
        chunk = docs[a:a + batch_size]
        batch = collate(chunk, tok, llm.config.max_len, add_eos=False)
        m = batch["images"].shape[1]
        # (B, M·K, D): image j's K prefix vectors, padding images included (their slots never exist)
        embeds = prefix.image_prefix(batch["images"].flatten(0, 1).to(dev)).unflatten(0, (len(chunk), m))
        texts = [" ".join(" ".join([IMAGE] * k) if w == IMAGE else w for w in d.text.split()) for d in chunk]
        answers = [tok.encode(d.answer) for d in chunk]
        prompt, mask = llm.encode_prompts(texts, tok)
        n = batch["n_images"].tolist()

        def embed(ids, rows):
            per_row = [embeds[r, :n[r]].flatten(0, 1) for r in rows.tolist()]  # (n_r · K, D) each
            spliced = llm.embed(ids)
            for i, vectors in enumerate(per_row):
                spliced[i:i + 1] = splice(spliced[i:i + 1], ids[i:i + 1], vectors[None], prefix.image_id)
            return spliced

        with eval_mode(prefix):
            rows = llm.generate(prompt, max(len(x) for x in answers), embed=embed, attention_mask=mask)
        _score(rows[:, prompt.shape[1]:].tolist(), answers, tok, out)
    return {**out, "accuracy": interval(out["hits"])}


def frozen_llm_equal(model: Flamingo, images: torch.Tensor, n_images: torch.Tensor, ids: torch.Tensor) -> bool:
    """True if the model's logits equal the frozen LLM's on the same ids, bit for bit (as every
    gate is at zero and the <image> row untrained, they must at initialisation)."""
    with eval_mode(model):
        ours = model(images, n_images, ids)
        plain = model.llm(ids)
    return bool(torch.equal(ours, plain))


def fact_recall(model: Flamingo, items: Sequence[RecallItem], images: torch.Tensor | None = None) -> dict:
    """The LLM's world facts (`minivlm.data.worldtext.recall_items`) asked through the Flamingo:
    did training the bridge disturb what the LLM knew? images=None: text alone (`complete_text`;
    the gated feed-forward layers still act). images (N, 3, H, W): each question after an
    unrelated image, "<image> question: ...", item i with image i % N (the cross-attention then
    acts too). A hit when the text up to the first "." equals the answer.
    Returns dict(predictions, hits, accuracy (Estimate))."""
    items = list(items)
    if not items or not all(isinstance(it, RecallItem) for it in items):
        raise TypeError("items must be a non-empty list of RecallItem (from minivlm.data.worldtext.recall_items)")
    longest = max(len(it.answer.split()) for it in items)
    if images is None:
        predictions = model.complete_text([it.prompt for it in items], longest + 1)
    else:
        check_tensor("images", images, ndim=4, dtype="float")
        if len(images) == 0:
            raise ValueError("images must hold at least one image (or pass None for text alone)")
        picked = images[torch.arange(len(items)) % len(images)]
        docs, n = model._one_image(picked)
        predictions = model.complete(docs, n, [f"{IMAGE} {it.prompt}" for it in items], longest + 1)
    hits = answer_hits(predictions, [it.answer for it in items])
    return {"predictions": predictions, "hits": hits, "accuracy": interval(hits)}


__all__ = ["FLAMINGO_CONFIG", "Flamingo", "FlamingoConfig", "fact_recall", "flamingo_optimizer", "flamingo_step",
           "frozen_llm_equal", "kshot_accuracy", "prefix_kshot_accuracy"]
