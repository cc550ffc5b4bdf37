"""Checks for the chapter 06 exercises (exercises/06_blip): the attention masks of BLIP's three
MED modes for any layout of padding, greedy decoding that runs only the captions still being
written, nucleus (top-p) filtering, BLEU's clipped n-gram precision on punctuated, mixed-case
text, and an experiment: CapFilt's filter judged on noisy web captions and on the captioner's own
synthetic captions.

Each answer is compared with the library (minivlm.models.blip.med_masks, minivlm.generate) or
with the formula on fresh random inputs of several sizes (a batch of one, one token, padding at
either end); inputs are checked for changes afterwards. When an answer differs, the check tries
the plausible mistakes and names the one that matches: a causal mask transposed, padding ignored
or put on the queries, a causal encoder, cross-attention in the text-only mode; decoding past
end-of-text, dropping the end-of-text token, one token too many or too few, sampling instead of
the argmax, not stopping when every row has ended, asking the decoder about finished rows, the
running rows renumbered 0..R-1 (so each prefix reads another row's image: the check's decoder
depends on the row and on the whole prefix); dropping the token that crosses p, keeping one too
many, the vocabulary order lost after sorting, the logits cumulated instead of the probabilities,
probabilities returned instead of logits, p = 1 not keeping every token, the logits changed in
place; counts not clipped, clipped by the sum over references, unigrams only, dividing by a
reference's length, words split on spaces (case and punctuation kept).

The experiment `filter_experiment(captioner, filt, web, generator, threshold)` is run by the
check on a fresh web set with the zoo's BLIP, at a threshold the check picks; every figure is
recomputed from what the function returned: its synthetic captions are read back through the
captioner (every word inside the p = 0.9 nucleus, most captions not the greedy ones) and judged
again by the filter; the bad flags come from the web set's clean flags and from
`true_caption_rate`; precision and recall from the returned flags. The zoo filter catches nearly
all web noise and few of the untrue synthetic captions.
"""
from __future__ import annotations

import math
import numbers
from collections import Counter

import torch

from minivlm.data.pairs import image_text_pairs
from minivlm.eval import caption_tokens, true_caption_rate
from minivlm.eval import ngram_counts as _all_ngrams
from minivlm.generate import generate, top_p_filter
from minivlm.grading import GradingFailure, call, fresh_generator, randint, register, tensor_answer
from minivlm.models.blip import med_masks
from minivlm.zoo import store

# ----------------------------------------------------------------------------- 06.med_masks


def _padding_mask(g: torch.Generator, b: int, t: int) -> torch.Tensor:
    """(B, T) True on real tokens: right padding on some rows, left padding on others (a batch
    left-padded for decoding), one full row when B > 1; every row keeps at least one real token."""
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = max(1, t - 1)  # at least one row with padding when T > 1
    right = torch.arange(t)[None, :] < lengths[:, None]
    left = torch.arange(t)[None, :] >= (t - lengths)[:, None]
    on_left = torch.rand(b, generator=g) < 0.5
    on_left[0] = b > 1  # both layouts in every batch of two or more
    if b > 1:
        on_left[-1] = False
    return torch.where(on_left[:, None], left, right)


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
    sizes = [(randint(g, 2, 4), randint(g, 4, 8), randint(g, 3, 9)), (1, randint(g, 3, 6), 1), (2, 1, 2)]
    for b, t, n_image in sizes:
        _judge_med_masks(fn, _padding_mask(g, b, t), n_image)


def _judge_med_masks(fn, valid: torch.Tensor, n_image: int) -> None:
    b, t = valid.shape
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    where = f"attention_mask {valid.int().tolist()}"
    for mode in ("text", "encoder", "decoder"):
        given = valid.clone()
        got = call(fn, given, mode, n_image)
        if not torch.equal(given, valid):
            raise GradingFailure("attention_mask was modified in place: build the masks as new tensors; the caller "
                                 "still needs it")
        if not isinstance(got, tuple) or len(got) != 2:
            raise GradingFailure(f"med_masks must return a pair (self_mask, cross_mask), got {type(got).__name__}")
        want_self, want_cross = med_masks(valid, mode, n_image)
        self_mask = _bool_mask(f"the {mode} mode's self_mask", got[0], (b, t, t))
        if not torch.equal(self_mask, want_self):
            keys = valid[:, None, :]
            rule = causal if mode == "decoder" else torch.ones(t, t, dtype=torch.bool)
            if mode == "decoder" and torch.equal(self_mask, causal.t() & keys):
                raise GradingFailure("the decoder's mask is transposed: each token sees the tokens after it, not "
                                     "before (row = query, column = key; keep the lower triangle)")
            if mode == "decoder" and torch.equal(self_mask, keys.expand(b, t, t)):
                raise GradingFailure("the decoder's self-attention must be causal: token i may see keys 0..i only, "
                                     "so that each position can be trained to predict the next word")
            if mode != "decoder" and torch.equal(self_mask, causal & keys):
                raise GradingFailure(f"the {mode} mode is bidirectional (every token sees every real token); only "
                                     f"the decoder is causal")
            if torch.equal(self_mask, rule.expand(b, t, t)):
                raise GradingFailure(f"padding ignored in the {mode} mode: no token may attend to a padded key "
                                     f"(attention_mask False) ({where})")
            if torch.equal(self_mask, rule & valid[:, :, None]):
                raise GradingFailure(f"the padding is on the queries (rows) in the {mode} mode: a padded position is a "
                                     f"KEY no one may attend to, so block its column, self_mask[b, :, j] = False "
                                     f"({where})")
            if torch.equal(self_mask, rule & valid[:, :, None] & keys):
                raise GradingFailure(f"the padding blocks the rows as well as the columns in the {mode} mode: padding "
                                     f"is a rule about keys; block the padded columns only ({where})")
            for layout in (valid.cumprod(1).bool(), valid.flip(1).cumprod(1).flip(1).bool()):
                if not torch.equal(layout, valid) and torch.equal(self_mask, med_masks(layout, mode, n_image)[0]):
                    raise GradingFailure(f"the padding was taken to sit at one end of each row (a length per row): it "
                                         f"may sit at either end; mask the keys where attention_mask itself is False "
                                         f"({where})")
            raise GradingFailure(f"the {mode} mode's self_mask differs from the expected one for {where}")
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


class _Decoder:
    """A stand-in captioner whose next-token logits depend on the row (its "image") and on the
    WHOLE prefix (a hash of every token and its position), with end-of-text growing likelier with
    length at a rate of its own per row, so that rows end at different steps. Its logits cover
    the pad token too, at -50: it never writes it. It records the rows of every call."""

    def __init__(self, g: torch.Generator, n_rows: int, vocab: int, eos: int, prompt_len: int, endless=False):
        self.buckets = 97
        self.table = torch.randn(n_rows, self.buckets, vocab + 1, generator=g) * 2  # (rows, hash, V + 1)
        self.table[..., vocab] = -50.0  # the pad token `vocab`: never written
        self.weights = torch.randint(1, self.buckets, (64,), generator=g)  # a weight per position
        self.slope = 0.8 + 1.2 * torch.rand(n_rows, generator=g)  # how fast eos grows, per row
        self.start = torch.randint(1, 5, (n_rows,), generator=g).float()  # from which new token it grows
        self.eos, self.prompt_len, self.endless = eos, prompt_len, endless
        self.calls: list[torch.Tensor] = []

    def __call__(self, ids, rows):
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise GradingFailure(f"next_logits takes ids as one (R, T) tensor, got {getattr(ids, 'shape', ids)}")
        if not isinstance(rows, torch.Tensor) or rows.ndim != 1 or rows.dtype != torch.long:
            raise GradingFailure(f"next_logits takes rows as a (R,) long tensor of row numbers, got "
                                 f"{getattr(rows, 'dtype', type(rows).__name__)} {tuple(getattr(rows, 'shape', ()))}")
        if len(rows) != len(ids):
            raise GradingFailure(f"next_logits got {len(ids)} prefixes and {len(rows)} row numbers: one row number per "
                                 f"prefix")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self.table)):
            raise GradingFailure(f"row numbers must be rows of the batch, 0..{len(self.table) - 1}, got "
                                 f"{rows.tolist()}")
        self.calls.append(rows.detach().clone())
        t = ids.shape[1]
        h = (ids * self.weights[:t]).sum(1) % self.buckets  # (R,) the whole prefix
        logits = self.table[rows, h].clone()  # (R, V + 1)
        if not self.endless:
            logits[:, self.eos] += self.slope[rows] * (t - self.prompt_len - self.start[rows]) * 2
        else:
            logits[:, self.eos] = -50.0
        return logits


def _decode_case(g: torch.Generator, b: int, endless: bool = False):
    vocab = randint(g, 6, 9)
    eos, pad = 0, vocab  # a pad id the model never writes, so padding is told apart from words
    prompt = torch.randint(1, vocab, (b, randint(g, 1, 3)), generator=g)
    return _Decoder(g, b, vocab, eos, prompt.shape[1], endless), prompt, eos, pad


def _full_batch(model):
    """The decoder asked about every row (what `generate` does): the reference tokens."""
    return lambda ids, rows: model(ids, rows)


def _running_greedy(model, prompt, steps, eos, pad, renumber=False):
    """Greedy over the running rows, with the row numbers renumbered 0..R-1 when `renumber`."""
    ids, done = prompt.clone(), torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(steps):
        running = (~done).nonzero().flatten()
        token = torch.full((len(prompt),), pad, dtype=torch.long)
        token[running] = model(ids[running], torch.arange(len(running)) if renumber else running).argmax(-1)
        ids = torch.cat([ids, token[:, None]], 1)
        done |= token == eos
        if bool(done.all()):
            break
    return ids


@register("06.greedy_decode", title="Greedy decoding that runs the unfinished captions only")
def check_greedy_decode(fn) -> None:
    g = fresh_generator()
    for _ in range(30):  # rows that end at different steps, before max_new_tokens
        model, prompt, eos, pad = _decode_case(g, randint(g, 4, 6))
        want = generate(_full_batch(model), prompt, 10, eos, pad_id=pad)
        ends = [(row[prompt.shape[1]:] == eos).nonzero()[0, 0].item() for row in want if (row == eos).any()]
        # some row ends while a later row goes on: the running rows are then not 0..R-1
        gap = len(ends) == len(prompt) and any(ends[i] < max(ends[i + 1:]) for i in range(len(ends) - 1))
        if gap and len(set(ends)) >= 3 and want.shape[1] < prompt.shape[1] + 10:
            break
    _judge_greedy(fn, model, prompt, 10, eos, pad, "rows that end at different steps")
    model, prompt, eos, pad = _decode_case(g, randint(g, 2, 4), endless=True)
    _judge_greedy(fn, model, prompt, 3, eos, pad, "no row ends: max_new_tokens decides")
    model, prompt, eos, pad = _decode_case(g, 1)
    _judge_greedy(fn, model, prompt, 8, eos, pad, "a batch of one")


def _judge_greedy(fn, model: _Decoder, prompt, max_new, eos, pad, what: str) -> None:
    want = generate(_full_batch(model), prompt, max_new, eos, pad_id=pad)
    model.calls.clear()
    given = prompt.clone()
    got = tensor_answer("greedy_decode's result", call(fn, model, given, max_new, eos, pad))
    calls, p = list(model.calls), prompt.shape[1]
    if not torch.equal(given, prompt):
        raise GradingFailure("prompt was modified in place: build the result as a new tensor; the caller still needs "
                             "the prompt")
    if got.ndim != 2 or got.shape[0] != prompt.shape[0]:
        raise GradingFailure(f"return the ids (B, T + new tokens) = ({prompt.shape[0]}, ...), got {tuple(got.shape)} "
                             f"({what})")
    if got.dtype != torch.long:
        raise GradingFailure(f"the ids must stay torch.long (token ids for the embedding), got {got.dtype}")
    if not torch.equal(got[:, :p], prompt):
        raise GradingFailure("the result must start with the prompt, unchanged")
    if torch.equal(got, want):
        steps = want.shape[1] - p
        if len(calls) != steps:
            raise GradingFailure(f"next_logits was called {len(calls)} times for {steps} new tokens: call it once per "
                                 f"step, for the running rows together ({what})")
        for k, rows in enumerate(calls):
            running = (~(want[:, p:p + k] == eos).any(1)).nonzero().flatten()
            if sorted(rows.tolist()) != running.tolist():
                if rows.tolist() == list(range(len(running))):
                    raise GradingFailure(f"step {k}: the running rows {running.tolist()} were renumbered 0..R-1: rows "
                                         f"must hold each prefix's row of the BATCH (the captioner picks its image by "
                                         f"it), e.g. the indices of the unfinished rows ({what})")
                if set(running.tolist()) < set(rows.tolist()):
                    raise GradingFailure(f"step {k}: the decoder was asked about rows {sorted(rows.tolist())}, but rows "
                                         f"{sorted(set(rows.tolist()) - set(running.tolist()))} had already ended: "
                                         f"ask it about the unfinished rows only ({what})")
                raise GradingFailure(f"step {k}: the decoder was asked about rows {sorted(rows.tolist())}; the "
                                     f"unfinished rows are {running.tolist()} ({what})")
        return
    gen_got, gen_want = got[:, p:], want[:, p:]
    if torch.equal(got, _running_greedy(model, prompt, max_new, eos, pad, renumber=True)):
        raise GradingFailure(f"the running rows were renumbered 0..R-1: rows must hold each prefix's row of the BATCH "
                             f"(the captioner picks its image by it), e.g. the indices of the unfinished rows ({what})")
    if got.shape[1] > want.shape[1] and torch.equal(got[:, :want.shape[1]], want) \
            and bool((gen_got[:, gen_want.shape[1]:] == pad).all()) and want.shape[1] < p + max_new:
        raise GradingFailure("did not stop when every row had ended: once all rows emitted end-of-text, stop the "
                             "loop (the extra steps only add padding)")
    if torch.equal(got, generate(_full_batch(model), prompt, max_new + 1, eos, pad_id=pad)):
        raise GradingFailure(f"one token too many: decode at most max_new_tokens = {max_new} new tokens")
    if max_new > 1 and torch.equal(got, generate(_full_batch(model), prompt, max_new - 1, eos, pad_id=pad)):
        raise GradingFailure(f"one token too few: decode up to max_new_tokens = {max_new} new tokens")
    if torch.equal(got, _greedy_without_padding(model, prompt, got.shape[1] - p)):
        raise GradingFailure("decoding past end-of-text: after a row emits eos, its later tokens must be pad_id "
                             "(the row has ended), not more words")
    if got.shape[1] == want.shape[1] and not bool((gen_got == eos).any()) and bool((gen_want == eos).any()):
        raise GradingFailure("the end-of-text token is missing: keep the eos a row emits, then pad")
    step_argmax = _first_non_argmax(model, got, p, eos)
    if step_argmax is not None:
        raise GradingFailure(f"row {step_argmax[0]}, new token {step_argmax[1]}: not the argmax of the logits for that "
                             f"row's prefix (sampling? the wrong row's logits? greedy takes the highest logit of "
                             f"each row every step) ({what})")
    raise GradingFailure(f"the tokens differ from greedy decoding's ({what}): expected {want.tolist()}, got "
                         f"{got.tolist()}")


def _greedy_without_padding(model, prompt, steps) -> torch.Tensor:
    ids = prompt
    for _ in range(steps):
        ids = torch.cat([ids, model(ids, torch.arange(len(ids))).argmax(-1)[:, None]], 1)
    return ids


def _first_non_argmax(model, got, p, eos):
    for r in range(got.shape[0]):
        for t in range(p, got.shape[1]):
            prefix = got[r:r + 1, :t]
            if bool((prefix[0, p:] == eos).any()):
                break
            if int(got[r, t]) != int(model(prefix, torch.tensor([r])).argmax(-1)):
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
    one_row = torch.randn(1, v, generator=g, dtype=torch.float64) * 3  # a batch of one, in float64
    cases = [(0.3 + 0.5 * float(torch.rand(1, generator=g)), logits), (0.9, logits), (1.0, peaked),
             (0.5 + 0.4 * float(torch.rand(1, generator=g)), one_row)]
    for p, logits in cases:
        b = len(logits)
        want = top_p_filter(logits, p)
        given = logits.clone()
        got = tensor_answer(f"top_p_filter(logits, {p:.3f})", call(fn, given, p))
        if not torch.equal(given, logits):
            raise GradingFailure("logits was modified in place (masked_fill_ or an assignment into it): return a new "
                                 "tensor and leave the caller's logits as they were")
        if tuple(got.shape) != (b, v):
            raise GradingFailure(f"return the filtered logits, shape {(b, v)}, got {tuple(got.shape)}")
        if got.dtype != logits.dtype:
            raise GradingFailure(f"the filtered logits must keep the dtype of logits ({logits.dtype}), got {got.dtype}")
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


def _clipped(candidate: str, references: list[str], n: int, clip: str = "max", split=caption_tokens) -> tuple[int, int]:
    cand = _ngrams(split(candidate), n)
    refs = [_ngrams(split(r), n) for r in references]
    limit = Counter()
    for r in refs:
        for gram, c in r.items():
            limit[gram] = max(limit[gram], c) if clip == "max" else limit[gram] + c
    if clip == "none":
        return sum(c for gram, c in cand.items() if limit[gram] > 0), sum(cand.values())
    return sum(min(c, limit[gram]) for gram, c in cand.items()), sum(cand.values())


WORDS = ["a", "red", "blue", "circle", "star", "and", "square", "the", "big", "there"]


def _sentence(g: torch.Generator, lo: int, hi: int) -> str:
    """Words as people write them: some capitalised, commas after some, a full stop (or none) at the end."""
    words = [WORDS[int(i)] for i in torch.randint(0, 5, (randint(g, lo, hi),), generator=g) * 2 % 10]
    out = []
    for k, w in enumerate(words):
        if float(torch.rand((), generator=g)) < 0.25 or k == 0 and float(torch.rand((), generator=g)) < 0.5:
            w = w.capitalize() if float(torch.rand((), generator=g)) < 0.8 else w.upper()
        if k < len(words) - 1 and float(torch.rand((), generator=g)) < 0.15:
            w += ","
        out.append(w)
    end = ["", ".", "!", " ."][randint(g, 0, 3)]
    return " ".join(out) + end


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
        cand = " ".join(["A"] + ["a"] * randint(g, 1, 3) + _sentence(g, 2, 6).split())
        refs = [_sentence(g, 3, 8) + " a" * randint(g, 0, 2) for _ in range(randint(g, 2, 3))]
        cases.append((cand, refs))
    cases.append(("The the THE the, the the the.", ["the cat is on the mat.", "There is a cat on the mat!"]))
    cases.append(("Red.", ["a red circle.", "the red circle"]))  # one word: no bigram, no trigram
    for n in (1, 2, 3):
        given = [(c, list(r)) for c, r in cases]
        got = [_as_pair(f"clipped_precision({c!r}, {r!r}, n={n})", call(fn, c, r, n)) for c, r in given]
        if any(r != list(r0) for (_, r), (_, r0) in zip(given, cases)):
            raise GradingFailure("references was modified in place: leave the list as it is")
        want = [_clipped(c, r, n) for c, r in cases]
        if got == want:
            continue
        for split, how in ((str.split, "on spaces"), (lambda t: t.lower().split(), "on spaces after lower()")):
            if got == [_clipped(c, r, n, split=split) for c, r in cases]:
                raise GradingFailure(f"the words were split {how}: 'Circle,' and 'circle' are then different words; "
                                     f"split with caption_tokens (lower case, punctuation dropped), as BLEU does "
                                     f"(n={n})")
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


# ----------------------------------------------------------------------------- 06.filter_experiment

KINDS = ("web", "synthetic")


def _bool_flags(name: str, got, b: int) -> torch.Tensor:
    got = tensor_answer(name, got)
    if got.dtype != torch.bool:
        raise GradingFailure(f"{name} must be a bool tensor (True / False per caption), got {got.dtype}")
    if tuple(got.shape) != (b,):
        raise GradingFailure(f"{name} must have shape (B,) = ({b},), one flag per caption, got {tuple(got.shape)}")
    return got.detach().cpu()


def _rate(name: str, got) -> float:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, numbers.Real) or isinstance(got, bool):
        raise GradingFailure(f"{name} must be one number, got {type(got).__name__}")
    return float(got)


@torch.no_grad()
def _decoder_logits(model, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced on "[DEC] words <eos>": the logits (B, L, V) before each target, the targets
    (B, L) and where they are real (B, L)."""
    tok, c = model.get_tokenizer(), model.config
    rows = [[c.dec_id] + tok.encode(text) + [c.eos_id] for text in captions]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), c.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
    image_tokens, _ = model.encode_image(images)
    logits = model.lm_logits(model.text_forward(ids, mask, "decoder", image_tokens))[:, :-1]
    return logits, ids[:, 1:], mask[:, 1:]


def _nucleus_samples(captioner, images, captions: list[str], p: float = 0.9) -> tuple[int, int]:
    """(captions with a word outside the p-nucleus of its step, captions that are not the greedy
    caption somewhere): read back through the captioner, teacher-forced."""
    tok = captioner.get_tokenizer()
    if any(tok.decode(tok.encode(text)) != text for text in captions):
        bad = next(text for text in captions if tok.decode(tok.encode(text)) != text)
        raise GradingFailure(f"the synthetic caption {bad!r} is not one the captioner can write (its words are not "
                             f"the captioner's vocabulary, as caption() decodes it)")
    logits, targets, real = _decoder_logits(captioner, images, captions)
    flat = top_p_filter(logits.reshape(-1, logits.shape[-1]), p).view_as(logits)
    inside = torch.isfinite(flat.gather(-1, targets[..., None])[..., 0])
    outside = int(((~inside) & real).any(1).sum())
    not_greedy = int(((logits.argmax(-1) != targets) & real).any(1).sum())
    return outside, not_greedy


def _experiment_answer(got, b: int) -> dict:
    keys = ("synthetic", "kept", "bad", "precision", "recall")
    if not isinstance(got, dict) or any(k not in got for k in keys):
        have = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"filter_experiment must return a dict with keys {list(keys)}, got {have}")
    synthetic = got["synthetic"]
    if not isinstance(synthetic, (list, tuple)) or not all(isinstance(c, str) for c in synthetic):
        raise GradingFailure(f"'synthetic' must be the list of B synthetic captions (strings), got "
                             f"{type(synthetic).__name__}")
    if len(synthetic) != b:
        raise GradingFailure(f"'synthetic' must hold one caption per image, {b}, got {len(synthetic)}")
    out = {"synthetic": list(synthetic)}
    for key in ("kept", "bad", "precision", "recall"):
        part = got[key]
        if not isinstance(part, dict) or any(k not in part for k in KINDS):
            raise GradingFailure(f"{key!r} must be a dict with keys 'web' and 'synthetic', got "
                                 f"{sorted(part) if isinstance(part, dict) else type(part).__name__}")
        if key in ("kept", "bad"):
            out[key] = {k: _bool_flags(f"{key}[{k!r}]", part[k], b) for k in KINDS}
        else:
            out[key] = {k: _rate(f"{key}[{k!r}]", part[k]) for k in KINDS}
    return out


def _same_rate(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return not math.isnan(got) and abs(got - want) < 1e-6


@register("06.filter_experiment", title="The experiment: CapFilt's filter on web and on synthetic captions")
def check_filter_experiment(fn) -> None:

    g = fresh_generator()
    web = image_text_pairs(64, noise=0.4, seed=randint(g, 0, 2**31 - 2))
    b = len(web["captions"])
    threshold = round(0.2 + 0.6 * float(torch.rand((), generator=g)), 2)  # the argument, not 0.5
    while abs(threshold - 0.5) < 0.15:
        threshold = round(0.2 + 0.6 * float(torch.rand((), generator=g)), 2)
    blip = store.load("blip").eval()
    before = float(sum(p.detach().double().sum() for p in blip.parameters()))
    given = {"images": web["images"].clone(), "captions": list(web["captions"]), "scenes": list(web["scenes"]),
             "clean": web["clean"].clone(), "image_ids": web["image_ids"].clone()}
    generator = torch.Generator().manual_seed(randint(g, 0, 2**31 - 2))
    got = call(fn, blip, blip, given, generator, threshold)
    if blip.training or float(sum(p.detach().double().sum() for p in blip.parameters())) != before:
        raise GradingFailure("the model was changed (its weights or its mode): the experiment only measures")
    if not (torch.equal(given["images"], web["images"]) and given["captions"] == list(web["captions"])
            and torch.equal(given["clean"], web["clean"])):
        raise GradingFailure("web was modified (its images, captions or clean flags): leave it as it is")
    out = _experiment_answer(got, b)
    synthetic = out["synthetic"]

    # ---- the synthetic captions: the captioner's nucleus samples, read back through it
    outside, not_greedy = _nucleus_samples(blip, web["images"], synthetic)
    if not_greedy < b // 4:
        raise GradingFailure(f"only {not_greedy} of {b} synthetic captions differ anywhere from the captioner's greedy "
                             f"choice: write them by nucleus SAMPLING (do_sample=True, top_p=0.9), as CapFilt does "
                             f"for diversity")
    if outside > max(2, b // 20):
        raise GradingFailure(f"{outside} of {b} synthetic captions contain a word outside the p = 0.9 nucleus of its "
                             f"step: sample with top_p=0.9 (a plain sample, p = 1, draws from the whole tail)")

    # ---- the bad flags: web noise, and synthetic captions not exactly true
    want_bad = {"web": ~web["clean"].bool(), "synthetic": ~torch.tensor(true_caption_rate(synthetic, web["scenes"]))}
    for kind in KINDS:
        if not torch.equal(out["bad"][kind], want_bad[kind]):
            if torch.equal(out["bad"][kind], ~want_bad[kind]):
                raise GradingFailure(f"bad[{kind!r}] is inverted: True marks a BAD caption (web: not clean; synthetic: "
                                     f"not exactly true of its scene)")
            raise GradingFailure(f"bad[{kind!r}] differs from what the data says at "
                                 f"{int((out['bad'][kind] != want_bad[kind]).sum())} captions: "
                                 + ("a web caption is bad where web['clean'] is False" if kind == "web" else
                                    "a synthetic caption is bad where true_caption_rate says it is not exactly true of "
                                    "its scene"))

    # ---- the filter's verdicts, judged again on the captions returned
    judged = {"web": list(web["captions"]), "synthetic": [c if c else "." for c in synthetic]}
    for kind in KINDS:
        prob = blip.match_probability(web["images"], judged[kind])
        want = prob > threshold
        unsure = (prob - threshold).abs() < 1e-4  # batch arithmetic may round differently there
        kept = out["kept"][kind]
        if bool(((kept != want) & ~unsure).any()):
            if bool(((kept != (prob > 0.5)) & ((prob - 0.5).abs() >= 1e-4)).sum() == 0):
                raise GradingFailure(f"kept[{kind!r}] uses a threshold of 0.5: use the threshold argument "
                                     f"(the check passed {threshold})")
            if bool(((kept != ~want) & ~unsure).sum() == 0):
                raise GradingFailure(f"kept[{kind!r}] is inverted: a caption is KEPT where P(match) is above the "
                                     f"threshold")
            raise GradingFailure(f"kept[{kind!r}] differs from the filter's verdict at "
                                 f"{int(((kept != want) & ~unsure).sum())} of {b} captions: kept where "
                                 f"filt.match_probability(images, captions) > threshold ({threshold}), each caption "
                                 f"with its own image")

    # ---- precision and recall, from the flags returned
    for kind in KINDS:
        removed, bad = ~out["kept"][kind], out["bad"][kind]
        precision = float((bad & removed).sum() / removed.sum()) if bool(removed.any()) else float("nan")
        recall = float((bad & removed).sum() / bad.sum()) if bool(bad.any()) else float("nan")
        got_p, got_r = out["precision"][kind], out["recall"][kind]
        if _same_rate(got_p, recall) and _same_rate(got_r, precision) and not _same_rate(precision, recall):
            raise GradingFailure(f"precision and recall are swapped ({kind}): precision is the share of bad captions "
                                 f"among the REMOVED ones; recall the share of the BAD captions that were removed")
        for name, value, want, definition in (
                ("precision", got_p, precision, "of the captions removed, the share that are bad"),
                ("recall", got_r, recall, "of the bad captions, the share removed")):
            if not _same_rate(value, want):
                if not math.isnan(want) and abs(value - 100 * want) < 1e-3 and want > 0:
                    raise GradingFailure(f"{name}[{kind!r}] is a percentage: report a fraction in [0, 1]")
                raise GradingFailure(f"{name}[{kind!r}] = {value:.4f}, but your flags give {want:.4f}: {definition} "
                                     f"(nan when there is none)")
    # a library fact, the chapter's: the zoo filter catches web noise, few untrue synthetic captions
    if bool(want_bad["web"].any()) and bool(want_bad["synthetic"].any()):
        web_recall = float((want_bad["web"] & ~out["kept"]["web"]).sum() / want_bad["web"].sum())
        syn_recall = float((want_bad["synthetic"] & ~out["kept"]["synthetic"]).sum() / want_bad["synthetic"].sum())
        if threshold > 0.5 and web_recall < syn_recall:
            raise GradingFailure(f"the zoo's BLIP filter removed {web_recall:.0%} of the noisy web captions and "
                                 f"{syn_recall:.0%} of the untrue synthetic ones: this is a problem of the zoo model, "
                                 f"not of your function; report it")
