"""ShapesBench: fixed evaluation sets on ShapesWorld (chapter 00; used from chapter 02 on).

Every chapter evaluates on the same data: each set is drawn from the "test" or "heldout"
split with a fixed seed, and every call builds a fresh world, so `bench.retrieval()` returns
the same scenes whenever and however often it is called. The metrics live in `minivlm.eval`.
"""
from __future__ import annotations

import numpy as np
import torch

from minivlm.data.shapesworld import (
    ALL_COMPOSITIONS,
    HELDOUT_COMPOSITIONS,
    RELATION_MARGIN,
    SEEN_COMPOSITIONS,
    SIZE_RADII,
    SIZES,
    VQA_KINDS,
    VQA_TEMPLATES,
    Obj,
    Scene,
    ShapesWorld,
)
from minivlm.data.tokenizer import split_words
from minivlm.data.worldtext import knowledge_sample

# Each task gets its own stream (seed + offset), so adding a task never changes another's data.
_OFFSETS = {"classification": 0, "retrieval": 1, "swap": 2, "vqa": 3, "itm": 4, "hard_itm": 5, "captioning": 6,
            "knowledge": 7}


# What names the object a knowledge question asks about: "the red object" (its colour) for
# corners and sides, "the star" (its shape) for mix_parts.
KNOWLEDGE_NAMED_BY = {"corners": "color", "sides": "color", "mix_parts": "shape"}


def knowledge_perception(scenes, questions, kinds) -> dict:
    """The visual question that each knowledge question rests on (chapter 10's "knowledge
    conditioned on perception"), as ShapesWorld's VQA asks it: "how many corners does the red
    object have?" needs "what shape is the red object?" (answer: that object's shape);
    "what is mixed to make the colour of the star?" needs "what color is the star?".

    The object is found in the scene, not parsed from an answer: the one object whose colour
    (corners, sides) or shape (mix_parts) is a word of the question, and that colour or shape
    must be unique in the scene (as `knowledge_questions` asks only about such objects).
    Returns dict(questions, answers, kinds ("shape" or "color"))."""

    if not len(scenes) == len(questions) == len(kinds):
        raise ValueError(f"scenes, questions and kinds must have the same length, got {len(scenes)}, "
                         f"{len(questions)} and {len(kinds)}")
    out: dict[str, list[str]] = {"questions": [], "answers": [], "kinds": []}
    for scene, question, kind in zip(scenes, questions, kinds):
        if kind not in KNOWLEDGE_NAMED_BY:
            raise ValueError(f"no visual question is known for knowledge kind {kind!r}; expected one of "
                             f"{sorted(KNOWLEDGE_NAMED_BY)}")
        attr = KNOWLEDGE_NAMED_BY[kind]
        words = set(split_words(question))
        named = [o for o in scene.objects if getattr(o, attr) in words]
        values = [getattr(o, attr) for o in scene.objects]
        if len(named) != 1 or values.count(getattr(named[0], attr)) != 1:
            raise ValueError(f"{question!r} must name exactly one object of the scene by its {attr}, unique in the "
                             f"scene; it names {len(named)} of {[o.name for o in scene.objects]}")
        (o,) = named
        if attr == "color":
            out["questions"].append(VQA_TEMPLATES["shape"].format(color=o.color))
            out["answers"].append(o.shape)
            out["kinds"].append("shape")
        else:
            out["questions"].append(VQA_TEMPLATES["color"].format(shape=o.shape))
            out["answers"].append(o.color)
            out["kinds"].append("color")
    return out


def _check_count(name: str, n) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return int(n)


class ShapesBench:
    """bench = ShapesBench(image_size=32, seed=1234); bench.classification("heldout") ..."""

    def __init__(self, image_size: int = 32, seed: int = 1234):
        ShapesWorld._check_image_size(image_size)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.image_size, self.seed = int(image_size), int(seed)

    def __repr__(self) -> str:
        return f"ShapesBench(image_size={self.image_size}, seed={self.seed})"

    def _world(self, task: str, split: str = "test") -> ShapesWorld:
        return ShapesWorld(seed=self.seed + 1000 * _OFFSETS[task], image_size=self.image_size, split=split)

    # ------------------------------------------------------------------ tasks
    def classification(self, split: str = "seen", n_per_class: int = 10) -> dict:
        """Single-object images for zero-shot classification.

        split="seen": every colour-shape class that training shows; "heldout": the held-out
        classes only. Either way `labels` index into `class_names`, which lists *all* 48
        colour-shape classes, so a classifier always picks among every class (a model that
        never predicts an unseen pair scores 0 on "heldout").
        Returns dict(images (N, 3, H, W), labels (N,) long, class_names ["red circle", ...],
        classes [(colour, shape), ...]); images are grouped by class, n_per_class each.
        """
        if split not in ("seen", "heldout"):
            raise ValueError(f"split must be 'seen' or 'heldout', got {split!r}")
        n_per_class = _check_count("n_per_class", n_per_class)
        world = self._world("classification", "test" if split == "seen" else "heldout")
        targets = SEEN_COMPOSITIONS if split == "seen" else HELDOUT_COMPOSITIONS
        scenes, labels = [], []
        for pair in targets:
            scenes += world.sample(n_per_class, n_objects=1, compositions=[pair])
            labels += [ALL_COMPOSITIONS.index(pair)] * n_per_class
        return {
            "images": world.render(scenes),
            "labels": torch.tensor(labels, dtype=torch.long),
            "class_names": [f"{c} {s}" for c, s in ALL_COMPOSITIONS],
            "classes": list(ALL_COMPOSITIONS),
            "scenes": scenes,
        }

    def retrieval(self, n: int = 256) -> dict:
        """n test scenes with one caption each (random paraphrase); captions are all distinct,
        so that caption i is the *only* correct match of image i.
        Returns dict(images (N, 3, H, W), captions list[str], scenes)."""
        n = _check_count("n", n)
        world = self._world("retrieval")
        scenes, captions, seen = [], [], set()
        while len(scenes) < n:
            scene = world.sample(1)[0]
            cap = world.caption(scene)
            if cap in seen:
                continue
            seen.add(cap)
            scenes.append(scene)
            captions.append(cap)
        return {"images": world.render(scenes), "captions": captions, "scenes": scenes}

    def swap(self, n: int = 128) -> dict:
        """Winoground-style relation swaps. Pair i: image 0 shows A <rel> B ("a red circle to the
        left of a blue square"), image 1 the same two objects with their positions swapped;
        caption 0 describes image 0, caption 1 ("a blue square to the left of a red circle")
        describes image 1. Same words, different meaning: bag-of-words models score at chance.
        Returns dict(images (N, 2, 3, H, W), captions list[(str, str)], scenes list[(Scene, Scene)])."""
        n = _check_count("n", n)
        world = self._world("swap")
        rng = world.rng
        images, captions, pairs = [], [], []
        for _ in range(n):
            ia, ib = rng.choice(len(SEEN_COMPOSITIONS), size=2, replace=False)
            (ca, sa), (cb, sb) = SEEN_COMPOSITIONS[ia], SEEN_COMPOSITIONS[ib]
            horizontal = bool(rng.integers(2))
            while True:
                size_a, size_b = SIZES[int(rng.integers(2))], SIZES[int(rng.integers(2))]
                ra, rb = float(rng.uniform(*SIZE_RADII[size_a])), float(rng.uniform(*SIZE_RADII[size_b]))
                rmax = max(ra, rb)
                # Both positions must fit either object, so that the swap keeps both inside.
                p1 = rng.uniform(rmax + 0.02, 1 - rmax - 0.02, size=2)
                p2 = rng.uniform(rmax + 0.02, 1 - rmax - 0.02, size=2)
                axis = 0 if horizontal else 1
                if p2[axis] - p1[axis] <= max(RELATION_MARGIN, ra + rb + 0.04):
                    continue  # p1 must be clearly left of (above) p2, the boxes apart on that axis
                da, db = float(rng.uniform()), float(rng.uniform())
                s0 = Scene((Obj(sa, ca, size_a, *map(float, p1), ra, da), Obj(sb, cb, size_b, *map(float, p2), rb, db)))
                s1 = Scene((Obj(sa, ca, size_a, *map(float, p2), ra, da), Obj(sb, cb, size_b, *map(float, p1), rb, db)))
                break
            rel = "left of" if horizontal else "above"
            captions.append((world.describe_relation(s0, 0, rel, 1), world.describe_relation(s1, 1, rel, 0)))
            pairs.append((s0, s1))
        flat = [s for pair in pairs for s in pair]
        images = world.render(flat).view(n, 2, 3, self.image_size, self.image_size)  # (N, 2, 3, H, W)
        return {"images": images, "captions": captions, "scenes": pairs}

    def vqa(self, n: int = 512, kinds: tuple[str, ...] = VQA_KINDS) -> dict:
        """n questions, cycling through `kinds` so every kind has the same share; one scene per
        question (a random question of that kind among those the scene supports).
        Returns dict(images (N, 3, H, W), questions, answers, kinds, scenes)."""
        n = _check_count("n", n)
        world = self._world("vqa")
        out = world.vqa_sample(n, kinds)
        return {"images": world.render(out["scenes"]), **out}

    def knowledge(self, n: int = 512) -> dict:
        """n questions about test scenes whose answer needs a world fact of chapter 09 ("how many
        corners does the red object have?": the image says which shape is red, the facts say how
        many corners it has), cycling through the kinds corners, sides and mix_parts; one scene
        per question. Returns dict(images (N, 3, H, W), questions, answers, kinds, scenes)."""

        n = _check_count("n", n)
        world = self._world("knowledge")
        out = knowledge_sample(world, n)
        return {"images": world.render(out["scenes"]), **out}

    def itm(self, n: int = 512) -> dict:
        """Image-text matching: n test scenes, each with one caption (a paraphrase or, for a third
        of the scenes with two or more objects, a true spatial relation); half of them, chosen at
        random, get instead the caption of another scene with a different set of objects.
        Returns dict(images (N, 3, H, W), captions, labels (N,) long (1 = match), scenes)."""
        n = _check_count("n", n)
        world = self._world("itm")
        rng = world.text_rng
        scenes = world.sample(n)
        captions, labels = [], []
        for scene in scenes:
            if rng.uniform() < 0.5:
                truths = world.true_captions(scene)
                while True:  # another scene's caption, with other objects, that is not true here by chance
                    other = world.sample(1)[0]
                    caption = world.mixed_caption(other, 1 / 3)
                    if sorted(other.names) != sorted(scene.names) and caption not in truths:
                        break
                label = 0
            else:
                caption, label = world.mixed_caption(scene, 1 / 3), 1
            captions.append(caption)
            labels.append(label)
        return {"images": world.render(scenes), "captions": captions, "labels": torch.tensor(labels),
                "scenes": scenes}

    def hard_itm(self, n: int = 500) -> dict:
        """Image-text matching with *hard* negatives (chapter 04): n test scenes, each with a true
        caption and a negative that differs from it by one fact, from the scene graph (see
        `ShapesWorld.hard_negative`): a colour, a shape, a size, or a swapped relation, the four
        kinds in equal share (cycled). A bag-of-words model cannot tell a relation swap apart.
        Returns dict(images (N, 3, H, W), captions [(true, negative)], kinds, scenes)."""
        n = _check_count("n", n)
        world = self._world("hard_itm")
        kinds = ShapesWorld.HARD_NEGATIVE_KINDS
        scenes, captions, out_kinds = [], [], []
        for i in range(n):
            kind = kinds[i % len(kinds)]
            while True:
                scene = world.sample(1, n_objects=(2, 4) if kind == "relation" else None)[0]
                pair = world.hard_negative(scene, kind)
                if pair is not None:
                    break
            scenes.append(scene)
            captions.append(pair)
            out_kinds.append(kind)
        return {"images": world.render(scenes), "captions": captions, "kinds": out_kinds, "scenes": scenes}

    def captioning(self, n: int = 256) -> dict:
        """n test scenes to caption (chapter 06). The references of each image are all six
        paraphrases of its caption, so a caption is scored against every way the world says it.
        Returns dict(images (N, 3, H, W), references list[list[str]], scenes)."""
        n = _check_count("n", n)
        world = self._world("captioning")
        scenes = world.sample(n)
        return {"images": world.render(scenes), "references": [world.captions(s) for s in scenes], "scenes": scenes}
