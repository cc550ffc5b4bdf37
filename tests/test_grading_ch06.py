"""Chapter 06 checks: the library's masks, decoding and filtering (what the solutions mirror) pass,
the stub says "not implemented yet", and each plausible wrong version fails with its own message:
wrong values, inputs changed in place, padding on the wrong side, a decoder asked about finished
rows or given renumbered rows, mixed case and punctuation, and for the experiment greedy or
unfiltered captions, thresholds and flags that are not the filter's, typed-in rates."""
import math
from collections import Counter

import torch
from grading_suite import grading_tests

from minivlm.eval import caption_tokens, true_caption_rate
from minivlm.generate import top_p_filter
from minivlm.models.blip import med_masks


def running_greedy(next_logits, prompt, max_new_tokens, eos_id, pad_id, renumber=False, all_rows=False,
                   in_place=False):
    """Greedy decoding that asks the decoder about the unfinished rows only (the knobs: mistakes)."""
    ids, done = (prompt if in_place else prompt.clone()), torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(max_new_tokens):
        running = torch.arange(len(prompt)) if all_rows else (~done).nonzero().flatten()
        token = torch.full((len(prompt),), pad_id, dtype=torch.long)
        token[running] = next_logits(ids[running], torch.arange(len(running)) if renumber else running).argmax(-1)
        token = token.masked_fill(done, pad_id)
        if in_place:
            prompt[:, -1] = token
        ids = torch.cat([ids, token[:, None]], 1)
        done |= token == eos_id
        if bool(done.all()):
            break
    return ids


def counts(text, n):
    words = caption_tokens(text)
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def reference_clipped(candidate, references, n):
    cand = counts(candidate, n)
    best = Counter()
    for r in references:
        best |= counts(r, n)  # Counter union: the maximum count in any one reference
    return sum(min(c, best[g]) for g, c in cand.items()), sum(cand.values())


GOOD = {"06.med_masks": med_masks, "06.greedy_decode": running_greedy, "06.top_p_filter": top_p_filter,
        "06.clipped_precision": reference_clipped}


# ----------------------------------------------------------------------------- wrong versions: med_masks


def _masks(valid, mode, n_image, causal_in=("decoder",), transpose=False, padding=True, cross_in=("encoder",
                                                                                                   "decoder"),
           rows=False):
    b, t = valid.shape
    self_mask = valid[:, None, :].expand(b, t, t) if padding else torch.ones(b, t, t, dtype=torch.bool)
    if rows:  # the padding on the queries
        self_mask = valid[:, :, None].expand(b, t, t)
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
    (lambda v, m, n: _masks(v, m, n, rows=True), "padding is on the queries"),
    (lambda v, m, n: (_masks(v, m, n)[0] & v[:, :, None], _masks(v, m, n)[1]), "blocks the rows as well"),
    (lambda v, m, n: (v.fill_(True), _masks(v, m, n))[1], "attention_mask was modified in place"),
    (lambda v, m, n: _masks(v.cumprod(1).bool(), m, n), "at one end of each row"),  # assumes right padding
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


def _last_token_only(next_logits, prompt, max_new, eos, pad):
    """A decoder that reads only the last token of each prefix."""
    ids, done = prompt.clone(), torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(max_new):
        running = (~done).nonzero().flatten()
        token = torch.full((len(prompt),), pad, dtype=torch.long)
        token[running] = next_logits(ids[running][:, -1:], running).argmax(-1)
        ids = torch.cat([ids, token[:, None]], 1)
        done |= token == eos
        if bool(done.all()):
            break
    return ids


WRONG_GREEDY = [
    (lambda f, p, m, e, pad: running_greedy(f, p, m, e, pad, renumber=True), "renumbered 0..R-1"),
    (lambda f, p, m, e, pad: running_greedy(f, p, m, e, pad, all_rows=True), "had already ended"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad), "had already ended"),  # the chapter's loop: every row
    (lambda f, p, m, e, pad: running_greedy(f, p, m, e, pad, in_place=True), "prompt was modified in place"),
    (_last_token_only, "not the argmax of the logits for that row's prefix"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, pad_after=False), "decoding past end-of-text"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, keep_eos=False), "end-of-text token is missing"),
    (lambda f, p, m, e, pad: running_greedy(f, p, m + 1, e, pad), "one token too many"),
    (lambda f, p, m, e, pad: running_greedy(f, p, m - 1, e, pad), "one token too few"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, stop=False), "did not stop"),
    (lambda f, p, m, e, pad: _greedy(f, p, m, e, pad, sample=True), "argmax"),
    (lambda f, p, m, e, pad: running_greedy(f, p, m, e, pad).int(), "torch.long"),
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
    (lambda x, p: x.masked_fill_(~torch.isfinite(top_p_filter(x, p)), float("-inf")), "modified in place"),
    (lambda x, p: top_p_filter(x, p).float(), "keep the dtype"),
]


# ----------------------------------------------------------------------------- wrong versions: clipped_precision


def _clipped(candidate, references, n, clip="max", unigram=False, by_ref_length=False, split=None):
    n = 1 if unigram else n
    count = counts if split is None else (lambda text, n: Counter(tuple(split(text)[i:i + n])
                                                                  for i in range(len(split(text)) - n + 1)))
    cand = count(candidate, n)
    limit = Counter()
    for r in references:
        for g, c in count(r, n).items():
            limit[g] = limit[g] + c if clip == "sum" else max(limit[g], c)
    matched = sum(c if clip == "none" else min(c, limit[g]) for g, c in cand.items() if limit[g] > 0)
    total = len(caption_tokens(references[0])) if by_ref_length else sum(cand.values())
    return matched, total


WRONG_CLIPPED = [
    (lambda c, r, n: _clipped(c, r, n, clip="none"), "not clipped"),
    (lambda c, r, n: _clipped(c, r, n, clip="sum"), "sum over references"),
    (lambda c, r, n: _clipped(c, r, n, unigram=True), "was ignored"),
    (lambda c, r, n: _clipped(c, r, n, by_ref_length=True), "not a reference's length"),
    (lambda c, r, n: _clipped(c, r, n, split=str.split), "split on spaces"),
    (lambda c, r, n: _clipped(c, r, n, split=lambda t: t.lower().split()), "on spaces after lower()"),
    (lambda c, r, n: _clipped(c, r, n, split=lambda t: t.lower().replace(".", "").split()), "expected"),
    (lambda c, r, n: (r.append("x"), reference_clipped(c, r, n))[1], "references was modified in place"),
]

# ----------------------------------------------------------------------------- the experiment


def filter_experiment(captioner, filt, web, generator, threshold=0.5, *, sample=True, top_p=0.9, fixed=None,
                      invert_kept=False, invert_bad=False, swap=False, percent=False, typed=False, touch_web=False,
                      train=False):
    """The measurement (the solution's), with one knob turned for each mistake."""
    if train:
        filt.train()
    images = web["images"]
    synthetic = captioner.caption(images, do_sample=sample, top_p=top_p, generator=generator)
    judged = {"web": list(web["captions"]), "synthetic": [c if c else "." for c in synthetic]}
    bad = {"web": ~web["clean"].bool(), "synthetic": ~torch.tensor(true_caption_rate(synthetic, web["scenes"]))}
    if invert_bad:
        bad = {k: ~v for k, v in bad.items()}
    out = {"synthetic": synthetic, "kept": {}, "bad": bad, "precision": {}, "recall": {}}
    for kind, captions in judged.items():
        prob = filt.match_probability(images, captions)
        kept = prob > (threshold if fixed is None else fixed)
        kept = ~kept if invert_kept else kept
        removed = ~kept
        out["kept"][kind] = kept
        precision = bad[kind][removed].float().mean().item() if removed.any() else float("nan")
        recall = removed[bad[kind]].float().mean().item() if bad[kind].any() else float("nan")
        if swap:
            precision, recall = recall, precision
        scale = 100 if percent else 1
        out["precision"][kind], out["recall"][kind] = scale * precision, scale * recall
        if typed:
            out["precision"][kind], out["recall"][kind] = 0.9, 0.5
    if touch_web:
        web["captions"][0] = "a red circle."
    return out


WRONG_EXPERIMENT = [
    (lambda *a: filter_experiment(*a, sample=False), "differ anywhere from the captioner's greedy"),
    (lambda *a: filter_experiment(*a, top_p=1.0), "outside the p = 0.9 nucleus"),
    (lambda *a: filter_experiment(*a, fixed=0.5), "uses a threshold of 0.5"),
    (lambda *a: filter_experiment(*a, invert_kept=True), "a caption is KEPT"),
    (lambda *a: filter_experiment(*a, invert_bad=True), "is inverted: True marks a BAD caption"),
    (lambda *a: filter_experiment(*a, swap=True), "swapped"),
    (lambda *a: filter_experiment(*a, percent=True), "percentage"),
    (lambda *a: filter_experiment(*a, typed=True), "but your flags give"),
    (lambda *a: filter_experiment(*a, touch_web=True), "web was modified"),
    (lambda *a: filter_experiment(*a, train=True), "the model was changed"),
    (lambda c, f, web, g, t: filter_experiment(c, f, web, g, t)["recall"], "must return a dict with keys"),
]

GOOD["06.filter_experiment"] = filter_experiment
WRONG = {"06.med_masks": WRONG_MASKS, "06.greedy_decode": WRONG_GREEDY, "06.top_p_filter": WRONG_TOP_P,
         "06.clipped_precision": WRONG_CLIPPED, "06.filter_experiment": WRONG_EXPERIMENT}

test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG, draws={"06.filter_experiment": 2})


def test_chapter_06_has_at_least_three_tasks_and_an_experiment():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("06"))
    assert len(grading.tasks_for_chapter("06")) >= 4


def test_the_zoo_filter_catches_web_noise_not_synthetic_mistakes():
    """The library fact the experiment shows: recall near 1 on web noise, low on untrue synthetic captions."""
    from minivlm import zoo
    from minivlm.data.pairs import image_text_pairs

    blip = zoo.load("blip").eval()
    out = filter_experiment(blip, blip, image_text_pairs(96, noise=0.4, seed=3), torch.Generator().manual_seed(0))
    assert out["recall"]["web"] > 0.9 and out["recall"]["synthetic"] < 0.5
    assert not math.isnan(out["precision"]["synthetic"])
