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
# Learners* (GPT-2, 2019); Touvron et al., *LLaMA: Open and Efficient Foundation Language Models*
# (2023); Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding* (2021);
# Zhang and Sennrich, *Root Mean Square Layer Normalization* (2019); Shazeer, *GLU Variants
# Improve Transformer* (2020); Pope et al., *Efficiently Scaling Transformer Inference* (2022)
# for the KV cache; Holtzman et al., *The Curious Case of Neural Text Degeneration* (ICLR 2020)
# for nucleus sampling; Brown et al., *Language Models are Few-Shot Learners* (GPT-3, 2020) for
# in-context learning.
#
# Chapters 10–18 (Frozen, Flamingo, BLIP-2, LLaVA …) all do the same thing: take a **pretrained
# language model, freeze it**, and teach a small bridge to feed it an image. What the language
# model brings is what no image-text pair states (that a triangle has three corners, that red
# and blue mixed make purple), and the skills a prompt needs: reading a chat turn, following
# "answer with one word", answering from what the context says, and learning a task from a few
# examples in the prompt (Flamingo's few-shot claim, chapter 11). So before any bridge, we need
# that language model, and we need to know what it can do.
#
# This chapter builds it in the layout of the LLMs under LLaVA-1.5, InstructBLIP, Qwen-VL and
# CogVLM (Llama's: RMSNorm, rotary positions, SwiGLU, no biases), walking there from GPT-2 one
# change at a time; trains it on ShapesWorld's world text packed into 256-token rows; builds the
# KV cache and batched generation; and measures what it knows and what it reads from its context.
#
# | piece | library |
# |---|---|
# | world text: scenes, facts, held-out phrasings, chat turns, counterfactuals | `minivlm/data/worldtext.py` |
# | in-context episodes and k-shot test items | `minivlm/data/incontext.py` |
# | the mixture, packed into full-context rows | `minivlm/data/corpus.py` |
# | the GPT in GPT-2's or Llama's layout; `from_hf` for both | `minivlm/models/gpt.py` |
# | RMSNorm, SwiGLU; rotary positions; the KV cache | `minivlm/nn/blocks.py`, `minivlm/nn/rope.py`, `minivlm/nn/attention.py` |
# | decoding: greedy, beam, temperature, top-k, top-p, left-padded batches | `minivlm/generate.py` (chapter 06) |
# | the trained model the later chapters load | `minivlm/zoo` (`"llm"`) |

# %%
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

import minivlm
from minivlm import viz, zoo
from minivlm.data import ShapesWorld, Tokenizer
from minivlm.data.corpus import MIXTURE, Corpus, pack, packed_batches
from minivlm.data.incontext import HELDOUT_TEMPLATES, TRAIN_CUE_WORDS, Episodes, kshot_items
from minivlm.data.worldtext import (
    FACTS,
    WorldText,
    chat_items,
    counterfactual_items,
    fact_questions,
    fact_statements,
    fact_words,
    recall_items,
    scene_items,
)
from minivlm.eval import answer_hits, answer_prior, interval
from minivlm.losses import lm_loss
from minivlm.models.gpt import GPT, GPTConfig, fact_recall, kshot_figures, lm_step, world_perplexity
from minivlm.nn.blocks import GatedMLP, RMSNorm
from minivlm.nn.rope import RotaryEmbedding, apply_rotary
from minivlm.nn.text import TextTransformer
from minivlm.train import fit
from minivlm.utils import freeze
from minivlm.utils import count_parameters

minivlm.seed_everything(0)
chapter_start = time.perf_counter()
tok = Tokenizer.from_world()
llm = zoo.load("llm")
llm_manifest = zoo.manifest("llm")
print("torch threads:", torch.get_num_threads(), "| vocabulary:", len(tok), "words")

# %% [markdown]
# ## 1. World text: what the model reads
#
# Seven kinds of documents, mixed in fixed proportions:
#
# * **scene**: a ShapesWorld scene's caption, then questions about it and their answers, in words
#   (later an image will stand where the caption is);
# * **facts**: four families of world facts, each in several phrasings, as statements and as
#   question–answer pairs;
# * **chat**: the same kind of question as a chat turn in the vocabulary's chat template
#   (`<im_start> <user> … <im_end> <im_start> <assistant> …`), the format chapters 13–14 prompt
#   with, often with an instruction on the answer's form ("answer with one word");
# * **counterfactual**: a statement in the context that contradicts a world fact, then a
#   question answered from the context ("a square has three corners. … answer: three");
# * three kinds of **in-context episodes**, each several units of one task in one document, the
#   shape of Flamingo's interleaved few-shot prompts in text: an **attribute** rule shown only by
#   its demonstrations (object → its colour, or its size …: the query never says which),
#   **key-value** retrieval with nonce keys (the `<extra_*>` tokens, a new meaning every episode),
#   and nonce **binding** ("a `<extra_3>` is a small red star. … what color is the `<extra_3>`?").

# %%
corpus = Corpus(seed=0)
for kind in MIXTURE:
    print(f"{kind:14s} {MIXTURE[kind]:.2f}  {corpus.document(kind)[:150]}")

# %% [markdown]
# **Packing.** Documents are short (20–120 tokens) and the context is 256: each training row
# holds several whole documents end to end, each between `<bos>` and `<eos>`, so no position is
# wasted on padding. The model attends across document boundaries; it learns that `<bos>` starts
# afresh.

# %%
docs = [tok.encode(d, add_bos=True, add_eos=True) for d in corpus.documents(64)]
rows, row_mask, used = pack(docs, 4, 256, tok.pad_id)
starts = (rows == tok.bos_id).sum(1).tolist()
print(f"{used} documents in 4 rows of 256; documents per row {starts}; "
      f"padding {100 * (1 - row_mask.float().mean()):.1f} % of positions")
print("row 0 begins:", tok.decode(rows[0, :60]))

# %% [markdown]
# How much of the vocabulary the corpus trains (the tokenizer is the course's, shared by every
# zoo model, so it keeps words the text never uses), counted over 100 packed batches here, and
# over the whole build in the manifest:

# %%
batches = packed_batches(32, 256, seed=0)
seen, tokens = set(), 0
for i in range(100):
    b = batches(i)
    real = b["ids"][b["attention_mask"]]
    seen.update(real.unique().tolist())
    tokens += real.numel()
print(f"100 batches: {tokens:,} real tokens, {len(seen)} of {len(tok)} vocabulary ids; the build: "
      f"{llm_manifest['tokens_trained']:,} tokens, {llm_manifest['vocabulary_trained']} ids")
chat_ids = {tok.vocab.index(w) for w in ('<im_start>', '<user>', '<assistant>', '<im_end>')}
assert chat_ids <= seen and len(seen) > 138  # the chat tokens are trained; 138 ids in the old corpus

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
train_text = " ".join(corpus.documents(3000))
assert all(q not in train_text for q, _ in fact_questions(fact, "heldout"))

# %% [markdown]
# **Held-out templates.** The same for the episodes: a training episode draws its template per
# episode (a cue word before the content, one between content and answer, a separator) from about
# forty cue words and three separators, so no cue string can be memorised. The k-shot tests use
# templates whose cue words and separators never appear in that role in training:

# %%
ep = Episodes(seed=3)
print("training:", ep.attribute(3))
for t in HELDOUT_TEMPLATES[:3]:
    print("held out:", " ".join(t.unit(f"a big {c} star", c) for c in ("red", "blue")))
held_cues = {w for t in HELDOUT_TEMPLATES for w in (t.before + " " + t.between).split() if w != ":"}
assert not held_cues & set(TRAIN_CUE_WORDS)

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
# ## 3. From GPT-2 to Llama, one change at a time
#
# The LLMs under today's VLMs keep GPT-2's skeleton (pre-norm blocks, causal attention, an MLP)
# and change four parts. Each is one option of `GPTConfig` (`GPTConfig.llama()` turns on all of
# them), and each is written out here and checked against the library's.
#
# **RMSNorm** (Zhang and Sennrich, 2019): LayerNorm without subtracting the mean and without a
# bias, x / √(mean(x²) + ε) · w. One reduction instead of two.

# %%
x = torch.randn(2, 5, 64) * 3 + 1
w = torch.randn(64)
norm = RMSNorm(64, eps=1e-6)
norm.weight.data.copy_(w)
rms_inline = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w
print(f"|inline − library| = {(rms_inline - norm(x)).abs().max():.1e}; "
      f"mean of a LayerNorm output {F.layer_norm(x, (64,)).mean():.2f}, of an RMSNorm output {norm(x).mean():.2f}")
assert torch.allclose(rms_inline, norm(x), atol=1e-5)

# %% [markdown]
# **SwiGLU** (Shazeer, 2020): the MLP's hidden layer becomes a gate times a value,
# down(silu(gate(x)) · up(x)). Three matrices instead of two, so the hidden width is cut to
# about 2/3 of 4·dim to keep the parameter count.

# %%
glu = GatedMLP(64, 176, act="silu", bias=False)
swiglu_inline = F.silu(x @ glu.gate_proj.weight.t()) * (x @ glu.up_proj.weight.t()) @ glu.down_proj.weight.t()
print(f"|inline − library| = {(swiglu_inline - glu(x)).abs().max():.1e}; "
      f"{count_parameters(glu):,} weights vs {2 * 64 * 256:,} in GPT-2's 4·dim MLP (no biases)")
assert torch.allclose(swiglu_inline, glu(x), atol=1e-5)

# %% [markdown]
# **Rotary positions** (RoPE, Su et al. 2021). GPT-2 adds a learned vector per position to the
# input, from a table with one row per position: 256 rows, and a 257th token has nowhere to go.
# RoPE has no table: inside attention it rotates each query and key, pair of channels by pair of
# channels, by an angle proportional to the token's position, p·θᵢ with θᵢ = base^(−2i/d) (fast
# turns for the first pairs, slow ones for the last). Two rotations by p·θ and s·θ leave a dot
# product that depends on p − s only: attention sees relative positions. Llama pairs channel j
# with channel j + d/2 ("rotate half"):

# %%
d = 16
q = torch.randn(1, 1, 6, d)  # (B, heads, T, head_dim)
positions = torch.arange(6)[None]  # (B, T)
theta = 10000.0 ** (-torch.arange(0, d, 2) / d)  # (d/2,) one frequency per pair
angle = positions[0, :, None] * theta  # (T, d/2)
a, b = q[..., : d // 2], q[..., d // 2:]  # the pairs: channel j with j + d/2
rope_inline = torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], dim=-1)
cos, sin = RotaryEmbedding(d)(positions)
print(f"|inline − library| = {(rope_inline - apply_rotary(q, cos, sin)).abs().max():.1e}")
assert torch.allclose(rope_inline, apply_rotary(q, cos, sin), atol=1e-5)

# %% [markdown]
# **No biases**: every linear of attention and the MLP loses its bias (Llama's choice; the norms
# keep their weights). That is the whole walk. The zoo build trained each step of it (a
# 0.9 M-parameter model, 400 steps of 16 packed rows, the same data and steps for every arm,
# three seeds each) and measured perplexity on held-out world text:

# %%
arms = llm_manifest["arms"]
names = list(arms)
ppl = {n: [row["perplexity_heldout"]["value"] for row in arms[n]] for n in names}
for n in names:
    row = arms[n][0]
    print(f"{n:18s} perplexity per seed {', '.join(f'{v:.3f}' for v in ppl[n])} (mean {np.mean(ppl[n]):.3f}); "
          f"{row['parameters']:,} parameters, {row['ms_per_step']:.0f} ms/step")
fig, ax = viz.plt.subplots(figsize=(6, 3))
for i, n in enumerate(names):
    for row in arms[n]:
        e = row["perplexity_heldout"]
        ax.errorbar(i + 0.1 * (row["seed"] - 1), e["value"], yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]],
                    fmt="o", color="C0", capsize=3)
ax.set_xticks(range(len(names)), names, rotation=15)
ax.set_ylabel("held-out perplexity"), ax.set_xlabel("change added (cumulative)")
ax.set_title("GPT-2 → Llama, equal steps and data: each seed, 95 %", fontsize=10);
# RoPE is the change whose effect is outside the noise: every seed of "+rope" below every seed before it
assert max(ppl["+rope"]) < min(ppl["gpt2"] + ppl["+rmsnorm"])

# %% [markdown]
# ## 4. Pretraining, live
#
# A small model in the Llama layout, 300 steps of 8 packed rows of 256 tokens. The zoo's `llm`
# is the same recipe at a larger size (its config below), trained by `minivlm zoo build llm`:
# 2,200 steps of 32 rows, the first 1,000 on a retrieval-heavy mixture (key-value and binding
# episodes 55 % of the documents instead of 30 %), because in trial runs on the plain mixture
# reading a value from the context had not formed after 1,200 steps.

# %%
minivlm.seed_everything(0)
live_config = GPTConfig.llama(max_len=256, dim=64, depth=2, heads=4)
model = GPT(live_config)
live_steps = 300
t0 = time.perf_counter()
history = fit(model, lm_step, packed_batches(8, 256, seed=0), live_steps, lr=3e-3, warmup=30, weight_decay=0.1,
              desc="GPT, Llama layout (live)")
live_seconds = time.perf_counter() - t0
print(f"{live_seconds:.1f} s, {1000 * live_seconds / live_steps:.0f} ms per step, "
      f"{live_steps * 8 * 256:,} token positions; final loss {history.last('loss'):.3f}")
zoo_cfg = llm.config
print(f"zoo llm: dim {zoo_cfg.dim}, depth {zoo_cfg.depth}, heads {zoo_cfg.heads}, context {zoo_cfg.max_len}, "
      f"{count_parameters(llm):,} parameters, {llm_manifest['steps']:,} steps of 32 rows, "
      f"trained {llm_manifest['train_seconds'] / 60:.1f} min")
history.plot(logy=True);

# %% [markdown]
# ## 5. The KV cache
#
# Generating token t + 1 needs attention from position t to every earlier position, so a naive
# loop runs the whole model again on all t tokens at every step: for a text of T tokens that is
# 1 + 2 + … + T ≈ T²/2 token passes. But the keys and values of the earlier tokens do not change
# when a token is added (the mask is causal). Keep them: each step then computes the new token's
# query, key and value only, appends the key and value to the cache, and attends over it. T
# passes of one token each. (With RoPE the cached keys are stored already rotated: a key's
# rotation depends on its own position only.)
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
# How much it saves: tokens per second for one text, generating up to the context's 256 tokens,
# with and without the cache (zoo model, greedy; each figure the best of 3 runs).

# %%
def tokens_per_second(n_new, use_cache, repeats=3):
    start = torch.tensor([[tok.bos_id]])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        llm.generate(start, n_new, use_cache=use_cache, eos_id=tok.pad_id)  # pad never comes: exactly n_new
        best = min(best, time.perf_counter() - t)
    return n_new / best


lengths = [16, 64, 128, 255]
speed = {name: [tokens_per_second(n, use) for n in lengths] for name, use in (("cache", True), ("no cache", False))}
fig, ax = viz.plt.subplots(figsize=(5, 3))
for name, values in speed.items():
    ax.plot(lengths, values, "o-", label=name)
ax.set_xlabel("tokens generated"), ax.set_ylabel("tokens / s"), ax.legend(loc="center right")
ax.set_title("decoding speed of the zoo llm, one text")
ratios = [a / b for a, b in zip(speed["cache"], speed["no cache"])]
for n, a, b, r in zip(lengths, speed["cache"], speed["no cache"], ratios):
    print(f"{n:3d} tokens: {a:6.0f} tok/s with the cache, {b:6.0f} without ({r:.1f}×)")
assert speed["cache"][-1] > speed["no cache"][-1], "the cache must be faster on long texts"

# %% [markdown]
# **Batched generation with left padding.** A batch of prompts of different lengths is one
# tensor: the short ones are padded. Padding on the right would put pads between a prompt and its
# continuation, so generation pads on the *left*, and then two things must hold: the pads are
# never attended to, and each row's positions count from its own first real token (a row's
# rotary angles must not depend on how long its neighbours are). `complete` decodes all its
# prompts as one left-padded batch; here it is checked against one prompt at a time:

# %%
prompts = [it.prompt for it in chat_items(6, seed=7)] + ["a kite has the shape of", "question: what color is the sky?"]
batched = llm.complete(prompts, max_new_tokens=8, stop=None)
one_by_one = [llm.complete([p], max_new_tokens=8, stop=None)[0] for p in prompts]
lengths_in_batch = [len(tok.encode(p)) + 1 for p in prompts]
print(f"prompt lengths {lengths_in_batch}: batched == one by one for {sum(map(str.__eq__, batched, one_by_one))} "
      f"of {len(prompts)}")
for p, a in list(zip(prompts, batched))[-3:]:
    print(f"    …{p[-50:]!r} -> {a!r}")
assert batched == one_by_one

# %% [markdown]
# ## 6. Sampling
#
# Chapter 06's strategies: greedy (always the most likely word: one answer, the same every
# time), temperature (divide the logits: < 1 sharper, > 1 flatter), top-k (sample among the k
# most likely), top-p (among the smallest set holding probability p). On a prompt whose answer
# is fixed ("a kite has the shape of") the model is so sure that every strategy gives the same
# text; they differ where the model is unsure. So pick the prompts by the entropy of the next
# word, then draw four samples each:

# %%
candidates = ["", "a small", "there are", "<im_start> <user>", "a kite has the shape of", "the sky"]
with torch.no_grad():
    entropy = {}
    for p in candidates:
        logp = llm(torch.tensor([[tok.bos_id] + tok.encode(p)]))[0, -1].log_softmax(-1)
        entropy[p] = float(-(logp.exp() * logp).sum())
for p, h in sorted(entropy.items(), key=lambda kv: -kv[1]):
    print(f"    next-word entropy {h:.2f} nats after {p!r}")
strategies = {"greedy": {}, "temperature 1.5": dict(do_sample=True, temperature=1.5),
              "temperature 0.7": dict(do_sample=True, temperature=0.7), "top-k 5": dict(do_sample=True, top_k=5),
              "top-p 0.9": dict(do_sample=True, top_p=0.9)}
distinct = {}
for p in (max(entropy, key=entropy.get), min(entropy, key=entropy.get)):
    print(f"\nprompt {p!r}:")
    ids = torch.tensor([[tok.bos_id] + tok.encode(p)] * 4)
    for name, decoding in strategies.items():
        out = [tok.decode(r[ids.shape[1]:]) for r in llm.generate(ids, 14, generator=torch.Generator().manual_seed(0),
                                                                  **decoding)]
        distinct[p, name] = len(set(out))
        print(f"  {name:16s} {len(set(out))} distinct of 4: {out[0]!r}")
top = max(entropy, key=entropy.get)
assert distinct[top, "greedy"] == 1 and distinct[top, "temperature 1.5"] > 1

# %% [markdown]
# ## 7. What the models know
#
# **Perplexity** on held-out world text (scene documents from the test split, facts in their
# held-out phrasings): exp of the mean next-token loss, the number of words the model is, on
# average, as unsure between as if choosing uniformly. A model that knows nothing has 603 (the
# vocabulary); one that is always right and sure, 1. Beside it, the perplexity on fresh
# documents in the *training* phrasings: the gap between the two is what the phrasing costs.
#
# **Fact recall**: every fact asked in its held-out forms ("question: … answer:" and statements
# cut before the answer), greedy, a hit when the words before the first "." are exactly the
# answer. The trivial baseline for each family: always giving that family's most frequent answer
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
print(f"{'':24s}" + "".join(f"{n:>32s}" for n in results) + f"{'most frequent answer':>30s}")
print(f"{'parameters':24s}" + "".join(f"{r['params']:>32,}" for r in results.values()))
print(f"{'perplexity, held out':24s}" + "".join(f"{r['ppl'].format(False):>32s}" for r in results.values())
      + f"{603:>30d}")
print(f"{'perplexity, train forms':24s}" + "".join(f"{r['ppl_train'].format(False):>32s}" for r in results.values()))
print(f"{'recall, all':24s}" + "".join(f"{r['recall']['accuracy'].format():>32s}" for r in results.values()))
for f in sorted(prior):
    print(f"{'recall, ' + f:24s}" + "".join(f"{r['recall']['per_family'][f].format():>32s}" for r in results.values())
          + f"{chance[f].format():>30s}")

# %%
viz.plot_estimates({**{n: results[n]["recall"]["per_family"] for n in results}, "most frequent answer": chance},
                   title="facts recalled through phrasings never trained on", ylabel="held-out recall (%)");

# %% [markdown]
# What the misses look like (zoo model first, then the live one):

# %%
for name in ("zoo llm", "live GPT"):
    r = results[name]["recall"]
    misses = [(it, p) for it, p, h in zip(items, r["predictions"], r["hits"]) if not h]
    print(f"{name}: {len(misses)} misses")
    for it, p in misses[:5]:
        print(f"    {it.prompt!r} -> {p!r} (answer: {it.answer!r})")

zoo_recall = results["zoo llm"]["recall"]["accuracy"]
assert zoo_recall.value >= 0.95, f"the zoo llm must recall >= 95 % of facts in held-out phrasings, got {zoo_recall}"
assert all(results["zoo llm"]["recall"]["per_family"][f].low > chance[f].high for f in prior)
assert max(r["ppl"].value for r in results.values()) < 603 / 10
# a phrasing never seen costs the zoo model perplexity even where it recalls the fact
assert results["zoo llm"]["ppl_train"].high < results["zoo llm"]["ppl"].low

# %% [markdown]
# The zoo manifest's figures, measured by the build on the same sets (eval seed 1234), must
# agree with what this run measured from the loaded weights:

# %%
shipped = llm_manifest["metrics"]
print(f"build: recall {shipped['recall_heldout']['value']:.3f}, perplexity {shipped['perplexity_heldout']['value']:.3f}"
      f" | this run: recall {zoo_recall.value:.3f}, perplexity {results['zoo llm']['ppl'].value:.3f}")
assert abs(shipped["recall_heldout"]["value"] - zoo_recall.value) < 0.02

# %% [markdown]
# ## 8. Reading from the context
#
# Chapters 10–18 put an image (or its caption) in the context and ask about it. That needs a
# model that answers from what the context says, even where the context contradicts what it
# knows. Three tests on the zoo model, each on items it never trained on:
#
# * **counterfactual**: a statement that contradicts a world fact, among true ones, then the
#   question, in held-out fact phrasings ("the number of corners of a square is three. …
#   question: a square has how many corners?"); a hit is the context's answer, and we count
#   how often the model answers from memory instead;
# * **chat**: a scene description and a question as a chat turn with a format instruction;
# * **scene**: the caption and a question in the plain format, and, as its baseline, the same
#   question without the caption (the model alone can only guess which shape is red).

# %%
counter = counterfactual_items(400, seed=1234)
cf = fact_recall(llm, counter)
from_memory = interval([p == it.fact.answer for p, it in zip(cf["predictions"], counter)])
chat = chat_items(400, seed=1234)
ch = fact_recall(llm, chat)
scene_qs = scene_items(600, seed=1234)
with_caption = fact_recall(llm, scene_qs)
blind = [dataclasses.replace(it, prompt=it.prompt[it.prompt.index("question: "):]) for it in scene_qs]  # no caption
without_caption = fact_recall(llm, blind)
print(f"counterfactual: answered from the context {cf['accuracy']}, from memory {from_memory}")
print(f"chat          : {ch['accuracy']} (per kind: "
      + ", ".join(f"{k} {e.format()}" for k, e in ch["per_family"].items()) + ")")
for family in ("vqa", "knowledge"):
    print(f"scene {family:9s}: with the caption {with_caption['per_family'][family]}, "
          f"without {without_caption['per_family'][family]}")
print("\ne.g.", counter[0].prompt, "->", cf["predictions"][0])
print("e.g.", chat[0].prompt, "->", ch["predictions"][0])
assert cf["accuracy"].value >= 0.90 and ch["accuracy"].value >= 0.90
assert with_caption["per_family"]["knowledge"].low > without_caption["per_family"]["knowledge"].high

# %% [markdown]
# ## 9. Learning from examples in the prompt
#
# Flamingo's headline (chapter 11) is a k-shot curve: give the model k solved examples before the
# question and its accuracy rises with k, without any weight changing. For that to mean anything
# the shots must be *needed* and *able* to help, so each test is built that way:
#
# * **attribute**: each unit puts an object right before its answer ("a big red star → red"), the
#   way Flamingo puts an image before its text; which attribute is asked (colour, shape, size,
#   number of corners) is shown only by the demonstrations, so at k = 0 the model can only guess
#   the rule (a quarter of the time at best);
# * **key-value**: k nonce keys with a value each, then one key again: the value is in the
#   context and nowhere else;
# * **binding**: k nonce definitions ("a `<extra_7>` is a small blue star."), then a question
#   about one of them;
# * **count** (a rule family the corpus never trains): objects → how many there are.
#
# Every test uses fresh objects and nonce words; attribute and key-value use held-out templates
# (cue words and separators never in training), and key-value is also asked in training
# templates ("held in"): that is retrieval alone, without a new format. Beside exact answers,
# **answer type**: the answer is of the right kind (a colour for a colour rule), which a model can
# get from the format without the rule.

# %%
N_SHOTS = 150
curves = {"attribute": ("heldout", (0, 1, 2, 4)), "keyvalue": ("heldout", (1, 2, 4)),
          "keyvalue held in": ("train", (1, 2, 4)), "binding": ("heldout", (1, 2, 4)),
          "count (never trained)": ("heldout", (0, 1, 2, 4))}
shots = {}
for name, (split, ks) in curves.items():
    family = name.split()[0]
    for k in ks:
        shots[name, k] = kshot_figures(llm, kshot_items(family, k, N_SHOTS, seed=1234, split=split))
for name, (split, ks) in curves.items():
    print(f"{name:22s}" + "  ".join(f"k={k}: {shots[name, k]['exact'].format(False)} "
                                     f"(type {100 * shots[name, k]['type'].value:.0f} %)" for k in ks))
print("\ne.g.", kshot_items("attribute", 2, 1, seed=5)[0].prompt, "->",
      kshot_figures(llm, kshot_items("attribute", 2, 1, seed=5))["predictions"][0])

# %%
fig, axes = viz.plt.subplots(1, 2, figsize=(10, 3.2))
for ax, what in zip(axes, ("exact", "type")):
    for i, (name, (split, ks)) in enumerate(curves.items()):
        e = [shots[name, k][what] for k in ks]
        ax.errorbar(np.array(ks) + 0.04 * (i - 2), [100 * x.value for x in e],
                    yerr=[[100 * (x.value - x.low) for x in e], [100 * (x.high - x.value) for x in e]],
                    fmt="o-", capsize=3, label=name)
    ax.set_xlabel("shots in the prompt (k)"), ax.set_ylabel(f"{what} answers (%)"), ax.set_xticks([0, 1, 2, 4])
    ax.set_ylim(-5, 105), ax.set_title(f"{what} answers, 95 % intervals")
axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8);

# %% [markdown]
# When did retrieval appear? The build probed the model every 200 steps (held-in key-value at
# k = 4, attribute rules at k = 0 and 4 on held-out templates, fact recall; 100 items each):

# %%
formation = llm_manifest["formation"]
fig, ax = viz.plt.subplots(figsize=(6, 3))
for key, label in (("keyvalue_k4_heldin", "key-value, k = 4, held in"), ("attribute_k4", "attribute, k = 4"),
                   ("attribute_k0", "attribute, k = 0"), ("recall_heldout", "fact recall")):
    ax.plot([f["step"] for f in formation], [100 * f[key] for f in formation], "o-", ms=3, label=label)
ax.set_xlabel("training step"), ax.set_ylabel("accuracy (%)"), ax.set_ylim(-5, 105)
ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
ax.set_title("what the build's probes saw during training");

# %%
att0, att4 = shots["attribute", 0]["exact"], shots["attribute", 4]["exact"]
print(f"attribute, held-out templates: k=0 {att0}, k=4 {att4}: {100 * (att4.value - att0.value):+.1f} points")
print(f"key-value at k=4, held in: {shots['keyvalue held in', 4]['exact']}")
assert att4.value >= att0.value + 0.25 and att4.low > att0.high, "shots must teach a held-out rule"
assert shots["keyvalue held in", 4]["exact"].value >= 0.90, "retrieval from the context must have formed"

# %% [markdown]
# ## 10. Past the trained context
#
# GPT-2's position table has 256 rows: a 257th token has no position vector, and the model
# refuses it. RoPE has no table, so the same weights *run* on 512 tokens; whether they still
# *work* there is a measurement. Rows of 512 packed held-out documents, the loss of each token by
# its position, for the zoo model as trained, and with the rotary base raised so that the slowest
# pairs turn no further in 512 positions than they did in 256 ("NTK-aware" scaling, a change of
# one number and no training; base · 2^(d/(d−2)) for head size d):

# %%
gpt2_layout = GPT(GPTConfig(max_len=256, dim=64, depth=1, heads=4))
try:
    gpt2_layout(torch.zeros(1, 300, dtype=torch.long))
except ValueError as e:
    print("GPT-2 layout, 300 tokens:", e)
long_docs = [tok.encode(d, add_bos=True, add_eos=True) for d in WorldText(seed=99, split="heldout").documents(400)]
long_ids, long_mask, _ = pack(long_docs, 24, 512, tok.pad_id)
head_dim = llm.config.dim // llm.config.heads
bases = {"as trained": llm.config.rope_base,
         "NTK-scaled base": llm.config.rope_base * 2 ** (head_dim / (head_dim - 2))}
by_position = {}
for name, base in bases.items():
    longer = GPT(dataclasses.replace(llm.config, max_len=512, rope_base=base)).eval()
    longer.load_state_dict(llm.state_dict())
    logp, scored = longer.token_logprobs(long_ids, long_mask)  # (24, 511): the token at t + 1
    logp, scored = F.pad(logp, (1, 0)), F.pad(scored, (1, 0))  # (24, 512): position 0 is never scored
    nll = -(logp * scored).view(24, 8, 64).sum((0, 2)) / scored.view(24, 8, 64).sum((0, 2))  # 8 bins of 64
    by_position[name] = nll.exp()
fig, ax = viz.plt.subplots(figsize=(6, 3))
for name, ppl_bins in by_position.items():
    ax.plot(np.arange(8) * 64 + 32, ppl_bins, "o-", label=name)
ax.axvline(256, color="gray", ls=":"), ax.text(262, ax.get_ylim()[1] * 0.9, "trained context", fontsize=8)
ax.set_xlabel("position in the row"), ax.set_ylabel("perplexity of the tokens there")
ax.legend(loc="upper left"), ax.set_title("the zoo llm on 512-token rows");
for name, ppl_bins in by_position.items():
    print(f"{name:16s} perplexity at positions 0-255: {ppl_bins[:4].mean():.2f}, 256-511: {ppl_bins[4:].mean():.2f}")

# %% [markdown]
# ## 11. Frozen
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
# * **The walk from GPT-2 to Llama, at equal steps and data** (0.9 M parameters, 400 steps of 16
#   rows, 3 seeds): held-out perplexity 2.372 (GPT-2), 2.377 (+RMSNorm), 2.195 (+RoPE), 2.160
#   (+SwiGLU), 2.150 (+no biases). Rotary positions are the one change outside the noise: every
#   RoPE seed (2.183–2.202) is below every seed before it (2.361–2.390), intervals apart.
#   RMSNorm and dropping the biases move the mean by +0.005 and −0.010, inside the seed spread
#   (0.02–0.03); SwiGLU's −0.035 is about one seed spread. What RMSNorm and no biases buy here is
#   not perplexity: fewer operations and parameters (902,144 and 868,864 vs 903,296).
# * **Facts known, not memorised strings.** The zoo `llm` answers 159 of 160 held-out items,
#   99.4 % [96.5, 99.9], in phrasings it never read (its one miss: a star's points, "ten" for
#   five), every family above its most-frequent-answer baseline (8.8–47.2 %). The live model
#   (139 k parameters, 300 steps, 10.7 s) recalls 25.0 % [18.9, 32.2], at those baselines: it has
#   learned the format and the frequent answers ("four" corners), not the facts. Model size and
#   training length differ between the two, so this run does not say which of them buys facts.
# * **Perplexity measures phrasing, recall measures knowledge.** The zoo model's perplexity is
#   1.776 on fresh documents in the training phrasings and 2.115 on held-out phrasings, while it
#   recalls 99.4 % of the held-out items: a phrasing never seen costs sureness, not the fact.
# * **Reading from the context.** Given a statement that contradicts a world fact, it answers
#   from the context 95.2 % [92.7, 96.9] of the time and from memory 2.5 %. Chat-format questions
#   about a described scene (kinds the description states): 93.2 % [90.4, 95.3] (VQA 89.0 %,
#   knowledge 97.5 %). In the plain format with every VQA kind, including where an object is,
#   which no caption says: 71.3 % with the caption vs 42.7 % without; knowledge 98.0 % vs 23.3 %.
# * **Learning from examples in the prompt, partly.** Key-value retrieval in training templates
#   with fresh nonce keys: 100 / 98.7 / 92.7 % at k = 1 / 2 / 4 (the build's probes saw it form
#   between steps 1,200 and 1,600, after the attribute rules, which reached about 45 % at k = 4
#   by step 600: it did not form first). Held-out templates: an attribute rule shown only by its
#   demonstrations goes from 16.7 % at k = 0 to 46.0 % at k = 1 and 43.3 % at k = 4 (+26.7
#   points, intervals apart); after the first shot, more shots add nothing inside the noise
#   (k = 2: 52.7 % [44.7, 60.5]). Key-value in held-out templates *falls* with k (49.3 → 30.0 %):
#   retrieval learned in training formats does not carry to a new format. Nonce binding holds at
#   82–87 % for k = 1–4. The never-trained count family stays at 0–0.7 % (answer type 0–8 %):
#   no new rule is learned from four shots at this scale.
# * **The cache changes nothing but the time.** Cached and uncached sampling give identical
#   tokens; one text, greedy, best of 3: the cache is 1.5× faster at 16 tokens, 2.3× at 64, 3.3×
#   at 128 and 5.3× at 255 in this run. Batched generation with left padding gives the same text
#   as one prompt at a time for 8 of 8 prompts of 7–36 tokens.
# * **Samplers differ where the model is unsure.** After an empty prompt (next-word entropy 2.90
#   nats) greedy gives one text four times and each sampler four different ones; after "a kite has
#   the shape of" (0.00 nats) every strategy says "a diamond" and they part only after it.
# * **Past the trained context.** A learned position table refuses token 257. With RoPE the same
#   weights run on 512 tokens: perplexity 2.04 at positions 0–255 and 2.85 at 256–511; raising the
#   rotary base (NTK-aware scaling, no training) brings 256–511 to 2.15 and leaves 0–255 at 2.04.
# * **Frozen means frozen.** A bridge's training step leaves all 1,886,976 LLM weights
#   bit-identical and gives none of them a gradient.
#
# **Exercises:** `exercises/09_llm.ipynb` — the shifted LM loss for a padded batch, the cached
# attention of §5 for a chunk of new tokens (the causal mask offset by the cache), perplexity from
# token log-probabilities, greedy decoding through the cache, and an experiment: rotary positions
# written yourself at any positions, and a measurement that q·k then depends only on the offset;
# `minivlm check exercises/09_llm.ipynb` tells you what is wrong.
#
# **References.** Radford et al., *GPT-2* (2019) and *GPT* (2018); Touvron et al., *LLaMA*
# (2023); Su et al., *RoFormer* (2021); Zhang and Sennrich, *RMSNorm* (2019); Shazeer, *GLU
# Variants Improve Transformer* (2020); Brown et al., *GPT-3* (2020); Olsson et al., *In-context
# Learning and Induction Heads* (2022); bloc97, *NTK-Aware Scaled RoPE* (2023); Karpathy,
# nanoGPT; Pope et al., *Efficiently Scaling Transformer Inference* (2022); Holtzman et al., *The
# Curious Case of Neural Text Degeneration* (ICLR 2020); Fan, Lewis and Dauphin, *Hierarchical
# Neural Story Generation* (ACL 2018, top-k).
