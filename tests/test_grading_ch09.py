"""Chapter 09 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message."""
import math

import torch
import torch.nn.functional as F
from grading_suite import grading_tests

from minivlm.eval import perplexity
from minivlm.grading.ch09 import (
    attend_with_cache_reference,
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
]


def test_loss_reference_is_lm_loss():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(4, 7, 11, generator=g), torch.randint(11, (4, 7), generator=g)
    mask = torch.arange(7)[None] < torch.tensor([7, 2, 5, 4])[:, None]
    assert torch.allclose(shifted_lm_loss_reference(logits, ids, mask), lm_loss(logits, ids, mask))


# ----------------------------------------------------------------------------- 09.attend_with_cache


def _step(q, k_all, v_all, scale=None, dim=-1):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = ((q @ k_all.transpose(-2, -1)) * scale).softmax(dim) @ v_all
    return out, k_all, v_all


def _cat_on(axis):
    def attend(q, k_new, v_new, k_cache, v_cache):
        return _step(q, torch.cat([k_cache, k_new], dim=axis), torch.cat([v_cache, v_new], dim=axis))
    return attend


def _left_out(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    return _step(q, k_cache, v_cache)[0], k_all, v_all


def _cache_not_grown(q, k_new, v_new, k_cache, v_cache):
    out = attend_with_cache_reference(q, k_new, v_new, k_cache, v_cache)[0]
    return out, k_cache, v_cache


def _prepended(q, k_new, v_new, k_cache, v_cache):
    return _step(q, torch.cat([k_new, k_cache], 2), torch.cat([v_new, v_cache], 2))


def _swapped(q, k_new, v_new, k_cache, v_cache):
    out, k_all, v_all = attend_with_cache_reference(q, k_new, v_new, k_cache, v_cache)
    return out, v_all, k_all


def _variant(**kwargs):
    def attend(q, k_new, v_new, k_cache, v_cache):
        return _step(q, torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2), **kwargs)
    return attend


def _one_query_causal_mask(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    scores = q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, 1, T + 1)
    keep = torch.ones(1, k_all.shape[2], dtype=torch.bool).tril()  # keeps key 0 only
    return scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v_all, k_all, v_all


def _stacked(q, k_new, v_new, k_cache, v_cache):
    return _step(q, torch.stack([k_cache, k_new], 2), torch.stack([v_cache, v_new], 2))


def _empty_cache_unsupported(q, k_new, v_new, k_cache, v_cache):
    out, k_all, v_all = attend_with_cache_reference(q, k_new, v_new, k_cache, v_cache)
    return (out, k_all, v_all) if k_cache.shape[2] else (out, k_cache, v_cache)


WRONG_ATTEND = [
    (_cat_on(0), "along the batch axis"),
    (_cat_on(1), "along the heads axis"),
    (_cat_on(3), "along the feature axis"),
    (_cat_on(-1), "along the feature axis"),
    (_stacked, "torch.stack"),
    (_left_out, "own key and value are left out"),
    (_cache_not_grown, "must be appended"),
    (_prepended, "prepended"),
    (_swapped, "keys and values are swapped"),
    (_variant(scale=1.0), "not scaled"),
    (_variant(scale=None, dim=-2), "softmax over the query axis"),
    (_variant(dim=1), "softmax over the heads axis"),
    (_variant(dim=0), "softmax over the batch axis"),
    (_one_query_causal_mask, "a causal mask built for one query"),
    (lambda *args: _variant(scale=1.0 / args[0].shape[-1])(*args), "divided by d"),
    (lambda *args: attend_with_cache_reference(*args)[0], "must return a tuple"),
    (lambda *args: (attend_with_cache_reference(*args)[0][:, :, 0],) + attend_with_cache_reference(*args)[1:],
     "keep the query axis"),
    (_empty_cache_unsupported, "step 0 of decoding from an empty cache"),
]


def test_attend_reference_matches_the_library_attention_with_a_layer_cache():
    from minivlm.nn.attention import LayerCache, MultiHeadAttention

    torch.manual_seed(0)
    attn, x = MultiHeadAttention(12, 3).eval(), torch.randn(2, 5, 12)
    full = attn(x, mask=torch.ones(5, 5, dtype=torch.bool).tril())
    cache = LayerCache()
    attn(x[:, :4], mask=torch.ones(4, 4, dtype=torch.bool).tril(), cache=cache)
    split = lambda t: t.view(2, 1, 3, 4).transpose(1, 2)  # noqa: E731  (B, 1, D) -> (B, H, 1, d)
    q, k, v = (split(p(x[:, 4:])) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    out, k_all, v_all = attend_with_cache_reference(q, k, v, cache.k, cache.v)
    assert torch.allclose(attn.out_proj(out.transpose(1, 2).reshape(2, 1, 12)), full[:, 4:], atol=1e-6)


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
]


def test_greedy_with_cache_matches_the_library_generate():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, max_len=32, dim=16, depth=2, heads=2, pad_id=0, bos_id=1, eos_id=2)).eval()
    with torch.no_grad():
        model.token_embedding.weight.mul_(50.0)
    prompt = torch.randint(3, 30, (3, 4))
    want = greedy_reference(model, prompt, 6)
    unused = min(set(range(30)) - set(want[:, 4:].flatten().tolist()))  # as eos: no row ends early
    assert torch.equal(model.generate(prompt, 6, use_cache=False, eos_id=unused), want)
    assert torch.equal(greedy_with_cache(model, prompt, 6), want)


GOOD = {"09.shifted_lm_loss": shifted_lm_loss_reference, "09.attend_with_cache": attend_with_cache_reference,
        "09.perplexity_from_logprobs": perplexity_from_logprobs_reference, "09.greedy_with_cache": greedy_with_cache}
WRONG = {"09.shifted_lm_loss": WRONG_LOSS, "09.attend_with_cache": WRONG_ATTEND,
         "09.perplexity_from_logprobs": WRONG_PERPLEXITY, "09.greedy_with_cache": WRONG_GREEDY}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_feeding_the_prompt_one_token_at_a_time_passes():
    from minivlm.grading import run

    result = run("09.greedy_with_cache", _prompt_one_token_at_a_time)
    assert result.passed, result.message
