"""Checks for the chapter 09 exercises (exercises/09_llm): the shifted next-token loss that
ignores padding, the attention of a chunk of new tokens after a KV cache (the causal mask offset
by the cache's length), perplexity from the log-probabilities of a batch of documents, greedy decoding of a GPT that feeds one token at a time through its cache,
and an experiment: rotary position embeddings (RoPE) written out, and the measurement that the
score of a rotated query and key depends only on their offset.

The loss is compared with `minivlm.losses.lm_loss` and perplexity with `minivlm.eval.perplexity`
on fresh random inputs whose rows have very different numbers of real tokens and whose padded
positions hold values of their own, redrawn until every plausible mistake gives another number
than the right answer (and than every other mistake), then on one row of two tokens (B = 1); its
gradient to the logits is compared with the reference's. The chunk's attention is compared with
full causal attention recomputed from scratch over the whole sequence: a chunk of C tokens after T
cached, C tokens into an empty cache, one token after T (a decoding step), B = H = 1, and a whole
sequence fed in chunks of random sizes from an empty cache, the learner's returned cache fed back
in; batch, heads, chunk, cache and head width all have distinct sizes, and the gradient reaches
all five inputs as the reference's does. Perplexity is also computed on a batch with a document of
no real token. Greedy decoding runs on a small random Llama-layout `GPT` whose weights are scaled up
(the top two logits are never near a tie) and whose continuation depends on the whole prompt (it
changes with the prompt's first token, and differs from the continuation of the last prompt token
alone), seen through a recorder of the calls the learner makes, and is compared with greedy
decoding without a cache; then on one prompt (B = 1) and with max_new_tokens = 0.
RoPE is compared with the library's `RotaryEmbedding` and `apply_rotary` (minivlm/nn/rope.py) on
a random (B, H, T, d) and a (T, d) tensor, at distinct positions that are not 0 … T − 1 and with
a base that is not 10,000, then on a (B, H, T, d) (B != H) and a (B, T, d) tensor with each row's
own positions (B, T), the rows starting at different offsets. The experiment `offset_spread(rotate, q, k, n)` is given two rotations
and recomputed for each: RoPE, where the spread of the scores at one offset is 0 (to float
rounding) while the scores across offsets differ, and a position vector added to q and k (GPT-2's
way), where the score depends on both positions; the learner's score matrix and both spreads must
be the recomputed ones. Inputs are redrawn until every plausible mistake gives another answer.

When an answer is wrong the check tries to name the plausible mistake: no shift, the shift the
wrong way, padding used as targets, padding counted in the mean, the mask not shifted with the
targets, the mean of per-row means, the sum instead of the mean, raw logits taken for
log-probabilities, a loss without gradient (detached, or rebuilt from .item()), the ids changed in
place; the cache grown on the batch, heads or feature axis (torch.cat refuses it at these distinct
sizes; the check names the axis from torch's error), torch.stack instead of torch.cat, the cache
not grown, the new keys prepended, keys and values swapped, the cache changed in place, no mask
(the chunk sees its own future), the future weights zeroed after the softmax, the causal mask
aligned to the top-left corner (as if the chunk started at 0), the cache left out, the cached keys
masked out, the 1/√d scale missing or 1/d, the softmax over the query, heads or batch axis, a
one-token step used for a chunk, no gradient to the cache; the minus sign missing, padding
included or counted, the mean of per-document perplexities or of per-document means, NaN from a
document with no real token, base 2 or 10 instead of e, the cross-entropy (or the mean
log-probability) returned instead of its exp, the exp of the total, the inputs changed in place;
no cache, a fresh cache every step, the whole sequence fed again to a cache that holds it, only
the prompt's last token fed (the context ignored), the first position's logits, the prompt left out,
a decoder that breaks at B = 1 or makes a token when none is asked,
the wrong number of new tokens, the library's decoder called instead of a loop; the interleaved
pairing (2i, 2i + 1), the angles laid out interleaved with the rotate-half pairing, a missing
sign (not a rotation), the turn the wrong way, cos and sin swapped, the frequencies base^(-i/d),
growing with i, or one per channel, the positions or the base argument ignored, the input changed
in place, a rotation that works only on 4-D input, row 0's positions used for every row, per-row
angles that miss the heads axis; the score matrix transposed, the key rotated to
the query's position, the key not rotated, the scores scaled by 1/√d, the pairs grouped by p + s
or by |p − s|, the standard deviation for the spread, the mean spread instead of the largest, offset
0 alone, a spread assumed to be 0, and for the spread across offsets the standard deviation, the
spread of the per-offset means or the largest |score|.
"""
from __future__ import annotations

import math
import numbers
import re

import torch
import torch.nn.functional as F

from minivlm.eval import perplexity
from minivlm.grading import (
    NO_SHIFT,
    WRONG_WAY,
    GradingFailure,
    all_distinct,
    call,
    expect_gradients,
    fresh_generator,
    is_close,
    masked_mean,
    randint,
    reduction_mistakes,
    register,
    tensor_answer,
    token_losses,
)
from minivlm.losses import lm_loss
from minivlm.models.gpt import GPT, GPTConfig
from minivlm.nn.rope import RotaryEmbedding, apply_rotary


def _right_padded(g: torch.Generator, b: int, t: int, shortest: int) -> torch.Tensor:
    """A (B, T) bool mask of right-padded rows: a full row, a short one, the others in between."""
    lengths = torch.randint(shortest, t, (b,), generator=g)
    lengths[0], lengths[1] = t, shortest
    return torch.arange(t)[None] < lengths[:, None]


# ----------------------------------------------------------------------------- 09.shifted_lm_loss


def shifted_lm_loss_reference(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position t's logits predict token t + 1; padded targets are left out; the mean over the real
    targets. logits (B, T, V), ids (B, T), attention_mask (B, T) True on real tokens -> a 0-dim loss."""
    targets = ids[:, 1:].masked_fill(~attention_mask[:, 1:].bool(), -100)  # (B, T-1): -100 is ignored
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)




def _lm_mistakes(logits, ids, mask) -> list[tuple[torch.Tensor, str]]:
    m = mask.float()
    shifted = token_losses(logits[:, :-1], ids[:, 1:])  # (B, T-1), every position
    target_mask = m[:, 1:]
    backwards = token_losses(logits[:, 1:], ids[:, :-1])
    same = token_losses(logits, ids)
    return [
        (masked_mean(same, m), NO_SHIFT),
        (same.mean(), NO_SHIFT),
        (masked_mean(backwards, target_mask), WRONG_WAY),
        (masked_mean(backwards, m[:, :-1]), WRONG_WAY),
        (shifted.mean(),
         "padding used as targets: every position after a row's end is scored against the pad token; ignore the "
         "targets where attention_mask[:, 1:] is False (ignore_index=-100, or a mask)"),
        ((shifted * target_mask).sum() / target_mask.numel(),
         "padding counted in the mean: the padded targets were zeroed but still divide the sum; divide by the number "
         "of REAL targets, attention_mask[:, 1:].sum()"),
        (masked_mean(shifted, m[:, :-1]),
         "the mask was not shifted with the targets: the targets are ids[:, 1:], so the real ones are "
         "attention_mask[:, 1:]; attention_mask[:, :-1] also scores each short row's last token predicting a pad"),
        *reduction_mistakes(logits, ids, target_mask, "row", "real target tokens"),
    ]


def _lm_inputs(g: torch.Generator):
    """Logits, right-padded ids (pad id 0) and their mask, redrawn until every mistake gives its own number."""
    for _ in range(50):
        b, t, v = randint(g, 3, 5), randint(g, 6, 9), randint(g, 11, 16)
        logits = torch.randn(b, t, v, generator=g) * 2
        mask = _right_padded(g, b, t, shortest=2)
        ids = torch.randint(1, v, (b, t), generator=g).masked_fill(~mask, 0)  # pads are token 0
        values = [float(shifted_lm_loss_reference(logits, ids, mask))]
        values += [float(value) for value, _ in _lm_mistakes(logits, ids, mask)]
        if all_distinct(values):
            return logits, ids, mask
    raise RuntimeError("could not draw inputs on which the mistakes differ")  # pragma: no cover


def _check_loss_once(fn, logits, ids, mask, what: str) -> None:
    want = lm_loss(logits, ids, mask)
    leaf = logits.clone().requires_grad_(True)
    ids_in, mask_in = ids.clone(), mask.clone()
    try:
        got = tensor_answer("shifted_lm_loss's result", call(fn, leaf, ids_in, mask_in))
    except GradingFailure as exc:
        raise GradingFailure(f"{exc} (on {what})") from None
    if not (torch.equal(ids_in, ids) and torch.equal(mask_in, mask)):
        raise GradingFailure("ids or attention_mask was changed in place (targets written into the caller's ids?): "
                             "build the targets as a new tensor; the caller's batch feeds the next step too")
    if got.numel() != 1:
        b, t = ids.shape
        hint = " (one loss per target token: reduce them to their mean)" if got.numel() in (b * t, b * (t - 1)) else ""
        raise GradingFailure(f"the loss must be one number (a 0-dim tensor), got shape {tuple(got.shape)}{hint}")
    if not got.is_floating_point():
        raise GradingFailure(f"the loss must be a float tensor, got {got.dtype}")
    if not is_close(got.reshape(()), want):
        for value, message in _lm_mistakes(logits, ids, mask):
            if is_close(got.reshape(()), value):
                raise GradingFailure(f"{message} ({what})")
        raise GradingFailure(f"shifted_lm_loss returned {float(got.detach()):.5f}, expected {float(want):.5f} (lm_loss; "
                             f"{what})")
    expect_gradients("the loss", got, shifted_lm_loss_reference(leaf, ids, mask).reshape(got.shape),
                     {"logits": leaf})


@register("09.shifted_lm_loss", title="The next-token loss: shifted by one, padding ignored, mean over real targets")
def check_shifted_lm_loss(fn) -> None:
    g = fresh_generator()
    logits, ids, mask = _lm_inputs(g)
    _check_loss_once(fn, logits, ids, mask, f"a batch of {ids.shape[0]} right-padded rows")
    # one row (B = 1) of two tokens: a single target, no padding
    v = randint(g, 5, 9)
    one = torch.randint(1, v, (1, 2), generator=g)
    _check_loss_once(fn, torch.randn(1, 2, v, generator=g) * 2, one, torch.ones(1, 2, dtype=torch.bool),
                     "one row of two tokens, B = 1")


# ----------------------------------------------------------------------------- 09.attend_chunk

_AXES = {0: "the batch axis (dim 0)", 1: "the heads axis (dim 1)", 3: "the feature axis (dim 3, the head width)"}
_CAT_ERROR = re.compile(r"Sizes of tensors must match except in dimension (\d+)")


def _chunk_scores(q, k_all, scale: float | None = None) -> torch.Tensor:
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q @ k_all.transpose(-2, -1)) * scale  # (B, H, C, T + C)


def _offset_causal(c: int, total: int) -> torch.Tensor:
    """(C, T + C) bool: new token i sits at position T + i and may attend to keys 0 … T + i."""
    return torch.ones(c, total, dtype=torch.bool).tril(diagonal=total - c)


def attend_chunk_reference(q, k_new, v_new, k_cache, v_cache):
    """C new tokens at once through one attention layer that has T tokens cached. q, k_new, v_new
    (B, H, C, d): the new tokens'; k_cache, v_cache (B, H, T, d), T >= 0. The new keys and values
    are appended on the time axis; new token i (position T + i) attends to keys 0 … T + i: every
    cached one, the new ones up to itself. Returns (out (B, H, C, d), k_all, v_all (B, H, T + C, d))."""
    k_all = torch.cat([k_cache, k_new], dim=2)  # time is axis 2
    v_all = torch.cat([v_cache, v_new], dim=2)
    c, total = q.shape[2], k_all.shape[2]
    scores = _chunk_scores(q, k_all).masked_fill(~_offset_causal(c, total), float("-inf"))
    return scores.softmax(-1) @ v_all, k_all, v_all


def _full_causal(q, k, v) -> torch.Tensor:
    """Causal attention over a whole sequence (B, H, T, d), from scratch: every row at once."""
    t = q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


def _triple(got) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"attend_chunk must return a tuple (out, k_all, v_all), got {type(got).__name__}{extra}")
    return tuple(tensor_answer(name, x) for name, x in zip(("out", "k_all", "v_all"), got))


def _call_chunk(fn, q, k_new, v_new, k_cache, v_cache, grad: bool = False):
    """The learner's step on copies (leaves with requires_grad when grad); checks the inputs are unchanged."""
    given = [x.clone().requires_grad_(grad) for x in (q, k_new, v_new, k_cache, v_cache)]
    try:
        got = call(fn, *given)
    except GradingFailure as exc:
        text = str(exc)
        found = _CAT_ERROR.search(text)
        if found and int(found.group(1)) != 2:
            axis = _AXES.get(int(found.group(1)), f"axis {found.group(1)}")
            raise GradingFailure(f"the cache was grown along {axis}: the cache (B, H, T, d) grows on the TIME axis "
                                 f"(chapter 09 §5); the other axes must match") from None
        if "stack expects each tensor to be equal size" in text:
            raise GradingFailure("torch.stack makes a NEW axis and needs equal sizes: the cache grows along its "
                                 "existing time axis (chapter 09 §5)") from None
        raise
    for name, x, before in zip(("q", "k_new", "v_new", "k_cache", "v_cache"), given, (q, k_new, v_new, k_cache,
                                                                                       v_cache)):
        if not torch.equal(x.detach(), before):
            raise GradingFailure(f"{name} was changed in place: the caller's tensors (the cache above all, which "
                                 f"every later step reads) must stay as they were; build new tensors")
    return _triple(got), given


def _check_cache(name: str, got: torch.Tensor, cache: torch.Tensor, new: torch.Tensor, other_all: torch.Tensor,
                 where: str) -> None:
    """got: the returned k_all (or v_all); cache, new: its inputs; other_all: the other tensor's right answer."""
    b, h, t, d = cache.shape
    want = torch.cat([cache, new], dim=2)
    shape = tuple(got.shape)
    if shape == (b, h, t, d) and new.shape[2]:
        raise GradingFailure(f"{name}{where} has the cache's shape {shape}: the new tokens' keys and values must be "
                             f"appended to it, (B, H, T + C, d) = {tuple(want.shape)}")
    if shape != tuple(want.shape):
        raise GradingFailure(f"{name}{where} must have shape (B, H, T + C, d) = {tuple(want.shape)}, got {shape}")
    got = got.detach().cpu()
    if torch.allclose(got, want):
        return
    if t > 0 and torch.allclose(got, torch.cat([new, cache], dim=2)):
        raise GradingFailure(f"{name}{where}: the new tokens were prepended: they come AFTER the cached ones, in "
                             f"time order (every later step, and the causal mask, rely on it)")
    if torch.allclose(got, other_all):
        raise GradingFailure(f"{name}{where}: keys and values are swapped: k_all grows from k_cache and k_new, v_all "
                             f"from v_cache and v_new")
    raise GradingFailure(f"{name}{where}: values differ from the cached tokens followed by the new ones, in time "
                         f"order")


def _chunk_mistakes(q, k_all, v_all) -> list[tuple[torch.Tensor, str]]:
    c, total = q.shape[2], k_all.shape[2]
    t = total - c
    right = _offset_causal(c, total)
    scores = _chunk_scores(q, k_all)

    def masked(keep, s=scores):
        return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v_all

    mistakes = []
    if c > 1:
        mistakes.append((scores.softmax(-1) @ v_all,
                         "no mask: with several new tokens, each one attended to the new tokens AFTER it too (its "
                         "future); new token i sits at position T + i and sees keys 0 … T + i"))
        mistakes.append(((scores.softmax(-1) * right) @ v_all,
                         "the future keys' weights were zeroed after the softmax: the remaining weights no longer "
                         "sum to 1; mask the scores before the softmax (−inf where a key may not be seen)"))
    if t > 0:
        mistakes.append((masked(torch.ones(c, total, dtype=torch.bool).tril()),
                         "the causal mask is aligned to the top-left corner, as if the chunk started at position 0: "
                         "new token i sits at position T + i (after the T cached tokens), so it sees every cached "
                         "key and the new ones up to itself; the mask's diagonal is shifted by T"))
        mistakes.append((_chunk_scores(q, k_all[:, :, t:]).masked_fill(~torch.ones(c, c, dtype=torch.bool).tril(),
                                                                        float("-inf")).softmax(-1) @ v_all[:, :, t:],
                         "the cached keys and values were left out: the new tokens attended to each other only; "
                         "the cache is what the earlier tokens left for them to read"))
        mistakes.append((masked(torch.ones(c, total, dtype=torch.bool).triu(diagonal=t)),
                         "only the new tokens' keys are seen (the cached ones masked out): every cached key is in the "
                         "past of every new token"))
    mistakes += [
        (masked(right, _chunk_scores(q, k_all, scale=1.0)),
         "the scores are not scaled: divide q · kᵀ by √d (d = the head width), chapter 01 §1"),
        (masked(right, _chunk_scores(q, k_all, scale=1.0 / q.shape[-1])),
         "the scores were divided by d: divide by √d (d = the head width)"),
        (scores.masked_fill(~right, float("-inf")).softmax(1) @ v_all,
         "softmax over the heads axis: each query's weights are a distribution over the KEYS (the last axis)"),
        (scores.masked_fill(~right, float("-inf")).softmax(0) @ v_all,
         "softmax over the batch axis: each query's weights are a distribution over the KEYS (the last axis)"),
    ]
    if c > 1:
        mistakes.append((torch.nan_to_num(scores.masked_fill(~right, float("-inf")).softmax(-2)) @ v_all,
                         "softmax over the query axis: each query's weights are a distribution over the KEYS (the "
                         "last axis)"))
    return mistakes


def _check_chunk_out(out: torch.Tensor, want: torch.Tensor, q, k_all, v_all, where: str) -> None:
    b, h, c, d = q.shape
    if tuple(out.shape) != (b, h, c, d):
        raise GradingFailure(f"out must have q's shape (B, H, C, d) = {(b, h, c, d)}{where}, got {tuple(out.shape)}")
    out = out.detach().cpu()
    if is_close(out, want):
        return
    for value, message in _chunk_mistakes(q, k_all, v_all):  # NaN where the mistake gives NaN (softmax over −inf)
        if out.shape == value.shape and torch.allclose(out.double(), value.double(), atol=1e-4, rtol=1e-4,
                                                       equal_nan=True):
            raise GradingFailure(f"{message}{where}")
    if bool(torch.isnan(out).any()):
        raise GradingFailure(f"out holds NaN{where}: a query whose every score was masked to −inf (an inverted mask, "
                             f"or one that hides a token from itself?); each new token sees at least itself")
    diff = float((out - want).abs().max())
    raise GradingFailure(f"out differs from full causal attention's rows for the new tokens{where}: max |diff| = "
                         f"{diff:.3g}")


def _chunk_case(fn, q, k, v, t: int, c: int, where: str, grad: bool = False):
    """The C tokens after T cached ones of the whole sequence (q, k, v), against full causal attention."""
    full = _full_causal(q[:, :, :t + c], k[:, :, :t + c], v[:, :, :t + c])
    args = (q[:, :, t:t + c], k[:, :, t:t + c], v[:, :, t:t + c], k[:, :, :t], v[:, :, :t])
    (out, k_all, v_all), leaves = _call_chunk(fn, *args, grad=grad)
    _check_cache("k_all", k_all, k[:, :, :t], k[:, :, t:t + c], v[:, :, :t + c], where)
    _check_cache("v_all", v_all, v[:, :, :t], v[:, :, t:t + c], k[:, :, :t + c], where)
    _check_chunk_out(out, full[:, :, t:], q[:, :, t:t + c], k[:, :, :t + c], v[:, :, :t + c], where)
    if grad:
        names = ("q", "k_new", "v_new", "k_cache", "v_cache")
        expect_gradients(f"out{where}", out, attend_chunk_reference(*leaves)[0], dict(zip(names, leaves)))
    return k_all.detach().cpu(), v_all.detach().cpu()


@register("09.attend_chunk", title="Attention for a chunk of new tokens after a KV cache: the offset causal mask")
def check_attend_chunk(fn) -> None:
    g = fresh_generator()
    b = randint(g, 2, 3)
    h = b + randint(g, 1, 2)
    c = h + randint(g, 1, 2)  # new tokens in the chunk
    t = c + randint(g, 1, 2)  # cached tokens
    d = t + c + randint(g, 1, 3)  # batch, heads, chunk, cache, T + C and head width: all different sizes
    n = t + c + 6
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))  # the whole sequence
    _chunk_case(fn, q, k, v, t, c, f" (a chunk of C = {c} tokens after T = {t} cached)", grad=True)
    _chunk_case(fn, q, k, v, 0, c, f" (C = {c} tokens, an empty cache: the prompt's first pass)")
    _chunk_case(fn, q, k, v, t, 1, f" (one new token after T = {t} cached: a decoding step)")
    _chunk_case(fn, q[:1, :1], k[:1, :1], v[:1, :1], 0, 1, " (B = H = 1, one token, an empty cache)")
    # a whole sequence fed in chunks of random sizes from an empty cache, the returned cache fed back
    sizes, left = [], n
    while left:
        sizes.append(min(left, randint(g, 1, 4)))
        left -= sizes[-1]
    k_cache, v_cache, start = k[:, :, :0], v[:, :, :0], 0
    full = _full_causal(q, k, v)
    for i, size in enumerate(sizes):
        where = f" (chunk {i} of sizes {sizes}, fed from an empty cache, your returned cache fed back)"
        args = (q[:, :, start:start + size], k[:, :, start:start + size], v[:, :, start:start + size], k_cache, v_cache)
        (out, k_cache, v_cache), _ = _call_chunk(fn, *args)
        _check_cache("k_all", k_cache, k[:, :, :start], k[:, :, start:start + size], v[:, :, :start + size], where)
        _check_cache("v_all", v_cache, v[:, :, :start], v[:, :, start:start + size], k[:, :, :start + size], where)
        _check_chunk_out(out, full[:, :, start:start + size], args[0], k[:, :, :start + size], v[:, :, :start + size],
                         where)
        k_cache, v_cache, start = k_cache.detach().cpu(), v_cache.detach().cpu(), start + size

# ----------------------------------------------------------------------------- 09.perplexity_from_logprobs


def perplexity_from_logprobs_reference(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(−(sum of the real tokens' log-probabilities) / (their number)). logprobs (B, T) natural
    logs (any value where mask is False), mask (B, T) True on real tokens -> a 0-dim tensor."""
    mask = mask.bool()
    return torch.exp(-logprobs[mask].sum() / mask.sum())


def _perplexity_mistakes(logprobs, mask) -> list[tuple[float, str]]:
    m = mask.float()
    lp = logprobs.double()
    total, count = float((lp * m).sum()), float(m.sum())
    nll = -total / count
    row_nll = -(lp * m).sum(1) / m.sum(1)
    base = ("the log-probabilities are natural logs (from log_softmax), so perplexity is e to the mean negative "
            "log-probability: torch.exp, not {} **")
    return [
        (math.exp(-nll), "the minus sign is missing: log-probabilities are <= 0, so exp(mean) < 1; perplexity is "
                         "exp(−mean log p), at least 1"),
        (math.exp(-float(lp.mean())),
         "the padded positions' log-probabilities were included: average only where mask is True (logprobs[mask])"),
        (math.exp(-total / m.numel()),
         "padding counted in the mean: the padded positions were zeroed but still divide the sum; divide by the "
         "number of real tokens, mask.sum()"),
        (float(row_nll.exp().mean()),
         "the mean of per-document perplexities: perplexity pools every token of every document, "
         "exp(−sum of all real log-probabilities / number of real tokens), as minivlm.eval.perplexity does"),
        (math.exp(float(row_nll.mean())),
         "the mean of per-document means: a short document then weighs as much as a long one; average the "
         "log-probabilities over all real tokens of all documents at once"),
        (2 ** nll, base.format(2)),
        (10 ** nll, base.format(10)),
        (nll, "the mean negative log-probability (the cross-entropy) was returned, not its exp: perplexity = "
              "exp(cross-entropy)"),
        (-nll, "the mean log-probability was returned: perplexity is exp(−mean log-probability)"),
        (math.exp(-total), "exp of the TOTAL negative log-probability: divide by the number of real tokens first"),
    ]


def _perplexity_inputs(g: torch.Generator):
    """Log-probabilities of random targets under random distributions (B, T), right-padded; the pads
    hold log-probabilities too (what a model gives there, never zero)."""
    for _ in range(50):
        b, t, v = randint(g, 3, 5), randint(g, 7, 12), randint(g, 8, 20)
        logits = torch.randn(b, t, v, generator=g) * float(torch.empty(()).uniform_(0.5, 2.0, generator=g))
        logprobs = logits.log_softmax(-1).gather(-1, torch.randint(v, (b, t, 1), generator=g)).squeeze(-1)
        mask = _right_padded(g, b, t, shortest=2)
        want = float(perplexity_from_logprobs_reference(logprobs, mask))
        values = [want] + [value for value, _ in _perplexity_mistakes(logprobs, mask)]
        if all(math.isfinite(x) for x in values) and all_distinct(values):
            return logprobs, mask
    raise RuntimeError("could not draw inputs on which the mistakes differ")  # pragma: no cover


def _number(got) -> float:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            hint = " (one per document? pool all the documents' tokens into one number)" if got.ndim == 1 else ""
            raise GradingFailure(f"return one number (a float or a 0-dim tensor), got a tensor of shape "
                                 f"{tuple(got.shape)}{hint}")
        return float(got.detach().cpu())
    if isinstance(got, numbers.Real) and not isinstance(got, bool):
        return float(got)
    raise GradingFailure(f"return one number (a float or a 0-dim tensor), got {type(got).__name__}")


@register("09.perplexity_from_logprobs", title="Perplexity: exp(−mean log-probability) over every real token")
def check_perplexity_from_logprobs(fn) -> None:
    g = fresh_generator()
    logprobs, mask = _perplexity_inputs(g)
    # the library's perplexity over the same documents, each given as its real tokens' log-probabilities
    want = perplexity([lp[m] for lp, m in zip(logprobs, mask)], n_boot=100).value
    lp_in, mask_in = logprobs.clone(), mask.clone()
    got = _number(call(fn, lp_in, mask_in))
    if not (torch.equal(lp_in, logprobs) and torch.equal(mask_in, mask)):
        raise GradingFailure("logprobs or mask was changed in place (padding zeroed in the caller's tensor?): leave "
                             "them as they were; select or weigh in a new tensor")
    if not math.isclose(got, want, rel_tol=1e-4):
        for value, message in _perplexity_mistakes(logprobs, mask):
            overflowed = math.isinf(got) and got > 0 and value > torch.finfo(torch.float32).max  # exp in float32
            if overflowed or math.isclose(got, value, rel_tol=1e-4, abs_tol=1e-9):
                raise GradingFailure(message)
        raise GradingFailure(f"perplexity_from_logprobs returned {got:.5g}, expected {want:.5g} "
                             f"(minivlm.eval.perplexity on the same documents)")
    # a batch in which one document has no real token at all (a row of padding) and one has a single token
    b, t = randint(g, 3, 4), randint(g, 4, 7)
    logprobs = -torch.rand(b, t, generator=g) * 3 - 0.05
    mask = _right_padded(g, b, t, shortest=1)
    empty = randint(g, 2, b - 1)
    mask[empty] = False
    want = float(perplexity_from_logprobs_reference(logprobs, mask))
    got = _number(call(fn, logprobs.clone(), mask.clone()))
    what = f"row {empty} is all padding (a document with no real token), row 1 has one real token"
    if math.isnan(got):
        raise GradingFailure(f"NaN where {what}: a mean per document divides that row by zero; pool every real "
                             f"token of the batch (chapter 09 §7) and that row simply adds nothing")
    if not math.isclose(got, want, rel_tol=1e-4):
        raise GradingFailure(f"perplexity_from_logprobs returned {got:.5g}, expected {want:.5g} where {what}")


# ----------------------------------------------------------------------------- 09.greedy_with_cache

_LIBRARY_DECODERS = ("generate", "complete", "next_logits_fn")


class _Recorder:
    """A GPT seen through what a learner's loop does with it: model(ids, cache=...) calls (how many
    tokens each fed, with a cache or not, how many tokens that cache held) and model.new_cache()."""

    def __init__(self, model: GPT):
        self._model = model
        self.calls: list[tuple[int, bool, int]] = []  # (tokens fed, a cache passed, len(cache) before the call)

    @property
    def config(self) -> GPTConfig:
        return self._model.config

    def new_cache(self):
        return self._model.new_cache()

    def eval(self) -> "_Recorder":
        self._model.eval()
        return self

    def __call__(self, ids=None, attention_mask=None, *, cache=None, **kwargs):
        fed = int(ids.shape[1]) if isinstance(ids, torch.Tensor) and ids.ndim == 2 else -1
        self.calls.append((fed, cache is not None, 0 if cache is None else len(cache)))
        return self._model(ids, attention_mask, cache=cache, **kwargs)

    def __getattr__(self, name):
        if name in _LIBRARY_DECODERS:
            raise GradingFailure(f"model.{name} is the library's decoder: write the loop yourself, calling "
                                 f"model(ids, cache=cache)")
        return getattr(self.__dict__["_model"], name)


def greedy_reference(model, prompt: torch.Tensor, max_new_tokens: int, first_position: bool = False) -> torch.Tensor:
    """Greedy decoding WITHOUT a cache: the whole sequence through the model at every step.
    first_position: the first new token read from position 0's logits (a mistake)."""
    ids = prompt
    with torch.no_grad():
        for i in range(max_new_tokens):
            logits = model(ids)
            row = logits[:, 0] if first_position and i == 0 else logits[:, -1]
            ids = torch.cat([ids, row.argmax(-1, keepdim=True)], dim=1)
    return ids


def _margin(model, ids: torch.Tensor, start: int) -> float:
    """The smallest gap between the top two logits at the positions that chose the new tokens."""
    with torch.no_grad():
        top2 = model(ids[:, :-1])[:, start - 1:].topk(2, dim=-1).values  # (B, new, 2)
    return float((top2[..., 0] - top2[..., 1]).min())


def _context_ignored(model, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """What a decoder gives that feeds only the prompt's LAST token to the cache (the rest of the
    prompt never read): the prompt, then greedy decoding from that one token."""
    return torch.cat([prompt, greedy_reference(model, prompt[:, -1:], max_new_tokens)[:, 1:]], dim=1)


def _decode_setup(g: torch.Generator):
    """A small random GPT in the Llama layout (rotary positions: a token fed at the wrong place in the
    cache gets the wrong angle) whose greedy continuation depends on the WHOLE prompt: every row's
    continuation changes when the prompt's first token changes, and differs from decoding after the
    last prompt token alone and from repeating it. Its weights are scaled up so that the top two
    logits are never near a tie (the cached and uncached paths round differently)."""
    for _ in range(40):
        vocab = randint(g, 20, 40)
        config = GPTConfig.llama(vocab_size=vocab, max_len=64, dim=16, depth=2, heads=2, pad_id=0, bos_id=1,
                                 eos_id=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(randint(g, 0, 2**31 - 2))
            model = GPT(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(40.0)  # std 0.8: attention that reads the context, logits of a few units
        b, t0, new = randint(g, 2, 3), randint(g, 3, 5), randint(g, 5, 7)
        prompt = torch.randint(3, vocab, (b, t0), generator=g)
        want = greedy_reference(model, prompt, new)
        other = prompt.clone()
        other[:, 0] = 3 + (other[:, 0] - 3 + 1 + torch.randint(vocab - 4, (b,), generator=g)) % (vocab - 3)
        changed = greedy_reference(model, other, new)[:, t0:]
        ignored = _context_ignored(model, prompt, new)
        if (_margin(model, want, t0) > 1e-2 and (changed != want[:, t0:]).any(1).all()
                and (ignored != want).any(1).all() and (want[:, t0:] != prompt[:, -1:]).any(1).all()
                and not torch.equal(want, greedy_reference(model, prompt, new, True))):
            return model, prompt, new, want
    raise RuntimeError("could not draw a model whose continuation depends on the whole prompt")  # pragma: no cover


@register("09.greedy_with_cache", title="Greedy decoding that feeds one token at a time through a KV cache")
def check_greedy_with_cache(fn) -> None:
    g = fresh_generator()
    model, prompt, new, want = _decode_setup(g)
    b, t0 = prompt.shape
    recorder = _Recorder(model)
    got = tensor_answer("greedy_with_cache's result", call(fn, recorder, prompt.clone(), new))
    calls = recorder.calls
    if not calls:
        raise GradingFailure("the model was never called: run it as model(ids, cache=cache), which returns the "
                             "logits (B, t, V) of the t tokens fed")
    # how the cache was used: named before the tokens, since these mistakes give other tokens
    cached = [c for c in calls if c[1]]
    if any(held > 0 and fed > 1 for fed, _, held in cached):
        fed, _, held = next(c for c in cached if c[2] > 0 and c[0] > 1)
        raise GradingFailure(f"{fed} tokens were fed to a cache that already held {held}: the cache holds the keys "
                             f"and values of every token it has seen, so feed only the tokens it has not (after the "
                             f"prompt, the one new token); feeding the sequence again counts it twice")
    fresh = [fed for fed, _, held in cached[1:] if held == 0]  # calls after the first, with an empty cache
    if fresh and max(fresh) == 1:
        raise GradingFailure("a fresh cache at every step: the new token then attends to itself alone; create the "
                             "cache once, cache = model.new_cache(), before the loop, and pass the same one to every "
                             "call")
    if fresh:
        raise GradingFailure(f"a fresh cache at every step, fed the whole sequence: that is decoding without a cache "
                             f"({sum(c[0] for c in calls)} token passes for {new} new tokens); create the cache once, "
                             f"before the loop, feed it the prompt, then only the new token at each step")
    if tuple(got.shape) != (b, t0 + new):
        if tuple(got.shape) == (b, new):
            raise GradingFailure(f"return the prompt followed by the new tokens, (B, T + max_new_tokens) = "
                                 f"{(b, t0 + new)}, got only the {new} new ones")
        raise GradingFailure(f"the result must have shape (B, T + max_new_tokens) = {(b, t0 + new)} (the prompt and "
                             f"exactly max_new_tokens new tokens), got {tuple(got.shape)}")
    got = got.detach().cpu()
    if not torch.equal(got[:, :t0], prompt):
        raise GradingFailure("the result must start with the prompt, unchanged")
    if not torch.equal(got, want):
        if torch.equal(got, _context_ignored(model, prompt, new)):
            raise GradingFailure("the continuation is what the prompt's LAST token alone gives: the rest of the prompt "
                                 "never reached the cache; feed the whole prompt first (the cache must hold every "
                                 "token the next one may attend to), then one new token per step")
        if torch.equal(got, greedy_reference(model, prompt, new, first_position=True)):
            raise GradingFailure("the first new token came from the first position's logits: the token after the "
                                 "prompt is predicted by the LAST position, logits[:, -1]")
        r, s = map(int, (got != want).nonzero()[0])
        raise GradingFailure(f"row {r}, new token {s - t0}: expected {int(want[r, s])} (the argmax of the logits "
                             f"after the tokens before it, as decoding without a cache gives), got {int(got[r, s])}")
    if not cached:
        fed = sum(c[0] for c in calls)
        raise GradingFailure(f"no KV cache: every step ran the model on the whole sequence again ({fed} token passes "
                             f"for {new} new tokens); create cache = model.new_cache() once and pass it to every call, "
                             f"feeding the prompt first and then only the new token")
    fed = sum(c[0] for c in calls)
    if fed > t0 + new:
        raise GradingFailure(f"the model ran on {fed} tokens in all; with the cache, a {t0}-token prompt and {new} new "
                             f"tokens need at most {t0 + new} (the prompt once, then one token per step): some call "
                             f"fed the whole sequence without the cache")
    # one prompt (B = 1), and no new token at all (the prompt comes back as it is)
    for rows, n, what in ((prompt[:1], new, "one prompt, B = 1"), (prompt, 0, "max_new_tokens = 0")):
        try:
            got = tensor_answer("greedy_with_cache's result", call(fn, model, rows.clone(), n))
        except GradingFailure as exc:
            raise GradingFailure(f"{exc} (on {what})") from None
        want = greedy_reference(model, rows, n)
        if tuple(got.shape) != tuple(want.shape) or not torch.equal(got.detach().cpu(), want):
            raise GradingFailure(f"on {what}, expected the ids {tuple(want.shape)} = the prompt and {n} greedy tokens, "
                                 f"got {tuple(got.shape)}" + ("" if tuple(got.shape) != tuple(want.shape) else
                                                              " with other tokens"))
        if got.dtype != torch.long:
            raise GradingFailure(f"the ids must stay torch.long (int64), the prompt's dtype, got {got.dtype} (on "
                                 f"{what})")


# ----------------------------------------------------------------------------- 09.rope


def rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x (…, T, d) rotated by RoPE at positions (T,), or x (B, T, d) or (B, H, T, d) at each row's
    own positions (B, T): the library's `RotaryEmbedding` and `apply_rotary` (channel j paired with
    j + d/2, pair i turned by p·base^(-2i/d), every head of a row by that row's angles)."""
    if positions.ndim == 2:
        cos, sin = RotaryEmbedding(x.shape[-1], base)(positions.long())  # (B, T, d) each
        flat = x if x.ndim == 4 else x[:, None]  # (B, H, T, d)
        return apply_rotary(flat, cos, sin).reshape(x.shape)
    cos, sin = RotaryEmbedding(x.shape[-1], base)(positions[None].long())  # (1, T, d) each
    flat = x.reshape(1, -1, *x.shape[-2:])  # (1, N, T, d): every leading axis as heads
    return apply_rotary(flat, cos, sin).reshape(x.shape)


def _turn(x: torch.Tensor, positions: torch.Tensor, base: float, theta: str = "right", pairing: str = "half",
          layout: str = "cat", turn: str = "right") -> torch.Tensor:
    """RoPE and its plausible mistakes, in float64. theta: "right" base^(-2i/d), "no two" base^(-i/d),
    "positive" base^(+2i/d), "per channel" base^(-j/d) for every channel j; pairing: "half" (j, j + d/2)
    or "interleaved" (2i, 2i + 1); layout (with "half"): "cat" (angles [θ; θ]) or "interleaved"
    ([θ0, θ0, θ1, θ1 …], the interleaved layout's angles with the rotate-half pairing); turn: "right"
    (a, b) -> (a cos − b sin, b cos + a sin), "no sign" (a cos + b sin, b cos + a sin), "back" (the
    angle −pθ), "swapped" (cos and sin exchanged)."""
    x = x.double()
    d, h = x.shape[-1], x.shape[-1] // 2
    p = positions.double()[:, None]  # (T, 1)
    i = torch.arange(h, dtype=torch.float64)
    if theta == "per channel":
        angles = p * base ** (-torch.arange(d, dtype=torch.float64) / d)  # (T, d)
    else:
        freq = {"right": base ** (-2 * i / d), "no two": base ** (-i / d), "positive": base ** (2 * i / d)}[theta]
        half = p * freq  # (T, d/2)
        angles = torch.cat([half, half], -1) if layout == "cat" else half.repeat_interleave(2, -1)
    cos, sin = angles.cos(), angles.sin()
    if turn == "swapped":
        cos, sin = sin, cos
    if pairing == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, :h], sin[:, :h]
        return torch.stack([a * c - b * s, b * c + a * s], -1).flatten(-2)
    a, b = x[..., :h], x[..., h:]
    partner = {"right": torch.cat([-b, a], -1), "swapped": torch.cat([-b, a], -1), "no sign": torch.cat([b, a], -1),
               "back": torch.cat([b, -a], -1)}[turn]
    return x * cos + partner * sin


def _rope_mistakes(x, positions, base) -> list[tuple[torch.Tensor, str]]:
    t = x.shape[-2]
    return [
        (_turn(x, positions, base, pairing="interleaved"),
         "the interleaved pairing (channel 2i with 2i + 1, the RoFormer paper's layout): here channel j is paired "
         "with channel j + d/2 (the 'rotate half' layout of Llama and of minivlm/nn/rope.py), so the two halves of "
         "the last axis are the two coordinates of every pair"),
        (_turn(x, positions, base, layout="interleaved"),
         "the angles are laid out interleaved (θ0, θ0, θ1, θ1, …) while the channels are paired by halves: channel "
         "j and channel j + d/2 form one pair and must turn by one angle, so the d/2 angles repeat as two halves, "
         "(θ0 … θ_{d/2-1}, θ0 … θ_{d/2-1})"),
        (_turn(x, positions, base, turn="no sign"),
         "a sign is missing: (a, b) -> (a·cos + b·sin, b·cos + a·sin) is not a rotation (it does not keep the "
         "length); a turn by the angle φ takes the pair (a, b) to (a·cos φ − b·sin φ, b·cos φ + a·sin φ)"),
        (_turn(x, positions, base, turn="back"),
         "the pairs turn the wrong way (by −p·θ): the partner of (a, b) is (−b, a), so that (a, b) -> "
         "(a·cos φ − b·sin φ, b·cos φ + a·sin φ)"),
        (_turn(x, positions, base, turn="swapped"),
         "cos and sin are swapped: at position 0 nothing turns, x·cos(0) + partner·sin(0) = x"),
        (_turn(x, positions, base, theta="no two"),
         "the frequencies are base^(-i/d): pair i (i = 0 … d/2 − 1) turns by θ_i = base^(-2i/d), so the slowest pair "
         "turns by about 1/base per position"),
        (_turn(x, positions, base, theta="positive"),
         "the frequencies grow with i (base^(+2i/d)): θ_i = base^(-2i/d), the first pair turns fastest (1 radian "
         "per position) and the last ones slowest"),
        (_turn(x, positions, base, theta="per channel"),
         "every channel got a frequency of its own (base^(-j/d) for j = 0 … d − 1): a pair is two channels turning "
         "TOGETHER, by one angle, θ_i = base^(-2i/d) for pair i = (i, i + d/2)"),
        (_turn(x, torch.arange(t), base),
         "the positions argument was ignored (0 … T − 1 used instead): token t turns by positions[t]·θ (a prompt "
         "after a cache, or chapter 16's image tokens, start elsewhere than 0)"),
        (_turn(x, positions, 10000.0),
         "the base argument was ignored (10000 used): θ_i = base^(-2i/d) with the base given"),
    ]


def _rope_inputs(g: torch.Generator):
    """x (B, H, T, d), distinct positions that are not 0 … T − 1, a base that is not 10000; redrawn
    until every mistake gives other numbers than the right answer (and than every other mistake)."""
    for _ in range(50):
        b, h, t = randint(g, 2, 3), randint(g, 2, 4), randint(g, 4, 7)
        d = 2 * randint(g, 3, 6)  # 6 … 12: the two pairings differ from d = 4 on
        x = torch.randn(b, h, t, d, generator=g)
        positions = torch.randperm(5 * t, generator=g)[:t].sort().values  # sorted, distinct, gaps between them
        base = float(torch.empty(()).uniform_(50.0, 2000.0, generator=g))
        values = [rope_reference(x, positions, base)] + [v for v, _ in _rope_mistakes(x, positions, base)]
        if not torch.equal(positions, torch.arange(t)) and all(
                not is_close(a, bb, atol=1e-3, rtol=1e-3) for j, a in enumerate(values) for bb in values[j + 1:]):
            return x, positions, base
    raise RuntimeError("could not draw inputs on which the mistakes differ")  # pragma: no cover


def _row_mistakes(x, positions, base) -> list[tuple[torch.Tensor, str]]:
    """The mistakes of the per-row positions (B, T)."""
    t = x.shape[-2]
    return [
        (rope_reference(x, positions[0], base),
         "every row was turned by row 0's positions: with positions (B, T) each row has its own (a left-padded "
         "batch counts each row from its own first real token, chapter 09 §5)"),
        (rope_reference(x, torch.arange(t), base),
         "the positions argument was ignored (0 … T − 1 used instead): row b's token t turns by positions[b, t]"),
    ]


def _check_rope_on(fn, x, positions, base, what: str) -> None:
    x_in, positions_in = x.clone(), positions.clone()
    try:
        got = tensor_answer(f"rope's result ({what})", call(fn, x_in, positions_in, base))
    except GradingFailure as exc:
        if positions.ndim == 2 and "must match the size of tensor" in str(exc):
            raise GradingFailure(f"{exc} (on {what}): positions (B, T) give angles (B, T, d), and x (B, H, T, d) has "
                                 f"a heads axis between the batch and time axes; every head of row b turns by row "
                                 f"b's angles") from None
        raise GradingFailure(f"{exc} (on {what})") from None
    if not (torch.equal(x_in, x) and torch.equal(positions_in, positions)):
        raise GradingFailure(f"rope changed its input in place ({what}): return a new tensor and leave x as it was "
                             f"(the caller may still need x unrotated)")
    if tuple(got.shape) != tuple(x.shape):
        raise GradingFailure(f"rope must return x's shape {tuple(x.shape)} ({what}), got {tuple(got.shape)}")
    if not got.is_floating_point():
        raise GradingFailure(f"rope must return a float tensor, got {got.dtype}")
    got = got.detach().cpu()
    want = rope_reference(x, positions, base)
    if is_close(got, want):
        return
    mistakes = _row_mistakes(x, positions, base) if positions.ndim == 2 else _rope_mistakes(x, positions, base)
    for value, message in mistakes:
        if is_close(got, value):
            raise GradingFailure(f"{message} ({what})")
    d = x.shape[-1]
    wrong = ((got.double() - want.double()).abs() > 1e-4).reshape(-1, *x.shape[-2:]).any(0)  # (T, d): any row
    t_at, j_at = map(int, wrong.nonzero()[0])
    raise GradingFailure(f"rope's result differs from minivlm.nn.rope's ({what}), first at time index {t_at}, "
                         f"channel {j_at} of d = {d}: max |diff| = "
                         f"{float((got.double() - want.double()).abs().max()):.3g}")


@register("09.rope", title="Rotary position embeddings: each channel pair (j, j + d/2) turned by p·θᵢ")
def check_rope(fn) -> None:
    g = fresh_generator()
    x, positions, base = _rope_inputs(g)
    _check_rope_on(fn, x, positions, base, f"x (B, H, T, d) = {tuple(x.shape)}")
    _check_rope_on(fn, x[0, 0], positions, base, f"x (T, d) = {tuple(x[0, 0].shape)}: any leading axes")
    # each row its own positions (B, T): rows that start at different offsets; B != H, so that angles
    # that miss the heads axis cannot broadcast by accident
    b, t, d = x.shape[0], x.shape[2], x.shape[3]
    h = b + randint(g, 1, 2)
    rows = torch.randn(b, h, t, d, generator=g)
    offsets = torch.randperm(20, generator=g)[:b]  # distinct
    per_row = torch.arange(t)[None] + offsets[:, None]  # (B, T)
    _check_rope_on(fn, rows, per_row, base, f"x (B, H, T, d) = {tuple(rows.shape)} with each row's own positions "
                                            f"(B, T), rows starting at {offsets.tolist()}")
    _check_rope_on(fn, rows[:, 0], per_row, base, f"x (B, T, d) = {tuple(rows[:, 0].shape)} with each row's own "
                                                  f"positions (B, T)")


# ----------------------------------------------------------------------------- 09.offset_spread


def _rotation(x, positions, n: int, d: int):
    """Check the arguments a learner's experiment passes to the rotation the check gives it."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] != d or not x.is_floating_point():
        raise ValueError(f"rotate(x, positions) takes x (…, T, d) float with d = {d} (a (T, d) stack of the "
                         f"vector at T positions, e.g. q.expand(T, d)), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(positions, torch.Tensor) or positions.ndim != 1 or positions.is_floating_point() \
            or len(positions) != x.shape[-2]:
        raise ValueError(f"rotate(x, positions) takes positions (T,) integer with T = x.shape[-2] = {x.shape[-2]}, got "
                         f"{tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__}")
    if bool((positions < 0).any()) or bool((positions >= n).any()):
        raise ValueError(f"positions must lie in 0 … n − 1 = {n - 1}, got {positions.tolist()}")


def rope_rotation(base: float, n: int, d: int):
    """rotate(x, positions) -> x rotated by RoPE: the library's (`rope_reference`)."""
    def rotate(x, positions):
        _rotation(x, positions, n, d)
        return rope_reference(x, positions, base)
    return rotate


def absolute_positions(table: torch.Tensor):
    """rotate(x, positions) -> x + table[positions]: GPT-2's way, a position vector added (table (n, d))."""
    def rotate(x, positions):
        _rotation(x, positions, *table.shape)
        return x + table[positions]
    return rotate


def offset_spread_reference(rotate, q: torch.Tensor, k: torch.Tensor, n: int):
    """scores (n, n): scores[p, s] = rotate(q at p) · rotate(k at s), over positions 0 … n − 1;
    same_offset: the largest spread (max − min) of the scores of the pairs with one offset p − s;
    across: the spread (max − min) of all n² scores. Returns (scores, same_offset, across)."""
    positions = torch.arange(n)
    qs = rotate(q.expand(n, -1), positions)  # (n, d): the query at every position
    ks = rotate(k.expand(n, -1), positions)  # (n, d): the key at every position
    scores = qs @ ks.T  # (n, n)
    offset = positions[:, None] - positions[None]  # (n, n): p − s
    same = max(float(scores[offset == o].max() - scores[offset == o].min()) for o in range(1 - n, n))
    return scores, same, float(scores.max() - scores.min())


def _spread_by(scores: torch.Tensor, groups: torch.Tensor, how: str = "range") -> list[float]:
    out = []
    for value in groups.unique():
        s = scores[groups == value]
        if how == "range":
            out.append(float(s.max() - s.min()))
        elif len(s) > 1:
            out.append(float(s.std()))
    return out


def _offset_mistakes(scores: torch.Tensor) -> dict[str, list[tuple[float, str]]]:
    n = len(scores)
    p, s = torch.arange(n)[:, None], torch.arange(n)[None]
    offset = (p - s).expand(n, n)
    per_offset_means = torch.stack([scores[offset == o].mean() for o in range(1 - n, n)])
    return {
        "same": [
            (max(_spread_by(scores, (p + s).expand(n, n))),
             "the pairs were grouped by p + s: an offset is p − s (the query's position minus the key's)"),
            (max(_spread_by(scores, offset.abs())),
             "the pairs were grouped by |p − s|: offsets +o and −o are different offsets (the key o tokens "
             "before the query, or o tokens after it), and their scores differ"),
            (max(_spread_by(scores, offset, "std")),
             "the standard deviation was taken: the spread is max − min of the scores with one offset"),
            (sum(_spread_by(scores, offset)) / (2 * n - 1),
             "the mean of the per-offset spreads: same_offset is the LARGEST spread among the offsets"),
            (float(scores.diagonal().max() - scores.diagonal().min()),
             "only offset 0 (p = s, the diagonal) was measured: same_offset is the largest spread over EVERY offset "
             "p − s, from −(n − 1) to n − 1"),
            (0.0, "same_offset is 0 where the scores at one offset differ: measure it from the scores, do not assume "
                  "it (this rotation is GPT-2's added position vectors, not RoPE)"),
        ],
        "across": [
            (float(scores.std()), "the standard deviation was taken: across is max − min of all n² scores"),
            (float(per_offset_means.max() - per_offset_means.min()),
             "the spread of the per-offset means: across is max − min of ALL n² scores"),
            (float(scores.abs().max()), "the largest |score| was taken: across is max − min of all n² scores"),
        ],
    }


def _spread_case(g: torch.Generator, kind: str):
    """q, k (d,), n and the rotation of one case, redrawn until the mistakes give their own numbers."""
    for _ in range(50):
        n, d = randint(g, 8, 12), 2 * randint(g, 3, 6)
        q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
        if kind == "rope":
            rotate = rope_rotation(float(torch.empty(()).uniform_(10.0, 1000.0, generator=g)), n, d)
        else:
            rotate = absolute_positions(torch.randn(n, d, generator=g))
        scores, same, across = offset_spread_reference(rotate, q, k, n)
        mistakes = _offset_mistakes(scores)
        tol = 1e-4 * (1 + float(scores.abs().max()))
        # each mistake that gives another number than the right one here gives its own (RoPE's same_offset
        # is 0, and so are several mistakes of it, which the added positions tell apart)
        same_values = [same] + [v for v, _ in mistakes["same"] if abs(v - same) > tol] + [across]
        across_values = [across] + [v for v, _ in mistakes["across"] if abs(v - across) > tol]
        if kind == "absolute":
            same_values = [same] + [v for v, _ in mistakes["same"]] + [across]
            across_values = [across] + [v for v, _ in mistakes["across"]]
        if all_distinct(same_values) and all_distinct(across_values):
            return rotate, q, k, n, (scores, same, across), mistakes
    raise RuntimeError("could not draw inputs on which the mistakes differ")  # pragma: no cover


def _score_mistakes(rotate, q, k, n) -> list[tuple[torch.Tensor, str]]:
    positions = torch.arange(n)
    qs, ks = rotate(q.expand(n, -1), positions), rotate(k.expand(n, -1), positions)
    return [
        ((qs @ ks.T).T, "scores is transposed: scores[p, s] is the query at position p with the key at position s"),
        ((qs * ks).sum(-1)[:, None].expand(n, n),
         "the key was rotated to the query's position p, not to its own position s: rotate each vector to its own "
         "position, then take the dot product"),
        ((qs @ k)[:, None].expand(n, n), "the key was not rotated: both the query and the key are rotated"),
        ((q @ ks.T)[None].expand(n, n), "the query was not rotated: both the query and the key are rotated"),
        (qs @ ks.T / math.sqrt(len(q)), "the scores were divided by √d: measure the raw dot product q · k"),
    ]


@register("09.offset_spread", title="The experiment: RoPE's q·k depends only on the offset p − s")
def check_offset_spread(fn) -> None:
    g = fresh_generator()
    for kind, what in (("rope", "the rotation given is RoPE"),
                       ("absolute", "the rotation given adds a position vector, as GPT-2's learned positions do")):
        rotate, q, k, n, (want_scores, want_same, want_across), mistakes = _spread_case(g, kind)
        q_in, k_in = q.clone(), k.clone()
        got = call(fn, rotate, q_in, k_in, n)
        if not (isinstance(got, (tuple, list)) and len(got) == 3):
            extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
            raise GradingFailure(f"offset_spread must return a tuple (scores, same_offset, across), got "
                                 f"{type(got).__name__}{extra}")
        if not (torch.equal(q_in, q) and torch.equal(k_in, k)):
            raise GradingFailure("offset_spread changed q or k in place: leave them as they were")
        scores = tensor_answer("scores", got[0]).detach().cpu()
        if tuple(scores.shape) != (n, n):
            raise GradingFailure(f"scores must be (n, n) = {(n, n)}: scores[p, s] for every query position p and key "
                                 f"position s, got {tuple(scores.shape)}")
        tol = 1e-4 * (1 + float(want_scores.abs().max()))
        if not is_close(scores, want_scores, atol=tol):
            for value, message in _score_mistakes(rotate, q, k, n):
                if is_close(scores, value, atol=tol):
                    raise GradingFailure(f"{message} ({what})")
            p, s = map(int, ((scores.double() - want_scores.double()).abs() > tol).nonzero()[0])
            raise GradingFailure(f"scores[{p}, {s}] = {float(scores[p, s]):.5g}, expected {float(want_scores[p, s]):.5g}: "
                                 f"the query rotated to position {p} · the key rotated to position {s} ({what})")
        for index, name, want in ((1, "same", want_same), (2, "across", want_across)):
            label = "same_offset" if name == "same" else "across"
            if isinstance(got[index], torch.Tensor) and got[index].numel() != 1:
                raise GradingFailure(f"{label} must be one number, got a tensor of shape {tuple(got[index].shape)}")
            value = _number(got[index])
            if abs(value - want) <= tol:
                continue
            for wrong, message in mistakes[name]:
                if abs(value - wrong) <= tol:
                    raise GradingFailure(f"{label}: {message} ({what})")
            definition = ("the largest spread (max − min) of the scores of the pairs with one offset p − s" if name == "same"
                          else "the spread (max − min) of all n² scores")
            raise GradingFailure(f"{label} = {value:.5g}, expected {want:.5g}, {definition} ({what})")
