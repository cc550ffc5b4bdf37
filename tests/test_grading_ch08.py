"""Chapter 08 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message."""
import math

import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.data.masking import block_mask as library_block_mask
from minivlm.grading.ch08 import quantize_reference, routes_reference
from minivlm.models.vlmo import LANGUAGE, VISION, VL, VLMo, VLMoConfig

# ----------------------------------------------------------------------------- 08.quantize


def _search(z, codebook, normalize_z=True, normalize_codes=True, farthest=False):
    zs = F.normalize(z, dim=-1) if normalize_z else z
    codes = F.normalize(codebook, dim=-1) if normalize_codes else codebook
    d = (zs.unsqueeze(-2) - codes).pow(2).sum(-1)  # (B, N, K)
    return codes, (d.argmax(-1) if farthest else d.argmin(-1))


def _straight_through(search):
    def quantize(z, codebook):
        codes, idx = search(z, codebook)
        return z + (codes[idx] - z).detach(), idx
    return quantize


def _no_straight_through(z, codebook):
    codes, idx = _search(z, codebook)
    return codes[idx], idx


def _detached(z, codebook):
    codes, idx = _search(z, codebook)
    return codes[idx].detach(), idx


def _raw_code(z, codebook):
    _, idx = _search(z, codebook)
    return z + (codebook[idx] - z).detach(), idx


def _through_normalised(z, codebook):
    codes, idx = _search(z, codebook)
    zn = F.normalize(z, dim=-1)
    return zn + (codes[idx] - zn).detach(), idx


def _codebook_gets_gradient(z, codebook):
    codes, idx = _search(z, codebook)
    return z + codes[idx] - z.detach(), idx


WRONG_QUANTIZE = [
    (_straight_through(lambda z, c: _search(z, c, farthest=True)), "farthest code"),
    (_straight_through(lambda z, c: _search(z, c, False, False)), "without normalisation"),
    (_straight_through(lambda z, c: (c, (z @ c.t()).argmax(-1))), "largest dot product of the raw vectors"),
    (_straight_through(lambda z, c: _search(z, c, True, False)), "the codes were not"),
    (_no_straight_through, "no straight-through"),
    (_detached, "gradient is blocked"),
    (lambda z, c: (z, quantize_reference(z, c)[1]), "z itself"),
    (_raw_code, "raw code"),
    (_through_normalised, "copied to the normalised z"),
    (_codebook_gets_gradient, "codebook receives"),
    (lambda z, c: (quantize_reference(z, c)[0], quantize_reference(z, c)[1].flatten()), "shape (B, N)"),
    (lambda z, c: (quantize_reference(z, c)[0], quantize_reference(z, c)[1].float()), "long (int64)"),
    (lambda z, c: quantize_reference(z, c)[0], "must return a tuple"),
]


# ----------------------------------------------------------------------------- 08.block_mask


def block_mask_reference(grid, ratio, generator):
    return library_block_mask(1, grid, ratio, generator=generator)[0]


def _blocks(grid, ratio, generator, keep_going=lambda count, target: count < target, cap=True, target_of=None):
    """The library's algorithm for one image, with the knobs that make the mistakes below."""
    target = target_of(grid, ratio) if target_of else math.ceil(ratio * grid * grid)
    mask = torch.zeros(grid, grid, dtype=torch.bool)

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    while keep_going(int(mask.sum()), target):
        needed = max(target - int(mask.sum()), 1)
        area = uniform(min(2, needed), needed if cap else max(2, target))
        aspect = math.exp(uniform(math.log(0.3), math.log(1 / 0.3)))
        h = max(1, min(grid, round(math.sqrt(area * aspect))))
        w = max(1, min(grid, round(math.sqrt(area / aspect))))
        top = int(torch.randint(grid - h + 1, (), generator=generator))
        left = int(torch.randint(grid - w + 1, (), generator=generator))
        mask[top:top + h, left:left + w] = True
    return mask.flatten()


def _scattered(grid, ratio, generator):
    mask = torch.zeros(grid * grid, dtype=torch.bool)
    mask[torch.randperm(grid * grid, generator=generator)[:math.ceil(ratio * grid * grid)]] = True
    return mask


def _global_rng(grid, ratio, generator):
    return block_mask_reference(grid, ratio, None)


def _reseeded(grid, ratio, generator):
    return block_mask_reference(grid, ratio, torch.Generator().manual_seed(0))


WRONG_BLOCK_MASK = [
    (_scattered, "not made of blocks"),
    (lambda g, r, gen: torch.rand(g * g, generator=gen) < r, "not made of blocks"),
    (lambda g, r, gen: _blocks(g, r, gen, keep_going=lambda count, target: count <= target), "overshoot"),
    (lambda g, r, gen: _blocks(g, r, gen, cap=False), "overshoot"),
    (lambda g, r, gen: _blocks(g, r, gen, target_of=lambda g, r: int(r * g * g)), "fewer than the target"),
    (lambda g, r, gen: _blocks(g, r, gen, target_of=lambda g, r: math.ceil(r * g * g) - 2), "fewer than the target"),
    (lambda g, r, gen: _blocks(g, r, gen, target_of=lambda g, r: math.ceil(r * g)), "not of the side"),
    (lambda g, r, gen: block_mask_reference(g, r, gen).view(g, g), "flatten it row-major"),
    (lambda g, r, gen: block_mask_reference(g, r, gen).float(), "must be a bool tensor"),
    (_global_rng, "the generator is not used"),
    (_reseeded, "gave the same few masks"),
]


# ----------------------------------------------------------------------------- 08.routes


def _routes_bottom_vl(mode, n_image, n_text, depth, vl_depth):
    own = torch.tensor([VISION] * n_image + [LANGUAGE] * n_text)
    return [torch.full_like(own, VL) if mode == "fusion" and i < vl_depth else own for i in range(depth)]


WRONG_ROUTES = [
    (_routes_bottom_vl, "in the bottom blocks"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v, own_order="text_first"), "text tokens first"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v, vl_in_all_modes=True), "the VL expert in image mode"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v, image_expert=LANGUAGE, text_expert=VISION),
     "experts are swapped"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v, vl_first=d - v - 1), "off-by-one"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v, vl_first=d - v + 1), "off-by-one"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v)[:-1], "one route per block"),
    (lambda m, ni, nt, d, v: routes_reference(m, ni, nt, d, v) + [routes_reference(m, ni, nt, d, v)[-1]],
     "one route per block"),
    (lambda m, ni, nt, d, v: torch.stack(routes_reference(m, ni, nt, d, v)), "must return a list"),
    (lambda m, ni, nt, d, v: [r.float() for r in routes_reference(m, ni, nt, d, v)], "long tensor"),
]


def test_routes_reference_is_vlmos_rule():
    model = VLMo(VLMoConfig(dim=16, depth=5, vl_depth=2, heads=2, embed_dim=16))
    for mode, n_image, n_text in (("image", 5, 0), ("text", 0, 7), ("fusion", 5, 7)):
        want = model.routes(mode, n_image, n_text)
        got = routes_reference(mode, n_image, n_text, 5, 2)
        assert len(got) == len(want) and all(torch.equal(a, b.long()) for a, b in zip(got, want))


GOOD = {"08.quantize": quantize_reference, "08.block_mask": block_mask_reference, "08.routes": routes_reference}
WRONG = {"08.quantize": WRONG_QUANTIZE, "08.block_mask": WRONG_BLOCK_MASK, "08.routes": WRONG_ROUTES}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)
