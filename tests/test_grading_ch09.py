"""Chapter 09 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message."""
import math

import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.eval import perplexity
from minivlm.grading.ch09 import (
    attend_chunk_reference,
    greedy_reference,
    perplexity_from_logprobs_reference,
    shifted_lm_loss_reference,
)
from minivlm.losses import lm_loss
from minivlm.models.gpt import GPT, GPTConfig

# ----------------------------------------------------------------------------- 09.shifted_lm_loss


def _ce(logits, targets, keep=None, reduce="tokens"):
    """Cross-entropy of logits (B, T', V) against targets (B, T'), over `keep` (B, T') or everything."""
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    keep = torch.ones_like(losses) if keep is None else keep.float()
    if reduce == "rows":
        return ((losses * keep).sum(1) / keep.sum(1)).mean()
    if reduce == "all positions":
        return (losses * keep).sum() / keep.numel()
    if reduce == "sum":
        return (losses * keep).sum()
    return (losses * keep).sum() / keep.sum()


def _nll_on_logits(logits, ids, mask):
    keep = mask[:, 1:].float()
    return (-logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * keep).sum() / keep.sum()


def _targets_in_place(lo, ids, m):
    ids[:, 1:][~m[:, 1:]] = -100  # the caller's ids now hold -100
    return F.cross_entropy(lo[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), ignore_index=-100)


def _squeezed(lo, ids, m):
    """Right on a batch; on one row, squeeze() drops the batch axis and the mask lines up with the wrong axis."""
    keep = m[:, 1:].squeeze().float()
    losses = F.cross_entropy(lo[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(keep.shape[0], -1)
    return (losses * keep.view(losses.shape)).sum() / keep.sum() if keep.ndim == 2 else losses.mean() * 1.5


WRONG_LOSS = [
    (lambda lo, ids, m: _ce(lo, ids, m), "no shift"),
    (lambda lo, ids, m: F.cross_entropy(lo.flatten(0, 1), ids.flatten()), "no shift"),
    (lambda lo, ids, m: _ce(lo[:, 1:], ids[:, :-1], m[:, 1:]), "shifted the wrong way"),
    (lambda lo, ids, m: _ce(lo[:, 1:], ids[:, :-1], m[:, :-1]), "shifted the wrong way"),
    (lambda lo, ids, m: _ce(lo[:, :-1], ids[:, 1:]), "padding used as targets"),
    (lambda lo, ids, m: _ce(lo[:, :-1], ids[:, 1:], m[:, 1:], "all positions"), "padding counted in the mean"),
    (lambda lo, ids, m: _ce(lo[:, :-1], ids[:, 1:], m[:, :-1]), "mask was not shifted"),
    (lambda lo, ids, m: _ce(lo[:, :-1], ids[:, 1:], m[:, 1:], "rows"), "mean of per-row means"),
    (lambda lo, ids, m: _ce(lo[:, :-1], ids[:, 1:], m[:, 1:], "sum"), "the sum over the real target tokens"),
    (_nll_on_logits, "raw logits were used as log-probabilities"),
    (lambda lo, ids, m: shifted_lm_loss_reference(lo, ids, m).detach(), "carries no gradient"),
    (lambda lo, ids, m: F.cross_entropy(lo[:, :-1].flatten(0, 1), ids[:, 1:].masked_fill(~m[:, 1:], -100).flatten(),
                                        ignore_index=-100, reduction="none"), "one loss per target token"),
    (lambda lo, ids, m: shifted_lm_loss_reference(lo, ids, m).item(), "must be a torch.Tensor"),
    (lambda lo, ids, m: torch.tensor(shifted_lm_loss_reference(lo, ids, m).item(), requires_grad=True),
     "the loss carries no gradient"),
    (lambda lo, ids, m: _ce(lo[:, :-1].detach(), ids[:, 1:], m[:, 1:]), "the loss carries no gradient"),
    (_targets_in_place, "changed in place"),
    (_squeezed, "B = 1"),
]


def test_loss_reference_is_lm_loss():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(4, 7, 11, generator=g), torch.randint(11, (4, 7), generator=g)
    mask = torch.arange(7)[None] < torch.tensor([7, 2, 5, 4])[:, None]
    assert torch.allclose(shifted_lm_loss_reference(logits, ids, mask), lm_loss(logits, ids, mask))


# ----------------------------------------------------------------------------- 09.attend_chunk


def _attend(q, k_all, v_all, scale=None, dim=-1, keep="right"):
    """The chunk's attention with the mistakes as options: the scale, the softmax axis, which keys are kept."""
    c, total = q.shape[2], k_all.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k_all.transpose(-2, -1)) * scale
    masks = {"right": torch.ones(c, total, dtype=torch.bool).tril(diagonal=total - c),
             "none": torch.ones(c, total, dtype=torch.bool),
             "top-left": torch.ones(c, total, dtype=torch.bool).tril(),
             "new only": torch.ones(c, total, dtype=torch.bool).triu(diagonal=total - c)}
    return scores.masked_fill(~masks[keep], float("-inf")).softmax(dim) @ v_all


def _chunk(**kwargs):
    def attend(q, k_new, v_new, k_cache, v_cache):
        k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
        return _attend(q, k_all, v_all, **kwargs), k_all, v_all
    return attend


def _cat_on(axis):
    def attend(q, k_new, v_new, k_cache, v_cache):
        k_all, v_all = torch.cat([k_cache, k_new], dim=axis), torch.cat([v_cache, v_new], dim=axis)
        return _attend(q, k_all, v_all, keep="none"), k_all, v_all
    return attend


def _zeroed_after_softmax(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    c, total = q.shape[2], k_all.shape[2]
    weights = (q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return (weights * torch.ones(c, total).tril(diagonal=total - c)) @ v_all, k_all, v_all


def _cache_left_out(q, k_new, v_new, k_cache, v_cache):
    out = _attend(q, k_new, v_new)  # the chunk attends to itself only
    return out, torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)


def _cache_not_grown(q, k_new, v_new, k_cache, v_cache):
    return attend_chunk_reference(q, k_new, v_new, k_cache, v_cache)[0], k_cache, v_cache


def _prepended(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_new, k_cache], 2), torch.cat([v_new, v_cache], 2)
    return attend_chunk_reference(q, k_new, v_new, k_cache, v_cache)[0], k_all, v_all


def _swapped(q, k_new, v_new, k_cache, v_cache):
    out, k_all, v_all = attend_chunk_reference(q, k_new, v_new, k_cache, v_cache)
    return out, v_all, k_all


def _stacked(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.stack([k_cache, k_new], 2), torch.stack([v_cache, v_new], 2)
    return attend_chunk_reference(q, k_new, v_new, k_cache, v_cache)[0], k_all, v_all


def _grown_in_place(q, k_new, v_new, k_cache, v_cache):
    out = attend_chunk_reference(q, k_new, v_new, k_cache, v_cache)
    with torch.no_grad():
        k_cache.add_(1.0)  # the caller's cache changed
    return out


def _cache_detached(q, k_new, v_new, k_cache, v_cache):
    return attend_chunk_reference(q, k_new, v_new, k_cache.detach(), v_cache.detach())


def _one_token_step(q, k_new, v_new, k_cache, v_cache):
    """Chapter 09 §5's one-token step, used for a chunk: the last query only."""
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    return _attend(q[:, :, -1:], k_all, v_all, keep="none"), k_all, v_all


WRONG_CHUNK = [
    (_chunk(keep="none"), "no mask"),
    (_zeroed_after_softmax, "zeroed after the softmax"),
    (_chunk(keep="top-left"), "aligned to the top-left corner"),
    (_cache_left_out, "cached keys and values were left out"),
    (_chunk(keep="new only"), "only the new tokens' keys are seen"),
    (_chunk(scale=1.0), "not scaled"),
    (lambda *args: _chunk(scale=1.0 / args[0].shape[-1])(*args), "divided by d"),
    (_chunk(dim=1), "softmax over the heads axis"),
    (_chunk(dim=0), "softmax over the batch axis"),
    (_chunk(dim=-2), "softmax over the query axis"),
    (_cat_on(0), "along the batch axis"),
    (_cat_on(1), "along the heads axis"),
    (_cat_on(3), "along the feature axis"),
    (_cat_on(-1), "along the feature axis"),
    (_stacked, "torch.stack"),
    (_cache_not_grown, "must be appended"),
    (_prepended, "prepended"),
    (_swapped, "keys and values are swapped"),
    (_grown_in_place, "changed in place"),
    (_cache_detached, "no gradient reaches k_cache"),
    (_one_token_step, "out must have q's shape"),
    (lambda *args: attend_chunk_reference(*args)[0], "must return a tuple"),
]


def test_chunk_reference_matches_the_library_attention_with_a_layer_cache():
    from minivlm.nn.attention import LayerCache, MultiHeadAttention

    torch.manual_seed(0)
    attn, x = MultiHeadAttention(12, 3).eval(), torch.randn(2, 7, 12)
    full = attn(x, mask=torch.ones(7, 7, dtype=torch.bool).tril())
    cache = LayerCache()
    attn(x[:, :4], mask=torch.ones(4, 4, dtype=torch.bool).tril(), cache=cache)
    split = lambda t: t.view(2, 3, 3, 4).transpose(1, 2)  # noqa: E731  (B, C, D) -> (B, H, C, d)
    q, k, v = (split(p(x[:, 4:])) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    out, k_all, v_all = attend_chunk_reference(q, k, v, cache.k, cache.v)
    assert torch.allclose(attn.out_proj(out.transpose(1, 2).reshape(2, 3, 12)), full[:, 4:], atol=1e-6)


# ----------------------------------------------------------------------------- 09.perplexity_from_logprobs


def _mean_nll(lp, m):
    return -(lp * m).sum() / m.sum()


WRONG_PERPLEXITY = [
    (lambda lp, m: torch.exp((lp * m).sum() / m.sum()), "the minus sign is missing"),
    (lambda lp, m: torch.exp(-lp.mean()), "padded positions' log-probabilities were included"),
    (lambda lp, m: torch.exp(-(lp * m).sum() / m.numel()), "padding counted in the mean"),
    (lambda lp, m: torch.stack([torch.exp(-r[k].mean()) for r, k in zip(lp, m)]).mean(),
     "mean of per-document perplexities"),
    (lambda lp, m: torch.exp(torch.stack([-r[k].mean() for r, k in zip(lp, m)]).mean()),
     "mean of per-document means"),
    (lambda lp, m: 2 ** _mean_nll(lp, m), "torch.exp, not 2 **"),
    (lambda lp, m: 10 ** _mean_nll(lp, m), "torch.exp, not 10 **"),
    (lambda lp, m: _mean_nll(lp, m), "the cross-entropy"),
    (lambda lp, m: -_mean_nll(lp, m), "the mean log-probability was returned"),
    (lambda lp, m: torch.exp(-(lp * m).sum()), "TOTAL negative log-probability"),
    (lambda lp, m: torch.stack([torch.exp(-r[k].mean()) for r, k in zip(lp, m)]), "one per document"),
    (lambda lp, m: "12.5", "got str"),
    (lambda lp, m: torch.exp(-((lp * m).sum(1) / m.sum(1) * m.sum(1)).sum() / m.sum()), "NaN where"),
    (lambda lp, m: torch.exp(-lp.masked_fill_(~m, 0.0).sum() / m.sum()), "changed in place"),
]


def test_perplexity_reference_is_the_library_perplexity():
    g = torch.Generator().manual_seed(0)
    logprobs = torch.randn(4, 9, generator=g).abs().neg()
    mask = torch.arange(9)[None] < torch.tensor([9, 2, 6, 4])[:, None]
    want = perplexity([lp[m] for lp, m in zip(logprobs, mask)], n_boot=100).value
    assert math.isclose(float(perplexity_from_logprobs_reference(logprobs, mask)), want, rel_tol=1e-6)


# ----------------------------------------------------------------------------- 09.greedy_with_cache


def greedy_with_cache(model, prompt, max_new_tokens):
    cache = model.new_cache()
    ids, new = prompt, prompt
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(new, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            ids, new = torch.cat([ids, token], 1), token
    return ids


def _prompt_one_token_at_a_time(model, prompt, max_new_tokens):
    cache = model.new_cache()
    with torch.no_grad():
        for i in range(prompt.shape[1] - 1):
            model(prompt[:, i:i + 1], cache=cache)
        ids, new = prompt, prompt[:, -1:]
        for _ in range(max_new_tokens):
            token = model(new, cache=cache)[:, -1].argmax(-1, keepdim=True)
            ids, new = torch.cat([ids, token], 1), token
    return ids


def _no_cache(model, prompt, max_new_tokens):
    return greedy_reference(model, prompt, max_new_tokens)


def _whole_sequence_to_cache(model, prompt, max_new_tokens):
    cache, ids = model.new_cache(), prompt
    for _ in range(max_new_tokens):
        ids = torch.cat([ids, model(ids, cache=cache)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def _fresh_cache(model, prompt, max_new_tokens, whole=False):
    ids, new = prompt, prompt
    for _ in range(max_new_tokens):
        token = model(ids if whole else new, cache=model.new_cache())[:, -1].argmax(-1, keepdim=True)
        ids, new = torch.cat([ids, token], 1), token
    return ids


def _first_position(model, prompt, max_new_tokens):
    cache, ids, new = model.new_cache(), prompt, prompt
    for i in range(max_new_tokens):
        logits = model(new, cache=cache)
        token = (logits[:, 0] if i == 0 else logits[:, -1]).argmax(-1, keepdim=True)
        ids, new = torch.cat([ids, token], 1), token
    return ids


def _last_prompt_token_only(model, prompt, max_new_tokens):
    """Feeds the cache only the prompt's last token: the rest of the prompt is never read."""
    return torch.cat([prompt[:, :-1], greedy_with_cache(model, prompt[:, -1:], max_new_tokens)], 1)


def _squeezed_token(model, prompt, max_new_tokens):
    """Right on a batch; at B = 1, squeeze() leaves a (1,) token and the ids lose their batch axis."""
    cache, ids, new = model.new_cache(), prompt, prompt
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(new, cache=cache)[:, -1].argmax(-1).squeeze()  # (B,), or () at B = 1
            token = token[:, None] if token.ndim == 1 else token[None, None]
            ids, new = torch.cat([ids, token], 1), token
    return ids.squeeze()


def _cache_and_full_pass(model, prompt, max_new_tokens):
    ids = greedy_with_cache(model, prompt, max_new_tokens)
    model(ids)  # an extra uncached pass over everything
    return ids


WRONG_GREEDY = [
    (_no_cache, "no KV cache"),
    (_whole_sequence_to_cache, "already held"),
    (_fresh_cache, "a fresh cache at every step: the new token then attends to itself alone"),
    (lambda m, p, n: _fresh_cache(m, p, n, whole=True), "fed the whole sequence: that is decoding without a cache"),
    (_first_position, "first position's logits"),
    (lambda m, p, n: greedy_with_cache(m, p, n)[:, p.shape[1]:], "got only the"),
    (lambda m, p, n: greedy_with_cache(m, p, n + 1), "exactly max_new_tokens"),
    (lambda m, p, n: greedy_with_cache(m, p, n - 1), "exactly max_new_tokens"),
    (lambda m, p, n: m.generate(p, n, use_cache=True), "the library's decoder"),
    (lambda m, p, n: torch.cat([p, torch.zeros(len(p), n, dtype=torch.long)], 1), "never called"),
    (_cache_and_full_pass, "without the cache"),
    (_last_prompt_token_only, "LAST token alone"),
    (_squeezed_token, "B = 1"),
    (lambda m, p, n: greedy_with_cache(m, p, max(n, 1)), "max_new_tokens = 0"),
]


def test_greedy_with_cache_matches_the_library_generate():
    torch.manual_seed(0)
    model = GPT(GPTConfig.llama(vocab_size=30, max_len=32, dim=16, depth=2, heads=2, pad_id=0, bos_id=1,
                                eos_id=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(40.0 if p.ndim == 2 else 1.0)
    prompt = torch.randint(3, 30, (3, 4))
    want = greedy_reference(model, prompt, 6)
    unused = min(set(range(30)) - set(want[:, 4:].flatten().tolist()))  # as eos: no row ends early
    assert torch.equal(model.generate(prompt, 6, use_cache=False, eos_id=unused), want)
    assert torch.equal(greedy_with_cache(model, prompt, 6), want)


# ----------------------------------------------------------------------------- 09.rope


def rope(x, positions, base=10000.0, pairing="half", theta="right", layout="cat", turn="right", heads=True):
    """RoPE written out (pairs (j, j + d/2), θ_i = base^(-2i/d)), and the mistakes the options make
    (heads False: per-row angles not broadcast over the heads axis)."""
    d, h = x.shape[-1], x.shape[-1] // 2
    p = positions.double()[..., None]
    i = torch.arange(h, dtype=torch.float64)
    if theta == "per channel":
        angles = p * base ** (-torch.arange(d, dtype=torch.float64) / d)
    else:
        freq = {"right": base ** (-2 * i / d), "no two": base ** (-i / d), "positive": base ** (2 * i / d)}[theta]
        angles = torch.cat([p * freq, p * freq], -1) if layout == "cat" else (p * freq).repeat_interleave(2, -1)
    cos, sin = angles.cos().float(), angles.sin().float()
    if positions.ndim == 2 and x.ndim == 4 and heads:
        cos, sin = cos[:, None], sin[:, None]
    if turn == "swapped":
        cos, sin = sin, cos
    if pairing == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos[:, :h] - b * sin[:, :h], b * cos[:, :h] + a * sin[:, :h]], -1).flatten(-2)
    a, b = x.chunk(2, -1)
    partner = {"right": torch.cat([-b, a], -1), "swapped": torch.cat([-b, a], -1), "no sign": torch.cat([b, a], -1),
               "back": torch.cat([b, -a], -1)}[turn]
    return x * cos + partner * sin


def _in_place(x, positions, base=10000.0):
    out = rope(x, positions, base)
    x.mul_(2)
    return out


def _only_4d(x, positions, base=10000.0):
    b, h, t, d = x.shape  # fails on (T, d)
    return rope(x, positions, base)


def _wrong_on_2d(x, positions, base=10000.0):
    return rope(x, positions, base) * (1.01 if x.ndim == 2 else 1.0)


WRONG_ROPE = [
    (lambda x, pos, base: rope(x, pos, base, pairing="interleaved"), "the interleaved pairing"),
    (lambda x, pos, base: rope(x, pos, base, layout="interleaved"), "the angles are laid out interleaved"),
    (lambda x, pos, base: rope(x, pos, base, turn="no sign"), "a sign is missing"),
    (lambda x, pos, base: rope(x, pos, base, turn="back"), "turn the wrong way"),
    (lambda x, pos, base: rope(x, pos, base, turn="swapped"), "cos and sin are swapped"),
    (lambda x, pos, base: rope(x, pos, base, theta="no two"), "the frequencies are base^(-i/d)"),
    (lambda x, pos, base: rope(x, pos, base, theta="positive"), "the frequencies grow with i"),
    (lambda x, pos, base: rope(x, pos, base, theta="per channel"), "every channel got a frequency of its own"),
    (lambda x, pos, base: rope(x, torch.arange(x.shape[-2]), base), "the positions argument was ignored"),
    (lambda x, pos, base: rope(x, pos), "the base argument was ignored"),
    (lambda x, pos, base: rope(x, pos, base) * 1.01, "differs from minivlm.nn.rope's"),
    (lambda x, pos, base: rope(x, pos, base)[..., : x.shape[-1] // 2], "must return x's shape"),
    (lambda x, pos, base: rope(x, pos, base).numpy(), "must be a torch.Tensor"),
    (_in_place, "changed its input in place"),
    (_only_4d, "(T, d)"),
    (_wrong_on_2d, "(T, d)"),
    (lambda x, pos, base: rope(x, pos[0] if pos.ndim == 2 else pos, base), "row 0's positions"),
    (lambda x, pos, base: rope(x, pos, base, heads=False), "heads axis"),
    (lambda x, pos, base: rope(x, pos.flatten()[: x.shape[-2]], base), "rows starting at"),
]


def test_rope_reference_is_the_library_rotation_and_keeps_norms_and_offsets():
    from minivlm.grading.ch09 import rope_reference

    g = torch.Generator().manual_seed(0)
    x, positions = torch.randn(2, 3, 5, 8, generator=g), torch.tensor([3, 4, 7, 8, 20])
    assert torch.allclose(rope_reference(x, positions, 500.0), rope(x, positions, 500.0), atol=1e-5)
    assert torch.allclose(rope_reference(x, positions).norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    assert torch.equal(rope_reference(x, torch.zeros(5, dtype=torch.long)), x)  # position 0 does not turn
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
    at = lambda v, p: rope_reference(v[None], torch.tensor([p]))[0]  # noqa: E731
    assert torch.allclose(at(q, 9) @ at(k, 4), at(q, 15) @ at(k, 10), atol=1e-4)  # offset 5 both times


# ----------------------------------------------------------------------------- 09.offset_spread


def offset_spread(rotate, q, k, n, group=lambda p, s: p - s, spread="range", scale=1.0, key_at="s"):
    """The experiment, and (options) the mistakes: another grouping, the std, a scaled score, the key at p."""
    positions = torch.arange(n)
    qs, ks = rotate(q.expand(n, -1), positions), rotate(k.expand(n, -1), positions)
    scores = (qs @ ks.T if key_at == "s" else (qs * ks).sum(-1)[:, None].expand(n, n)) * scale
    groups = group(positions[:, None], positions[None]).expand(n, n)
    spreads = []
    for o in groups.unique():
        x = scores[groups == o]
        spreads.append(float(x.max() - x.min()) if spread == "range" else float(x.std()) if len(x) > 1 else 0.0)
    return scores, max(spreads), float(scores.max() - scores.min())


def _same_as(value_of):
    """offset_spread with same_offset replaced by value_of(scores)."""
    def experiment(rotate, q, k, n):
        scores, _, across = offset_spread(rotate, q, k, n)
        return scores, value_of(scores), across
    return experiment


def _across_as(value_of):
    def experiment(rotate, q, k, n):
        scores, same, _ = offset_spread(rotate, q, k, n)
        return scores, same, value_of(scores)
    return experiment


def _per_offset_means(scores):
    n = len(scores)
    offset = torch.arange(n)[:, None] - torch.arange(n)[None]
    means = torch.stack([scores[offset == o].mean() for o in range(1 - n, n)])
    return float(means.max() - means.min())


def _mean_spread(scores):
    n = len(scores)
    offset = torch.arange(n)[:, None] - torch.arange(n)[None]
    return sum(float(scores[offset == o].max() - scores[offset == o].min()) for o in range(1 - n, n)) / (2 * n - 1)


def _key_unrotated(rotate, q, k, n):
    qs = rotate(q.expand(n, -1), torch.arange(n))
    scores = (qs @ k)[:, None].expand(n, n)
    return scores, 0.0, float(scores.max() - scores.min())


WRONG_SPREAD = [
    (lambda r, q, k, n: (lambda s, a, b: (s.T, a, b))(*offset_spread(r, q, k, n)), "scores is transposed"),
    (lambda r, q, k, n: offset_spread(r, q, k, n, key_at="p"), "rotated to the query's position p"),
    (_key_unrotated, "the key was not rotated"),
    (lambda r, q, k, n: offset_spread(r, q, k, n, scale=q.shape[0] ** -0.5), "divided by √d"),
    (lambda r, q, k, n: offset_spread(r, q, k, n, group=lambda p, s: p + s), "grouped by p + s"),
    (lambda r, q, k, n: offset_spread(r, q, k, n, group=lambda p, s: (p - s).abs()), "grouped by |p − s|"),
    (lambda r, q, k, n: offset_spread(r, q, k, n, spread="std"), "the standard deviation was taken"),
    (_same_as(_mean_spread), "the mean of the per-offset spreads"),
    (_same_as(lambda s: float(s.diagonal().max() - s.diagonal().min())), "only offset 0"),
    (_same_as(lambda s: 0.0), "do not assume it"),
    (_across_as(lambda s: float(s.std())), "across: the standard deviation was taken"),
    (_across_as(_per_offset_means), "the spread of the per-offset means"),
    (_across_as(lambda s: float(s.abs().max())), "the largest |score|"),
    (_same_as(lambda s: float(s.max() - s.min())), "same_offset = "),
    (lambda r, q, k, n: offset_spread(r, q, k, n)[1:], "must return a tuple (scores, same_offset, across)"),
    (lambda r, q, k, n: (offset_spread(r, q, k, n)[0].diagonal(),) + offset_spread(r, q, k, n)[1:],
     "scores must be (n, n)"),
    (lambda r, q, k, n: (lambda s, a, b: (s, torch.full((2,), a), b))(*offset_spread(r, q, k, n)), "one number"),
    (lambda r, q, k, n: r(q, torch.tensor(0)), "rotate(x, positions) takes x"),  # one vector, one position
    (lambda r, q, k, n: offset_spread(lambda x, p: r(x, p.float()), q, k, n), "positions (T,) integer"),
]


def test_offset_spread_is_zero_for_rope_and_not_for_added_positions():
    from minivlm.grading.ch09 import absolute_positions, offset_spread_reference, rope_rotation

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
    scores, same, across = offset_spread_reference(rope_rotation(100.0, 12, 8), q, k, 12)
    assert same < 1e-4 * across and across > 1
    assert torch.allclose(scores[3:, 3:], scores[:-3, :-3], atol=1e-4)  # a shift along the diagonal changes nothing
    _, same, across = offset_spread_reference(absolute_positions(torch.randn(12, 8, generator=g)), q, k, 12)
    assert same > 0.1 * across


GOOD = {"09.shifted_lm_loss": shifted_lm_loss_reference, "09.attend_chunk": attend_chunk_reference,
        "09.perplexity_from_logprobs": perplexity_from_logprobs_reference, "09.greedy_with_cache": greedy_with_cache,
        "09.rope": rope, "09.offset_spread": offset_spread}
WRONG = {"09.shifted_lm_loss": WRONG_LOSS, "09.attend_chunk": WRONG_CHUNK,
         "09.perplexity_from_logprobs": WRONG_PERPLEXITY, "09.greedy_with_cache": WRONG_GREEDY,
         "09.rope": WRONG_ROPE, "09.offset_spread": WRONG_SPREAD}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_feeding_the_prompt_one_token_at_a_time_passes():
    from minivlm.grading import run

    result = run("09.greedy_with_cache", _prompt_one_token_at_a_time)
    assert result.passed, result.message


def test_rope_in_float64_and_offset_spread_with_loops_pass():
    from minivlm.grading import run

    def rope64(x, positions, base=10000.0):
        return rope(x.double(), positions, base).double()

    def by_pairs(rotate, q, k, n):  # one pair at a time, tensors for the spreads
        at = lambda v, p: rotate(v[None], torch.tensor([p]))[0]  # noqa: E731
        scores = torch.stack([torch.stack([at(q, p) @ at(k, s) for s in range(n)]) for p in range(n)])
        by_offset: dict = {}
        for p in range(n):
            for s in range(n):
                by_offset.setdefault(p - s, []).append(scores[p, s])
        same = max(torch.stack(v).max() - torch.stack(v).min() for v in by_offset.values())
        return scores, same, scores.max() - scores.min()

    for task, fn in (("09.rope", rope64), ("09.offset_spread", by_pairs)):
        result = run(task, fn)
        assert result.passed, result.message
