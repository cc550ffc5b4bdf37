"""The momentum (EMA) copy and the feature queue (chapter 04: ALBEF), by hand."""
import pytest
import torch
from torch import nn

from minivlm.nn.momentum import FeatureQueue, check_momentum, momentum_copy, momentum_update


class Tiny(nn.Module):
    """Two parameters in a nested module and one at the top, plus a buffer EMA must leave alone."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("count", torch.zeros(()))


def filled(value: float) -> Tiny:
    m = Tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return m


# ----------------------------------------------------------------------------- momentum_copy


def test_copy_is_frozen_and_independent():
    torch.manual_seed(0)
    online = Tiny()
    target = momentum_copy(online)
    for (name, p), (name_t, q) in zip(online.named_parameters(), target.named_parameters()):
        assert name == name_t and torch.equal(p, q)
        assert p.requires_grad and not q.requires_grad  # the online model is still trained
        assert p.data_ptr() != q.data_ptr()  # its own storage
    with torch.no_grad():
        online.inner.weight.add_(1.0)
    assert not torch.equal(online.inner.weight, target.inner.weight)
    with pytest.raises(TypeError, match="nn.Module, got Tensor"):
        momentum_copy(torch.zeros(2))


# ----------------------------------------------------------------------------- momentum_update


def test_update_by_hand():
    target, online = filled(1.0), filled(3.0)
    momentum_update(target, online, 0.25)  # 0.25·1 + 0.75·3 = 2.5
    for p in target.parameters():
        assert torch.equal(p, torch.full_like(p, 2.5))
    momentum_update(target, online, 0.5)  # 0.5·2.5 + 0.5·3 = 2.75
    for p in target.parameters():
        assert torch.equal(p, torch.full_like(p, 2.75))
    for p in online.parameters():  # the online model is read, never written
        assert torch.equal(p, torch.full_like(p, 3.0))


@pytest.mark.parametrize("m", [0.0, 0.3, 0.9, 0.995, 1.0, 1, 0])
def test_update_equals_the_formula(m):
    torch.manual_seed(1)
    online, target = Tiny(), momentum_copy(Tiny())
    with torch.no_grad():
        target.count.fill_(7.0)
    old = {k: v.clone() for k, v in target.named_parameters()}
    momentum_update(target, online, m)
    for name, p in target.named_parameters():
        want = m * old[name] + (1 - m) * dict(online.named_parameters())[name]
        torch.testing.assert_close(p, want, rtol=0, atol=1e-7)
        assert not p.requires_grad and p.grad_fn is None  # no autograd history
    if m == 0:  # a plain copy
        assert all(torch.equal(p, q) for p, q in zip(target.parameters(), online.parameters()))
    if m == 1:  # frozen
        assert all(torch.equal(p, old[k]) for k, p in target.named_parameters())
    assert float(target.count) == 7.0  # buffers are not averaged


def test_repeated_updates_converge_geometrically():
    # after k updates toward a fixed online model: target = online + m^k (target0 - online)
    target, online = filled(0.0), filled(1.0)
    for _ in range(10):
        momentum_update(target, online, 0.8)
    for p in target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1 - 0.8 ** 10), rtol=0, atol=1e-6)


@pytest.mark.parametrize("m", [-0.1, 1.5, True, "0.9", None, float("nan")])
def test_momentum_outside_unit_interval_is_an_error(m):
    with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\]"):
        momentum_update(filled(0.0), filled(1.0), m)
    with pytest.raises(ValueError, match="momentum"):
        check_momentum(m)


def test_update_needs_matching_modules():
    with pytest.raises(ValueError, match="same parameters"):
        momentum_update(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2)), 0.9)
    with pytest.raises(ValueError, match=r"'weight' has shape \(2, 3\) in target but \(4, 3\)"):
        momentum_update(nn.Linear(3, 2), nn.Linear(3, 4), 0.9)


# ----------------------------------------------------------------------------- FeatureQueue


def test_queue_starts_with_random_unit_vectors_reproducibly():
    q = FeatureQueue(12, 5, generator=torch.Generator().manual_seed(0))
    assert q.features.shape == (12, 5) and int(q.ptr) == 0
    torch.testing.assert_close(q.features.norm(dim=1), torch.ones(12))
    again = FeatureQueue(12, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q.features, again.features)
    assert "features" in q.state_dict() and "ptr" in q.state_dict()  # saved with a checkpoint


@pytest.mark.parametrize("b", [1, 3, 4, 12])
def test_queue_keeps_the_newest_entries_in_order(b):
    size, dim = 12, 4
    q = FeatureQueue(size, dim)
    rows = torch.randn(7 * size, dim)  # 7 laps: wraps around several times
    for k, a in enumerate(range(0, len(rows), b)):
        q.enqueue(rows[a:a + b])
        seen = rows[:a + b]
        assert int(q.ptr) == (k + 1) * b % size
        if len(seen) >= size:
            assert torch.equal(q.ordered(), seen[-size:])  # oldest first, newest last
        else:  # the newest at the end, initial random entries before them
            assert torch.equal(q.ordered()[-len(seen):], seen)
    assert torch.equal(q.features[: int(q.ptr)], rows[len(rows) - int(q.ptr):])  # the ring itself


def test_enqueue_copies_and_detaches():
    q = FeatureQueue(4, 3)
    x = torch.randn(2, 3, requires_grad=True)
    q.enqueue(x * 1.0)
    assert not q.features.requires_grad
    with torch.no_grad():
        x.zero_()
    assert not torch.equal(q.features[:2], torch.zeros(2, 3))  # a copy, not a view of x


@pytest.mark.parametrize("b", [5, 7, 13])
def test_batch_not_dividing_the_queue_is_an_error(b):
    q = FeatureQueue(12, 4)
    before = q.features.clone()
    with pytest.raises(ValueError, match=rf"queue size \(12\) must be a multiple of the batch size, got a batch of {b}"):
        q.enqueue(torch.randn(b, 4))
    assert torch.equal(q.features, before) and int(q.ptr) == 0  # nothing written


def test_queue_bad_input():
    q = FeatureQueue(8, 4)
    with pytest.raises(ValueError, match=r"x must be \(B, 4\), got \(2, 3\)"):
        q.enqueue(torch.randn(2, 3))
    with pytest.raises(ValueError, match="2 dims"):
        q.enqueue(torch.randn(2, 4, 1))
    with pytest.raises(ValueError, match="floating"):
        q.enqueue(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of the batch size"):
        q.enqueue(torch.randn(0, 4))
    for size, dim in [(0, 4), (8, -1), (True, 4), (8, 2.0)]:
        with pytest.raises(ValueError, match="must be an int >= 1"):
            FeatureQueue(size, dim)

