"""In-context episodes (chapter 09): one hidden rule per episode, templates that never leak from
the held-out pool into training, and k-shot questions whose answers follow from their prompts."""
import re

import numpy as np
import pytest

from minivlm.data import Tokenizer
from minivlm.data.incontext import (
    ATTRIBUTE_RULES,
    HELDOUT_TEMPLATES,
    TRAIN_CUE_WORDS,
    TRAIN_SEPS,
    Episodes,
    Template,
    answer_type,
    attribute_answer,
    draw_template,
    kshot_items,
    random_template,
)
from minivlm.data.shapesworld import COLORS, HELDOUT_COMPOSITIONS, SHAPES, SIZES

# Written out by hand, independently of the library's tables.
CORNERS = {"circle": "zero", "square": "four", "triangle": "three", "diamond": "four", "cross": "twelve",
           "star": "ten"}
OBJECT = re.compile(r"(?:a|the) (small|large) (\w+) (\w+)")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_world()


def units(doc: str, t: Template) -> list[tuple[str, str]] | None:
    """(content, answer) of each unit if `doc` is written entirely in template t, else None."""
    sep = re.escape(t.sep)
    before = re.escape(t.before) + " " if t.before else ""
    between = " " + re.escape(t.between) if t.between else ""  # no cue: the answer follows the content
    unit = re.compile(f"{before}(.+?){between} (\\S+?){sep}")
    out, pos = [], 0
    while pos < len(doc):
        m = unit.match(doc, pos)
        if m is None:
            return None
        out.append((m.group(1), m.group(2)))
        pos = m.end() + (1 if doc[m.end():m.end() + 1] == " " else 0)
    return out


def parse(doc: str, t: Template) -> list[tuple[str, str]]:
    us = units(doc, t)
    assert us, f"template {t} does not write {doc!r}"
    return us


def training_templates(n=2000, seed=0) -> list[Template]:
    rng = np.random.default_rng(seed)
    return [random_template(rng) for _ in range(n)]


def test_training_templates_never_use_a_heldout_cue_or_separator():
    drawn = training_templates()
    words = {w for t in drawn for w in (t.before + " " + t.between).split()}
    assert words - {":"} == set(TRAIN_CUE_WORDS)  # every cue word is used, nothing else
    assert {t.sep for t in drawn} == set(TRAIN_SEPS)
    assert len(set(drawn)) > 1000  # drawn per episode from a large space, not a short list
    held_words = {w for t in HELDOUT_TEMPLATES for w in (t.before + " " + t.between).split()} - {":"}
    assert held_words and not held_words & words
    assert not {t.sep for t in HELDOUT_TEMPLATES} & set(TRAIN_SEPS)
    rng = np.random.default_rng(1)
    assert {draw_template(rng, "heldout") for _ in range(300)} == set(HELDOUT_TEMPLATES)


def test_template_renders_units_and_queries():
    t = Template("in :", "out :", ";")
    assert t.unit("a red star", "red") == "in : a red star out : red;"
    assert t.unit("a red star") == "in : a red star out :"
    assert Template("", "is", ".").unit("x", "y") == "x is y."


def test_attribute_answers_by_hand():
    for shape, corners in CORNERS.items():
        assert attribute_answer("corners", "small", "red", shape) == corners
    assert attribute_answer("colour", "large", "blue", "star") == "blue"
    assert attribute_answer("shape", "large", "blue", "star") == "star"
    assert attribute_answer("size", "large", "blue", "star") == "large"
    with pytest.raises(ValueError, match="'colour'"):
        attribute_answer("color", "large", "blue", "star")


def test_attribute_episodes_follow_one_hidden_rule_in_a_training_template(tok):
    e = Episodes(seed=3, weights={"attribute": 1.0})
    rules_seen = set()
    for t in training_templates(300, seed=3):
        doc = e.attribute(int(e.rng.integers(2, 7)), t)
        assert tok.unk_id not in tok.encode(doc)
        us = parse(doc, t)
        assert 2 <= len(us) <= 6
        objects = [OBJECT.fullmatch(c).groups() for c, _ in us]
        assert all((c, s) not in HELDOUT_COMPOSITIONS for _, c, s in objects)
        rules = [r for r in ATTRIBUTE_RULES if all(attribute_answer(r, *o) == a for o, (_, a) in zip(objects, us))]
        assert rules, doc  # one rule explains every answer
        if len(rules) == 1:
            rules_seen.add(rules[0])
    assert rules_seen == set(ATTRIBUTE_RULES)


def test_keyvalue_episodes_bind_each_key_to_one_value_and_repeat_keys(tok):
    e = Episodes(seed=4, weights={"keyvalue": 1.0})
    repeats = 0
    for t in training_templates(300, seed=4):
        doc = e.keyvalue(int(e.rng.integers(2, 7)), t)
        assert tok.unk_id not in tok.encode(doc)
        us = parse(doc, t)
        bound = {}
        for key, value in us:
            assert re.fullmatch(r"<extra_\d+>", key)
            assert value in tuple(COLORS) + SHAPES
            repeats += key in bound
            assert bound.setdefault(key, value) == value, doc
    assert repeats > 200  # keys do come back, so their values can be copied


def test_binding_episodes_ask_about_their_own_definitions(tok):
    e = Episodes(seed=5, weights={"binding": 1.0})
    for _ in range(200):
        doc = e.document()
        assert tok.unk_id not in tok.encode(doc)
        defs = dict((n, (s, c, sh)) for n, s, c, sh in re.findall(r"a (<extra_\d+>) is a (\w+) (\w+) (\w+)\.", doc))
        questions = re.findall(r"question: what (colour|shape|size) is the (<extra_\d+>)\? answer: (\w+)\.", doc)
        assert defs and questions, doc
        for rule, name, answer in questions:
            assert attribute_answer(rule, *defs[name]) == answer


def test_episodes_are_seeded():
    assert [Episodes(7).document() for _ in range(1)] == [Episodes(7).document()]
    a, b = Episodes(7), Episodes(8)
    assert [a.document() for _ in range(20)] != [b.document() for _ in range(20)]


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("k", [0, 1, 4])
def test_attribute_kshot_items_answer_by_the_demonstrated_rule(tok, split, k):
    items = kshot_items("attribute", k, 40, seed=2, split=split)
    assert len(items) == 40 and {it.rule for it in items} == set(ATTRIBUTE_RULES)
    for it in items:
        assert tok.unk_id not in tok.encode(f"{it.prompt} {it.answer}")
        # the prompt is k units and the query: k + 1 objects; every demonstration follows the rule
        objects = OBJECT.findall(it.prompt)
        assert len(objects) == k + 1
        assert attribute_answer(it.rule, *objects[-1]) == it.answer
        assert it.answer in it.answer_type == answer_type("attribute", it.rule)
        query = it.prompt[it.prompt.rindex("a " + " ".join(objects[-1])):]
        if split == "heldout":
            assert any(it.prompt.endswith(tp.unit(" ".join(("a",) + objects[-1]))) for tp in HELDOUT_TEMPLATES)
        else:
            assert not set(query.split()[4:]) - set(TRAIN_CUE_WORDS) - {":"}, query
        assert it.k == k and it.templates == split


def test_keyvalue_items_ask_a_key_from_their_demonstrations():
    for k in (1, 2, 4):
        for it in kshot_items("keyvalue", k, 30, seed=1, split="heldout"):
            keys = re.findall(r"<extra_\d+>", it.prompt)
            assert len(keys) == k + 1 and len(set(keys[:-1])) == k and keys[-1] in keys[:-1]
            before = it.prompt.split(keys[-1])[1]  # what followed the query key's first occurrence
            assert it.answer in re.findall(r"\w+", before)[:4]
    with pytest.raises(ValueError, match="k >= 1"):
        kshot_items("keyvalue", 0, 3)


def test_binding_and_count_items():
    for it in kshot_items("binding", 3, 30, seed=1):
        defs = dict((n, (s, c, sh)) for n, s, c, sh in re.findall(r"a (<extra_\d+>) is a (\w+) (\w+) (\w+)\.",
                                                                      it.prompt))
        name = re.findall(r"<extra_\d+>", it.prompt)[-1]
        assert len(defs) == 3 and attribute_answer(it.rule, *defs[name]) == it.answer
    numbers = {"one": 1, "two": 2, "three": 3, "four": 4}
    for it in kshot_items("count", 2, 30, seed=1):
        # every number word in the prompt answers a demonstration: the query holds the other objects
        objects = len(re.findall(r"\b(?:a|an) \w+ (?:" + "|".join(SHAPES) + r")\b", it.prompt))
        shown = [numbers[w] for w in re.findall(r"\w+", it.prompt) if w in numbers]
        assert len(shown) == 2 and numbers[it.answer] == objects - sum(shown), it.prompt


def test_kshot_items_are_seeded_and_fresh():
    a = kshot_items("attribute", 2, 20, seed=1)
    assert a == kshot_items("attribute", 2, 20, seed=1)
    assert a != kshot_items("attribute", 2, 20, seed=2)
    objects = [OBJECT.search(it.prompt).groups() for it in kshot_items("attribute", 0, 200, seed=0)]
    assert {o[0] for o in objects} == set(SIZES) and {o[1] for o in objects} == set(COLORS)
    assert any((c, s) in HELDOUT_COMPOSITIONS for _, c, s in objects)  # evaluation may name any pair


@pytest.mark.parametrize("call,needle", [
    (lambda: kshot_items("colour", 1, 3), "'colour'"),
    (lambda: kshot_items("attribute", -1, 3), "-1"),
    (lambda: kshot_items("attribute", 1, 0), "n must be"),
    (lambda: kshot_items("attribute", 1, 3, split="test"), "'test'"),
    (lambda: kshot_items("attribute", 40, 3), "at most 32"),
    (lambda: Episodes(weights={"facts": 1.0}), "families"),
    (lambda: Episodes(max_units=1), "max_units"),
])
def test_bad_arguments_are_rejected(call, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        call()
