"""ShapesWorld: the one synthetic world every chapter trains on (chapter 00).

A scene is a *scene graph*: 1-4 objects, each with a shape, a colour, a size, a centre, a
radius and a depth. Everything else is derived from it, so later chapters can add tasks and
modalities without changing the world:

- images: `render` draws the scenes with signed-distance maths in torch, vectorised over the
  batch (anti-aliased edges, plain dark background);
- text: captions with paraphrases, relational captions, web-like noisy captions, VQA;
- boxes (`Obj.box`), relations (`Scene.relations`), depth (`Obj.depth`) for grounding, depth
  maps, point clouds, audio and video in later chapters.

Splits: "train", "val" and "test" draw from disjoint random streams and use only *seen*
colour-shape compositions; "heldout" scenes each contain at least one composition from
`HELDOUT_COMPOSITIONS` (e.g. a purple triangle), which the train split never shows, neither
in its images nor in its text, to measure compositional zero-shot generalisation (chapter 02).

Coordinates are fractions of the canvas: x grows to the right, y grows *downwards* (image
convention), so "above" means a smaller y.
"""
from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from minivlm.data.tokenizer import split_words

# ----------------------------------------------------------------------------- the world's atoms
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "diamond": "diamonds", "cross": "crosses", "star": "stars",
}
# Saturated colours, far apart in RGB, so that even a 32x32 image separates them; all bright
# enough to stand out from the dark background.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.20),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.30, 1.00),
    "purple": (0.60, 0.20, 0.85),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND: tuple[float, float, float] = (0.08, 0.08, 0.10)
# Radius = half the side of the object's bounding box, as a fraction of the canvas. At 32x32
# a small object is 6-8 pixels wide, a large one 10-13: big enough to tell a star from a cross.
SIZES: tuple[str, ...] = ("small", "large")
SIZE_RADII: dict[str, tuple[float, float]] = {"small": (0.10, 0.13), "large": (0.16, 0.20)}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# How the relations read in a sentence ("a red circle to the left of a blue square").
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below",
}
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# 5 of the 48 colour-shape pairs (about 10 %): each uses a different colour and a different
# shape, so every colour and every shape still appears in training, just never together.
HELDOUT_COMPOSITIONS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("red", "cross"),
    ("green", "star"),
    ("blue", "diamond"),
    ("yellow", "square"),
)
ALL_COMPOSITIONS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_COMPOSITIONS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_COMPOSITIONS if p not in HELDOUT_COMPOSITIONS)
SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")
MAX_OBJECTS = 4
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
VQA_KINDS: tuple[str, ...] = ("color", "shape", "count", "exists", "relation", "position")

RELATION_MARGIN = 0.1  # centres closer than this along an axis: no relation on that axis
POSITION_MARGIN = 0.1  # |x - 0.5| or |y - 0.5| below this: no left/right (top/bottom) question
_GAP = 0.04  # minimum empty space between two objects' boxes (> 1 pixel at 32x32)
_EDGE = 0.02  # minimum empty space between a box and the canvas border


# Rendering runs on one CPU thread: each op touches a few hundred thousand numbers at most, so
# splitting it across threads saves little, and on a busy 2-core machine (tests or notebooks
# running side by side) waiting for a second thread made it 10-25x slower in our measurements.
RENDER_THREADS = 1


@contextmanager
def _threads(n: int | None):
    """Temporarily run torch CPU ops on n threads (None: leave the setting alone)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_composition(pair) -> tuple[str, str]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"a composition must be a (colour, shape) pair, got {pair!r}")
    c, s = pair
    if c not in COLORS:
        raise ValueError(f"colour must be one of {list(COLORS)}, got {c!r}")
    if s not in SHAPES:
        raise ValueError(f"shape must be one of {list(SHAPES)}, got {s!r}")
    return (c, s)


# ----------------------------------------------------------------------------- the scene graph
@dataclass(frozen=True)
class Obj:
    """One object. x, y: centre; radius: half the side of its (square) bounding box; all as
    fractions of the canvas. depth in [0, 1]: distance from the camera (0 = nearest)."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    radius: float
    depth: float = 0.5

    def __post_init__(self):
        _check_composition((self.color, self.shape))
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {list(SIZES)}, got {self.size!r}")
        for name, lo, hi in (("x", 0.0, 1.0), ("y", 0.0, 1.0), ("depth", 0.0, 1.0), ("radius", 1e-6, 0.5)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): every shape is drawn to touch all four sides of this box exactly."""
        r = self.radius
        return (max(0.0, self.x - r), max(0.0, self.y - r), min(1.0, self.x + r), min(1.0, self.y + r))

    @property
    def name(self) -> str:
        """"red circle": unique inside a scene (a scene never repeats a colour-shape pair)."""
        return f"{self.color} {self.shape}"

    @property
    def composition(self) -> tuple[str, str]:
        return (self.color, self.shape)


@dataclass(frozen=True)
class Scene:
    """A scene graph: a tuple of objects with distinct (colour, shape) pairs."""

    objects: tuple[Obj, ...]

    def __post_init__(self):
        if not isinstance(self.objects, tuple) or not all(isinstance(o, Obj) for o in self.objects):
            raise TypeError("Scene.objects must be a tuple of Obj")

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def find(self, color: str, shape: str) -> int | None:
        """Index of the object with this colour and shape, or None."""
        for i, o in enumerate(self.objects):
            if o.color == color and o.shape == shape:
                return i
        return None

    def relations(self) -> list[tuple[int, str, int]]:
        """All (i, relation, j) that hold unambiguously: centres at least RELATION_MARGIN apart
        along that axis (y grows downwards, so "above" means a smaller y)."""
        out = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i == j:
                    continue
                if b.x - a.x > RELATION_MARGIN:
                    out.append((i, "left of", j))
                if a.x - b.x > RELATION_MARGIN:
                    out.append((i, "right of", j))
                if b.y - a.y > RELATION_MARGIN:
                    out.append((i, "above", j))
                if a.y - b.y > RELATION_MARGIN:
                    out.append((i, "below", j))
        return out


# ----------------------------------------------------------------------------- shape geometry
# Every shape lives in the unit box [-1, 1]^2 (then scaled by the radius) and touches all four
# sides, so an object's box is exactly (x - r, y - r, x + r, y + r). A polygon shape is a union
# of convex pieces, each an intersection of half-planes n . p <= c; its signed distance is
# min over pieces of max over half-planes (exact inside, a close bound outside, and we clip
# the result to the box so that anti-aliasing never leaks past it).


def _halfplanes(vertices: Sequence[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """(nx, ny, c) with unit outward normals for a convex polygon given by its vertices."""
    vs = np.asarray(vertices, dtype=np.float64)
    centroid = vs.mean(0)
    planes = []
    for k in range(len(vs)):
        p, q = vs[k], vs[(k + 1) % len(vs)]
        n = np.array([q[1] - p[1], p[0] - q[0]])
        n /= np.linalg.norm(n)
        c = float(n @ p)
        if n @ centroid > c:  # make the normal point outwards
            n, c = -n, -c
        planes.append((float(n[0]), float(n[1]), c))
    return planes


def _star_pieces(points: int = 5, inner: float = 0.5) -> list[list[tuple[float, float, float]]]:
    # Outer tips at angles -90 + 72k (pointing up, y down), inner corners in between. A fat
    # star (inner radius 0.5 rather than the pentagram's 0.38) keeps its arms visible at 32x32.
    # Pieces must *overlap*: convex pieces that only touch along an inner edge would leave a
    # seam of half-covered pixels there. So piece k = the inner pentagon plus tip k (convex
    # because a fat tip's base angles are under 72 degrees); all pieces share the pentagon.
    def polar(radius, k):
        a = math.radians(-90 + 360 * k / points)
        return (radius * math.cos(a), radius * math.sin(a))

    outer = [polar(1.0, k) for k in range(points)]
    inn = [polar(inner, k + 0.5) for k in range(points)]
    xs = [p[0] for p in outer + inn]
    ys = [p[1] for p in outer + inn]

    def fit(p):  # stretch to the unit box so that the star, too, touches all four box sides
        return (2 * (p[0] - min(xs)) / (max(xs) - min(xs)) - 1, 2 * (p[1] - min(ys)) / (max(ys) - min(ys)) - 1)

    pieces = []
    for k in range(points):
        ring = [fit(inn[(k + m) % points]) for m in range(points)]  # inner_k, ..., inner_{k-1}
        pieces.append(_halfplanes([fit(outer[k])] + ring))  # tip k, then the pentagon around
    return pieces


_ARM = 0.36  # half-width of the cross's arms
_PIECES: dict[str, list[list[tuple[float, float, float]]]] = {
    "square": [_halfplanes([(-1, -1), (1, -1), (1, 1), (-1, 1)])],
    "triangle": [_halfplanes([(0, -1), (1, 1), (-1, 1)])],
    "diamond": [_halfplanes([(0, -1), (1, 0), (0, 1), (-1, 0)])],
    "cross": [_halfplanes([(-1, -_ARM), (1, -_ARM), (1, _ARM), (-1, _ARM)]),
              _halfplanes([(-_ARM, -1), (_ARM, -1), (_ARM, 1), (-_ARM, 1)])],
    "star": _star_pieces(),
}


def _unit_sdf(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (in units of the radius) to `shape` at points u, v (M, H, W); negative inside."""
    if shape == "circle":
        return torch.sqrt(u * u + v * v) - 1.0
    d = None
    for piece in _PIECES[shape]:
        dp = None  # inside a convex piece = inside all of its half-planes: max of plane distances
        for nx, ny, c in piece:
            e = torch.add(u * nx, v, alpha=ny).sub_(c)
            dp = e if dp is None else torch.maximum(dp, e, out=dp)
        d = dp if d is None else torch.minimum(d, dp, out=d)  # the union of pieces: min
    return d


# ----------------------------------------------------------------------------- text templates
# Objects are listed left to right, so captions also carry coarse layout.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{objects}.",
    "there {be} {objects}.",
    "a picture of {objects}.",
    "{count} {shape_word}: {objects}.",
    "{sized_objects}.",
    "an image with {sized_objects}.",
)
VQA_TEMPLATES: dict[str, str] = {
    "color": "what color is the {shape}?",
    "shape": "what shape is the {color} object?",
    "count_all": "how many shapes are there?",
    "count_color": "how many {color} shapes are there?",
    "count_shape": "how many {plural} are there?",
    "exists": "is there {article} {name}?",
    "relation": "is the {a} {relation} the {b}?",
    "position_x": "is the {name} on the left or on the right?",
    "position_y": "is the {name} at the top or at the bottom?",
}
VQA_ANSWERS: tuple[str, ...] = ("yes", "no", "left", "right", "top", "bottom")
# Every answer `ShapesWorld.vqa` can give: a VQA model classifies over this list (chapter 03).
VQA_ANSWER_VOCAB: tuple[str, ...] = (
    tuple(COLORS) + SHAPES + NUMBER_WORDS[: MAX_OBJECTS + 1] + VQA_ANSWERS
)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """"red circle" -> "a red circle", "orange star" -> "an orange star"."""
    return f"{article(phrase)} {phrase}"


def join_phrases(phrases: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ----------------------------------------------------------------------------- the world
def _as_range(name: str, value, lo: int, hi: int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)):
        raise ValueError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
    a, b = int(value[0]), int(value[1])
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} must satisfy {lo} <= min <= max <= {hi}, got ({a}, {b})")
    return a, b


class ShapesWorld:
    """A deterministic stream of scenes, and everything derived from them.

    world = ShapesWorld(seed=0, image_size=32, split="train", noise=0.0)
    scenes = world.sample(256); images = world.render(scenes)  # (256, 3, 32, 32) in [0, 1]
    captions = [world.caption(s) for s in scenes]

    Two generators: one for scenes, one for text (paraphrase choice, noise, VQA negatives), so
    that asking for captions never changes which scenes come next.
    """

    def __init__(self, seed: int = 0, image_size: int = 32, split: str = "train", noise: float = 0.0,
                 min_objects: int = 1, max_objects: int = MAX_OBJECTS):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._check_image_size(image_size)
        if not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be a float in [0, 1], got {noise!r}")
        self.min_objects, self.max_objects = _as_range(
            "(min_objects, max_objects)", (min_objects, max_objects), 1, MAX_OBJECTS)
        self.seed, self.image_size, self.split, self.noise = int(seed), image_size, split, float(noise)
        # Seeding with (seed, split, stream) gives independent, non-overlapping streams per split.
        code = SPLITS.index(split)
        self.rng = np.random.default_rng([self.seed, code, 0])
        self.text_rng = np.random.default_rng([self.seed, code, 1])
        self.compositions = ALL_COMPOSITIONS if split == "heldout" else SEEN_COMPOSITIONS

    def __repr__(self) -> str:
        return (f"ShapesWorld(seed={self.seed}, image_size={self.image_size}, split={self.split!r}, "
                f"noise={self.noise}, objects={self.min_objects}..{self.max_objects})")

    @staticmethod
    def _check_image_size(image_size) -> None:
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")

    # ------------------------------------------------------------------ scenes
    def sample(self, n: int, n_objects: int | tuple[int, int] | None = None,
               compositions: Sequence[tuple[str, str]] | None = None) -> list[Scene]:
        """n scenes. n_objects: an int or (min, max) (default: the world's range); compositions:
        only these (colour, shape) pairs (a scene never repeats a pair, so at most
        len(compositions) objects). Objects never overlap and stay inside the canvas."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        lo, hi = (self.min_objects, self.max_objects) if n_objects is None else _as_range(
            "n_objects", n_objects, 1, MAX_OBJECTS)
        allowed = self._allowed(compositions)
        if lo > len(allowed):
            raise ValueError(f"n_objects min={lo} but only {len(allowed)} compositions allowed "
                             f"(a scene never repeats a colour-shape pair)")
        hi = min(hi, len(allowed))
        return [self._sample_scene(self.rng, lo, hi, allowed) for _ in range(n)]

    def _allowed(self, compositions) -> list[tuple[str, str]]:
        if compositions is None:
            return list(self.compositions)
        allowed = [_check_composition(p) for p in compositions]
        allowed = list(dict.fromkeys(allowed))  # dedupe, keep order
        if not allowed:
            raise ValueError("compositions must not be empty")
        held = [p for p in allowed if p in HELDOUT_COMPOSITIONS]
        if self.split != "heldout" and held:
            raise ValueError(f"split {self.split!r} never shows held-out compositions, got {held}; "
                             f"use split='heldout' for them")
        if self.split == "heldout" and not held:
            raise ValueError(f"every 'heldout' scene contains a held-out composition: compositions must include "
                             f"one of {list(HELDOUT_COMPOSITIONS)}, got {allowed}")
        return allowed

    def _sample_scene(self, rng: np.random.Generator, lo: int, hi: int, allowed: list[tuple[str, str]]) -> Scene:
        k = int(rng.integers(lo, hi + 1))
        if self.split == "heldout":
            # One held-out pair first, the rest from everything allowed.
            held = [p for p in allowed if p in HELDOUT_COMPOSITIONS]
            first = held[int(rng.integers(len(held)))]
            rest = [p for p in allowed if p != first]
            picks = [first] + [rest[i] for i in rng.choice(len(rest), size=k - 1, replace=False)]
        else:
            picks = [allowed[i] for i in rng.choice(len(allowed), size=k, replace=False)]
        for _ in range(1000):  # rejection sampling: restart the layout if an object does not fit
            objs: list[Obj] = []
            for color, shape in picks:
                size = SIZES[int(rng.integers(len(SIZES)))]
                r = float(rng.uniform(*SIZE_RADII[size]))
                for _ in range(50):
                    x, y = rng.uniform(r + _EDGE, 1 - r - _EDGE, size=2)
                    # Boxes separated along at least one axis: shapes never touch, boxes never overlap.
                    if all(max(abs(x - o.x), abs(y - o.y)) > r + o.radius + _GAP for o in objs):
                        objs.append(Obj(shape, color, size, float(x), float(y), r, float(rng.uniform())))
                        break
                else:
                    break
            if len(objs) == len(picks):
                return Scene(tuple(objs))
        raise RuntimeError(f"could not place {k} objects without overlap")  # pragma: no cover

    # ------------------------------------------------------------------ images
    def render(self, scenes: Sequence[Scene], image_size: int | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1]. Signed distances are computed for every object at once
        (one tensor op per shape kind and depth slot, never a Python loop over pixels); coverage
        = clamp(0.5 - distance in pixels, 0, 1) anti-aliases the edges over one pixel; objects
        are composited far to near (painter's algorithm on depth)."""
        if isinstance(scenes, Scene):
            scenes = [scenes]
        if not all(isinstance(s, Scene) for s in scenes):
            raise TypeError("scenes must be a list of Scene")
        S = self.image_size if image_size is None else image_size
        self._check_image_size(S)
        N = len(scenes)
        images = torch.empty(N, 3, S, S)
        # Bound memory at large sizes: about 2M pixels per object slot per chunk.
        chunk = max(1, (2 ** 21) // (S * S))
        with _threads(RENDER_THREADS):
            for start in range(0, N, chunk):
                images[start:start + chunk] = self._render_chunk(scenes[start:start + chunk], S)
        return images

    @staticmethod
    def _render_chunk(scenes: Sequence[Scene], S: int) -> torch.Tensor:
        # Each object only covers its box, so we compute its coverage in a small P x P pixel
        # window around the box (4-6x fewer pixels than the whole canvas), paste the windows
        # into one coverage layer per depth slot (padded so windows may hang over the border),
        # then blend the layers onto the background, far to near.
        N = len(scenes)
        scene_of, slot_of, shape_ids, geoms, colors = [], [], [], [], []
        for n, scene in enumerate(scenes):
            for k, o in enumerate(sorted(scene.objects, key=lambda o: -o.depth)):
                scene_of.append(n)
                slot_of.append(k)
                shape_ids.append(SHAPES.index(o.shape))
                geoms.append((o.x, o.y, o.radius))
                colors.append(COLORS[o.color])
        if not scene_of:
            return torch.tensor(BACKGROUND).view(1, 3, 1, 1).repeat(N, 1, S, S)
        geom = torch.tensor(geoms, dtype=torch.float64)  # (M, 3) x, y, r
        x, y, r = geom.unbind(1)  # (M,) each
        P = int(math.ceil(2 * float(r.max()) * S)) + 3  # window side in pixels
        x0 = torch.floor((x - r) * S).long() - 1  # (M,) first window column (canvas pixels)
        y0 = torch.floor((y - r) * S).long() - 1
        pad = max(0, -int(torch.minimum(x0, y0).min()), int(torch.maximum(x0, y0).max()) + P - S)
        F = S + 2 * pad  # side of the padded canvas
        j = torch.arange(P)
        cols, rows = x0[:, None] + j, y0[:, None] + j  # (M, P) canvas pixel indices
        u = (((cols + 0.5) / S - x[:, None]) / r[:, None]).float()  # (M, P) in radii, per column
        v = (((rows + 0.5) / S - y[:, None]) / r[:, None]).float()  # (M, P) per row
        u, v = torch.broadcast_tensors(u[:, None, :], v[:, :, None])  # (M, P, P) [row, column]
        rpx = (r * S).float().view(-1, 1, 1)  # radius in pixels
        shape_t = torch.tensor(shape_ids)
        alpha = torch.zeros(len(scene_of), P, P)  # (M, P, P) coverage
        for s_i, shape in enumerate(SHAPES):
            sel = (shape_t == s_i).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            us, vs = u[sel], v[sel]
            d = _unit_sdf(shape, us, vs)
            d = torch.maximum(d, torch.maximum(us.abs(), vs.abs()) - 1.0)  # clip to the box
            alpha[sel] = (0.5 - d * rpx[sel]).clamp(0.0, 1.0)  # distance in pixels -> coverage
        # Paste every window into its scene's slot layer: (N*K, F*F) coverage, zero elsewhere.
        K = max(slot_of) + 1
        layer = (torch.tensor(scene_of) * K + torch.tensor(slot_of)).view(-1, 1)  # (M, 1)
        lin = ((rows + pad)[:, :, None] * F + (cols + pad)[:, None, :]).view(len(scene_of), -1)  # (M, P*P)
        layers = torch.zeros(N * K, F * F)
        layers[layer, lin] = alpha.view(len(scene_of), -1)
        layers = layers.view(N, K, 1, F, F)[..., pad:pad + S, pad:pad + S]  # (N, K, 1, H, W) crop the padding
        color = torch.zeros(N * K, 3)
        color[layer.squeeze(1)] = torch.tensor(colors, dtype=torch.float32)
        color = color.view(N, K, 3, 1, 1)
        img = torch.tensor(BACKGROUND).view(1, 3, 1, 1).expand(N, 3, S, S)  # (N, 3, H, W)
        for k in range(K):  # painter's algorithm: far to near (empty slots have zero coverage)
            img = img + layers[:, k] * (color[:, k] - img)
        return img.clamp(0.0, 1.0)

    # ------------------------------------------------------------------ text
    @staticmethod
    def captions(scene: Scene) -> list[str]:
        """Every paraphrase of the scene's caption, in template order (style=i gives the i-th)."""
        objs = sorted(scene.objects, key=lambda o: o.x)  # left to right
        n = len(objs)
        fill = {
            "objects": join_phrases([with_article(o.name) for o in objs]),
            "sized_objects": join_phrases([with_article(f"{o.size} {o.name}") for o in objs]),
            "be": "is" if n == 1 else "are",
            "count": NUMBER_WORDS[n],
            "shape_word": "shape" if n == 1 else "shapes",
        }
        return [t.format(**fill) for t in CAPTION_TEMPLATES]

    def caption(self, scene: Scene, style: int | None = None) -> str:
        """One caption: a random paraphrase (from the world's text generator) or template `style`."""
        if style is None:
            style = int(self.text_rng.integers(len(CAPTION_TEMPLATES)))
        if not isinstance(style, (int, np.integer)) or not 0 <= style < len(CAPTION_TEMPLATES):
            raise ValueError(f"style must be an int in [0, {len(CAPTION_TEMPLATES) - 1}] or None, got {style!r}")
        return self.captions(scene)[style]

    @staticmethod
    def describe_relation(scene: Scene, i: int, relation: str, j: int) -> str:
        """"a red circle to the left of a blue square"."""
        a, b = scene.objects[i], scene.objects[j]
        return f"{with_article(a.name)} {RELATION_PHRASES[relation]} {with_article(b.name)}"

    def relational_caption(self, scene: Scene) -> str | None:
        """A random true relation as a caption, or None when the scene has none."""
        rels = scene.relations()
        if not rels:
            return None
        i, rel, j = rels[int(self.text_rng.integers(len(rels)))]
        return self.describe_relation(scene, i, rel, j)

    def mixed_caption(self, scene: Scene, relational_fraction: float) -> str:
        """A random paraphrase or, for a share of the scenes with two or more objects, one of
        their true spatial relations (the caption mix CLIP's zoo recipe and chapter 03 train on)."""
        relational = len(scene) > 1 and self.text_rng.uniform() < relational_fraction
        return (self.relational_caption(scene) if relational else None) or self.caption(scene)

    @staticmethod
    def true_captions(scene: Scene) -> set[str]:
        """Every caption that describes `scene` truly: its paraphrases and all its relations. A
        negative caption for image-text matching must be none of these."""
        rels = {ShapesWorld.describe_relation(scene, i, rel, j) for i, rel, j in scene.relations()}
        return set(ShapesWorld.captions(scene)) | rels

    HARD_NEGATIVE_KINDS = ("color", "shape", "size", "relation")

    def hard_negative(self, scene: Scene, kind: str) -> tuple[str, str] | None:
        """A true caption of `scene` and a *hard negative*: the same sentence with one fact
        changed, built from the scene graph. kind "color" / "shape": one object gets another
        colour / shape (a seen composition that is not already in the scene); "size": one
        object's size flips, in a sized paraphrase; "relation": the two objects of a true
        relation swap places ("a red circle to the left of a blue star" → "a blue star to the
        left of a red circle"). Returns (true, negative), or None when the scene cannot give
        that kind (a relation needs two objects clearly apart)."""
        import dataclasses

        if kind not in self.HARD_NEGATIVE_KINDS:
            raise ValueError(f"kind must be one of {list(self.HARD_NEGATIVE_KINDS)}, got {kind!r}")
        rng = self.text_rng
        if kind == "relation":
            rels = scene.relations()
            if not rels:
                return None
            i, rel, j = rels[int(rng.integers(len(rels)))]
            return self.describe_relation(scene, i, rel, j), self.describe_relation(scene, j, rel, i)
        k = int(rng.integers(len(scene)))
        obj = scene.objects[k]
        if kind == "size":
            changed = dataclasses.replace(obj, size=SIZES[1 - SIZES.index(obj.size)])
            styles = [i for i, t in enumerate(CAPTION_TEMPLATES) if "{sized_objects}" in t]
        else:
            present = {o.composition for o in scene.objects}
            options = [p for p in SEEN_COMPOSITIONS if p not in present
                       and (p[1] == obj.shape if kind == "color" else p[0] == obj.color)]
            if not options:
                return None
            color, shape = options[int(rng.integers(len(options)))]
            changed = dataclasses.replace(obj, color=color, shape=shape)
            styles = list(range(len(CAPTION_TEMPLATES)))
        style = styles[int(rng.integers(len(styles)))]
        altered = Scene(scene.objects[:k] + (changed,) + scene.objects[k + 1:])
        return self.captions(scene)[style], self.captions(altered)[style]

    def noisy_captions(self, scenes: Sequence[Scene], noise: float | None = None) -> tuple[list[str], torch.Tensor]:
        """Web-like noise: with probability `noise` (default: the world's knob) a caption is
        replaced by the caption of a different random scene (different objects). Returns the
        captions and a (N,) bool tensor, True where the caption is clean."""
        noise = self.noise if noise is None else noise
        if not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be a float in [0, 1], got {noise!r}")
        rng = self.text_rng
        captions, clean = [], []
        for scene in scenes:
            if rng.uniform() < noise:
                while True:
                    other = self._sample_scene(rng, self.min_objects, self.max_objects, list(self.compositions))
                    if sorted(other.names) != sorted(scene.names):
                        break
                captions.append(self.caption(other))
                clean.append(False)
            else:
                captions.append(self.caption(scene))
                clean.append(True)
        return captions, torch.tensor(clean, dtype=torch.bool)

    def vqa(self, scene: Scene) -> list[tuple[str, str, str]]:
        """(question, answer, kind) triples, all single-word answers (numbers as words).

        color: per object whose shape is unique in the scene; shape: per object whose colour
        is unique; count: all shapes, one present colour, one random shape (may be "zero");
        exists: one present object ("yes"), one absent seen composition ("no"); relation: one
        true relation ("yes") and its opposite ("no"); position: left/right and top/bottom for
        each object away from the centre line.
        """
        rng, objs = self.text_rng, scene.objects
        qa: list[tuple[str, str, str]] = []
        shapes = [o.shape for o in objs]
        colors = [o.color for o in objs]
        for o in objs:
            if shapes.count(o.shape) == 1:
                qa.append((VQA_TEMPLATES["color"].format(shape=o.shape), o.color, "color"))
        for o in objs:
            if colors.count(o.color) == 1:
                qa.append((VQA_TEMPLATES["shape"].format(color=o.color), o.shape, "shape"))
        qa.append((VQA_TEMPLATES["count_all"], NUMBER_WORDS[len(objs)], "count"))
        if objs:
            c = colors[int(rng.integers(len(colors)))]
            qa.append((VQA_TEMPLATES["count_color"].format(color=c), NUMBER_WORDS[colors.count(c)], "count"))
        s = SHAPES[int(rng.integers(len(SHAPES)))]
        qa.append((VQA_TEMPLATES["count_shape"].format(plural=PLURALS[s]), NUMBER_WORDS[shapes.count(s)], "count"))
        if objs:
            o = objs[int(rng.integers(len(objs)))]
            qa.append((VQA_TEMPLATES["exists"].format(article=article(o.name), name=o.name), "yes", "exists"))
        # Negatives come from the split's own compositions: train text never names a held-out pair.
        absent = [p for p in self.compositions if scene.find(*p) is None]
        c, s = absent[int(rng.integers(len(absent)))]
        qa.append((VQA_TEMPLATES["exists"].format(article=article(c), name=f"{c} {s}"), "no", "exists"))
        rels = scene.relations()
        if rels:
            i, rel, j = rels[int(rng.integers(len(rels)))]
            a, b = objs[i].name, objs[j].name
            qa.append((VQA_TEMPLATES["relation"].format(a=a, relation=RELATION_PHRASES[rel], b=b), "yes", "relation"))
            qa.append((VQA_TEMPLATES["relation"].format(a=a, relation=RELATION_PHRASES[OPPOSITE[rel]], b=b), "no",
                       "relation"))
        for o in objs:
            if abs(o.x - 0.5) > POSITION_MARGIN:
                qa.append((VQA_TEMPLATES["position_x"].format(name=o.name), "left" if o.x < 0.5 else "right",
                           "position"))
            if abs(o.y - 0.5) > POSITION_MARGIN:
                qa.append((VQA_TEMPLATES["position_y"].format(name=o.name), "top" if o.y < 0.5 else "bottom",
                           "position"))
        return qa

    def vqa_sample(self, n: int, kinds: Sequence[str] = VQA_KINDS) -> dict:
        """n questions, cycling through `kinds` so every kind has the same share; one scene per
        question (a random question of that kind among those the scene supports; relation
        questions need two objects). Returns dict(scenes, questions, answers, kinds)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in VQA_KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {list(VQA_KINDS)}, got {list(kinds)}")
        rng = self.rng
        out: dict[str, list] = {"scenes": [], "questions": [], "answers": [], "kinds": []}
        for i in range(n):
            kind = kinds[i % len(kinds)]
            lo = max(2 if kind == "relation" else 1, self.min_objects)
            while True:
                scene = self.sample(1, n_objects=(lo, max(lo, self.max_objects)))[0]
                options = [qa for qa in self.vqa(scene) if qa[2] == kind]
                if options:
                    break
            q, a, k = options[int(rng.integers(len(options)))]
            for key, value in zip(("scenes", "questions", "answers", "kinds"), (scene, q, a, k)):
                out[key].append(value)
        return out

    # ------------------------------------------------------------------ convenience
    def batch(self, n: int) -> dict:
        """dict(images (N, 3, H, W), captions list[str] (noisy if the world's noise > 0), scenes)."""
        scenes = self.sample(n)
        captions = self.noisy_captions(scenes)[0] if self.noise > 0 else [self.caption(s) for s in scenes]
        return {"images": self.render(scenes), "captions": captions, "scenes": scenes}

    @staticmethod
    def vocabulary() -> list[str]:
        """Every token any generator of the world can emit (sorted)."""
        templates = list(CAPTION_TEMPLATES) + list(VQA_TEMPLATES.values())
        fillers = list(VQA_ANSWERS) + list(COLORS) + list(SHAPES) + list(PLURALS.values()) + list(SIZES)
        fillers += list(NUMBER_WORDS[: MAX_OBJECTS + 1]) + list(RELATION_PHRASES.values()) + ["a", "an", "and", ","]
        fillers += ["is", "are", "shape", "shapes"]
        words: set[str] = set()
        for t in templates + fillers:
            words.update(split_words(re.sub(r"\{[a-z_]+\}", " ", t)))
        return sorted(words)


# ----------------------------------------------------------------------------- benchmark
def time_render(n: int = 256, image_size: int = 32, repeats: int = 20) -> dict:
    """Time `render` on n scenes: median and min seconds after one warm-up, scenes per second,
    torch's thread setting and the threads render itself uses (RENDER_THREADS)."""
    world = ShapesWorld(seed=0, image_size=image_size)
    scenes = world.sample(n)
    world.render(scenes)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        world.render(scenes)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {"n": n, "image_size": image_size, "repeats": repeats, "median_s": median, "min_s": float(min(times)),
            "scenes_per_s": n / median, "threads": torch.get_num_threads(),
            "render_threads": RENDER_THREADS}
