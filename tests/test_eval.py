"""ShapesBench metrics on hand-made cases with known answers."""
import math

import numpy as np
import pytest
import torch

from minivlm.eval import (
    Estimate,
    answer_hits,
    bootstrap,
    interval,
    normalize_answer,
    recall_at_k,
    retrieval_metrics,
    swap_scores,
    vqa_accuracy,
    wilson,
    zero_shot_accuracy,
)


def test_zero_shot_accuracy():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([0, 1, 0, 2])
    # row 0 right, row 1 wrong, row 2 a tie (counts as wrong), row 3 right
    assert zero_shot_accuracy(logits, labels) == 0.5
    assert zero_shot_accuracy(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])) == 0.0  # constant model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g)
    y = torch.randint(0, 7, (50,), generator=g)
    assert zero_shot_accuracy(x, y) == pytest.approx((x.argmax(1) == y).float().mean().item())
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        zero_shot_accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        zero_shot_accuracy(logits, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="integer"):
        zero_shot_accuracy(logits, labels.float())


def test_recall_at_k():
    sim = torch.tensor([
        [0.9, 0.1, 0.0],   # query 0: target 0 at rank 0
        [0.8, 0.5, 0.1],   # query 1: target 1 at rank 1
        [0.7, 0.6, 0.2],   # query 2: target 2 at rank 2
    ])
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert recall_at_k(sim, 3) == 1.0
    # ties count against the model
    assert recall_at_k(torch.ones(4, 4), 1) == 0.0
    assert recall_at_k(torch.ones(4, 4), 4) == 1.0
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), 1, targets=torch.tensor([0])) == 0.0
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), 2, targets=torch.tensor([0])) == 1.0
    # explicit targets, as a tensor and as sets (any correct candidate counts)
    assert recall_at_k(sim, 1, targets=torch.tensor([0, 0, 0])) == 1.0
    assert recall_at_k(sim, 1, targets=[{0, 2}, {0}, {1}]) == pytest.approx(2 / 3)
    # two correct candidates tied at the top: the other correct one does not push it down
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), 1, targets=[{0, 1}]) == 1.0
    # matches a brute-force count on random data
    g = torch.Generator().manual_seed(1)
    s = torch.randn(20, 30, generator=g)
    t = torch.randint(0, 30, (20,), generator=g)
    for k in (1, 5, 10):
        brute = sum(int(t[i]) in s[i].topk(k).indices.tolist() for i in range(20)) / 20
        assert recall_at_k(s, k, targets=t) == pytest.approx(brute)
    with pytest.raises(ValueError, match="k=4 is larger than the number of candidates"):
        recall_at_k(sim, 4)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(sim, 0)
    with pytest.raises(ValueError, match="one entry per query"):
        recall_at_k(sim, 1, targets=[{0}])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        recall_at_k(sim, 1, targets=torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="Nc >= Nq"):
        recall_at_k(torch.randn(4, 2), 1)


def test_retrieval_metrics():
    N = 8
    perfect = torch.eye(N)
    assert retrieval_metrics(perfect) == {"i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 1.0, "t2i_r5": 1.0}
    # images find their text but texts all prefer image 0: i2t perfect, t2i R@1 only 1/N
    sim = torch.eye(N)
    sim[0, :] = 2.0
    m = retrieval_metrics(sim)
    assert m["t2i_r1"] == pytest.approx(1 / N)
    assert m["i2t_r1"] == pytest.approx((N - 1) / N)  # image 0 ties every text
    assert m["t2i_r5"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        retrieval_metrics(torch.randn(8, 9))
    with pytest.raises(ValueError, match="at least 5"):
        retrieval_metrics(torch.eye(3))


def test_swap_scores():
    good = torch.tensor([[2.0, 1.0], [0.0, 3.0]])       # text ok, image ok
    text_only = torch.tensor([[2.0, 1.0], [5.0, 6.0]])  # rows prefer own caption; column 0 prefers image 1
    image_only = torch.tensor([[2.0, 3.0], [1.0, 4.0]])  # s00 > s10 and s11 > s01, but s01 > s00
    tie = torch.ones(2, 2)
    out = swap_scores(torch.stack([good, text_only, image_only, tie]))
    assert out == {"text": 0.5, "image": 0.5, "group": 0.25}
    with pytest.raises(ValueError, match=r"\(\?, 2, 2\)"):
        swap_scores(torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match="3 dims"):
        swap_scores(torch.randn(2, 2))


def test_vqa_accuracy():
    assert normalize_answer(" Two. ") == "2" == normalize_answer("2")
    assert normalize_answer("The Red") == "red"
    preds = ["Yes", "two", "blue.", "circle", "left"]
    answers = ["yes", "2", "blue", "square", "right"]
    assert vqa_accuracy(preds, answers) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        vqa_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy([], [])


# ----------------------------------------------------------------------------- intervals and answer hits


def wilson_closed_form(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (1, 7), (50, 100), (713, 1000), (3, 4000)])
def test_wilson_matches_the_closed_formula(k, n):
    est = wilson(k, n)
    low, high = wilson_closed_form(k, n)
    assert est.value == pytest.approx(k / n) and est.n == n and est.method == "wilson"
    assert est.low == pytest.approx(max(low, 0.0), abs=1e-12) and est.high == pytest.approx(min(high, 1.0), abs=1e-12)
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0
    # the bounds are the two solutions q of (p̂ - q)² = z² q(1-q)/n: a check independent of the formula
    z, p = 1.96, k / n
    for q in (est.low, est.high):
        assert (p - q) ** 2 == pytest.approx(z * z * q * (1 - q) / n, abs=1e-12)


def test_wilson_at_the_ends():
    z2 = 1.96**2
    none, every = wilson(0, 10), wilson(10, 10)
    assert none.low == 0.0 and none.high == pytest.approx(z2 / (10 + z2))  # 0.2775
    assert every.high == 1.0 and every.low == pytest.approx(10 / (10 + z2))  # 0.7225
    assert none.high == pytest.approx(1 - every.low)  # symmetric in k <-> n - k
    lo, hi = wilson(3, 17), wilson(14, 17)
    assert lo.low == pytest.approx(1 - hi.high) and lo.high == pytest.approx(1 - hi.low)
    assert wilson(5, 10, z=2.58).half_width > wilson(5, 10).half_width  # a 99 % interval is wider


def test_wilson_width_shrinks_like_one_over_sqrt_n():
    widths = {n: 2 * wilson(n // 2, n).half_width for n in (100, 400, 1600, 6400)}
    for n in (100, 400, 1600):
        assert widths[n] / widths[4 * n] == pytest.approx(2.0, rel=0.02)
    # and it approaches the normal approximation 2·z·sqrt(p(1-p)/n) for large n
    assert widths[6400] == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 6400), rel=0.01)


@pytest.mark.parametrize("k,n,match", [(1, 0, "n must be"), (-1, 10, "successes"), (11, 10, r"successes.*n=10.*11"),
                                       (1.0, 10, "successes"), (True, 10, "successes"), (1, 2.5, "n must be")])
def test_wilson_bad_arguments(k, n, match):
    with pytest.raises(ValueError, match=match):
        wilson(k, n)


def test_bootstrap_contains_the_mean_narrows_with_n_and_is_seeded():
    g = np.random.default_rng(0)
    small, large = g.normal(3.0, 2.0, 25), g.normal(3.0, 2.0, 400)
    a, b = bootstrap(small, seed=1), bootstrap(large, seed=1)
    for est, x in ((a, small), (b, large)):
        assert est.value == pytest.approx(x.mean()) and est.n == len(x) and est.method == "bootstrap"
        assert est.low < est.value < est.high
        # about the normal interval ±1.96·s/sqrt(n)
        assert est.half_width == pytest.approx(1.96 * x.std(ddof=1) / math.sqrt(len(x)), rel=0.25)
    assert 2.5 < a.half_width / b.half_width < 6.5  # sqrt(400/25) = 4, up to the two samples' spreads
    assert bootstrap(small, seed=1) == a  # same seed, same interval
    assert bootstrap(small, seed=2) != a
    # another statistic, and a tensor input
    med = bootstrap(torch.tensor(large), statistic=np.median, seed=1)
    assert med.value == pytest.approx(float(np.median(large))) and med.low < med.value < med.high


@pytest.mark.parametrize("values,kwargs,match", [([], {}, "non-empty"), ([[1.0, 2.0]], {}, "1-D"),
                                                 ([1.0, float("nan")], {}, "finite"),
                                                 ([1.0, 2.0], {"n_boot": 10}, "n_boot")])
def test_bootstrap_bad_arguments(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap(values, **kwargs)


def test_interval_dispatches_on_the_data():
    hits = [True, False, True, True, False, True, True]
    assert interval(hits) == wilson(5, 7)
    assert interval(torch.tensor(hits)) == wilson(5, 7)
    assert interval([0, 0, 0]) == wilson(0, 3) and interval(np.ones(12)) == wilson(12, 12)
    scores = [0.2, 0.9, 0.5, 1.0, 0.0, 0.7]
    est = interval(scores)
    assert est.method == "bootstrap" and est == bootstrap(scores)
    assert est.value == pytest.approx(np.mean(scores))
    with pytest.raises(ValueError, match="non-empty"):
        interval([])


def test_estimate_format():
    e = Estimate(0.713, 0.684, 0.741, 1000, "wilson")
    assert e.format() == "71.3 % [68.4, 74.1] (n=1,000)" == str(e)
    assert e.format(percent=False) == "0.713 [0.684, 0.741] (n=1,000)"
    assert e.half_width == pytest.approx(0.0285)
    assert Estimate(12.3456, 11.0, 13.75, 7, "bootstrap").format(percent=False) == "12.35 [11, 13.75] (n=7)"
    assert str(wilson(0, 10)) == "0.0 % [0.0, 27.8] (n=10)"


def test_answers_that_normalise_to_nothing_never_match():
    assert vqa_accuracy(["the"], ["an"]) == 0
    assert vqa_accuracy(["?"], [""]) == 0
    assert vqa_accuracy(["a"], ["a"]) == 0  # "a" is an article: nothing left to compare
    # ordinary matches still count, through the normalisation
    assert vqa_accuracy(["The Red.", "two", "yes"], ["red", "2", "no"]) == pytest.approx(2 / 3)


def test_answer_hits_per_item():
    preds = ["Yes", "the", "two", "blue.", "circle", "LEFT!"]
    answers = ["yes", "an", "2", "blue", "square", "left"]
    hits = answer_hits(preds, answers)
    assert hits == [True, False, True, True, False, True]
    assert all(isinstance(h, bool) for h in hits)
    assert vqa_accuracy(preds, answers) == pytest.approx(sum(hits) / len(hits))
    assert answer_hits(("four",), ("4",)) == [True]
    with pytest.raises(ValueError, match="same length, got 1 and 2"):
        answer_hits(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="lists of str"):
        answer_hits("yes", "yes")
    with pytest.raises(TypeError, match="str"):
        answer_hits([1], ["1"])


def test_evaluate_zero_shot_scores_the_class_its_colour_and_its_shape(monkeypatch):
    """A classifier that always names the right colour with the wrong shape: colour 100 %, shape
    and class 0 %; one that is right on half the images: 50 % everywhere."""
    import minivlm.eval.retrieval as retrieval

    classes = [("red", "circle"), ("red", "star"), ("blue", "circle"), ("blue", "star")]
    data = {"classes": classes, "labels": torch.tensor([0, 1, 2, 3])}
    wrong_shape = torch.tensor([1, 0, 3, 2])  # same colour, other shape
    half = torch.tensor([0, 2, 2, 0])  # right, wrong both, right, wrong both
    for predicted, expected in ((wrong_shape, (0.0, 1.0, 0.0)), (half, (0.5, 0.5, 0.5))):
        monkeypatch.setattr(retrieval, "classify_zero_shot",
                            lambda model, data, templates, p=predicted: torch.nn.functional.one_hot(p, 4).float())
        out = retrieval.evaluate_zero_shot(None, data)
        assert (out["accuracy"].value, out["color"].value, out["shape"].value) == expected
        assert out["accuracy"].n == 4 and out["accuracy"].method == "wilson"


def test_attribute_only_retrieval_reads_one_attribute():
    from dataclasses import replace

    from minivlm.data import Scene, ShapesBench, ShapesWorld
    from minivlm.eval import attribute_only_retrieval

    obj = ShapesWorld(seed=0).sample(1, n_objects=1)[0].objects[0]
    scenes = [Scene((replace(obj, color="red", shape="circle"),)), Scene((replace(obj, color="red", shape="star"),)),
              Scene((replace(obj, color="blue", shape="star"),))]
    data = {"scenes": scenes, "captions": ["a red circle.", "a red star.", "a blue star."]}
    # colour: images 0 and 1 each fit two captions (1/2), image 2 only its own; shape: 0 alone, 1 and 2 share
    assert attribute_only_retrieval(data, "color").value == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert attribute_only_retrieval(data, "shape").value == pytest.approx((1 + 0.5 + 0.5) / 3)
    # a relation needs only its two objects present; a listing caption needs the exact multiset
    data = {"scenes": scenes[:2], "captions": ["a red circle left of a red star.", "two shapes: a red star."]}
    # image 0 has one red object: its relation caption (two reds) fits no image, so it scores 0; image 1 fits
    # only "two shapes: a red star." (its own caption): 1
    assert attribute_only_retrieval(data, "color").value == pytest.approx(0.5)
    real = ShapesBench(seed=3).retrieval(64)
    est = attribute_only_retrieval(real, "color")
    assert 0 < est.low <= est.value <= est.high < 1 and est.n == 64
    with pytest.raises(ValueError, match="attribute must be 'color' or 'shape', got 'size'"):
        attribute_only_retrieval(real, "size")
    with pytest.raises(ValueError, match="ShapesBench retrieval set"):
        attribute_only_retrieval({"captions": []}, "color")
