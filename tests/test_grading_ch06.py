"""Chapter 06 checks: the library's masks, decoding and filtering (what the solutions mirror) pass,
the stub says "not implemented yet", and each plausible wrong version fails with its own message."""
from collections import Counter

import torch
from grading_suite import grading_tests

from minivlm.eval import caption_tokens
from minivlm.generate import generate, top_p_filter
from minivlm.models.blip import med_masks


def library_greedy(next_logits, prompt, max_new_tokens, eos_id, pad_id):
    return generate(next_logits, prompt, max_new_tokens, eos_id, pad_id=pad_id)


def counts(text, n):
    words = caption_tokens(text)
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def reference_clipped(candidate, references, n):
    cand = counts(candidate, n)
    best = Counter()
    for r in references:
        best |= counts(r, n)  # Counter union: the maximum count in any one reference
    return sum(min(c, best[g]) for g, c in cand.items()), sum(cand.values())


GOOD = {"06.med_masks": med_masks, "06.greedy_decode": library_greedy, "06.top_p_filter": top_p_filter,
        "06.clipped_precision": reference_clipped}


# ----------------------------------------------------------------------------- wrong versions: med_masks


def _masks(valid, mode, n_image, causal_in=("decoder",), transpose=False, padding=True, cross_in=("encoder",
                                                                                                   "decoder")):
    b, t = valid.shape
    self_mask = valid[:, None, :].expand(b, t, t) if padding else torch.ones(b, t, t, dtype=torch.bool)
    if mode in causal_in:
        tri = torch.tril(torch.ones(t, t, dtype=torch.bool))
        self_mask = self_mask & (tri.t() if transpose else tri)
    cross = torch.ones(b, t, n_image, dtype=torch.bool) if mode in cross_in else None
    return self_mask, cross


WRONG_MASKS = [
    (lambda v, m, n: _masks(v, m, n, transpose=True), "transposed"),
    (lambda v, m, n: _masks(v, m, n, padding=False), "padding ignored"),
    (lambda v, m, n: _masks(v, m, n, causal_in=("encoder", "decoder")), "only the decoder is causal"),
    (lambda v, m, n: _masks(v, m, n, causal_in=()), "must be causal"),
    (lambda v, m, n: _masks(v, m, n, cross_in=("text", "encoder", "decoder")), "must be None"),
    (lambda v, m, n: _masks(v, m, n, cross_in=("encoder",)), "not None"),
    (lambda v, m, n: (_masks(v, m, n)[0], None if m == "text" else torch.ones(v.shape[0], v.shape[1], n + 1).bool()),
     "cross_mask must have shape"),
    (lambda v, m, n: (_masks(v, m, n)[0].float(), _masks(v, m, n)[1]), "must be a bool tensor"),
]


# ----------------------------------------------------------------------------- wrong versions: greedy_decode


def _greedy(next_logits, prompt, max_new, eos, pad, pad_after=True, keep_eos=True, stop=True, sample=False):
    ids, done = prompt, torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(max_new):
        logits = next_logits(ids, torch.arange(len(ids)))
        tok = torch.multinomial(logits.softmax(-1), 1)[:, 0] if sample else logits.argmax(-1)
        ended_now = tok == eos
        if pad_after:
            tok = tok.masked_fill(done, pad)
        if not keep_eos:
            tok = tok.masked_fill(ended_now & ~done, pad)
        ids = torch.cat([ids, tok[:, None]], 1)
        done |= ended_now
        if stop and bool(done.all()):
            break
    return ids


WRONG_GREEDY = [
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, pad_after=False), "decoding past end-of-text"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, keep_eos=False), "end-of-text token is missing"),
    (lambda f, p, m, e, pad: _greedy(f, p, m + 1, e, pad), "one token too many"),
    (lambda f, p, m, e, pad: _greedy(f, p, m - 1, e, pad), "one token too few"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, stop=False), "did not stop"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, sample=True), "argmax"),
]


# ----------------------------------------------------------------------------- wrong versions: top_p_filter


def _top_p(logits, p, keep_crossing=True, extra=0, restore=True, on_logits=False, as_probs=False):
    values = logits if on_logits else logits.softmax(-1)  # on_logits: the softmax forgotten
    srt, order = values.sort(-1, descending=True)
    before = srt.cumsum(-1) - srt  # the mass ranked above each token
    drop = before >= p if keep_crossing else srt.cumsum(-1) > p
    if extra:  # keep `extra` tokens more than the nucleus (fewer when negative)
        n_keep = (~drop).sum(-1, keepdim=True) + extra
        drop = torch.arange(logits.shape[-1])[None, :] >= n_keep
    mask = drop.scatter(-1, order, drop) if restore else drop
    out = logits.softmax(-1) if as_probs else logits
    return out.masked_fill(mask, float("-inf"))


WRONG_TOP_P = [
    (lambda x, p: _top_p(x, p, keep_crossing=False), "crosses p is dropped"),
    (lambda x, p: _top_p(x, p, extra=1), "one token too many"),
    (lambda x, p: _top_p(x, p, restore=False), "vocabulary order is lost"),
    (lambda x, p: _top_p(x, p, on_logits=True), "logits were cumulated"),
    (lambda x, p: _top_p(x, p, as_probs=True), "not probabilities"),
    (lambda x, p: _top_p(x, p).masked_fill(_top_p(x, p).isinf(), 0.0), "must get -inf"),
    (lambda x, p: _top_p(x, p) if p < 1 else _top_p(x, p, extra=-1), "p = 1 must keep every token"),
    (lambda x, p: _top_p(x, p), "return the logits unchanged when p >= 1"),  # the sums reach 1.0 by rounding
]


# ----------------------------------------------------------------------------- wrong versions: clipped_precision


def _clipped(candidate, references, n, clip="max", unigram=False, by_ref_length=False):
    n = 1 if unigram else n
    cand = counts(candidate, n)
    limit = Counter()
    for r in references:
        for g, c in counts(r, n).items():
            limit[g] = limit[g] + c if clip == "sum" else max(limit[g], c)
    matched = sum(c if clip == "none" else min(c, limit[g]) for g, c in cand.items() if limit[g] > 0)
    total = len(caption_tokens(references[0])) if by_ref_length else sum(cand.values())
    return matched, total


WRONG_CLIPPED = [
    (lambda c, r, n: _clipped(c, r, n, clip="none"), "not clipped"),
    (lambda c, r, n: _clipped(c, r, n, clip="sum"), "sum over references"),
    (lambda c, r, n: _clipped(c, r, n, unigram=True), "was ignored"),
    (lambda c, r, n: _clipped(c, r, n, by_ref_length=True), "not a reference's length"),
]

WRONG = {"06.med_masks": WRONG_MASKS, "06.greedy_decode": WRONG_GREEDY, "06.top_p_filter": WRONG_TOP_P,
         "06.clipped_precision": WRONG_CLIPPED}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)
