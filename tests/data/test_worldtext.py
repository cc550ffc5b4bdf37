"""World text (chapter 09): the facts, their held-out phrasings, the corpus, and the promise that
no image-text generator of ShapesWorld ever states a fact."""
import re

import pytest

from minivlm.data import COLORS, SHAPES, Obj, Scene, ShapesBench, ShapesWorld, Tokenizer
from minivlm.data.shapesworld import NUMBER_WORDS, PLURALS, SPLITS
from minivlm.data.tokenizer import split_words
from minivlm.data.worldtext import (
    FACTS,
    HELDOUT_QUESTIONS,
    HELDOUT_STATEMENTS,
    TEMPLATES,
    WorldText,
    fact_questions,
    fact_statements,
    fact_words,
    knowledge_questions,
    qa_prompt,
    qa_text,
    recall_items,
    scene_items,
)

# Written out by hand, independently of the library's tables.
CORNERS = {"circle": "zero", "square": "four", "triangle": "three", "diamond": "four", "cross": "twelve",
           "star": "ten"}
MIX_PARTS = {"purple": "red and blue", "orange": "red and yellow", "green": "blue and yellow",
             "cyan": "green and blue", "pink": "red and white", "grey": "black and white"}
SOME_FACTS = {("corners", "triangle"): "three", ("sides", "star"): "ten", ("corners", "cross"): "twelve",
              ("sides", "circle"): "zero", ("points", "star"): "five", ("arms", "cross"): "four",
              ("thing_shape", "a wheel"): "circle", ("thing_shape", "a starfish"): "star",
              ("thing_color", "grass"): "green", ("thing_color", "the sky"): "blue",
              ("mixing", ("red", "blue")): "purple", ("mixing", ("black", "white")): "grey",
              ("mix_parts", "purple"): "red and blue", ("mix_parts", "cyan"): "green and blue"}
N_TRAIN_DOCS = 3000


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_world()


@pytest.fixture(scope="module")
def train_docs():
    return WorldText(seed=11, split="train").documents(N_TRAIN_DOCS)


def all_forms(fact, kind):
    """Every phrasing of `fact` of this kind ("statement" / "question"), index -> text."""
    forms = TEMPLATES[fact.relation][0 if kind == "statement" else 1]
    return {i: f.format(**fact.slots()) for i, f in enumerate(forms)}


def swapped_statements(fact):
    """A mixture's statements with its two colours in the other order (the corpus uses both)."""
    if fact.relation != "mixing":
        return {}
    return {i: f.format(**fact.slots((1, 0))) for i, f in enumerate(TEMPLATES["mixing"][0])}


def every_fact_text():
    """Every statement (both orders of a mixture) and every question-answer text of every fact."""
    out = set()
    for fact in FACTS:
        out |= set(all_forms(fact, "statement").values()) | set(swapped_statements(fact).values())
        out |= {qa_text(q, fact.answer) for q in all_forms(fact, "question").values()}
    return out


def parse_fact_document(doc, texts):
    """Split a fact document into fact texts from `texts` (joined by single spaces), or None."""
    def rest(p):
        if p == len(doc):
            return []
        for t in texts:
            if doc.startswith(t, p) and (p + len(t) == len(doc) or doc[p + len(t)] == " "):
                tail = rest(p + len(t) + 1) if p + len(t) < len(doc) else []
                if tail is not None:
                    return [t] + tail
        return None
    return rest(0)


OBJECT_RE = re.compile(r"\b(?:a|an) (?:(small|large) )?(" + "|".join(COLORS) + ") (" + "|".join(SHAPES) + r")\b")


def parse_caption(caption):
    """The objects a caption names, left to right, as a Scene, if the caption is exactly one of
    the ShapesWorld paraphrases of that scene; else None."""
    found = OBJECT_RE.findall(caption)
    if not found:
        return None
    n = len(found)
    objs = tuple(Obj(shape, color, size or "small", (i + 1) / (n + 1), 0.5, 0.05)
                 for i, (size, color, shape) in enumerate(found))
    scene = Scene(objs)
    return scene if caption in ShapesWorld.captions(scene) else None


# ----------------------------------------------------------------------------- vocabulary
def test_tokenizer_size_is_unchanged(tok):
    assert len(tok) == 603


def test_every_text_encodes_without_unk(tok, train_docs):
    texts = list(train_docs) + WorldText(seed=2, split="heldout").documents(1000)
    texts += sorted(every_fact_text())
    for split in ("train", "heldout"):
        texts += [f"{it.prompt} {it.answer}." for it in recall_items(split)]
    for split in ("train", "test", "heldout"):
        texts += [f"{it.prompt} {it.answer}." for it in scene_items(100, seed=5, split=split)]
    unk = [t for t in texts if tok.unk_id in tok.encode(t)]
    assert not unk, f"{len(unk)} texts with <unk>, e.g. {unk[:3]}"
    assert len(texts) > N_TRAIN_DOCS + 1000


def test_all_documents_fit_the_64_token_context(tok, train_docs):
    docs = list(train_docs) + WorldText(seed=4, split="heldout").documents(1000)
    longest = max(len(tok.encode(d, add_bos=True, add_eos=True)) for d in docs)
    assert longest <= 64, longest


# ----------------------------------------------------------------------------- the facts
def test_answers_of_some_facts_by_hand():
    by_key = {(f.relation, f.subject): f for f in FACTS}
    for key, answer in SOME_FACTS.items():
        assert by_key[key].answer == answer, key
    for shape, n in CORNERS.items():
        assert by_key[("corners", shape)].answer == n
        assert by_key[("sides", shape)].answer == n
    for color, parts in MIX_PARTS.items():
        assert by_key[("mix_parts", color)].answer == parts
    assert len(by_key) == len(FACTS)  # no fact stated twice


def test_train_and_heldout_forms_partition_every_fact():
    for fact in FACTS:
        statements, questions = all_forms(fact, "statement"), all_forms(fact, "question")
        held_s, held_q = fact.held_out("statement"), fact.held_out("question")
        assert len(set(held_s)) == HELDOUT_STATEMENTS >= 1 and len(set(held_q)) == HELDOUT_QUESTIONS >= 1
        assert fact_statements(fact, "heldout") == [statements[i] for i in sorted(held_s)]
        assert fact_statements(fact, "train") == [s for i, s in statements.items() if i not in held_s]
        assert [q for q, _ in fact_questions(fact, "heldout")] == [questions[i] for i in sorted(held_q)]
        assert [q for q, _ in fact_questions(fact, "train")] == [q for i, q in questions.items() if i not in held_q]
        assert all(a == fact.answer for _, a in fact_questions(fact, "train") + fact_questions(fact, "heldout"))
        assert fact_questions(fact, "heldout"), fact  # every fact has a held-out question form
        assert fact_statements(fact, "train") and fact_questions(fact, "train"), fact  # and is taught


def test_heldout_forms_are_phrasings_trained_with_other_facts():
    """A held-out form is new for *this* fact only: the same template (with the part word of the
    shape relations left open) is trained on with some other fact of the family."""
    def generic(relation, kind, i):
        form = TEMPLATES[relation][0 if kind == "statement" else 1][i]
        return form.replace(relation, "{part}") if relation in ("corners", "sides", "points", "arms") else form

    for kind in ("statement", "question"):
        trained = set()
        for fact in FACTS:
            n = len(TEMPLATES[fact.relation][0 if kind == "statement" else 1])
            trained |= {(fact.family, generic(fact.relation, kind, i)) for i in range(n)
                        if i not in fact.held_out(kind)}
        for fact in FACTS:
            for i in fact.held_out(kind):
                assert (fact.family, generic(fact.relation, kind, i)) in trained, (fact, kind, i)


def test_training_fact_texts_hold_no_heldout_form_and_every_training_form():
    train, held = WorldText(seed=0, split="train"), WorldText(seed=0, split="heldout")
    assert not set(train.fact_texts) & set(held.fact_texts)
    for fact in FACTS:
        statements, swapped = all_forms(fact, "statement"), swapped_statements(fact)
        questions = {i: qa_text(q, fact.answer) for i, q in all_forms(fact, "question").items()}
        for forms, kind in ((statements, "statement"), (swapped, "statement"), (questions, "question")):
            for i, text in forms.items():
                where = held if i in fact.held_out(kind) else train
                other = train if where is held else held
                assert text in where.fact_texts and text not in other.fact_texts, (fact, text)
    assert set(train.fact_texts) | set(held.fact_texts) == every_fact_text()


def test_heldout_forms_never_occur_in_training_documents(train_docs):
    # A held-out statement may not start any sentence of the training text (it would be that
    # very sentence); a held-out question may not occur anywhere.
    corpus = "\n" + "\n".join(train_docs) + "\n"
    n_fact_docs = sum(parse_fact_document(d, WorldText(0, "train").fact_texts) is not None for d in train_docs[:300])
    assert 100 < n_fact_docs < 200  # the sample really holds fact documents (fact_fraction=0.5)
    for fact in FACTS:
        for s in fact_statements(fact, "heldout") + [swapped_statements(fact)[i] for i in fact.held_out("statement")
                                                     if fact.relation == "mixing"]:
            assert "\n" + s not in corpus and ". " + s not in corpus, (fact, s)
        for q, _ in fact_questions(fact, "heldout"):
            assert q not in corpus, (fact, q)
            assert qa_prompt(q) not in corpus, (fact, q)


def test_heldout_statements_are_not_even_part_of_a_training_sentence(train_docs):
    """A held-out form must not hide inside a training form ("the colour of grass is green."
    once contained the held-out "grass is green.")."""
    corpus = "\n".join(train_docs)
    leaks = [s for fact in FACTS for s in fact_statements(fact, "heldout") if s in corpus]
    leaks += [it.prompt + " " + it.answer for it in recall_items("heldout")
              if it.form == "cloze" and it.prompt + " " + it.answer in corpus]
    assert not leaks, leaks


def test_heldout_documents_use_only_heldout_forms():
    held = WorldText(seed=3, split="heldout", fact_fraction=1.0)
    heldout_texts = set()
    for fact in FACTS:
        heldout_texts |= set(fact_statements(fact, "heldout"))
        heldout_texts |= {qa_text(q, a) for q, a in fact_questions(fact, "heldout")}
        heldout_texts |= {swapped_statements(fact)[i] for i in fact.held_out("statement") if fact.relation == "mixing"}
    texts = sorted(heldout_texts, key=len, reverse=True)
    for doc in held.documents(300):
        parts = parse_fact_document(doc, texts)
        assert parts is not None and len(parts) == held.facts_per_document, doc
    # scene documents of the held-out split ask no fact question in a trained form either
    trained = set(WorldText(seed=0, split="train").fact_texts)
    for doc in WorldText(seed=3, split="heldout", fact_fraction=0.0).documents(300):
        assert not any(t in doc for t in trained if t.startswith("question:")), doc


def test_recall_items_ask_each_fact_in_exactly_its_split_forms():
    for split in ("train", "heldout"):
        texts = set(WorldText(seed=0, split=split).fact_texts)
        items = recall_items(split)
        for it in items:
            assert it.answer == it.fact.answer and it.family == it.fact.family and it.relation == it.fact.relation
            if it.form == "question":
                assert it.prompt.startswith("question: ") and it.prompt.endswith(" answer:")
                assert f"{it.prompt} {it.answer}." in texts, it  # the prompt is a real question of the split
            else:
                assert it.form == "cloze"
                statement = f"{it.prompt} {it.answer}."  # the statement with its answer cut off
                assert statement in fact_statements(it.fact, split), it
        for key, answer in SOME_FACTS.items():
            mine = [it for it in items if (it.relation, it.fact.subject) == key]
            assert mine and all(it.answer == answer for it in mine), key
        for fact in FACTS:
            mine = [it for it in items if it.fact == fact]
            assert sum(it.form == "question" for it in mine) == len(fact_questions(fact, split))
            clozes = [s for s in fact_statements(fact, split) if s.endswith(f" {fact.answer}.")]
            assert sum(it.form == "cloze" for it in mine) == len(clozes)
    held = recall_items()  # default: held out
    assert {it.prompt for it in held} == {it.prompt for it in recall_items("heldout")}
    assert not {it.prompt for it in held} & {it.prompt for it in recall_items("train")}
    assert {it.family for it in held} == {"shape", "thing_shape", "thing_color", "mixing"}


def test_cloze_prompt_by_hand():
    items = recall_items("train") + recall_items("heldout")
    prompts = {(it.prompt, it.answer) for it in items if it.form == "cloze"}
    assert ("a wheel looks like a", "circle") in prompts
    assert ("a circle is the shape of", "a wheel") not in prompts  # the answer comes first: not a cloze
    assert ("every triangle has", "three") not in prompts  # "... three corners.": not a cloze
    assert ("red and blue mixed make", "purple") in prompts


def test_qa_prompt_is_qa_text_up_to_the_answer():
    assert qa_text("what shape is a coin?", "circle") == "question: what shape is a coin? answer: circle."
    assert qa_prompt("what shape is a coin?") == "question: what shape is a coin? answer:"


# ----------------------------------------------------------------------------- facts about a scene
def test_knowledge_questions_on_a_scene_built_by_hand():
    scene = Scene((Obj("triangle", "red", "small", 0.2, 0.2, 0.1), Obj("square", "green", "large", 0.5, 0.2, 0.1),
                   Obj("star", "green", "small", 0.8, 0.2, 0.1), Obj("square", "cyan", "small", 0.5, 0.8, 0.1)))
    got = sorted(knowledge_questions(scene))
    want = sorted([
        ("how many corners does the red object have?", "three", "corners"),
        ("how many sides does the red object have?", "three", "sides"),
        ("how many corners does the cyan object have?", "four", "corners"),
        ("how many sides does the cyan object have?", "four", "sides"),
        # green appears twice: never "the green object"; the star is the only star and green is a mixture
        ("what is mixed to make the colour of the star?", "blue and yellow", "mix_parts"),
    ])
    assert got == want


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
def test_knowledge_questions_on_random_scenes(split):
    world = ShapesWorld(seed=8, split=split)
    asked = 0
    for scene in world.sample(300):
        colors, shapes = [o.color for o in scene.objects], [o.shape for o in scene.objects]
        for q, a, rel in knowledge_questions(scene):
            m = re.fullmatch(r"how many (corners|sides) does the (\w+) object have\?", q)
            if m:
                assert rel == m.group(1) and colors.count(m.group(2)) == 1, q
                assert a == CORNERS[shapes[colors.index(m.group(2))]], (scene, q, a)
            else:
                m = re.fullmatch(r"what is mixed to make the colour of the (\w+)\?", q)
                assert m and rel == "mix_parts" and shapes.count(m.group(1)) == 1, q
                assert a == MIX_PARTS[colors[shapes.index(m.group(1))]], (scene, q, a)
            asked += 1
        # every object with a unique colour is asked about (corners and sides)
        n_unique = sum(colors.count(c) == 1 for c in colors)
        assert sum(q.startswith("how many") for q, _, _ in knowledge_questions(scene)) == 2 * n_unique
    assert asked > 300


def test_scene_items_alternate_families_and_start_with_a_caption():
    items = scene_items(60, seed=2, split="test")
    assert len(items) == 60
    assert [it.family for it in items] == ["vqa", "knowledge"] * 30
    checked = {"vqa": 0, "knowledge": 0}
    for it in items:
        assert it.form == "scene" and it.fact is None
        caption, question = it.prompt.split(" question: ")
        assert question.endswith("? answer:")
        question = question[: -len(" answer:")]
        scene = parse_caption(caption)
        assert scene is not None, it.prompt
        colors, shapes = [o.color for o in scene.objects], [o.shape for o in scene.objects]
        if it.family == "knowledge":
            assert (question, it.answer, it.relation) in knowledge_questions(scene), it
            checked["knowledge"] += 1
        elif m := re.fullmatch(r"what color is the (\w+)\?", question):
            assert it.answer == colors[shapes.index(m.group(1))]
            checked["vqa"] += 1
        elif m := re.fullmatch(r"what shape is the (\w+) object\?", question):
            assert it.answer == shapes[colors.index(m.group(1))]
            checked["vqa"] += 1
        elif question == "how many shapes are there?":
            assert it.answer == NUMBER_WORDS[len(scene)]
            checked["vqa"] += 1
    assert checked["knowledge"] == 30 and checked["vqa"] >= 5
    assert scene_items(10, seed=2, split="test") == items[:10]
    assert scene_items(10, seed=3, split="test") != items[:10]


# ----------------------------------------------------------------------------- the corpus
def test_documents_are_deterministic_by_seed_and_differ_across_seeds():
    for split in ("train", "heldout"):
        a = WorldText(seed=5, split=split).documents(40)
        assert a == WorldText(seed=5, split=split).documents(40)
        assert a != WorldText(seed=6, split=split).documents(40)
        assert len(set(a)) > 35


def test_fact_fraction_decides_the_kind_of_document():
    texts = set(WorldText(0, "train").fact_texts)
    texts = sorted(texts, key=len, reverse=True)
    facts_only = WorldText(seed=1, fact_fraction=1.0).documents(100)
    assert all(parse_fact_document(d, texts) is not None for d in facts_only)
    scenes_only = WorldText(seed=1, fact_fraction=0.0, questions_per_scene=2).documents(100)
    for d in scenes_only:
        caption = d.split(" question: ")[0]
        assert parse_caption(caption) is not None, d
        assert d.count("question: ") == 2, d
    mixed = WorldText(seed=1).documents(600)
    share = sum(parse_fact_document(d, texts) is not None for d in mixed) / len(mixed)
    assert 0.42 < share < 0.58, share


def test_documents_of_a_world_text_continue_the_stream():
    w = WorldText(seed=9)
    first, second = w.documents(20), w.documents(20)
    assert first + second == WorldText(seed=9).documents(40)


@pytest.mark.parametrize("call, value", [
    (lambda: WorldText(split="test"), "'test'"),
    (lambda: WorldText(fact_fraction=1.5), "1.5"),
    (lambda: WorldText(fact_fraction=True), "True"),
    (lambda: WorldText(facts_per_document=0), "0"),
    (lambda: WorldText(questions_per_scene=2.0), "2.0"),
    (lambda: WorldText().documents(0), "0"),
    (lambda: WorldText().documents(2.5), "2.5"),
    (lambda: WorldText().documents(True), "True"),
    (lambda: scene_items(0), "0"),
    (lambda: scene_items("3"), "'3'"),
    (lambda: fact_statements(FACTS[0], "val"), "'val'"),
    (lambda: fact_questions(FACTS[0], "training"), "'training'"),
    (lambda: recall_items("test"), "'test'"),
])
def test_bad_arguments_raise_value_error_naming_the_value(call, value):
    with pytest.raises(ValueError, match=re.escape(value)):
        call()


# ----------------------------------------------------------------------------- no image text states a fact
def test_fact_words_are_the_facts_own_words():
    words = fact_words()
    assert {"corners", "sides", "wheel", "grass", "mixed", "mixture", "starfish", "twelve"} <= words
    assert not words & set(ShapesWorld.vocabulary())
    # every fact statement holds at least one of them: no fact can hide in the world's words
    for fact in FACTS:
        for s in fact_statements(fact, "train") + fact_statements(fact, "heldout"):
            assert set(split_words(s)) & words, s


def image_texts_of_shapesworld(seed):
    texts = []
    for split in SPLITS:
        world = ShapesWorld(seed=seed, split=split, noise=0.3)
        scenes = world.sample(150)
        for scene in scenes:
            texts += ShapesWorld.captions(scene) + [world.caption(scene), world.mixed_caption(scene, 0.5)]
            texts += sorted(ShapesWorld.true_captions(scene))
            texts.append(world.relational_caption(scene) or "")
            for kind in ShapesWorld.HARD_NEGATIVE_KINDS:
                texts += list(world.hard_negative(scene, kind) or ())
            texts += [t for q, a, _ in world.vqa(scene) for t in (q, a)]
        texts += world.noisy_captions(scenes, noise=0.5)[0] + world.batch(20)["captions"]
        sample = world.vqa_sample(60)
        texts += sample["questions"] + sample["answers"]
    return texts


def image_texts_of_shapesbench(seed):
    bench, texts = ShapesBench(seed=seed), []
    for split in ("seen", "heldout"):
        texts += bench.classification(split, n_per_class=1)["class_names"]
    texts += bench.retrieval()["captions"]
    texts += [c for pair in bench.swap()["captions"] for c in pair]
    vqa = bench.vqa()
    texts += vqa["questions"] + vqa["answers"]
    texts += bench.itm()["captions"]
    texts += [c for pair in bench.hard_itm()["captions"] for c in pair]
    texts += [r for refs in bench.captioning()["references"] for r in refs]
    return texts


@pytest.mark.parametrize("source", ["shapesworld", "shapesbench"])
def test_no_image_text_generator_states_a_fact(source):
    texts = image_texts_of_shapesworld(21) if source == "shapesworld" else (
        image_texts_of_shapesbench(1234) + image_texts_of_shapesbench(77))
    assert len(texts) > 3000
    forbidden, vocabulary = fact_words(), set(ShapesWorld.vocabulary())
    for text in texts:
        words = set(split_words(text))
        assert not words & forbidden, (text, words & forbidden)
        assert words <= vocabulary, (text, words - vocabulary)  # fact_words() relies on vocabulary() being complete
    corpus = "\n".join(texts)
    stated = [s for s in every_fact_text() if s in corpus]
    assert not stated, stated[:5]
    # the check has teeth: the world's words do appear, and so would a fact statement
    assert "circle" in corpus and "purple" in corpus


def test_shapes_words_and_plurals_used_by_the_facts_are_the_worlds():
    shapes = {f.subject for f in FACTS if f.family == "shape"}
    assert shapes == set(SHAPES)
    for fact in FACTS:
        if fact.family == "shape":
            assert fact.slots()["p"] == PLURALS[fact.subject]
        if fact.family == "thing_shape":
            assert fact.answer in SHAPES


def test_chat_items_ask_only_what_the_caption_states_by_default():
    from minivlm.data.worldtext import CAPTION_KINDS, chat_items

    items = chat_items(80, seed=2)
    vqa = [it for it in items if it.family == "vqa"]
    assert vqa and {it.relation for it in vqa} <= set(CAPTION_KINDS)
    every = chat_items(200, seed=2, kinds=None)
    assert {"position", "relation"} & {it.relation for it in every}
    with pytest.raises(ValueError, match="kinds"):
        chat_items(4, kinds=("colour",))
