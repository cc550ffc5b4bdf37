"""Checks for the chapter 05 exercises (exercises/05_vlmo): a whole MoME block (the shared
attention over a padded, mixed sequence, then each token through its own modality expert), the
masked-image-modelling loss on per-patch normalised targets, the re-ranking of the dual encoder's
top k by the fusion encoder, and an experiment: does a model trained on masked image modelling
predict a hidden patch better than the mean patch, a predictor that never looks at the image?

The block is compared with the library's MoMEBlock on fresh random weights, tokens, routes (not
sorted by position) and padding (anywhere in the sequence, not only at the end), with a size-1
case; the experts count the tokens they are given, so that running every expert on every token is
caught even when the outputs are right; gradients must reach x and every parameter as the
library's do. The MIM loss is compared with the formula on images that hold flat patches (a zero
spread), with covers that mask a different number of patches in each image, none in one, and a
cover that masks nothing at all (0, still attached to the graph). Re-ranking is judged by what it
must do, not by its values: the pairs it asks the fusion function to score (each row's top k by
dual score, and no other) and the order its scores give each row. The experiment's function is
run on fresh images with a fresh VLMo, with one whose MIM head outputs the mean patch itself (the
two arms must then agree patch for patch), and with one of another patch size given in training
mode; every number is recomputed, and the model must come back unchanged (weights, mode, no
gradients). When an answer is wrong the check tries to name the plausible mistake.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from minivlm.data.shapesworld import ShapesWorld
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_gradients,
    expect_zero_loss,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)
from minivlm.models.vlmo import VLMo, VLMoConfig
from minivlm.nn import masks
from minivlm.nn.multiway import MoMEBlock

# ----------------------------------------------------------------------------- 05.mome_block


class _CountingExpert(nn.Module):
    """An expert that counts the tokens (rows) it is given, so that the check sees who ran on what."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[-1]:
            self.rows += x.numel() // x.shape[-1]
        return self.inner(x)


class _Attention(nn.Module):
    """The block's shared self-attention as the exercise calls it: attention(h, mask)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise GradingFailure(f"the attention mask must be a bool tensor, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise GradingFailure(f"the attention mask must be bool (True = may attend), got {mask.dtype}")
        return self.inner(h, mask=mask)


def reference_mome_block(x, modality, valid, norm, attention, experts):
    """x + Attn(LN(x)) over the real keys only, then + FFN_e(h) (each expert's own LN inside)."""
    h = x + attention(norm(x), masks.padding(valid))  # (B, T, D): padded tokens are no keys
    out = None
    for e, expert in enumerate(experts):
        chosen = modality == e  # (B, T)
        y = expert(h[chosen])  # (n_e, D)
        out = h.new_zeros(h.shape) if out is None else out
        out[chosen] = y
    return h + out


def _route(h, which, experts):
    """Each token (b, t) through experts[which[b, t]]; -1: 0 (no grad)."""
    outs = [e(h) for e in experts]
    out = torch.zeros_like(outs[0])
    for e, y in enumerate(outs):
        out = torch.where((which == e)[..., None], y, out)
    return out


def _mome_candidates(x, modality, valid, norm, attention, experts) -> list:
    n = len(experts)
    b, t = modality.shape
    keys = masks.padding(valid)
    with torch.no_grad():
        a = attention(norm(x), keys)
        h = x + a
        route = _route(h, modality, experts)
        named = [
            (a + _route(a, modality, experts), "the attention's residual is missing: h = x + Attention(LN(x)), the "
                                               "block adds to x, it does not replace it"),
            (route, "the feed-forward residual is missing: the output is h + FFN_e(h), not FFN_e(h) alone"),
            (x + a + _route(x, modality, experts), "the experts read x, not h = x + Attention(LN(x)): the "
                                                   "feed-forward comes after the attention, on its output"),
            (x + attention(norm(x), None) + _route(x + attention(norm(x), None), modality, experts),
             "the real tokens still attend to the padded ones: the padding was ignored, or put on the queries "
             "(rows), which blocks nothing for a real token; a padded token is a KEY no one may attend to, so "
             "block its column, mask[b, :, j] = False where valid[b, j] is False"),
            (x + attention(x, keys) + _route(x + attention(x, keys), modality, experts),
             "the attention reads x, not LN(x): VLMo's blocks are pre-LN, x + Attention(norm(x))"),
            (h + _route(norm(h), modality, experts), "the shared norm was applied again before the experts: each "
                                                     "expert carries its own LayerNorm (LN_e inside experts[e])"),
            (h + _route(h, (modality + 1) % n, experts), "off-by-one expert index: token (b, t) goes through "
                                                         "experts[modality[b, t]], index 0 is the first expert"),
            (h + _route(h, modality.roll(1, dims=0), experts), "tokens were routed by another sequence's indices: "
                                                               "token (b, t) uses modality[b, t] of its own sequence"),
            (h + _route(h, modality[:1].expand(b, t), experts), "every sequence was routed by the first one's "
                                                                "indices: token (b, t) uses modality[b, t]"),
            (h + torch.stack([e(h) for e in experts]).sum(0), "every expert was applied to every token and the "
                                                              "outputs summed: a token goes through one expert, "
                                                              "experts[modality[b, t]]"),
        ]
        if n >= 2:
            position = (torch.arange(t) * n // t).expand(b, t)
            named.append((h + _route(h, position, experts), "routed by position, not by index: route each token "
                                                            "by its own modality[b, t], wherever it stands"))
    return named


def _mome_case(g: torch.Generator, b: int, t: int, d: int, heads: int, n_experts: int, used: int):
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    block = MoMEBlock(d, heads, experts=tuple(f"e{i}" for i in range(n_experts)), mlp_ratio=2.0)
    torch.random.set_rng_state(torch_state)
    with torch.no_grad():
        for p in block.parameters():  # LayerNorm weights and biases too: a forgotten norm must show
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 1.0))
    x = torch.randn(b, t, d, generator=g)
    while True:  # every used expert somewhere, routes not sorted by position, sequences routed differently
        modality = torch.randint(0, used, (b, t), generator=g)
        routed_alike = bool((modality == modality[:1]).all())
        if all(bool((modality == e).any()) for e in range(used)) and (b == 1 or not routed_alike):
            break
    valid = torch.rand(b, t, generator=g) < 0.7  # padding anywhere: [image ; padded text ; image] is a sequence too
    valid[:, int(torch.randint(0, t, (1,), generator=g))] = True  # every sequence keeps a real token
    valid[0] = True  # one sequence with no padding
    return block, x, modality, valid


@register("05.mome_block", title="A MoME block: shared attention over a padded sequence, then one expert per token")
def check_mome_block(fn) -> None:
    g = fresh_generator()
    # three experts with every one used; a block whose third expert no token uses (image and text
    # tokens only, under a VL expert); one sequence of one token
    for b, t, d, heads, n_experts, used in ((randint(g, 2, 4), randint(g, 7, 11), 8, 2, 3, 3),
                                            (randint(g, 2, 3), randint(g, 5, 9), 12, 3, 3, 2),
                                            (1, 1, 8, 2, 2, 1)):
        block, x, modality, valid = _mome_case(g, b, t, d, heads, n_experts, used)
        norm, attention = block.norm1, _Attention(block.attn)
        inner = list(block.ffn.experts)
        experts = [_CountingExpert(m) for m in inner]
        what = f"B={b}, T={t}, {n_experts} experts"
        x_leaf = x.clone().requires_grad_(True)
        given_modality, given_valid = modality.clone(), valid.clone()
        got = call(fn, x_leaf, given_modality, given_valid, norm, attention, experts)
        if not torch.equal(x_leaf.detach(), x) or not torch.equal(given_modality, modality) \
                or not torch.equal(given_valid, valid):
            raise GradingFailure("an input was modified in place (x += ...?): leave x, modality and valid as they are; "
                                 "x + ... makes a new tensor")
        got = tensor_answer("mome_block's result", got)
        if tuple(got.shape) != (b, t, d):
            raise GradingFailure(f"wrong shape: expected (B, T, D) = {(b, t, d)}, got {tuple(got.shape)} ({what})")
        with torch.no_grad():
            want = block(x, modality, masks.padding(valid))  # the library's block on the same modules
        if not is_close(got, want, atol=1e-4):
            for candidate, message in _mome_candidates(x, modality, valid, norm,
                                                       lambda h, m: block.attn(h, mask=m), inner):
                if not torch.isnan(candidate).any() and not is_close(candidate, want, atol=1e-4) \
                        and is_close(got, candidate, atol=1e-4):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"mome_block ({what})", got, want, atol=1e-4, rtol=1e-3)
        counts = [int((modality == e).sum()) for e in range(n_experts)]
        rows = [e.rows for e in experts]
        if rows != counts:
            if all(r >= b * t for r in rows):
                raise GradingFailure(f"every expert ran on all {b * t} tokens (the outputs are right, but each token "
                                     f"paid for {n_experts} FFNs): give each expert only its own tokens, gathered, "
                                     f"and run it once on them ({what})")
            raise GradingFailure(f"the experts ran on {rows} tokens, but the routes give them {counts}: run each "
                                 f"expert once, on exactly its own tokens ({what})")
        leaves = {"x": x_leaf}
        leaves.update({f"norm.{n}": p for n, p in norm.named_parameters()})
        leaves.update({f"attention.{n}": p for n, p in block.attn.named_parameters()})
        for e, m in enumerate(inner):
            leaves.update({f"experts[{e}].{n}": p for n, p in m.named_parameters()})
        expect_gradients(f"the block's output ({what})", got, block(x_leaf, modality, masks.padding(valid)), leaves)


# ----------------------------------------------------------------------------- 05.mim_loss


def mim_targets(images: torch.Tensor, patch_size: int, unbiased: bool = True, order: str = "(p1 p2 c)",
                per: str = "patch", eps: float = 1e-6) -> torch.Tensor:
    """(B, 3, H, W) → (B, N, 3P²): each patch (row-major, its values in `order`) minus its mean over
    its spread (per="patch"), or a mistake's variant (per="image", "channel", "none")."""
    patches = rearrange(images, f"b c (h p1) (w p2) -> b (h w) {order}", p1=patch_size, p2=patch_size)
    if per == "none":
        return patches
    if per == "image":
        flat = images.flatten(1)
        mean, var = flat.mean(-1)[:, None, None], flat.var(-1, unbiased=unbiased)[:, None, None]
        return (patches - mean) / (var + eps).sqrt()
    if per == "channel":  # (p1 p2 c): the channel is the last factor
        v = patches.unflatten(-1, (-1, 3))
        out = (v - v.mean(-2, keepdim=True)) / (v.var(-2, keepdim=True, unbiased=unbiased) + eps).sqrt()
        return out.flatten(-2)
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True, unbiased=unbiased)
    return (patches - mean) / (var + eps).sqrt()


def reference_mim_loss(pred, images, cover, patch_size):
    """The mean over the masked patches of each patch's mean squared error to its normalised target."""
    if not bool(cover.any()):
        return pred.sum() * 0.0  # nothing masked: 0, still part of the graph
    err = (pred - mim_targets(images, patch_size)).pow(2).mean(-1)  # (B, N)
    return err[cover].mean()


def _mim_case(g: torch.Generator, b: int, grid: int, p: int):
    images = torch.randn(b, 3, grid * p, grid * p, generator=g)
    flat = []
    for _ in range(max(1, b * grid * grid // 4)):  # flat patches: the background's (a zero spread)
        i, r, c = randint(g, 0, b - 1), randint(g, 0, grid - 1), randint(g, 0, grid - 1)
        images[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = float(torch.randn(1, generator=g))
        flat.append((i, r * grid + c))
    cover = torch.rand(b, grid * grid, generator=g) < 0.4  # a different number masked in each image
    cover[0] = False
    cover[0, randint(g, 0, grid * grid - 1)] = True  # one image with a single masked patch
    if b > 2:
        cover[1] = False  # and one with none
        cover[2] = True  # and one fully masked
    i, k = next(((i, k) for i, k in flat if i != 1), flat[0])
    cover[i, k] = True  # a flat patch among the masked ones
    if int(cover.sum()) == 3 * p * p:  # then a sum over patches and a sum over values would give one number
        cover[0] = True
    pred = torch.randn(b, grid * grid, 3 * p * p, generator=g)
    return pred, images, cover


def _mim_mistakes(pred, images, cover, p) -> list:
    def masked(err, keep):
        return err[keep].mean()

    right = (pred - mim_targets(images, p)).pow(2)
    err = right.mean(-1)
    per_image = [err[i][cover[i]].mean() for i in range(len(err)) if cover[i].any()]
    named = [
        (masked((pred - mim_targets(images, p, per="none")).pow(2).mean(-1), cover),
         "the targets are the raw pixels: normalise each patch by its own mean and spread (§3: a flat background "
         "patch is then the same small pattern wherever it stands)"),
        (masked((pred - mim_targets(images, p, per="image")).pow(2).mean(-1), cover),
         "the targets are normalised over the whole image: each patch by its OWN mean and spread"),
        (masked((pred - mim_targets(images, p, per="channel")).pow(2).mean(-1), cover),
         "each channel of a patch was normalised on its own: a patch's 3P² values are normalised together"),
        (masked((pred - mim_targets(images, p, order="(c p1 p2)")).pow(2).mean(-1), cover),
         "the targets' values are in another order than the predictions': a patch flattens as (p1 p2 c), "
         "channel fastest, the layout of minivlm.nn.vit.patchify"),
        (masked((pred - mim_targets(images, p).unflatten(1, (int(len(err[0]) ** 0.5), -1)).transpose(1, 2)
                 .flatten(1, 2)).pow(2).mean(-1), cover),
         "the patches are in column-major order: patch k is row k // grid, column k % grid (row-major), as the "
         "cover and the predictions are"),
        (err.mean(), "the mean is over every patch: the loss counts the masked patches only (cover True)"),
        (masked(err, ~cover), "the loss is on the visible patches: it counts the masked ones (cover True), the "
                              "ones the model could not see"),
        (torch.stack(per_image).mean(), "the mean of per-image means: an image with one masked patch then weighs "
                                        "as much as one with ten; take the mean over all masked patches of the batch"),
        (masked(right.sum(-1), cover), "each patch's error is summed over its 3P² values: the equation averages "
                                       "them (1 / 3P²)"),
        (err[cover].sum(), "a sum over the masked patches: the loss is their mean"),
    ]
    return named


@register("05.mim_loss", title="Masked image modelling: per-patch normalised targets, masked patches only")
def check_mim_loss(fn) -> None:
    g = fresh_generator()
    for b, grid, p in ((randint(g, 3, 5), randint(g, 3, 4), randint(g, 2, 4)), (1, 2, randint(g, 2, 3))):
        pred, images, cover = _mim_case(g, b, grid, p)
        what = f"B={b}, a {grid}×{grid} grid of {p}×{p} patches"
        leaf = pred.clone().requires_grad_(True)
        given_images, given_cover = images.clone(), cover.clone()
        got = call(fn, leaf, given_images, given_cover, p)
        if not torch.equal(given_images, images) or not torch.equal(given_cover, cover):
            raise GradingFailure("images or cover was modified in place (images -= mean?): normalise a copy; the "
                                 "caller's images are still needed")
        value = tensor_answer("mim_loss's result", got)
        if value.numel() != 1:
            raise GradingFailure(f"the loss must be one number, got shape {tuple(value.shape)} ({what})")
        value = value.reshape(())
        if torch.isnan(value.detach()):
            raise GradingFailure(f"the loss is NaN ({what}): a flat patch (one colour, zero spread) gives 0 / 0; "
                                 f"divide by the square root of its variance PLUS 1e-6")
        # two more predictions on the same images and cover: one number can match a mistake by chance, three do not
        preds = [pred] + [torch.randn(pred.shape, generator=g) for _ in range(2)]
        values = torch.stack([value.detach().float()] + [
            torch.as_tensor(call(fn, x.clone(), images.clone(), cover.clone(), p)).detach().float().reshape(())
            for x in preds[1:]])

        def right(x, unbiased):
            return (x - mim_targets(images, p, unbiased=unbiased)).pow(2).mean(-1)[cover].mean()

        wants = [torch.stack([right(x, unbiased) for x in preds]) for unbiased in (True, False)]  # either convention
        if not any(is_close(values, w, atol=1e-5, rtol=1e-4) for w in wants):
            mistakes = [_mim_mistakes(x, images, cover, p) for x in preds]
            for k, (_, message) in enumerate(mistakes[0]):
                candidate = torch.stack([m[k][0] for m in mistakes])
                if not any(is_close(candidate, w, atol=1e-5, rtol=1e-4) for w in wants) \
                        and is_close(values, candidate, atol=1e-5, rtol=1e-4):
                    raise GradingFailure(f"{message} ({what})")
            if not torch.isfinite(values).all() or float(values.max()) > 20 * float(wants[0].max()):
                raise GradingFailure(f"the loss is {float(values.max()):.3g}, far above {float(wants[0].max()):.3g} "
                                     f"({what}): a flat patch (one colour, zero spread) was divided by a spread of "
                                     f"about 0; divide by the square root of its variance PLUS 1e-6")
            raise GradingFailure(f"mim_loss returned {float(values[0]):.5f}, expected {float(wants[0][0]):.5f} "
                                 f"({what}): the mean over the masked patches of each patch's mean squared error to "
                                 f"its normalised target")
        want_leaf = reference_mim_loss(leaf, images, cover, p)
        if not is_close(value, want_leaf, atol=1e-5, rtol=1e-4):
            want_leaf = (leaf - mim_targets(images, p, unbiased=False)).pow(2).mean(-1)[cover].mean()
        expect_gradients(f"the loss ({what})", got, want_leaf, {"pred": leaf})
    # a batch with nothing masked (and one with no image at all): 0, still part of the graph
    for b in (2, 0):
        pred = torch.randn(b, 4, 12, generator=g).requires_grad_(True)
        images = torch.randn(b, 3, 4, 4, generator=g)
        got = call(fn, pred, images, torch.zeros(b, 4, dtype=torch.bool), 2)
        what = f"a cover that masks no patch ({b} images)"
        expect_zero_loss(what, got, "patches", "pred")


# ----------------------------------------------------------------------------- 05.rerank


class _FusionOracle:
    """A stand-in for the fusion encoder: scores[i, j] for each (image i, text j) it is asked about,
    recording every pair."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores
        self.asked: list[torch.Tensor] = []

    def __call__(self, pairs):
        n, m = self.scores.shape
        if not isinstance(pairs, torch.Tensor):
            raise GradingFailure(f"fusion_score_fn takes the pairs as one (P, 2) tensor of (image index, text "
                                 f"index), got {type(pairs).__name__}")
        if pairs.is_floating_point() or pairs.dtype == torch.bool:
            raise GradingFailure(f"the pairs given to fusion_score_fn must be integer indices (torch.long), got "
                                 f"{pairs.dtype}")
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            hint = " (stack the two index vectors along dim=1, not dim=0)" if pairs.ndim == 2 and pairs.shape[0] == 2 \
                else ""
            raise GradingFailure(f"fusion_score_fn takes pairs of shape (P, 2), one row (image index, text index) "
                                 f"per pair, got shape {tuple(pairs.shape)}{hint}")
        pairs = pairs.detach().cpu().long()
        if pairs.numel() and (int(pairs.min()) < 0 or int(pairs[:, 0].max()) >= n or int(pairs[:, 1].max()) >= m):
            raise GradingFailure(f"a pair given to fusion_score_fn is out of range: pairs[:, 0] are image indices in "
                                 f"[0, {n - 1}] (the rows), pairs[:, 1] text indices in [0, {m - 1}] (the columns); "
                                 f"got pairs[:, 0] in [{int(pairs[:, 0].min())}, {int(pairs[:, 0].max())}], "
                                 f"pairs[:, 1] in [{int(pairs[:, 1].min())}, {int(pairs[:, 1].max())}] (columns "
                                 f"swapped?)")
        self.asked.append(pairs)
        return self.scores[pairs[:, 0], pairs[:, 1]].clone()  # (P,)


def _rerank_inputs(g: torch.Generator, n: int, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarities (N, M) in [-1, 1], their top-k texts (N, k), and fusion scores (N, M) (log-odds, some far
    below -1) that reorder the top k: each row's best by dual score is its worst by fusion score."""
    a = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(m, 4, generator=g), dim=1)
    dual = a @ b.t()  # (N, M)
    top = dual.topk(min(k, m), dim=1).indices  # (N, k)
    fusion = torch.randn(n, m, generator=g) * 2
    rows = torch.arange(n)
    fusion[rows, top[:, 0]] = -3.0 - torch.rand(n, generator=g)  # the dual's favourite, the fusion's worst
    if top.shape[1] >= 3:  # row 0: fusion puts its second above its third, so no wrong order mimics another
        s, t = fusion[0, top[0, 1]].clone(), fusion[0, top[0, 2]].clone()
        fusion[0, top[0, 1]], fusion[0, top[0, 2]] = torch.maximum(s, t) + 0.5, torch.minimum(s, t)
    return dual, top, fusion


def _pair_set(pairs: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs.tolist()}


def _check_asked(oracle: _FusionOracle, top: torch.Tensor, dual: torch.Tensor, k: int) -> None:
    n, m = dual.shape
    asked = torch.cat(oracle.asked) if oracle.asked else torch.zeros(0, 2, dtype=torch.long)
    want = _pair_set(torch.stack([torch.arange(n).repeat_interleave(top.shape[1]), top.flatten()], dim=1))
    if not len(asked):
        raise GradingFailure("the fusion scores are ignored: fusion_score_fn was never called; ask it for the "
                             "fusion score of each row's top k pairs and order those k by it")
    got = _pair_set(asked)
    if len(asked) >= n * m and got == {(i, j) for i in range(n) for j in range(m)} and k < m:
        raise GradingFailure(f"fusion_score_fn scored all N·M = {n * m} pairs: that is the fusion mode, not "
                             f"re-ranking; score only each row's top k by dual score (N·k = {n * k} pairs) — that "
                             f"saving is the point of re-ranking")
    by_column = dual.topk(k, dim=0).indices if k <= n else None  # (k, M): the k best images of each text
    if by_column is not None and got == _pair_set(
            torch.stack([by_column.flatten(), torch.arange(m).repeat(k)], dim=1)) and got != want:
        raise GradingFailure("top k taken along the wrong axis (dim 0: the k best images of each text): each row is "
                             "an image (a query) and its candidates are the texts in its row, dual_scores.topk(k, "
                             "dim=1)")
    if len(asked) > len(got):
        raise GradingFailure(f"fusion_score_fn was asked about {len(asked)} pairs, only {len(got)} of them different: "
                             f"score each pair once (every fusion score costs a Transformer pass)")
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        example = f"it scored {extra[0]}, not among row {extra[0][0]}'s top {k}" if extra else \
            f"it never scored {missing[0]}, one of row {missing[0][0]}'s top {k}"
        raise GradingFailure(f"fusion_score_fn must score exactly each row's top {k} pairs by dual score (N·k = "
                             f"{len(want)} pairs, (image i, text j)); got {len(got)} pairs: {example}")


def _check_order(got: torch.Tensor, dual: torch.Tensor, top: torch.Tensor, fusion: torch.Tensor) -> None:
    n, m = dual.shape
    k = top.shape[1]
    ignored, ascending = True, True
    first_wrong = None
    for i in range(n):
        inside = top[i]
        outside = torch.tensor([j for j in range(m) if j not in set(inside.tolist())], dtype=torch.long)
        g = got[i].detach().cpu().double()
        if len(outside) and float(g[inside].min()) <= float(g[outside].max()):
            below = int(inside[g[inside].argmin()])
            above = int(outside[g[outside].argmax()])
            raise GradingFailure(f"the re-ranked k are not placed above all others: in row {i}, text {above} (not in "
                                 f"the row's top {k} by dual score) scores {float(g[above]):.3g}, above or level with "
                                 f"re-ranked text {below} ({float(g[below]):.3g}); a fusion score (a log-odds) is "
                                 f"not on the scale of a cosine similarity, so shift the re-ranked scores above every "
                                 f"dual score (e.g. + dual_scores.max() − fused.min() + 1)")
        want_in = inside[fusion[i, inside].argsort(descending=True)]
        order_in = inside[g[inside].argsort(descending=True, stable=True)]
        ties_in = len(set(g[inside].tolist())) < k
        ignored &= torch.equal(order_in, inside) and not ties_in
        ascending &= torch.equal(order_in, want_in.flip(0)) and not ties_in
        if first_wrong is None and (ties_in or not torch.equal(order_in, want_in)):
            first_wrong = (i, order_in, want_in)
        if len(outside):
            rest = outside[dual[i, outside].argsort(descending=True)]  # the others, in their dual order
            values = g[rest]
            if len(rest) > 1 and not bool((values[:-1] > values[1:]).all()):
                tied = len(set(values.tolist())) < len(values)
                raise GradingFailure(f"the texts outside the top k lost their dual order (row {i}"
                                     f"{': several score the same' if tied else ''}): keep their dual scores, so "
                                     f"that they follow the re-ranked k in the dual encoder's order")
    if first_wrong is not None:
        if ignored:
            raise GradingFailure("the fusion scores are ignored: the top k keep their dual order; order them by the "
                                 "scores fusion_score_fn returns, highest first")
        if ascending:
            raise GradingFailure("the re-ranked k are in ascending order of fusion score: the highest fusion score "
                                 "(the most likely match) must rank first")
        i, order_in, want_in = first_wrong
        raise GradingFailure(f"row {i}: the re-ranked texts rank {order_in.tolist()}, but by fusion score (highest "
                             f"first) they are {want_in.tolist()}; did each fusion score go back to its own (image, "
                             f"text) position?")


def _rerank_case(fn, g: torch.Generator, n: int, m: int, k: int) -> None:
    dual, top, fusion = _rerank_inputs(g, n, m, k)
    oracle = _FusionOracle(fusion)
    given = dual.clone()
    got = call(fn, given, oracle, k)
    if not torch.equal(given, dual):
        raise GradingFailure("dual_scores was modified in place: work on a copy (e.g. dual_scores.scatter(...), not "
                             "scatter_), the caller may still need the dual scores")
    _check_asked(oracle, top, dual, min(k, m))
    got = tensor_answer("the scores", got)
    if tuple(got.shape) != (n, m):
        raise GradingFailure(f"rerank must return scores for every (image, text) pair, shape (N, M) = {(n, m)}, got "
                             f"{tuple(got.shape)}")
    if not got.is_floating_point():
        raise GradingFailure(f"rerank returns scores (floats), got {got.dtype}")
    _check_order(got, dual, top, fusion)


@register("05.rerank", title="Re-rank the dual top k of each row by fusion scores")
def check_rerank(fn) -> None:
    g = fresh_generator()
    # k below both N and M, so that a wrong axis or scoring every pair shows; twice, on fresh inputs
    for _ in range(2):
        _rerank_case(fn, g, randint(g, 5, 8), randint(g, 9, 14), randint(g, 3, 4))
    # more than M asked for: every text of a row is re-ranked
    n, m = randint(g, 3, 6), randint(g, 3, 5)
    k = m + randint(g, 1, 5)
    try:
        _rerank_case(fn, g, n, m, k)
    except GradingFailure as exc:
        raise GradingFailure(f"with k = {k} larger than the M = {m} texts: {exc}; cap k at the number of texts, "
                             f"min(k, M)") from None


# ----------------------------------------------------------------------------- 05.mim_baseline


@torch.no_grad()
def reference_mim_baseline(model, train_images, images, cover) -> dict:
    """Per masked patch (in cover's row-major order), the squared error averaged over the patch's
    values: of the model's MIM head, the patch hidden behind the mask token ("model"), and of the
    mean target patch of train_images, the same for every patch and every image ("mean_patch")."""
    mean_patch = model.mim_targets(train_images).flatten(0, 1).mean(0)  # (3P²,)
    target = model.mim_targets(images)  # (B, N, 3P²)
    predicted = model.mim_pixels(model.encode_image(images, cover)[0])  # (B, N, 3P²)
    return {"model": (predicted - target).pow(2).mean(-1)[cover],
            "mean_patch": (mean_patch - target).pow(2).mean(-1)[cover]}


def _model_state(model) -> tuple:
    return (model.training, float(sum(p.detach().double().sum() for p in model.parameters())),
            any(p.grad is not None for p in model.parameters()))


def _baseline_run(fn, model, train_images, images, cover, what: str) -> dict:
    given = (train_images.clone(), images.clone(), cover.clone())
    before = _model_state(model)
    passes = dict(model.passes)
    got = call(fn, model, *given)
    if not (torch.equal(given[0], train_images) and torch.equal(given[1], images) and torch.equal(given[2], cover)):
        raise GradingFailure("an input was modified in place: leave train_images, images and cover as they are")
    after = _model_state(model)
    if after[0] != before[0]:
        raise GradingFailure(f"the model was left in {'training' if after[0] else 'eval'} mode: measure it in the "
                             f"mode it was given, and change nothing about it ({what})")
    if after[1] != before[1]:
        raise GradingFailure(f"the model's weights changed: the experiment only measures ({what})")
    if after[2]:
        raise GradingFailure(f"the model's parameters now hold gradients (backward was called): measure under "
                             f"torch.no_grad(), nothing is trained here ({what})")
    model.passes.update(passes)
    if not isinstance(got, dict) or any(k not in got for k in ("model", "mean_patch")):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"mim_baseline must return a dict with keys 'model' and 'mean_patch', got {keys}")
    want = reference_mim_baseline(model, train_images, images, cover)
    n = int(cover.sum())
    out = {}
    for key in ("model", "mean_patch"):
        value = got[key]
        if not isinstance(value, torch.Tensor) or value.ndim != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise GradingFailure(f"{key!r} must be a 1-D tensor of per-patch errors, one per masked patch ({n} here), "
                                 f"got {shape} ({what}); the notebook averages them and puts an interval on the "
                                 f"paired difference")
        if len(value) != n:
            raise GradingFailure(f"{key!r} has {len(value)} errors, but cover masks {n} patches ({what}): one error "
                                 f"per masked patch, in the order of cover's True entries")
        out[key] = value.detach().float()
    for key in ("model", "mean_patch"):
        if is_close(out[key], want[key], atol=1e-4, rtol=1e-3):
            continue
        if key == "mean_patch":
            own = model.mim_targets(images).flatten(0, 1).mean(0)
            target = model.mim_targets(images)
            if is_close(out[key], (own - target).pow(2).mean(-1)[cover], atol=1e-4, rtol=1e-3):
                raise GradingFailure(f"the mean patch was taken from images, the very patches it is scored on: take "
                                     f"it from train_images, so the baseline never sees the held-out images ({what})")
            if is_close(out[key], out["model"], atol=1e-4, rtol=1e-3) and not is_close(want["model"], want[key]):
                raise GradingFailure(f"'mean_patch' equals 'model': the baseline predicts the mean target patch of "
                                     f"train_images at every masked patch ({what})")
        else:
            with torch.no_grad():
                seen = model.mim_pixels(model.encode_image(images)[0])
                target = model.mim_targets(images)
            if is_close(out[key], (seen - target).pow(2).mean(-1)[cover], atol=1e-4, rtol=1e-3):
                raise GradingFailure(f"the model saw the patches it predicts: encode the images with the cover "
                                     f"(model.encode_image(images, cover)), which puts the mask token in their place "
                                     f"({what})")
        if is_close(out[key], want[key].sort().values, atol=1e-4, rtol=1e-3) or \
                is_close(out[key].sort().values, want[key].sort().values, atol=1e-4, rtol=1e-3):
            raise GradingFailure(f"{key!r} holds the right errors in another order: keep the order of cover's True "
                                 f"entries (row-major: image by image, patch by patch), so that the two arms pair up "
                                 f"({what})")
        expect_close(f"{key!r}, the per-patch squared errors ({what})", out[key], want[key], atol=1e-4, rtol=1e-3)
    return want


def _baseline_images(g: torch.Generator, n: int, n_objects, split: str, size: int) -> torch.Tensor:
    world = ShapesWorld(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), split=split)
    return world.render(world.sample(n, n_objects=n_objects), image_size=size)


def _small_vlmo(g: torch.Generator, **overrides) -> VLMo:
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        return VLMo(VLMoConfig(**{"dim": 32, "depth": 2, "vl_depth": 1, "heads": 2, "embed_dim": 32, **overrides}))


@register("05.mim_baseline", title="The experiment: masked image modelling against the mean patch")
def check_mim_baseline(fn) -> None:
    g = fresh_generator()
    # training images with more objects than the held-out ones, so that their mean patch differs
    train = _baseline_images(g, 48, (3, 4), "train", 32)
    images = _baseline_images(g, 24, (1, 2), "test", 32)
    cover = torch.rand(24, 16, generator=g) < 0.4
    cover[0] = False  # an image with nothing masked
    model = _small_vlmo(g).eval()
    _baseline_run(fn, model, train, images, cover, "a fresh VLMo")
    # a MIM head that outputs the mean patch itself: the two arms must agree patch for patch
    with torch.no_grad():
        model.mim_head.weight.zero_()
        model.mim_head.bias.copy_(model.mim_targets(train).flatten(0, 1).mean(0))
    got = _baseline_run(fn, model, train, images, cover, "a VLMo whose MIM head predicts the mean patch")
    assert is_close(got["model"], got["mean_patch"], atol=1e-4)
    # another patch size and image size, a model handed over in training mode
    small = _small_vlmo(g, image_size=16, patch_size=4).train()
    train16 = _baseline_images(g, 32, (3, 4), "train", 16)
    images16 = _baseline_images(g, 12, (1, 2), "test", 16)
    cover16 = torch.rand(12, 16, generator=g) < 0.5
    _baseline_run(fn, small, train16, images16, cover16, "16×16 images in 4×4 patches, a model in training mode")


