"""Checks for the chapter 01 exercises (exercises/01_transformer_blocks): multi-head attention
from four weight matrices, one attention mask for a padded batch of prefix-LM sequences, a ViT's
input tokens (patches, embedding, CLS token, positions), and an experiment: a causal and a
bidirectional mask on a tiny shifted-copy task.

The deterministic pieces are compared with the library's (minivlm.nn) on fresh random inputs whose
sizes all differ (batch, heads, time, width; images that are not square), on a size-1 case, with
their gradients (every input and weight must get the reference's) and with the inputs checked for
changes afterwards. When an answer is wrong the check tries to name the plausible mistake: the
scale of the whole width instead of one head's, heads cut across tokens, heads merged without
putting the time axis back, the output projection or the mask left out, a (B, T, T) mask lined up
with the heads; padding applied to the queries, to both sides or not at all, the prefix opened on
its rows, the first row's prefix used for every row, an off-by-one prefix; a CLS token at the end
or without a position, patches flattened (c, p1, p2) or taken column by column.

The experiment `mask_experiment(mask, train, test, steps, seed)` is run by the check twice, on
shifted-copy sequences it draws (the second half is the first shifted by an amount it draws, so a
run on data of its own cannot pass): with a causal and with a bidirectional mask. The returned
model is inspected (changing a later token must not move an earlier position's logits under the
causal mask, and must under the bidirectional one) and re-measured: the three accuracies it
reports must be the ones the check measures on `test`. The science: the causal model learns the
rule (it generates the copy) and scores chance on the random half; the bidirectional model scores
far above chance on the random half, which no model can predict: it reads the answer. An honest run
can land on a poor seed, so a second seed is tried before either bar fails.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange

from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_dtype,
    expect_gradients,
    expect_shape,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)
from minivlm.nn import masks, patchify, scaled_dot_product_attention


def _unchanged(given: dict, before: dict, what: str) -> None:
    for name, t in given.items():
        if not torch.equal(t.detach(), before[name]):
            raise GradingFailure(f"{name} was changed in place by {what}: build new tensors and leave the inputs as "
                                 f"they were (the caller, and autograd, still need them)")


# ----------------------------------------------------------------------------- 01.multi_head_attention


def reference_multi_head_attention(x, w_q, w_k, w_v, w_o, heads, mask=None):
    """(B, T, D) -> (B, T, D): the projections cut into `heads` slices of width D / heads along the
    features, attention in each slice, the slices joined back and mixed by w_o."""
    q, k, v = (rearrange(x @ w, "b t (h d) -> b h t d", h=heads) for w in (w_q, w_k, w_v))  # (B, H, T, d)
    if mask is not None and mask.ndim == 3:
        mask = mask[:, None]  # (B, 1, T, T): one mask for every head
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    return rearrange(out, "b h t d -> b t (h d)") @ w_o


def _mha_mistakes(x, w_q, w_k, w_v, w_o, heads, mask):
    b, t, dim = x.shape
    d = dim // heads
    m4 = None if mask is None else (mask[:, None] if mask.ndim == 3 else mask)

    def heads_of(w):
        return rearrange(x @ w, "b t (h d) -> b h t d", h=heads)

    def attend(q, k, v, scale, m=m4, axis=-1):
        s = q @ k.transpose(-2, -1) / scale
        if m is not None:
            s = s.masked_fill(~m, float("-inf"))
        return s.softmax(axis).nan_to_num() @ v

    q, k, v = heads_of(w_q), heads_of(w_k), heads_of(w_v)
    merged = rearrange(attend(q, k, v, math.sqrt(d)), "b h t d -> b t (h d)")
    out = [
        (rearrange(attend(q, k, v, math.sqrt(dim)), "b h t d -> b t (h d)") @ w_o,
         "the scores are divided by √D, the whole width: each head works on D / heads features, so divide by "
         "√(D / heads), the width of one head"),
        (rearrange(attend(q, k, v, 1.0), "b h t d -> b t (h d)") @ w_o,
         "the scores are not scaled: divide each head's q·kᵀ by √(D / heads)"),
        (merged, "the output projection w_o is missing: the heads' joined outputs are mixed by w_o"),
        (attend(q, k, v, math.sqrt(d)).reshape(b, t, dim) @ w_o,
         "the heads were joined without moving the time axis back: (B, H, T, d) must become (B, T, H·d) with the "
         "heads side by side in each token's features, not reshaped as it lies in memory"),
        (rearrange(attend(q, k, v, math.sqrt(d), axis=-2), "b h t d -> b t (h d)") @ w_o,
         "the softmax is taken over the queries: each query's weights must sum to 1 over the keys"),
    ]
    split_wrong = [(x @ w).reshape(b, heads, t, d) for w in (w_q, w_k, w_v)]
    out.append((rearrange(attend(*split_wrong, math.sqrt(d)), "b h t d -> b t (h d)") @ w_o,
                "the heads were cut across the tokens: (B, T, D) reshaped straight to (B, H, T, d) mixes the tokens; "
                "cut each token's D features into H slices, (B, T, H, d), then move the head axis forward"))
    if heads > 1:
        out.append((reference_multi_head_attention(x, w_q, w_k, w_v, w_o, 1, mask),
                    "the heads argument is ignored: this is one head over all D features; cut the features into "
                    "`heads` slices, each with its own attention"))
    if mask is not None:
        out.append((reference_multi_head_attention(x, w_q, w_k, w_v, w_o, heads),
                    "the mask is not applied: blocked pairs (mask False) must get weight 0"))
        if mask.ndim == 3 and b == heads:
            out.append((rearrange(attend(q, k, v, math.sqrt(d), m=mask[None]), "b h t d -> b t (h d)") @ w_o,
                        "the (B, T, T) mask was lined up with the head axis: scores are (B, H, T, T), so give the "
                        "mask a head axis, (B, 1, T, T), that broadcasts over the heads"))
    return out


def _causal_padding(b: int, t: int, g: torch.Generator) -> torch.Tensor:
    """(B, T, T): causal and right padding, every row with at least one key."""
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    valid = torch.arange(t)[None] < lengths[:, None]
    return masks.combine(masks.causal(t), masks.padding(valid))


@register("01.multi_head_attention", title="Multi-head attention from four weight matrices")
def check_multi_head_attention(fn) -> None:
    g = fresh_generator()
    # batch, time, width and heads all differ (so a wrong axis cannot pass by accident); one case with
    # B == heads, where a (B, T, T) mask lined up with the heads broadcasts silently; a size-1 case last
    cases = [(2, 5, 12, 3, "none"), (3, 6, 16, 4, "causal"), (2, 7, 8, 2, "batch"), (3, 4, 18, 3, "batch"),
             (1, 1, 4, 4, "none")]
    for b, t, dim, heads, kind in cases:
        x = torch.randn(b, t, dim, generator=g)
        ws = [torch.randn(dim, dim, generator=g) / math.sqrt(dim) * 1.5 for _ in range(4)]
        mask = {"none": None, "causal": masks.causal(t), "batch": _causal_padding(b, t, g) if kind == "batch"
                else None}[kind]
        leaves = {"x": x.clone().requires_grad_(True), "w_q": ws[0].clone().requires_grad_(True),
                  "w_k": ws[1].clone().requires_grad_(True), "w_v": ws[2].clone().requires_grad_(True),
                  "w_o": ws[3].clone().requires_grad_(True)}
        before = {k: v.detach().clone() for k, v in leaves.items()}
        given_mask = None if mask is None else mask.clone()
        got = tensor_answer("multi_head_attention", call(fn, *leaves.values(), heads, given_mask))
        what = f"x (B, T, D) = {(b, t, dim)}, heads = {heads}" + ("" if mask is None else
                                                                  f", mask {tuple(mask.shape)}")
        expect_shape(f"multi_head_attention({what})", got, (b, t, dim))
        if given_mask is not None and not torch.equal(given_mask, mask):
            raise GradingFailure("the mask was changed in place: leave it as it was")
        _unchanged(leaves, before, "multi_head_attention")
        want = reference_multi_head_attention(*before.values(), heads, mask)
        if not is_close(got, want, atol=1e-4, rtol=1e-3):
            if torch.isnan(got).any():
                raise GradingFailure(f"the output contains NaN ({what}): blocked scores go to -inf *before* the "
                                     "softmax, and every query here has at least one key it may attend to")
            for candidate, message in _mha_mistakes(*before.values(), heads, mask):
                if is_close(got, candidate, atol=1e-4, rtol=1e-3):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"multi_head_attention({what})", got, want, atol=1e-4, rtol=1e-3)
        want = reference_multi_head_attention(*leaves.values(), heads, mask)
        expect_gradients(f"multi_head_attention({what})", got, want, leaves)


# ----------------------------------------------------------------------------- 01.batch_mask


def reference_batch_mask(valid, prefix_len):
    """(B, T, T): row i of sequence b may attend to key j when j is in b's prefix or j <= i (prefix
    LM; prefix 0 is causal), and key j is a real token (valid[b, j])."""
    return masks.combine(masks.prefix(valid.shape[1], prefix_len), masks.padding(valid))


def _batch_mask_case(b: int, t: int, g: torch.Generator):
    """valid (B, T) with padding anywhere (empty slots inside a prefix, padding at the end) and
    prefix_len (B,) with distinct prefixes: 0 (causal), T (bidirectional) and some in between."""
    for _ in range(100):
        valid = torch.rand(b, t, generator=g) < 0.7
        valid[0] = True  # one row without padding
        prefix = torch.randperm(t + 1, generator=g)[:b]
        prefix[0], prefix[1], prefix[2] = randint(g, 2, t - 1), 0, t
        holes_in_prefix = any(bool((~valid[i, : int(prefix[i])]).any()) for i in range(b))
        if len(set(prefix.tolist())) == b and holes_in_prefix and bool((~valid[:, -1]).any()):
            return valid, prefix
    raise RuntimeError("could not draw a batch of distinct prefixes")  # pragma: no cover


def _mask_mistakes(valid, prefix_len):
    b, t = valid.shape
    keys = torch.arange(t)
    prefix = masks.prefix(t, prefix_len)  # (B, T, T)
    rows = (keys[None, :, None] < prefix_len[:, None, None]) | masks.causal(t)[None]  # prefix opens rows
    return [
        (prefix & valid[:, :, None], "padding is applied to the queries (rows): a padded position is a *key* no "
                                     "one may attend to, so block its column, mask[b, :, j] = False, and leave the "
                                     "rows as the prefix rule makes them"),
        (prefix & valid[:, :, None] & valid[:, None, :],
         "padding blocks the rows as well as the columns: padding is a rule about keys only (no query may attend to "
         "a padded key); block the padded columns and leave the rows as the prefix rule makes them"),
        (prefix, "padding is ignored: no query may attend to a padded key (valid[b, j] False)"),
        (masks.combine(masks.causal(t), masks.padding(valid)).expand(b, t, t),
         "the prefix is ignored: this is a causal mask; the first prefix_len[b] tokens of row b see each other "
         "in full"),
        (rows & valid[:, None, :], "the prefix opens its rows: the prefix tokens then see the tokens after it; "
                                   "open the prefix's columns instead (every token sees the whole prefix)"),
        (masks.combine(masks.prefix(t, int(prefix_len[0])), masks.padding(valid)),
         "every sequence got the first sequence's prefix length: prefix_len holds one length per sequence"),
        (masks.combine(masks.prefix(t, (prefix_len + 1).clamp(max=t)), masks.padding(valid)),
         "off by one: the prefix is prefix_len[b] tokens, keys 0 … prefix_len[b] − 1"),
        (masks.combine(masks.prefix(t, prefix_len), masks.padding(valid)).transpose(1, 2),
         "the mask is transposed: rows are queries (mask[b, i, j]: may query i attend to key j)"),
        (~masks.combine(masks.prefix(t, prefix_len), masks.padding(valid)),
         "the mask is inverted: True means 'may attend'"),
    ]


@register("01.batch_mask", title="One mask for a padded batch: per-sequence prefixes and padding")
def check_batch_mask(fn) -> None:
    g = fresh_generator()
    for b, t in ((4, randint(g, 6, 9)), (5, randint(g, 10, 12))):
        valid, prefix_len = _batch_mask_case(b, t, g)
        given = {"valid": valid.clone(), "prefix_len": prefix_len.clone()}
        got = tensor_answer("batch_mask", call(fn, *given.values()))
        what = f"batch_mask(valid {tuple(valid.shape)}, prefix_len {prefix_len.tolist()})"
        _unchanged(given, {"valid": valid, "prefix_len": prefix_len}, "batch_mask")
        if tuple(got.shape) in ((t, t), (1, t, t)):
            raise GradingFailure(f"{what} is {tuple(got.shape)}: each sequence has its own padding and prefix, so "
                                 f"the mask is one (T, T) per sequence, (B, T, T) = {(b, t, t)}")
        expect_shape(what, got, (b, t, t))
        expect_dtype(what, got, torch.bool)
        want = reference_batch_mask(valid, prefix_len)
        if torch.equal(got, want):
            continue
        for candidate, message in _mask_mistakes(valid, prefix_len):
            if torch.equal(got, candidate.expand(b, t, t)):
                raise GradingFailure(message)
        expect_close(what, got, want)
    # size 1: one sequence of one real token (causal and bidirectional agree: the token sees itself)
    got = tensor_answer("batch_mask", call(fn, torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long)))
    expect_shape("batch_mask(one sequence of one token, prefix 0)", got, (1, 1, 1))
    expect_close("batch_mask(one sequence of one token, prefix 0)", got, torch.ones(1, 1, 1, dtype=torch.bool))


# ----------------------------------------------------------------------------- 01.vit_tokens


def reference_vit_tokens(images, patch_size, w_patch, cls_token, pos):
    """[CLS ; patches @ w_patch] + positions: (B, 1 + N, D)."""
    patches = patchify(images, patch_size) @ w_patch  # (B, N, D)
    cls = cls_token.expand(len(images), 1, -1)  # (B, 1, D)
    return torch.cat([cls, patches], dim=1) + pos  # (B, 1 + N, D)


def _vit_mistakes(images, p, w_patch, cls_token, pos):
    b, c, h, w = images.shape
    cls = cls_token.expand(b, 1, -1)
    right = patchify(images, p) @ w_patch
    channel_first = rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p) @ w_patch
    col_major = rearrange(images, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p) @ w_patch
    return [
        (torch.cat([right, cls], 1) + pos, "the CLS token is appended at the end: it goes first, at position 0"),
        (torch.cat([cls, right], 1), "the position embeddings are missing: add pos (1 + N, D) to the sequence"),
        (torch.cat([cls, right + pos[1:]], 1), "the CLS token got no position: pos has 1 + N rows, row 0 is the "
                                               "CLS token's"),
        (torch.cat([cls, right + pos[:-1]], 1), "the patches took rows 0 … N − 1 of pos: row 0 is the CLS "
                                                "token's, the patches take rows 1 … N"),
        (torch.cat([cls, channel_first], 1) + pos, "each patch is flattened as (c, p1, p2): the course flattens it "
                                                   "as (p1, p2, c), the channels varying fastest"),
        (torch.cat([cls, col_major], 1) + pos, "the patches are taken column by column: go along a row first (left "
                                               "to right, then down)"),
    ]


@register("01.vit_tokens", title="A ViT's input: patches, embedding, CLS token and positions")
def check_vit_tokens(fn) -> None:
    g = fresh_generator()
    # not square (rows != columns of patches), channels != 3, and one image of one patch
    for b, c, h, w, p, dim in ((2, 3, 8, 12, 4, 10), (3, 2, 9, 6, 3, 7), (1, 1, 4, 4, 4, 5)):
        n = (h // p) * (w // p)
        leaves = {"images": torch.rand(b, c, h, w, generator=g).requires_grad_(True),
                  "w_patch": torch.randn(p * p * c, dim, generator=g).requires_grad_(True),
                  "cls_token": torch.randn(dim, generator=g).requires_grad_(True),
                  "pos": torch.randn(1 + n, dim, generator=g).requires_grad_(True)}
        before = {k: v.detach().clone() for k, v in leaves.items()}
        images, w_patch, cls_token, pos = leaves.values()
        got = tensor_answer("vit_tokens", call(fn, images, p, w_patch, cls_token, pos))
        what = f"vit_tokens(images {(b, c, h, w)}, patch_size {p}, D = {dim})"
        expect_shape(f"{what}: (B, 1 + N, D)", got, (b, 1 + n, dim))
        _unchanged(leaves, before, "vit_tokens")
        want = reference_vit_tokens(before["images"], p, before["w_patch"], before["cls_token"], before["pos"])
        if not is_close(got, want, atol=1e-4, rtol=1e-3):
            for candidate, message in _vit_mistakes(before["images"], p, before["w_patch"], before["cls_token"],
                                                    before["pos"]):
                if n > 1 and is_close(got, candidate, atol=1e-4, rtol=1e-3):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(what, got, want, atol=1e-4, rtol=1e-3)
        expect_gradients(what, got, reference_vit_tokens(images, p, w_patch, cls_token, pos), leaves)


# ----------------------------------------------------------------------------- 01.mask_experiment


def shifted_copies(n: int, k: int, symbols: int, shift: int, g: torch.Generator) -> torch.Tensor:
    """(n, 2k + 1) sequences: k random symbols (0 … symbols − 1), the separator `symbols`, then the
    same k symbols each shifted by `shift` (mod symbols)."""
    x = torch.randint(symbols, (n, k), generator=g)
    return torch.cat([x, torch.full((n, 1), symbols), (x + shift) % symbols], dim=1)


@torch.no_grad()
def copy_accuracies(model, test: torch.Tensor) -> dict:
    """The three measures of the experiment, on `test` (n, 2k + 1):
    random: teacher-forced accuracy on the random half (the targets x_2 … x_k, which nothing predicts);
    copy_teacher_forced: teacher-forced accuracy on the second half (the targets after the separator);
    copy_generated: the second half generated greedily from test[:, :k + 1], one token at a time."""
    k = (test.shape[1] - 1) // 2
    predicted = model(test[:, :-1]).argmax(-1)  # (n, 2k): position t predicts token t + 1
    random = (predicted[:, : k - 1] == test[:, 1:k]).float().mean()
    teacher = (predicted[:, k:] == test[:, k + 1:]).float().mean()
    ids = test[:, : k + 1]
    for _ in range(k):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    generated = (ids[:, k + 1:] == test[:, k + 1:]).float().mean()
    return {"random": float(random), "copy_teacher_forced": float(teacher), "copy_generated": float(generated)}


MEASURES = ("random", "copy_teacher_forced", "copy_generated")
SYMBOLS, K, STEPS = 8, 4, 200


def _number(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise GradingFailure(f"results[{name!r}] must be one number (an accuracy in [0, 1]), got {type(value).__name__}")


def _experiment_run(fn, mask, train, test, steps, seed):
    given = {"mask": mask.clone(), "train": train.clone(), "test": test.clone()}
    got = call(fn, given["mask"], given["train"], given["test"], steps, seed)
    _unchanged(given, {"mask": mask, "train": train, "test": test}, "mask_experiment")
    if not (isinstance(got, tuple) and len(got) == 2 and callable(got[0]) and isinstance(got[1], dict)):
        raise GradingFailure(f"mask_experiment must return (model, results): a callable model(ids) -> logits and a "
                             f"dict of the three accuracies, got {type(got).__name__}")
    model, results = got
    missing = [m for m in MEASURES if m not in results]
    if missing:
        raise GradingFailure(f"results lacks {missing}: it holds the three accuracies {list(MEASURES)}")
    logits = call(lambda: model(test[:3, :-1]))
    logits = tensor_answer("model(ids)", logits)
    vocab = int(test.max()) + 1
    if tuple(logits.shape) != (3, test.shape[1] - 1, vocab):
        raise GradingFailure(f"model(ids (B, T)) must return logits (B, T, {vocab}) (one score per id, the "
                             f"separator included), got {tuple(logits.shape)} for ids {(3, test.shape[1] - 1)}")
    return model, {m: _number(m, results[m]) for m in MEASURES}


def _leak(model, test) -> float:
    """How much position t's logits move when a later token changes (0 for a causal model)."""
    ids = test[:16, :-1]
    t = ids.shape[1]
    changed = ids.clone()
    changed[:, t // 2:] = (changed[:, t // 2:] + 1) % (int(test.max()) + 1)
    with torch.no_grad():
        a, b = model(ids)[:, : t // 2], model(changed)[:, : t // 2]
    return float((a - b).abs().max())


@register("01.mask_experiment", title="The experiment: a causal and a bidirectional mask on a shifted copy")
def check_mask_experiment(fn) -> None:
    g = fresh_generator()
    shift = randint(g, 1, SYMBOLS - 1)  # never 0: a plain copy can be learned from the first half by both masks
    train = shifted_copies(2048, K, SYMBOLS, shift, g)
    test = shifted_copies(256, K, SYMBOLS, shift, g)
    t = 2 * K
    seed = randint(g, 0, 10_000)

    # the seed argument: two untrained models (steps = 0) of one seed agree, of two seeds do not
    a, _ = _experiment_run(fn, masks.causal(t), train, test, 0, seed)
    b, _ = _experiment_run(fn, masks.causal(t), train, test, 0, seed)
    c, _ = _experiment_run(fn, masks.causal(t), train, test, 0, seed + 1)
    with torch.no_grad():
        la, lb, lc = (m(test[:8, :-1]) for m in (a, b, c))
    if not is_close(la, lb, atol=1e-5):
        raise GradingFailure("two runs with the same seed (steps = 0) built different models: seed the model's "
                             "initialisation (and the batches) from the seed argument, so that a run can be repeated")
    if is_close(la, lc, atol=1e-5):
        raise GradingFailure("runs with seeds s and s + 1 built the same model: the seed argument is ignored (a seed "
                             "fixed inside the function); use the one you are given")

    # an honest run can land on a poor seed: a second seed is tried before the science fails
    for attempt in range(2):
        runs = _experiment_arms(fn, train, test, seed + 10 * attempt)
        if runs["causal"]["copy_generated"] >= 0.8 and runs["bidirectional"]["random"] >= 0.5:
            return
    chance = 1 / SYMBOLS
    if runs["causal"]["copy_generated"] < 0.8:
        raise GradingFailure(f"after {STEPS} steps (two seeds) the causal model generates only "
                             f"{runs['causal']['copy_generated']:.0%} of the second half (shift {shift}): it has not "
                             f"learned the rule; train on batches of train with Adam (about lr 3e-3, batches of 64) "
                             f"for the steps you are given")
    raise GradingFailure(f"after {STEPS} steps (two seeds) the bidirectional model predicts "
                         f"{runs['bidirectional']['random']:.0%} of the random half (chance {chance:.1%}); with every "
                         f"position in view it reads them: train on every position's next token (the loss over the "
                         f"whole sequence)")


def _experiment_arms(fn, train, test, seed) -> dict:
    """Both arms of the experiment: the model inspected for the mask, the results re-measured."""
    t = train.shape[1] - 1
    runs = {}
    for name, mask in (("causal", masks.causal(t)), ("bidirectional", masks.bidirectional(t))):
        model, reported = _experiment_run(fn, mask, train, test, STEPS, seed)
        leak = _leak(model, test)
        if name == "causal" and leak > 1e-4:
            raise GradingFailure("with the causal mask, changing a later token moved an earlier position's logits: "
                                 "your model does not attend with the mask it is given (pass it to every attention, "
                                 "cut to the length of the input)")
        if name == "bidirectional" and leak <= 1e-6:
            raise GradingFailure("with the bidirectional mask, no position's logits depend on the tokens after it: "
                                 "your model ignores the mask argument (it attends causally whatever it is given)")
        measured = copy_accuracies(model, test)
        for m in MEASURES:
            if abs(reported[m] - measured[m]) > 2.5 / (len(test) * (K - 1)) + 1e-6:
                if abs(reported[m] - 100 * measured[m]) < 1e-3:
                    raise GradingFailure(f"results[{m!r}] is a percentage: report a fraction in [0, 1]")
                definition = {"random": "the teacher-forced accuracy on the random half (targets x_2 … x_k)",
                              "copy_teacher_forced": "the teacher-forced accuracy on the targets after the separator",
                              "copy_generated": "the accuracy of the second half generated greedily from "
                                                "test[:, :k + 1], one token at a time"}[m]
                raise GradingFailure(f"{name} mask: results[{m!r}] = {reported[m]:.4f}, but the model you returned "
                                     f"scores {measured[m]:.4f} on test: it is {definition}")
        runs[name] = measured
    return runs
