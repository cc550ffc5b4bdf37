"""Images as a prefix for a frozen language model: Frozen, ClipCap, MAPL (chapter 10).

Tsimpoukelli, Menick, Cabi, Eslami, Vinyals and Hill, "Multimodal Few-Shot Learning with Frozen
Language Models", NeurIPS 2021; Mokady, Hertz and Bermano, "ClipCap: CLIP Prefix for Image
Captioning", 2021; Mañas, Rodriguez, Ahmadi, Nematzadeh, Goyal and Agrawal, "MAPL:
Parameter-Efficient Adaptation of Unimodal Pre-Trained Models for Vision-Language Few-Shot
Prompting", EACL 2023.

A pretrained language model stays frozen. A small trainable part turns an image into K vectors
of the language model's embedding width, and those vectors take the places of K `<image>`
tokens in its input:

    <bos> <image> <image> <image> <image> a red circle and a blue star . <eos>
          -------- K image embeddings ---  --- caption: the only targets ---

The three papers differ in what is trained:

    frozen   the vision encoder (here the zoo CLIP's ViT, fine-tuned) + a linear map
    clipcap  an MLP from CLIP's (frozen) image embedding to the K vectors
    mapl     a light mapper, K learned queries over CLIP's (frozen) patch tokens

`splice` is the one place that puts image embeddings into a token sequence; chapters 14-18
reuse it (nanoVLM's `_replace_img_tokens_with_embd` is the same pattern).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.losses import lm_loss
from minivlm.nn.pooling import AttentionalPooler
from minivlm.train import freeze, unfreeze
from minivlm.utils import check_int, check_range, check_shape, check_tensor, eval_mode

VARIANTS = ("frozen", "clipcap", "mapl")


# ----------------------------------------------------------------------------- the splice
def splice(embeds: torch.Tensor, ids: torch.Tensor, image_embeds: torch.Tensor, image_id: int) -> torch.Tensor:
    """The input embeddings with row b's K image embeddings, in order, at row b's K `<image>`
    positions; every other position unchanged. embeds (B, T, D): the token embeddings of ids
    (B, T); image_embeds (B, K, D). Returns a new (B, T, D) tensor (gradients reach both)."""
    check_tensor("embeds", embeds, ndim=3, dtype="float")
    check_tensor("ids", ids, ndim=2, dtype="int")
    check_tensor("image_embeds", image_embeds, ndim=3, dtype="float")
    if embeds.shape[:2] != ids.shape:
        raise ValueError(f"embeds (B, T, D) must be the embeddings of ids (B, T), got embeds "
                         f"{tuple(embeds.shape)} and ids {tuple(ids.shape)}")
    b, k, d = image_embeds.shape
    if b != ids.shape[0] or d != embeds.shape[2]:
        raise ValueError(f"image_embeds must be ({ids.shape[0]}, K, {embeds.shape[2]}) for embeds "
                         f"{tuple(embeds.shape)}, got {tuple(image_embeds.shape)}")
    at = ids == image_id  # (B, T): where the image goes
    counts = at.sum(1)
    if bool((counts != k).any()):
        row = int((counts != k).nonzero()[0])
        raise ValueError(f"every row needs exactly K={k} <image> tokens (one per image embedding), row {row} has "
                         f"{int(counts[row])}")
    out = embeds.clone()
    out[at] = image_embeds.reshape(b * k, d).to(embeds.dtype)  # row-major: row b's K slots, in order
    return out


def insert_image_tokens(ids: torch.Tensor, attention_mask: torch.Tensor, n_image: int, image_id: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """"<bos> words <eos>" rows (B, T) -> "<bos> <image>×K words <eos>" (B, K + T), with their
    attention mask and the loss mask: True on the tokens to predict (the words and <eos>), never
    on <bos>, an <image> token or padding. `lm_loss(logits, ids, loss_mask)` scores only those."""
    check_tensor("ids", ids, ndim=2, dtype="int")
    check_tensor("attention_mask", attention_mask, ndim=2)
    check_int("n_image", n_image)
    if attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
    if ids.shape[1] < 2:
        raise ValueError(f"rows need <bos> and at least one token to predict, got ids of shape {tuple(ids.shape)}")
    b = ids.shape[0]
    image = torch.full((b, n_image), image_id, dtype=ids.dtype, device=ids.device)
    real = attention_mask.bool()
    if not bool(real[:, 0].all()) or bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError("rows must start with a real token (<bos>) and be right-padded (the attention mask "
                         "True, then False)")
    new_ids = torch.cat([ids[:, :1], image, ids[:, 1:]], dim=1)
    new_mask = torch.cat([real[:, :1], torch.ones_like(image, dtype=torch.bool), real[:, 1:]], dim=1)
    loss_mask = torch.cat([torch.zeros_like(real[:, :1]), torch.zeros_like(image, dtype=torch.bool),
                           real[:, 1:]], dim=1)
    return new_ids, new_mask, loss_mask


# ----------------------------------------------------------------------------- the model
@dataclass
class PrefixConfig:
    """variant: "frozen", "clipcap" or "mapl"; n_prefix: K image embeddings; hidden: the width
    of ClipCap's MLP; mapper_dim, mapper_heads: MAPL's mapper."""

    variant: str = "clipcap"
    n_prefix: int = 8
    hidden: int = 128
    mapper_dim: int = 128
    mapper_heads: int = 4

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        for name in ("n_prefix", "hidden", "mapper_dim", "mapper_heads"):
            check_int(name, getattr(self, name))
        if self.mapper_dim % self.mapper_heads:
            raise ValueError(f"mapper_dim={self.mapper_dim} must be divisible by mapper_heads={self.mapper_heads}")


class ClipCapMapper(nn.Module):
    """ClipCap's MLP: an image embedding (B, E) -> (B, K, D), through one tanh hidden layer."""

    def __init__(self, embed_dim: int, dim: int, n_prefix: int, hidden: int):
        super().__init__()
        self.n_prefix, self.dim = n_prefix, dim
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_prefix * dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(len(features), self.n_prefix, self.dim)


class LinearMapper(nn.Module):
    """Frozen's map: one linear layer from the image feature (B, E) to (B, K, D)."""

    def __init__(self, embed_dim: int, dim: int, n_prefix: int):
        super().__init__()
        self.n_prefix, self.dim = n_prefix, dim
        self.proj = nn.Linear(embed_dim, n_prefix * dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features).view(len(features), self.n_prefix, self.dim)


class MaplMapper(nn.Module):
    """MAPL's mapper: patch tokens (B, N, Dv) projected down, read by K learned queries (that
    also attend to each other: chapter 07's attentional pooler), projected up to (B, K, D)."""

    def __init__(self, vision_dim: int, dim: int, n_prefix: int, mapper_dim: int, heads: int):
        super().__init__()
        self.down = nn.Linear(vision_dim, mapper_dim)
        self.pool = AttentionalPooler(mapper_dim, n_queries=n_prefix, heads=heads, self_attention=True)
        self.up = nn.Linear(mapper_dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.up(self.pool(self.down(tokens)))


class PrefixVLM(nn.Module):
    """A frozen GPT (chapter 09) reading K image embeddings made from a CLIP (chapter 02) vision
    tower: `caption(images)`, `ask(images, questions)`, and `forward(images, ids) -> logits`.

    model = PrefixVLM(zoo.load("clip"), zoo.load("llm"), PrefixConfig("clipcap"))
    The language model is frozen here, and the vision tower too unless variant="frozen" (which
    trains it). The modules passed in become this model's own, not copies: build each model from
    its own `zoo.load(...)`."""

    def __init__(self, clip, llm, config: PrefixConfig | None = None, tokenizer=None):
        super().__init__()
        from minivlm.models.clip import CLIP
        from minivlm.models.gpt import GPT

        if not isinstance(clip, CLIP):
            raise TypeError(f"clip must be a minivlm CLIP (e.g. zoo.load('clip')), got {type(clip).__name__}")
        if not isinstance(llm, GPT):
            raise TypeError(f"llm must be a minivlm GPT (e.g. zoo.load('llm')), got {type(llm).__name__}")
        self.config = c = config or PrefixConfig()
        if c.n_prefix + 3 > llm.config.max_len:  # <bos>, the prefix, at least one word and <eos>
            raise ValueError(f"a prefix of n_prefix={c.n_prefix} image embeddings leaves no room for text in the "
                             f"language model's context of max_len={llm.config.max_len} tokens")
        self.tokenizer = tokenizer or llm.get_tokenizer()
        self.image_id = getattr(self.tokenizer, "image_id", None)
        if self.image_id is None:
            raise ValueError("the tokenizer has no <image> token")
        # the vision tower: CLIP's ViT (+ its projection to the image embedding), not its text tower
        self.image_size = clip.config.image_size
        self.visual, self.image_projection = clip.visual, clip.image_projection
        self.register_buffer("image_mean", clip.image_mean.detach().clone(), persistent=False)
        self.register_buffer("image_std", clip.image_std.detach().clone(), persistent=False)
        self.llm = freeze(llm)
        dim = llm.config.dim
        if c.variant == "frozen":
            unfreeze(self.visual), unfreeze(self.image_projection)  # Frozen trains its vision encoder
            self.mapper = LinearMapper(clip.config.embed_dim, dim, c.n_prefix)
        elif c.variant == "clipcap":
            freeze(self.visual), freeze(self.image_projection)
            self.mapper = ClipCapMapper(clip.config.embed_dim, dim, c.n_prefix, c.hidden)
        else:
            freeze(self.visual), freeze(self.image_projection)
            self.mapper = MaplMapper(clip.config.vision_dim, dim, c.n_prefix, c.mapper_dim, c.mapper_heads)

    # ------------------------------------------------------------------ image -> prefix
    def check_images(self, images: torch.Tensor) -> None:
        s = self.image_size
        check_tensor("images", images, ndim=4, dtype="float")
        check_shape("images", images, [None, 3, s, s])
        check_range("images", images, 0.0, 1.0)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the mapper reads: CLIP's unit image embedding (B, E) for frozen and clipcap, the
        ViT's normalised tokens (B, 1 + N, Dv) for mapl."""
        self.check_images(images)
        train_vision = self.config.variant == "frozen"
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_vision):  # no graph through a frozen tower
            tokens = self.visual.forward_features((images - self.image_mean) / self.image_std)  # (B, 1 + N, Dv)
            if self.config.variant == "mapl":
                return tokens
            return F.normalize(self.image_projection(tokens[:, 0]), dim=-1)  # = CLIP.encode_image

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, K, D): the embeddings that take the <image> places."""
        return self.mapper(self.image_features(images))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W); ids (B, T) holding K <image> tokens per row -> logits (B, T, V)."""
        check_tensor("ids", ids, ndim=2, dtype="int")
        if len(images) != len(ids):
            raise ValueError(f"one image per row of ids: got {len(images)} images and {len(ids)} rows")
        if ids.shape[1] > self.llm.config.max_len:
            raise ValueError(f"ids have {ids.shape[1]} tokens, longer than the language model's context "
                             f"max_len={self.llm.config.max_len}")
        embeds = splice(self.llm.embed(ids), ids, self.image_prefix(images), self.image_id)
        return self.llm(inputs_embeds=embeds)

    # ------------------------------------------------------------------ generation
    def _prompt(self) -> str:
        return " ".join(["<image>"] * self.config.n_prefix)

    def _embedder(self, images: torch.Tensor):
        """embed(ids, rows) for the LLM's decoding: the images' prefixes, computed once, spliced
        into each prompt row (row n showing image rows[n])."""
        prefix = self.image_prefix(images)  # (B, K, D)
        return lambda ids, rows: splice(self.llm.embed(ids), ids, prefix[rows], self.image_id)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompt: torch.Tensor, max_new_tokens: int, use_cache: bool = True,
                 **decoding) -> torch.Tensor:
        """Continue prompt ids (B, T), each holding K <image> tokens, by at most max_new_tokens
        (the frozen LLM's `generate`, with row b's image spliced into row b)."""
        if len(images) != len(prompt):
            raise ValueError(f"one image per prompt row: got {len(images)} images and {len(prompt)} rows")
        with eval_mode(self):
            return self.llm.generate(prompt, max_new_tokens, use_cache=use_cache, embed=self._embedder(images),
                                     **decoding)

    @torch.no_grad()
    def complete(self, images: torch.Tensor, prompts: Sequence[str], max_new_tokens: int, stop: str | None,
                 **decoding) -> list[str]:
        """The frozen LLM's continuation of "<bos> <image>×K prompt" for each image: the image
        embeddings spliced in once, then decoded with the LLM's own cache."""
        if isinstance(prompts, str) or len(prompts) != len(images):
            raise ValueError(f"one prompt per image: got {len(images)} images and "
                             f"{'one string' if isinstance(prompts, str) else len(prompts)} prompts")
        texts = [f"{self._prompt()} {p}".strip() for p in prompts]
        with eval_mode(self):
            return self.llm.complete(texts, max_new_tokens, stop=stop, tokenizer=self.tokenizer,
                                     embed=self._embedder(images), **decoding)

    def caption(self, images: torch.Tensor, max_len: int | None = 32, **decoding) -> list[str]:
        """A caption per image (greedy by default; decoding: num_beams, do_sample, top_p ...), at
        most max_len - 2 words (BLIP's budget: "<bos> words <eos>" in max_len; None: 32)."""
        max_len = 32 if max_len is None else max_len
        check_int("max_len", max_len, lo=3)
        return self.complete(images, [""] * len(images), max_len - 2, stop=None, **decoding)

    def ask(self, images: torch.Tensor, questions: Sequence[str], describe_first: bool = False,
            max_new_tokens: int = 4) -> list[str]:
        """The answer to each question about its image, up to the first "." (greedy): the prompt
        is "<image>×K question: ... answer:", as the LLM read questions after a caption in chapter
        09. describe_first: the model first captions the image, and the question follows its own
        caption ("<image>×K caption question: ... answer:")."""
        from minivlm.data.worldtext import qa_prompt

        if isinstance(questions, str) or not all(isinstance(q, str) for q in questions):
            raise TypeError("questions must be a list of strings")
        prompts = [qa_prompt(q) for q in questions]
        if describe_first:
            prompts = [f"{c} {p}" for c, p in zip(self.caption(images), prompts)]
        return self.complete(images, prompts, max_new_tokens, stop=".")

    # ------------------------------------------------------------------ what is trained
    def stored_state_dict(self) -> dict:
        """The weights that are this model's own: everything but the frozen LLM, and but the
        frozen vision tower unless variant="frozen" (the zoo stores only these)."""
        frozen = ("llm.",) if self.config.variant == "frozen" else ("llm.", "visual.", "image_projection.")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}


def prefix_step(model: PrefixVLM, batch: dict) -> dict:
    """The captioning loss for `minivlm.train.fit`: batch images, ids ("<bos> <image>×K words
    <eos>"), loss_mask (True on the words and <eos>); only those tokens are scored."""
    logits = model(batch["images"], batch["ids"])
    return {"loss": lm_loss(logits, batch["ids"], batch["loss_mask"])}


def prefix_batches(data: dict, n_prefix: int, batch_size: int = 32, seed: int = 0, tokenizer=None):
    """batches(step) -> dict(images, ids, attention_mask, loss_mask): chapter 06's image-caption
    batches (`pair_batches`) with K <image> tokens after <bos>."""
    from minivlm.data.tokenizer import Tokenizer
    from minivlm.models.blip import pair_batches

    tok = tokenizer or Tokenizer.from_world()
    pairs = pair_batches(data, batch_size=batch_size, seed=seed, tokenizer=tok)

    def batch(step: int) -> dict:
        b = pairs(step)
        ids, mask, loss_mask = insert_image_tokens(b["ids"], b["attention_mask"], n_prefix, tok.image_id)
        return {"images": b["images"], "ids": ids, "attention_mask": mask, "loss_mask": loss_mask}

    return batch


# ----------------------------------------------------------------------------- evaluation
def answer_figures(predictions: list[str], answers: Sequence[str], kinds: Sequence[str]) -> dict:
    """Exact-answer accuracy of predictions: dict(predictions, hits, accuracy, per_kind), each
    accuracy an Estimate with its 95 % interval."""
    from minivlm.eval import answer_hits, interval

    hits = answer_hits(predictions, list(answers))
    per_kind = {k: interval([h for h, kk in zip(hits, kinds) if kk == k]) for k in sorted(set(kinds))}
    return {"predictions": predictions, "hits": hits, "accuracy": interval(hits), "per_kind": per_kind}


def vqa_figures(model: PrefixVLM, data: dict, describe_first: bool = False) -> dict:
    """VQA by prompting on a ShapesBench `vqa` set: dict(predictions, hits, accuracy, per_kind)."""
    return answer_figures(model.ask(data["images"], data["questions"], describe_first=describe_first),
                           data["answers"], data["kinds"])


def llm_alone_figures(model: PrefixVLM, data: dict, max_new_tokens: int = 4) -> dict:
    """The baseline of questions about images: the same questions to the frozen LLM alone, with
    no image. dict(predictions, hits, accuracy, per_kind)."""
    from minivlm.data.worldtext import qa_prompt

    predictions = model.llm.complete([qa_prompt(q) for q in data["questions"]], max_new_tokens,
                                     tokenizer=model.tokenizer)
    return answer_figures(predictions, data["answers"], data["kinds"])


def knowledge_figures(model: PrefixVLM, data: dict) -> dict:
    """Knowledge questions (a ShapesBench `knowledge` set) three ways: "direct" (the image prefix,
    then the question), "describe_first" (the model's own caption between them) and "llm_alone"
    (the question to the language model, no image: the baseline). Each: dict(predictions, hits,
    accuracy, per_kind)."""
    n = max(len(a.split()) for a in data["answers"]) + 1
    return {
        "direct": answer_figures(model.ask(data["images"], data["questions"], max_new_tokens=n),
                                 data["answers"], data["kinds"]),
        "describe_first": answer_figures(model.ask(data["images"], data["questions"], describe_first=True,
                                                   max_new_tokens=n), data["answers"], data["kinds"]),
        "llm_alone": llm_alone_figures(model, data, n),
    }
