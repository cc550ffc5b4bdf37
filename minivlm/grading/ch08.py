"""Checks for the chapter 08 exercises (exercises/08_beit3): the nearest-code lookup of BEiT-2's
visual tokenizer with its straight-through gradient, BEiT's block-wise masking of one image, and
the expert that BEiT-3's Multiway Transformer gives each token in each block.

The lookup is compared with the formula on fresh random vectors and codes whose lengths vary
widely, so that a search on the raw vectors picks other codes than the search on the unit
sphere; its gradient is read back from a backward pass. Block masks are random, so their check
draws a few hundred masks and measures what must hold on every draw (the dtype, the shape, at
least ceil(ratio · grid²) masked patches, the same mask for the same seed) and over all of them
(masks made of blocks: a masked patch's neighbours are masked far more often than when the same
number of patches is scattered at random; no more overshoot than the library's `block_mask`),
with margins of many standard deviations. Routes are compared with VLMo's rule (the library's
`VLMo.routes`, rewritten here without a model) for the three modes on random sizes.

When an answer is wrong the check tries to name the plausible mistake: the farthest code
(argmax), no normalisation, the codes not normalised, the raw code returned, z returned, no
straight-through (the gradient reaches the codebook, never z), the gradient blocked (detached),
the gradient copied to the normalised z, the codebook given the decoder's gradient, indices of the
wrong shape or dtype; patches masked one by one instead of in blocks, overshooting or
undershooting the target, the ratio taken of the side instead of the area, a (grid, grid) mask, a
float mask, the generator ignored; the VL experts in the bottom blocks, text tokens first, VL used
in the image or text mode, one VL block too many or too few, V and L swapped, a list of the wrong
length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivlm.data.masking import block_mask as library_block_mask
from minivlm.grading import GradingFailure, call, fresh_generator, is_close, randint, register, tensor_answer
from minivlm.models.vlmo import LANGUAGE, VISION, VL


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _pair(name: str, got, what: str) -> tuple:
    if not (isinstance(got, tuple) and len(got) == 2):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"{name} must return a tuple {what}, got {type(got).__name__}{extra}")
    return got


# ----------------------------------------------------------------------------- 08.quantize


def quantize_reference(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BEiT-2's lookup: the nearest unit-norm code of each unit-norm z, with a straight-through
    gradient to the raw z. z (B, N, D), codebook (K, D) → (quantized (B, N, D), indices (B, N))."""
    codes = F.normalize(codebook, dim=-1)  # (K, D)
    indices = (F.normalize(z, dim=-1) @ codes.t()).argmax(-1)  # (B, N): largest cosine = smallest distance
    q = codes[indices]  # (B, N, D)
    return z + (q - z).detach(), indices


def _distances(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (B, N, K) between every z and every code."""
    return (z.unsqueeze(-2) - codes).pow(2).sum(-1)


def _quantize_inputs(g: torch.Generator):
    """z and a codebook whose lengths vary a lot (a factor of e^±2), so that the searches with and
    without normalisation disagree somewhere; resampled until they do."""
    for _ in range(50):
        b, n, d, k = randint(g, 2, 3), randint(g, 5, 9), randint(g, 4, 8), randint(g, 6, 12)
        z = torch.randn(b, n, d, generator=g) * torch.exp(torch.randn(b, n, 1, generator=g))
        codebook = torch.randn(k, d, generator=g) * torch.exp(torch.randn(k, 1, generator=g))
        _, want = quantize_reference(z, codebook)
        others = [_distances(z, codebook).argmin(-1), _distances(F.normalize(z, dim=-1), codebook).argmin(-1),
                  (z @ codebook.t()).argmax(-1)]
        if all(not torch.equal(o, want) for o in others):
            return z, codebook
    raise RuntimeError("could not draw inputs on which the searches differ")  # pragma: no cover


@register("08.quantize", title="The nearest normalised code, with a straight-through gradient")
def check_quantize(fn) -> None:
    g = fresh_generator()
    z0, codebook0 = _quantize_inputs(g)
    z, codebook = z0.clone().requires_grad_(True), codebook0.clone().requires_grad_(True)
    b, n, d = z.shape
    want_q, want_idx = quantize_reference(z0, codebook0)
    got = _pair("quantize", call(fn, z, codebook), "(quantized (B, N, D), indices (B, N))")
    quantized, indices = tensor_answer("quantized", got[0]), tensor_answer("indices", got[1])

    # ---- the indices: which code each vector chose
    if tuple(indices.shape) != (b, n):
        raise GradingFailure(f"indices must have shape (B, N) = {(b, n)}, one code per vector, got "
                             f"{tuple(indices.shape)}")
    if indices.dtype != torch.long:
        raise GradingFailure(f"indices must be a long (int64) tensor of code ids, got {indices.dtype}: argmin/argmax "
                             f"already return long; the visual tokens are class labels for a cross-entropy")
    indices = indices.detach().cpu()
    if not torch.equal(indices, want_idx):
        zn, codes = F.normalize(z0, dim=-1), F.normalize(codebook0, dim=-1)
        mistakes = [
            (_distances(zn, codes).argmax(-1),
             "the farthest code was chosen (argmax of the distance, or argmin of the similarity): a vector's token is "
             "its NEAREST code, the smallest distance or the largest cosine"),
            (_distances(z0, codebook0).argmin(-1),
             "nearest code without normalisation (Euclidean distance on the raw vectors): BEiT-2 L2-normalises both z "
             "and the codes first (F.normalize(..., dim=-1)), so that only directions count (cosine distance)"),
            ((z0 @ codebook0.t()).argmax(-1),
             "the largest dot product of the raw vectors: long codes win whatever their direction; normalise z and "
             "the codes first (then the largest dot product is the largest cosine, the nearest code)"),
            (_distances(zn, codebook0).argmin(-1),
             "z was normalised but the codes were not: the search compares unit vectors with unit vectors, "
             "F.normalize(codebook, dim=-1) too"),
        ]
        for candidate, message in mistakes:
            if torch.equal(indices, candidate):
                raise GradingFailure(message)
        wrong = int((indices != want_idx).sum())
        raise GradingFailure(f"indices differ from the nearest normalised codes at {wrong} of {b * n} vectors")

    # ---- the value of quantized: the chosen code, on the unit sphere
    if tuple(quantized.shape) != (b, n, d):
        raise GradingFailure(f"quantized must have z's shape (B, N, D) = {(b, n, d)}, got {tuple(quantized.shape)}")
    if not quantized.is_floating_point():
        raise GradingFailure(f"quantized must be a float tensor (the codes' vectors), got {quantized.dtype}")
    if not is_close(quantized, want_q):
        values = [
            (z0, "quantized is z itself, unchanged: its VALUE must be the chosen code (z + (q − z).detach() equals q); "
                 "only its gradient is z's"),
            (F.normalize(z0, dim=-1), "quantized is the normalised z, not its code: the value must be the chosen "
                                      "code q = codes[indices]"),
            (codebook0[want_idx], "the raw code was returned: the search ran on the unit sphere, so the value is the "
                                  "NORMALISED code, F.normalize(codebook, dim=-1)[indices]"),
        ]
        for candidate, message in values:
            if is_close(quantized, candidate):
                raise GradingFailure(message)
        raise GradingFailure("quantized's values differ from the chosen normalised codes")

    # ---- the gradient: the identity to z (straight-through), nothing to the codebook
    if not quantized.requires_grad:
        raise GradingFailure("the gradient is blocked: quantized carries no gradient at all (it was detached, e.g. "
                             "q.detach(), or made under torch.no_grad()); return z + (q − z).detach(), whose "
                             "gradient with respect to z is the identity")
    w = torch.randn(b, n, d, generator=g)
    (quantized * w).sum().backward()
    if z.grad is None or not bool(z.grad.abs().gt(0).any()):
        raise GradingFailure("no straight-through: no gradient reaches z (the code was returned as it is; its "
                             "gradient goes to the codebook only, so the encoder would never learn); return "
                             "z + (q − z).detach(): value q, gradient the identity to z")
    zn = F.normalize(z0, dim=-1)
    through_normalised = (w - (w * zn).sum(-1, keepdim=True) * zn) / z0.norm(dim=-1, keepdim=True)
    if not is_close(z.grad, w):
        if is_close(z.grad, through_normalised):
            raise GradingFailure("the gradient was copied to the normalised z (ẑ + (q − ẑ).detach()) and then went "
                                 "through the normalisation: copy it to the raw z, z + (q − z).detach(), so that "
                                 "the encoder receives the decoder's gradient unchanged")
        raise GradingFailure("the gradient of (quantized · w).sum() with respect to z must be w (the identity: "
                             "straight-through); write quantized = z + (q − z).detach()")
    if codebook.grad is not None and bool(codebook.grad.abs().gt(0).any()):
        raise GradingFailure("the codebook receives the decoder's gradient through quantized (e.g. z + q − "
                             "z.detach()): detach the whole difference, z + (q − z).detach(); the codes learn from "
                             "their own loss (or by EMA), not through the straight-through path")


# ----------------------------------------------------------------------------- 08.block_mask


def _target(grid: int, ratio: float) -> int:
    return math.ceil(ratio * grid * grid - 1e-9)


def neighbour_rate(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Per mask (M, grid²): of the 4-neighbours of the masked patches, the share that are masked.
    About k / grid² when k patches are scattered at random; far more when they come in blocks."""
    m = masks.reshape(-1, grid, grid).float()
    pairs = (m[:, 1:] * m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] * m[:, :, :-1]).sum((1, 2))  # masked-masked
    degree = torch.zeros(grid, grid)  # 4-neighbours inside the grid: 2 in a corner, 3 on a side, 4 inside
    degree[1:] += 1
    degree[:-1] += 1
    degree[:, 1:] += 1
    degree[:, :-1] += 1
    return 2 * pairs / (m * degree).sum((1, 2)).clamp(min=1)


def _shuffled(masks: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The same number of masked patches per mask, scattered at random (i.i.d. masking)."""
    order = torch.rand(masks.shape, generator=g).argsort(1)
    return masks.gather(1, order)


def _one_mask(fn, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    total = grid * grid
    got = tensor_answer("block_mask's result", call(fn, grid, ratio, generator))
    if tuple(got.shape) == (grid, grid):
        raise GradingFailure(f"the mask is a ({grid}, {grid}) grid: flatten it row-major to shape (grid²,) = "
                             f"({total},), the patch order of patchify (mask.flatten())")
    if tuple(got.shape) != (total,):
        raise GradingFailure(f"the mask must have shape (grid²,) = ({total},), one entry per patch, got "
                             f"{tuple(got.shape)}")
    if got.dtype != torch.bool:
        raise GradingFailure(f"the mask must be a bool tensor (True = masked), got {got.dtype}: it selects tokens, "
                             f"x[mask], and a float mask would index by value")
    return got.detach().cpu()


def _block_round(fn, g: torch.Generator, grid: int, ratio: float, draws: int) -> None:
    total, target = grid * grid, _target(grid, ratio)
    where = f"grid={grid}, ratio={ratio:.3f}"
    seed = randint(g, 0, 2**31 - 2)
    first = _one_mask(fn, grid, ratio, torch.Generator().manual_seed(seed))
    again = _one_mask(fn, grid, ratio, torch.Generator().manual_seed(seed))
    if not torch.equal(first, again):
        raise GradingFailure("two calls with generators seeded alike gave different masks: the generator is not "
                             "used; draw every random number from it (torch.rand((), generator=generator), "
                             "torch.randint(..., generator=generator)) so that a seed gives its mask back")
    stream = torch.Generator().manual_seed(seed + 1)
    masks = torch.stack([first] + [_one_mask(fn, grid, ratio, stream) for _ in range(draws - 1)])  # (M, grid²)
    if len({tuple(m.tolist()) for m in masks[1:]}) < (draws - 1) // 2:
        raise GradingFailure(f"{draws - 1} calls with one generator gave the same few masks: every call must draw "
                             f"new blocks from the generator's current state, not reseed it")

    library = library_block_mask(draws, grid, ratio, generator=torch.Generator().manual_seed(seed + 2))
    counts = masks.sum(1)
    rate = neighbour_rate(masks, grid).mean()
    scattered = neighbour_rate(_shuffled(masks, g), grid).mean()
    library_rate = neighbour_rate(library, grid).mean()
    library_scattered = neighbour_rate(_shuffled(library, g), grid).mean()
    if rate - scattered < 0.5 * (library_rate - library_scattered):
        raise GradingFailure(
            f"the masks are not made of blocks ({where}): a masked patch's neighbours are masked {rate:.0%} of the "
            f"time, about what scattering as many patches at random gives ({scattered:.0%}); BEiT masks rectangles "
            f"(the library's masks: {library_rate:.0%}), so that a masked patch cannot simply be copied from its "
            f"visible neighbours")
    low = int(counts.min())
    if low < target:
        mean = float(counts.float().mean())
        if abs(mean - ratio * grid) < abs(mean - target):
            raise GradingFailure(f"about {mean:.1f} patches masked, ratio · grid ({ratio * grid:.1f}), not "
                                 f"ratio · grid² = {ratio * total:.1f}: the ratio is a share of the grid² patches, "
                                 f"not of the side ({where})")
        raise GradingFailure(f"a mask has {low} masked patches, fewer than the target ceil(ratio · grid²) = {target} "
                             f"({where}): keep adding blocks until at least the target is masked")
    over, library_over = float(counts.float().mean()) - target, float(library.sum(1).float().mean()) - target
    if over > library_over + 0.5:  # the library varies by ±0.15 between samples of this size
        raise GradingFailure(
            f"the masks overshoot the target ceil(ratio · grid²) = {target} by {over:.2f} patches on average "
            f"(the library's block masking: {library_over:.2f}; {where}): stop as soon as the target is reached, and "
            f"draw each block's area between min_patches and what is still needed (target − masked)")


@register("08.block_mask", title="BEiT's block-wise masking of one image")
def check_block_mask(fn) -> None:
    g = fresh_generator()
    # a ratio where BEiT uses it, then a smaller one (the ratio must be the argument, not 0.4);
    # ratio · grid² never an integer, so that rounding down falls short of the target
    for (lo_grid, hi_grid), (lo, hi), draws in (((7, 10), (0.3, 0.5), 200), ((6, 8), (0.15, 0.25), 120)):
        grid = randint(g, lo_grid, hi_grid)
        while True:
            ratio = round(_uniform(g, lo, hi), 3)
            if abs(ratio * grid * grid - round(ratio * grid * grid)) > 0.05:
                break
        _block_round(fn, g, grid, ratio, draws)


# ----------------------------------------------------------------------------- 08.routes


def routes_reference(mode: str, n_image: int, n_text: int, depth: int, vl_depth: int,
                     vl_first: int | None = None, own_order: str = "image_first",
                     vl_in_all_modes: bool = False, image_expert: int = VISION,
                     text_expert: int = LANGUAGE) -> list[torch.Tensor]:
    """VLMo's routing (`VLMo.routes`): a list of `depth` long tensors (T,), image tokens first.
    The keyword arguments after vl_depth make the plausible mistakes; leave them out for the rule."""
    image = torch.full((n_image,), image_expert, dtype=torch.long)
    text = torch.full((n_text,), text_expert, dtype=torch.long)
    own = torch.cat([image, text] if own_order == "image_first" else [text, image])  # (T,)
    first_vl = depth - vl_depth if vl_first is None else vl_first
    fused = mode == "fusion" or vl_in_all_modes
    return [torch.full_like(own, VL) if fused and i >= first_vl else own.clone() for i in range(depth)]


def _bottom_vl(mode, n_image, n_text, depth, vl_depth):
    own = routes_reference(mode, n_image, n_text, depth, 0)
    return [torch.full_like(r, VL) if mode == "fusion" and i < vl_depth else r for i, r in enumerate(own)]


def _routes_answer(got, depth: int, t: int, call_text: str) -> list[torch.Tensor]:
    if not isinstance(got, (list, tuple)):
        raise GradingFailure(f"{call_text} must return a list of tensors, one per block, got {type(got).__name__}")
    if len(got) != depth:
        raise GradingFailure(f"{call_text} returned {len(got)} routes: one route per block, depth = {depth}")
    out = []
    for i, r in enumerate(got):
        r = tensor_answer(f"route {i}", r)
        if tuple(r.shape) != (t,):
            raise GradingFailure(f"{call_text}: route {i} must have shape (T,) = ({t},), one expert per token "
                                 f"(T = n_image + n_text), got {tuple(r.shape)}")
        if r.dtype != torch.long:
            raise GradingFailure(f"{call_text}: route {i} must be a long tensor of expert indices, got {r.dtype}")
        out.append(r.detach().cpu())
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def _routes_mistakes(mode, n_image, n_text, depth, vl_depth) -> list[tuple[list[torch.Tensor], str]]:
    args = (mode, n_image, n_text, depth, vl_depth)
    return [
        (_bottom_vl(*args),
         f"the VL experts are in the bottom blocks: the fusion mode runs the bottom depth − vl_depth = "
         f"{depth - vl_depth} blocks with V for image tokens and L for text tokens, and the TOP vl_depth = {vl_depth} "
         f"blocks with VL for every token (the modalities fuse after each has been encoded on its own)"),
        (routes_reference(*args, own_order="text_first"),
         "text tokens first: the sequence is [image ; text], the n_image image tokens first, then the n_text words"),
        (routes_reference(*args, vl_in_all_modes=True),
         f"the VL expert in {mode} mode: only the fusion mode uses the vision-language expert; the image mode is V "
         f"in every block, the text mode L in every block (a dual encoder, each modality on its own)"),
        (routes_reference(*args, image_expert=LANGUAGE, text_expert=VISION),
         f"the experts are swapped: image tokens go to the vision expert (VISION = {VISION}), text tokens to the "
         f"language expert (LANGUAGE = {LANGUAGE})"),
        (routes_reference(*args, vl_first=depth - vl_depth - 1),
         f"off-by-one: {vl_depth + 1} blocks with the VL expert instead of vl_depth = {vl_depth}; the first VL "
         f"block is depth − vl_depth = {depth - vl_depth}"),
        (routes_reference(*args, vl_first=depth - vl_depth + 1),
         f"off-by-one: {vl_depth - 1} blocks with the VL expert instead of vl_depth = {vl_depth}; the first VL "
         f"block is depth − vl_depth = {depth - vl_depth}"),
    ]


def _describe_routes(routes: list[torch.Tensor]) -> str:
    letters = {VISION: "V", LANGUAGE: "L", VL: "VL"}
    return "; ".join(f"block {i}: " + " ".join(letters.get(int(e), str(int(e))) for e in r)
                     for i, r in enumerate(routes))


@register("08.routes", title="The expert of every token in every block of BEiT-3's Multiway Transformer")
def check_routes(fn) -> None:
    g = fresh_generator()
    depth = randint(g, 4, 6)
    vl_depth = randint(g, 1, depth - 2)  # at least two bottom blocks and one top block
    n_image = randint(g, 3, 6)
    n_text = n_image + randint(g, 1, 3)  # differ, so that text first is seen
    cases = [("fusion", n_image, n_text, depth, vl_depth), ("image", n_image, 0, depth, vl_depth),
             ("text", 0, n_text, depth, vl_depth), ("fusion", n_image, n_text, depth, 0),
             ("fusion", n_image, n_text, depth, depth)]
    for mode, ni, nt, dp, vd in cases:
        call_text = f"routes({mode!r}, n_image={ni}, n_text={nt}, depth={dp}, vl_depth={vd})"
        got = _routes_answer(call(fn, mode, ni, nt, dp, vd), dp, ni + nt, call_text)
        want = routes_reference(mode, ni, nt, dp, vd)
        if _same(got, want):
            continue
        for candidate, message in _routes_mistakes(mode, ni, nt, dp, vd):
            if not _same(candidate, want) and _same(got, candidate):
                raise GradingFailure(f"{call_text}: {message}")
        raise GradingFailure(f"{call_text} returned {_describe_routes(got)}; expected {_describe_routes(want)}")
