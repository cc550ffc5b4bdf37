"""block_mask and random_mask (chapter 05: VLMo's masked image modelling, BEiT's block-wise masking): how much
is masked, over many draws; that the masked patches form rectangles, not scattered patches;
determinism; bad arguments."""
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from minivlm.data.masking import block_mask, random_mask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_scatter(counts: torch.Tensor, total: int, seed: int) -> torch.Tensor:
    """Masks with the same number of patches as `counts`, scattered uniformly (what block
    masking is not)."""
    g = gen(seed)
    out = torch.zeros(len(counts), total, dtype=torch.bool)
    for i, n in enumerate(counts.tolist()):
        out[i, torch.randperm(total, generator=g)[:n]] = True
    return out


def isolated_fraction(mask: torch.Tensor, grid: int) -> float:
    """Share of the masked patches with no masked 4-neighbour."""
    m = mask.view(-1, 1, grid, grid).float()
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    neighbours = F.conv2d(m, cross, padding=1)
    return float(((m > 0) & (neighbours == 0)).sum() / m.sum())


def perimeter(mask: torch.Tensor, grid: int) -> float:
    """Mean number of masked/unmasked edges between 4-neighbours, per mask."""
    m = mask.view(-1, grid, grid)
    edges = (m[:, 1:] != m[:, :-1]).sum() + (m[:, :, 1:] != m[:, :, :-1]).sum()
    return float(edges) / len(m)


def bounding_box(m: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the masked patches of one (grid, grid) mask."""
    rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
    top, left = int(rows.min()), int(cols.min())
    return top, left, int(rows.max()) - top + 1, int(cols.max()) - left + 1


# ----------------------------------------------------------------------------- how much is masked


@pytest.mark.parametrize("grid,ratio", [(8, 0.4), (4, 0.4), (14, 0.4), (8, 0.1), (8, 0.75), (5, 0.5)])
def test_masked_share_is_at_least_the_ratio_and_barely_more(grid, ratio):
    total = grid * grid
    mask = block_mask(500, grid, ratio, generator=gen(grid))
    assert mask.shape == (500, total) and mask.dtype == torch.bool
    counts = mask.sum(1).float()
    target = math.ceil(ratio * total - 1e-9)
    assert counts.min() >= target  # every mask, not only on average
    assert counts.mean() <= target + 1.0  # a block may overshoot by a few patches, rarely
    assert counts.max() < total or ratio == 1.0


def test_ratio_one_masks_everything_and_a_tiny_ratio_masks_a_little():
    assert block_mask(3, 6, 1.0, generator=gen(0)).all()
    small = block_mask(200, 8, 0.01, generator=gen(1))
    counts = small.sum(1)
    assert counts.min() >= 1 and counts.float().mean() <= 3.0  # ceil(0.64) = 1 patch, one small block


def test_each_mask_of_a_batch_is_drawn_on_its_own():
    mask = block_mask(16, 8, 0.4, generator=gen(3))
    assert len({tuple(row.tolist()) for row in mask}) == 16


# ----------------------------------------------------------------------------- blocks, not scattered patches


@pytest.mark.parametrize("grid,ratio", [(8, 0.4), (14, 0.4), (8, 0.2)])
def test_masked_patches_come_in_blocks(grid, ratio):
    """A block mask leaves almost no masked patch alone and has a much shorter boundary than
    the same number of patches scattered at random (the property MIM needs: a masked patch can't
    be copied from a visible neighbour)."""
    mask = block_mask(400, grid, ratio, generator=gen(grid + 1))
    scatter = random_scatter(mask.sum(1), grid * grid, seed=grid + 2)
    iso, iso_random = isolated_fraction(mask, grid), isolated_fraction(scatter, grid)
    assert iso < 0.05 and iso_random > 0.10, (iso, iso_random)
    per, per_random = perimeter(mask, grid), perimeter(scatter, grid)
    assert per < 0.6 * per_random, (per, per_random)


@pytest.mark.parametrize("side", [2, 3])
def test_one_square_block_anywhere_in_row_major_order(side):
    """min_aspect=1 makes every block square; with min_patches = ceil(ratio · N) = side², one
    block of exactly side × side patches is drawn: each mask, read row-major as (grid, grid), is
    exactly one filled side × side square, and every placement occurs."""
    grid = 8
    mask = block_mask(600, grid, side * side / grid ** 2, min_patches=side * side, min_aspect=1.0, generator=gen(side))
    places = Counter()
    for m in mask.view(-1, grid, grid):
        top, left, h, w = bounding_box(m)
        assert (h, w) == (side, side) and int(m.sum()) == side * side
        places[(top, left)] += 1
    assert len(places) == (grid - side + 1) ** 2  # the block may sit anywhere, edges included


def test_aspect_ratio_varies_both_ways():
    """A single block of 8 patches with aspect in [1/8, 8]: many masks are one filled rectangle,
    some wide (1 × 8, 2 × 4) and some tall (8 × 1, 4 × 2)."""
    grid = 8
    mask = block_mask(1000, grid, 8 / 64, min_patches=8, min_aspect=0.125, generator=gen(7))
    shapes = Counter()
    for m in mask.view(-1, grid, grid):
        top, left, h, w = bounding_box(m)
        if m[top:top + h, left:left + w].all():
            shapes[(h, w)] += 1
    assert sum(shapes.values()) > 400, shapes
    assert shapes[(1, 8)] > 0 and shapes[(8, 1)] > 0, shapes
    wide = sum(n for (h, w), n in shapes.items() if w > h)
    tall = sum(n for (h, w), n in shapes.items() if h > w)
    assert wide > 100 and tall > 100, shapes
    # with min_aspect = 1 only squares (here 3 × 3, the nearest to an area of 8) appear
    squares = block_mask(200, grid, 8 / 64, min_patches=8, min_aspect=1.0, generator=gen(8))
    for m in squares.view(-1, grid, grid):
        assert bounding_box(m)[2:] == (3, 3) and int(m.sum()) == 9


# ----------------------------------------------------------------------------- determinism


def test_seeded_generator_is_deterministic():
    a = block_mask(8, 8, 0.4, generator=gen(11))
    b = block_mask(8, 8, 0.4, generator=gen(11))
    c = block_mask(8, 8, 0.4, generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)  # no generator: the global RNG, so seeding it reproduces the mask
    d = block_mask(8, 8, 0.4)
    torch.manual_seed(5)
    assert torch.equal(block_mask(8, 8, 0.4), d)
    # the generator, not the global RNG, is used when given
    torch.manual_seed(123)
    assert torch.equal(block_mask(8, 8, 0.4, generator=gen(11)), a)


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("name", ["batch_size", "grid", "min_patches"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "4"])
def test_sizes_must_be_positive_ints(name, value):
    kw = dict(batch_size=2, grid=4, min_patches=2)
    kw[name] = value
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got {value!r}"):
        block_mask(**kw)


@pytest.mark.parametrize("name,value,match", [
    ("ratio", 0.0, r"ratio must be a number in \(0\.0, 1\], got 0\.0"),
    ("ratio", -0.2, r"ratio must be a number in \(0\.0, 1\], got -0\.2"),
    ("ratio", 1.5, r"ratio .*got 1\.5"),
    ("ratio", True, r"ratio .*got True"),
    ("ratio", "0.4", r"ratio .*got '0\.4'"),
    ("ratio", None, r"ratio .*got None"),
    ("min_aspect", 0.0, r"min_aspect must be a number in \(0\.001, 1\], got 0\.0"),
    ("min_aspect", 2.0, r"min_aspect .*got 2\.0"),
    ("min_aspect", -1, r"min_aspect .*got -1"),
])
def test_ratio_and_aspect_must_be_in_range(name, value, match):
    with pytest.raises(ValueError, match=match):
        block_mask(2, 4, **{name: value})


# ----------------------------------------------------------------------------- random_mask (MAE, SimMIM)


def test_random_mask_masks_exactly_the_ratio_anywhere():
    mask = random_mask(2000, 4, 0.4, generator=gen(21))
    assert mask.shape == (2000, 16) and mask.dtype == torch.bool
    assert (mask.sum(1) == 7).all()  # ceil(0.4 · 16), no overshoot
    share = mask.float().mean(0)  # every patch equally likely: 7/16 each
    assert (share - 7 / 16).abs().max() < 0.05
    assert torch.equal(random_mask(5, 4, 0.4, generator=gen(3)), random_mask(5, 4, 0.4, generator=gen(3)))
    assert random_mask(3, 6, 1.0, generator=gen(0)).all()


@pytest.mark.parametrize("kw,match", [(dict(batch_size=0), "batch_size"), (dict(grid=2.5), "grid"),
                                      (dict(ratio=0.0), "ratio"), (dict(ratio=True), "ratio")])
def test_random_mask_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        random_mask(**{"batch_size": 2, "grid": 4, "ratio": 0.4, **kw})
