"""Multiway layers (chapter 05: VLMo's MoME blocks): every token goes through the expert its
modality index names, and only that one; checked token by token against each expert alone,
through the gradients, against a hand-built MoME block, and against torchscale's MultiwayNetwork."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minivlm.nn import masks
from minivlm.nn.multiway import FeedForwardExpert, MoMEBlock, Multiway, check_modality

D = 8


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def experts(n: int, seed: int = 0) -> list[nn.Module]:
    """n experts with different weights (and a LayerNorm, so a token's output depends on the
    token alone, not on the other tokens of its expert)."""
    torch.manual_seed(seed)
    out = [FeedForwardExpert(D, 16) for _ in range(n)]
    with torch.no_grad():  # LayerNorm starts at (1, 0): make each expert's differ too
        for e in out:
            e[0].weight.normal_(1.0, 0.3)
            e[0].bias.normal_(0.0, 0.3)
    return out


def by_hand(layer: Multiway, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Each token through its own expert, one token at a time."""
    b, t = x.shape[:2]
    route = modality.expand(b, t) if modality.ndim == 1 else modality
    rows = [torch.stack([layer.experts[int(route[i, j])](x[i, j:j + 1])[0] for j in range(t)]) for i in range(b)]
    return torch.stack(rows)


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("n_experts", [2, 3])
@pytest.mark.parametrize("routing", ["(T,)", "(B, T)"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_token_equals_its_own_expert_alone(n_experts, routing, seed):
    g = torch.Generator().manual_seed(seed)
    layer = Multiway(experts(n_experts, seed))
    x = torch.randn(4, 11, D, generator=g)
    shape = (11,) if routing == "(T,)" else (4, 11)
    modality = torch.randint(n_experts, shape, generator=g)  # mixed, in any order
    modality.view(-1)[:n_experts] = torch.arange(n_experts)  # every expert used at least once
    out = layer(x, modality)
    assert out.shape == x.shape
    close(out, by_hand(layer, x, modality))
    # and the experts really differ: routing every token to expert 0 gives another answer
    assert (layer(x, torch.zeros_like(modality)) - out).abs().max() > 1e-2


def test_routing_is_per_row_not_by_position():
    """Row 0 is [image ; text], row 1 is [text ; image]: a layer that read row 0's routing for
    every row, or split by position, would run row 1's tokens through the wrong experts."""
    layer = Multiway(experts(2))
    x = torch.randn(2, 6, D)
    modality = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    out = layer(x, modality)
    for j in range(6):
        close(out[0, j], layer.experts[0 if j < 3 else 1](x[0, j]))
        close(out[1, j], layer.experts[1 if j < 3 else 0](x[1, j]))


def test_other_integer_dtypes_and_the_returned_route():
    layer = Multiway(experts(3))
    x = torch.randn(2, 5, D)
    route = torch.tensor([2, 0, 1, 1, 2])
    want = layer(x, route)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        close(layer(x, route.to(dtype)), want)
    expanded = check_modality(route, x, 3)
    assert expanded.shape == (2, 5) and torch.equal(expanded, route.expand(2, 5))


def test_names_and_length():
    layer = Multiway(experts(3), names=["vision", "language", "vl"])
    assert layer.names == ("vision", "language", "vl") and len(layer) == 3
    assert Multiway(experts(2)).names == ("0", "1")


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_only_the_experts_used():
    layer = Multiway(experts(3))
    x = torch.randn(3, 7, D, requires_grad=True)
    modality = torch.randint(2, (3, 7), generator=torch.Generator().manual_seed(0)) * 2  # experts 0 and 2 only
    modality[0, 0], modality[0, 1] = 0, 2
    layer(x, modality).pow(2).sum().backward()
    for name, p in layer.experts[1].named_parameters():
        assert p.grad is None or not p.grad.any(), f"unused expert got a gradient on {name}"
    for e in (0, 2):
        for name, p in layer.experts[e].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"expert {e}: no gradient on {name}"
    # the input's gradient is the one of the token-by-token computation
    x2 = x.detach().clone().requires_grad_(True)
    by_hand(layer, x2, modality).pow(2).sum().backward()
    close(x.grad, x2.grad, atol=1e-5)


def test_an_expert_gets_gradient_only_from_its_own_tokens():
    """Tokens of expert 0 only carry a loss: expert 1's parameters must get nothing, even
    though its tokens sit in the same sequence."""
    layer = Multiway(experts(2))
    x = torch.randn(2, 6, D)
    modality = torch.tensor([0, 1, 0, 1, 1, 0])
    out = layer(x, modality)
    out[:, modality == 0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in layer.experts[1].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.experts[0].parameters())


# ----------------------------------------------------------------------------- the MoME block


@pytest.mark.parametrize("n_experts", [2, 3])
def test_mome_block_by_hand(n_experts):
    """h = x + Attn(LN1(x), mask) over all tokens together (shared); out = h + FFN_e(LN_e(h))
    with e each token's expert."""
    torch.manual_seed(n_experts)
    names = ("vision", "language", "vl")[:n_experts]
    block = MoMEBlock(D, heads=2, experts=names, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for p in block.parameters():  # LayerNorms away from (1, 0), so that each expert's norm matters
            p.add_(torch.randn_like(p) * 0.2)
    assert block.ffn.names == names and len(block.ffn) == n_experts
    x = torch.randn(3, 9, D)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, 6:] = False
    valid[2, 8:] = False
    mask = masks.padding(valid)
    modality = torch.randint(n_experts, (3, 9), generator=torch.Generator().manual_seed(5))
    out = block(x, modality, mask)

    h = x + block.attn(block.norm1(x), mask=mask)
    want = torch.empty_like(x)
    for i in range(3):
        for j in range(9):
            expert = block.ffn.experts[int(modality[i, j])]
            ln, mlp = expert[0], expert[1]
            y = F.layer_norm(h[i, j], (D,), ln.weight, ln.bias, ln.eps)
            want[i, j] = h[i, j] + mlp.fc2(F.gelu(mlp.fc1(y)))
    close(out, want, atol=1e-5)
    # the attention is shared: a token's output depends on the other tokens, whatever their expert
    x2 = x.clone()
    x2[0, 0] += torch.randn(D)  # not a constant: LN1 would remove it
    assert (block(x2, modality, mask)[0, 1:] - out[0, 1:]).abs().max() > 1e-4
    # padded keys are not attended to: changing them leaves the real tokens alone
    x3 = x.clone()
    x3[1, 6:] = torch.randn(3, D)
    close(block(x3, modality, mask)[1, :6], out[1, :6], atol=1e-5)


def test_mome_block_rejects_bad_expert_names():
    with pytest.raises(ValueError, match="experts must be distinct names"):
        MoMEBlock(D, 2, experts=("vision", "vision"))
    with pytest.raises(ValueError, match="experts must hold at least one string"):
        MoMEBlock(D, 2, experts=[])
    with pytest.raises(TypeError, match="experts must be a list of strings, got one str 'vision'"):
        MoMEBlock(D, 2, experts="vision")


def test_mome_block_routes_with_its_own_expert_count():
    block = MoMEBlock(D, 2, experts=("vision", "language"))
    with pytest.raises(ValueError, match=r"expert indices in \[0, 1\] \(2 experts\), got values in \[0, 2\]"):
        block(torch.randn(1, 3, D), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- edges


def test_no_tokens_at_all():
    layer = Multiway(experts(2))
    out = layer(torch.randn(3, 0, D), torch.zeros(0, dtype=torch.long))
    assert out.shape == (3, 0, D)
    out = layer(torch.randn(0, 4, D), torch.tensor([0, 1, 1, 0]))
    assert out.shape == (0, 4, D)
    block = MoMEBlock(D, 2)
    assert block(torch.randn(2, 0, D), torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, D)


def test_experts_may_change_the_width():
    layer = Multiway([nn.Linear(D, 5), nn.Linear(D, 5)])
    x = torch.randn(2, 4, D)
    route = torch.tensor([1, 0, 0, 1])
    out = layer(x, route)
    assert out.shape == (2, 4, 5)
    close(out[:, 0], layer.experts[1](x[:, 0]))
    close(out[:, 1], layer.experts[0](x[:, 1]))


def test_no_tokens_with_experts_that_change_the_width():
    layer = Multiway([nn.Linear(D, 5), nn.Linear(D, 5)])
    assert layer(torch.randn(2, 0, D), torch.zeros(0, dtype=torch.long)).shape == (2, 0, 5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("route,match", [
    (torch.tensor([0, 1, -1, 0]), r"expert indices in \[0, 1\] \(2 experts\), got values in \[-1, 1\]"),
    (torch.tensor([0, 2, 1, 0]), r"expert indices in \[0, 1\] \(2 experts\), got values in \[0, 2\]"),
    (torch.tensor([[0, 1, 0, 0], [0, 0, 7, 0]]), r"got values in \[0, 7\]"),
])
def test_expert_index_out_of_range(route, match):
    with pytest.raises(ValueError, match=match):
        Multiway(experts(2))(torch.randn(2, 4, D), route)


@pytest.mark.parametrize("route,match", [
    (torch.zeros(5, dtype=torch.long), r"modality \(T,\) must have one entry per token, T=4, got shape \(5,\)"),
    (torch.zeros(3, dtype=torch.long), r"T=4, got shape \(3,\)"),
    (torch.zeros(3, 4, dtype=torch.long), r"\(B, T\) = \(2, 4\) for tokens of shape \(2, 4, 8\), got \(3, 4\)"),
    (torch.zeros(2, 5, dtype=torch.long), r"got \(2, 5\)"),
    (torch.zeros(2, 4, 1, dtype=torch.long), r"modality must have shape \(T,\) = \(4,\) or \(B, T\).*got \(2, 4, 1\)"),
    (torch.zeros((), dtype=torch.long), r"modality must have shape .*got \(\)"),
])
def test_modality_shape_must_match_the_tokens(route, match):
    with pytest.raises(ValueError, match=match):
        Multiway(experts(2))(torch.randn(2, 4, D), route)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_modality_must_be_integer(dtype):
    with pytest.raises(ValueError, match=rf"modality must be an integer tensor, got dtype {dtype}"):
        Multiway(experts(2))(torch.randn(2, 4, D), torch.zeros(4, dtype=dtype))


def test_modality_and_tokens_must_be_tensors():
    layer = Multiway(experts(2))
    with pytest.raises(TypeError, match="modality must be a torch.Tensor, got list"):
        layer(torch.randn(2, 4, D), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"x must have 3 dims, got 2"):
        layer(torch.randn(4, D), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        layer(torch.ones(2, 4, D, dtype=torch.long), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("bad", [[], (), None, [nn.Linear(D, D), "expert"], [lambda x: x]])
def test_experts_must_be_a_non_empty_list_of_modules(bad):
    with pytest.raises(TypeError, match="experts must be a non-empty list of nn.Module"):
        Multiway(bad)


@pytest.mark.parametrize("one", [nn.Linear(D, D), nn.Sequential(nn.Linear(D, D), nn.Linear(D, D))])
def test_one_module_is_not_a_list_of_experts(one):
    # a Sequential would otherwise pass as its layers, each taken for an expert
    with pytest.raises(TypeError, match=f"experts must be a list of modules, one per expert, got one {type(one).__name__}"):
        Multiway(one)


@pytest.mark.parametrize("names", [["vision"], ["vision", "language", "vl"]])
def test_one_name_per_expert(names):
    with pytest.raises(ValueError, match=rf"need one name per expert, got {len(names)} names for 2 experts"):
        Multiway(experts(2), names=names)


# ----------------------------------------------------------------------------- torchscale parity


def test_equals_torchscale_multiway_network():
    """torchscale (BEiT-3's code) routes by position: the first split_position tokens to expert
    A, the rest to B. Ours with modality [0]*split + [1]*rest, same weights, must agree; both
    edges too (split 0: all B; split -1: all A)."""
    multiway_network = pytest.importorskip("torchscale.component.multiway_network")
    ffn_module = pytest.importorskip("torchscale.component.feedforward_network")
    torch.manual_seed(0)
    hidden = 16
    ref_norm = multiway_network.MultiwayNetwork(nn.LayerNorm(D))
    ref_ffn = multiway_network.MultiwayNetwork(ffn_module.FeedForwardNetwork(D, hidden, "gelu", 0.0, 0.0, 1e-5))
    ours = Multiway([FeedForwardExpert(D, hidden), FeedForwardExpert(D, hidden)])
    with torch.no_grad():
        for name in ("A", "B"):  # LayerNorms away from (1, 0), different in A and B
            norm = getattr(ref_norm, name)
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
        for expert, name in zip(ours.experts, ("A", "B")):
            norm, ffn = getattr(ref_norm, name), getattr(ref_ffn, name)
            expert[0].load_state_dict(norm.state_dict())
            expert[1].fc1.load_state_dict(ffn.fc1.state_dict())
            expert[1].fc2.load_state_dict(ffn.fc2.state_dict())
    assert not torch.equal(ref_ffn.A.fc1.weight, ref_ffn.B.fc1.weight)  # two different experts
    x = torch.randn(3, 10, D)
    for split in (0, 1, 4, 9, 10):
        for module in (ref_norm, ref_ffn):
            module.split_position = split
        want = ref_ffn(ref_norm(x))
        route = torch.tensor([0] * split + [1] * (10 - split))
        close(ours(x, route), want, atol=1e-5)
    for module in (ref_norm, ref_ffn):
        module.split_position = -1  # torchscale's "no split": all tokens to A
    close(ours(x, torch.zeros(10, dtype=torch.long)), ref_ffn(ref_norm(x)), atol=1e-5)
