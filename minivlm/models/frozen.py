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

Two things the papers do not do, for chapter 10's question "does the LLM's knowledge reach the
image?":

    a prefix distilled to act as the caption   `caption_distill_step`: on visible-answer VQA
        only, the frozen LLM reading [prefix ; question ; answer] is pulled towards the same LLM
        reading [true caption ; question ; answer], KL at every suffix position
    a prefix at the word scale                 PrefixConfig(prefix_norm="word"): each prefix
        vector rescaled to the mean norm of the LLM's token embeddings (`prefix_norms` prints both)

and `knowledge_decomposition` / `perception_figures` take knowledge accuracy apart: the LLM
alone, the true caption in text (the ceiling), the model's own caption in text, describe-then-
answer, asked directly; and each again where the model sees the asked object right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivlm.data.bench import knowledge_perception
from minivlm.data.pairs import check_batch_keys, check_pair_set, pair_batches
from minivlm.data.shapesworld import CAPTION_TEMPLATES, VQA_KINDS, ShapesWorld
from minivlm.data.tokenizer import Tokenizer, split_words
from minivlm.data.worldtext import fact_words, qa_prompt, qa_text
from minivlm.eval import answer_hits, bootstrap, interval
from minivlm.generate import check_images_to_caption
from minivlm.losses import lm_loss
from minivlm.models.clip import CLIP
from minivlm.models.gpt import GPT
from minivlm.nn.pooling import AttentionalPooler
from minivlm.utils import (
    check_int,
    check_range,
    check_same_length,
    check_shape,
    check_strings,
    check_tensor,
    eval_mode,
    freeze,
    unfreeze,
)

VARIANTS = ("frozen", "clipcap", "mapl")
PREFIX_NORMS = ("free", "word")


# ----------------------------------------------------------------------------- the splice
def splice(embeds: torch.Tensor, ids: torch.Tensor, image_embeds: torch.Tensor, image_id: int) -> torch.Tensor:
    """The input embeddings with row b's K image embeddings, in order, at row b's K `<image>`
    positions; every other position unchanged. embeds (B, T, D): the token embeddings of ids
    (B, T); image_embeds (B, K, D). Returns a new (B, T, D) tensor (gradients reach both)."""
    check_splice(embeds, ids, image_embeds, image_id)
    out = embeds.clone()
    out[ids == image_id] = rearrange(image_embeds, "b k d -> (b k) d").to(embeds.dtype)  # row b's K slots, in order
    return out


def check_splice(embeds: torch.Tensor, ids: torch.Tensor, image_embeds: torch.Tensor, image_id: int) -> None:
    """splice's inputs: float embeds (B, T, D) of int ids (B, T), float image_embeds (B, K, D), and
    exactly K `<image>` ids in every row."""
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
    counts = (ids == image_id).sum(1)  # (B,): <image> tokens per row
    if bool((counts != k).any()):
        row = int((counts != k).nonzero()[0])
        raise ValueError(f"every row needs exactly K={k} <image> tokens (one per image embedding), row {row} has "
                         f"{int(counts[row])}")


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
    of ClipCap's MLP; mapper_dim, mapper_heads: MAPL's mapper. prefix_norm: "free" (the papers':
    whatever norm the mapper outputs) or "word" (each prefix vector rescaled to the mean norm of
    the LLM's token embeddings, so the LLM reads vectors at the scale of the words it knows)."""

    variant: str = "clipcap"
    n_prefix: int = 8
    hidden: int = 128
    mapper_dim: int = 128
    mapper_heads: int = 4
    prefix_norm: str = "free"  # the default keeps every zoo file trained before it loading unchanged

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.prefix_norm not in PREFIX_NORMS:
            raise ValueError(f"prefix_norm must be one of {list(PREFIX_NORMS)}, got {self.prefix_norm!r}")
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
        return rearrange(self.net(features), "b (k d) -> b k d", k=self.n_prefix, d=self.dim)


class LinearMapper(nn.Module):
    """Frozen's map: one linear layer from the image feature (B, E) to (B, K, D)."""

    def __init__(self, embed_dim: int, dim: int, n_prefix: int):
        super().__init__()
        self.n_prefix, self.dim = n_prefix, dim
        self.proj = nn.Linear(embed_dim, n_prefix * dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(features), "b (k d) -> b k d", k=self.n_prefix, d=self.dim)


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
        """images (B, 3, H, W) in [0, 1] -> (B, K, D): the embeddings that take the <image> places
        (with prefix_norm="word", each of norm `word_scale()`)."""
        prefix = self.mapper(self.image_features(images))  # (B, K, D)
        if self.config.prefix_norm == "word":
            prefix = F.normalize(prefix, dim=-1) * self.word_scale()
        return prefix

    def word_scale(self) -> torch.Tensor:
        """The mean L2 norm of the frozen LLM's token embeddings (every row of its table), a
        0-d tensor: the scale prefix_norm="word" keeps the prefix at."""
        with torch.no_grad():
            return self.llm.token_embedding.weight.norm(dim=-1).mean()

    def check_inputs(self, images: torch.Tensor, ids: torch.Tensor) -> None:
        """forward's inputs: an image per row of ids (B, T), T within the language model's context
        (the images themselves are checked by image_features, the <image> tokens by splice)."""
        check_tensor("ids", ids, ndim=2, dtype="int")
        if len(images) != len(ids):
            raise ValueError(f"one image per row of ids: got {len(images)} images and {len(ids)} rows")
        if ids.shape[1] > self.llm.config.max_len:
            raise ValueError(f"ids have {ids.shape[1]} tokens, longer than the language model's context "
                             f"max_len={self.llm.config.max_len}")

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W); ids (B, T) holding K <image> tokens per row -> logits (B, T, V)."""
        self.check_inputs(images, ids)
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
        check_strings("prompts", prompts)
        if len(prompts) != len(images):
            raise ValueError(f"one prompt per image: got {len(images)} images and {len(prompts)} prompts")
        texts = [f"{self._prompt()} {p}".strip() for p in prompts]
        with eval_mode(self):
            return self.llm.complete(texts, max_new_tokens, stop=stop, tokenizer=self.tokenizer,
                                     embed=self._embedder(images), **decoding)

    def caption(self, images: torch.Tensor, max_len: int | None = 32, **decoding) -> list[str]:
        """A caption per image (greedy by default; decoding: num_beams, do_sample, top_p ...), at
        most max_len - 2 words (BLIP's budget: "<bos> words <eos>" in max_len; None: 32)."""
        check_images_to_caption(images)
        max_len = 32 if max_len is None else max_len
        check_int("max_len", max_len, lo=3)
        return self.complete(images, [""] * len(images), max_len - 2, stop=None, **decoding)

    def ask(self, images: torch.Tensor, questions: Sequence[str], describe_first: bool = False,
            max_new_tokens: int = 4) -> list[str]:
        """The answer to each question about its image, up to the first "." (greedy): the prompt
        is "<image>×K question: ... answer:", as the LLM read questions after a caption in chapter
        09. describe_first: the model first captions the image, and the question follows its own
        caption ("<image>×K caption question: ... answer:")."""

        check_strings("questions", questions)
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
    check_batch_keys(batch, ("images", "ids", "loss_mask"), "prefix_batches")
    logits = model(batch["images"], batch["ids"])
    return {"loss": lm_loss(logits, batch["ids"], batch["loss_mask"])}


def prefix_batches(data: dict, n_prefix: int, batch_size: int = 32, seed: int = 0, tokenizer=None):
    """batches(step) -> dict(images, ids, attention_mask, loss_mask): chapter 06's image-caption
    batches (`pair_batches`) with K <image> tokens after <bos>."""

    tok = tokenizer or Tokenizer.from_world()
    pairs = pair_batches(data, batch_size=batch_size, seed=seed, tokenizer=tok)

    def batch(step: int) -> dict:
        b = pairs(step)
        ids, mask, loss_mask = insert_image_tokens(b["ids"], b["attention_mask"], n_prefix, tok.image_id)
        return {"images": b["images"], "ids": ids, "attention_mask": mask, "loss_mask": loss_mask}

    return batch


# ----------------------------------------------------------------------------- a prefix that acts as the caption
def check_no_fact_text(texts: Sequence[str]) -> None:
    """Raise ValueError if any text could state a world fact of chapter 09: a word of a fact
    (`worldtext.fact_words()`: corners, wheel, mixed ...) or any word ShapesWorld's image-text
    generators never emit (so that no fact can hide in words the check does not know). The
    promise that tests/data/test_worldtext.py makes of every image-text generator, asserted on
    the training text of a prefix that is then asked knowledge questions."""

    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    forbidden, vocabulary = fact_words(), set(ShapesWorld.vocabulary())
    for text in texts:
        words = set(split_words(text))
        if words & forbidden:
            raise ValueError(f"a training text holds world-fact words {sorted(words & forbidden)}: {text!r}")
        if not words <= vocabulary:
            raise ValueError(f"a training text holds words no ShapesWorld generator emits "
                             f"{sorted(words - vocabulary)} (a fact could hide in them): {text!r}")


def caption_qa_set(data: dict, seed: int = 0, kinds: Sequence[str] | None = None) -> dict:
    """Visible-answer VQA on a pair set (`minivlm.data.pairs.image_text_pairs`): for each true caption, one of
    ShapesWorld's VQA questions about its image, whose answer the image shows (kinds cycled so
    each has about the same share; a scene that cannot give the turn's kind gives the next).
    Captions that are not true of their image (a noisy set's) are left out.
    Returns dict(images, scenes, image_ids, captions, questions, answers, kinds); its text is
    checked by `check_no_fact_text`."""

    check_pair_set(data)
    kinds = tuple(VQA_KINDS if kinds is None else check_strings("kinds", kinds, nonempty=False))
    if not kinds or any(k not in VQA_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {list(VQA_KINDS)}, got {list(kinds)}")
    world = ShapesWorld(seed=seed)  # its text generator draws the count / exists / relation questions
    out: dict[str, list] = {"image_ids": [], "captions": [], "questions": [], "answers": [], "kinds": []}
    for j, (i, caption) in enumerate(zip(torch.as_tensor(data["image_ids"]).tolist(), data["captions"])):
        scene = data["scenes"][i]
        if caption not in ShapesWorld.true_captions(scene):
            continue
        qa = world.vqa(scene)
        for turn in range(len(kinds)):
            options = [t for t in qa if t[2] == kinds[(j + turn) % len(kinds)]]
            if options:
                break
        if not options:
            continue
        q, a, k = options[int(world.text_rng.integers(len(options)))]
        for key, value in zip(("image_ids", "captions", "questions", "answers", "kinds"), (i, caption, q, a, k)):
            out[key].append(value)
    if not out["captions"]:
        raise ValueError("no caption of the pair set is true of its image (or no question of the kinds fits)")
    check_no_fact_text(out["captions"] + out["questions"] + out["answers"])
    return {"images": data["images"], "scenes": data["scenes"], **out, "image_ids": torch.tensor(out["image_ids"])}


def caption_distill_batches(data: dict, n_prefix: int, batch_size: int = 32, seed: int = 0, tokenizer=None):
    """batches(step) -> the two readings of B visible-answer VQA items (`caption_qa_set`), drawn
    at random (deterministic given seed and step):

        prefix_ids   "<bos> <image>×K question: ... answer: red. <eos>"   what the student reads
        caption_ids  "<bos> a red circle. question: ... answer: red. <eos>"   what the teacher reads

    both right-padded; suffix = "question: ... answer: red. <eos>". prefix_at, caption_at (B, L):
    the positions whose next-token distribution predicts suffix token 0..L-1 in each reading
    (the last prefix or caption token, then every suffix token but the last); suffix_mask (B, L):
    True where the row has that suffix token; answer_mask (B, L): those that predict the answer
    (and its "." and <eos>). The data's text is checked by `check_no_fact_text` first."""

    need = ("images", "image_ids", "captions", "questions", "answers")
    if not isinstance(data, dict) or any(k not in data for k in need):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"data must be a caption_qa_set dict with {list(need)}, got {got}")
    n = len(data["captions"])
    if n == 0 or not len(data["image_ids"]) == len(data["questions"]) == len(data["answers"]) == n:
        raise ValueError(f"data needs one image id, question and answer per caption (and a caption), got "
                         f"{len(data['image_ids'])}, {len(data['questions'])}, {len(data['answers'])} for {n}")
    check_int("n_prefix", n_prefix)
    check_int("batch_size", batch_size)
    check_no_fact_text(list(data["captions"]) + list(data["questions"]) + list(data["answers"]))
    tok = tokenizer or Tokenizer.from_world()
    captions = [tok.encode(c) for c in data["captions"]]
    suffixes = [tok.encode(qa_text(q, a)) + [tok.eos_id] for q, a in zip(data["questions"], data["answers"])]
    asks = [len(tok.encode(qa_prompt(q))) for q in data["questions"]]  # suffix tokens before the answer
    image_ids = torch.as_tensor(data["image_ids"])

    def pad(rows: list[list[int]]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])

    def batch(step: int) -> dict:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        pick = torch.randint(n, (batch_size,), generator=g).tolist()
        suf = [suffixes[j] for j in pick]
        length = max(len(x) for x in suf)
        i = torch.arange(length)  # (L,)
        cap_len = torch.tensor([len(captions[j]) for j in pick])  # (B,)
        lens = torch.tensor([len(x) for x in suf])[:, None]
        suffix_mask = i[None] < lens  # (B, L)
        return {
            "images": data["images"][image_ids[pick]],
            "prefix_ids": pad([[tok.bos_id] + [tok.image_id] * n_prefix + x for x in suf]),
            "caption_ids": pad([[tok.bos_id] + captions[j] + x for j, x in zip(pick, suf)]),
            # suffix token i sits at 1 + K + i (1 + caption length + i); its predictor one earlier
            "prefix_at": torch.where(suffix_mask, n_prefix + i[None], 0),
            "caption_at": torch.where(suffix_mask, cap_len[:, None] + i[None], 0),
            "suffix_mask": suffix_mask,
            "answer_mask": suffix_mask & (i[None] >= torch.tensor([asks[j] for j in pick])[:, None]),
        }

    return batch


def suffix_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_at: torch.Tensor,
              teacher_at: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per suffix position (B, L), 0 where mask is False: the teacher's
    next-token distribution at teacher_at against the student's at student_at. logits (B, T, V)
    and (B, T', V); *_at, mask (B, L)."""
    check_tensor("student_logits", student_logits, ndim=3, dtype="float")
    check_tensor("teacher_logits", teacher_logits, ndim=3, dtype="float")
    if student_logits.shape[0] != teacher_logits.shape[0] or student_logits.shape[2] != teacher_logits.shape[2]:
        raise ValueError(f"student and teacher logits must share B and V, got {tuple(student_logits.shape)} and "
                         f"{tuple(teacher_logits.shape)}")
    if not student_at.shape == teacher_at.shape == mask.shape == (student_logits.shape[0], mask.shape[1]):
        raise ValueError(f"student_at, teacher_at and mask must all be (B={student_logits.shape[0]}, L), got "
                         f"{tuple(student_at.shape)}, {tuple(teacher_at.shape)} and {tuple(mask.shape)}")
    rows = torch.arange(len(mask), device=mask.device)[:, None]  # (B, 1)
    log_s = F.log_softmax(student_logits[rows, student_at].float(), dim=-1)  # (B, L, V)
    log_t = F.log_softmax(teacher_logits[rows, teacher_at].float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, L)
    return kl * mask


def caption_distill_step(model: PrefixVLM, batch: dict) -> dict:
    """Arm (6) of chapter 10, for `minivlm.train.fit`: the mean over every suffix position of
    KL(frozen LLM reading [true caption ; suffix] || the same LLM reading [prefix ; suffix]),
    suffix = [question ; answer] (`caption_distill_batches`). The LLM is the teacher and is not
    trained; the gradient reaches only what the variant trains (the mapper, and Frozen's ViT).
    The prefix learns to make the LLM read on as if it had read the caption, not to write one.
    Logged: answer_kl (the positions that predict the answer)."""
    check_batch_keys(batch, ("images", "prefix_ids", "caption_ids", "prefix_at", "caption_at", "suffix_mask",
                             "answer_mask"), "caption_distill_batches")
    student = model(batch["images"], batch["prefix_ids"])  # (B, Tp, V)
    with torch.no_grad(), eval_mode(model.llm):
        teacher = model.llm(batch["caption_ids"])  # (B, Tc, V)
    kl = suffix_kl(student, teacher, batch["prefix_at"], batch["caption_at"], batch["suffix_mask"])  # (B, L)
    loss = kl.sum() / batch["suffix_mask"].sum().clamp(min=1)  # no suffix position: 0 (minivlm.losses' rule)
    answer = batch["answer_mask"]
    return {"loss": loss, "answer_kl": (kl.detach() * answer).sum() / answer.sum().clamp(min=1)}


# ----------------------------------------------------------------------------- evaluation
def answer_figures(predictions: list[str], answers: Sequence[str], kinds: Sequence[str]) -> dict:
    """Exact-answer accuracy of predictions: dict(predictions, hits, accuracy, per_kind), each
    accuracy an Estimate with its 95 % interval. One answer and one kind per prediction."""
    check_strings("predictions", predictions)
    check_strings("answers", answers)
    check_strings("kinds", kinds)
    check_same_length(predictions=predictions, answers=answers, kinds=kinds)
    hits = answer_hits(list(predictions), list(answers))
    per_kind = {k: interval([h for h, kk in zip(hits, kinds) if kk == k]) for k in sorted(set(kinds))}
    return {"predictions": predictions, "hits": hits, "accuracy": interval(hits), "per_kind": per_kind}


def vqa_figures(model: PrefixVLM, data: dict, describe_first: bool = False) -> dict:
    """VQA by prompting on a ShapesBench `vqa` set: dict(predictions, hits, accuracy, per_kind)."""
    return answer_figures(model.ask(data["images"], data["questions"], describe_first=describe_first),
                           data["answers"], data["kinds"])


def llm_alone_figures(model: PrefixVLM, data: dict, max_new_tokens: int = 4) -> dict:
    """The baseline of questions about images: the same questions to the frozen LLM alone, with
    no image. dict(predictions, hits, accuracy, per_kind)."""

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


def _check_knowledge_set(data) -> None:
    need = ("images", "questions", "answers", "kinds", "scenes")
    if not isinstance(data, dict) or any(k not in data for k in need):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"data must be a ShapesBench knowledge set with {list(need)}, got {got}")
    n = len(data["questions"])
    if n == 0 or any(len(data[k]) != n for k in need):
        raise ValueError(f"a knowledge set needs one image, answer, kind and scene per question (and a question), "
                         f"got {[len(data[k]) for k in need]} for {list(need)}")


def knowledge_decomposition(model: PrefixVLM, data: dict, max_new_tokens: int | None = None) -> dict:
    """Knowledge questions (a ShapesBench `knowledge` set) five ways, each dict(predictions, hits,
    accuracy, per_kind) with 95 % intervals:

        llm_alone       the question to the frozen LLM, no image (the baseline)
        true_caption    the scene's true caption, then the question, in text (the ceiling: what
                        the LLM does with a perfect description); item i takes paraphrase i mod 6
        own_caption     the model's own caption, then the question, in text (prefix dropped)
        describe_first  the prefix, the model's own caption, then the question
        direct          the prefix, then the question

    own_caption and describe_first also carry "captions" (the model's, greedy). Which prefix
    "direct" reads depends on the model passed: caption-trained, or distilled to act as the
    caption (`caption_distill_step`)."""

    _check_knowledge_set(data)
    n = max_new_tokens if max_new_tokens is not None else max(len(a.split()) for a in data["answers"]) + 1
    check_int("max_new_tokens", n)
    answers, kinds = data["answers"], data["kinds"]
    prompts = [qa_prompt(q) for q in data["questions"]]
    true = [ShapesWorld.captions(s)[i % len(CAPTION_TEMPLATES)] for i, s in enumerate(data["scenes"])]
    own = model.caption(data["images"])

    def in_text(texts: list[str]) -> dict:
        with eval_mode(model):
            return answer_figures(model.llm.complete(texts, n, tokenizer=model.tokenizer), answers, kinds)

    out = {
        "llm_alone": in_text(prompts),
        "true_caption": in_text([f"{c} {p}" for c, p in zip(true, prompts)]),
        "own_caption": {**in_text([f"{c} {p}" for c, p in zip(own, prompts)]), "captions": own},
        "describe_first": {**answer_figures(model.complete(data["images"], [f"{c} {p}" for c, p in zip(own, prompts)],
                                                           n, stop="."), answers, kinds), "captions": own},
        "direct": answer_figures(model.complete(data["images"], prompts, n, stop="."), answers, kinds),
    }
    return out


def perception_figures(model: PrefixVLM, data: dict, decomposition: dict) -> dict:
    """Knowledge accuracy where the model sees the asked object right. Each knowledge item's
    matching visual question (`bench.knowledge_perception`: "what shape is the red object?" for
    "how many corners does the red object have?") is asked of the same model, directly (prefix,
    then the question). Returns dict(
        perception       figures of those visual questions (+ "questions"),
        n_right          how many the model answers right,
        given_perception {way: accuracy on that subset, an Estimate} for every way of
                         `decomposition` (None for each where the subset is empty),
        direct_share_of_ceiling  direct / true_caption accuracy on that subset, with a bootstrap
                         interval over the subset's items (None without both ways or subset))."""

    _check_knowledge_set(data)
    if not isinstance(decomposition, dict) or not decomposition:
        raise ValueError("decomposition must be the dict knowledge_decomposition returns")
    n = len(data["questions"])
    for way, figures in decomposition.items():
        if len(figures.get("hits", ())) != n:
            raise ValueError(f"decomposition[{way!r}] must have one hit per knowledge item ({n}), got "
                             f"{len(figures.get('hits', ()))}")
    visual = knowledge_perception(data["scenes"], data["questions"], data["kinds"])
    perception = {**answer_figures(model.ask(data["images"], visual["questions"]), visual["answers"], visual["kinds"]),
                  "questions": visual["questions"]}
    right = np.array(perception["hits"], dtype=bool)
    given = {way: interval(np.array(f["hits"], dtype=float)[right]) if right.any() else None
             for way, f in decomposition.items()}
    share = None
    if right.any() and {"direct", "true_caption"} <= set(decomposition):
        direct = np.array(decomposition["direct"]["hits"], dtype=float)[right]
        ceiling = np.array(decomposition["true_caption"]["hits"], dtype=float)[right]
        if ceiling.sum() > 0:  # resample items (their indices), keeping each item's two answers paired
            share = bootstrap(np.arange(len(direct)), lambda i: direct[i.astype(int)].sum()
                              / max(ceiling[i.astype(int)].sum(), 1.0))
    return {"perception": perception, "n_right": int(right.sum()), "given_perception": given,
            "direct_share_of_ceiling": share}


def prefix_norms(model: PrefixVLM, images: torch.Tensor) -> dict:
    """The L2 norms of the prefix vectors of `images` (every one of the B·K) next to those of the
    frozen LLM's token embeddings (every row of its table): dict(prefix=..., words=...), each
    dict(mean, min, max, n). A prefix far off the words' scale is read as no word the LLM knows."""
    def summary(norms: torch.Tensor) -> dict:
        return {"mean": float(norms.mean()), "min": float(norms.min()), "max": float(norms.max()),
                "n": int(norms.numel())}

    with torch.no_grad(), eval_mode(model):
        prefix = model.image_prefix(images)  # (B, K, D)
    return {"prefix": summary(prefix.norm(dim=-1)), "words": summary(model.llm.token_embedding.weight.norm(dim=-1))}


PREFIX_CONFIG = dict(n_prefix=8, hidden=128, mapper_dim=128, mapper_heads=4)
