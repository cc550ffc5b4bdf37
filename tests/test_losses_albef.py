"""Chapter 04's losses: soft cross-entropy, momentum distillation's targets, and the hard
negative sampler, against hand computations and measured frequencies."""
import math

import pytest
import torch
import torch.nn.functional as F

from minivlm.losses import check_alpha, mix_targets, sample_negatives, soft_cross_entropy

# ----------------------------------------------------------------------------- soft_cross_entropy


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, math.log(2.0)]])
    targets = torch.tensor([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    lse0 = math.log(math.e + math.e ** 2 + math.e ** 3)
    row0 = -(0.2 * (1 - lse0) + 0.3 * (2 - lse0) + 0.5 * (3 - lse0))
    row1 = -(0.0 - math.log(1 + 1 + 2))  # softmax = (1/4, 1/4, 1/2): -log(1/4)
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


@pytest.mark.parametrize("n,c,seed", [(1, 2, 0), (5, 7, 1), (32, 100, 2)])
def test_soft_cross_entropy_with_one_hot_is_cross_entropy(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(c, (n,), generator=g)
    want = F.cross_entropy(logits, labels)
    got = soft_cross_entropy(logits, F.one_hot(labels, c).double())
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    # and its gradient is softmax - target, averaged over rows
    x = logits.clone().requires_grad_(True)
    soft_cross_entropy(x, F.one_hot(labels, c).double()).backward()
    torch.testing.assert_close(x.grad, (logits.softmax(1) - F.one_hot(labels, c)) / n)


def test_soft_cross_entropy_is_smallest_at_the_target():
    # Gibbs: -Σ t log p >= -Σ t log t, with equality when softmax(logits) = targets
    g = torch.Generator().manual_seed(3)
    t = torch.rand(4, 6, generator=g, dtype=torch.float64).softmax(1)
    entropy = -(t * t.log()).sum(1).mean()
    assert soft_cross_entropy(t.log() + 5.0, t).item() == pytest.approx(entropy.item(), rel=1e-10)
    assert soft_cross_entropy(torch.randn(4, 6, generator=g, dtype=torch.float64), t) > entropy


@pytest.mark.parametrize(
    "logits,targets,match",
    [
        (torch.zeros(2, 3), torch.full((2, 4), 0.25), "same shape"),
        (torch.zeros(2, 3), torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]), "probability distribution"),
        (torch.zeros(1, 3), torch.tensor([[1.5, -0.5, 0.0]]), "probability distribution"),
        (torch.zeros(3), torch.ones(3) / 3, "2 dims"),
        (torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.long), "floating"),
    ],
)
def test_soft_cross_entropy_bad_input(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        soft_cross_entropy(logits, targets)


# ----------------------------------------------------------------------------- mix_targets


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0, 1])
def test_mix_targets_equals_the_formula(alpha):
    g = torch.Generator().manual_seed(4)
    hard = F.one_hot(torch.randint(5, (6,), generator=g), 5).float()
    teacher = torch.randn(6, 5, generator=g) * 4
    got = mix_targets(hard, teacher, alpha)
    want = (1 - alpha) * hard + alpha * torch.exp(teacher) / torch.exp(teacher).sum(1, keepdim=True)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(6))  # still distributions
    if alpha == 0:
        assert torch.equal(got, hard)


def test_mix_targets_passes_no_gradient_to_the_teacher():
    g = torch.Generator().manual_seed(5)
    student = torch.randn(4, 3, generator=g).requires_grad_(True)
    teacher = torch.randn(4, 3, generator=g).requires_grad_(True)
    hard = torch.eye(4, 3)
    hard[3, 0] = 1.0
    targets = mix_targets(hard, teacher, 0.4)
    assert not targets.requires_grad
    soft_cross_entropy(student, targets).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha", [-0.1, 1.01, True, "0.4", None, float("nan")])
def test_alpha_outside_unit_interval_is_an_error(alpha):
    with pytest.raises(ValueError, match=r"alpha .* must be a float in \[0, 1\]"):
        check_alpha(alpha)
    with pytest.raises(ValueError, match="alpha"):
        mix_targets(torch.eye(2), torch.zeros(2, 2), alpha)


def test_mix_targets_shapes_must_agree():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 2\) and \(2, 3\)"):
        mix_targets(torch.eye(2), torch.zeros(2, 3), 0.4)


# ----------------------------------------------------------------------------- sample_negatives


def test_sampler_never_returns_an_excluded_column():
    g = torch.Generator().manual_seed(6)
    n, m = 64, 10
    similarity = torch.randn(n, m, generator=g) * 3
    exclude = torch.rand(n, m, generator=g) < 0.6
    exclude[torch.arange(n), torch.randint(m, (n,), generator=g)] = False  # every row keeps a column
    exclude[0] = True
    exclude[0, 7] = False  # one row with a single allowed column
    similarity = similarity.masked_fill(exclude, 30.0)  # the excluded look most like the positive
    draws = sample_negatives(similarity.repeat(200, 1), exclude.repeat(200, 1), generator=g).view(200, n)
    assert draws.dtype == torch.long
    assert not exclude[torch.arange(n).expand(200, n), draws].any()
    assert (draws[:, 0] == 7).all()


def test_sampler_follows_the_softmax_renormalised_over_allowed_columns():
    g = torch.Generator().manual_seed(7)
    rows = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5], [3.0, -2.0, 0.0, 0.0, 1.0]])
    excl = torch.tensor([[False, False, True, False, False], [True, False, False, False, False]])
    n = 20_000  # draws per row kind
    draws = sample_negatives(rows.repeat(n, 1), excl.repeat(n, 1), generator=g).view(n, 2)
    for r in range(2):
        p = rows[r].exp().masked_fill(excl[r], 0.0)
        p = p / p.sum()  # the expected frequencies
        freq = torch.bincount(draws[:, r], minlength=5).double() / n
        # each frequency is a mean of n Bernoulli(p_j): standard error sqrt(p (1 - p) / n) <= 0.0036
        # at n = 20,000; 5 standard errors leave a wrong distribution (uniform, or the softmax at
        # another temperature: off by > 0.05 here) no room and a right one a 1e-6 chance of failing
        tol = 5 * torch.sqrt(p * (1 - p) / n).double() + 1e-12
        assert ((freq - p.double()).abs() <= tol).all(), (r, freq, p)


def test_sampler_falls_back_to_uniform_when_allowed_weights_underflow():
    g = torch.Generator().manual_seed(8)
    row = torch.tensor([[-1e4, 0.0, -1e4, -1e4]])  # softmax puts all its mass on the excluded column
    excl = torch.tensor([[False, True, False, False]])
    n = 9_000
    draws = sample_negatives(row.repeat(n, 1), excl.repeat(n, 1), generator=g)
    freq = torch.bincount(draws, minlength=4).double() / n
    assert freq[1] == 0
    # 1/3 each: standard error sqrt(2/9 / 9000) = 0.005, 5 of them = 0.025
    assert ((freq[[0, 2, 3]] - 1 / 3).abs() < 0.025).all(), freq


def test_sampler_is_reproducible_with_a_generator():
    sim, excl = torch.randn(16, 16), torch.eye(16, dtype=torch.bool)
    a = sample_negatives(sim, excl, generator=torch.Generator().manual_seed(9))
    b = sample_negatives(sim, excl, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_sampler_does_not_touch_the_graph():
    sim = torch.randn(4, 4, requires_grad=True)
    out = sample_negatives(sim * 2, torch.eye(4, dtype=torch.bool))
    assert not out.requires_grad


def test_sampler_bad_input():
    with pytest.raises(ValueError, match=r"rows \[1\] have every column excluded"):
        sample_negatives(torch.zeros(3, 2), torch.tensor([[True, False], [True, True], [False, True]]))
    with pytest.raises(ValueError, match="every column excluded"):
        sample_negatives(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool))  # a batch of one
    with pytest.raises(ValueError, match=r"same shape, got \(3, 3\) and \(3, 2\)"):
        sample_negatives(torch.zeros(3, 3), torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        sample_negatives(torch.zeros(3, 3), torch.eye(3))
    with pytest.raises(ValueError, match="2 dims"):
        sample_negatives(torch.zeros(3), torch.zeros(3, dtype=torch.bool))


# ----------------------------------------------------------------------------- multi_positive_itc (VLMo, BEiT-3)


def test_multi_positive_itc_with_one_positive_each_is_clip_loss():
    from minivlm.losses import clip_loss, multi_positive_itc

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    want = clip_loss(img, txt, 10.0)
    got = multi_positive_itc(10.0 * img @ txt.t(), torch.eye(6, dtype=torch.bool))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_multi_positive_itc_spreads_each_target_over_its_positives():
    from minivlm.losses import multi_positive_itc

    sim = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 0.3, 1.0]])
    pos = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    log_r, log_c = sim.log_softmax(1), sim.log_softmax(0)
    rows = -(log_r[0, :2].mean() + log_r[1, :2].mean() + log_r[2, 2]) / 3
    cols = -(log_c[:2, 0].mean() + log_c[:2, 1].mean() + log_c[2, 2]) / 3
    torch.testing.assert_close(multi_positive_itc(sim, pos), (rows + cols) / 2, rtol=0, atol=1e-6)


def test_multi_positive_itc_bad_input():
    from minivlm.losses import multi_positive_itc

    with pytest.raises(ValueError, match=r"\(B, B\)"):
        multi_positive_itc(torch.zeros(3, 4), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one positive"):
        multi_positive_itc(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises((TypeError, ValueError), match="positives"):
        multi_positive_itc(torch.zeros(3, 3), torch.eye(3))
