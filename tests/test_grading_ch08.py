"""Chapter 08 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message: wrong values, statistics changed in place, the wrong
dtype, a batch of one vector or none, no gradient or a gradient where none belongs, masks whose
blocks are shaped or placed wrongly or ignore an argument, and for the experiment typed-in counts,
an untrained or ignored codebook, restarts that leave the EMA statistics behind, an ignored
restart_every."""
import math

import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.data.masking import block_mask as library_block_mask
from minivlm.grading.ch08 import count_dead, reference_dead_codes, reference_ema_update, reference_vq_kd_loss
from minivlm.nn.quantize import VectorQuantizer

# ----------------------------------------------------------------------------- 08.ema_update


def _in_place_ema(codebook, cluster_size, embed_sum, z, indices, decay, eps=1e-5):
    out = reference_ema_update(codebook, cluster_size, embed_sum, z, indices, decay, eps)
    cluster_size.copy_(out[1])
    return out


def _unflattened_ema(codebook, cluster_size, embed_sum, z, indices, decay, eps=1e-5):
    one_hot = F.one_hot(indices, len(codebook)).to(embed_sum.dtype)  # (..., K): not flattened
    size = decay * cluster_size + (1 - decay) * one_hot.sum(0)
    total = decay * embed_sum + (1 - decay) * (one_hot.reshape(-1, len(codebook)).t() @ z.reshape(-1, z.shape[-1]))
    n = size.sum()
    return total / ((size + eps) / (n + len(codebook) * eps) * n)[..., None], size, total


def _skip_empty(codebook, cluster_size, embed_sum, z, indices, decay, eps=1e-5):
    if z.numel() == 0:
        return codebook.clone(), cluster_size.clone(), embed_sum.clone()
    return reference_ema_update(codebook, cluster_size, embed_sum, z, indices, decay, eps)


WRONG_EMA = [
    (lambda *a: reference_ema_update(*a, swap=True), "wrong side"),
    (lambda *a: reference_ema_update(*a, decay_all=False), "only the codes chosen in this batch"),
    (lambda *a: reference_ema_update(*a, smooth=False), "no Laplace smoothing"),
    (lambda c, s, e, z, i, d, eps=1e-5: reference_ema_update(c, s, e, z, i, d, 1e-5), "eps ignored"),
    (lambda *a: reference_ema_update(*a, raw_count=True), "this batch's counts"),
    (_in_place_ema, "modified in place"),
    (_unflattened_ema, "flatten z"),
    (lambda *a: tuple(t.float() for t in reference_ema_update(*a)), "keep the statistics' dtype"),
    (_skip_empty, "a batch of no vector"),
    (lambda *a: reference_ema_update(*a)[:2], "must return a tuple"),
]


def test_ema_reference_is_the_quantizers_update():
    vq = VectorQuantizer(codebook_size=12, dim=6, ema=0.97, eps=0.01)
    stats = (vq.codebook.clone(), vq.cluster_size.clone(), vq.embed_sum.clone())
    z = torch.randn(3, 5, 6)
    out = vq(z)
    mine = reference_ema_update(*stats, F.normalize(z, dim=-1), out.indices, 0.97, 0.01)
    torch.testing.assert_close(mine[0], vq.codebook)
    torch.testing.assert_close(mine[1], vq.cluster_size)
    torch.testing.assert_close(mine[2], vq.embed_sum)


# ----------------------------------------------------------------------------- 08.vq_kd_loss


def _detached_decoded(decoded, teacher, z, codebook, indices, beta):
    return reference_vq_kd_loss(decoded.detach(), teacher, z, codebook, indices, beta)


WRONG_VQ = [
    (lambda *a: reference_vq_kd_loss(*a, raw_z=True), "RAW encoder vector"),
    (lambda *a: reference_vq_kd_loss(*a, raw_codes=True), "uses the raw code"),
    (lambda *a: reference_vq_kd_loss(*a, code_grad=True), "codebook receives a gradient"),
    (_detached_decoded, "no gradient reaches decoded"),
    (lambda *a: torch.tensor(reference_vq_kd_loss(*a).item()), "carries no gradient"),
    (lambda *a: reference_vq_kd_loss(*a, reduce="sum"), "a sum where"),
    (lambda *a: reference_vq_kd_loss(*a, cos_dim=1), "wrong axis"),
    (lambda *a: reference_vq_kd_loss(*a, beta_on="distill"), "weighs the wrong term"),
    (lambda *a: reference_vq_kd_loss(*a, minus_cos=True), "−cos"),
    (lambda d, t, z, c, i, beta: reference_vq_kd_loss(d, t, z, c, i, 0.25), "the VQ-KD equation gives"),
    (lambda *a: reference_vq_kd_loss(*a)[None].expand(2), "one number"),
]


def test_vq_kd_reference_is_vqkd_step():
    from minivlm.models.beit3 import VisualTokenizer, VisualTokenizerConfig, vqkd_step

    torch.manual_seed(0)
    tok = VisualTokenizer(VisualTokenizerConfig(dim=16, depth=1, heads=2, code_dim=8, codebook_size=8,
                                                teacher_dim=12)).eval()
    images = torch.rand(3, 3, 32, 32)
    targets = torch.randn(3, 16, 12)
    with torch.no_grad():
        decoded, q = tok(images)
        want = vqkd_step(tok, {"images": images, "targets": targets})["loss"]
        got = reference_vq_kd_loss(decoded, targets, tok.encode(images), tok.quantizer.codebook, q.indices,
                                   tok.config.beta)
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- 08.block_mask


def block_mask_reference(grid, ratio, generator, min_patches=2, min_aspect=0.3):
    return library_block_mask(1, grid, ratio, min_patches=min_patches, min_aspect=min_aspect, generator=generator)[0]


def _blocks(grid, ratio, generator, min_patches=2, min_aspect=0.3, keep_going=lambda count, target: count < target,
            cap=True, target_of=None, aspect="log", place="fit", fixed_patches=None, fixed_aspect=None):
    """The library's algorithm for one image, with the knobs that make the mistakes below."""
    min_patches = min_patches if fixed_patches is None else fixed_patches
    min_aspect = min_aspect if fixed_aspect is None else fixed_aspect
    target = target_of(grid, ratio) if target_of else math.ceil(ratio * grid * grid - 1e-9)
    mask = torch.zeros(grid, grid, dtype=torch.bool)

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    while keep_going(int(mask.sum()), target):
        needed = max(target - int(mask.sum()), 1)
        area = uniform(min(min_patches, needed), needed if cap else max(min_patches, target))
        if aspect == "log":
            a = math.exp(uniform(math.log(min_aspect), math.log(1 / min_aspect)))
        elif aspect == "uniform":
            a = uniform(min_aspect, 1 / min_aspect)
        else:
            a = 1.0
        h = max(1, min(grid, round(math.sqrt(area * a))))
        w = max(1, min(grid, round(math.sqrt(area / a))))
        if place == "fit":
            top = int(torch.randint(grid - h + 1, (), generator=generator))
            left = int(torch.randint(grid - w + 1, (), generator=generator))
        elif place == "corner":
            top, left = 0, 0
        elif place == "top":  # drawn in the upper half of the places only
            top = int(torch.randint((grid - h) // 2 + 1, (), generator=generator))
            left = int(torch.randint(grid - w + 1, (), generator=generator))
        else:  # anywhere, cut off at the border
            top = int(torch.randint(grid, (), generator=generator))
            left = int(torch.randint(grid, (), generator=generator))
        mask[top:top + h, left:left + w] = True
    return mask.flatten()


def _scattered(grid, ratio, generator, **kw):
    mask = torch.zeros(grid * grid, dtype=torch.bool)
    mask[torch.randperm(grid * grid, generator=generator)[:math.ceil(ratio * grid * grid)]] = True
    return mask


def _global_rng(grid, ratio, generator, **kw):
    return block_mask_reference(grid, ratio, None, **kw)


def _reseeded(grid, ratio, generator, **kw):
    return block_mask_reference(grid, ratio, torch.Generator().manual_seed(0), **kw)


WRONG_BLOCK_MASK = [
    (_scattered, "not made of blocks"),
    (lambda g, r, gen, **kw: torch.rand(g * g, generator=gen) < r, "not made of blocks"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, keep_going=lambda count, target: count <= target, **kw), "overshoot"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, cap=False, **kw), "overshoot"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, target_of=lambda g, r: int(r * g * g), **kw), "fewer than the target"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, target_of=lambda g, r: math.ceil(r * g * g) - 2, **kw),
     "fewer than the target"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, target_of=lambda g, r: math.ceil(r * g), **kw), "not of the side"),
    (lambda g, r, gen, **kw: block_mask_reference(g, r, gen, **kw).view(g, g), "flatten it row-major"),
    (lambda g, r, gen, **kw: block_mask_reference(g, r, gen, **kw).float(), "must be a bool tensor"),
    (_global_rng, "the generator is not used"),
    (_reseeded, "gave the same few masks"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, aspect="uniform", **kw), "LOG-uniformly"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, aspect="square", **kw), "square"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, place="top", **kw), "stick to an edge"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, place="cut", **kw), "cut off at the border"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, place="corner", **kw), "did not return within 3 s"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, fixed_patches=2, **kw), "min_patches ignored"),
    (lambda g, r, gen, **kw: _blocks(g, r, gen, fixed_aspect=0.3, **kw), "min_aspect ignored"),
]


# ----------------------------------------------------------------------------- 08.dead_codes


def _typed(features, codebook, steps, every, generator, **kw):
    out = reference_dead_codes(features, codebook, steps, every, generator)
    out["without"]["dead"], out["with"]["dead"] = 50, 2
    return out


def _counts_used(features, codebook, steps, every, generator, **kw):
    out = reference_dead_codes(features, codebook, steps, every, generator)
    for arm in out.values():
        arm["dead"] = len(codebook) - arm["dead"]
    return out


def _untrained_without(features, codebook, steps, every, generator, **kw):
    out = reference_dead_codes(features, codebook, steps, every, generator)
    out["without"] = {"codebook": codebook.clone(), "dead": count_dead(features, codebook), "restarted": 0}
    return out


def _own_start(features, codebook, steps, every, generator, **kw):
    return reference_dead_codes(features, torch.randn(codebook.shape, generator=generator), steps, every, generator)


def _in_place(features, codebook, steps, every, generator, **kw):
    out = reference_dead_codes(features, codebook, steps, every, generator)
    codebook.copy_(out["with"]["codebook"])
    return out


WRONG_DEAD = [
    (lambda *a: reference_dead_codes(*a, follow=False), "move the code's EMA statistics"),
    (lambda f, c, s, e, g: reference_dead_codes(f, c, s, 25, g), "no restart is due"),
    (_typed, "are chosen by no vector of features"),
    (_counts_used, "counts the codes in USE"),
    (_untrained_without, "never moved"),
    (_own_start, "do not point where they started"),
    (_in_place, "modified in place"),
    (lambda *a: {k: {"codebook": v["codebook"], "dead": v["dead"]} for k, v in reference_dead_codes(*a).items()},
     "keys 'codebook', 'dead' and 'restarted'"),
    (lambda *a: (reference_dead_codes(*a)["without"]["dead"], reference_dead_codes(*a)["with"]["dead"]),
     "must return a dict"),
]


GOOD = {"08.ema_update": reference_ema_update, "08.vq_kd_loss": reference_vq_kd_loss,
        "08.block_mask": block_mask_reference, "08.dead_codes": reference_dead_codes}
WRONG = {"08.ema_update": WRONG_EMA, "08.vq_kd_loss": WRONG_VQ, "08.block_mask": WRONG_BLOCK_MASK,
         "08.dead_codes": WRONG_DEAD}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG, draws={"08.block_mask": 5})


def test_chapter_08_has_at_least_three_tasks_and_an_experiment():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("08"))
    assert len(grading.tasks_for_chapter("08")) >= 4


def test_restarts_revive_the_zoo_tokenizers_codes():
    """The library fact the experiment shows: from random codes most die without restarts, few with."""
    from minivlm import zoo
    from minivlm.data import ShapesBench

    tok = zoo.load("beit3_tokenizer").eval()
    with torch.no_grad():
        features = F.normalize(tok.encode(ShapesBench(seed=4).captioning(128)["images"]).reshape(-1, 32), dim=-1)
    out = reference_dead_codes(features, torch.randn(64, 32, generator=torch.Generator().manual_seed(0)), 150, 25,
                               torch.Generator().manual_seed(1))
    assert out["without"]["dead"] >= 30 and out["with"]["dead"] <= 5
