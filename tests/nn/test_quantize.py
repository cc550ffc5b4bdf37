"""The vector quantiser of BEiT-2's VQ-KD tokenizer (chapter 08; chapter 21 builds on it)."""
import math

import pytest
import torch
import torch.nn.functional as F

from minivlm.nn.quantize import VectorQuantizer, codebook_stats


def brute_force_distances(vq: VectorQuantizer, z: torch.Tensor) -> torch.Tensor:
    """(..., K) squared distances from every vector to every code, by explicit differences."""
    x = F.normalize(z, dim=-1) if vq.normalize else z
    e = F.normalize(vq.codebook, dim=-1) if vq.normalize else vq.codebook
    return (x.unsqueeze(-2) - e).pow(2).sum(-1)


@pytest.mark.parametrize("normalize", [True, False])
def test_the_nearest_code_is_chosen(normalize):
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 8, normalize=normalize).double()  # float64: no near-ties flip by rounding
    z = torch.randn(3, 7, 8, dtype=torch.float64) * 2
    out = vq(z)
    d = brute_force_distances(vq, z)  # (3, 7, 32)
    assert out.indices.dtype == torch.long and out.indices.shape == (3, 7)
    assert torch.equal(out.indices, d.argmin(-1))
    assert torch.allclose(out.quantized, vq.codes()[out.indices], atol=1e-12)
    # the two searches really differ: the other mode, same codebook, picks other codes here
    vq.normalize = not normalize
    assert not torch.equal(out.indices, vq(z).indices)


def test_cosine_and_euclidean_search_disagree_on_a_hand_example():
    vq = VectorQuantizer(2, 2, normalize=True)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [10.0, 10.0]]))  # directions 0° and 45°
    z = torch.tensor([[0.5, 0.4]])  # 39°: nearer to code 1 in angle, to code 0 in Euclidean distance
    assert vq(z).indices.tolist() == [1]
    assert torch.allclose(vq(z).quantized, torch.tensor([[0.5, 0.5]]).sqrt())  # the unit code
    vq.normalize = False
    assert vq(z).indices.tolist() == [0]
    assert torch.allclose(vq(z).quantized, torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("ema", [None, 0.9])
def test_the_straight_through_gradient_is_the_identity(normalize, ema):
    torch.manual_seed(1)
    vq = VectorQuantizer(16, 6, normalize=normalize, ema=ema)
    z = torch.randn(2, 5, 6, requires_grad=True)
    w = torch.randn(2, 5, 6)
    codes = vq.codes().detach().clone()  # as the search saw them (an EMA step moves them afterwards)
    out = vq(z)
    (out.quantized * w).sum().backward()
    assert torch.equal(z.grad, w)
    # ... while the value is the code, not z
    assert torch.allclose(out.quantized, codes[out.indices], atol=1e-6)
    assert not torch.allclose(out.quantized, z, atol=1e-2)


def test_usage_counts_and_perplexity_are_exact():
    torch.manual_seed(2)
    vq = VectorQuantizer(16, 4)
    out = vq(torch.randn(4, 50, 4))
    by_hand = torch.tensor([int((out.indices == k).sum()) for k in range(16)])
    assert out.usage.dtype == torch.long and out.usage.shape == (16,)
    assert torch.equal(out.usage, by_hand)
    assert torch.equal(out.usage, torch.bincount(out.indices.flatten(), minlength=16))
    assert int(out.usage.sum()) == 200
    p = [c / 200 for c in by_hand.tolist() if c > 0]
    assert out.perplexity.item() == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-6)
    assert 1 < out.perplexity.item() < 16


@pytest.mark.parametrize("normalize", [True, False])
def test_perplexity_is_codebook_size_when_uniform_and_one_for_one_code(normalize):
    torch.manual_seed(3)
    vq = VectorQuantizer(8, 5, normalize=normalize)
    codes = vq.codebook.detach()
    uniform = vq(codes.repeat(3, 1))  # each code exactly 3 times
    assert torch.equal(uniform.usage, torch.full((8,), 3))
    assert uniform.perplexity.item() == pytest.approx(8.0, rel=1e-6)
    single = vq(codes[2].expand(11, 5))
    assert single.usage.tolist() == [0, 0, 11, 0, 0, 0, 0, 0]
    assert single.perplexity.item() == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_the_loss_formula_and_where_each_term_sends_its_gradient(normalize):
    torch.manual_seed(4)
    beta = 0.3
    vq = VectorQuantizer(8, 4, beta=beta, normalize=normalize)
    z = torch.randn(3, 6, 4, requires_grad=True)
    out = vq(z)
    x = F.normalize(z, dim=-1) if normalize else z
    q = vq.codes()[out.indices]  # (3, 6, 4), differentiable w.r.t. the codebook
    assert out.loss.item() == pytest.approx((1 + beta) * (q - x).pow(2).mean().item(), rel=1e-6)

    gz, ge = torch.autograd.grad(out.loss, (z, vq.codebook))
    codebook_term = (q - x.detach()).pow(2).mean()
    commitment_term = beta * (x - q.detach()).pow(2).mean()
    assert torch.allclose(gz, torch.autograd.grad(commitment_term, z, retain_graph=True)[0], atol=1e-7)
    assert torch.allclose(ge, torch.autograd.grad(codebook_term, vq.codebook, retain_graph=True)[0], atol=1e-7)
    assert ge.abs().sum() > 0 and gz.abs().sum() > 0
    if not normalize:  # in closed form: ∂/∂z = 2β(z − q)/n, ∂/∂e_k = Σ_{i → k} 2(e_k − z_i)/n
        n = z.numel()
        assert torch.allclose(gz, 2 * beta * (z - q).detach() / n, atol=1e-7)
        expected = torch.zeros(8, 4).index_add_(0, out.indices.flatten(), 2 * (q - z).detach().reshape(-1, 4) / n)
        assert torch.allclose(ge, expected, atol=1e-7)
        assert torch.equal(ge[out.usage == 0], torch.zeros(int((out.usage == 0).sum()), 4))


@pytest.mark.parametrize("normalize", [True, False])
def test_ema_moves_the_chosen_codes_towards_their_inputs_in_training_only(normalize):
    torch.manual_seed(5)
    decay, eps = 0.9, 1e-5
    vq = VectorQuantizer(8, 4, normalize=normalize, ema=decay, eps=eps)
    assert list(vq.parameters()) == []  # nothing for an optimizer to train
    assert "codebook" in dict(vq.named_buffers())
    z = torch.randn(64, 4, requires_grad=True)
    before = vq.codebook.clone()
    out = vq(z)
    x = (F.normalize(z, dim=-1) if normalize else z).detach()

    # one EMA step by hand, with Laplace-smoothed cluster sizes
    one_hot = F.one_hot(out.indices, 8).float()
    cluster_size = decay * 1.0 + (1 - decay) * one_hot.sum(0)
    embed_sum = decay * before + (1 - decay) * one_hot.t() @ x
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + 8 * eps) * n
    assert torch.allclose(vq.codebook, embed_sum / smoothed[:, None], atol=1e-6)

    for k in out.usage.nonzero().flatten().tolist():  # each used code is now nearer its inputs' mean
        mean = x[out.indices == k].mean(0)
        if normalize:
            assert F.cosine_similarity(vq.codebook[k], mean, 0) > F.cosine_similarity(before[k], mean, 0)
        else:
            assert (vq.codebook[k] - mean).norm() < (before[k] - mean).norm()

    # the loss is the commitment term alone, against the codes chosen before the update
    q = (F.normalize(before, dim=-1) if normalize else before)[out.indices]
    assert out.loss.item() == pytest.approx(0.25 * (x - q).pow(2).mean().item(), rel=1e-6)
    out.loss.backward()
    assert vq.codebook.grad is None and not vq.codebook.requires_grad
    assert z.grad.abs().sum() > 0

    vq.eval()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(64, 4))
    assert all(torch.equal(v, state[k]) for k, v in vq.state_dict().items())


def test_lookup_returns_the_quantized_values():
    torch.manual_seed(6)
    vq = VectorQuantizer(10, 6)
    with torch.no_grad():
        out = vq(torch.randn(2, 9, 6))
        looked_up = vq.lookup(out.indices)
    assert looked_up.shape == (2, 9, 6)
    assert torch.allclose(looked_up, out.quantized, atol=1e-6)
    assert torch.allclose(looked_up.norm(dim=-1), torch.ones(2, 9))  # normalised codes
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 9\], got values in \[0, 10\]"):
        vq.lookup(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="integer tensor"):
        vq.lookup(torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(codebook_size=1), ValueError, r"codebook_size must be an int >= 2, got 1"),
    (dict(codebook_size=0), ValueError, r"codebook_size must be an int >= 2, got 0"),
    (dict(dim=0), ValueError, r"dim must be an int >= 1, got 0"),
    (dict(beta=-0.1), ValueError, r"beta must be a number in \[0, inf\], got -0.1"),
    (dict(ema=0), ValueError, r"ema must be a number in \(0, 1\), got 0"),
    (dict(ema=1.0), ValueError, r"ema must be a number in \(0, 1\), got 1.0"),
    (dict(ema=1.5), ValueError, r"ema must be a number in \(0, 1\), got 1.5"),
    (dict(normalize="yes"), TypeError, "normalize must be True or False, got 'yes'"),
])
def test_bad_settings(kwargs, error, match):
    settings = dict(codebook_size=8, dim=4) | kwargs
    with pytest.raises(error, match=match):
        VectorQuantizer(**settings)


def test_bad_input():
    vq = VectorQuantizer(8, 8)
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 8\), got \(2, 3, 5\)"):
        vq(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="z must be a floating tensor, got dtype torch.int64"):
        vq(torch.ones(2, 3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="z must be a torch.Tensor, got list"):
        vq([[0.0] * 8])
    with pytest.raises(ValueError, match="torch.float32, got torch.float64"):
        vq(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="no vectors"):
        vq(torch.randn(0, 8))


def test_codebook_stats_on_a_hand_example():
    stats = codebook_stats(torch.tensor([5, 0, 3, 0, 0, 2, 0, 0]))
    assert stats["dead"] == 5
    assert stats["used_fraction"] == 3 / 8
    expected = math.exp(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)))
    assert stats["perplexity"] == pytest.approx(expected, rel=1e-12)
    uniform = codebook_stats(torch.full((4,), 7.0))
    assert uniform == {"perplexity": pytest.approx(4.0), "dead": 0, "used_fraction": 1.0}
    with pytest.raises(ValueError, match="counts must be >= 0, got a minimum of -1"):
        codebook_stats(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="all zero"):
        codebook_stats(torch.zeros(4))


@pytest.mark.parametrize("ema", [None, 0.9])
def test_restart_dead_moves_only_the_dead_codes_onto_inputs(ema):
    torch.manual_seed(7)
    vq = VectorQuantizer(8, 4, normalize=False, ema=ema)
    before = vq.codebook.detach().clone()
    z = torch.randn(10, 4)
    counts = torch.tensor([3, 0, 1, 2, 0, 5, 1, 1])
    assert vq.restart_dead(z, counts) == 2
    alive = counts > 0
    assert torch.equal(vq.codebook.detach()[alive], before[alive])
    for k in (1, 4):  # each dead code is now exactly one of the inputs
        assert (vq.codebook.detach()[k] == z).all(dim=1).any()
    if ema is not None:  # and the EMA state agrees with it
        assert torch.equal(vq.embed_sum[1], vq.codebook[1]) and vq.cluster_size[1] == 1
    assert vq.restart_dead(z, torch.ones(8)) == 0
