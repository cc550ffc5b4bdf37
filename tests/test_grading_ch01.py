"""Chapter 01 checks: the reference passes, a stub fails with "not implemented yet", and each
plausible mistake fails with its own message: wrong values, no gradient, inputs changed in place,
an argument ignored, a fixed seed, typed-in results."""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from grading_suite import grading_tests

from minivlm import grading
from minivlm.grading.ch01 import (
    copy_accuracies,
    reference_batch_mask,
    reference_multi_head_attention,
    reference_vit_tokens,
)
from minivlm.nn import MultiHeadAttention, Transformer, masks, patchify

# ----------------------------------------------------------------------------- 01.multi_head_attention


def _mha(x, wq, wk, wv, wo, heads, mask=None, scale=None, split="right", merge="right", project=True,
         axis=-1, head_mask="right"):
    b, t, dim = x.shape
    d = dim // heads
    if split == "right":
        q, k, v = ((x @ w).view(b, t, heads, d).transpose(1, 2) for w in (wq, wk, wv))
    else:
        q, k, v = ((x @ w).reshape(b, heads, t, d) for w in (wq, wk, wv))
    s = q @ k.transpose(-2, -1) / (math.sqrt(d) if scale is None else scale(dim, d))
    if mask is not None:
        if mask.ndim == 3 and head_mask == "right":
            mask = mask[:, None]
        s = s.masked_fill(~mask, float("-inf"))
    out = s.softmax(axis) @ v
    out = out.transpose(1, 2).reshape(b, t, dim) if merge == "right" else out.reshape(b, t, dim)
    return out @ wo if project else out


def _mha_detached(x, wq, wk, wv, wo, heads, mask=None):
    return _mha(x.detach(), wq, wk, wv, wo, heads, mask)


def _mha_data(x, wq, wk, wv, wo, heads, mask=None):
    return _mha(x, wq, wk, wv, wo.data, heads, mask)


def _mha_item(x, wq, wk, wv, wo, heads, mask=None):
    return torch.tensor(_mha(x, wq, wk, wv, wo, heads, mask).tolist())


def _mha_in_place(x, wq, wk, wv, wo, heads, mask=None):
    out = _mha(x, wq, wk, wv, wo, heads, mask)
    with torch.no_grad():
        x.mul_(2)
    return out


def _mha_single_token_breaks(x, wq, wk, wv, wo, heads, mask=None):
    if x.shape[1] == 1:
        return x.new_zeros(x.shape)
    return _mha(x, wq, wk, wv, wo, heads, mask)


def _mha_with(**knobs):
    return lambda x, wq, wk, wv, wo, heads, mask=None: _mha(x, wq, wk, wv, wo, heads, mask, **knobs)


WRONG_MHA = [
    (_mha_with(scale=lambda dim, d: math.sqrt(dim)), "√D, the whole width"),
    (_mha_with(scale=lambda dim, d: 1.0), "not scaled"),
    (_mha_with(split="wrong"), "cut across the tokens"),
    (_mha_with(merge="wrong"), "without moving the time axis back"),
    (_mha_with(project=False), "output projection w_o is missing"),
    (_mha_with(axis=-2), "over the queries"),
    (lambda x, wq, wk, wv, wo, heads, mask=None: _mha(x, wq, wk, wv, wo, 1, mask), "heads argument is ignored"),
    (lambda x, wq, wk, wv, wo, heads, mask=None: _mha(x, wq, wk, wv, wo, heads), "mask is not applied"),
    (_mha_with(head_mask="wrong"), "lined up with the head axis"),
    (_mha_detached, "no gradient reaches x"),
    (_mha_data, "no gradient reaches w_o"),
    (_mha_item, "carries no gradient"),
    (_mha_in_place, "x was changed in place"),
    (_mha_single_token_breaks, "(B, T, D) = (1, 1, 4)"),
]


# ----------------------------------------------------------------------------- 01.batch_mask


def _bm(valid, prefix_len, rows=False, keys=True, prefix=True, per_row=True, off=0):
    b, t = valid.shape
    n = prefix_len if per_row else prefix_len[:1].expand(b)
    if not prefix:
        n = torch.zeros_like(prefix_len)
    idx = torch.arange(t)
    open_ = (idx[None, None, :] < (n + off)[:, None, None]) | (idx[None, :] <= idx[:, None])[None]
    if keys:
        open_ = open_ & valid[:, None, :]
    if rows:
        open_ = open_ & valid[:, :, None]
    return open_


def _bm_prefix_rows(valid, prefix_len):
    t = valid.shape[1]
    idx = torch.arange(t)
    rows = (idx[None, :, None] < prefix_len[:, None, None]) | (idx[None, :] <= idx[:, None])[None]
    return rows & valid[:, None, :]


def _bm_in_place(valid, prefix_len):
    out = reference_batch_mask(valid, prefix_len)
    prefix_len.zero_()
    return out


WRONG_MASK = [
    (lambda v, n: _bm(v, n, rows=True, keys=False), "applied to the queries"),
    (lambda v, n: _bm(v, n, rows=True), "rows as well as the columns"),
    (lambda v, n: _bm(v, n, keys=False), "padding is ignored"),
    (lambda v, n: _bm(v, n, prefix=False), "the prefix is ignored"),
    (_bm_prefix_rows, "opens its rows"),
    (lambda v, n: _bm(v, n, per_row=False), "first sequence's prefix length"),
    (lambda v, n: _bm(v, n, off=1), "off by one"),
    (lambda v, n: reference_batch_mask(v, n).transpose(1, 2), "transposed"),
    (lambda v, n: ~reference_batch_mask(v, n), "inverted"),
    (lambda v, n: reference_batch_mask(v, n).float(), "wrong dtype"),
    (lambda v, n: masks.prefix(v.shape[1], int(n[0])), "one (T, T) per sequence"),
    (_bm_in_place, "prefix_len was changed in place"),
]


# ----------------------------------------------------------------------------- 01.vit_tokens


def _vt(images, p, w, cls, pos, pattern="b c (h p1) (w p2) -> b (h w) (p1 p2 c)", order="cls first", positions="all"):
    patches = rearrange(images, pattern, p1=p, p2=p) @ w
    c = cls.expand(len(images), 1, -1)
    if positions == "none":
        return torch.cat([c, patches], 1)
    if positions == "patches only":
        return torch.cat([c, patches + pos[1:]], 1)
    x = torch.cat([c, patches] if order == "cls first" else [patches, c], 1)
    return x + pos


def _vt_detached_cls(images, p, w, cls, pos):
    return reference_vit_tokens(images, p, w, cls.detach(), pos)


def _vt_new_tensor(images, p, w, cls, pos):
    return torch.tensor(reference_vit_tokens(images, p, w, cls, pos).detach().numpy())


WRONG_VIT = [
    (lambda *a: _vt(*a, order="cls last"), "appended at the end"),
    (lambda *a: _vt(*a, positions="none"), "position embeddings are missing"),
    (lambda *a: _vt(*a, positions="patches only"), "CLS token got no position"),
    (lambda *a: _vt(*a, pattern="b c (h p1) (w p2) -> b (h w) (c p1 p2)"), "(c, p1, p2)"),
    (lambda *a: _vt(*a, pattern="b c (h p1) (w p2) -> b (w h) (p1 p2 c)"), "column by column"),
    (_vt_detached_cls, "no gradient reaches cls_token"),
    (_vt_new_tensor, "carries no gradient"),
    (lambda images, p, w, cls, pos: _vt(images, p, w, cls, pos)[:, 1:], "(B, 1 + N, D)"),
]


# ----------------------------------------------------------------------------- 01.mask_experiment


def _experiment(mask, train, test, steps, seed, *, use_mask=True, seed_model=True, fixed_seed=None, data=None,
                loss_on="all", report=None, percent=False, steps_cap=None):
    """The reference recipe, with one knob turned."""
    if seed_model:
        torch.manual_seed(seed if fixed_seed is None else fixed_seed)
    train = train if data is None else data(train)
    vocab, t, dim = int(test.max()) + 1, train.shape[1] - 1, 32
    embed, pos = torch.nn.Embedding(vocab, dim), torch.nn.Parameter(torch.randn(t, dim) * 0.1)
    body, head = Transformer(dim, depth=1, heads=1), torch.nn.Linear(dim, vocab)

    def model(ids):
        n = ids.shape[1]
        m = mask[:n, :n] if use_mask else masks.causal(n)
        return head(body(embed(ids) + pos[:n], mask=m))

    opt = torch.optim.Adam([*embed.parameters(), pos, *body.parameters(), *head.parameters()], lr=3e-3)
    rows = torch.Generator().manual_seed(seed)
    k = t // 2
    for _ in range(steps if steps_cap is None else min(steps, steps_cap)):
        batch = train[torch.randint(len(train), (64,), generator=rows)]
        logits = model(batch[:, :-1])
        if loss_on == "second half":
            logits, batch = logits[:, k:], batch[:, k:]
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    results = copy_accuracies(model, test)
    if report == "teacher as generated":
        results["copy_generated"] = results["copy_teacher_forced"]
    elif report == "typed":
        results = {"random": 0.125, "copy_teacher_forced": 1.0, "copy_generated": 1.0}
    if percent:
        results = {key: 100 * value for key, value in results.items()}
    return model, results


def _plain_copy(train):
    k = (train.shape[1] - 1) // 2
    out = train.clone()
    out[:, k + 1:] = out[:, :k]
    return out


WRONG_EXPERIMENT = [
    (lambda *a: _experiment(*a, seed_model=False), "two runs with the same seed"),
    (lambda *a: _experiment(*a, fixed_seed=0), "the seed argument is ignored"),
    (lambda *a: _experiment(*a, use_mask=False), "ignores the mask argument"),
    (lambda *a: _experiment(*a, report="typed"), "but the model you returned scores"),
    (lambda *a: _experiment(*a, report="teacher as generated"), "results['copy_generated']"),
    (lambda *a: _experiment(*a, percent=True), "is a percentage"),
    (lambda *a: _experiment(*a, data=_plain_copy), "has not learned the rule"),
    (lambda *a: _experiment(*a, steps_cap=10), "has not learned the rule"),
    (lambda *a: _experiment(*a, loss_on="second half"), "predicts"),
    (lambda *a: (lambda ids: torch.zeros(*ids.shape, 9), {}), "results lacks"),
]


GOOD = {
    "01.multi_head_attention": reference_multi_head_attention,
    "01.batch_mask": reference_batch_mask,
    "01.vit_tokens": reference_vit_tokens,
    "01.mask_experiment": _experiment,
}
WRONG = {"01.multi_head_attention": WRONG_MHA, "01.batch_mask": WRONG_MASK, "01.vit_tokens": WRONG_VIT,
         "01.mask_experiment": WRONG_EXPERIMENT}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG, draws={"01.mask_experiment": 2})


def test_chapter_01_tasks():
    assert grading.tasks_for_chapter("01") == list(GOOD)


def test_references_agree_with_the_library():
    torch.manual_seed(0)
    mha = MultiHeadAttention(dim=24, heads=3, bias=False)
    x = torch.randn(2, 5, 24)
    ws = [layer.weight.T for layer in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj)]
    with torch.no_grad():
        torch.testing.assert_close(reference_multi_head_attention(x, *ws, 3, masks.causal(5)),
                                   mha(x, mask=masks.causal(5)))
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    got = reference_batch_mask(valid, torch.tensor([2, 0]))
    assert torch.equal(got[1], masks.causal(4))
    assert torch.equal(got[0], masks.prefix(4, 2) & valid[0])
    images = torch.rand(2, 3, 8, 12)
    w, cls, pos = torch.randn(48, 5), torch.randn(5), torch.randn(7, 5)
    tokens = reference_vit_tokens(images, 4, w, cls, pos)
    torch.testing.assert_close(tokens[:, 1:], patchify(images, 4) @ w + pos[1:])


def test_the_experiment_shows_the_leak():
    """The reference run: causal at chance on the random half and generating the copy; bidirectional
    reading the random half, and worse at generating than teacher-forced."""
    from minivlm.grading.ch01 import shifted_copies

    g = torch.Generator().manual_seed(0)
    train, test = shifted_copies(2048, 4, 8, 3, g), shifted_copies(256, 4, 8, 3, g)
    causal = _experiment(masks.causal(8), train, test, 200, 0)[1]
    bidirectional = _experiment(masks.bidirectional(8), train, test, 200, 0)[1]
    assert causal["random"] < 0.25 and causal["copy_generated"] > 0.95
    assert bidirectional["random"] > 0.95 and bidirectional["copy_teacher_forced"] > 0.95
    assert bidirectional["copy_generated"] < bidirectional["copy_teacher_forced"] - 0.2
