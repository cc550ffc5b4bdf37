"""Chapter 05 checks: the references (the library's MoME block, MIM targets and re-ranking) pass,
the stub says "not implemented yet", and each plausible wrong version fails with its own message:
wrong values, no gradient (.data, .detach(), a loss rebuilt from .item()), inputs changed in place,
padding ignored or on the wrong side, every expert on every token, empty and size-1 inputs, the
model's mode or gradients changed, an argument ignored, typed-in results."""
import torch
from grading_suite import grading_tests

from minivlm.grading import run
from minivlm.grading.ch05 import mim_targets, reference_mim_baseline, reference_mim_loss, reference_mome_block
from minivlm.nn import masks


def reference_rerank(dual_scores, fusion_score_fn, k):
    """As minivlm.models.vlmo.retrieve's "rerank" mode does it, on given scores."""
    n, m = dual_scores.shape
    k = min(k, m)
    top = dual_scores.topk(k, dim=1).indices  # (N, k)
    pairs = torch.stack([torch.arange(n).repeat_interleave(k), top.flatten()], dim=1)  # (N·k, 2)
    fused = fusion_score_fn(pairs).view(n, k)
    return dual_scores.scatter(1, top, fused - fused.min() + 3.0)  # cosines lie in [-1, 1]: 3 is above them all


GOOD = {"05.mome_block": reference_mome_block, "05.mim_loss": reference_mim_loss, "05.rerank": reference_rerank,
        "05.mim_baseline": reference_mim_baseline}


# ----------------------------------------------------------------------------- wrong versions: mome_block


def _routed(h, which, experts, detach_input=False):
    out = torch.zeros_like(h)
    for e, expert in enumerate(experts):
        chosen = which == e
        out[chosen] = expert(h[chosen].detach() if detach_input else h[chosen])
    return out


def _block(x, modality, valid, norm, attention, experts, *, mask="keys", attn_residual=True, ffn_residual=True,
           parallel=False, norm_attn=True, norm_again=False, which=None, dense=False, detach=False, data=False,
           in_place=False, item=False):
    keys = {"keys": masks.padding(valid), "none": None, "rows": valid[:, :, None].expand(-1, -1, valid.shape[1]),
            "inverted": masks.padding(~valid) | torch.eye(valid.shape[1], dtype=torch.bool)}[mask]
    a = attention(norm(x) if norm_attn else x, keys)
    h = x + a if attn_residual else a
    src = x if parallel else h
    src = norm(src) if norm_again else src
    which = modality if which is None else which(modality)
    if dense:
        outs = torch.stack([e(src) for e in experts])
        y = outs.gather(0, which[None, ..., None].expand(1, *which.shape, outs.shape[-1]))[0]
    else:
        y = _routed(src, which, experts, detach_input=data)
    out = (h + y if not parallel else x + a + y) if ffn_residual else y
    if in_place:
        with torch.no_grad():
            x += 0.0
            x.mul_(1.0).add_(1.0)
    if detach:
        return out.detach()
    return out


def _mome_with_item(x, modality, valid, norm, attention, experts):
    out = _block(x, modality, valid, norm, attention, experts)
    return torch.tensor(out.tolist())


WRONG_MOME = [
    (lambda *a: _block(*a, attn_residual=False), "the attention's residual is missing"),
    (lambda *a: _block(*a, ffn_residual=False), "the feed-forward residual is missing"),
    (lambda *a: _block(*a, parallel=True), "the experts read x, not h"),
    (lambda *a: _block(*a, mask="none"), "still attend to the padded ones"),
    (lambda *a: _block(*a, mask="rows"), "still attend to the padded ones"),
    (lambda *a: _block(*a, norm_attn=False), "the attention reads x, not LN(x)"),
    (lambda *a: _block(*a, norm_again=True), "the shared norm was applied again"),
    (lambda *a: _block(*a, which=lambda m: (m + 1) % 3), "off-by-one expert index"),
    (lambda *a: _block(*a, which=lambda m: m.roll(1, dims=0)), "another sequence's indices"),
    (lambda *a: _block(*a, which=lambda m: (torch.arange(m.shape[1]) * 3 // m.shape[1]).expand_as(m)),
     "routed by position"),
    (lambda *a: _block(*a, dense=True), "every expert ran on all"),
    (lambda *a: _block(*a, detach=True), "carries no gradient"),
    (lambda *a: _block(*a, data=True), "with respect to x differs"),
    (_mome_with_item, "carries no gradient"),
    (lambda *a: _block(*a, in_place=True), "modified in place"),
    (lambda *a: _block(*a)[:, :-1], "wrong shape"),
]


# ----------------------------------------------------------------------------- wrong versions: mim_loss


def _mim(pred, images, cover, p, *, per="patch", order="(p1 p2 c)", eps=1e-6, reduce="masked", inner="mean",
         empty="zero", detach=False, item=False, in_place=False):
    if in_place:
        images.sub_(images.mean())
    if not cover.any() and empty != "nan":
        if empty == "zero":
            return pred.sum() * 0.0
        return torch.tensor(0.0)
    sq = (pred - mim_targets(images, p, order=order, per=per, eps=eps)).pow(2)
    err = sq.mean(-1) if inner == "mean" else sq.sum(-1)
    if reduce == "masked":
        loss = err[cover].mean()
    elif reduce == "all":
        loss = err.mean()
    elif reduce == "visible":
        loss = err[~cover].mean()
    elif reduce == "per_image":
        loss = torch.stack([err[i][cover[i]].mean() for i in range(len(err)) if cover[i].any()]).mean()
    elif reduce == "sum":
        loss = err[cover].sum()
    if detach:
        return loss.detach()
    if item:
        return torch.tensor(loss.item())
    return loss


WRONG_MIM = [
    (lambda *a: _mim(*a, per="none"), "the targets are the raw pixels"),
    (lambda *a: _mim(*a, per="image"), "normalised over the whole image"),
    (lambda *a: _mim(*a, per="channel"), "each channel of a patch was normalised on its own"),
    (lambda *a: _mim(*a, order="(c p1 p2)"), "(p1 p2 c), channel fastest"),
    (lambda *a: _mim(*a, eps=0.0), "PLUS 1e-6"),
    (lambda *a: _mim(*a, reduce="all"), "the mean is over every patch"),
    (lambda *a: _mim(*a, reduce="visible"), "the loss is on the visible patches"),
    (lambda *a: _mim(*a, reduce="per_image"), "the mean of per-image means"),
    (lambda *a: _mim(*a, inner="sum"), "summed over its 3P² values"),
    (lambda *a: _mim(*a, reduce="sum"), "a sum over the masked patches"),
    (lambda *a: _mim(*a, empty="nan"), "gives NaN (a mean over zero patches)"),
    (lambda *a: _mim(*a, empty="detached"), "is a detached 0"),
    (lambda *a: _mim(*a, detach=True), "carries no gradient"),
    (lambda *a: _mim(*a, item=True), "carries no gradient"),
    (lambda *a: _mim(*a, in_place=True), "modified in place"),
]


# ----------------------------------------------------------------------------- wrong versions: mim_baseline


@torch.no_grad()
def _baseline(model, train_images, images, cover, *, mean_from="train", see_all=False, order="rows", eval_mode=False,
              train_step=False, floats=False, swap=False, typed=False, all_patches=False, in_place=False):
    if eval_mode:
        model.eval()
    if train_step:
        with torch.enable_grad():
            model.mim_head.bias.sum().backward()
    if in_place:
        images.mul_(0.99)
    mean_patch = model.mim_targets(train_images if mean_from == "train" else images).flatten(0, 1).mean(0)
    target = model.mim_targets(images)
    predicted = model.mim_pixels(model.encode_image(images, None if see_all else cover)[0])
    keep = torch.ones_like(cover) if all_patches else cover
    out = {"model": (predicted - target).pow(2).mean(-1)[keep],
           "mean_patch": (mean_patch - target).pow(2).mean(-1)[keep]}
    if order == "sorted":
        out = {k: v.sort().values for k, v in out.items()}
    if swap:
        out = {"model": out["mean_patch"], "mean_patch": out["model"]}
    if typed:
        out = {"model": torch.full_like(out["model"], 0.7), "mean_patch": torch.full_like(out["model"], 0.78)}
    if floats:
        out = {k: float(v.mean()) for k, v in out.items()}
    return out


WRONG_BASELINE = [
    (lambda *a: _baseline(*a, mean_from="images"), "the mean patch was taken from images"),
    (lambda *a: _baseline(*a, see_all=True), "the model saw the patches it predicts"),
    (lambda *a: _baseline(*a, order="sorted"), "in another order"),
    (lambda *a: _baseline(*a, eval_mode=True), "left in eval mode"),
    (lambda *a: _baseline(*a, train_step=True), "now hold gradients"),
    (lambda *a: _baseline(*a, floats=True), "must be a 1-D tensor"),
    (lambda *a: _baseline(*a, all_patches=True), "one error per masked patch"),
    (lambda *a: _baseline(*a, swap=True), "values differ"),
    (lambda *a: _baseline(*a, typed=True), "values differ"),
    (lambda *a: _baseline(*a, in_place=True), "modified in place"),
    (lambda *a: (a[2], a[3]), "must return a dict"),
]


# ----------------------------------------------------------------------------- wrong versions: rerank


def _top_pairs(dual, k, dim=1):
    n, m = dual.shape
    top = dual.topk(k, dim=dim).indices
    if dim == 1:
        return top, torch.stack([torch.arange(n).repeat_interleave(k), top.flatten()], dim=1)
    return top, torch.stack([top.flatten(), torch.arange(m).repeat(k)], dim=1)


def _raw_scatter(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    return dual.scatter(1, top, fn(pairs).view(len(dual), k))  # log-odds among cosines: not above the rest


def _wrong_axis(dual, fn, k):
    k = min(k, dual.shape[0])
    top, pairs = _top_pairs(dual, k, dim=0)  # the k best images of each text
    fused = fn(pairs).view(k, dual.shape[1])
    return dual.scatter(0, top, fused - fused.min() + 3.0)


def _ignores_fusion(dual, fn, k):
    k = min(k, dual.shape[1])
    fn(_top_pairs(dual, k)[1])  # scored, then forgotten
    return dual.clone()


def _never_calls(dual, fn, k):
    return dual.clone()


def _all_pairs(dual, fn, k):
    n, m = dual.shape
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(m))
    return fn(pairs).view(n, m)  # the fusion mode


def _uncapped(dual, fn, k):
    top, pairs = _top_pairs(dual, k)  # topk raises for k > M
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _ascending(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter(1, top, fused.max() - fused + 3.0)


def _others_to_minus_inf(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    return torch.full_like(dual, float("-inf")).scatter(1, top, fn(pairs).view(len(dual), k))


def _pairs_transposed(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs.flip(1)).view(len(dual), k)  # (text, image): out of range
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _pairs_stacked_on_rows(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs.t()).view(len(dual), k)  # (2, P)
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _scatter_in_place(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter_(1, top, fused - fused.min() + 3.0)


def _scores_twice(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fn(pairs)
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _fused_wrong_layout(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs).view(k, len(dual)).t()  # the scores put back in the wrong places
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _returns_indices(dual, fn, k):
    return reference_rerank(dual, fn, k).argsort(dim=1, descending=True)


WRONG_RERANK = [
    (_raw_scatter, "not placed above all others"),
    (_wrong_axis, "wrong axis"),
    (_ignores_fusion, "fusion scores are ignored"),
    (_never_calls, "fusion scores are ignored"),
    (_all_pairs, "not re-ranking"),
    (_uncapped, "cap k at the number of texts"),
    (_ascending, "ascending order of fusion score"),
    (_others_to_minus_inf, "lost their dual order"),
    (_pairs_transposed, "out of range"),
    (_pairs_stacked_on_rows, "not dim=0"),
    (_scatter_in_place, "modified in place"),
    (_scores_twice, "score each pair once"),
    (_fused_wrong_layout, "did each fusion score go back to its own"),
    (_returns_indices, "returns scores (floats)"),
]

WRONG = {"05.mome_block": WRONG_MOME, "05.mim_loss": WRONG_MIM, "05.rerank": WRONG_RERANK,
         "05.mim_baseline": WRONG_BASELINE}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_chapter_05_has_at_least_three_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("05"))
    assert len(grading.tasks_for_chapter("05")) >= 3


def test_correct_answers_written_another_way_pass():
    """Token-by-token experts with a (B, T, T) key mask, a biased variance, batched fusion calls and a
    shift by the dual maximum are all correct."""

    def token_by_token(x, modality, valid, norm, attention, experts):
        t = x.shape[1]
        h = x + attention(norm(x), valid[:, None, :].expand(-1, t, -1))
        return h + torch.stack([torch.stack([experts[int(modality[b, i])](h[b, i:i + 1])[0] for i in range(t)])
                                for b in range(x.shape[0])])

    def biased_variance(pred, images, cover, p):
        if not cover.any():
            return (pred * 0).sum()
        return (pred - mim_targets(images, p, unbiased=False)).pow(2).mean(-1)[cover].mean()

    def batched_calls(dual, fn, k):
        n, m = dual.shape
        k = min(k, m)
        top = dual.argsort(dim=1, descending=True)[:, :k]
        fused = torch.stack([fn(torch.stack([torch.full((k,), i), top[i]], dim=1)) for i in range(n)])  # row by row
        return dual.scatter(1, top, fused + dual.max() - fused.min() + 1)

    for task, fn in (("05.mome_block", token_by_token), ("05.mim_loss", biased_variance), ("05.rerank", batched_calls)):
        for _ in range(3):
            result = run(task, fn)
            assert result.passed, (task, result.message)


def test_mome_reference_is_the_library_block():
    from minivlm.nn.multiway import MoMEBlock

    torch.manual_seed(0)
    block = MoMEBlock(16, 2, experts=("vision", "language", "vl"))
    x, modality = torch.randn(3, 6, 16), torch.randint(0, 3, (3, 6))
    valid = torch.rand(3, 6) < 0.7
    valid[:, 0] = True
    ours = reference_mome_block(x, modality, valid, block.norm1, lambda h, m: block.attn(h, mask=m),
                                list(block.ffn.experts))
    torch.testing.assert_close(ours, block(x, modality, masks.padding(valid)))


def test_mim_reference_is_the_library_step():
    """The reference loss on a stage-1 batch is the library's mim_step loss."""
    from minivlm.models.vlmo import VLMo, VLMoConfig, mim_step, stage_batches

    torch.manual_seed(0)
    model = VLMo(VLMoConfig(dim=32, depth=2, vl_depth=1, heads=2, embed_dim=32))
    batch = stage_batches("image", 8, seed=1)(0)
    tokens, _ = model.encode_image(batch["images"], batch["patch_mask"])
    scaled = (batch["images"] - model.image_mean) / model.image_std
    ours = reference_mim_loss(model.mim_pixels(tokens), scaled, batch["patch_mask"], 8)
    torch.testing.assert_close(ours, mim_step(model, batch)["loss"])


def test_rerank_agrees_with_the_library_on_a_tiny_vlmo():
    """The reference re-rank, fed VLMo's own dual and fusion scores, ranks as `retrieve(mode="rerank")` does."""
    from minivlm.data import ShapesBench
    from minivlm.eval import itc_similarity
    from minivlm.models.vlmo import VLMo, VLMoConfig, fusion_scores, retrieve

    torch.manual_seed(0)
    model = VLMo(VLMoConfig(dim=32, depth=2, vl_depth=1, heads=2, embed_dim=32))
    data = ShapesBench(seed=5).retrieval(6)
    images, texts = data["images"], data["captions"]
    library = retrieve(model, images, texts, mode="rerank", k=3)["scores"]
    ours = reference_rerank(itc_similarity(model, images, texts), lambda p: fusion_scores(model, images, texts, p), 3)
    assert torch.equal(ours.argsort(1, descending=True), library.argsort(1, descending=True))
