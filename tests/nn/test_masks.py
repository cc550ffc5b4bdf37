import pytest
import torch

from minivlm.nn import masks


def test_causal_is_lower_triangular():
    m = masks.causal(4)
    assert m.dtype == torch.bool
    assert m.tolist() == [[i >= j for j in range(4)] for i in range(4)]


def test_bidirectional_all_true():
    assert masks.bidirectional(3).all()


def test_prefix_mask_by_hand():
    m = masks.prefix(5, 2)
    want = torch.tensor(
        [[1, 1, 0, 0, 0],
         [1, 1, 0, 0, 0],
         [1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0],
         [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, want)
    assert torch.equal(masks.prefix(5, 0), masks.causal(5))
    assert masks.prefix(5, 5).all()
    assert torch.equal(masks.unilm(5, 2), want)


def test_prefix_per_sequence_matches_int_version():
    lens = torch.tensor([0, 3, 5])
    m = masks.prefix(5, lens)
    for i, n in enumerate(lens.tolist()):
        assert torch.equal(m[i], masks.prefix(5, n))


def test_padding_and_combine():
    valid = torch.tensor([[1, 1, 0]])
    m = masks.combine(masks.causal(3), masks.padding(valid))
    assert m.shape == (1, 3, 3)
    assert m[0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert masks.combine(None, None) is None


def test_expand_shapes_and_errors():
    assert masks.expand(masks.causal(3), 2, 3, 3).shape == (1, 1, 3, 3)
    assert masks.expand(torch.ones(2, 3, 3, dtype=torch.bool), 2, 3, 3).shape == (2, 1, 3, 3)
    with pytest.raises(ValueError, match="does not fit"):
        masks.expand(masks.causal(3), 2, 3, 4)
    with pytest.raises(ValueError, match="bool"):
        masks.expand(torch.ones(3, 3), 1, 3, 3)
    with pytest.raises(ValueError, match="prefix_len"):
        masks.prefix(4, 5)
