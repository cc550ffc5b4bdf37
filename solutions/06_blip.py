# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · BLIP — exercises
#
# Chapter 06 (`notebooks/06_blip.ipynb`) used the library's masks, decoding and metrics; here you
# write the next steps of each: the attention masks that turn one text Transformer into BLIP's
# three models, for any layout of padding; greedy decoding that runs the decoder on the captions
# still being written only (a finished caption costs nothing more); the nucleus filter that
# CapFilt's captioner samples through; BLEU's clipped n-gram precision on real, punctuated text.
# Then an experiment: CapFilt's filter, judged on the web captions and on the captioner's own
# synthetic captions. The cell after each task runs `check(...)` on fresh inputs and tells you
# what is wrong. At the end your pieces caption images with the zoo's BLIP and score the
# captions, next to the library's (`minivlm/models/blip.py`, `minivlm/generate.py`,
# `minivlm/eval/captions.py`). Grade the whole notebook from a terminal with
# `minivlm check exercises/06_blip.ipynb`.

# %%
import torch

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — the masks of the three modes
#
# BLIP's *multimodal mixture of encoder-decoder* (MED) runs one text Transformer in three modes.
# What changes between them is who may attend to whom:
#
# | mode | self-attention over the words | cross-attention to the image |
# |---|---|---|
# | `"text"` (`[CLS]`, for ITC) | bidirectional | none |
# | `"encoder"` (`[ENC]`, for ITM) | bidirectional | every word sees every image token |
# | `"decoder"` (`[DEC]`, for captioning) | **causal**: word i sees words 0..i | every word sees every image token |
#
# In every mode, no word may attend to a padded position. `attention_mask` is a `(B, T)` bool
# tensor, True on real tokens; the padding may sit anywhere in a row (at the end, or at the start
# when a batch is left-padded for decoding). Return `(self_mask, cross_mask)`: `self_mask`
# `(B, T, T)` bool (row = the attending query, column = the key; True = may attend), and
# `cross_mask` `(B, T, n_image)` bool, or `None` in the `"text"` mode, which has no
# cross-attention. Leave `attention_mask` as it is.

# %%
def med_masks(attention_mask, mode, n_image):
    ### BEGIN SOLUTION hint: chapter 06 §1 (the table of the three modes and the plotted masks); chapter 01 §3:
    ###     padding is a rule about keys, and causality a rule about where the key sits relative to the query
    b, t = attention_mask.shape
    self_mask = attention_mask.bool()[:, None, :].expand(b, t, t)  # (B, T, T): real keys only
    if mode == "decoder":
        self_mask = self_mask & torch.tril(torch.ones(t, t, dtype=torch.bool))
    if mode == "text":
        return self_mask, None
    return self_mask, torch.ones(b, t, n_image, dtype=torch.bool)
    ### END SOLUTION


# %%
check("06.med_masks", med_masks)

# %% [markdown]
# ## Task 2 — greedy decoding that runs the unfinished captions only
#
# Chapter 06 §3 wrote greedy decoding as a loop that asks the decoder for every row at every step,
# also for the rows that have already emitted end-of-text and only receive padding. On a batch
# of captions of different lengths that is wasted work; here the decoder sees only the rows still
# being written.
#
# `next_logits(ids, rows)` takes `ids` `(R, T)`, the prefixes of R rows, and `rows` `(R,)` long,
# **which row of the batch** each prefix is (the captioner picks each prefix's image by it), and
# returns `(R, V)` next-token logits. Greedy decoding appends the highest-scoring token of every
# row, `max_new_tokens` times at most. A row that has emitted `eos_id` has ended: keep its eos and
# give it `pad_id` at every later step, **without asking the decoder about it**: call
# `next_logits` once per step, with the prefixes and row numbers of the unfinished rows only.
# Stop as soon as every row has ended. Return the `(B, T + L)` ids, prompt first; leave `prompt`
# as it is.

# %%
def greedy_decode(next_logits, prompt, max_new_tokens, eos_id, pad_id):
    ### BEGIN SOLUTION hint: chapter 06 §3 (`generate` and the greedy loop written out; what `rows` tells the
    ###     captioner): select the running rows for the decoder, and write their tokens back into the whole batch
    ids = prompt.clone()
    done = torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(max_new_tokens):
        running = (~done).nonzero().flatten()  # (R,) the rows still being written
        token = torch.full((len(prompt),), pad_id, dtype=prompt.dtype)  # ended rows get padding
        token[running] = next_logits(ids[running], running).argmax(-1)
        ids = torch.cat([ids, token[:, None]], dim=1)
        done |= token == eos_id
        if done.all():
            break
    return ids
    ### END SOLUTION


# %%
check("06.greedy_decode", greedy_decode)

# %% [markdown]
# ## Task 3 — nucleus (top-p) filtering
#
# CapFilt's captioner does not decode greedily: it **samples**, so that its synthetic captions
# are diverse (the paper found diversity beats beam search's safe captions). Sampling from the
# whole vocabulary lets the long tail of unlikely words in; **nucleus sampling** (Holtzman et
# al., 2020) samples only from the smallest set of most likely tokens whose probabilities add up
# to at least p. Rank the tokens by probability; keep a token while the mass of the tokens ranked
# above it is still below p (so the token that crosses p is kept); drop the rest.
#
# `logits` is `(B, V)`, `p` in (0, 1]. Return new logits with the dropped tokens set to `-inf`
# (softmax then gives them probability 0) and the kept ones unchanged, in vocabulary order, in
# the dtype of `logits`; leave `logits` itself as it is (the caller may still need it). p = 1
# keeps everything (however small the last probabilities: a cumulative sum in floating point can
# reach 1.0 before them).

# %%
def top_p_filter(logits, p):
    ### BEGIN SOLUTION hint: chapter 06 §3 (nucleus sampling, and the words it keeps for the first word after [DEC]):
    ###     the decision is made in rank order, and each token's fate must go back to its place in the vocabulary
    if p >= 1.0:  # everything; the sums below may reach 1.0 by rounding before the tiniest tokens
        return logits.clone()
    probs, order = logits.softmax(-1).sort(dim=-1, descending=True)  # (B, V) sorted, and where each came from
    before = probs.cumsum(dim=-1) - probs  # the mass ranked above each token
    drop_sorted = before >= p  # the set already holds p without this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))
    ### END SOLUTION


# %%
check("06.top_p_filter", top_p_filter)

# %% [markdown]
# ## Task 4 — BLEU's clipped n-gram precision
#
# BLEU (Papineni et al., 2002) asks how many of a caption's n-grams (runs of n consecutive words)
# appear in the references. Counting plainly rewards cheating: "the the the the the the the."
# would have every unigram in "the cat is on the mat.". So each n-gram's count is **clipped** at
# the most times it appears in any *one* reference ("the" appears twice there: the candidate gets
# 2 of its 7, not 7). BLEU-4 multiplies the clipped precisions for n = 1..4 (geometrically
# averaged) by a brevity penalty, over a whole corpus; `minivlm.eval.bleu` does the rest.
#
# Captions come as people and models write them: "A red circle, and a Blue square." must match
# "a red circle and a blue square" word for word. Split every text into words with
# `minivlm.eval.caption_tokens` (lower case, punctuation dropped, as the library's `bleu` does).
# Return `(clipped matches, number of n-grams in the candidate)`, two ints; a candidate shorter
# than n words has no n-gram: `(0, 0)`.

# %%
from collections import Counter  # noqa: E402

from minivlm.eval import caption_tokens  # noqa: E402


def clipped_precision(candidate, references, n):
    ### BEGIN SOLUTION hint: chapter 06 §4 (BLEU-4: clipped n-gram precisions, an n-gram counted at most as often as
    ###     it appears in one reference)
    def ngrams(text):
        words = caption_tokens(text)
        return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    cand = ngrams(candidate)
    most = Counter()
    for ref in references:
        for gram, count in ngrams(ref).items():
            most[gram] = max(most[gram], count)
    return sum(min(count, most[gram]) for gram, count in cand.items()), sum(cand.values())
    ### END SOLUTION


# %%
check("06.clipped_precision", clipped_precision)

# %% [markdown]
# ## Task 5 — the experiment: does the filter catch the captioner's mistakes?
#
# CapFilt's filter (chapter 06 §5) is BLIP's ITM head: it removes a caption when P(match) is at or
# below a threshold. It was fine-tuned to catch web noise, captions of *another* scene. The
# captioner's synthetic captions fail differently: they describe the right scene, one colour or
# one object off. Measure the filter on both kinds.
#
# Write `filter_experiment(captioner, filt, web, generator, threshold)`. `captioner` and `filt`
# are BLIPs, `web` a set of noisy web pairs (`image_text_pairs(...)`: `"images"`, `"captions"`,
# `"scenes"`, and `"clean"`, a `(B,)` bool tensor, True where the caption describes its own
# scene). Write one synthetic caption per image with
# `captioner.caption(images, do_sample=True, top_p=0.9, generator=generator)`; judge the web and
# the synthetic captions with `filt.match_probability(images, captions)` (kept where it is above
# `threshold`; judge an empty caption as `"."`). A web caption is **bad** where it is not clean; a
# synthetic caption where it is not exactly true of its scene
# (`minivlm.eval.true_caption_rate(captions, scenes)`, a list of bools). For each kind, the filter's
# **precision** is the share of bad captions among those it removed (`nan` when it removed none)
# and its **recall** the share of the bad captions that it removed. Return
#
# `{"synthetic": [B captions], "kept": {"web": (B,) bool, "synthetic": (B,) bool},
#   "bad": {"web": ..., "synthetic": ...}, "precision": {"web": float, "synthetic": float},
#   "recall": {"web": float, "synthetic": float}}`.
#
# Change nothing about the models or `web`. The check runs your function on a fresh web set at
# a threshold of its choosing, reads the captions you wrote back through the captioner (each
# word must come from the nucleus at p = 0.9) and judges them again through the filter.

# %%
from minivlm.eval import true_caption_rate  # noqa: E402


def filter_experiment(captioner, filt, web, generator, threshold=0.5):
    ### BEGIN SOLUTION hint: chapter 06 §5 (CapFilt written out; precision and recall of the filter on web and on
    ###     synthetic captions): the same filter, two kinds of bad caption; the two rates answer different questions
    images = web["images"]
    synthetic = captioner.caption(images, do_sample=True, top_p=0.9, generator=generator)
    judged = {"web": list(web["captions"]), "synthetic": [c if c else "." for c in synthetic]}
    bad = {"web": ~web["clean"].bool(), "synthetic": ~torch.tensor(true_caption_rate(synthetic, web["scenes"]))}
    out = {"synthetic": synthetic, "kept": {}, "bad": bad, "precision": {}, "recall": {}}
    for kind, captions in judged.items():
        kept = filt.match_probability(images, captions) > threshold  # (B,)
        removed = ~kept
        out["kept"][kind] = kept
        out["precision"][kind] = bad[kind][removed].float().mean().item() if removed.any() else float("nan")
        out["recall"][kind] = removed[bad[kind]].float().mean().item() if bad[kind].any() else float("nan")
    return out
    ### END SOLUTION


# %%
check("06.filter_experiment", filter_experiment)

# %% [markdown]
# Your experiment on 192 fresh web pairs, 40 % of their captions describing another scene, with
# the zoo's BLIP as captioner and as filter (as chapter 06 §5 did), with 95 % intervals.

# %%
import time  # noqa: E402

from minivlm import zoo  # noqa: E402
from minivlm.data.pairs import image_text_pairs  # noqa: E402
from minivlm.eval import wilson  # noqa: E402

blip = zoo.load("blip").eval()
web = image_text_pairs(192, noise=0.4, seed=2026)
start = time.perf_counter()
experiment = filter_experiment(blip, blip, web, torch.Generator().manual_seed(0), threshold=0.5)
print(f"measured in {time.perf_counter() - start:.1f} s")
for kind in ("web", "synthetic"):
    kept, bad = experiment["kept"][kind], experiment["bad"][kind]
    removed = ~kept
    print(f"{kind:9} captions: {int(bad.sum()):3} bad of {len(bad)}, {int(removed.sum()):3} removed; precision "
          f"{wilson(int((bad & removed).sum()), int(removed.sum()))}, recall "
          f"{wilson(int((bad & removed).sum()), int(bad.sum()))}")
for caption, ok, kept in list(zip(experiment["synthetic"], (~experiment["bad"]["synthetic"]).tolist(),
                                  experiment["kept"]["synthetic"].tolist()))[:5]:
    print(f"  {'true' if ok else 'NOT TRUE':8} {'kept' if kept else 'removed':8} {caption}")

# %% [markdown]
# **What the run shows** (the figures printed above). On the web captions the filter removes
# nearly every bad one (recall close to 1), along with some clean ones (its precision there is
# well below 1). On the synthetic captions it is the other way round: most of them are not
# exactly true, and the few the filter removes are nearly all bad (high precision), but it lets
# most of the untrue ones through (low recall). A caption of the wrong scene is easy to reject;
# one that is one attribute off, the captioner's typical mistake, mostly is not. This is one
# sample of 192 images at one threshold; the chapter's three seeds of 4,096 (§6) show the same
# low recall on synthetic captions.

# %% [markdown]
# ## Put together: your pieces write and score captions
#
# The next cells decode with your greedy loop and your nucleus filter, first on a captioner small
# enough to read, then on the zoo's trained BLIP, and score the captions with your clipped
# precision next to the library's `bleu`.

# %%
from minivlm import grading  # noqa: E402
from minivlm.generate import generate, strip_generated  # noqa: E402

yours = {"06.med_masks": med_masks, "06.greedy_decode": greedy_decode, "06.top_p_filter": top_p_filter,
         "06.clipped_precision": clipped_precision}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("all four tasks pass: captioning with your functions" if ready
      else "finish the four tasks above first: the next cells use all of them")

# %% [markdown]
# **A captioner by hand.** Two "images", each with the caption it should get. The model ignores
# the words so far except for their number k: it gives logit 3 to word k of its image's caption
# (end-of-text after the last), 1.5 to the other colours or shapes where that word is a colour or a
# shape (plausible mistakes), and −3 to every other word, the long tail of nonsense that a real
# decoder also keeps a little mass on.

# %%
WORDS = ["[DEC]", "[EOS]", "[PAD]", "a", "and", ".", "red", "green", "blue", "circle", "square", "star"]
DEC, EOS, PAD = 0, 1, 2
COLOURS, SHAPES = [6, 7, 8], [9, 10, 11]
SCRIPTS = [[WORDS.index(w) for w in text.split()] for text in ("a red circle and a blue square .", "a green star .")]


def hand_logits(ids, rows):
    """(B, V) next-word logits; row b shows image rows[b] % 2."""
    k = ids.shape[1] - 1  # words written after [DEC]
    logits = torch.full((len(ids), len(WORDS)), -3.0)  # the tail
    for b, image in enumerate(rows.tolist()):
        script = SCRIPTS[image % 2]
        word = script[k] if k < len(script) else EOS
        for group in (COLOURS, SHAPES):
            if word in group:
                logits[b, group] = 1.5  # the other colours or shapes
        logits[b, word] = 3.0
    return logits


def texts(ids):
    """The words after [DEC] of each row, up to its first [EOS]."""
    return [" ".join(WORDS[i] for i in row) for row in strip_generated(ids, 1, EOS)]


if ready:
    ids = greedy_decode(hand_logits, torch.full((2, 1), DEC), 12, EOS, PAD)
    for row in ids:
        print(" ".join(WORDS[i] for i in row.tolist()))
    print("the library's generate gives the same ids:", torch.equal(ids, generate(hand_logits, ids[:, :1], 12, EOS,
                                                                                   pad_id=PAD)))

# %% [markdown]
# The shorter caption ends first and is padded while the other goes on. Now 2,000 captions sampled
# through your filter at three values of p: how many differ from the greedy ones, and how many
# took a word from the tail somewhere (a token the model gave logit −3, about 2 % each step).

# %%
def sample(next_logits, prompt, steps, p, generator):
    """Sampling through your nucleus filter; the words after each row's first eos are ignored."""
    ids = prompt
    for _ in range(steps):
        logits = top_p_filter(next_logits(ids, torch.arange(len(ids))), p)  # (B, V)
        ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=generator)], dim=1)
    return ids


def tail_words(ids, next_logits):
    """(B,) True where a row took a tail word (logit < 0) before its first eos."""
    rows = torch.arange(len(ids))
    ended, took = torch.zeros(len(ids), dtype=torch.bool), torch.zeros(len(ids), dtype=torch.bool)
    for k in range(1, ids.shape[1]):
        chosen = next_logits(ids[:, :k], rows).gather(1, ids[:, k:k + 1])[:, 0]
        took |= ~ended & (chosen < 0)
        ended |= ids[:, k] == EOS
    return took


if ready:
    greedy_texts = texts(ids)
    for p in (1.0, 0.9, 0.5):
        g = torch.Generator().manual_seed(0)
        drawn = sample(hand_logits, torch.full((2000, 1), DEC), 12, p, g)
        yours_drawn = texts(drawn)
        differ = sum(t != greedy_texts[i % 2] for i, t in enumerate(yours_drawn))
        tail = tail_words(drawn, hand_logits).float().mean()
        library = generate(hand_logits, torch.full((2000, 1), DEC), 12, EOS, pad_id=PAD, do_sample=True, top_p=p,
                           generator=torch.Generator().manual_seed(0))
        same = yours_drawn == texts(library)
        print(f"p = {p}: {differ / 2000:5.1%} differ from greedy, {tail:5.1%} took a tail word; same samples as "
              f"the library's: {same}   e.g. {yours_drawn[0]!r}")

# %% [markdown]
# With p = 1 about one caption in seven picks up a word from the tail somewhere; p = 0.9 keeps the
# plausible colours and shapes (two captions in three still differ from the greedy one) and
# cuts the tail off; p = 0.5 keeps only the most likely word: greedy again. BLIP's CapFilt samples at p = 0.9.
#
# **On the zoo's BLIP.** Eight fresh ShapesBench images are captioned through *your* greedy loop
# and sampled through *your* nucleus filter (with the same random draws as the library's
# `caption(do_sample=True, top_p=0.9)`, so the captions must agree); then your clipped precisions
# give the BLEU-4 of the greedy captions (the geometric mean of the four precisions times the
# brevity penalty), next to the library's `bleu`.

# %%
import math  # noqa: E402

from minivlm import zoo  # noqa: E402
from minivlm.data import ShapesBench  # noqa: E402
from minivlm.eval import bleu  # noqa: E402

if ready:
    blip = zoo.load("blip")
    data = ShapesBench().captioning(8)
    tok = blip.get_tokenizer()
    with torch.no_grad():
        image_tokens, _ = blip.encode_image(data["images"])

        def next_logits(ids, rows):
            return blip.lm_logits(blip.text_forward(ids, None, "decoder", image_tokens[rows]))[:, -1]

        prompt = torch.full((8, 1), blip.config.dec_id)
        ids = greedy_decode(next_logits, prompt, 30, blip.config.eos_id, blip.config.pad_id)
        sampled = sample(next_logits, prompt, 30, 0.9, torch.Generator().manual_seed(0))

    def words(row):
        row = row.tolist()[1:]
        return tok.decode(row[:row.index(blip.config.eos_id)] if blip.config.eos_id in row else row)

    greedy, nucleus = [words(r) for r in ids], [words(r) for r in sampled]
    for caption, drawn, refs in zip(greedy, nucleus, data["references"]):
        print(f"greedy  {caption}\nnucleus {drawn}\n  (a reference: {refs[0]})")
    assert greedy == blip.caption(data["images"]), "your greedy loop must give the library's captions"
    library_nucleus = blip.caption(data["images"], do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert nucleus == library_nucleus, "your nucleus filter must give the library's samples"

# %%
if ready:
    matched, total = [0] * 4, [0] * 4
    for caption, refs in zip(greedy, data["references"]):
        for n in range(1, 5):
            m, t = clipped_precision(caption, refs, n)
            matched[n - 1] += m
            total[n - 1] += t
    length = sum(len(caption_tokens(c)) for c in greedy)
    closest = sum(min((len(caption_tokens(r)) for r in refs), key=lambda L: (abs(L - len(caption_tokens(c))), L))
                  for c, refs in zip(greedy, data["references"]))
    penalty = 1.0 if length > closest else math.exp(1 - closest / length)
    your_bleu = penalty * math.exp(sum(math.log(m / t) for m, t in zip(matched, total)) / 4)
    print("clipped precisions, n = 1..4:", ", ".join(f"{m}/{t}" for m, t in zip(matched, total)))
    library_bleu = bleu(greedy, data["references"])
    print(f"BLEU-4 from your clipped precisions: {your_bleu:.4f}; minivlm.eval.bleu: {library_bleu:.4f}")
    assert abs(your_bleu - library_bleu) < 1e-9
