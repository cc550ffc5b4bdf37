"""ShapesBench: fixed, correct evaluation sets."""
import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from minivlm.data import HELDOUT_COMPOSITIONS, ShapesBench, ShapesWorld
from minivlm.data.shapesworld import ALL_COMPOSITIONS, SEEN_COMPOSITIONS
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
