"""Chapter 01 checks: the reference passes, a stub fails with "not implemented yet", and each
plausible mistake fails with its own message."""
import pytest
import torch
from einops import rearrange

from minivlm import grading
from minivlm.nn import masks, patchify, scaled_dot_product_attention


def stub(*args, **kwargs):
    raise NotImplementedError("write this part")


def attention_unscaled(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = s.softmax(-1)
    return w @ v, w


def attention_by_d(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / q.shape[-1]
    w = s.softmax(-1)
    return w @ v, w


def attention_wrong_axis(q, k, v, mask=None):
    w = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-2)
    return w @ v, w


def attention_ignores_mask(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v)


def attention_inverted_mask(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, None if mask is None else ~mask | torch.eye(q.shape[-2], dtype=bool))


def attention_output_only(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, mask)[0]


@pytest.mark.parametrize(
    "task, right, wrongs",
    [
        ("01.attention", lambda q, k, v, mask=None: scaled_dot_product_attention(q, k, v, mask), [
            (attention_unscaled, "not scaled"),
            (attention_by_d, "divided by d"),
            (attention_wrong_axis, "over the queries"),
            (attention_ignores_mask, "mask is not applied"),
            (attention_inverted_mask, "inverted"),
            (attention_output_only, "tuple"),
        ]),
        ("01.causal_mask", masks.causal, [
            (lambda t: masks.causal(t).T, "transposed"),
            (lambda t: masks.causal(t).tril(-1), "diagonal"),
            (lambda t: ~masks.causal(t), "inverted"),
            (lambda t: torch.ones(t, t).tril(), "dtype"),
        ]),
        ("01.prefix_mask", masks.prefix, [
            (lambda t, n: masks.causal(t), "just causal"),
            (lambda t, n: masks.causal(t) | (torch.arange(t)[:, None] < n), "open the prefix's columns"),
        ]),
        ("01.patchify", patchify, [
            (lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p), "(c, p1, p2)"),
            (lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p), "column-major"),
            (lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) p1 p2 c", p1=p, p2=p), "shape"),
        ]),
    ],
)
def test_checks_accept_right_reject_stub_and_mistakes(task, right, wrongs):
    result = grading.run(task, right)
    assert result.passed, result.message
    result = grading.run(task, stub)
    assert not result.passed and "not implemented yet" in result.message
    for wrong, expected in wrongs:
        result = grading.run(task, wrong)
        assert not result.passed, f"{task} accepted a wrong implementation ({expected})"
        assert expected in result.message, f"{task}: expected {expected!r} in {result.message!r}"
