"""ShapesBench: fixed, correct evaluation sets."""
import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from minivlm.data import HELDOUT_COMPOSITIONS, ShapesBench, ShapesWorld
from minivlm.data.shapesworld import (
    ALL_COMPOSITIONS,
    COLORS,
    RELATION_PHRASES,
    SEEN_COMPOSITIONS,
    SHAPES,
    VQA_ANSWER_VOCAB,
    VQA_KINDS,
)
from minivlm.data.tokenizer import Tokenizer
from minivlm.eval import normalize_answer

# The independent VQA oracle lives next door; load it by path (the test dirs are not packages).
_spec = importlib.util.spec_from_file_location("_shapesworld_tests", Path(__file__).with_name("test_shapesworld.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_answer = _mod._answer


@pytest.fixture(scope="module")
def bench():
    return ShapesBench(image_size=16, seed=1234)


def test_classification(bench):
    seen = bench.classification("seen", n_per_class=2)
    assert seen["images"].shape == (2 * len(SEEN_COMPOSITIONS), 3, 16, 16)
    assert seen["class_names"][0] == f"{ALL_COMPOSITIONS[0][0]} {ALL_COMPOSITIONS[0][1]}"
    assert len(seen["class_names"]) == len(seen["classes"]) == 48
    for label, scene in zip(seen["labels"].tolist(), seen["scenes"]):
        assert len(scene) == 1 and scene.objects[0].composition == seen["classes"][label]
    assert set(seen["labels"].tolist()) == {ALL_COMPOSITIONS.index(p) for p in SEEN_COMPOSITIONS}
    held = bench.classification("heldout", n_per_class=3)
    assert held["images"].shape[0] == 3 * len(HELDOUT_COMPOSITIONS)
    assert {held["classes"][i] for i in held["labels"].tolist()} == set(HELDOUT_COMPOSITIONS)
    # fixed: the same data on every call
    assert torch.equal(held["images"], bench.classification("heldout", n_per_class=3)["images"])
    with pytest.raises(ValueError, match="'seen' or 'heldout'"):
        bench.classification("train")


def test_retrieval(bench):
    r = bench.retrieval(n=64)
    assert r["images"].shape == (64, 3, 16, 16) and len(set(r["captions"])) == 64
    world = ShapesWorld(image_size=16)
    for cap, scene in zip(r["captions"], r["scenes"]):
        assert cap in world.captions(scene)
    assert torch.equal(r["images"], world.render(r["scenes"]))
    assert r["captions"] == bench.retrieval(n=64)["captions"]
    with pytest.raises(ValueError, match=">= 1, got 0"):
        bench.retrieval(n=0)


def test_swap(bench):
    s = bench.swap(n=40)
    assert s["images"].shape == (40, 2, 3, 16, 16)
    rels = Counter()
    for (c0, c1), (s0, s1) in zip(s["captions"], s["scenes"]):
        assert sorted(c0.split()) == sorted(c1.split()) and c0 != c1  # same words, other meaning
        a0, b0 = s0.objects
        a1, b1 = s1.objects
        assert (a0.x, a0.y) == (b1.x, b1.y) and (b0.x, b0.y) == (a1.x, a1.y)  # positions swapped
        assert (a0.composition, a0.size, a0.radius) == (a1.composition, a1.size, a1.radius)
        rel = "to the left of" if "to the left of" in c0 else "above"
        rels[rel] += 1
        q = lambda c: re.sub(r"^an? (\w+ \w+) (.+) an? (\w+ \w+)$", r"is the \1 \2 the \3?", c)
        assert _answer(s0, q(c0)) == "yes" and _answer(s1, q(c0)) == "no"
        assert _answer(s1, q(c1)) == "yes" and _answer(s0, q(c1)) == "no"
        assert all(o.composition not in HELDOUT_COMPOSITIONS for o in s0.objects)
    assert rels["to the left of"] > 5 and rels["above"] > 5
    world = ShapesWorld(image_size=16)
    assert torch.equal(s["images"][:, 1], world.render([p[1] for p in s["scenes"]]))


def test_vqa(bench):
    v = bench.vqa(n=60)
    assert v["images"].shape == (60, 3, 16, 16) and len(v["questions"]) == len(v["answers"]) == 60
    assert Counter(v["kinds"]) == {k: 10 for k in ("color", "shape", "count", "exists", "relation", "position")}
    for q, a, scene in zip(v["questions"], v["answers"], v["scenes"]):
        assert _answer(scene, q) == a
    yes_no = [a for a, k in zip(v["answers"], v["kinds"]) if k in ("exists", "relation")]
    assert 0.25 < yes_no.count("yes") / len(yes_no) < 0.75
    assert normalize_answer(v["answers"][0]) == normalize_answer(v["answers"][0].upper() + ".")
    with pytest.raises(ValueError, match="kinds"):
        bench.vqa(n=4, kinds=("colour",))


def test_bench_errors():
    with pytest.raises(ValueError, match=">= 8"):
        ShapesBench(image_size=4)
    with pytest.raises(ValueError, match="seed"):
        ShapesBench(seed=-1)


# ----------------------------------------------------------------------------- chapter 03: ITM and VQA sampling
_NAMED = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


def named_objects(caption: str) -> set[str]:
    """The "colour shape" names a caption mentions ("a small red circle and a blue star" -> both)."""
    return {f"{c} {s}" for c, s in _NAMED.findall(caption)}


def is_relational(caption: str) -> bool:
    return any(phrase in caption for phrase in RELATION_PHRASES.values())


def true_captions(world: ShapesWorld, scene) -> set[str]:
    """Everything the bench may say truthfully about a scene: its paraphrases and its true relations."""
    return set(world.captions(scene)) | {world.describe_relation(scene, i, r, j) for i, r, j in scene.relations()}


def test_itm(bench):
    d = bench.itm(n=200)
    assert d["images"].shape == (200, 3, 16, 16) and len(d["captions"]) == len(d["scenes"]) == 200
    labels = d["labels"]
    assert labels.dtype == torch.long and set(labels.tolist()) <= {0, 1}
    assert 0.35 < labels.float().mean().item() < 0.65  # half mismatched, ±4 binomial sigma
    world = ShapesWorld(image_size=16)
    assert torch.equal(d["images"], world.render(d["scenes"]))
    kinds = Counter()
    for caption, label, scene in zip(d["captions"], labels.tolist(), d["scenes"]):
        assert named_objects(caption)  # every caption names at least one object
        kinds[(label, is_relational(caption))] += 1
        if label == 1:
            assert caption in true_captions(world, scene), (caption, scene.names)
            assert named_objects(caption) <= set(scene.names)
        else:
            assert caption not in true_captions(world, scene), (caption, scene.names)
            assert named_objects(caption) != set(scene.names), (caption, scene.names)
    # both labels come with paraphrases and with relations
    assert min(kinds.values()) > 5 and len(kinds) == 4, kinds
    again = bench.itm(n=200)
    assert again["captions"] == d["captions"] and torch.equal(again["labels"], labels)
    assert torch.equal(ShapesBench(image_size=16, seed=1234).itm(n=200)["images"], d["images"])
    assert ShapesBench(image_size=16, seed=99).itm(n=200)["captions"] != d["captions"]
    with pytest.raises(ValueError, match=">= 1, got 0"):
        bench.itm(n=0)


def test_vqa_sample_kinds_in_equal_shares_and_answers_in_the_vocabulary():
    world = ShapesWorld(seed=5, image_size=16)
    out = world.vqa_sample(60)
    assert set(out) == {"scenes", "questions", "answers", "kinds"}
    assert out["kinds"] == [VQA_KINDS[i % len(VQA_KINDS)] for i in range(60)]  # cycling: equal shares
    assert Counter(out["kinds"]) == {k: 10 for k in VQA_KINDS}
    for q, a, kind, scene in zip(out["questions"], out["answers"], out["kinds"], out["scenes"]):
        assert a in VQA_ANSWER_VOCAB
        assert _answer(scene, q) == a
        if kind == "relation":
            assert len(scene) >= 2
    sub = world.vqa_sample(7, kinds=("count", "relation"))
    assert Counter(sub["kinds"]) == {"count": 4, "relation": 3}
    assert all(a in VQA_ANSWER_VOCAB for a in sub["answers"])
    # a world of one-object scenes still asks relation questions (about two-object scenes)
    single = ShapesWorld(seed=1, image_size=16, max_objects=1).vqa_sample(6)
    assert [len(s) for s, k in zip(single["scenes"], single["kinds"]) if k == "relation"] == [2]
    # deterministic per seed
    assert ShapesWorld(seed=5, image_size=16).vqa_sample(60)["questions"] == out["questions"]
    with pytest.raises(ValueError, match="kinds"):
        world.vqa_sample(4, kinds=("colour",))
    with pytest.raises(ValueError, match="kinds"):
        world.vqa_sample(4, kinds=())
    with pytest.raises(ValueError, match=">= 1, got 0"):
        world.vqa_sample(0)


def test_vqa_answer_vocab_is_exactly_the_answers_the_world_gives():
    assert len(set(VQA_ANSWER_VOCAB)) == len(VQA_ANSWER_VOCAB)
    world = ShapesWorld(seed=3, image_size=16)
    given = {a for scene in world.sample(300) for _, a, _ in world.vqa(scene)}
    assert given == set(VQA_ANSWER_VOCAB)  # none missing (a head could not say it), none unreachable
    tok = Tokenizer.from_world()
    assert all(tok.encode(a) != [tok.unk_id] and len(tok.encode(a)) == 1 for a in VQA_ANSWER_VOCAB)


# An independent statement of the facts the knowledge questions need (chapters 09 and 10).
_CORNERS = {"circle": "zero", "square": "four", "triangle": "three", "diamond": "four", "cross": "twelve",
            "star": "ten"}
_MIXED_FROM = {"purple": "red and blue", "orange": "red and yellow", "green": "blue and yellow",
               "pink": "red and white", "grey": "black and white", "cyan": "green and blue"}


def _knowledge_answer(scene, question):
    m = re.fullmatch(r"how many (corners|sides) does the (\w+) object have\?", question)
    if m:
        (obj,) = [o for o in scene.objects if o.color == m.group(2)]  # the colour names one object
        return _CORNERS[obj.shape]
    m = re.fullmatch(r"what is mixed to make the colour of the (\w+)\?", question)
    (obj,) = [o for o in scene.objects if o.shape == m.group(1)]
    return _MIXED_FROM[obj.color]


def test_knowledge_questions_need_the_image_for_the_object_and_a_fact_for_the_answer(bench):
    k = bench.knowledge(n=90)
    assert k["images"].shape == (90, 3, 16, 16) and len(k["questions"]) == len(k["answers"]) == 90
    assert Counter(k["kinds"]) == {"corners": 30, "sides": 30, "mix_parts": 30}
    for q, a, scene in zip(k["questions"], k["answers"], k["scenes"]):
        assert _knowledge_answer(scene, q) == a, q
    again = ShapesBench(image_size=16, seed=1234).knowledge(n=90)
    assert again["questions"] == k["questions"] and torch.equal(again["images"], k["images"])
    assert ShapesBench(image_size=16, seed=99).knowledge(n=90)["questions"] != k["questions"]
    # the knowledge set has its own stream: the VQA set does not move when it is drawn
    assert bench.vqa(n=12)["questions"] == ShapesBench(image_size=16, seed=1234).vqa(n=12)["questions"]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        bench.knowledge(n=0)
    from minivlm.data.worldtext import knowledge_sample

    assert set(knowledge_sample(ShapesWorld(seed=0), 6, kinds=("sides",))["kinds"]) == {"sides"}
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        knowledge_sample(ShapesWorld(seed=0), 3, kinds=("legs",))
