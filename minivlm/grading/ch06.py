"""Checks for the chapter 06 exercises (exercises/06_blip): the attention masks of BLIP's three
MED modes, greedy decoding that stops at end-of-text, nucleus (top-p) filtering, and BLEU's
clipped n-gram precision.

Each answer is compared with the library (minivlm.models.blip.med_masks, minivlm.generate) or
with the formula on fresh random inputs; when it differs, the check tries the plausible mistakes
and names the one that matches: a causal mask transposed (the future instead of the past),
padding ignored, a causal encoder, cross-attention in the text-only mode; decoding past
end-of-text, dropping the end-of-text token, one token too many or too few, sampling instead of
the argmax, not stopping when every row has ended; dropping the token that crosses p, keeping
one too many, the vocabulary order lost after sorting, the logits cumulated instead of the
probabilities, probabilities returned instead of logits, p = 1 not keeping every token; counts
not clipped, clipped by the sum over references instead of the maximum, unigrams
only, dividing by a reference's length.
"""
from __future__ import annotations

import numbers
from collections import Counter

import torch

from minivlm.eval import caption_tokens
from minivlm.eval import ngram_counts as _all_ngrams
from minivlm.generate import generate, top_p_filter
from minivlm.grading import GradingFailure, call, fresh_generator, randint, register, tensor_answer
from minivlm.models.blip import med_masks

# ----------------------------------------------------------------------------- 06.med_masks


def _padding_mask(g: torch.Generator, b: int, t: int) -> torch.Tensor:
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    lengths[0] = t - 1  # at least one row with padding
    return torch.arange(t)[None, :] < lengths[:, None]  # (B, T)


def _bool_mask(name: str, got, shape: tuple[int, ...]) -> torch.Tensor:
    got = tensor_answer(name, got)
    if got.dtype != torch.bool:
        raise GradingFailure(f"{name} must be a bool tensor (True = may attend), got {got.dtype}")
    if tuple(got.shape) != shape:
        raise GradingFailure(f"{name} must have shape {shape}, got {tuple(got.shape)}")
    return got


@register("06.med_masks", title="The self- and cross-attention masks of MED's three modes")
def check_med_masks(fn) -> None:
    g = fresh_generator()
    b, t, n_image = randint(g, 2, 4), randint(g, 4, 8), randint(g, 3, 9)
    valid = _padding_mask(g, b, t)
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for mode in ("text", "encoder", "decoder"):
        got = call(fn, valid.clone(), mode, n_image)
        if not isinstance(got, tuple) or len(got) != 2:
            raise GradingFailure(f"med_masks must return a pair (self_mask, cross_mask), got {type(got).__name__}")
        want_self, want_cross = med_masks(valid, mode, n_image)
        self_mask = _bool_mask(f"the {mode} mode's self_mask", got[0], (b, t, t))
        if not torch.equal(self_mask, want_self):
            keys = valid[:, None, :]
            if mode == "decoder" and torch.equal(self_mask, causal.t() & keys):
                raise GradingFailure("the decoder's mask is transposed: each token sees the tokens after it, not "
                                     "before (row = query, column = key; keep the lower triangle)")
            if mode == "decoder" and torch.equal(self_mask, keys.expand(b, t, t)):
                raise GradingFailure("the decoder's self-attention must be causal: token i may see keys 0..i only, "
                                     "so that each position can be trained to predict the next word")
            if mode != "decoder" and torch.equal(self_mask, causal & keys):
                raise GradingFailure(f"the {mode} mode is bidirectional (every token sees every real token); only "
                                     f"the decoder is causal")
            unpadded = causal.expand(b, t, t) if mode == "decoder" else torch.ones(b, t, t, dtype=torch.bool)
            if torch.equal(self_mask, unpadded):
                raise GradingFailure(f"padding ignored in the {mode} mode: no token may attend to a padded key "
                                     f"(attention_mask False)")
            raise GradingFailure(f"the {mode} mode's self_mask differs from the expected one for attention_mask "
                                 f"{valid.int().tolist()}")
        if mode == "text":
            if got[1] is not None:
                raise GradingFailure("the text encoder ([CLS], for ITC) does not look at the image: its cross_mask "
                                     "must be None (no cross-attention in this mode)")
            continue
        if got[1] is None:
            raise GradingFailure(f"the {mode} mode cross-attends to the image in every block: return a cross_mask "
                                 f"(B, T, n_image), not None")
        cross = _bool_mask(f"the {mode} mode's cross_mask", got[1], (b, t, n_image))
        if not torch.equal(cross, want_cross):
            raise GradingFailure(f"in the {mode} mode every text token sees every image token: the cross_mask must be "
                                 f"all True")


# ----------------------------------------------------------------------------- 06.greedy_decode


class _Model:
    """A random next-token table over (last token, length) with end-of-text likely after a few
    steps, differently per row; it counts its calls. Its logits cover the pad token `vocab` too
    (generate refuses a pad id outside them), at -50: the model never writes it."""

    def __init__(self, g: torch.Generator, vocab: int, eos: int):
        table = torch.randn(vocab + 1, 12, vocab, generator=g) * 2  # row `vocab`: after the pad token
        for length in range(12):
            table[:, length, eos] += length - randint(g, 2, 4)  # eos grows likelier with length
        self.table = torch.cat([table, torch.full((vocab + 1, 12, 1), -50.0)], dim=-1)  # (vocab + 1, 12, vocab + 1)
        self.calls = 0

    def __call__(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise GradingFailure(f"next_logits takes ids as one (B, T) tensor, got {getattr(ids, 'shape', ids)}")
        return self.table[ids[:, -1], min(ids.shape[1], 11)].clone()


def _decode_inputs(g: torch.Generator):
    vocab = randint(g, 6, 9)
    eos, pad = 0, vocab  # a pad id the model never writes, so padding is told apart from words
    b = randint(g, 3, 5)
    prompt = torch.randint(2, vocab, (b, randint(g, 1, 3)), generator=g)
    return vocab, eos, pad, prompt


@register("06.greedy_decode", title="Greedy decoding that stops at end-of-text")
def check_greedy_decode(fn) -> None:
    for _ in range(30):  # inputs where rows end at different steps and the loop could stop early
        g = fresh_generator()
        vocab, eos, pad, prompt = _decode_inputs(g)
        table = _Model(g, vocab, eos)
        want = generate(table, prompt, 10, eos, pad_id=pad)
        ended = (want[:, prompt.shape[1]:] == eos).any(1)
        if bool(ended.all()) and want.shape[1] < prompt.shape[1] + 10 and bool((want == pad).any()):
            break
    _judge_greedy(fn, table, prompt, 10, eos, pad)  # every row ends, at different steps
    endless = _Model(g, vocab, eos)
    endless.table = table.table.clone()
    endless.table[..., eos] = -50.0  # no row ends: the length is max_new_tokens'
    _judge_greedy(fn, endless, prompt, 3, eos, pad)


def _judge_greedy(fn, table, prompt, max_new, eos, pad) -> None:
    want = generate(table, prompt, max_new, eos, pad_id=pad)
    model = _Model(torch.Generator(), 2, 0)
    model.table = table.table
    got = tensor_answer("greedy_decode's result", call(fn, model, prompt.clone(), max_new, eos, pad))
    calls = model.calls
    p = prompt.shape[1]
    if got.ndim != 2 or got.shape[0] != prompt.shape[0]:
        raise GradingFailure(f"return the ids (B, T + new tokens) = ({prompt.shape[0]}, ...), got {tuple(got.shape)}")
    if not torch.equal(got[:, :p], prompt):
        raise GradingFailure("the result must start with the prompt, unchanged")
    if torch.equal(got, want):
        if calls != want.shape[1] - p:
            raise GradingFailure(f"next_logits was called {calls} times for {want.shape[1] - p} new tokens: call it "
                                 f"once per step, for the whole batch")
        again = call(fn, model, prompt.clone(), max_new, eos, pad)
        if not torch.equal(tensor_answer("greedy_decode's result", again), got):
            raise GradingFailure("two runs gave different tokens (sampling?): greedy decoding is deterministic, it "
                                 "takes the argmax every step")
        return
    gen_got, gen_want = got[:, p:], want[:, p:]
    if got.shape[1] > want.shape[1] and torch.equal(got[:, :want.shape[1]], want) \
            and bool((gen_got[:, gen_want.shape[1]:] == pad).all()) and want.shape[1] < p + max_new:
        raise GradingFailure("did not stop when every row had ended: once all rows emitted end-of-text, stop the "
                             "loop (the extra steps only add padding)")
    if torch.equal(got, generate(table, prompt, max_new + 1, eos, pad_id=pad)):
        raise GradingFailure(f"one token too many: decode at most max_new_tokens = {max_new} new tokens")
    if max_new > 1 and torch.equal(got, generate(table, prompt, max_new - 1, eos, pad_id=pad)):
        raise GradingFailure(f"one token too few: decode up to max_new_tokens = {max_new} new tokens")
    if torch.equal(got, _greedy_without_padding(table, prompt, got.shape[1] - p, eos)):
        raise GradingFailure("decoding past end-of-text: after a row emits eos, its later tokens must be pad_id "
                             "(the row has ended), not more words")
    if got.shape[1] == want.shape[1] and not bool((gen_got == eos).any()) and bool((gen_want == eos).any()):
        raise GradingFailure("the end-of-text token is missing: keep the eos a row emits, then pad")
    step_argmax = _first_non_argmax(table, got, p, eos, pad)
    if step_argmax is not None:
        raise GradingFailure(f"row {step_argmax[0]}, new token {step_argmax[1]}: not the argmax of the logits "
                             f"(sampling? greedy takes the highest logit every step)")
    raise GradingFailure(f"the tokens differ from greedy decoding's: expected {want.tolist()}, got {got.tolist()}")


def _greedy_without_padding(table, prompt, steps, eos) -> torch.Tensor:
    ids = prompt
    for _ in range(steps):
        ids = torch.cat([ids, table(ids, torch.arange(len(ids))).argmax(-1)[:, None]], 1)
    return ids


def _first_non_argmax(table, got, p, eos, pad):
    for r in range(got.shape[0]):
        for t in range(p, got.shape[1]):
            prefix = got[r:r + 1, :t]
            if bool((prefix[0, p:] == eos).any()):
                break
            if int(got[r, t]) != int(table(prefix, torch.tensor([r])).argmax(-1)):
                return r, t - p
    return None


# ----------------------------------------------------------------------------- 06.top_p_filter


def _kept(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x)


@register("06.top_p_filter", title="Nucleus (top-p) filtering")
def check_top_p_filter(fn) -> None:
    g = fresh_generator()
    b, v = randint(g, 2, 4), randint(g, 8, 14)
    # shifted below zero, which softmax does not see: summing these logits instead of the
    # probabilities never reaches p, which tells that mistake apart from the others
    logits = torch.randn(b, v, generator=g) * 2 - 8
    # p = 1 on a peaked row too: its tail probabilities are below float32's rounding of 1.0, so a
    # cumulative sum reaches 1.0 before them and `mass above >= p` drops them unless p = 1 keeps all
    peaked = torch.cat([logits, torch.zeros(1, v)])  # (B + 1, V)
    peaked[-1, randint(g, 0, v - 1)] = 40.0
    cases = [(0.3 + 0.5 * float(torch.rand(1, generator=g)), logits), (0.9, logits), (1.0, peaked)]
    for p, logits in cases:
        b = len(logits)
        want = top_p_filter(logits, p)
        got = tensor_answer(f"top_p_filter(logits, {p:.3f})", call(fn, logits.clone(), p))
        if tuple(got.shape) != (b, v):
            raise GradingFailure(f"return the filtered logits, shape {(b, v)}, got {tuple(got.shape)}")
        kept, dropped = _kept(want), ~_kept(want)
        if bool(dropped.any()) and bool(torch.isfinite(got[dropped]).all()) \
                and bool((got[dropped] != logits[dropped]).all()) and torch.allclose(got[kept], logits[kept]):
            raise GradingFailure(f"dropped tokens must get -inf, so that softmax gives them probability 0; they got "
                                 f"finite values such as {float(got[dropped][0]):.3g}")
        if torch.equal(_kept(got), kept):
            if not torch.allclose(got[kept], logits[kept]):
                raise GradingFailure("the kept tokens' logits must be unchanged (return logits with -inf where "
                                     "dropped, not probabilities)")
            if bool((got[dropped] != float("-inf")).any()):
                raise GradingFailure("dropped tokens must get -inf, so that softmax gives them probability 0")
            continue
        if p == 1.0:
            raise GradingFailure("p = 1 must keep every token, also where the last probabilities are tiny: a "
                                 "cumulative sum in floating point reaches 1.0 before them, so return the logits "
                                 "unchanged when p >= 1")
        if torch.equal(_kept(got), _kept(_top_p_on_logits(logits, p))):
            raise GradingFailure(f"the logits were cumulated, not the probabilities (p = {p:.3f}): p is a "
                                 f"probability mass, so take the softmax before sorting and summing")
        n_want = _kept(want).sum(1)
        n_got = _kept(got).sum(1)
        if bool((n_got == n_want - 1).all()):
            raise GradingFailure(f"the token that crosses p is dropped (p = {p:.3f}): keep the smallest set of most "
                                 f"likely tokens whose probabilities sum to at least p, the crossing token included")
        if bool((n_got == n_want + 1).all()):
            raise GradingFailure(f"one token too many kept (p = {p:.3f}): stop at the token whose cumulative "
                                 f"probability first reaches p")
        in_sorted = torch.arange(v)[None, :] < n_want[:, None]
        if torch.equal(_kept(got), in_sorted):
            raise GradingFailure("the vocabulary order is lost: the keep/drop decision is made in sorted order; "
                                 "scatter it back to each token's own position (order from sort)")
        raise GradingFailure(f"kept {n_got.tolist()} tokens per row, expected {n_want.tolist()} (p = {p:.3f}): "
                             f"keep the most likely tokens until their probabilities sum to at least p")


def _top_p_on_logits(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The nucleus filter with the softmax forgotten: raw logits sorted and cumulated against p."""
    srt, order = logits.sort(-1, descending=True)
    drop = srt.cumsum(-1) - srt >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


# ----------------------------------------------------------------------------- 06.clipped_precision


def _ngrams(words: list[str], n: int) -> Counter:
    """The n-grams of exactly length n (minivlm.eval._ngrams counts lengths 1..n, as BLEU needs)."""
    return Counter({gram: c for gram, c in _all_ngrams(words, n).items() if len(gram) == n})


def _clipped(candidate: str, references: list[str], n: int, clip: str = "max") -> tuple[int, int]:
    cand = _ngrams(caption_tokens(candidate), n)
    refs = [_ngrams(caption_tokens(r), n) for r in references]
    limit = Counter()
    for r in refs:
        for gram, c in r.items():
            limit[gram] = max(limit[gram], c) if clip == "max" else limit[gram] + c
    if clip == "none":
        return sum(c for gram, c in cand.items() if limit[gram] > 0), sum(cand.values())
    return sum(min(c, limit[gram]) for gram, c in cand.items()), sum(cand.values())


WORDS = ["a", "red", "blue", "circle", "star", "and", "square", "the", "big", "."]


def _sentence(g: torch.Generator, lo: int, hi: int) -> str:
    return " ".join(WORDS[int(i)] for i in torch.randint(0, 5, (randint(g, lo, hi),), generator=g) * 2 % 10)


def _as_pair(name: str, got) -> tuple[int, int]:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise GradingFailure(f"{name} must return a pair (clipped matches, candidate n-grams), got {got!r}")
    out = []
    for x in got:
        if isinstance(x, torch.Tensor) and x.numel() == 1:
            x = x.item()
        if not isinstance(x, numbers.Real) or isinstance(x, bool) or float(x) != int(x):
            raise GradingFailure(f"{name} must return two whole counts, got {got!r}")
        out.append(int(x))
    return out[0], out[1]


@register("06.clipped_precision", title="BLEU's clipped n-gram precision")
def check_clipped_precision(fn) -> None:
    g = fresh_generator()
    cases = []
    for _ in range(12):
        # a candidate that repeats words ("a a a red") against references that hold them fewer times
        cand = " ".join(["a"] * randint(g, 2, 4) + _sentence(g, 2, 6).split())
        refs = [_sentence(g, 3, 8) + " a" * randint(g, 0, 2) for _ in range(randint(g, 2, 3))]
        cases.append((cand, refs))
    cases.append(("the the the the the the the.", ["the cat is on the mat.", "there is a cat on the mat."]))
    for n in (1, 2, 3):
        got = [_as_pair(f"clipped_precision({c!r}, {r!r}, n={n})", call(fn, c, list(r), n)) for c, r in cases]
        want = [_clipped(c, r, n) for c, r in cases]
        if got == want:
            continue
        if got == [_clipped(c, r, n, "sum") for c, r in cases]:
            raise GradingFailure(f"clipped by the sum over references: clip each n-gram's count at its maximum "
                                 f"count in any single reference (n={n})")
        if got == [_clipped(c, r, n, "none") for c, r in cases]:
            raise GradingFailure(f"counts are not clipped (n={n}): an n-gram may count at most as often as it "
                                 f"appears in one reference ('the the the the' against 'the cat on the mat' gets 2)")
        if n > 1 and got == [_clipped(c, r, 1) for c, r in cases]:
            raise GradingFailure(f"n = {n} was ignored: count {n}-grams (tuples of {n} consecutive words), not "
                                 f"single words")
        i = next(i for i in range(len(cases)) if got[i] != want[i])
        cand, refs = cases[i]
        if [x[0] for x in got] == [x[0] for x in want]:
            raise GradingFailure(f"the denominator is the number of {n}-grams in the candidate ({want[i][1]} for "
                                 f"{cand!r}), not a reference's length, got {got[i][1]}")
        raise GradingFailure(f"clipped_precision({cand!r}, {refs!r}, n={n}) returned {got[i]}, expected {want[i]}")
