"""Checks for the chapter 07 exercises (exercises/07_coca): CoCa's attentional pooling, the split
of its decoder's output into the contrastive embedding (the appended CLS) and the words, and its
weighted loss.

Answers are compared with the formula on fresh random inputs; when they differ, the check tries
the plausible mistakes and names the one that matches: the queries ignored (a plain mean over the
tokens), the softmax over the queries instead of the tokens, no 1/√d scale, one head instead of
several; the first token pooled instead of the appended CLS, the CLS left among the words, a mean
over the words; the two weights swapped, the next-word loss not shifted, padding counted as a
target, the contrastive loss in one direction only, the temperature forgotten.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivlm.grading import GradingFailure, call, fresh_generator, is_close, randint, register, tensor_answer
from minivlm.losses import clip_loss, lm_loss

# ----------------------------------------------------------------------------- 07.attentional_pool


def pool_reference(context: torch.Tensor, queries: torch.Tensor, heads: int, scale: bool = True,
                   softmax_dim: int = -1) -> torch.Tensor:
    """Multi-head attention of learned queries (Q, D) over tokens (B, N, D), no projections."""
    b, n, d = context.shape
    dh = d // heads
    q = queries.view(1, -1, heads, dh).transpose(1, 2)  # (1, H, Q, dh)
    k = context.view(b, n, heads, dh).transpose(1, 2)  # (B, H, N, dh)
    scores = q @ k.transpose(-2, -1) / (math.sqrt(dh) if scale else 1.0)  # (B, H, Q, N)
    weights = scores.softmax(softmax_dim)
    return (weights @ k).transpose(1, 2).reshape(b, -1, d)  # (B, Q, D)


@register("07.attentional_pool", title="Attentional pooling: learned queries read a set of tokens")
def check_attentional_pool(fn) -> None:
    g = fresh_generator()
    heads = randint(g, 2, 4)
    d = heads * randint(g, 3, 5)
    b, n, q = randint(g, 2, 3), randint(g, 5, 9), randint(g, 2, 4)
    context, queries = torch.randn(b, n, d, generator=g) * 2, torch.randn(q, d, generator=g) * 2
    want = pool_reference(context, queries, heads)
    got = tensor_answer("attentional_pool's result", call(fn, context.clone(), queries.clone(), heads))
    if tuple(got.shape) != (b, q, d):
        raise GradingFailure(f"return one vector per query: shape (B, Q, D) = {(b, q, d)}, got {tuple(got.shape)}")
    if is_close(got, want):
        perm = torch.randperm(n, generator=g)
        again = tensor_answer("attentional_pool's result", call(fn, context[:, perm].clone(), queries.clone(), heads))
        if not is_close(again, want):
            raise GradingFailure("the output changed when the tokens were reordered: pooling is a weighted sum over "
                                 "a set, it must not depend on the tokens' order")
        return
    if is_close(got, context.mean(1, keepdim=True).expand(b, q, d)):
        raise GradingFailure("the queries are ignored: every query returned the plain mean of the tokens; weight the "
                             "tokens by softmax(query · token / √d)")
    if is_close(got, pool_reference(context, queries, heads, softmax_dim=-2)):
        raise GradingFailure("softmax over the queries: each query's weights must sum to 1 over the N tokens "
                             "(softmax along the tokens' axis)")
    if is_close(got, pool_reference(context, queries, heads, scale=False)):
        raise GradingFailure("the scores are not scaled: divide query · token by √d_head")
    if is_close(got, pool_reference(context, queries, 1)):
        raise GradingFailure(f"one head instead of {heads}: split D into {heads} heads of {d // heads}, attend in each, "
                             f"and concatenate")
    raise GradingFailure("the pooled vectors differ from multi-head attention of the queries over the tokens")


# ----------------------------------------------------------------------------- 07.split_outputs


@register("07.split_outputs", title="The appended CLS and the words from one decoder pass")
def check_split_outputs(fn) -> None:
    g = fresh_generator()
    b, t, d = randint(g, 2, 4), randint(g, 4, 8), randint(g, 4, 8)
    hidden = torch.randn(b, t + 1, d, generator=g)
    got = call(fn, hidden.clone())
    if not isinstance(got, tuple) or len(got) != 2:
        raise GradingFailure(f"return a pair (cls (B, D), words (B, T, D)), got {type(got).__name__}")
    cls, words = tensor_answer("cls", got[0]), tensor_answer("words", got[1])
    if tuple(cls.shape) != (b, d):
        raise GradingFailure(f"cls must be one vector per caption, (B, D) = {(b, d)}, got {tuple(cls.shape)}")
    if is_close(cls, hidden[:, 0]):
        raise GradingFailure("the first token pooled: CoCa's CLS is appended at the END of the words (position -1), "
                             "where causal attention lets it see every word; the first token has seen only itself")
    if is_close(cls, hidden.mean(1)) or is_close(cls, hidden[:, :-1].mean(1)):
        raise GradingFailure("a mean over the tokens: the text embedding is the appended CLS's output, position -1")
    if not is_close(cls, hidden[:, -1]):
        raise GradingFailure("cls must be the decoder's output at the appended CLS position (the last one)")
    if tuple(words.shape) == (b, t + 1, d):
        raise GradingFailure("the CLS is left among the words: the multimodal half reads the T words only, "
                             "hidden[:, :-1]")
    if tuple(words.shape) != (b, t, d) or not is_close(words, hidden[:, :-1]):
        raise GradingFailure(f"words must be the outputs at the T = {t} word positions, hidden[:, :-1]")


# ----------------------------------------------------------------------------- 07.coca_loss


def _inputs(g: torch.Generator):
    b, t, v, e = randint(g, 3, 5), randint(g, 5, 8), randint(g, 10, 16), randint(g, 4, 8)
    image = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    text = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    logits = torch.randn(b, t, v, generator=g) * 2
    ids = torch.randint(0, v, (b, t), generator=g)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    lengths[0] = t - 1
    mask = torch.arange(t)[None] < lengths[:, None]
    scale = float(torch.empty(1).uniform_(5, 20, generator=g))
    w_con, w_cap = float(torch.empty(1).uniform_(0.5, 1.5, generator=g)), float(torch.empty(1).uniform_(1.8, 3, generator=g))
    return image, text, logits, ids, mask, scale, w_con, w_cap


def coca_loss_reference(image, text, logits, ids, mask, scale, w_con, w_cap):
    return w_con * clip_loss(image, text, scale) + w_cap * lm_loss(logits, ids, mask)


@register("07.coca_loss", title="CoCa's loss: λ_con · contrastive + λ_cap · captioning")
def check_coca_loss(fn) -> None:
    g = fresh_generator()
    args = _inputs(g)
    image, text, logits, ids, mask, scale, w_con, w_cap = args
    want = coca_loss_reference(*args)
    got = tensor_answer("coca_loss's result", call(fn, *(a.clone() if isinstance(a, torch.Tensor) else a
                                                        for a in args)))
    if got.numel() != 1:
        raise GradingFailure(f"the loss must be a scalar, got shape {tuple(got.shape)}")
    if is_close(got.reshape(()), want):
        return
    con, cap = clip_loss(image, text, scale), lm_loss(logits, ids, mask)
    wrong = {
        "the weights are swapped: λ_con multiplies the contrastive loss, λ_cap the captioning loss":
            w_cap * con + w_con * cap,
        "the next-word loss is not shifted: position t's logits predict token t + 1 (logits[:, :-1] against "
        "ids[:, 1:])": w_con * con + w_cap * F.cross_entropy(logits[mask], ids[mask]),
        "padding counted as a target: only real tokens (attention_mask True) are predicted":
            w_con * con + w_cap * lm_loss(logits, ids, None),
        "the contrastive loss in one direction only: average image→text and text→image":
            w_con * F.cross_entropy(scale * image @ text.t(), torch.arange(len(image))) + w_cap * cap,
        "the temperature is forgotten: multiply the cosine similarities by scale (1 / temperature)":
            w_con * clip_loss(image, text, 1.0) + w_cap * cap,
        "a weight is missing: the loss is λ_con · contrastive + λ_cap · captioning": con + cap,
    }
    for message, value in wrong.items():
        if is_close(got.reshape(()), value):
            raise GradingFailure(message)
    raise GradingFailure(f"coca_loss returned {float(got):.5f}, expected {float(want):.5f}")
