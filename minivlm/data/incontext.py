"""In-context episodes: text the tiny LLM learns to learn from (chapter 09; chapter 11 asks the
same of images).

An **episode** is a few *units* in a row, each "content → answer", all following one hidden
rule. The rule is never named: only the demonstrations show it. So the first unit's answer is
a guess, and every later one can be read off the units before it. Three families are trained:

- **attribute**: the content describes an object ("a small red star") and the answer is one of
  its attributes: its colour, shape, size, or (a world fact) its number of corners. Asked with
  no demonstration (k = 0), a model can only guess which attribute is wanted: chance by
  construction.
- **keyvalue**: the content is a nonce word (`<extra_i>`, a token whose meaning exists only in
  this episode) and the answer a word bound to it earlier in the episode: pure retrieval, the
  job of an *induction head* (find the earlier occurrence, copy what followed it).
- **binding** (Frozen's "fast binding"): definitions "a <extra_3> is a small red star." then
  questions "what colour is the <extra_3>?": the model reads a definition from its context.

Each unit's content comes right before its answer, as Flamingo puts each image right before
its text. The *template* (cue words around the content and the answer, the separator after a
unit) is drawn per episode (`random_template`, from about forty cue words); evaluation can use
`HELDOUT_TEMPLATES`, whose cue words and separators never appear in a training template: a model
that learned "copy the attribute the demonstrations copy" passes, one that learned a cue string
does not.

One rule family, **count** (the content lists 1-4 objects, the answer is how many), never
appears in an episode during training: `kshot_items("count", ...)` asks whether a rule can be
picked up from demonstrations alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minivlm.data.shapesworld import (
    COLORS,
    HELDOUT_COMPOSITIONS,
    NUMBER_WORDS,
    SHAPES,
    SIZES,
    join_phrases,
    with_article,
)
from minivlm.data.tokenizer import NUM_EXTRA
from minivlm.data.worldtext import SHAPE_PARTS, qa_prompt, qa_text

ATTRIBUTE_RULES: tuple[str, ...] = ("colour", "shape", "size", "corners")
FAMILIES: tuple[str, ...] = ("attribute", "keyvalue", "binding")
NEW_FAMILY = "count"  # never trained as an episode
MAX_UNITS = 6  # units per training episode


@dataclass(frozen=True)
class Template:
    """How one unit reads: "{before} {content} {between} {answer}{sep}" ("in : a red star out :
    red ;"). `before` may be empty."""

    before: str
    between: str
    sep: str

    def unit(self, content: str, answer: str | None = None) -> str:
        """The unit's text; answer=None gives the query, up to where the answer goes."""
        head = " ".join(w for w in (self.before, content, self.between) if w)
        return head if answer is None else f"{head} {answer}{self.sep}"


# Cue words and separators. Training draws a template per episode from a large pool of cue
# words, so that no single cue string can be what the model learns; the held-out templates use
# cue words and separators that training never puts in a template at all.
TRAIN_CUE_WORDS: tuple[str, ...] = (
    "answer", "so", "is", "then", "in", "out", "q", "x", "y", "z", "d", "e", "f", "g", "h", "k", "m", "p", "r",
    "s", "t", "u", "v", "w", "it", "here", "there", "this", "that", "look", "give", "tell", "show", "type", "kind",
    "object", "example", "number", "ok")
TRAIN_SEPS: tuple[str, ...] = (".", ";", "!")
HELDOUT_TEMPLATES: tuple[Template, ...] = tuple(
    Template(b, m, s) for b, m in [("", "to"), ("from", "to"), ("b :", "c :"), ("see", "name :"), ("", "word :")]
    for s in (",", " ?"))
TEMPLATE_SPLITS = ("train", "heldout")


def random_template(rng: np.random.Generator) -> Template:
    """A training template: a cue before the content (none, "w" or "w :") and one between
    content and answer (none, ":", "w" or "w :"), each w a training cue word, and a separator.
    With no cue between, the answer follows its content directly: a key-value query then ends
    on the key itself, the plain copy pattern (seen "A B" earlier, now at A: say B) that the
    longer cues build on."""
    def word() -> str:
        return TRAIN_CUE_WORDS[int(rng.integers(len(TRAIN_CUE_WORDS)))]

    before = ("", word(), f"{word()} :")[int(rng.integers(3))]
    between = ("", ":", word(), f"{word()} :")[int(rng.integers(4))]
    return Template(before, between, TRAIN_SEPS[int(rng.integers(len(TRAIN_SEPS)))])


def draw_template(rng: np.random.Generator, split: str) -> Template:
    """A template of `split`: a random training template, or one of the held-out ones."""
    if split not in TEMPLATE_SPLITS:
        raise ValueError(f"templates split must be one of {TEMPLATE_SPLITS}, got {split!r}")
    if split == "train":
        return random_template(rng)
    return HELDOUT_TEMPLATES[int(rng.integers(len(HELDOUT_TEMPLATES)))]


def _pairs(train_compositions: bool) -> list[tuple[str, str]]:
    """(colour, shape) pairs an episode may name: training text never names a held-out composition."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return [p for p in pairs if p not in HELDOUT_COMPOSITIONS] if train_compositions else pairs


def attribute_answer(rule: str, size: str, color: str, shape: str) -> str:
    """The answer rule `rule` gives for the object "a {size} {color} {shape}"."""
    if rule == "colour":
        return color
    if rule == "shape":
        return shape
    if rule == "size":
        return size
    if rule == "corners":
        return NUMBER_WORDS[SHAPE_PARTS["corners"][shape]]
    raise ValueError(f"rule must be one of {ATTRIBUTE_RULES}, got {rule!r}")


def answer_type(family: str, rule: str | None = None) -> tuple[str, ...]:
    """Every answer of the right *type* for a rule: a colour word for the colour rule, and so on
    (a wrong colour is the right type; "star" for a colour question is not)."""
    if family == "attribute":
        return {"colour": tuple(COLORS), "shape": SHAPES, "size": SIZES,
                "corners": tuple(sorted({NUMBER_WORDS[n] for n in SHAPE_PARTS["corners"].values()}))}[rule]
    if family == "keyvalue":
        return KEYVALUE_VALUES
    if family == "binding":
        return {"colour": tuple(COLORS), "shape": SHAPES, "size": SIZES}[rule]
    if family == NEW_FAMILY:
        return NUMBER_WORDS[1:5]
    raise ValueError(f"family must be one of {FAMILIES + (NEW_FAMILY,)}, got {family!r}")


KEYVALUE_VALUES: tuple[str, ...] = tuple(COLORS) + SHAPES
BINDING_QUESTIONS = {"colour": "what colour is the {n}?", "shape": "what shape is the {n}?",
                     "size": "what size is the {n}?"}


class Episodes:
    """Training episodes, generated. `document()` gives one: an attribute, keyvalue or binding
    episode (in proportion `weights`) of 1-`MAX_UNITS` units in a template drawn per episode.

    Templates are drawn by `random_template`; no episode names a held-out composition.
    """

    def __init__(self, seed: int = 0, weights: dict[str, float] | None = None, max_units: int = MAX_UNITS):
        weights = {"attribute": 1.0, "keyvalue": 1.0, "binding": 1.0} if weights is None else dict(weights)
        if not weights or any(f not in FAMILIES for f in weights) or any(
                not isinstance(w, (int, float)) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must map families {FAMILIES} to non-negative numbers with a positive sum, "
                             f"got {weights}")
        if not isinstance(max_units, int) or isinstance(max_units, bool) or max_units < 2:
            raise ValueError(f"max_units must be an int >= 2, got {max_units!r}")
        self.rng = np.random.default_rng(seed)
        self.families = list(weights)
        p = np.array([weights[f] for f in self.families], dtype=float)
        self.p = p / p.sum()
        self.max_units = max_units
        self.pairs = _pairs(train_compositions=True)

    def _object(self) -> tuple[str, str, str]:
        color, shape = self.pairs[int(self.rng.integers(len(self.pairs)))]
        return SIZES[int(self.rng.integers(len(SIZES)))], color, shape

    def template(self) -> Template:
        return random_template(self.rng)

    def document(self) -> str:
        family = self.families[int(self.rng.choice(len(self.families), p=self.p))]
        units = int(self.rng.integers(2, self.max_units + 1))
        return getattr(self, family)(units)

    def attribute(self, units: int, t: Template | None = None) -> str:
        rule = ATTRIBUTE_RULES[int(self.rng.integers(len(ATTRIBUTE_RULES)))]
        t, article = t or self.template(), ("a", "the")[int(self.rng.integers(2))]
        out = []
        for _ in range(units):
            size, color, shape = self._object()
            out.append(t.unit(f"{article} {size} {color} {shape}", attribute_answer(rule, size, color, shape)))
        return " ".join(out)

    def keyvalue(self, units: int, t: Template | None = None) -> str:
        """Units "key → value" with nonce keys: first some distinct keys are bound (at least one,
        fewer than `units`), then each later unit asks one of them again (its value can only be
        copied from the context) or, one time in four, binds a new key (it cannot)."""
        if units < 2:
            raise ValueError(f"a key-value episode needs units >= 2 (a binding and a query), got {units}")
        t = t or self.template()
        keys = [f"<extra_{i}>" for i in self.rng.permutation(NUM_EXTRA)]
        bound: dict[str, str] = {}

        def bind() -> str:
            key = keys[len(bound)]
            bound[key] = KEYVALUE_VALUES[int(self.rng.integers(len(KEYVALUE_VALUES)))]
            return key

        out = [t.unit(key, bound[key]) for key in [bind() for _ in range(int(self.rng.integers(1, units)))]]
        while len(out) < units:
            if self.rng.uniform() < 0.25:
                key = bind()
            else:
                key = list(bound)[int(self.rng.integers(len(bound)))]
            out.append(t.unit(key, bound[key]))
        return " ".join(out)

    def binding(self, units: int) -> str:
        """1-3 definitions "a <extra_i> is a small red star." then questions about them."""
        defs = max(1, min(3, units - 1))
        names = [f"<extra_{i}>" for i in self.rng.choice(NUM_EXTRA, size=defs, replace=False)]
        objects = [self._object() for _ in names]
        out = [f"a {n} is a {s} {c} {sh}." for n, (s, c, sh) in zip(names, objects)]
        for _ in range(units - defs):
            i = int(self.rng.integers(defs))
            rule = tuple(BINDING_QUESTIONS)[int(self.rng.integers(len(BINDING_QUESTIONS)))]
            size, color, shape = objects[i]
            out.append(qa_text(BINDING_QUESTIONS[rule].format(n=names[i]), attribute_answer(rule, size, color, shape)))
        return " ".join(out)


@dataclass(frozen=True)
class ShotItem:
    """One k-shot question: the prompt (k demonstrations, then the query), the exact answer,
    and the answers of the right type."""

    prompt: str
    answer: str
    family: str
    rule: str
    k: int
    templates: str
    answer_type: tuple[str, ...]


def kshot_items(family: str, k: int, n: int, seed: int = 0, split: str = "heldout") -> list[ShotItem]:
    """n k-shot questions of `family` ("attribute", "keyvalue", "binding" or the untrained
    "count") in templates of `split`, with fresh objects and nonce words (seeded).

    attribute: k demonstrations of one rule (cycling over the rules), then a new object.
    keyvalue: k bindings "key → value" (k >= 1), then one of their keys again.
    binding: k definitions (k >= 1), then a question about one of them (the QA format; split
    only changes nothing here: binding has no template).
    count: k demonstrations "objects → how many", then new objects.
    """
    if family not in FAMILIES + (NEW_FAMILY,):
        raise ValueError(f"family must be one of {FAMILIES + (NEW_FAMILY,)}, got {family!r}")
    for name, value, lo in (("k", k, 0), ("n", n, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if family in ("keyvalue", "binding") and k < 1:
        raise ValueError(f"a {family} question needs k >= 1 (the query asks about a demonstration), got k={k}")
    if k > NUM_EXTRA // 2:
        raise ValueError(f"k must be at most {NUM_EXTRA // 2}, got {k}")
    draw_template(np.random.default_rng(0), split)  # check the split
    rng = np.random.default_rng([seed, k, FAMILIES.index(family) if family in FAMILIES else 9])
    pairs = _pairs(train_compositions=False)

    def obj():
        color, shape = pairs[int(rng.integers(len(pairs)))]
        return SIZES[int(rng.integers(len(SIZES)))], color, shape

    items = []
    for i in range(n):
        t = draw_template(rng, split)
        if family == "attribute":
            rule = ATTRIBUTE_RULES[i % len(ATTRIBUTE_RULES)]
            shots = [obj() for _ in range(k + 1)]
            text = [t.unit(f"a {s} {c} {sh}", attribute_answer(rule, s, c, sh)) for s, c, sh in shots[:-1]]
            s, c, sh = shots[-1]
            prompt, answer = t.unit(f"a {s} {c} {sh}"), attribute_answer(rule, s, c, sh)
        elif family == "keyvalue":
            rule = "keyvalue"
            keys = [f"<extra_{j}>" for j in rng.choice(NUM_EXTRA, size=k, replace=False)]
            values = [KEYVALUE_VALUES[j] for j in rng.integers(len(KEYVALUE_VALUES), size=k)]
            text = [t.unit(key, v) for key, v in zip(keys, values)]
            j = int(rng.integers(k))
            prompt, answer = t.unit(keys[j]), values[j]
        elif family == "binding":
            rule = tuple(BINDING_QUESTIONS)[i % len(BINDING_QUESTIONS)]
            names = [f"<extra_{j}>" for j in rng.choice(NUM_EXTRA, size=k, replace=False)]
            objects = [obj() for _ in names]
            text = [f"a {nm} is a {s} {c} {sh}." for nm, (s, c, sh) in zip(names, objects)]
            j = int(rng.integers(k))
            prompt = qa_prompt(BINDING_QUESTIONS[rule].format(n=names[j]))
            answer = attribute_answer(rule, *objects[j])
        else:
            rule = NEW_FAMILY
            text = []
            for _ in range(k + 1):
                count = int(rng.integers(1, 5))
                objs = [obj() for _ in range(count)]
                content = join_phrases([with_article(f"{c} {sh}") for _, c, sh in objs])
                text.append((content, NUMBER_WORDS[count]))
            prompt, answer = t.unit(text[-1][0]), text[-1][1]
            text = [t.unit(c, a) for c, a in text[:-1]]
        items.append(ShotItem(" ".join(text + [prompt]), answer, family, rule, k, split, answer_type(family, rule)))
    return items
