"""World text: the language model's corpus, with the world facts no image-text data states (chapter 09).

The tiny LLM of chapter 09 reads two kinds of text:

- **scene text**: captions and question-answer pairs about ShapesWorld scenes, written from the
  scene graph without any image ("a red circle and a blue square. question: what color is the
  circle? answer: red."), so that the model learns the course's language and learns to answer
  a question from what was said before it;
- **world facts** that no image can show and no image-text generator ever writes: a triangle
  has three corners, a wheel looks like a circle, grass is green, red and blue mixed make
  purple. Each fact comes in several phrasings, as statements and as questions with answers.

Held out: for every fact, two of its relation's question forms and one of its statement forms
never appear in training (which ones rotates from fact to fact, so every form is seen with
*other* facts). Recalling a fact through a held-out form tells knowledge from a memorised
string (`recall_items`).

Chapters 10-18 reach these facts through an image: "how many corners does the red object
have?" needs the shape from the image and the corners from the language model
(`knowledge_questions`). Scene documents here carry such questions too, with the scene's
caption as the context that an image will later replace.

Every word below is in the tokenizer's fixed vocabulary (a test checks no <unk> appears).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from minivlm.data.shapesworld import COLORS, NUMBER_WORDS, PLURALS, SHAPES, VQA_KINDS, Scene, ShapesWorld
from minivlm.data.tokenizer import split_words

FAMILIES: tuple[str, ...] = ("shape", "thing_shape", "thing_color", "mixing")

# ----------------------------------------------------------------------------- the facts
# Geometry of the world's six shapes (a star drawn with five points has ten corners and ten
# sides; a plus-shaped cross has twelve of each).
SHAPE_PARTS: dict[str, dict[str, int]] = {
    "corners": {"circle": 0, "square": 4, "triangle": 3, "diamond": 4, "cross": 12, "star": 10},
    "sides": {"circle": 0, "square": 4, "triangle": 3, "diamond": 4, "cross": 12, "star": 10},
    "points": {"star": 5},
    "arms": {"cross": 4},
}
THING_SHAPES: dict[str, str] = {
    "a wheel": "circle", "a coin": "circle", "the moon": "circle", "a ball": "circle", "a plate": "circle",
    "a ring": "circle", "a roof": "triangle", "a pyramid": "triangle", "a kite": "diamond",
    "a starfish": "star", "a window": "square", "a dice": "square", "a plus sign": "cross",
}
THING_COLORS: dict[str, str] = {
    "grass": "green", "a leaf": "green", "a tree": "green", "snow": "white", "milk": "white", "a cloud": "white",
    "a lemon": "yellow", "a banana": "yellow", "the sun": "yellow", "the sky": "blue", "the sea": "blue",
    "the ocean": "blue", "a cherry": "red", "a strawberry": "red", "a tomato": "red", "blood": "red",
    "a rose": "red", "a carrot": "orange", "fire": "orange", "a grape": "purple", "a plum": "purple",
    "lavender": "purple", "coal": "black", "chocolate": "brown",
}
# (first, second) -> the mixture; the pair's order here is the order answers give it in.
MIXTURES: dict[tuple[str, str], str] = {
    ("red", "blue"): "purple", ("red", "yellow"): "orange", ("blue", "yellow"): "green",
    ("red", "white"): "pink", ("black", "white"): "grey", ("green", "blue"): "cyan",
}

# ----------------------------------------------------------------------------- the phrasings
# Per relation: statement forms and question forms. No form may end with another form of its
# relation ("the colour of grass is green." would contain a held-out "grass is green."): a test
# checks that no held-out statement occurs inside any training text. Slots: {s} a shape, {p} its plural, {t} a
# thing ("a wheel", "the sky"), {x} {y} two colours, {c} a colour, {a} the answer.
_PART_STATEMENTS = ("a {s} has {a} {part}.", "every {s} has {a} {part}.", "the number of {part} of a {s} is {a}.",
                    "{p} have {a} {part}.", "you can count {a} {part} on a {s}.")
_PART_QUESTIONS = ("how many {part} does a {s} have?", "how many {part} are there on a {s}?",
                   "what is the number of {part} of a {s}?", "a {s} has how many {part}?",
                   "tell me how many {part} a {s} has.", "how many {part} do {p} have?")
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{part: (tuple(t.replace("{part}", part) for t in _PART_STATEMENTS),
              tuple(t.replace("{part}", part) for t in _PART_QUESTIONS)) for part in SHAPE_PARTS},
    "thing_shape": (
        ("{t} is a {a}.", "{t} looks like a {a}.", "a {a} is the shape of {t}.", "{t} has the shape of a {a}."),
        ("what shape is {t}?", "what is the shape of {t}?", "which shape does {t} look like?",
         "{t} looks like which shape?", "tell me the shape of {t}.", "what shape does {t} have?"),
    ),
    "thing_color": (
        ("{t} is {a}.", "{a} is the colour of {t}.", "{t} has the color {a}.", "{t} has a {a} colour."),
        ("what colour is {t}?", "what color is {t}?", "what is the colour of {t}?", "which colour is {t}?",
         "{t} is which colour?", "tell me the colour of {t}."),
    ),
    "mixing": (
        ("{x} and {y} mixed make {a}.", "mixing {x} and {y} makes {a}.", "if you mix {x} and {y} you make {a}.",
         "a mixture of {x} and {y} is {a}.", "{x} mixed with {y} makes {a}."),
        ("what colour do you make when you mix {x} and {y}?", "what do {x} and {y} make when mixed?",
         "{x} mixed with {y} makes which colour?", "what is a mixture of {x} and {y}?",
         "which colour is {x} and {y} mixed?", "if you mix {x} and {y}, what colour do you make?"),
    ),
    "mix_parts": (
        ("{c} is {a} mixed.", "{c} is made by mixing {a}.", "you make {c} by mixing {a}.",
         "to make {c}, mix {a}."),
        ("what is {c} made of?", "what makes {c} when mixed?", "{c} is a mixture of what?",
         "what do you mix to make {c}?", "which two make {c} when mixed?", "tell me what is mixed to make {c}."),
    ),
}
HELDOUT_QUESTIONS = 2  # question forms per fact never trained on
HELDOUT_STATEMENTS = 1  # statement forms per fact never trained on
QA_FORMAT = "question: {q} answer: {a}."  # how every question-answer pair reads in the corpus


@dataclass(frozen=True)
class Fact:
    """One world fact: `relation` of `subject` is `answer`. `index` is its place among the facts
    of its relation, which decides which of the relation's forms it holds out."""

    family: str
    relation: str
    subject: str | tuple[str, str]
    answer: str
    index: int

    def slots(self, order: tuple[int, int] = (0, 1)) -> dict[str, str]:
        """The template fields; `order` swaps the two colours of a mixture ((1, 0))."""
        if self.family == "shape":
            return {"s": self.subject, "p": PLURALS[self.subject], "a": self.answer}
        if self.family in ("thing_shape", "thing_color"):
            return {"t": self.subject, "a": self.answer}
        if self.relation == "mixing":
            pair = self.subject
            return {"x": pair[order[0]], "y": pair[order[1]], "a": self.answer}
        return {"c": self.subject, "a": self.answer}  # mix_parts: the answer is "red and blue"

    def held_out(self, kind: str) -> tuple[int, ...]:
        """Indices of the statement (kind="statement") or question forms this fact never trains on."""
        statements, questions = TEMPLATES[self.relation]
        forms, k = (statements, HELDOUT_STATEMENTS) if kind == "statement" else (questions, HELDOUT_QUESTIONS)
        return tuple((self.index * k + j) % len(forms) for j in range(k))


def _facts() -> tuple[Fact, ...]:
    out: list[Fact] = []
    for part, values in SHAPE_PARTS.items():
        out += [Fact("shape", part, s, NUMBER_WORDS[n], i) for i, (s, n) in enumerate(values.items())]
    out += [Fact("thing_shape", "thing_shape", t, s, i) for i, (t, s) in enumerate(THING_SHAPES.items())]
    out += [Fact("thing_color", "thing_color", t, c, i) for i, (t, c) in enumerate(THING_COLORS.items())]
    out += [Fact("mixing", "mixing", pair, c, i) for i, (pair, c) in enumerate(MIXTURES.items())]
    out += [Fact("mixing", "mix_parts", c, f"{x} and {y}", i) for i, ((x, y), c) in enumerate(MIXTURES.items())]
    return tuple(out)


FACTS: tuple[Fact, ...] = _facts()


def fact_statements(fact: Fact, split: str = "train") -> list[str]:
    """The fact's statements in the training forms (split="train") or its held-out forms ("heldout")."""
    _check_split(split)
    held = fact.held_out("statement")
    forms = TEMPLATES[fact.relation][0]
    return [f.format(**fact.slots()) for i, f in enumerate(forms) if (i in held) == (split == "heldout")]


def fact_questions(fact: Fact, split: str = "train") -> list[tuple[str, str]]:
    """(question, answer) in the training question forms or the held-out ones."""
    _check_split(split)
    held = fact.held_out("question")
    forms = TEMPLATES[fact.relation][1]
    return [(f.format(**fact.slots()), fact.answer) for i, f in enumerate(forms)
            if (i in held) == (split == "heldout")]


def _check_split(split) -> None:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def qa_text(question: str, answer: str) -> str:
    """One question-answer pair as the corpus writes it: "question: ... answer: ...."."""
    return QA_FORMAT.format(q=question, a=answer)


def qa_prompt(question: str) -> str:
    """The prompt that asks a language model `question`: the pair up to its answer."""
    return QA_FORMAT.split("{a}")[0].format(q=question).rstrip()


@dataclass(frozen=True)
class RecallItem:
    """One way to ask a fact: a prompt the model completes, the exact answer, and where it came from."""

    prompt: str
    answer: str
    family: str
    relation: str
    form: str  # "question" (a question form), "cloze" (a statement cut before its answer) or "scene"
    fact: Fact | None  # None for a question about a scene


def recall_items(split: str = "heldout") -> list[RecallItem]:
    """Every fact asked in its held-out forms (split="heldout") or its training forms ("train"):
    each question form as "question: ... answer:", and each statement form that ends with the
    answer as a cloze ("the shape of a wheel is a" -> "circle")."""
    _check_split(split)
    items = []
    for fact in FACTS:
        for q, a in fact_questions(fact, split):
            items.append(RecallItem(qa_prompt(q), a, fact.family, fact.relation, "question", fact))
        held = fact.held_out("statement")
        for i, form in enumerate(TEMPLATES[fact.relation][0]):
            if (i in held) != (split == "heldout") or not form.endswith("{a}."):
                continue
            prompt = form[: -len("{a}.")].format(**{k: v for k, v in fact.slots().items() if k != "a"}).rstrip()
            items.append(RecallItem(prompt, fact.answer, fact.family, fact.relation, "cloze", fact))
    return items


# ----------------------------------------------------------------------------- facts about a scene
def knowledge_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(question, answer, relation) about a scene whose answer needs a world fact: the object is
    named by what an image shows (its colour, or its shape), the answer is what only the facts
    say. Only objects whose colour (or shape) is unique in the scene are asked about.

    "how many corners does the red object have?" -> the red object's shape's corners;
    "how many sides does the red object have?";
    "what is mixed to make the colour of the star?" -> for a star of a mixed colour.
    """
    out = []
    colors = [o.color for o in scene.objects]
    shapes = [o.shape for o in scene.objects]
    mixed = {c: f"{x} and {y}" for (x, y), c in MIXTURES.items()}
    for o in scene.objects:
        if colors.count(o.color) == 1:
            for part in ("corners", "sides"):
                n = SHAPE_PARTS[part][o.shape]
                out.append((f"how many {part} does the {o.color} object have?", NUMBER_WORDS[n], part))
        if shapes.count(o.shape) == 1 and o.color in mixed:
            out.append((f"what is mixed to make the colour of the {o.shape}?", mixed[o.color], "mix_parts"))
    return out


KNOWLEDGE_KINDS = ("corners", "sides", "mix_parts")


def knowledge_sample(world: ShapesWorld, n: int, kinds: Sequence[str] = KNOWLEDGE_KINDS) -> dict:
    """n knowledge questions (`knowledge_questions`) about scenes of `world`, cycling through
    `kinds` so each has the same share, one scene per question (a random question of that kind
    among those the scene supports). Returns dict(scenes, questions, answers, kinds)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    kinds = tuple(kinds)
    if not kinds or any(k not in KNOWLEDGE_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {list(KNOWLEDGE_KINDS)}, got {list(kinds)}")
    out: dict[str, list] = {"scenes": [], "questions": [], "answers": [], "kinds": []}
    for i in range(n):
        kind = kinds[i % len(kinds)]
        while True:
            scene = world.sample(1)[0]
            options = [qa for qa in knowledge_questions(scene) if qa[2] == kind]
            if options:
                break
        q, a, k = options[int(world.rng.integers(len(options)))]
        for key, value in zip(("scenes", "questions", "answers", "kinds"), (scene, q, a, k)):
            out[key].append(value)
    return out


def scene_items(n: int, seed: int = 0, split: str = "test") -> list[RecallItem]:
    """n questions about scenes asked in text: the scene's caption, then "question: ... answer:".
    Half are VQA questions (family "vqa": the caption holds the answer), half knowledge
    questions (family "knowledge": the caption names the object, a fact gives the answer). The
    text form of what chapters 10-18 ask with an image in place of the caption."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    items: list[RecallItem] = []
    for world, _, scene, q, a, kind, family in _scene_questions(seed, split, None):
        items.append(RecallItem(f"{world.caption(scene)} {qa_prompt(q)}", a, family, kind, "scene", None))
        if len(items) == n:
            return items


def _scene_questions(seed: int, split: str, kinds: Sequence[str] | None):
    """Endless (world, rng, scene, question, answer, kind, family) about fresh scenes, families
    alternating "vqa" (the VQA kinds in `kinds`, None: all) and "knowledge" (a fact about an
    object the scene names); rng is the generator the draws came from, for the caller's own."""
    world = ShapesWorld(seed=seed, split=split)
    rng = np.random.default_rng(seed)
    asked = 0
    while True:
        scene = world.sample(1)[0]
        family = "vqa" if asked % 2 == 0 else "knowledge"
        options = ([(q, a, k) for q, a, k in world.vqa(scene) if kinds is None or k in kinds] if family == "vqa"
                   else knowledge_questions(scene))
        if not options:
            continue
        q, a, kind = options[int(rng.integers(len(options)))]
        yield world, rng, scene, q, a, kind, family
        asked += 1


# ----------------------------------------------------------------------------- chat turns
# The chat template of chapters 13-14 (ChatML's, with the vocabulary's own tokens): each message
# opens with <im_start> and its role, and closes with <im_end>. The assistant's reply is what a
# chat model is trained to write; a prompt ends right after "<im_start> <assistant>".
USER, ASSISTANT, END = "<im_start> <user>", "<im_start> <assistant>", "<im_end>"
# Response-format instructions (LLaVA-1.5's fix for short vs long answers): with one, the reply
# is the bare answer ("red."); without, a sentence ("the answer is red.").
ONE_WORD_INSTRUCTIONS: tuple[str, ...] = ("answer with one word.", "answer with a single word.",
                                          "give a short answer.", "use one word.")
SENTENCE_ANSWER = "the answer is {a}."


def chat_text(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation [(user message, assistant reply), ...] in the chat template."""
    if not turns:
        raise ValueError("a conversation needs at least one (user, assistant) turn")
    return " ".join(f"{USER} {u} {END} {ASSISTANT} {a} {END}" for u, a in turns)


def chat_prompt(message: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt that asks `message` after the turns of `history`: it ends where the reply starts."""
    head = chat_text(history) + " " if history else ""
    return f"{head}{USER} {message} {END} {ASSISTANT}"


def chat_reply(answer: str, one_word: bool) -> str:
    """The assistant's reply to a question whose answer is `answer`."""
    return f"{answer}." if one_word else SENTENCE_ANSWER.format(a=answer)


# ----------------------------------------------------------------------------- context over memory
def _answer_pool(relation: str) -> tuple[str, ...]:
    """The answers a counterfactual statement may give for `relation`: its own answers and their
    kind's other words (every colour, every shape, the numbers of parts)."""
    if relation in SHAPE_PARTS:
        return tuple(NUMBER_WORDS[n] for n in (0, 3, 4, 5, 6, 8, 10, 12))
    if relation == "thing_shape":
        return SHAPES
    return tuple(dict.fromkeys(tuple(COLORS) + tuple(THING_COLORS.values())))  # thing_color, mixing


COUNTERFACTUAL_FACTS: tuple[Fact, ...] = tuple(f for f in FACTS if f.relation != "mix_parts")


def counterfactual(fact: Fact, rng: np.random.Generator, split: str = "train", distractors: int = 0,
                   facts: Sequence[Fact] = FACTS) -> tuple[str, str]:
    """(prompt, answer): a statement that contradicts `fact` (in a training statement form), up
    to `distractors` true statements of other facts around it, then the fact's question in a
    question form of `split`. The answer is the context's, not the world's."""
    pool = [a for a in _answer_pool(fact.relation) if a != fact.answer]
    wrong = pool[int(rng.integers(len(pool)))]
    held = fact.held_out("statement")
    forms = [f for i, f in enumerate(TEMPLATES[fact.relation][0]) if i not in held]
    statement = forms[int(rng.integers(len(forms)))].format(**{**fact.slots(), "a": wrong})
    others = [f for f in facts if f.subject != fact.subject]
    context = [statement]
    for j in rng.choice(len(others), size=distractors, replace=False):
        texts = fact_statements(others[int(j)], "train")
        context.append(texts[int(rng.integers(len(texts)))])
    order = rng.permutation(len(context))
    questions = fact_questions(fact, split)
    q = questions[int(rng.integers(len(questions)))][0]
    return " ".join([context[i] for i in order] + [qa_prompt(q)]), wrong


def counterfactual_items(n: int, seed: int = 0, split: str = "heldout", distractors: int = 2) -> list[RecallItem]:
    """n context-over-memory questions (family "counterfactual"): each answer contradicts a world
    fact and is stated only in the prompt; questions in the `split` question forms."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    _check_split(split)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        fact = COUNTERFACTUAL_FACTS[i % len(COUNTERFACTUAL_FACTS)]
        prompt, answer = counterfactual(fact, rng, split, int(rng.integers(distractors + 1)))
        items.append(RecallItem(prompt, answer, "counterfactual", fact.relation, "context", fact))
    return items


# the VQA kinds a caption answers: captions name each object's size, colour and shape, never where it is
CAPTION_KINDS = ("color", "count", "exists", "shape")


def chat_items(n: int, seed: int = 0, split: str = "test", one_word: bool = True,
               kinds: Sequence[str] | None = CAPTION_KINDS) -> list[RecallItem]:
    """n questions about a scene asked in the chat template: the scene's caption and the question
    in the user's message (with a one-word instruction when one_word), the reply to complete.
    Half VQA (family "vqa"), half knowledge (family "knowledge"), as `scene_items`. kinds: the
    VQA kinds asked (default: those the caption answers; None: every kind, position and relation
    included, which the caption does not state)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if kinds is not None and (isinstance(kinds, str) or not set(kinds) <= set(VQA_KINDS)):
        raise ValueError(f"kinds must be None or a list of VQA kinds from {VQA_KINDS}, got {kinds!r}")
    items: list[RecallItem] = []
    for world, rng, scene, q, a, kind, family in _scene_questions(seed, split, kinds):
        instruction = " " + ONE_WORD_INSTRUCTIONS[int(rng.integers(len(ONE_WORD_INSTRUCTIONS)))] if one_word else ""
        prompt = chat_prompt(f"{world.caption(scene)} {q}{instruction}")
        items.append(RecallItem(prompt, a if one_word else SENTENCE_ANSWER.format(a=a).rstrip("."), family, kind,
                                "chat", None))
        if len(items) == n:
            return items


# ----------------------------------------------------------------------------- the corpus
class WorldText:
    """The language model's corpus, generated: `documents(n)` gives n texts, each either a few
    world facts (statements and question-answer pairs) or a scene's caption followed by
    questions about it (VQA and knowledge questions).

    split="train": the facts' training forms, scenes from ShapesWorld's train split.
    split="heldout": the facts' held-out forms only, scenes from the test split: text the model
    never trained on, for perplexity.
    """

    def __init__(self, seed: int = 0, split: str = "train", fact_fraction: float = 0.5, facts_per_document: int = 3,
                 questions_per_scene: int = 2):
        _check_split(split)
        if not isinstance(fact_fraction, (int, float)) or isinstance(fact_fraction, bool) \
                or not 0.0 <= fact_fraction <= 1.0:
            raise ValueError(f"fact_fraction must be a number in [0, 1], got {fact_fraction!r}")
        for name, value in (("facts_per_document", facts_per_document), ("questions_per_scene", questions_per_scene)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.split, self.fact_fraction = split, float(fact_fraction)
        if facts_per_document > 4:  # four fact sentences already fill most of a 64-token context
            raise ValueError(f"facts_per_document must be at most 4 (longer documents outgrow the LLM's context), "
                             f"got {facts_per_document}")
        self.facts_per_document, self.questions_per_scene = facts_per_document, questions_per_scene
        self.rng = np.random.default_rng(seed)
        self.world = ShapesWorld(seed=seed, split="train" if split == "train" else "test")
        # every fact sentence this split may use: (text, fact) so a document can mix statements and QA
        self.fact_texts: list[str] = []
        for fact in FACTS:
            self.fact_texts += fact_statements(fact, split)
            self.fact_texts += [qa_text(q, a) for q, a in fact_questions(fact, split)]
            if fact.relation == "mixing":  # the pair in the other order too, never in the held-out forms
                statements = [i for i in range(len(TEMPLATES["mixing"][0])) if (i in fact.held_out("statement"))
                              == (split == "heldout")]
                self.fact_texts += [TEMPLATES["mixing"][0][i].format(**fact.slots((1, 0))) for i in statements]

    def __repr__(self) -> str:
        return f"WorldText(split={self.split!r}, fact_texts={len(self.fact_texts)}, fact_fraction={self.fact_fraction})"

    def fact_document(self) -> str:
        """A few fact sentences, drawn at random."""
        picks = self.rng.choice(len(self.fact_texts), size=self.facts_per_document, replace=False)
        return " ".join(self.fact_texts[i] for i in picks)

    def scene_document(self, scene: Scene | None = None) -> str:
        """A scene's caption, then a few questions about it with their answers (VQA or knowledge)."""
        scene = scene if scene is not None else self.world.sample(1)[0]
        questions = [(q, a) for q, a, _ in self.world.vqa(scene)] + [(q, a) for q, a, _ in knowledge_questions(scene)]
        k = min(self.questions_per_scene, len(questions))
        picks = self.rng.choice(len(questions), size=k, replace=False)
        return " ".join([self.world.caption(scene)] + [qa_text(*questions[i]) for i in picks])

    def chat_document(self, scene: Scene | None = None) -> str:
        """A conversation about a scene: the first user message gives its caption, each message
        asks a question (VQA or knowledge), half of them with a one-word instruction; or the
        user asks for a description and the reply is the caption."""
        scene = scene if scene is not None else self.world.sample(1)[0]
        questions = [(q, a) for q, a, _ in self.world.vqa(scene)] + [(q, a) for q, a, _ in knowledge_questions(scene)]
        k = min(int(self.rng.integers(1, self.questions_per_scene + 2)), len(questions))
        turns = []
        if self.rng.uniform() < 0.2:
            turns.append(("describe the scene.", self.world.caption(scene)))
        for i in self.rng.choice(len(questions), size=k, replace=False):
            q, a = questions[int(i)]
            one_word = bool(self.rng.uniform() < 0.5)
            instruction = " " + ONE_WORD_INSTRUCTIONS[int(self.rng.integers(len(ONE_WORD_INSTRUCTIONS)))] \
                if one_word else ""
            turns.append((f"{q}{instruction}", chat_reply(a, one_word)))
        if turns[0][0] != "describe the scene.":
            turns[0] = (f"{self.world.caption(scene)} {turns[0][0]}", turns[0][1])
        return chat_text(turns)

    def counterfactual_document(self, distractors: int = 2) -> str:
        """A statement that contradicts a world fact, up to `distractors` true ones, then the
        question answered from the context (`counterfactual`)."""
        fact = COUNTERFACTUAL_FACTS[int(self.rng.integers(len(COUNTERFACTUAL_FACTS)))]
        prompt, answer = counterfactual(fact, self.rng, self.split, int(self.rng.integers(distractors + 1)))
        return f"{prompt} {answer}."

    def documents(self, n: int) -> list[str]:
        """n documents, each a fact document with probability `fact_fraction`, else a scene document."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        return [self.fact_document() if self.rng.uniform() < self.fact_fraction else self.scene_document()
                for _ in range(n)]


def fact_words() -> set[str]:
    """Words the facts use that ShapesWorld's image-text generators never emit (corners, wheel,
    mixed ...): the mark of a fact sentence."""

    words: set[str] = set()
    for fact in FACTS:
        for text in fact_statements(fact, "train") + fact_statements(fact, "heldout"):
            words.update(split_words(text))
    return words - set(ShapesWorld.vocabulary())


def family_answers(items: Sequence[RecallItem]) -> dict[str, list[str]]:
    """Each family's answers, in item order (for a chance baseline per family)."""
    out: dict[str, list[str]] = {}
    for it in items:
        out.setdefault(it.family, []).append(it.answer)
    return out
