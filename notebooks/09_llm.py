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
# # 09 · A tiny LLM: the language model the bridges keep frozen
#
# Radford, Wu, Child, Luan, Amodei and Sutskever, *Language Models are Unsupervised Multitask
# Learners* (GPT-2, 2019); Radford et al., *Improving Language Understanding by Generative
# Pre-Training* (GPT, 2018); Pope et al., *Efficiently Scaling Transformer Inference* (2022) for
# the KV cache; Holtzman et al., *The Curious Case of Neural Text Degeneration* (ICLR 2020) for
# nucleus sampling.
#
# Chapters 10–18 (Frozen, Flamingo, BLIP-2, LLaVA …) all do the same thing: take a **pretrained
# language model, freeze it**, and teach a small bridge to feed it an image. What the language
# model brings is knowledge that no image-text pair states: that a triangle has three corners,
# that a kite looks like a diamond, that red and blue mixed make purple. So before any bridge, we
# need that language model, and we need to know what it knows.
#
# This chapter trains a decoder-only GPT on ShapesWorld's *world text*: captions and questions
# about scenes (in words, no image), and world facts the image-text data never states. It builds
# the KV cache that makes decoding fast, samples from the model, measures its perplexity and
# how many facts it recalls in **phrasings it never saw**, and freezes it for the chapters ahead.
#
# | piece | library |
# |---|---|
# | the corpus: scene text, world facts, held-out phrasings | `minivlm/data/worldtext.py` |
# | the GPT: chapter 01's causal text Transformer + a tied head; `from_hf` for GPT-2's weights | `minivlm/models/gpt.py` |
# | the KV cache | `minivlm/nn/attention.py` (`KVCache`) |
# | decoding: greedy, beam, temperature, top-k, top-p | `minivlm/generate.py` (chapter 06) |
# | the shifted LM loss, perplexity | `minivlm/losses.py` (`lm_loss`), `minivlm/eval.py` (`perplexity`) |
# | the trained model the later chapters load | `minivlm/zoo` (`"llm"`) |

# %%
import dataclasses
import time

import torch
import torch.nn.functional as F

import minivlm
from minivlm import viz, zoo
from minivlm.data import ShapesWorld, Tokenizer
from minivlm.data.worldtext import (
    FACTS,
    WorldText,
    fact_questions,
    fact_statements,
    fact_words,
    recall_items,
    scene_items,
)
from minivlm.eval import answer_hits, answer_prior, interval
from minivlm.losses import lm_loss
from minivlm.models.gpt import GPT, GPTConfig, fact_recall, lm_batches, lm_step, world_perplexity
from minivlm.nn.text import TextTransformer
from minivlm.train import fit, freeze
from minivlm.utils import count_parameters

minivlm.seed_everything(0)
chapter_start = time.perf_counter()
tok = Tokenizer.from_world()
print("torch threads:", torch.get_num_threads(), "| vocabulary:", len(tok), "words")

# %% [markdown]
# ## 1. World text: what the model reads
#
# Two kinds of documents. **Scene text**: a ShapesWorld scene's caption followed by questions
# about it and their answers, all in words; the model learns the course's language and learns to
# answer a question from what was said before it (later, an image will stand where the caption
# is). **World facts**: four families, each fact in several phrasings, as statements and as
# question–answer pairs.

# %%
corpus = WorldText(seed=0)
for doc in corpus.documents(6):
    print("•", doc)
families = {}
for fact in FACTS:
    families.setdefault(fact.family, []).append(fact)
for family, facts in families.items():
    examples = "; ".join(fact_statements(f)[0] for f in facts[:3])
    print(f"{family:12s} {len(facts):2d} facts, e.g. {examples}")

# %% [markdown]
# **Held-out phrasings.** A model that recalls "a triangle has three corners" might only have
# memorised that string. So every fact keeps two of its relation's question forms and one of its
# statement forms out of training, a different pair for each fact: the form itself is seen with
# *other* facts, the fact itself in *other* forms. Answering through a held-out form needs both:
# that is what we will call knowing the fact.

# %%
fact = next(f for f in FACTS if f.relation == "thing_shape" and f.subject == "a kite")
print("training forms:")
for text in fact_statements(fact, "train") + [q for q, _ in fact_questions(fact, "train")]:
    print("   ", text)
print("held out (never in any training document):")
for text in fact_statements(fact, "heldout") + [q for q, _ in fact_questions(fact, "heldout")]:
    print("   ", text)
train_docs = " ".join(corpus.documents(3000))
assert all(q not in train_docs for q, _ in fact_questions(fact, "heldout"))

# %% [markdown]
# And the guarantee that makes chapters 10–18 meaningful: **no image-text data states a fact.**
# The words that mark a fact (corners, wheel, mixed …) are words ShapesWorld's captions, VQA and
# every other image-text generator never emit (the test suite checks their outputs too).

# %%
marks = fact_words()
print(f"{len(marks)} words mark a fact, e.g. {sorted(marks)[:12]}")
assert not marks & set(ShapesWorld.vocabulary()), "an image-text generator can state a fact"

# %% [markdown]
# ## 2. The GPT: chapter 01's text Transformer, causal, with a tied head
#
# A GPT is the causal text Transformer of chapter 01 (token + position embeddings, pre-LN blocks,
# a final LayerNorm) with one more matrix product: the hidden state at position t times the
# transposed token-embedding table gives a score for every word as the token at t + 1. Using the
# embedding table as the output layer ("tying", GPT-2 does it) saves V × D weights and makes a
# word's input and output meaning one vector. Built inline, then checked against the library:

# %%
config = GPTConfig(dim=64, depth=2, heads=4)
model = GPT(config)
inline = TextTransformer(config.vocab_size, config.max_len, config.dim, config.depth, config.heads, causal=True,
                         act=config.act)
inline.load_state_dict(model.text.state_dict())
ids, mask = tok(["question: what colour is grass? answer: green."], add_bos=True)
logits_inline = inline(ids) @ inline.token_embedding.weight.t()  # (B, T, D) @ (D, V) -> (B, T, V)
print(f"|inline − library| = {(logits_inline - model(ids)).abs().max():.1e}; "
      f"{count_parameters(model):,} parameters, one {tuple(model.token_embedding.weight.shape)} table in and out")
assert torch.allclose(logits_inline, model(ids), atol=1e-5)
assert sum(1 for k in model.state_dict() if "token_embedding" in k) == 1  # tied: one copy

# %% [markdown]
# The loss: each position predicts the **next** token, so the logits at t are scored against
# the token at t + 1 (the inputs and targets are the same text, shifted by one), and padded
# positions are never targets (`minivlm.losses.lm_loss`, the same loss chapter 06's decoder used).

# %%
words = [tok.vocab[i] for i in ids[0].tolist()]
print("input  :", " ".join(f"{w:>8s}" for w in words[:9]))
print("target :", " ".join(f"{w:>8s}" for w in words[1:10]))
manual = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
assert torch.allclose(manual, lm_loss(model(ids), ids, mask))

# %% [markdown]
# ## 3. Pretraining, live
#
# 1,000 steps of 32 documents (about half facts, half scenes) for this small model. The zoo's
# `llm` is the same recipe at 4× the width and depth, trained 3,000 steps of 64 documents by
# `minivlm zoo build llm`.

# %%
minivlm.seed_everything(0)
model = GPT(config)
t0 = time.perf_counter()
live_steps = 1000
history = fit(model, lm_step, lm_batches(batch_size=32, max_len=config.max_len, seed=0), live_steps, lr=3e-3,
              warmup=50, weight_decay=0.1, desc="GPT (live)")
live_seconds = time.perf_counter() - t0
print(f"{live_seconds:.1f} s, {1000 * live_seconds / live_steps:.0f} ms per step; "
      f"final loss {history.last('loss'):.3f}")
history.plot(logy=True);

# %% [markdown]
# ## 4. The KV cache
#
# Generating token t + 1 needs attention from position t to every earlier position, so a naive
# loop runs the whole model again on all t tokens at every step: for a text of T tokens that is
# 1 + 2 + … + T ≈ T²/2 token passes. But the keys and values of the earlier tokens do not change
# when a token is added (the mask is causal). Keep them: each step then computes the new token's
# query, key and value only, appends the key and value to the cache, and attends over it. T
# passes of one token each.
#
# One attention step with a cache, written out and checked against full causal attention:

# %%
q, k, v = (torch.randn(1, 4, 6, 16) for _ in range(3))  # (B, heads, T, d): six tokens
causal = torch.ones(6, 6, dtype=torch.bool).tril()
full = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)  # all six rows at once
k_cache, v_cache = k[:, :, :5], v[:, :, :5]  # the five earlier tokens, cached
k_all = torch.cat([k_cache, k[:, :, 5:]], dim=2)  # append the new key on the time axis (2)
v_all = torch.cat([v_cache, v[:, :, 5:]], dim=2)
weights = (q[:, :, 5:] @ k_all.transpose(-2, -1) / 16 ** 0.5).softmax(-1)  # (B, H, 1, 6): no mask needed
step = weights @ v_all
print(f"|cached step − row 6 of full attention| = {(step - full[:, :, 5:]).abs().max():.1e}")
assert torch.allclose(step, full[:, :, 5:], atol=1e-6)

# %% [markdown]
# In the model, `GPT.generate` keeps a `KVCache` (one per block) behind chapter 06's `generate`:
# the first call runs the prompt, every later call only the new token. Same tokens, with and
# without the cache:

# %%
llm = zoo.load("llm")
llm_manifest = zoo.manifest("llm")
prompt = torch.tensor([[tok.bos_id] + tok.encode("two shapes: a red circle and")] * 4)
with_cache = llm.generate(prompt, 30, use_cache=True, do_sample=True, top_p=0.9,
                          generator=torch.Generator().manual_seed(1))
without = llm.generate(prompt, 30, use_cache=False, do_sample=True, top_p=0.9,
                       generator=torch.Generator().manual_seed(1))
print("identical tokens:", torch.equal(with_cache, without))
for row in with_cache:
    print("   ", tok.decode(row))
assert torch.equal(with_cache, without)

# %% [markdown]
# How much it saves: tokens per second for one text, generating up to the context's 64 tokens,
# with and without the cache (zoo model, greedy; each figure the best of 5 runs).

# %%
def tokens_per_second(n_new, use_cache, repeats=5):
    start = torch.tensor([[tok.bos_id]])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        llm.generate(start, n_new, use_cache=use_cache, eos_id=tok.pad_id)  # pad never comes: exactly n_new
        best = min(best, time.perf_counter() - t)
    return n_new / best


lengths = [8, 16, 32, 63]
speed = {name: [tokens_per_second(n, use) for n in lengths] for name, use in (("cache", True), ("no cache", False))}
fig, ax = viz.plt.subplots(figsize=(5, 3))
for name, values in speed.items():
    ax.plot(lengths, values, "o-", label=name)
ax.set_xlabel("tokens generated"), ax.set_ylabel("tokens / s"), ax.legend()
ax.set_title("decoding speed of the zoo llm, one text")
for n, a, b in zip(lengths, speed["cache"], speed["no cache"]):
    print(f"{n:3d} tokens: {a:6.0f} tok/s with the cache, {b:6.0f} without ({a / b:.1f}×)")
assert speed["cache"][-1] > speed["no cache"][-1], "the cache must be faster on long texts"

# %% [markdown]
# ## 5. Sampling
#
# Chapter 06's strategies, on the zoo model, from one prompt: greedy (always the most likely
# word: one answer, the same every time), temperature (divide the logits: < 1 sharper, > 1
# flatter), top-k (sample among the k most likely), top-p (among the smallest set holding
# probability p).

# %%
prompt = torch.tensor([[tok.bos_id] + tok.encode("a small")] * 3)
strategies = {
    "greedy": {},
    "temperature 1.5": dict(do_sample=True, temperature=1.5),
    "temperature 0.7": dict(do_sample=True, temperature=0.7),
    "top-k 5": dict(do_sample=True, top_k=5),
    "top-p 0.9": dict(do_sample=True, top_p=0.9),
}
for name, decoding in strategies.items():
    out = llm.generate(prompt, 24, generator=torch.Generator().manual_seed(0), **decoding)
    print(f"{name}:")
    for row in out:
        print("   ", tok.decode(row))

# %% [markdown]
# ## 6. What the models know
#
# **Perplexity** on held-out world text (scene documents from the test split, facts in their
# held-out phrasings): exp of the mean next-token loss, the number of words the model is, on
# average, as unsure between as if choosing uniformly. A model that knows nothing has 603 (the
# vocabulary); one that is always right and sure, 1. Beside it, the perplexity on fresh
# documents in the *training* phrasings: the gap between the two is what the phrasing costs.
#
# **Fact recall**: every fact asked in its held-out forms ("question: … answer:" and statements
# cut before the answer), greedy, a hit when the words before the first "." are exactly the
# answer. The chance baseline for each family: always giving that family's most frequent answer
# in training.

# %%
heldout_docs = WorldText(seed=1234, split="heldout").documents(500)
train_docs = WorldText(seed=1234, split="train").documents(500)  # fresh documents, training phrasings
items = recall_items("heldout")
train_items = recall_items("train")
prior = answer_prior([it.answer for it in train_items], [it.family for it in train_items])
chance = {}
for family, guess in prior.items():
    answers = [it.answer for it in items if it.family == family]
    chance[family] = interval(answer_hits([guess] * len(answers), answers))
results = {}
for name, m in (("live GPT", model), ("zoo llm", llm)):
    results[name] = {"ppl": world_perplexity(m, heldout_docs), "ppl_train": world_perplexity(m, train_docs),
                     "recall": fact_recall(m, items), "params": count_parameters(m)}
print(f"{len(items)} held-out questions about {len(FACTS)} facts; perplexity on {len(heldout_docs)} held-out documents\n")
print(f"{'':24s}" + "".join(f"{n:>32s}" for n in results) + f"{'chance':>30s}")
print(f"{'parameters':24s}" + "".join(f"{r['params']:>32,}" for r in results.values()))
print(f"{'perplexity, held out':24s}" + "".join(f"{r['ppl'].format(False):>32s}" for r in results.values())
      + f"{603:>30d}")
print(f"{'perplexity, train forms':24s}" + "".join(f"{r['ppl_train'].format(False):>32s}" for r in results.values()))
print(f"{'recall, all':24s}" + "".join(f"{r['recall']['accuracy'].format():>32s}" for r in results.values()))
for f in sorted(prior):
    print(f"{'recall, ' + f:24s}" + "".join(f"{r['recall']['per_family'][f].format():>32s}" for r in results.values())
          + f"{chance[f].format():>30s}")

# %%
names = sorted(prior)
viz.plot_estimates({**{n: results[n]["recall"]["per_family"] for n in results}, "chance": chance},
                   title="facts recalled through phrasings never trained on", ylabel="held-out recall (%)");

# %% [markdown]
# What the misses look like (zoo model first, then the live one):

# %%
for name in ("zoo llm", "live GPT"):
    r = results[name]["recall"]
    misses = [(it, p) for it, p, h in zip(items, r["predictions"], r["hits"]) if not h]
    print(f"{name}: {len(misses)} misses")
    for it, p in misses[:6]:
        print(f"    {it.prompt!r} -> {p!r} (answer: {it.answer!r})")

zoo_recall, live_recall = results["zoo llm"]["recall"]["accuracy"], results["live GPT"]["recall"]["accuracy"]
assert zoo_recall.value >= 0.90, f"the zoo llm must recall >= 90 % of facts in held-out phrasings, got {zoo_recall}"
assert all(results["zoo llm"]["recall"]["per_family"][f].low > chance[f].high for f in names)
assert live_recall.low > max(c.high for c in chance.values()), "the live model must beat every family's chance"
assert max(r["ppl"].value for r in results.values()) < 603
# the larger model fits the training phrasings better than the live one ...
assert results["zoo llm"]["ppl_train"].high < results["live GPT"]["ppl_train"].low
# ... and, for both, a phrasing never seen costs perplexity even where the fact is recalled
assert all(r["ppl_train"].high < r["ppl"].low for r in results.values())

# %% [markdown]
# The zoo manifest's figures, measured by the build on the same kind of sets (eval seed 1234),
# must agree with what this run measured from the loaded weights:

# %%
shipped = llm_manifest["metrics"]
print(f"build: recall {shipped['recall_heldout']['value']:.3f}, perplexity {shipped['perplexity_heldout']['value']:.3f}"
      f" | this run: recall {zoo_recall.value:.3f}, perplexity {results['zoo llm']['ppl'].value:.3f}")
assert abs(shipped["recall_heldout"]["value"] - zoo_recall.value) < 0.02

# %% [markdown]
# ## 7. A preview of chapters 10–18: a question about a scene, in words
#
# The scene documents taught the model to answer from a caption. Chapter 14 will ask "how many
# corners does the red object have?" about an **image**: the shape comes from the image, the
# corners from the language model. Here the caption plays the image's part, and the same
# question without any caption is the baseline: the model alone can only guess which shape is
# red.

# %%
scene_qs = scene_items(600, seed=1234)
with_caption = fact_recall(llm, scene_qs)
blind = [dataclasses.replace(it, prompt=it.prompt[it.prompt.index("question: "):]) for it in scene_qs]  # no caption
without_caption = fact_recall(llm, blind)
for family in ("vqa", "knowledge"):
    print(f"{family:9s}: with the caption {with_caption['per_family'][family]}, "
          f"without {without_caption['per_family'][family]}")
print("e.g.", scene_qs[1].prompt, "->", with_caption["predictions"][1])
assert with_caption["per_family"]["knowledge"].low > without_caption["per_family"]["knowledge"].high

# %% [markdown]
# ## 8. Frozen
#
# From chapter 10 on, the language model is **frozen**: `freeze` turns its gradients off and
# keeps it in eval mode. A bridge then learns to write embeddings the frozen model reads. The
# smallest bridge there is: one linear layer turning a (here random) 64-number image feature into
# four "word" embeddings placed before a caption, passed to the model as `inputs_embeds`. One
# training step moves the bridge and leaves every weight of the LLM bit-identical.

# %%
frozen = freeze(zoo.load("llm"))
before = {k: v.clone() for k, v in frozen.state_dict().items()}
bridge = torch.nn.Linear(64, 4 * frozen.config.dim)
opt = torch.optim.AdamW(bridge.parameters(), lr=1e-2)
caption_ids, caption_mask = tok(["a red circle."] * 8, add_bos=True)
image_features = torch.randn(8, 64)
prefix = bridge(image_features).view(8, 4, frozen.config.dim)  # (B, 4, D): four image "words"
embeds = torch.cat([prefix, frozen.embed(caption_ids)], dim=1)  # (B, 4 + T, D)
logits = frozen(inputs_embeds=embeds)[:, 4:]  # the caption's positions
loss = lm_loss(logits, caption_ids, caption_mask)
loss.backward()
bridge_before = bridge.weight.detach().clone()
opt.step()
same = all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
print(f"loss {loss.item():.3f}; LLM weights bit-identical: {same}; LLM grads: "
      f"{ {p.grad for p in frozen.parameters()} }; bridge moved: {not torch.equal(bridge_before, bridge.weight)}")
assert same and all(p.grad is None for p in frozen.parameters())
assert not torch.equal(bridge_before, bridge.weight)

# %%
chapter_seconds = time.perf_counter() - chapter_start
print(f"chapter run time: {chapter_seconds:.1f} s")

# %% [markdown]
# ## What we saw
#
# Figures from the stored run (2-core CPU); the live model's may move a little on another CPU,
# the zoo model's are those of its manifest.
#
# * **Facts known, not memorised strings.** The zoo `llm` answers all 160 held-out items (126
#   questions, 34 clozes; 100 %, interval 97.7–100) in phrasings it never read, every family far
#   above its chance baseline (8.8–47.2 %). The live model, 6× smaller and trained 27 s, reaches
#   89.4 % [83.6, 93.3]; its misses are the shape and mixing facts, and they are the frequent
#   answer ("four" corners for a circle, a triangle, a star): the size of a model buys facts.
# * **Perplexity measures phrasing, recall measures knowledge.** On fresh documents in the
#   training phrasings the zoo model is sharper than the live one (1.71 vs 1.86); on the held-out
#   phrasings it is *less* sure (2.05 vs 1.97) while recalling every fact. A larger model fits
#   the exact wording it read more tightly, and pays for that on wording it did not. Ranked by
#   held-out perplexity alone, the small model would look better.
# * **The cache changes nothing but the time.** Cached and uncached sampling give identical
#   tokens; at this size (0.9 M parameters, one text) the cache is 1.3–1.9× faster in this run:
#   the per-token Python overhead is as large as the attention it saves. The saving grows with the
#   length and with the model.
# * **What the bridges must reach.** Asked about a scene in words, the zoo model answers 79.7 %
#   of VQA questions and 97.0 % of knowledge questions ("how many corners does the orange object
#   have?") with the caption before the question, 42.3 % and 26.3 % without. From chapter 10 on an
#   image takes the caption's place: the second pair of numbers is the floor, the first roughly
#   the ceiling.
# * **Frozen means frozen.** A bridge's training step leaves all 878,720 LLM weights
#   bit-identical and gives none of them a gradient.
#
# **Exercises:** `exercises/09_llm.ipynb` — the shifted LM loss that ignores padding, one
# attention step with a KV cache, and perplexity from token log-probabilities; `minivlm check
# exercises/09_llm.ipynb` tells you what is wrong.
#
# **References.** Radford et al., *GPT-2* (2019) and *GPT* (2018); Karpathy, nanoGPT; Pope et
# al., *Efficiently Scaling Transformer Inference* (2022); Holtzman et al., *The Curious Case of
# Neural Text Degeneration* (ICLR 2020); Fan, Lewis and Dauphin, *Hierarchical Neural Story
# Generation* (ACL 2018, top-k).
