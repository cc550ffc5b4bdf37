"""Interleaved image–text documents: what Flamingo is trained on and asked with (chapter 11).

A document is text with `<image>` marks, each standing for one image, in order:

    captions   "<image> a red circle. <image> a small blue star above a green square."
    vqa        "<image> question: what colour is the star? answer: blue. <image> question: ..."
    attribute  an episode with a hidden rule, read off images: "<image> so: red ; <image> so: blue ;"
               (each image one object; the rule, colour / shape / size, is never named)
    binding    Frozen's and Flamingo's fast binding: "<image> this is a <extra_7>. <image> this is
               a <extra_2>. <image> this is a <extra_7>." — two nonce names bound to two shapes
               (or colours) only inside the episode

The `llm` of chapter 09 already learned episodes like these in text (`minivlm.data.incontext`):
here the content of each unit is an image, so the model must see it to answer.

Held out for the k-shot test (`kshot_documents`), never in a training document:

- nonce words: `<extra_i>` for i in `HELDOUT_NONCE` (training binds only the others);
- answer formats: attribute episodes in `incontext.HELDOUT_TEMPLATES` (cue words and separators
  no training template uses) and fast binding phrased "that one is called a <extra_i>";
- images: fresh scenes of ShapesWorld's test split.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from minivlm.data.incontext import HELDOUT_TEMPLATES, Template, random_template
from minivlm.data.shapesworld import COLORS, SEEN_COMPOSITIONS, SHAPES, Scene, ShapesWorld
from minivlm.data.tokenizer import NUM_EXTRA, Tokenizer
from minivlm.data.worldtext import qa_text
from minivlm.utils import check_int

KINDS: tuple[str, ...] = ("captions", "vqa", "attribute", "binding")
RULES: tuple[str, ...] = ("colour", "shape", "size")  # what an attribute episode's answers are
BIND_BY: tuple[str, ...] = ("shape", "colour")  # what a nonce name stands for in a binding episode
HELDOUT_NONCE: tuple[int, ...] = tuple(range(NUM_EXTRA - 16, NUM_EXTRA))  # never bound in training
TRAIN_NONCE: tuple[int, ...] = tuple(i for i in range(NUM_EXTRA) if i not in HELDOUT_NONCE)
BINDING_PHRASES = {"train": ("this is a", "."), "heldout": ("that one is called a", ".")}
KSHOT_TASKS: tuple[str, ...] = ("binding", "attribute")
IMAGE = "<image>"


@dataclass
class Document:
    """One interleaved document: `text` with one `<image>` per scene of `scenes`, in order.
    For a k-shot query, `answer` is what follows the text (else None)."""

    text: str
    scenes: list[Scene]
    kind: str
    answer: str | None = None
    k: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.text.split().count(IMAGE) != len(self.scenes):
            raise ValueError(f"a document needs one {IMAGE} per scene: {self.text.split().count(IMAGE)} in the text, "
                             f"{len(self.scenes)} scenes")


def _single(world: ShapesWorld, rng: np.random.Generator, compositions, **fixed) -> Scene:
    """A one-object scene of a composition from `compositions` whose colour / shape match `fixed`."""
    allowed = [(c, s) for c, s in compositions
               if fixed.get("color", c) == c and fixed.get("shape", s) == s]
    pick = allowed[int(rng.integers(len(allowed)))]
    return world.sample(1, n_objects=1, compositions=[pick])[0]


def _answer(rule: str, scene: Scene) -> str:
    o = scene.objects[0]
    return {"colour": o.color, "shape": o.shape, "size": o.size}[rule]


class InterleavedDocs:
    """Training documents, generated: `document()` draws a kind (in proportion `weights`) with
    1-`max_images` images (binding episodes 3-`binding_images`). Deterministic in `seed`. Images
    show seen compositions only."""

    def __init__(self, seed: int = 0, weights: dict[str, float] | None = None, max_images: int = 4,
                 image_size: int = 32, binding_images: int = 8):
        weights = {k: 1.0 for k in KINDS} if weights is None else dict(weights)
        if not weights or any(k not in KINDS for k in weights) or any(
                not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in weights.values()) \
                or sum(weights.values()) <= 0:
            raise ValueError(f"weights must map kinds {KINDS} to non-negative numbers with a positive sum, got {weights}")
        check_int("max_images", max_images, lo=2)
        check_int("binding_images", binding_images, lo=3)
        self.world = ShapesWorld(seed=seed, image_size=image_size)
        self.rng = np.random.default_rng([seed, 11])
        self.kinds = list(weights)
        p = np.array([weights[k] for k in self.kinds], dtype=float)
        self.p, self.max_images, self.binding_images = p / p.sum(), max_images, binding_images

    def document(self) -> Document:
        kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.p))]
        if kind == "binding":  # longer: a name is predictable only from its second image on
            n = int(self.rng.integers(3, self.binding_images + 1))
        else:
            n = int(self.rng.integers(1 if kind in ("captions", "vqa") else 2, self.max_images + 1))
        return getattr(self, kind)(n)

    def documents(self, n: int) -> list[Document]:
        check_int("n", n)
        return [self.document() for _ in range(n)]

    def captions(self, n: int) -> Document:
        scenes = self.world.sample(n)
        return Document(" ".join(f"{IMAGE} {self.world.caption(s)}" for s in scenes), scenes, "captions")

    def vqa(self, n: int) -> Document:
        scenes, units = self.world.sample(n), []
        for s in scenes:
            qa = self.world.vqa(s)
            q, a, _ = qa[int(self.rng.integers(len(qa)))]
            units.append(f"{IMAGE} {qa_text(q, a)}")
        return Document(" ".join(units), scenes, "vqa")

    def attribute(self, n: int, template: Template | None = None) -> Document:
        rule = RULES[int(self.rng.integers(len(RULES)))]
        t = template or random_template(self.rng)
        scenes = [_single(self.world, self.rng, SEEN_COMPOSITIONS) for _ in range(n)]
        return Document(" ".join(t.unit(IMAGE, _answer(rule, s)) for s in scenes), scenes, "attribute",
                        meta={"rule": rule})

    def binding(self, n: int) -> Document:
        """Two nonce names (from TRAIN_NONCE) bound to two shapes (or colours); n images of
        those, each followed by its name. The first mention of each name cannot be predicted;
        every later one can, from the episode alone."""
        doc, _ = _binding_episode(self.world, self.rng, n, TRAIN_NONCE, SEEN_COMPOSITIONS, "train")
        return doc


def _binding_episode(world, rng, n: int, nonce, compositions, phrasing: str, query: bool = False,
                     shots: int | None = None):
    """n images, two ways (names bound by shape or colour), each image named; with query=True the
    last unit stops before its name. shots: exactly that many images of each way first, in random
    order, then the query (n = 2·shots + 1). Returns (Document, the last unit's name)."""
    by = BIND_BY[int(rng.integers(len(BIND_BY)))]
    values = SHAPES if by == "shape" else tuple(COLORS)
    pair = [values[i] for i in rng.choice(len(values), size=2, replace=False)]
    names = [f"<extra_{i}>" for i in rng.choice(nonce, size=2, replace=False)]
    if shots is None:
        ways = [int(w) for w in rng.integers(2, size=n)]
    else:
        ways = [int(w) for w in rng.permutation([0, 1] * shots)] + [int(rng.integers(2))]
    before, sep = BINDING_PHRASES[phrasing]
    scenes = [_single(world, rng, compositions, **{("shape" if by == "shape" else "color"): pair[w]}) for w in ways]
    units = [f"{IMAGE} {before} {names[w]}{sep}" for w in ways]
    if query:
        units[-1] = f"{IMAGE} {before}"
    return Document(" ".join(units), scenes, "binding", meta={"by": by, "names": names, "values": pair}), names[ways[-1]]


def kshot_documents(task: str, k: int, n: int, seed: int = 0, formats: str = "heldout") -> list[Document]:
    """n k-shot queries of `task`, in the held-out formats, on fresh test-split images:

    binding    2 ways × k shots (each name shown with k images, in random order), then a query
               image of one way: its name is the
               answer. k = 0: the query alone, whose name no model can know (0 % by construction).
    attribute  k images with their answers under one rule (cycling colour / shape / size over
               the items), then a query image; k = 0 shows no demonstration, so the rule is a guess.

    formats: "heldout" (binding phrased "that one is called a", attribute templates from
    `incontext.HELDOUT_TEMPLATES`) or "train" (the training phrasing and training templates; the
    nonce words and images are held out either way).
    """
    if task not in KSHOT_TASKS:
        raise ValueError(f"task must be one of {KSHOT_TASKS}, got {task!r}")
    check_int("k", k, lo=0)
    check_int("n", n)
    if formats not in ("heldout", "train"):
        raise ValueError(f"formats must be 'heldout' or 'train', got {formats!r}")
    world = ShapesWorld(seed=seed, split="test")
    rng = np.random.default_rng([seed, k, KSHOT_TASKS.index(task), 7])
    out = []
    for i in range(n):
        if task == "binding":
            doc, name = _binding_episode(world, rng, 2 * k + 1, HELDOUT_NONCE, SEEN_COMPOSITIONS, formats,
                                         query=True, shots=k)
            doc.answer, doc.k = name, k
        else:
            rule = RULES[i % len(RULES)]
            t = HELDOUT_TEMPLATES[int(rng.integers(len(HELDOUT_TEMPLATES)))] if formats == "heldout" \
                else random_template(rng)
            scenes = [_single(world, rng, SEEN_COMPOSITIONS) for _ in range(k + 1)]
            units = [t.unit(IMAGE, _answer(rule, s)) for s in scenes[:-1]] + [t.unit(IMAGE)]
            doc = Document(" ".join(units), scenes, "attribute", answer=_answer(rule, scenes[-1]), k=k,
                           meta={"rule": rule})
        out.append(doc)
    return out


def text_only(doc: Document) -> str:
    """The document with its images removed: the text-only control of the k-shot test."""
    return " ".join(w for w in doc.text.split() if w != IMAGE)


def collate(docs: list[Document], tokenizer: Tokenizer | None = None, max_len: int = 256, world: ShapesWorld | None = None,
            add_eos: bool = True) -> dict:
    """Documents -> a batch for `minivlm.models.flamingo`:

        images     (B, M, 3, H, W) in [0, 1], M = the most images in one document (zeros past a row's own)
        n_images   (B,) long: each row's number of images
        ids        (B, T) "<bos> text [<eos>]", right-padded; attention_mask (B, T)
        loss_mask  (B, T): the targets: every real token but <bos>, <image> and padding

    Raises ValueError if a document does not fit max_len (an image whose <image> was cut off
    would leave the model an image with no place in the text)."""
    if not docs or not all(isinstance(d, Document) for d in docs):
        raise TypeError("docs must be a non-empty list of Document")
    tok = tokenizer or Tokenizer.from_world()
    world = world or ShapesWorld(image_size=32)
    ids, mask = tok([d.text for d in docs], max_len, add_bos=True, add_eos=add_eos, truncation=False)
    if ids.shape[1] > max_len:
        raise ValueError(f"a document has {ids.shape[1]} tokens, longer than max_len={max_len}: generate shorter ones")
    m = max(len(d.scenes) for d in docs)
    size = world.image_size
    images = torch.zeros(len(docs), max(m, 1), 3, size, size)
    for b, d in enumerate(docs):
        if d.scenes:
            images[b, :len(d.scenes)] = world.render(d.scenes)
    loss_mask = mask.clone()
    loss_mask[:, 0] = False
    loss_mask &= ids != tok.image_id
    return {"images": images, "n_images": torch.tensor([len(d.scenes) for d in docs]), "ids": ids,
            "attention_mask": mask, "loss_mask": loss_mask}


def interleaved_batches(batch_size: int = 32, seed: int = 0, max_len: int = 256, tokenizer: Tokenizer | None = None,
                        **docs_kwargs):
    """batches(step) -> collate(...) of batch_size training documents, deterministic in (seed, step)."""
    check_int("batch_size", batch_size)
    tok = tokenizer or Tokenizer.from_world()
    InterleavedDocs(seed, **docs_kwargs)  # check the arguments now

    def batches(step: int) -> dict:
        gen = InterleavedDocs(seed * 1_000_003 + step, **docs_kwargs)
        return collate(gen.documents(batch_size), tok, max_len, gen.world)

    return batches
