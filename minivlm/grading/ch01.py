"""Checks for the chapter 01 exercises (exercises/01_transformer_blocks).

Each check runs the learner's function on fresh random inputs, compares it with the library's
reference (minivlm.nn), and when it differs, tries to say *which* plausible mistake was made.
"""
from __future__ import annotations

import torch

from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_dtype,
    expect_shape,
    fresh_generator,
    is_close,
    register,
)
from minivlm.nn import masks, patchify, scaled_dot_product_attention


def _attention_result(result, name="attention"):
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)):
        raise GradingFailure(
            f"{name} must return a tuple (output, weights) of two tensors, got {type(result).__name__}"
            + (f" of length {len(result)}" if isinstance(result, tuple) else "")
        )
    return result


@register("01.attention", title="Scaled dot-product attention")
def check_attention(fn) -> None:
    g = fresh_generator()
    for batch_shape, tq, tk, d in [((2,), 5, 5, 8), ((2, 3), 4, 7, 16)]:
        q = torch.randn(*batch_shape, tq, d, generator=g)
        k = torch.randn(*batch_shape, tk, d, generator=g)
        v = torch.randn(*batch_shape, tk, d, generator=g)
        out, weights = _attention_result(call(fn, q, k, v, None))
        want_out, want_w = scaled_dot_product_attention(q, k, v)
        expect_shape("weights", weights, want_w.shape)
        expect_shape("output", out, want_out.shape)
        if not torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-4):
            if torch.allclose(weights.sum(-2), torch.ones(()), atol=1e-4):
                raise GradingFailure("the weights sum to 1 over the queries: take the softmax over the keys (dim=-1)")
            raise GradingFailure("each row of weights must sum to 1 (a softmax over the keys)")
        if not is_close(weights, want_w):
            unscaled = (q @ k.transpose(-2, -1)).softmax(-1)
            by_d = (q @ k.transpose(-2, -1) / d).softmax(-1)
            if is_close(weights, unscaled):
                raise GradingFailure("the scores are not scaled: divide q·kᵀ by √d (d = the key dimension)")
            if is_close(weights, by_d):
                raise GradingFailure("the scores are divided by d: divide by √d instead")
            expect_close("weights", weights, want_w, atol=1e-4, rtol=1e-4)
        expect_close("output", out, want_out, atol=1e-4, rtol=1e-4)

    # with a mask: True means "may attend"
    q, k, v = (torch.randn(2, 6, 8, generator=g) for _ in range(3))
    mask = masks.causal(6)
    out, weights = _attention_result(call(fn, q, k, v, mask))
    want_out, want_w = scaled_dot_product_attention(q, k, v, mask)
    expect_shape("weights", weights, want_w.shape)
    if torch.isnan(weights).any():
        raise GradingFailure("the weights contain NaN: fill the masked scores with -inf *before* the softmax")
    if (weights[..., ~mask].abs() > 1e-6).any():
        if (weights[..., mask & ~torch.eye(6, dtype=torch.bool)].abs() < 1e-6).all():
            raise GradingFailure("the mask is inverted: True means 'may attend', so fill the scores where mask is False")
        raise GradingFailure("weights are non-zero where the mask is False: the mask is not applied")
    expect_close("masked weights", weights, want_w, atol=1e-4, rtol=1e-4)
    expect_close("masked output", out, want_out, atol=1e-4, rtol=1e-4)


@register("01.causal_mask", title="A causal mask")
def check_causal_mask(fn) -> None:
    for t in (4, int(torch.randint(5, 12, (1,)).item()), 1):  # small last: at T=1 mistakes look alike
        got = call(fn, t)
        if not isinstance(got, torch.Tensor):
            raise GradingFailure(f"causal_mask must return a torch.Tensor, got {type(got).__name__}")
        expect_shape(f"causal_mask({t})", got, (t, t))
        expect_dtype(f"causal_mask({t})", got, torch.bool)
        want = masks.causal(t)
        if torch.equal(got, want):
            continue
        if torch.equal(got, want.T):
            raise GradingFailure("the mask is transposed: row i is the query, so query i may see keys j <= i (lower triangle)")
        if torch.equal(got, want.tril(-1)):
            raise GradingFailure("the diagonal is False: a token must be allowed to attend to itself")
        if torch.equal(got, ~want):
            raise GradingFailure("the mask is inverted: True must mean 'may attend'")
        wrong = (got != want).nonzero()[0].tolist()
        raise GradingFailure(f"causal_mask({t}) differs from the reference at [query {wrong[0]}, key {wrong[1]}]")


@register("01.prefix_mask", title="A prefix-LM mask")
def check_prefix_mask(fn) -> None:
    t = int(torch.randint(6, 10, (1,)).item())
    for n in (0, 2, t - 1, t):
        got = call(fn, t, n)
        if not isinstance(got, torch.Tensor):
            raise GradingFailure(f"prefix_mask must return a torch.Tensor, got {type(got).__name__}")
        expect_shape(f"prefix_mask({t}, {n})", got, (t, t))
        expect_dtype(f"prefix_mask({t}, {n})", got, torch.bool)
        want = masks.prefix(t, n)
        if torch.equal(got, want):
            continue
        if n > 0 and torch.equal(got, masks.causal(t)):
            raise GradingFailure(f"prefix_mask({t}, {n}) is just causal: the first {n} tokens must also see each other")
        sees_future = masks.causal(t).clone()
        sees_future[:n] = True
        if n < t and torch.equal(got, sees_future):
            raise GradingFailure(
                f"in prefix_mask({t}, {n}) the prefix tokens see the tokens after the prefix: open the prefix's "
                "columns (every token sees the whole prefix), not its rows"
            )
        wrong = (got != want).nonzero()[0].tolist()
        raise GradingFailure(f"prefix_mask({t}, {n}) differs from the reference at [query {wrong[0]}, key {wrong[1]}]")


@register("01.patchify", title="Patchify an image batch")
def check_patchify(fn) -> None:
    g = fresh_generator()
    for b, c, size, p in [(2, 3, 8, 4), (3, 1, 12, 3), (1, 3, 16, 8)]:
        images = torch.rand(b, c, size, size, generator=g)
        got = call(fn, images, p)
        if not isinstance(got, torch.Tensor):
            raise GradingFailure(f"patchify must return a torch.Tensor, got {type(got).__name__}")
        n = (size // p) ** 2
        expect_shape(f"patchify(images {tuple(images.shape)}, {p})", got, (b, n, p * p * c))
        want = patchify(images, p)
        if is_close(got, want):
            continue
        channel_first = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, h, w, p, p)
        channel_first = channel_first.permute(0, 2, 3, 1, 4, 5).reshape(b, n, c * p * p)
        if is_close(got, channel_first):
            raise GradingFailure("each patch is flattened as (c, p1, p2): the course flattens it as (p1, p2, c)")
        col_major = want.reshape(b, size // p, size // p, -1).transpose(1, 2).reshape(b, n, -1)
        if is_close(got, col_major):
            raise GradingFailure("the patches are in column-major order: go along a row first (left to right, then down)")
        expect_close("patches", got, want)
