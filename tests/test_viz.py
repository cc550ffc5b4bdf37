"""Tests for minivlm.viz: each plot draws what it was given, and bad shapes raise ValueError."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from minivlm import viz  # noqa: E402
from minivlm.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_show_images_rgb_and_boxes():
    images = torch.rand(5, 3, 8, 6)
    fig = viz.show_images(images, titles=list("abcde"), ncols=3,
                          boxes=[None, (0.0, 0.0, 0.5, 0.25), [], [(0.1, 0.2, 0.3, 0.4), (0, 0, 1, 1)], None])
    assert len(fig.axes) == 5
    for i, ax in enumerate(fig.axes):
        np.testing.assert_allclose(ax.images[0].get_array(), images[i].permute(1, 2, 0).numpy())
        assert ax.get_title() == "abcde"[i]
    rects = [p for p in fig.axes[1].patches if isinstance(p, Rectangle)]
    assert len(rects) == 1
    # (0, 0, 0.5, 0.25) of a 6-wide, 8-high image: pixel edges start at -0.5
    assert rects[0].get_xy() == pytest.approx((-0.5, -0.5))
    assert (rects[0].get_width(), rects[0].get_height()) == pytest.approx((3.0, 2.0))
    assert len(fig.axes[3].patches) == 2 and len(fig.axes[0].patches) == 0


def test_show_images_grey_and_errors():
    images = torch.rand(2, 5, 5)
    fig = viz.show_images(images)
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), images[1].numpy())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        viz.show_images(torch.rand(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        viz.show_images(torch.rand(2, 3, 5, 5) * 3)
    with pytest.raises(ValueError, match="titles"):
        viz.show_images(images, titles=["one"])
    with pytest.raises(ValueError, match="boxes"):
        viz.show_images(images, boxes=[(0, 0, 2, 1), None])
    with pytest.raises(ValueError, match="boxes"):
        viz.show_images(images, boxes=[(0, 0, 1), None])


def test_plot_similarity_values_labels_and_annotation():
    sim = torch.randn(3, 4)
    fig = viz.plot_similarity(sim, row_labels=["i0", "i1", "i2"], col_labels=list("abcd"), title="S")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), sim.numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["i0", "i1", "i2"]
    texts = sorted(float(t.get_text()) for t in ax.texts)
    assert texts == pytest.approx(sorted(np.round(sim.numpy().ravel(), 2)), abs=1e-6)
    assert ax.get_title() == "S"
    big = viz.plot_similarity(torch.randn(12, 12))
    assert len(big.axes[0].texts) == 0  # too many cells to annotate by default
    with pytest.raises(ValueError, match=r"\(R, C\)"):
        viz.plot_similarity(torch.randn(3))
    with pytest.raises(ValueError, match="col_labels must have 4"):
        viz.plot_similarity(sim, col_labels=["a"])


def test_plot_mask_colours():
    mask = torch.rand(5, 7) > 0.5
    fig = viz.plot_mask(mask, title="m")
    im = fig.axes[0].images[0]
    np.testing.assert_array_equal(im.get_array(), mask.int().numpy())
    rgba = im.to_rgba(im.get_array())  # (Tq, Tk, 4), the colours on screen
    attend, blocked = np.array(to_rgba(viz.ATTEND_COLOR)), np.array(to_rgba(viz.BLOCKED_COLOR))
    np.testing.assert_allclose(rgba[mask.numpy()], np.broadcast_to(attend, (int(mask.sum()), 4)))
    np.testing.assert_allclose(rgba[~mask.numpy()], np.broadcast_to(blocked, (int((~mask).sum()), 4)))
    with pytest.raises(ValueError, match="bool"):
        viz.plot_mask(mask.float())
    with pytest.raises(ValueError, match=r"\(Tq, Tk\)"):
        viz.plot_mask(mask[0])
    with pytest.raises(ValueError, match="square"):
        viz.plot_mask(mask, labels=list("abcde"))
    fig = viz.plot_mask(mask, labels=(list("abcde"), list("ABCDEFG")))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list("ABCDEFG")


def test_plot_masks_side_by_side():
    causal = torch.ones(4, 4).tril().bool()
    full = torch.ones(4, 4, dtype=torch.bool)
    fig = viz.plot_masks({"causal": causal, "bidirectional": full})
    assert [ax.get_title() for ax in fig.axes] == ["causal", "bidirectional"]
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), causal.int().numpy())
    with pytest.raises(ValueError):
        viz.plot_masks({})


def test_plot_masks_labels_per_panel():
    masks = {"a": torch.ones(2, 2, dtype=torch.bool), "b": torch.ones(2, 2, dtype=torch.bool)}
    fig = viz.plot_masks(masks, labels={"a": ["[CLS]", "x"], "b": ["[DEC]", "x"]})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["[CLS]", "x"]
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["[DEC]", "x"]
    with pytest.raises(ValueError, match="must name the masks"):
        viz.plot_masks(masks, labels={"a": ["p", "q"]})


def test_plot_attention_and_on_image():
    w = torch.softmax(torch.randn(3, 5), -1)
    fig = viz.plot_attention(w, row_labels=list("abc"))
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w.numpy())
    image = torch.rand(3, 8, 8)
    patches = torch.rand(16)
    fig = viz.plot_attention_on_image(image, patches, title="cls")
    ax = fig.axes[0]
    assert len(ax.images) == 2
    np.testing.assert_allclose(ax.images[0].get_array(), image.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(ax.images[1].get_array(), patches.reshape(4, 4).numpy())
    assert ax.images[1].get_extent() == [-0.5, 7.5, 7.5, -0.5]  # the overlay covers the image exactly
    with pytest.raises(ValueError, match="CLS"):
        viz.plot_attention_on_image(image, torch.rand(17))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        viz.plot_attention_on_image(torch.rand(8, 8), patches)
    with pytest.raises(ValueError, match=r"\(Tq, Tk\)|\(R, C\)"):
        viz.plot_attention(torch.rand(2, 3, 4))


def test_plot_losses_lines_and_smoothing():
    fig = viz.plot_losses({"itc": [3.0, 2.0, 1.0], "itm": [1.0, 0.5, 0.2]}, smooth=0.5)
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # raw + smoothed for each curve
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [3.0, 2.0, 1.0])
    # bias-corrected EMA with 0.5: 3, (0.25*3 + 0.5*2)/0.75, ...
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [3.0, 1.75 / 0.75, (0.875 + 0.5) / 0.875])
    assert len(viz.plot_losses({"a": [1, 2]}, smooth=0).axes[0].lines) == 1
    h = History(steps=[10, 11, 12], losses={"loss": [4.0, 2.0, 1.0]}, lrs=[1.0] * 3)
    fig = h.plot(logy=True)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [10, 11, 12])
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="smooth"):
        viz.plot_losses({"a": [1.0]}, smooth=1.0)


def test_plot_bars_heights_and_axes():
    fig, axes = plt.subplots(1, 2)
    out = viz.plot_bars({"no MoD": 0.61, "MoD": 0.7}, title="ablation", ax=axes[1], ylabel="R@1")
    assert out is fig
    heights = [p.get_height() for p in axes[1].patches]
    assert heights == pytest.approx([0.61, 0.7])
    assert axes[1].get_title() == "ablation" and axes[1].get_ylabel() == "R@1"
    assert [t.get_text() for t in axes[1].texts] == ["0.61", "0.7"]
    with pytest.raises(ValueError):
        viz.plot_bars({})
    with pytest.raises(TypeError):
        viz.plot_bars({"a": "x"})


def test_plot_estimates_groups_series_with_nonnegative_intervals():
    from minivlm.eval import interval

    full = interval([1] * 20)  # value 1.0: high - value may round below zero
    fig = viz.plot_estimates({"a": {"x": full, "y": interval([0, 1] * 10)}, "b": {"x": interval([0] * 5 + [1])}},
                             title="t", ylabel="%")
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [16.666667, 50.0, 100.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)
    with pytest.raises(TypeError, match="must be an Estimate"):
        viz.plot_estimates({"a": {"x": 0.5}})
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.plot_estimates({})


def test_plot_sequence_draws_a_token_strip_and_one_row_per_mask():
    fig = viz.plot_sequence(["<bos>", "<image>", "a", "<eos>"], {"image": [0, 1, 0, 0],
                                                                   "target": torch.tensor([0, 0, 1, 1])}, title="t")
    ax = fig.axes[0]
    assert len(ax.patches) == 4 * 3
    filled = [p for p in ax.patches if p.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
    assert len(filled) == 4 + 1 + 2  # the token strip, then the True cells
    plt.close(fig)
    with pytest.raises(ValueError, match="has 3 entries for 4 tokens"):
        viz.plot_sequence(["a", "b", "c", "d"], {"x": [1, 0, 1]})
