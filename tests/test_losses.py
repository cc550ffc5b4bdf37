"""clip_loss (chapter 02) against the paper's numpy pseudocode and hand-made cases."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minivlm.losses import clip_loss


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
