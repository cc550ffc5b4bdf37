"""Checks for the chapter 08 exercises (exercises/08_beit3): one EMA step of the visual tokenizer's
codebook (BEiT-2's online k-means), the VQ-KD loss, BEiT's block-wise masking of one image, and an
experiment: dead codes of the tokenizer's codebook with and without restarts.

The EMA step is compared with the library quantiser's update (minivlm.nn.quantize) on fresh
vectors of several leading shapes, with codes that no vector chose, a large smoothing constant
(so that eps shows), float64 statistics, a batch of one vector and a batch of none; the inputs are
checked for changes afterwards. The loss is compared with the equation on fresh inputs, with its
gradients to the decoded features, the encoder vectors and the codebook (which must get none),
and on a batch of one patch. Block masks are random, so their check draws a few hundred masks and
measures what must hold on every draw (the dtype, the shape, at least ceil(ratio · grid²) masked
patches, the same mask for the same seed) and over all of them: masks made of blocks (a masked
patch's neighbours are masked far more often than when as many patches are scattered at random),
no more overshoot than the library's, and, with min_patches set to the target so that a mask is
often one rectangle, the shape and place of those rectangles against the library's: tall as
often as wide (a log-uniform aspect), as elongated as min_aspect allows, not all square, placed
anywhere they fit (not stuck to an edge, not cut off at the border), one block where min_patches
says so.

When an answer is wrong the check tries to name the plausible mistake: the decay on the wrong
side, only the chosen codes decayed, no smoothing or eps ignored, the new sums divided by the raw
count, the statistics changed in place, the indices of a (B, N) batch not flattened; the
commitment on the raw vectors or raw codes, the codebook given a gradient (no stop-gradient),
the decoded features detached, a sum instead of a mean, the cosine over the wrong axis, β on the
wrong term, −cos instead of 1 − cos; patches masked one by one, overshooting or undershooting the
target, the ratio of the side, a (grid, grid) mask, a float mask, the generator ignored, a
uniform aspect, square blocks, blocks at an edge, blocks cut off at the border, min_patches or
min_aspect ignored.

The experiment `dead_codes(features, codebook, steps, restart_every, generator)` is run by the
check on the zoo tokenizer's encoder vectors for fresh images, from random codes; the dead codes
of the returned codebooks are recounted on the features, the dead codes of the run without
restarts must still point where they started (a code never chosen does not move), a second call
with no restart due must restart nothing, and the counts must lie within the spread of the
check's own runs of the same experiment.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading

import torch
import torch.nn.functional as F

from minivlm.data import ShapesBench
from minivlm.data.masking import block_mask as library_block_mask
from minivlm.grading import (
    GradingFailure,
    call,
    expect_gradients,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)
from minivlm.zoo import store


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _triple(name: str, got, what: str) -> tuple:
    if not (isinstance(got, tuple) and len(got) == 3):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"{name} must return a tuple {what}, got {type(got).__name__}{extra}")
    return got


# ----------------------------------------------------------------------------- 08.ema_update


def reference_ema_update(codebook, cluster_size, embed_sum, z, indices, decay, eps=1e-5, *, decay_all=True,
                         swap=False, smooth=True, raw_count=False):
    """One online k-means step (minivlm.nn.quantize.VectorQuantizer._ema_update) on new tensors. The
    keyword-only knobs make the plausible mistakes; leave them out for the rule."""
    k, d = embed_sum.shape
    flat = z.reshape(-1, d).to(embed_sum.dtype)
    one_hot = F.one_hot(indices.reshape(-1), k).to(embed_sum.dtype)  # (M, K)
    counts, sums = one_hot.sum(0), one_hot.t() @ flat
    old, new = (1 - decay, decay) if swap else (decay, 1 - decay)
    size = old * cluster_size + new * counts
    total = old * embed_sum + new * sums
    if not decay_all:  # only the chosen codes' statistics move
        chosen = counts > 0
        size = torch.where(chosen, size, cluster_size)
        total = torch.where(chosen[:, None], total, embed_sum)
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n if smooth else size
    if raw_count:
        smoothed = counts.clamp(min=1)
    return total / smoothed[:, None], size, total


def _ema_case(g: torch.Generator, lead: tuple, k: int, d: int, dtype=torch.float32):
    """Statistics of a codebook some steps into training (counts from 0.05 to 5), vectors on the unit
    sphere with a leading shape `lead`, their codes with some codes never chosen."""
    cluster_size = (torch.rand(k, generator=g, dtype=torch.float64) * 5 + 0.05).to(dtype)
    embed_sum = (torch.randn(k, d, generator=g, dtype=torch.float64) * cluster_size.double()[:, None]).to(dtype)
    codebook = embed_sum / cluster_size[:, None]
    z = F.normalize(torch.randn(*lead, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    allowed = torch.randperm(k, generator=g)[: max(1, k - 3)]  # at least three codes no vector chooses
    indices = allowed[torch.randint(len(allowed), lead, generator=g)]
    return codebook, cluster_size, embed_sum, z, indices


@register("08.ema_update", title="One EMA step of the codebook (online k-means)")
def check_ema_update(fn) -> None:
    g = fresh_generator()
    k, d = randint(g, 6, 10), randint(g, 3, 6)
    cases = [((randint(g, 2, 3), randint(g, 4, 7)), 0.99, 1e-5, torch.float32, "z (B, N, D), decay 0.99"),
             ((randint(g, 10, 20),), round(_uniform(g, 0.5, 0.9), 2), 0.5, torch.float32,
              "z (M, D), a decay and a large eps of the check's"),
             ((1,), 0.9, 1e-3, torch.float64, "one vector, float64 statistics"),
             ((0,), 0.8, 1e-3, torch.float32, "a batch of no vector")]
    for lead, decay, eps, dtype, what in cases:
        codebook, cluster_size, embed_sum, z, indices = _ema_case(g, lead, k, d, dtype)
        given = [t.clone() for t in (codebook, cluster_size, embed_sum, z, indices)]
        got = _triple("ema_update", call(fn, *given, decay, eps), "(codebook, cluster_size, embed_sum)")
        for name, before, after in zip(("codebook", "cluster_size", "embed_sum", "z", "indices"),
                                       (codebook, cluster_size, embed_sum, z, indices), given):
            if not torch.equal(before, after):
                raise GradingFailure(f"{name} was modified in place (mul_, add_, copy_ or an assignment into it): "
                                     f"return new tensors and leave the caller's as they were ({what})")
        want = reference_ema_update(codebook, cluster_size, embed_sum, z, indices, decay, eps)
        names = ("codebook", "cluster_size", "embed_sum")
        for name, value, ref in zip(names, got, want):
            value = tensor_answer(name, value)
            if tuple(value.shape) != tuple(ref.shape):
                hint = " (flatten z to (M, D) and indices to (M,) first)" if name != "cluster_size" else ""
                raise GradingFailure(f"{name} must have shape {tuple(ref.shape)}, got {tuple(value.shape)}{hint} "
                                     f"({what})")
            if value.dtype != ref.dtype:
                raise GradingFailure(f"{name} must keep the statistics' dtype ({ref.dtype}), got {value.dtype} "
                                     f"({what})")
        got = [t.detach() for t in got]
        if all(is_close(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(got, want)):
            continue
        mistakes = [
            (dict(swap=True), "the decay is on the wrong side: the OLD statistics keep the share decay "
                              "(n ← decay · n + (1 − decay) · count), the batch brings 1 − decay"),
            (dict(decay_all=False), "only the codes chosen in this batch were updated: every code's count and sum "
                                    "decay at every step, also those of codes no vector chose"),
            (dict(smooth=False), "no Laplace smoothing (or eps ignored): divide the sums by the smoothed counts "
                                 "(n_j + eps) / (N + K · eps) · N"),
            (dict(raw_count=True), "the sums were divided by this batch's counts: a code is its running sum over "
                                   "its running (smoothed) count"),
        ]
        for knobs, message in mistakes:
            alt = reference_ema_update(codebook, cluster_size, embed_sum, z, indices, decay, eps, **knobs)
            if not all(is_close(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(alt, want)) \
                    and all(is_close(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(got, alt)):
                raise GradingFailure(f"{message} ({what})")
        if eps != 1e-5:
            alt = reference_ema_update(codebook, cluster_size, embed_sum, z, indices, decay, 1e-5)
            if all(is_close(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(got, alt)):
                raise GradingFailure(f"eps ignored (the default 1e-5 used): the smoothing takes the eps you are "
                                     f"given, here {eps} ({what})")
        for name, value, ref in zip(names, got, want):
            if not is_close(value, ref, atol=1e-5, rtol=1e-5):
                diff = float((value.double() - ref.double()).abs().max())
                raise GradingFailure(f"{name} differs from one EMA step by up to {diff:.3g} ({what})")


# ----------------------------------------------------------------------------- 08.vq_kd_loss


def reference_vq_kd_loss(decoded, teacher, z, codebook, indices, beta, *, raw_z=False, raw_codes=False,
                         code_grad=False, reduce="mean", cos_dim=-1, beta_on="commitment", minus_cos=False):
    """1 − cos(decoded, teacher) averaged over the patches + β · mean ‖ℓ2(z) − sg[ℓ2(code)]‖². The
    keyword-only knobs make the plausible mistakes."""
    cos = F.cosine_similarity(decoded, teacher, dim=cos_dim)
    distill = -cos if minus_cos else 1 - cos
    codes = (codebook if raw_codes else F.normalize(codebook, dim=-1))[indices]
    codes = codes if code_grad else codes.detach()
    squared = ((z if raw_z else F.normalize(z, dim=-1)) - codes).pow(2)
    distill, commitment = (distill.sum(), squared.sum()) if reduce == "sum" else (distill.mean(), squared.mean())
    return beta * distill + commitment if beta_on == "distill" else distill + beta * commitment


def _vq_case(g: torch.Generator, b: int, n: int):
    t, d, k = randint(g, 5, 8), randint(g, 3, 6), randint(g, 6, 10)
    decoded, teacher = torch.randn(b, n, t, generator=g), torch.randn(b, n, t, generator=g)
    z = torch.randn(b, n, d, generator=g) * (0.5 + 2 * torch.rand(b, n, 1, generator=g))  # lengths far from 1
    codebook = torch.randn(k, d, generator=g) * (0.5 + 2 * torch.rand(k, 1, generator=g))
    indices = torch.randint(k, (b, n), generator=g)
    return decoded, teacher, z, codebook, indices


@register("08.vq_kd_loss", title="The VQ-KD loss: distillation + commitment, no gradient to the codes")
def check_vq_kd_loss(fn) -> None:
    g = fresh_generator()
    for b, n, beta in ((randint(g, 2, 3), randint(g, 4, 6), round(_uniform(g, 0.3, 2.0), 2)), (1, 1, 1.0)):
        what = f"B={b}, N={n}, beta={beta}"
        decoded, teacher, z, codebook, indices = _vq_case(g, b, n)
        leaves = {"decoded": decoded.clone().requires_grad_(True), "z": z.clone().requires_grad_(True),
                  "codebook": codebook.clone().requires_grad_(True)}
        given_teacher, given_indices = teacher.clone(), indices.clone()
        got = call(fn, leaves["decoded"], given_teacher, leaves["z"], leaves["codebook"], given_indices, beta)
        if not (torch.equal(given_teacher, teacher) and torch.equal(given_indices, indices)):
            raise GradingFailure("teacher or indices was modified in place: leave the inputs as they are")
        got = tensor_answer("the loss", got)
        if got.numel() != 1:
            raise GradingFailure(f"the loss must be one number (a scalar tensor), got shape {tuple(got.shape)} ({what})")
        want = reference_vq_kd_loss(decoded, teacher, z, codebook, indices, beta)
        if not is_close(got.reshape(()), want, atol=1e-5, rtol=1e-5):
            mistakes = [
                (dict(raw_z=True), "the commitment compares the RAW encoder vector: normalise z (ℓ2) first, as the "
                                   "search and the codes live on the unit sphere"),
                (dict(raw_codes=True), "the commitment uses the raw code: the chosen code is the NORMALISED one, "
                                       "F.normalize(codebook)[indices]"),
                (dict(raw_z=True, raw_codes=True), "the commitment compares raw vectors: both sides are unit "
                                                   "vectors (ℓ2 in the equation)"),
                (dict(reduce="sum"), "a sum where the loss takes means: average the distillation term over the "
                                     "patches and the commitment over patches and components"),
                (dict(cos_dim=1), "the cosine was taken over the wrong axis: one cosine per patch, between its "
                                  "decoded and its teacher feature (the last axis)"),
                (dict(beta_on="distill"), "β weighs the wrong term: it scales the commitment, not the distillation"),
                (dict(minus_cos=True), "the distillation term is −cos: it is 1 − cos (0 when the directions agree)"),
            ]
            for knobs, message in mistakes:
                alt = reference_vq_kd_loss(decoded, teacher, z, codebook, indices, beta, **knobs)
                if not is_close(alt, want, atol=1e-5, rtol=1e-5) and is_close(got.reshape(()), alt, atol=1e-5,
                                                                                rtol=1e-5):
                    raise GradingFailure(f"{message} ({what})")
            raise GradingFailure(f"the loss is {float(got.detach()):.6f}; the VQ-KD equation gives {float(want):.6f} "
                                 f"({what})")
        if got.grad_fn is not None:
            grad = torch.autograd.grad(got.sum(), leaves["codebook"], retain_graph=True, allow_unused=True)[0]
            if grad is not None and bool(grad.abs().gt(0).any()):
                raise GradingFailure("the codebook receives a gradient from the loss: the code side of the "
                                     "commitment is under a stop-gradient (sg[·], .detach()); the codes move by the "
                                     "EMA step of task 1")
        expect_gradients(f"the loss ({what})", got.reshape(()),
                         reference_vq_kd_loss(leaves["decoded"], teacher, leaves["z"], leaves["codebook"], indices,
                                              beta), leaves)


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


@contextlib.contextmanager
def _time_limit(seconds: float, message: str):
    """Raise GradingFailure(message) if the body runs longer than `seconds` (main thread, Unix; a
    no-op elsewhere): one mask takes a millisecond, and a loop that can never reach its target
    would otherwise hang the notebook."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum, frame):
        raise GradingFailure(message)

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_mask(fn, grid: int, ratio: float, generator: torch.Generator, **kwargs) -> torch.Tensor:
    total = grid * grid
    with _time_limit(3.0, f"block_mask({grid}, {ratio:.3f}, ...) did not return within 3 s (a mask takes a "
                          f"millisecond): the loop never reaches the target; do the blocks always land at the same "
                          f"place (a corner)? Draw each block's top-left corner at random where the block fits"):
        got = call(fn, grid, ratio, generator, **kwargs)
    got = tensor_answer("block_mask's result", got)
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
        # square or misplaced blocks overshoot too: name their shape or place when it shows
        _shape_round(fn, g, randint(g, 9, 10), randint(g, 13, 15), 0.3, count_blocks=False)
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
    # min_patches = the target: a mask is often one rectangle, whose shape and place can be read
    for target, min_aspect in ((randint(g, 13, 14), 0.3), (randint(g, 16, 17), 0.6)):
        _shape_round(fn, g, randint(g, 9, 10), target, min_aspect)


def shape_stats(masks: torch.Tensor, grid: int) -> dict:
    """Over masks (M, grid²): the share that are one filled rectangle; over those rectangles the mean
    log(h / w), the share square, the share at least twice as long one way as the other; over all
    masks, how much more often the last row and column are masked than the first (the border), and
    how much more often one half of the grid is masked than the opposite half."""
    m = masks.reshape(-1, grid, grid)
    h, w = m.any(2).sum(1), m.any(1).sum(1)
    single = m.sum((1, 2)) == h * w
    hs, ws = h[single].double(), w[single].double()
    ratio = (hs / ws).log()
    freq = m.double().mean(0)
    half = grid // 2
    return {"single": float(single.double().mean()), "n": int(single.sum()),
            "halves": max(abs(float(freq[:half].mean() - freq[grid - half:].mean())),
                          abs(float(freq[:, :half].mean() - freq[:, grid - half:].mean()))),
            "logratio": float(ratio.mean()) if len(ratio) else 0.0,
            "square": float((hs == ws).double().mean()) if len(hs) else 0.0,
            "elongated": float((ratio.abs() >= math.log(2) - 1e-9).double().mean()) if len(hs) else 0.0,
            "edge": float(freq[-1].mean() + freq[:, -1].mean() - freq[0].mean() - freq[:, 0].mean())}


def _shape_round(fn, g: torch.Generator, grid: int, target: int, min_aspect: float, draws: int = 600,
                 count_blocks: bool = True) -> None:
    ratio = (target - 0.5) / (grid * grid)
    where = f"grid={grid}, ratio={ratio:.4f} (target {target}), min_patches={target}, min_aspect={min_aspect}"
    stream = torch.Generator().manual_seed(randint(g, 0, 2**31 - 2))
    masks = torch.stack([_one_mask(fn, grid, ratio, stream, min_patches=target, min_aspect=min_aspect)
                         for _ in range(draws)])
    library = library_block_mask(draws, grid, ratio, min_patches=target, min_aspect=min_aspect,
                                 generator=torch.Generator().manual_seed(randint(g, 0, 2**31 - 2)))
    got, want = shape_stats(masks, grid), shape_stats(library, grid)
    if got["edge"] - want["edge"] > 0.12:
        raise GradingFailure(f"the last row and column are masked far more often than the first ({where}): blocks are "
                             f"cut off at the border; place each block at a top-left corner where it FITS, "
                             f"top in [0, grid − h], left in [0, grid − w]")
    if got["edge"] - want["edge"] < -0.12:
        raise GradingFailure(f"the first row or column is masked far more often than the last ({where}): the blocks "
                             f"stick to an edge or a corner; draw the top-left corner at random wherever the block "
                             f"fits")
    if got["halves"] - want["halves"] > 0.1:
        raise GradingFailure(f"one half of the grid is masked far more often than the opposite half ({where}): the "
                             f"blocks stick to an edge or a corner, or their places are not drawn over every place "
                             f"where they fit; top in [0, grid − h], left in [0, grid − w], uniformly")
    if got["single"] >= 0.98 and got["square"] >= 0.98 and want["square"] < 0.6:
        raise GradingFailure(f"every block is square ({where}): draw an aspect ratio (log-uniform in "
                             f"[min_aspect, 1 / min_aspect]) and make the block h = round(√(area · aspect)) by "
                             f"w = round(√(area / aspect))")
    if count_blocks and got["single"] < 0.5 * want["single"]:
        raise GradingFailure(f"only {got['single']:.0%} of the masks are a single block, against {want['single']:.0%} "
                             f"for the library's ({where}): the first block's area is drawn in "
                             f"[min(min_patches, needed), needed], so min_patches = the target makes one block that "
                             f"covers it whenever its rounded sides allow; is min_patches ignored?")
    if not count_blocks:  # only the place and the squares (called to explain an overshoot)
        if got["n"] >= 40 and got["square"] - want["square"] > 0.4:
            raise GradingFailure(f"{got['square']:.0%} of the single blocks are square, against {want['square']:.0%} "
                                 f"for the library's ({where}): draw an aspect ratio for every block")
        return
    if got["n"] >= 40 and abs(got["logratio"] - want["logratio"]) > 0.18:
        raise GradingFailure(f"the blocks are {'taller' if got['logratio'] > want['logratio'] else 'wider'} than they "
                             f"are {'wide' if got['logratio'] > want['logratio'] else 'tall'} on average ({where}; mean "
                             f"log(h / w) {got['logratio']:+.2f}, the library's {want['logratio']:+.2f}): draw the aspect "
                             f"LOG-uniformly, exp of a uniform draw in [log(min_aspect), −log(min_aspect)], so that h/w "
                             f"= 3 is as likely as w/h = 3 (a uniform draw in [min_aspect, 1 / min_aspect] is mostly "
                             f"above 1)")
    if got["n"] >= 40 and abs(got["elongated"] - want["elongated"]) > 0.25:
        raise GradingFailure(f"{got['elongated']:.0%} of the single blocks are at least twice as long one way as the "
                             f"other, against {want['elongated']:.0%} for the library's ({where}): the aspect ratio lies "
                             f"in [min_aspect, 1 / min_aspect]; is min_aspect ignored?")
    if got["n"] >= 40 and got["square"] - want["square"] > 0.4:
        raise GradingFailure(f"{got['square']:.0%} of the single blocks are square, against {want['square']:.0%} for "
                             f"the library's ({where}): draw an aspect ratio for every block")




# ----------------------------------------------------------------------------- 08.dead_codes


def _nearest(vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return (vectors @ F.normalize(codes, dim=-1).t()).argmax(-1)


def count_dead(features: torch.Tensor, codebook: torch.Tensor) -> int:
    """The codes that no vector of features (M, D) chooses (largest cosine)."""
    return int((torch.bincount(_nearest(features, codebook), minlength=len(codebook)) == 0).sum())


def reference_dead_codes(features, codebook, steps, restart_every, generator, batch_size=256, decay=0.99, *,
                         follow=True):
    """The experiment: EMA codes from `codebook`, without restarts and with a restart every
    `restart_every` steps (follow=False: a restart that leaves the EMA statistics behind)."""
    out = {}
    for arm, every in (("without", 0), ("with", restart_every)):
        codes, size, total = codebook.clone(), torch.ones(len(codebook)), codebook.clone()
        chosen, restarted = torch.zeros(len(codebook)), 0
        for step in range(steps):
            batch = features[torch.randint(len(features), (batch_size,), generator=generator)]
            indices = _nearest(batch, codes)
            chosen += torch.bincount(indices, minlength=len(codes))
            codes, size, total = reference_ema_update(codes, size, total, batch, indices, decay)
            if every and (step + 1) % every == 0:
                dead = (chosen == 0).nonzero().flatten()
                new = batch[torch.randint(len(batch), (len(dead),), generator=generator)]
                codes[dead] = new
                if follow:
                    total[dead], size[dead] = new, 1.0
                restarted += len(dead)
                chosen.zero_()
        out[arm] = {"codebook": codes, "dead": count_dead(features, codes), "restarted": restarted}
    return out


def _dead_answer(got, k: int, d: int, what: str) -> dict:
    if not isinstance(got, dict) or any(arm not in got for arm in ("without", "with")):
        have = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"dead_codes must return a dict with keys 'without' and 'with', got {have}")
    out = {}
    for arm in ("without", "with"):
        part = got[arm]
        if not isinstance(part, dict) or any(key not in part for key in ("codebook", "dead", "restarted")):
            have = sorted(part) if isinstance(part, dict) else type(part).__name__
            raise GradingFailure(f"{arm!r} must be a dict with keys 'codebook', 'dead' and 'restarted', got {have}")
        codebook = tensor_answer(f"{arm}['codebook']", part["codebook"]).detach()
        if tuple(codebook.shape) != (k, d) or not codebook.is_floating_point():
            raise GradingFailure(f"{arm}['codebook'] must be the final (K, D) = {(k, d)} float codes, got "
                                 f"{tuple(codebook.shape)} {codebook.dtype}")
        if not bool(torch.isfinite(codebook).all()):
            raise GradingFailure(f"{arm}['codebook'] holds NaN or inf ({what}): a division by a zero count? (the "
                                 f"smoothed counts are never 0)")
        numbers = {}
        for key in ("dead", "restarted"):
            value = part[key]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()) \
                    or isinstance(value, bool):
                raise GradingFailure(f"{arm}[{key!r}] must be a whole number, got {value!r}")
            numbers[key] = int(value)
        out[arm] = {"codebook": codebook, **numbers}
    return out


@register("08.dead_codes", title="The experiment: dead codes with and without restarts")
def check_dead_codes(fn) -> None:

    g = fresh_generator()
    tokenizer = store.load("beit3_tokenizer").eval()
    with torch.no_grad():
        encoded = tokenizer.encode(ShapesBench(seed=randint(g, 0, 2**31 - 2)).captioning(128)["images"])
    features = F.normalize(encoded.reshape(-1, encoded.shape[-1]), dim=-1)  # (2048, D)
    k, d = 64, features.shape[1]
    codebook = torch.randn(k, d, generator=g)
    steps, every = 150, 25
    what = f"{len(features)} vectors, K={k}, {steps} steps, restart_every={every}"
    given = (features.clone(), codebook.clone())
    got = call(fn, given[0], given[1], steps, every, torch.Generator().manual_seed(randint(g, 0, 2**31 - 2)))
    if not (torch.equal(given[0], features) and torch.equal(given[1], codebook)):
        raise GradingFailure("features or codebook was modified in place: train copies (codebook.clone()) and leave "
                             "the inputs as they were")
    out = _dead_answer(got, k, d, what)

    for arm in ("without", "with"):  # the reported counts, recounted on the codebooks returned
        dead = count_dead(features, out[arm]["codebook"])
        if out[arm]["dead"] != dead:
            if out[arm]["dead"] == k - dead:
                raise GradingFailure(f"{arm}['dead'] = {out[arm]['dead']} counts the codes in USE: a dead code is one "
                                     f"that no vector of features chooses ({dead} here)")
            raise GradingFailure(f"{arm}['dead'] = {out[arm]['dead']}, but {dead} codes of the {arm!r} codebook are "
                                 f"chosen by no vector of features ({what}): count them on all the features, with the "
                                 f"final codes")
    if out["without"]["restarted"] != 0:
        raise GradingFailure(f"the run without restarts reports {out['without']['restarted']} restarts: it makes none")
    if out["with"]["restarted"] == 0:
        raise GradingFailure(f"the run with restarts made none ({what}): every restart_every steps, restart the codes "
                             f"that no vector chose since the last restart")

    # the run without restarts starts from the codebook given, and trains
    start = F.normalize(codebook, dim=-1)
    cos = (F.normalize(out["without"]["codebook"], dim=-1) * start).sum(-1)  # (K,)
    used = torch.bincount(_nearest(features, out["without"]["codebook"]), minlength=k) > 0
    still = cos > 1 - 1e-4
    if bool((~used).any()) and float(still[~used].double().mean()) < 0.4:
        raise GradingFailure(f"the dead codes of the run without restarts do not point where they started: a code "
                             f"that no vector chooses only decays, so most of them keep the direction of the codebook "
                             f"given; train from that codebook ({what})")
    if bool(used.any()) and float((~still[used]).double().mean()) < 0.5:
        raise GradingFailure(f"most codes in use in the run without restarts never moved from the codebook given: "
                             f"train it, steps EMA steps on batches of features ({what})")

    # no restart due: the 'with' arm restarts nothing
    again = _dead_answer(call(fn, features.clone(), codebook.clone(), 40, 41,
                              torch.Generator().manual_seed(randint(g, 0, 2**31 - 2))), k, d, what)
    if again["with"]["restarted"] != 0:
        raise GradingFailure("with restart_every = 41 and 40 steps no restart is due, but the run with restarts made "
                             f"{again['with']['restarted']}: restart every restart_every steps (the argument), counting "
                             f"from the start")

    # within the spread of the experiment's own runs
    refs = [reference_dead_codes(features, codebook, steps, every, torch.Generator().manual_seed(randint(g, 0, 2**31 - 2)))
            for _ in range(2)]
    without = [r["without"]["dead"] for r in refs]
    with_ = [r["with"]["dead"] for r in refs]
    slack = max(5, round(0.15 * max(without)))
    if not min(without) - slack <= out["without"]["dead"] <= max(without) + slack:
        raise GradingFailure(f"without restarts {out['without']['dead']} codes are dead; two runs of the experiment by "
                             f"the check left {without} ({what}): a step snaps batch_size random rows of features to "
                             f"their nearest codes (cosine) and applies one EMA step (decay {0.99})")
    if out["with"]["dead"] > max(with_) + max(4, slack):
        raise GradingFailure(f"with restarts {out['with']['dead']} codes are dead; two runs of the experiment by the "
                             f"check left {with_} ({what}): does a restart move the code's EMA statistics with it "
                             f"(embed_sum = the new vector, cluster_size = 1)? Otherwise the next EMA step pulls the "
                             f"code back where it was")
    if min(without) < max(with_) + 10:  # a library fact: restarts revive the zoo tokenizer's codes
        raise GradingFailure(f"the check's own runs left {without} dead codes without restarts and {with_} with them: "
                             f"this is a problem of the zoo tokenizer, not of your function; report it")
