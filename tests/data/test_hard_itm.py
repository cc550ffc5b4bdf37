"""Hard negatives from the scene graph (`ShapesWorld.hard_negative`) and the ShapesBench
`hard_itm` set built from them (chapter 04)."""
import re
from collections import Counter

import pytest
import torch

from minivlm.data import ShapesBench, ShapesWorld
from minivlm.data.shapesworld import COLORS, RELATION_PHRASES, SEEN_COMPOSITIONS, SHAPES, Obj, Scene

KINDS = ("color", "shape", "size", "relation")
_COLOR, _SHAPE = "|".join(COLORS), "|".join(SHAPES)
OBJECT = re.compile(rf"\ban? (?:(small|large) )?({_COLOR}) ({_SHAPE})\b")  # one object, as a caption names it
RELATION = re.compile(rf"^(an? (?:{_COLOR}) (?:{_SHAPE})) ({'|'.join(RELATION_PHRASES.values())}) "
                      rf"(an? (?:{_COLOR}) (?:{_SHAPE}))$")


def objects_named(caption: str) -> list[tuple[str, str, str]]:
    """[(size or '', colour, shape)] in the order the caption names them."""
    return [(m.group(1) or "", m.group(2), m.group(3)) for m in OBJECT.finditer(caption)]


def one_change(true: str, negative: str) -> tuple[tuple, tuple]:
    """The single object that differs between two captions that name the same number of objects."""
    a, b = objects_named(true), objects_named(negative)
    assert len(a) == len(b) > 0, (true, negative)
    diffs = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(diffs) == 1, (true, negative)
    # and nothing but that object's words changed
    assert OBJECT.sub("#", true) == OBJECT.sub("#", negative), (true, negative)
    return diffs[0]


def check_pair(scene: Scene, kind: str, true: str, negative: str) -> None:
    truths = ShapesWorld.true_captions(scene)
    assert true in truths, (kind, true)
    assert negative != true and negative not in truths, (kind, negative)
    present = {o.composition for o in scene.objects}
    if kind == "relation":
        m = RELATION.match(true)
        assert m, true
        assert negative == f"{m.group(3)} {m.group(2)} {m.group(1)}"  # the swapped sentence
        return
    (size_a, color_a, shape_a), (size_b, color_b, shape_b) = one_change(true, negative)
    if kind == "size":
        assert (color_a, shape_a) == (color_b, shape_b) and {size_a, size_b} == {"small", "large"}
        return
    assert (color_b, shape_b) in SEEN_COMPOSITIONS and (color_b, shape_b) not in present
    assert size_a == size_b
    if kind == "color":
        assert shape_a == shape_b and color_a != color_b
    else:
        assert color_a == color_b and shape_a != shape_b


# ----------------------------------------------------------------------------- ShapesWorld.hard_negative


def two_objects() -> Scene:
    # same height: only "left of" / "right of" hold
    return Scene((Obj("circle", "red", "small", 0.2, 0.5, 0.1), Obj("square", "blue", "large", 0.7, 0.5, 0.15)))


def test_relation_negative_by_hand():
    pair = ShapesWorld(seed=0).hard_negative(two_objects(), "relation")
    assert pair in {
        ("a red circle to the left of a blue square", "a blue square to the left of a red circle"),
        ("a blue square to the right of a red circle", "a red circle to the right of a blue square"),
    }


def test_size_negative_by_hand():
    scene = Scene((Obj("circle", "red", "small", 0.5, 0.5, 0.1),))
    pair = ShapesWorld(seed=0).hard_negative(scene, "size")
    assert pair in {("a small red circle.", "a large red circle."),
                    ("an image with a small red circle.", "an image with a large red circle.")}


@pytest.mark.parametrize("kind", ["color", "shape"])
def test_color_and_shape_negatives_by_hand(kind):
    world = ShapesWorld(seed=1)
    for _ in range(20):
        true, negative = world.hard_negative(two_objects(), kind)
        check_pair(two_objects(), kind, true, negative)
        assert true in ShapesWorld.captions(two_objects())


def test_hard_negative_edge_cases():
    world = ShapesWorld(seed=0)
    assert world.hard_negative(Scene((Obj("circle", "red", "small", 0.5, 0.5, 0.1),)), "relation") is None
    with pytest.raises(ValueError, match=r"kind must be one of \['color', 'shape', 'size', 'relation'\], got 'count'"):
        world.hard_negative(two_objects(), "count")
    # the same world seed gives the same choices
    scenes = ShapesWorld(seed=3).sample(8)
    a, b = ShapesWorld(seed=5), ShapesWorld(seed=5)
    assert [a.hard_negative(s, k) for s in scenes for k in KINDS] == [b.hard_negative(s, k) for s in scenes for k in KINDS]


def test_hard_negatives_of_random_scenes():
    world = ShapesWorld(seed=11)
    counts = Counter()
    for scene in world.sample(60):
        for kind in KINDS:
            pair = world.hard_negative(scene, kind)
            if pair is None:
                assert kind == "relation" and not scene.relations()
                continue
            check_pair(scene, kind, *pair)
            counts[kind] += 1
    assert counts["color"] == counts["shape"] == counts["size"] == 60 and counts["relation"] > 10


# ----------------------------------------------------------------------------- ShapesBench.hard_itm


@pytest.fixture(scope="module")
def hard():
    return ShapesBench(image_size=16, seed=1234).hard_itm(n=42)


def test_hard_itm_pairs_are_one_fact_apart(hard):
    assert len(hard["captions"]) == len(hard["kinds"]) == len(hard["scenes"]) == 42
    for scene, kind, (true, negative) in zip(hard["scenes"], hard["kinds"], hard["captions"]):
        check_pair(scene, kind, true, negative)


def test_hard_itm_kinds_in_equal_share(hard):
    counts = Counter(hard["kinds"])
    assert set(counts) == set(KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1  # 42 = 4 × 10 + 2
    assert Counter(ShapesBench(image_size=16, seed=1234).hard_itm(n=40)["kinds"]) == {k: 10 for k in KINDS}


def test_hard_itm_images_show_the_scenes(hard):
    assert hard["images"].shape == (42, 3, 16, 16)
    assert torch.equal(hard["images"], ShapesWorld(image_size=16).render(hard["scenes"]))
    # scenes come from the test split: seen compositions only
    assert all(o.composition in SEEN_COMPOSITIONS for s in hard["scenes"] for o in s.objects)


def test_hard_itm_is_fixed_by_its_seed(hard):
    again = ShapesBench(image_size=16, seed=1234).hard_itm(n=42)
    assert again["captions"] == hard["captions"] and again["kinds"] == hard["kinds"]
    assert torch.equal(again["images"], hard["images"])
    other = ShapesBench(image_size=16, seed=99).hard_itm(n=42)
    assert other["captions"] != hard["captions"]


def test_hard_itm_bad_count():
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            ShapesBench(image_size=16).hard_itm(n)
