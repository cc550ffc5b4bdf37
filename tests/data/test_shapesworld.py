"""ShapesWorld: determinism, splits, held-out compositions, geometry, colours, text, VQA."""
import re

import pytest
import torch

from minivlm.data import COLORS, HELDOUT_COMPOSITIONS, RELATIONS, SHAPES, SIZES, Obj, Scene, ShapesWorld, Tokenizer
from minivlm.data.shapesworld import (
    ALL_COMPOSITIONS,
    BACKGROUND,
    NUMBER_WORDS,
    PLURALS,
    RELATION_MARGIN,
    SEEN_COMPOSITIONS,
    time_render,
)

BG = torch.tensor(BACKGROUND).view(3, 1, 1)


def test_constants():
    assert len(SHAPES) >= 6 and {"circle", "square", "triangle", "diamond", "cross", "star"} <= set(SHAPES)
    assert len(COLORS) >= 8 and "purple" in COLORS
    assert RELATIONS == ("left of", "right of", "above", "below")
    assert all(all(0 <= v <= 1 for v in rgb) for rgb in COLORS.values())
    # colours clearly apart: every pair differs by > 0.3 in some channel
    names = list(COLORS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert max(abs(x - y) for x, y in zip(COLORS[a], COLORS[b])) > 0.3, (a, b)
    # held-out: about 10 %, every colour and shape still seen in training
    frac = len(HELDOUT_COMPOSITIONS) / len(ALL_COMPOSITIONS)
    assert 0.08 <= frac <= 0.15
    assert ("purple", "triangle") in HELDOUT_COMPOSITIONS
    assert {c for c, _ in SEEN_COMPOSITIONS} == set(COLORS)
    assert {s for _, s in SEEN_COMPOSITIONS} == set(SHAPES)


def test_determinism_by_seed():
    a, b, c = ShapesWorld(seed=3), ShapesWorld(seed=3), ShapesWorld(seed=4)
    sa, sb, sc = a.sample(20), b.sample(20), c.sample(20)
    assert sa == sb and sa != sc
    assert [a.caption(s) for s in sa] == [b.caption(s) for s in sb]
    assert torch.equal(a.render(sa), b.render(sb))
    # asking for text does not change the scene stream
    a.vqa(sa[0]), a.caption(sa[1])
    assert a.sample(5) == b.sample(5)


def test_splits_are_disjoint_streams():
    firsts = {}
    for split in ("train", "val", "test", "heldout"):
        scenes = ShapesWorld(seed=0, split=split).sample(200)
        firsts[split] = {(round(o.x, 9), round(o.y, 9)) for s in scenes for o in s.objects}
    for a in firsts:
        for b in firsts:
            if a < b:
                assert not firsts[a] & firsts[b], (a, b)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_heldout_compositions_never_in_seen_splits(split):
    scenes = ShapesWorld(seed=1, split=split).sample(3000)
    pairs = {o.composition for s in scenes for o in s.objects}
    assert not pairs & set(HELDOUT_COMPOSITIONS)
    assert pairs == set(SEEN_COMPOSITIONS)  # every seen pair does appear


def test_train_text_never_names_a_heldout_pair():
    world = ShapesWorld(seed=2)
    texts = []
    for s in world.sample(400):
        texts += world.captions(s) + [q for q, _, _ in world.vqa(s)]
        texts.append(world.relational_caption(s) or "")
    texts += world.noisy_captions(world.sample(200), noise=1.0)[0]
    blob = "\n".join(texts)
    for c, s in HELDOUT_COMPOSITIONS:
        assert f"{c} {s}" not in blob


def test_every_heldout_scene_has_a_heldout_pair():
    scenes = ShapesWorld(seed=1, split="heldout").sample(1000)
    assert all(any(o.composition in HELDOUT_COMPOSITIONS for o in s.objects) for s in scenes)
    seen = {o.composition for s in scenes for o in s.objects if o.composition in HELDOUT_COMPOSITIONS}
    assert seen == set(HELDOUT_COMPOSITIONS)


def test_objects_inside_canvas_and_never_overlap():
    for scene in ShapesWorld(seed=5).sample(1500):
        assert 1 <= len(scene) <= 4
        assert len({o.composition for o in scene.objects}) == len(scene)  # names unique in a scene
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert (x0, y0, x1, y1) == (o.x - o.radius, o.y - o.radius, o.x + o.radius, o.y + o.radius)
            assert 0 <= o.depth <= 1 and o.size in SIZES
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                ax0, ay0, ax1, ay1 = a.box
                bx0, by0, bx1, by1 = b.box
                assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0  # boxes disjoint


def test_sample_arguments():
    world = ShapesWorld(seed=0)
    assert all(len(s) == 3 for s in world.sample(50, n_objects=3))
    counts = {len(s) for s in world.sample(300, n_objects=(2, 3))}
    assert counts == {2, 3}
    comps = [("red", "circle"), ("blue", "square")]
    scenes = world.sample(100, compositions=comps)
    assert all(o.composition in comps for s in scenes for o in s.objects)
    assert max(len(s) for s in scenes) == 2  # at most len(compositions) objects
    assert world.sample(0) == []
    with pytest.raises(ValueError, match="held-out"):
        world.sample(3, compositions=[("purple", "triangle")])
    with pytest.raises(ValueError, match="held-out composition"):
        ShapesWorld(split="heldout").sample(3, compositions=[("red", "circle")])
    with pytest.raises(ValueError, match="only 1 compositions"):
        world.sample(3, n_objects=2, compositions=[("red", "circle")])
    with pytest.raises(ValueError, match="colour"):
        world.sample(3, compositions=[("mauve", "circle")])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="bogus"), r"\['train', 'val', 'test', 'heldout'\], got 'bogus'"),
        (dict(image_size=4), r">= 8, got 4"),
        (dict(max_objects=5), r"<= 4, got \(1, 5\)"),
        (dict(min_objects=0), r"1 <= min"),
        (dict(noise=1.5), r"\[0, 1\], got 1.5"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesWorld(**kwargs)


def test_sample_and_render_errors():
    world = ShapesWorld()
    with pytest.raises(ValueError, match=r">= 0, got -1"):
        world.sample(-1)
    with pytest.raises(ValueError, match="n_objects"):
        world.sample(2, n_objects=7)
    with pytest.raises(ValueError, match=">= 8, got 5"):
        world.render(world.sample(1), image_size=5)
    with pytest.raises(ValueError, match="shape must be one of"):
        Obj("hexagon", "red", "small", 0.5, 0.5, 0.1)
    with pytest.raises(ValueError, match="radius"):
        Obj("circle", "red", "small", 0.5, 0.5, 0.0)


def _coverage(img):
    """Per-pixel distance from the background colour (0 = background)."""
    return (img - BG).abs().amax(0)


@pytest.mark.parametrize("shape", SHAPES)
def test_box_is_exact(shape):
    gen = torch.Generator().manual_seed(SHAPES.index(shape))
    S = 64
    world = ShapesWorld(image_size=S)
    for _ in range(4):
        r = float(torch.empty(1).uniform_(0.1, 0.25, generator=gen))
        x, y = (float(v) for v in torch.empty(2).uniform_(r + 0.01, 1 - r - 0.01, generator=gen))
        o = Obj(shape, "white", "large", x, y, r)
        img = world.render([Scene((o,))])[0]
        cov = _coverage(img)
        ys, xs = torch.nonzero(cov > 0.02, as_tuple=True)
        cx, cy = (xs.float() + 0.5) / S, (ys.float() + 0.5) / S  # pixel centres
        x0, y0, x1, y1 = o.box
        half = 0.5 / S + 1e-6
        # no ink outside the box (up to the half-pixel anti-aliasing ramp) ...
        assert cx.min() >= x0 - half and cx.max() <= x1 + half
        assert cy.min() >= y0 - half and cy.max() <= y1 + half
        # ... and the shape reaches all four sides of its box (within one pixel)
        assert cx.min() <= x0 + 1.5 / S and cx.max() >= x1 - 1.5 / S
        assert cy.min() <= y0 + 1.5 / S and cy.max() >= y1 - 1.5 / S
        # it fills a sizeable part of the box (a star fills the least)
        ink = float(cov.sum()) / float(cov.max()) / ((x1 - x0) * (y1 - y0) * S * S)
        assert ink > 0.35, ink


def test_shape_areas_match_geometry():
    # Coverage-weighted pixel area vs the exact area of each unit shape, for a big object.
    S, r = 128, 0.3
    world = ShapesWorld(image_size=S)
    exact = {"circle": torch.pi, "square": 4.0, "triangle": 2.0, "diamond": 2.0, "cross": 4 * 0.36 * 2 - (0.72 ** 2)}
    for shape, area in exact.items():
        img = world.render([Scene((Obj(shape, "white", "large", 0.5, 0.5, r),))])[0]
        cov = _coverage(img) / (torch.tensor(COLORS["white"]) - torch.tensor(BACKGROUND)).abs().max()
        measured = float(cov.sum()) / (r * S) ** 2
        assert abs(measured - area) / area < 0.02, (shape, measured, area)


@pytest.mark.parametrize("color", list(COLORS))
def test_colours_are_correct(color):
    world = ShapesWorld(image_size=32)
    scenes = world.sample(10, n_objects=1, compositions=[(color, s) for s in SHAPES if (color, s) not in
                                                          HELDOUT_COMPOSITIONS])
    imgs = world.render(scenes)
    for img, scene in zip(imgs, scenes):
        cov = _coverage(img)
        rgb = img[:, cov > 0.5 * cov.max()]  # (3, P) pixels at least half covered by the object
        full = rgb[:, (rgb - torch.tensor(COLORS[color])[:, None]).abs().amax(0) < 1e-5]
        assert full.shape[1] >= 10  # interior pixels are exactly the colour
        mean = rgb.mean(1)
        assert torch.allclose(mean, torch.tensor(COLORS[color]), atol=0.15)
        nearest = min(COLORS, key=lambda c: float((torch.tensor(COLORS[c]) - mean).abs().sum()))
        assert nearest == color


def test_render_background_antialiasing_and_painter_order():
    world = ShapesWorld(image_size=32)
    empty = world.render([Scene(())])
    assert torch.allclose(empty, BG.expand(1, 3, 32, 32))
    circle = world.render([Scene((Obj("circle", "red", "large", 0.5, 0.5, 0.2),))])[0]
    red = torch.tensor(COLORS["red"]).view(3, 1, 1)
    t = ((circle - BG) / (red - BG))[0]  # blend factor per pixel
    assert ((t > 0.05) & (t < 0.95)).sum() >= 8  # soft edge pixels exist
    assert float(circle.min()) >= 0 and float(circle.max()) <= 1
    # overlapping hand-built objects: the nearer one (smaller depth) is drawn on top
    far = Obj("square", "red", "large", 0.5, 0.5, 0.2, depth=0.9)
    near = Obj("square", "blue", "small", 0.5, 0.5, 0.1, depth=0.1)
    img = world.render([Scene((near, far)), Scene((far, near))])
    assert torch.equal(img[0], img[1])
    assert torch.allclose(img[0][:, 16, 16], torch.tensor(COLORS["blue"]))
    assert torch.allclose(img[0][:, 16, 11], torch.tensor(COLORS["red"]))
    threads = torch.get_num_threads()
    world.render(world.sample(3))
    assert torch.get_num_threads() == threads  # render restores torch's thread setting
    # same scene rendered alone or in a batch gives the same pixels
    scenes = world.sample(7)
    batch = world.render(scenes)
    assert torch.allclose(batch[3], world.render([scenes[3]])[0])


def test_render_sizes():
    world = ShapesWorld(seed=0)
    scenes = world.sample(3)
    for S in (8, 64, 224):
        imgs = world.render(scenes, image_size=S)
        assert imgs.shape == (3, 3, S, S) and imgs.dtype == torch.float32
        assert 0 <= float(imgs.min()) and float(imgs.max()) <= 1
    # downsampling a 224 render gives about the 32 render
    big = torch.nn.functional.avg_pool2d(world.render(scenes, 224), 7)
    small = world.render(scenes, 32)
    assert (big - small).abs().mean() < 0.02


def test_relations_consistent_with_coordinates():
    world = ShapesWorld(seed=7)
    for scene in world.sample(300):
        rels = set(scene.relations())
        for i, a in enumerate(scene.objects):
            for j, b in enumerate(scene.objects):
                if i == j:
                    continue
                assert ((i, "left of", j) in rels) == (b.x - a.x > RELATION_MARGIN)
                assert ((i, "right of", j) in rels) == (a.x - b.x > RELATION_MARGIN)
                assert ((i, "above", j) in rels) == (b.y - a.y > RELATION_MARGIN)  # y grows downwards
                assert ((i, "below", j) in rels) == (a.y - b.y > RELATION_MARGIN)
    a = Obj("circle", "red", "small", 0.2, 0.5, 0.1)
    b = Obj("square", "blue", "small", 0.8, 0.55, 0.1)
    assert Scene((a, b)).relations() == [(0, "left of", 1), (1, "right of", 0)]


def test_captions_mention_objects():
    world = ShapesWorld(seed=8)
    for scene in world.sample(200):
        caps = world.captions(scene)
        assert len(set(caps)) == len(caps) >= 5
        for k, cap in enumerate(caps):
            assert world.caption(scene, style=k) == cap
            for o in scene.objects:
                assert o.name in cap
        assert any(NUMBER_WORDS[len(scene)] + " shape" in c for c in caps)
        assert any(all(f"{o.size} {o.name}" in c for o in scene.objects) for c in caps)
        assert world.caption(scene) in caps
    scene = Scene((Obj("circle", "red", "small", 0.7, 0.5, 0.1), Obj("star", "orange", "large", 0.2, 0.5, 0.15)))
    assert world.captions(scene)[0] == "an orange star and a red circle."  # left to right, "an" before vowels
    with pytest.raises(ValueError, match="style"):
        world.caption(scene, style=99)


def test_relational_caption():
    world = ShapesWorld(seed=0)
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.5, 0.1), Obj("square", "blue", "small", 0.8, 0.5, 0.1)))
    caps = {world.relational_caption(scene) for _ in range(30)}
    assert caps == {"a red circle to the left of a blue square", "a blue square to the right of a red circle"}
    assert world.relational_caption(Scene(scene.objects[:1])) is None
    close = Scene((scene.objects[0], Obj("square", "blue", "small", 0.25, 0.52, 0.1)))
    assert world.relational_caption(close) is None  # no unambiguous relation


def test_noisy_captions_fraction_and_content():
    world = ShapesWorld(seed=9, noise=0.4)
    scenes = world.sample(2000)
    caps, clean = world.noisy_captions(scenes)
    assert clean.dtype == torch.bool and clean.shape == (2000,)
    assert abs(1 - clean.float().mean().item() - 0.4) < 0.04
    for cap, ok, scene in zip(caps, clean.tolist(), scenes):
        assert (cap in world.captions(scene)) == ok  # a noisy caption describes another scene
    caps0, clean0 = world.noisy_captions(scenes[:100], noise=0.0)
    assert bool(clean0.all()) and all(c in world.captions(s) for c, s in zip(caps0, scenes))
    with pytest.raises(ValueError, match="noise"):
        world.noisy_captions(scenes, noise=-0.1)


def _answer(scene, q):
    """Independent oracle: answer a ShapesWorld question from the scene's coordinates."""
    objs = scene.objects
    by_name = {o.name: o for o in objs}
    num = lambda k: NUMBER_WORDS[k]
    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        (o,) = [o for o in objs if o.shape == m[1]]
        return o.color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        (o,) = [o for o in objs if o.color == m[1]]
        return o.shape
    if q == "how many shapes are there?":
        return num(len(objs))
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", q):
        return num(sum(o.color == m[1] for o in objs))
    if m := re.fullmatch(r"how many (\w+) are there\?", q):
        return num(sum(PLURALS[o.shape] == m[1] for o in objs))
    if m := re.fullmatch(r"is there an? (\w+ \w+)\?", q):
        return "yes" if m[1] in by_name else "no"
    if m := re.fullmatch(r"is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?", q):
        a, b = by_name[m[1]], by_name[m[3]]
        dx, dy = b.x - a.x, b.y - a.y
        holds = {"to the left of": dx > RELATION_MARGIN, "to the right of": -dx > RELATION_MARGIN,
                 "above": dy > RELATION_MARGIN, "below": -dy > RELATION_MARGIN}[m[2]]
        return "yes" if holds else "no"
    if m := re.fullmatch(r"is the (\w+ \w+) on the left or on the right\?", q):
        return "left" if by_name[m[1]].x < 0.5 else "right"
    if m := re.fullmatch(r"is the (\w+ \w+) at the top or at the bottom\?", q):
        return "top" if by_name[m[1]].y < 0.5 else "bottom"
    raise AssertionError(f"unknown question {q!r}")


def test_vqa_answers_match_an_independent_oracle():
    world = ShapesWorld(seed=10)
    kinds = set()
    for scene in world.sample(300):
        for q, a, kind in world.vqa(scene):
            assert _answer(scene, q) == a, (q, a, scene)
            assert len(a.split()) == 1
            kinds.add(kind)
    assert kinds == {"color", "shape", "count", "exists", "relation", "position"}


def test_vqa_hand_built_scene():
    world = ShapesWorld(seed=0)
    scene = Scene((
        Obj("circle", "red", "small", 0.2, 0.2, 0.1),
        Obj("square", "blue", "large", 0.75, 0.75, 0.18),
        Obj("star", "blue", "small", 0.8, 0.2, 0.1),
    ))
    qa = {q: a for q, a, _ in world.vqa(scene)}
    assert qa["what color is the circle?"] == "red"
    assert qa["what color is the square?"] == "blue"
    assert qa["what shape is the red object?"] == "circle"
    assert "what shape is the blue object?" not in qa  # ambiguous: two blue objects
    assert qa["how many shapes are there?"] == "three"
    assert qa["is the red circle on the left or on the right?"] == "left"
    assert qa["is the blue square at the top or at the bottom?"] == "bottom"
    assert qa["is the blue star at the top or at the bottom?"] == "top"
    yes_no = [a for q, a, k in world.vqa(scene) if k in ("exists", "relation")]
    assert yes_no.count("yes") == yes_no.count("no") == 2


def test_batch_and_vocabulary():
    world = ShapesWorld(seed=11, image_size=16)
    b = world.batch(6)
    assert b["images"].shape == (6, 3, 16, 16)
    assert torch.equal(b["images"], world.render(b["scenes"]))
    assert all(c in world.captions(s) for c, s in zip(b["captions"], b["scenes"]))
    vocab = set(world.vocabulary())
    tok = Tokenizer.from_world()
    assert vocab <= set(tok.vocab)
    # every token the generators emit is in world.vocabulary()
    emitted = set()
    for s in world.sample(300):
        texts = world.captions(s) + [t for qa in world.vqa(s) for t in qa[:2]] + [world.relational_caption(s) or ""]
        for t in texts:
            emitted.update(tok.tokenize(t))
    assert emitted <= vocab
    assert {"left", "above", "below", "red", "star", "how", "many", "yes", "no"} <= emitted


def test_time_render_reports():
    out = time_render(n=8, image_size=16, repeats=2)
    assert out["n"] == 8 and out["threads"] >= 1
    assert 0 < out["min_s"] <= out["median_s"] and out["scenes_per_s"] > 0
