"""Checks for the chapter 07 exercises (exercises/07_coca): attentional pooling over sets of tokens
of different sizes (a key-padding mask), the input and attention mask of CoCa's unimodal half
(the CLS appended after the words, causal, padding hidden), CoCa's weighted loss, and an
experiment: how much of what a fresh ViT's tokens carry is the image, and how much their
position, with position embeddings started at std 0.02 and at std 1?

Answers are compared with the formula (and the library: minivlm.nn.masks, minivlm.losses) on
fresh random inputs, with padding at random places and lengths (a full row, a row of one token),
size-1 cases (one image, one token, one query; a batch of one caption), gradients that must reach
every input that should get one (nothing through .data, .detach() or .item()), and the inputs
checked for changes afterwards. When an answer is wrong the check tries the plausible mistakes and
names the one that matches: the mask ignored, inverted or applied after the softmax, padded
tokens zeroed instead of hidden, the softmax over the queries, no 1/√d, one head; the CLS put
first, a mask that is not causal or does not hide padding, padding on the queries; the weights
swapped, no shift, padding counted, the mean of per-caption means, one contrastive direction, the
temperature forgotten. The experiment's function is run on fresh images with fresh CoCas of both
initialisations and with the zoo CoCa, each result recomputed; the std-1 share must come out far
below the std-0.02 share in the learner's own numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivlm.data import ShapesBench
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_gradients,
    fresh_generator,
    is_close,
    randint,
    reduction_mistakes,
    register,
    tensor_answer,
)
from minivlm.losses import clip_loss, lm_loss
from minivlm.models.coca import COCA_CONFIG, CoCa, CoCaConfig
from minivlm.nn import masks
from minivlm.zoo import store

# ----------------------------------------------------------------------------- 07.attentional_pool


def pool_reference(context: torch.Tensor, queries: torch.Tensor, heads: int, mask: torch.Tensor | None = None,
                   scale: bool = True, softmax_dim: int = -1, after: bool = False) -> torch.Tensor:
    """Multi-head attention of learned queries (Q, D) over tokens (B, N, D), no projections; the
    padded tokens (mask False) get no weight. after=True: a mistake, the weights zeroed after the
    softmax (not renormalised)."""
    b, n, d = context.shape
    dh = d // heads
    q = queries.reshape(1, -1, heads, dh).transpose(1, 2)  # (1, H, Q, dh)
    k = context.reshape(b, n, heads, dh).transpose(1, 2)  # (B, H, N, dh)
    scores = q @ k.transpose(-2, -1) / (math.sqrt(dh) if scale else 1.0)  # (B, H, Q, N)
    if mask is not None and not after:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(softmax_dim)
    if mask is not None and after:
        weights = weights * mask[:, None, None, :]
    return (weights @ k).transpose(1, 2).reshape(b, -1, d)  # (B, Q, D)


def _pool_case(g: torch.Generator, b: int, n: int, q: int, heads: int, dh: int):
    d = heads * dh
    context, queries = torch.randn(b, n, d, generator=g) * 2, torch.randn(q, d, generator=g) * 2
    mask = torch.rand(b, n, generator=g) < 0.6  # padded tokens anywhere (a set has no order)
    mask[torch.arange(b), torch.randint(0, n, (b,), generator=g)] = True  # each set keeps a token
    mask[0] = True  # one full set
    return context, queries, mask


@register("07.attentional_pool", title="Attentional pooling over sets of different sizes (a key-padding mask)")
def check_attentional_pool(fn) -> None:
    g = fresh_generator()
    cases = [(randint(g, 3, 4), randint(g, 6, 9), randint(g, 2, 4), randint(g, 2, 4), randint(g, 3, 5)),
             (1, 1, 1, randint(g, 1, 2), 4)]  # one image of one token, one query
    for b, n, q, heads, dh in cases:
        d = heads * dh
        context, queries, mask = _pool_case(g, b, n, q, heads, dh)
        what = f"B={b}, N={n} tokens, Q={q} queries, {heads} heads"
        leaves = {"context": context.clone().requires_grad_(True), "queries": queries.clone().requires_grad_(True)}
        given_mask = mask.clone()
        got = call(fn, leaves["context"], leaves["queries"], heads, given_mask)
        if not torch.equal(leaves["context"].detach(), context) \
                or not torch.equal(leaves["queries"].detach(), queries) or not torch.equal(given_mask, mask):
            raise GradingFailure("an input was modified in place (padded tokens zeroed in the caller's context?): "
                                 "leave context, queries and mask as they are")
        got = tensor_answer("attentional_pool's result", got)
        if tuple(got.shape) != (b, q, d):
            raise GradingFailure(f"return one vector per query: shape (B, Q, D) = {(b, q, d)}, got "
                                 f"{tuple(got.shape)} ({what})")
        want = pool_reference(context, queries, heads, mask)
        if torch.isnan(got.detach()).any():
            raise GradingFailure(f"the pooled vectors contain NaN ({what}): a softmax ran over nothing but -inf, "
                                 f"either over a set whose tokens were all hidden (the mask inverted? True marks a "
                                 f"real token) or over the queries (a padded token's column is all -inf); the softmax "
                                 f"runs over the tokens, and every set keeps at least one real token")
        if not is_close(got, want):
            inverted = ~mask
            inverted[~inverted.any(1)] = True  # a full set, inverted, would hide every token: NaN
            named = [
                (pool_reference(context, queries, heads), "the mask is ignored: a padded token must get no weight "
                                                          "(its score -inf before the softmax)"),
                (pool_reference(context, queries, heads, inverted), "the mask is inverted: True marks a real token, "
                                                                    "the one the queries may read"),
                (pool_reference(context, queries, heads, mask, after=True),
                 "the padded tokens' weights were zeroed after the softmax: the remaining weights no longer sum to 1; "
                 "hide them before it (score -inf), so the softmax spreads 1 over the real tokens"),
                (pool_reference(context * mask[..., None], queries, heads),
                 "the padded tokens were zeroed instead of hidden: a zero token still scores q · 0 = 0 and gets weight "
                 "in the softmax; give it a score of -inf"),
                (pool_reference(context, queries, heads, mask, softmax_dim=-2),
                 "softmax over the queries: each query's weights must sum to 1 over the N tokens"),
                (pool_reference(context, queries, heads, mask, scale=False), "the scores are not scaled: divide "
                                                                             "query · token by √d_head"),
                (pool_reference(context, queries, 1, mask),
                 f"one head instead of {heads}: split D into {heads} heads of {dh}, attend in each, and concatenate"),
            ]
            masked_mean = (context * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]
            named.append((masked_mean.expand(b, q, d), "the queries are ignored: every query returned the mean of the "
                                                       "real tokens; weight them by softmax(query · token / √d)"))
            for candidate, message in named:
                if not torch.isnan(candidate).any() and not is_close(candidate, want) and is_close(got, candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"the pooled vectors ({what})", got, want, atol=1e-4, rtol=1e-3)
        expect_gradients(f"the pooled vectors ({what})", got,
                         pool_reference(leaves["context"], leaves["queries"], heads, mask), leaves)
        if n > 1:
            perm = torch.randperm(n, generator=g)
            again = tensor_answer("attentional_pool's result",
                                  call(fn, context[:, perm].clone(), queries.clone(), heads, mask[:, perm].clone()))
            if not is_close(again, want):
                raise GradingFailure(f"the output changed when the tokens (and their mask) were reordered: pooling "
                                     f"is a weighted sum over a set, it must not depend on the tokens' order ({what})")
            noisy = torch.where(mask[..., None], context, context + 50 * torch.randn(context.shape, generator=g))
            again = tensor_answer("attentional_pool's result", call(fn, noisy, queries.clone(), heads, mask.clone()))
            if not is_close(again, want):
                raise GradingFailure(f"the output changed when only the padded tokens changed: a padded token must not "
                                     f"be read at all ({what})")


# ----------------------------------------------------------------------------- 07.unimodal_input


def reference_unimodal_input(words, attention_mask, cls):
    """[w_1 ... w_T ; CLS] and the causal mask in which no query reads a padded word; the CLS, last
    and never padding, reads every real word."""
    b, t, _ = words.shape
    x = torch.cat([words, cls.expand(b, 1, -1)], dim=1)  # (B, T + 1, D)
    valid = torch.cat([attention_mask.bool(), torch.ones(b, 1, dtype=torch.bool)], dim=1)  # (B, T + 1)
    return x, masks.causal(t + 1) & masks.padding(valid)  # (B, T + 1, T + 1)


def _unimodal_case(g: torch.Generator, b: int, t: int, d: int):
    words = torch.randn(b, t, d, generator=g)
    cls = torch.randn(d, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    lengths[-1] = 1 if b > 1 else lengths[-1]
    return words, torch.arange(t)[None] < lengths[:, None], cls, lengths


def _unimodal_mistakes(words, attention_mask, cls, lengths):
    b, t, d = words.shape
    x, right = reference_unimodal_input(words, attention_mask, cls)
    valid = torch.cat([attention_mask, torch.ones(b, 1, dtype=torch.bool)], 1)
    causal = masks.causal(t + 1)
    first = torch.cat([cls.expand(b, 1, -1), words], 1)
    after_last = torch.stack([torch.cat([words[i, :lengths[i]], cls[None], words[i, lengths[i]:]]) for i in range(b)])
    x_named = [
        (first, "the CLS comes first: CoCa appends it AFTER the words, the one place where causal attention lets it "
                "see every word (a first token sees only itself)"),
        (after_last, "the CLS was put right after each caption's last real word: append it at position T, after the "
                     "padding, so that every row has it at index -1 (the mask hides the padding from it)"),
        (torch.cat([words, cls.expand(b, 1, -1) * 0], 1), "the CLS slot holds zeros: it holds the learned cls vector"),
    ]
    mask_named = [
        (masks.padding(valid).expand(b, t + 1, t + 1), "the mask is not causal: a word may not read the words after "
                                                       "it (the unimodal half is a decoder)"),
        (causal.expand(b, t + 1, t + 1), "the mask does not hide the padding: no query may read a padded word "
                                         "(the CLS would average padding into the text embedding)"),
        (causal & valid[:, :, None], "the padding is on the queries (rows): a padded word is a KEY no one may read, "
                                     "so block its column, mask[b, :, j] = False"),
        (causal & valid[:, :, None] & valid[:, None, :], "the padding blocks the rows as well as the columns: "
                                                         "padding is a rule about keys; block the padded columns "
                                                         "only"),
        (~right, "the mask is inverted: True means 'may attend'"),
        (causal & masks.padding(torch.cat([attention_mask, torch.zeros(b, 1, dtype=torch.bool)], 1)),
         "the CLS is hidden as a key: it is a real token (valid), so it may attend to itself"),
        (causal.t().expand(b, t + 1, t + 1) & masks.padding(valid), "the mask is upper-triangular: token i may "
                                                                    "attend to tokens 0..i (lower triangle)"),
    ]
    return x, right, x_named, mask_named


@register("07.unimodal_input", title="CoCa's unimodal half: [words ; CLS] and its causal, padded mask")
def check_unimodal_input(fn) -> None:
    g = fresh_generator()
    for b, t, d in ((randint(g, 3, 5), randint(g, 5, 9), randint(g, 4, 8)), (1, 1, 4), (1, randint(g, 3, 6), 4)):
        words, attention_mask, cls, lengths = _unimodal_case(g, b, t, d)
        what = f"B={b} captions of T={t} tokens"
        leaves = {"words": words.clone().requires_grad_(True), "cls": cls.clone().requires_grad_(True)}
        given_mask = attention_mask.clone()
        got = call(fn, leaves["words"], given_mask, leaves["cls"])
        if not torch.equal(given_mask, attention_mask) or not torch.equal(leaves["words"].detach(), words) \
                or not torch.equal(leaves["cls"].detach(), cls):
            raise GradingFailure("an input was modified in place: leave words, attention_mask and cls as they are")
        if not (isinstance(got, tuple) and len(got) == 2):
            raise GradingFailure(f"unimodal_input must return a tuple (x, mask), got {type(got).__name__}")
        x, mask = tensor_answer("x", got[0]), tensor_answer("mask", got[1])
        want_x, want_mask, x_named, mask_named = _unimodal_mistakes(words, attention_mask, cls, lengths)
        if tuple(x.shape) != (b, t + 1, d):
            raise GradingFailure(f"x must be (B, T + 1, D) = {(b, t + 1, d)}: the T words and the CLS after them, got "
                                 f"{tuple(x.shape)} ({what})")
        if not is_close(x, want_x):
            for candidate, message in x_named:
                if not is_close(candidate, want_x) and is_close(x, candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"x ({what})", x, want_x)
        expect_gradients(f"x ({what})", got[0], reference_unimodal_input(leaves["words"], attention_mask,
                                                                         leaves["cls"])[0], leaves)
        if tuple(mask.shape) in ((b, t + 1), (b, 1, t + 1)):
            raise GradingFailure(f"mask is a padding mask only, {tuple(mask.shape)}: return the full attention mask, "
                                 f"(B, T + 1, T + 1) = {(b, t + 1, t + 1)}, causal and padded ({what})")
        if tuple(mask.shape) != (b, t + 1, t + 1):
            raise GradingFailure(f"mask must be (B, T + 1, T + 1) = {(b, t + 1, t + 1)}, got {tuple(mask.shape)} "
                                 f"({what})")
        if mask.dtype != torch.bool:
            raise GradingFailure(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
        if not torch.equal(mask, want_mask):
            for candidate, message in mask_named:
                if not torch.equal(candidate, want_mask) and torch.equal(mask, candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"mask ({what})", mask, want_mask)


# ----------------------------------------------------------------------------- 07.coca_loss


def _inputs(g: torch.Generator, b: int | None = None):
    b = randint(g, 3, 5) if b is None else b
    t, v, e = randint(g, 5, 8), randint(g, 10, 16), randint(g, 4, 8)
    image = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    text = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    logits = torch.randn(b, t, v, generator=g) * 2
    ids = torch.randint(0, v, (b, t), generator=g)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    lengths[0] = t
    lengths[1] = 1  # a caption of one token: no target in that row
    if b > 2:
        lengths[2] = 2
    mask = torch.arange(t)[None] < lengths[:, None]
    scale = torch.tensor(float(torch.empty(1).uniform_(5, 20, generator=g)))
    w_con = float(torch.empty(1).uniform_(0.5, 1.5, generator=g))
    w_cap = float(torch.empty(1).uniform_(1.8, 3, generator=g))
    return image, text, logits, ids, mask, scale, w_con, w_cap


def coca_loss_reference(image, text, logits, ids, mask, scale, w_con, w_cap):
    return w_con * clip_loss(image, text, scale) + w_cap * lm_loss(logits, ids, mask)


def _loss_mistakes(image, text, logits, ids, mask, scale, w_con, w_cap) -> list:
    con, cap = clip_loss(image, text, scale), lm_loss(logits, ids, mask)
    target = mask[:, 1:].float()
    named = [
        (w_cap * con + w_con * cap, "the weights are swapped: λ_con multiplies the contrastive loss, λ_cap the "
                                    "captioning loss"),
        (w_con * con + w_cap * F.cross_entropy(logits[mask], ids[mask]),
         "the next-word loss is not shifted: position t's logits predict token t + 1"),
        (w_con * con + w_cap * F.cross_entropy(logits[:, 1:][mask[:, :-1]], ids[:, :-1][mask[:, :-1]]),
         "shifted the wrong way: position t + 1's logits were scored against token t, which it has already read"),
        (w_con * con + w_cap * lm_loss(logits, ids, None), "padding counted as a target: only real tokens "
                                                           "(attention_mask True) are predicted"),
        (w_con * F.cross_entropy(scale * image @ text.t(), torch.arange(len(image))) + w_cap * cap,
         "the contrastive loss in one direction only: average image→text and text→image"),
        (w_con * clip_loss(image, text, 1.0) + w_cap * cap, "the temperature is forgotten: multiply the cosine "
                                                            "similarities by scale (1 / temperature)"),
        (con + cap, "a weight is missing: the loss is λ_con · contrastive + λ_cap · captioning"),
    ]
    per = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(target.shape)
    rows = target.sum(1) > 0  # a caption of one token has no target
    named.append((w_con * con + w_cap * ((per * target).sum(1)[rows] / target.sum(1)[rows]).mean(),
                  "the mean of per-row means: a short caption then weighs as much as a long one; take the mean over "
                  "all target tokens of the batch (their sum over their number)"))
    for value, message in reduction_mistakes(logits, ids, target, "caption", "target tokens"):
        if not torch.isnan(torch.as_tensor(value)).any():
            named.append((w_con * con + w_cap * value, message))
    return named


@register("07.coca_loss", title="CoCa's loss: λ_con · contrastive + λ_cap · captioning")
def check_coca_loss(fn) -> None:
    g = fresh_generator()
    for b in (None, 2):  # the smallest batch (one negative each), with a caption that has no target
        args = _inputs(g, b)
        image, text, logits, ids, mask, scale, w_con, w_cap = args
        what = f"B={len(image)}"
        leaves = {"image": image.clone().requires_grad_(True), "text": text.clone().requires_grad_(True),
                  "logits": logits.clone().requires_grad_(True), "scale": scale.clone().requires_grad_(True)}
        given = (ids.clone(), mask.clone())
        got = call(fn, leaves["image"], leaves["text"], leaves["logits"], given[0], given[1], leaves["scale"],
                   w_con, w_cap)
        if not torch.equal(given[0], ids) or not torch.equal(given[1], mask):
            raise GradingFailure("ids or attention_mask was modified in place: leave the inputs as they are")
        value = tensor_answer("coca_loss's result", got)
        if value.numel() != 1:
            raise GradingFailure(f"the loss must be a scalar, got shape {tuple(value.shape)}")
        want = coca_loss_reference(*args)
        if not is_close(value.reshape(()), want):
            for candidate, message in _loss_mistakes(*args):
                if not is_close(candidate, want) and is_close(value.reshape(()), candidate):
                    raise GradingFailure(f"{message} ({what})")
            raise GradingFailure(f"coca_loss returned {float(value.detach()):.5f}, expected {float(want):.5f} ({what})")
        expect_gradients(f"the loss ({what})", value.reshape(()),
                         coca_loss_reference(leaves["image"], leaves["text"], leaves["logits"], ids, mask,
                                             leaves["scale"], w_con, w_cap), leaves)


# ----------------------------------------------------------------------------- 07.content_share


@torch.no_grad()
def reference_content_share(model, images, unbiased: bool = False) -> float:
    """The share of the variance of the ViT's patch tokens (B, N, D) that lies across images at a
    fixed position: mean over positions of Σ_d Var_images, over Σ_d Var_all tokens (population
    variances; unbiased=True: the other convention, a mistake the check names)."""
    tokens = model.visual.forward_features((images - model.image_mean) / model.image_std)[:, 1:]  # (B, N, D)
    across_images = tokens.var(0, unbiased=unbiased).sum(-1).mean()  # for each position, over the images
    total = tokens.flatten(0, 1).var(0, unbiased=unbiased).sum()  # over every token of every image
    return float(across_images / total)


def _share(name: str, got, what: str) -> float:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise GradingFailure(f"content_share must return one number, got {type(got).__name__} ({what})")
    return float(got)


def _content_run(fn, model, images, what: str) -> float:
    given = images.clone()
    before = (model.training, float(sum(p.detach().double().sum() for p in model.parameters())))
    got = _share("content_share", call(fn, model, given), what)
    if not torch.equal(given, images):
        raise GradingFailure("images was modified in place: leave the caller's images as they are")
    if model.training != before[0]:
        raise GradingFailure(f"the model was left in {'training' if model.training else 'eval'} mode: measure it in "
                             f"the mode it was given ({what})")
    if float(sum(p.detach().double().sum() for p in model.parameters())) != before[1]:
        raise GradingFailure(f"the model's weights changed: the experiment only measures ({what})")
    want = reference_content_share(model, images)
    if abs(got - want) <= 0.004:
        return got
    if abs(got - reference_content_share(model, images, unbiased=True)) <= 0.004:
        raise GradingFailure(f"the variances are the unbiased ones ({got:.4f} against {want:.4f}): use population "
                             f"variances, var(unbiased=False), so that the two parts add up to exactly 1 ({what})")
    if abs(got - 100 * want) <= 2:
        raise GradingFailure(f"the share is a percentage ({got:.1f}): report a fraction in [0, 1] ({what})")
    if abs(got - (1 - want)) <= 0.004:
        raise GradingFailure(f"that is the position's share ({got:.3f}), 1 minus the content's: return the share of "
                             f"the variance that lies across images at a fixed position ({what})")
    with torch.no_grad():
        scaled = (images - model.image_mean) / model.image_std
        tokens = model.visual.forward_features(scaled)
        raw = model.visual.forward_features(images)[:, 1:]

    def share(t):
        return float(t.var(0, unbiased=False).sum(-1).mean() / t.flatten(0, 1).var(0, unbiased=False).sum())

    for candidate, message in (
            (share(tokens), "the CLS token was counted with the patches: take the patch tokens only, tokens[:, 1:]"),
            (share(raw), "the images were not scaled as the model reads them: (images - model.image_mean) / "
                         "model.image_std, as image_features does"),
            (float(tokens[:, 1:].var(1, unbiased=False).sum(-1).mean()
                   / tokens[:, 1:].flatten(0, 1).var(0, unbiased=False).sum()),
             "the variance was taken across positions within an image: that measures the position's share; the "
             "content's share is the variance across IMAGES at a fixed position (what differs between images), "
             "averaged over positions")):
        if abs(candidate - want) > 0.01 and abs(got - candidate) <= 0.004:
            raise GradingFailure(f"{message} ({what})")
    raise GradingFailure(f"content_share returned {got:.4f}, but this model's patch tokens give {want:.4f} ({what}): "
                         f"the mean over positions of the variance across images, over the variance of all tokens")


@register("07.content_share", title="The experiment: the image's share of a ViT's tokens, positions at std 0.02 vs 1")
def check_content_share(fn) -> None:
    g = fresh_generator()
    images = ShapesBench(seed=randint(g, 0, 2**31 - 2)).captioning(32)["images"]
    shares = {}
    for std in (1.0, 0.02):  # std 1 first: there the content's and the position's shares lie far apart
        with torch.random.fork_rng():
            torch.manual_seed(randint(g, 0, 2**31 - 2))
            model = CoCa(CoCaConfig(**{**COCA_CONFIG, "pos_init_std": std})).eval()
        shares[std] = _content_run(fn, model, images, f"a fresh CoCa, positions at std {std}")
    _content_run(fn, store.load("coca").train(), images, "the zoo CoCa, handed over in training mode")
    if not shares[1.0] < shares[0.02] - 0.3:  # a fact of the library's ViT: std-1 positions drown the patches
        raise GradingFailure(f"your run gives std 1 a content share of {shares[1.0]:.2f} against {shares[0.02]:.2f} "
                             f"for std 0.02: that is a problem of the library's CoCa, not of your function; report it")
