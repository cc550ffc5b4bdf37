"""clip_loss (chapter 02) against the paper's numpy pseudocode and hand-made cases."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minivlm.losses import clip_loss, itm_loss, mlm_loss


def numpy_clip_loss(image_emb: np.ndarray, text_emb: np.ndarray, scale: float) -> float:
    """Figure 3 of the CLIP paper, with the cross-entropy written out (float64)."""

    def cross_entropy(logits, labels, axis):
        # softmax along `axis`, then -log p of the label
        shifted = logits - logits.max(axis=axis, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        picked = log_p[labels, labels]  # the diagonal, whichever axis was normalised
        return -picked.mean()

    logits = image_emb @ text_emb.T * scale  # (n, n)
    labels = np.arange(len(logits))
    loss_i = cross_entropy(logits, labels, axis=0)  # texts → images (columns)
    loss_t = cross_entropy(logits, labels, axis=1)  # images → texts (rows)
    return (loss_i + loss_t) / 2


def unit(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("b,d,scale", [(2, 3, 1.0), (7, 16, 14.3), (32, 8, 100.0)])
def test_matches_numpy_pseudocode(b, d, scale):
    img, txt = unit(b, d, 1), unit(b, d, 2)
    want = numpy_clip_loss(img.numpy(), txt.numpy(), scale)
    assert clip_loss(img, txt, scale).item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert clip_loss(img, txt, torch.tensor(scale, dtype=torch.float64)).item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_symmetric_in_its_arguments():
    img, txt = unit(9, 12, 3), unit(9, 12, 4)
    assert torch.allclose(clip_loss(img, txt, 5.0), clip_loss(txt, img, 5.0), atol=1e-12)
    # but not invariant to shuffling one side: the pairing matters
    assert not torch.allclose(clip_loss(img, txt, 5.0), clip_loss(img, txt.flip(0), 5.0))


def test_perfect_pairs_with_large_scale_give_zero():
    eye = torch.eye(6, dtype=torch.float64)  # orthonormal: logits = scale * I
    assert clip_loss(eye, eye, 100.0).item() < 1e-30 + 6 * math.exp(-100)
    # with a small scale the same features are far from zero loss: the temperature matters
    assert clip_loss(eye, eye, 1.0).item() > 0.5


def test_identical_features_give_log_b():
    b = 10
    same = F.normalize(torch.ones(b, 4), dim=-1)
    assert clip_loss(same, same, 30.0).item() == pytest.approx(math.log(b), rel=1e-6)


def test_gradients_are_finite_and_reach_all_inputs():
    raw_i = torch.randn(8, 5, requires_grad=True)
    raw_t = torch.randn(8, 5, requires_grad=True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = clip_loss(F.normalize(raw_i, dim=-1), F.normalize(raw_t, dim=-1), log_scale.exp())
    loss.backward()
    for g in (raw_i.grad, raw_t.grad, log_scale.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize(
    "img,txt,scale,err",
    [
        (torch.randn(4, 8), torch.randn(5, 8), 1.0, ValueError),
        (torch.randn(4, 8), torch.randn(4, 7), 1.0, ValueError),
        (torch.randn(4, 8, 1), torch.randn(4, 8, 1), 1.0, ValueError),
        (torch.randn(4, 8), torch.randn(4, 8), 0.0, ValueError),
        (torch.randn(4, 8), torch.randn(4, 8), -2.0, ValueError),
        (torch.randn(4, 8), torch.randn(4, 8), torch.ones(2), ValueError),
        (torch.randn(4, 8), torch.randn(4, 8), "1", TypeError),
        (torch.randint(0, 3, (4, 8)), torch.randn(4, 8), 1.0, ValueError),
    ],
)
def test_bad_inputs_raise(img, txt, scale, err):
    with pytest.raises(err):
        clip_loss(img, txt, scale)


def test_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(5, 8\)"):
        clip_loss(torch.randn(4, 8), torch.randn(5, 8), 1.0)


# ----------------------------------------------------------------------------- chapter 03: MLM and ITM


def hand_mlm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> float:
    """log-softmax over the vocabulary, -log p(label) at every chosen position, mean over those only."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == ignore_index:
                continue
            row = logits[b, t].double()
            total += -(row[y] - torch.logsumexp(row, dim=0)).item()
            count += 1
    return total / count


@pytest.mark.parametrize("b,t,v,seed", [(2, 5, 7, 0), (4, 9, 30, 1), (3, 16, 603, 2)])
def test_mlm_loss_matches_hand_computation(b, t, v, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.6] = -100
    labels[0, 0] = 1  # at least one chosen position
    assert mlm_loss(logits, labels).item() == pytest.approx(hand_mlm_loss(logits, labels), rel=1e-10)
    # positions that were not chosen do not matter, whatever their logits
    noisy = logits.clone()
    noisy[labels == -100] = torch.randn(int((labels == -100).sum()), v, generator=g, dtype=torch.float64) * 50
    assert mlm_loss(noisy, labels).item() == pytest.approx(hand_mlm_loss(logits, labels), rel=1e-10)
    # a custom ignore_index
    other = torch.where(labels == -100, torch.full_like(labels, -1), labels)
    assert mlm_loss(logits, other, ignore_index=-1).item() == pytest.approx(hand_mlm_loss(logits, labels), rel=1e-10)


def test_mlm_loss_averages_over_chosen_positions_only():
    """One chosen position with loss L and many unchosen ones: the loss is L, not L / (B*T)."""
    logits = torch.zeros(2, 6, 4)
    labels = torch.full((2, 6), -100)
    labels[1, 3] = 2
    assert mlm_loss(logits, labels).item() == pytest.approx(math.log(4), rel=1e-6)


def test_mlm_loss_nothing_chosen_is_zero_with_a_gradient_path():
    logits = torch.randn(3, 5, 11, requires_grad=True)
    loss = mlm_loss(logits, torch.full((3, 5), -100))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_mlm_loss_gradient_only_reaches_chosen_positions():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.tensor([[-100, 3, -100, -100], [0, -100, -100, 5]])
    mlm_loss(logits, labels).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, labels != -100)


@pytest.mark.parametrize(
    "logits,labels,match",
    [
        (torch.randn(2, 5), torch.zeros(2, dtype=torch.long), "logits must have 3 dims"),
        (torch.randn(2, 5, 7), torch.zeros(2, 5, 1, dtype=torch.long), "labels must have 2 dims"),
        (torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long), r"\(2, 5, 7\).*\(2, 4\)"),
        (torch.randn(2, 5, 7), torch.zeros(3, 5, dtype=torch.long), r"\(2, 5, 7\).*\(3, 5\)"),
        (torch.randn(2, 5, 7), torch.tensor([[0, 7, -100, 1, 1]] * 2), r"\[0, 6\].*7\]"),
        (torch.randn(2, 5, 7), torch.tensor([[0, -5, -100, 1, 1]] * 2), r"\[0, 6\].*\[-5"),
        (torch.randn(2, 5, 7), torch.zeros(2, 5), "integer"),
        (torch.randint(0, 3, (2, 5, 7)), torch.zeros(2, 5, dtype=torch.long), "floating"),
    ],
)
def test_mlm_loss_bad_inputs(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        mlm_loss(logits, labels)


def test_itm_loss_matches_hand_cross_entropy():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 2, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 2, (9,), generator=g)
    p = logits.softmax(dim=1)
    want = -torch.log(p[torch.arange(9), labels]).mean().item()
    assert itm_loss(logits, labels).item() == pytest.approx(want, rel=1e-10)
    # flipping every label changes the loss (column 1 means "match", column 0 "no match")
    assert itm_loss(logits, 1 - labels).item() != pytest.approx(want, rel=1e-3)
    # confident and right: near zero; confident and wrong: large
    sure = torch.tensor([[-20.0, 20.0], [20.0, -20.0]])
    assert itm_loss(sure, torch.tensor([1, 0])).item() < 1e-6
    assert itm_loss(sure, torch.tensor([0, 1])).item() > 30


@pytest.mark.parametrize(
    "logits,labels,match",
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), r"\(B, 2\).*\(4, 3\)"),
        (torch.randn(4, 1), torch.tensor([0, 1, 0, 1]), r"\(B, 2\).*\(4, 1\)"),
        (torch.randn(4, 2), torch.tensor([0, 1, 2, 1]), r"0 .*1 .*\[0, 2\]"),
        (torch.randn(4, 2), torch.tensor([0, -1, 0, 1]), r"\[-1, 1\]"),
        (torch.randn(4, 2), torch.tensor([0, 1, 0]), r"\(4, 2\).*\(3,\)"),
        (torch.randn(4, 2), torch.tensor([[0, 1, 0, 1]]), "labels must have 1 dims"),
        (torch.randn(4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0]), "integer"),
    ],
)
def test_itm_loss_bad_inputs(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        itm_loss(logits, labels)
