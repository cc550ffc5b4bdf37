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
# # 07 · CoCa: contrast and caption in one pass — and PrefixLM
#
# Yu, Wang, Vasudevan, Yeung, Seyedhosseini and Wu, *CoCa: Contrastive Captioners are Image-Text
# Foundation Models* (2022); Wang et al., *SimVLM: Simple Visual Language Model Pretraining with
# Weak Supervision* (ICLR 2022); Desai and Johnson, *VirTex* (CVPR 2021).
#
# Three families so far: **single encoders** (ViLT) fuse image and text early; **dual encoders**
# (CLIP) embed them apart and compare; **encoder-decoders** (BLIP's decoder) write text about an
# image. ALBEF and BLIP get several of these abilities by running the caption through their text
# Transformer two or three times per step, once per loss. CoCa gets them from **one pass**:
#
# * its text decoder is cut in half. The **unimodal** half is a causal text Transformer with no
#   image; a learned `[CLS]` token appended *after* the words sees every word, and its output is
#   the text embedding for the contrastive loss;
# * the **multimodal** half continues from the unimodal half's word outputs, with cross-attention
#   to the image, and predicts each next word: captioning;
# * **attentional poolers** (learned queries cross-attending to the ViT's tokens) give one image
#   embedding for the contrastive loss and 16 image tokens for the decoder to read;
# * loss = λ_con · contrastive + λ_cap · captioning (the paper: 1 and 2).
#
# **PrefixLM** (SimVLM) goes further: no contrastive loss at all, one Transformer over
# [image patches ; caption prefix ; caption suffix] with the prefix-LM mask of chapter 01.
#
# This chapter builds both from the library, measures what a training step costs CoCa, BLIP
# and ALBEF at the same width and depth, and reads from the zoo's seeds how CoCa's zero-shot
# accuracy compares with chapter 02's CLIP trained on the same batches for the same steps, and
# how its captions compare with PrefixLM's.
#
# | piece | library |
# |---|---|
# | the attentional pooler | `minivlm/nn/pooling.py` |
# | CoCa: poolers, the split decoder with the appended CLS, `coca_step`, `caption` | `minivlm/models/coca.py` |
# | PrefixLM: one Transformer under the prefix-LM mask, `prefixlm_step`, `caption` | `minivlm/models/prefixlm.py` |
# | the prefix-LM mask | `minivlm/nn/masks.py` (chapter 01) |
# | the contrastive loss, the next-word loss, decoding, CIDEr | chapters 02 and 06 |
# | clean caption batches; zero-shot over any dual encoder | `minivlm/data/pairs.py` (`caption_batches`), `minivlm/eval/retrieval.py` (`classify_zero_shot`) |
# | the trained CoCa and the PrefixLM arms | `minivlm/zoo` (`zoo.load("coca")`, `zoo.manifest("coca")`) |

# %%
import time

import torch

import minivlm
from minivlm import viz, zoo
from minivlm.data import ShapesBench
from minivlm.data.pairs import image_text_pairs, pair_batches, pretrain_batches
from minivlm.eval import CLIP_TEMPLATES, classify_zero_shot, interval, itc_similarity
from minivlm.models.albef import ALBEF, ALBEFConfig, ALBEFPretrainer
from minivlm.models.albef import pretrain_step as albef_step
from minivlm.models.blip import BLIP, BLIPConfig, BLIPPretrainer
from minivlm.models.blip import pretrain_step as blip_step
from minivlm.models.coca import COCA_CONFIG, CoCa, CoCaConfig, coca_metrics, coca_step
from minivlm.models.prefixlm import PREFIXLM_CONFIG, PrefixLM, PrefixLMConfig
from minivlm.nn import masks
from minivlm.nn.pooling import AttentionalPooler
from minivlm.train import fit
from minivlm.utils import count_parameters

minivlm.seed_everything(0)
chapter_start = time.perf_counter()
print("torch threads:", torch.get_num_threads())

# %% [markdown]
# ## 1. Three ways to train on image-text pairs

# %%
PIPELINES = {
    "ALBEF / BLIP\n(chapters 04, 06)": [
        ("image, caption", "input"), ("text pass 1: ITC", "text"), ("text pass 2: ITM\n(+ negatives)", "fusion"),
        ("text pass 3: MLM / LM", "fusion"), ("three losses", "head")],
    "CoCa": [
        ("image, caption", "input"), ("ViT → 2 poolers", "vision"), ("unimodal half:\nwords + CLS", "text"),
        ("multimodal half:\nwords × image", "fusion"), ("contrastive (CLS)\n+ captioning", "head")],
    "PrefixLM\n(SimVLM)": [
        ("[patches ; prefix ;\nsuffix]", "input"), ("one Transformer,\nprefix-LM mask", "fusion"),
        ("next word of\nthe suffix", "head")],
}
NOTES = {
    "ALBEF / BLIP\n(chapters 04, 06)": "the caption goes through the text Transformer once per loss (plus the momentum model)",
    "CoCa": "one pass of the caption gives both losses",
    "PrefixLM\n(SimVLM)": "no contrastive or matching head: it writes, but has no embedding to retrieve with",
}
viz.plot_pipelines(PIPELINES, NOTES);

# %% [markdown]
# ## 2. The attentional pooler
#
# A handful of learned **queries** cross-attend to the image tokens: each query's output is a
# weighted average of the (projected) tokens, weights from how well the token answers the query.
# Written out and checked against the library's module:

# %%
pooler = AttentionalPooler(dim=64, context_dim=64, n_queries=16, heads=4)
tokens = torch.randn(2, 65, 64)  # (B, 1 + N, D): a ViT's CLS and 64 patch tokens


def pool_inline(tokens):
    a = pooler.cross_attn
    q = a.q_proj(pooler.norm_queries(pooler.queries))  # (Q, D): the queries, the same for every image
    kv = pooler.norm_context(tokens)  # (B, N, D)
    k, v = a.k_proj(kv), a.v_proj(kv)
    heads = []
    for h in range(a.heads):
        s = slice(h * 16, (h + 1) * 16)
        weights = (q[:, s] @ k[..., s].transpose(1, 2) / 16 ** 0.5).softmax(-1)  # (B, Q, N)
        heads.append(weights @ v[..., s])  # (B, Q, 16)
    return a.out_proj(torch.cat(heads, -1))  # (B, Q, D)


with torch.no_grad():
    diff = (pool_inline(tokens) - pooler(tokens)).abs().max().item()
    shuffled = pooler(tokens[:, torch.randperm(65)])
    print(f"max |inline − library| = {diff:.1e}; output {tuple(pooler(tokens).shape)} for 65 tokens, "
          f"{tuple(pooler(torch.randn(2, 300, 64)).shape)} for 300")
    print(f"shuffling the 65 tokens changes the output by {(shuffled - pooler(tokens)).abs().max():.1e}")
assert diff < 1e-5 and torch.allclose(shuffled, pooler(tokens), atol=1e-5)

# %% [markdown]
# ## 3. The masks: CoCa's appended CLS and PrefixLM's prefix
#
# CoCa's unimodal half is causal, like any decoder; the CLS it appends comes *last*, so causality
# lets it see every word (and padding hides the pad slots). The multimodal half runs on the words
# only. PrefixLM puts the image patches and the first k words in a fully visible prefix and the
# rest of the caption after it, causal.

# %%
words = ["<bos>", "a", "red", "star", "<eos>", "<pad>"]
coca = CoCa(CoCaConfig(**COCA_CONFIG))
text_mask = torch.tensor([[True] * 5 + [False]])
unimodal = (masks.causal(7) & masks.padding(torch.cat([text_mask, torch.ones(1, 1, dtype=torch.bool)], 1)))[0]
prefixlm = PrefixLM(PrefixLMConfig(**{**PREFIXLM_CONFIG, "image_size": 16, "patch_size": 8}))  # 4 patches
prefix_mask = prefixlm.attention_mask(text_mask, torch.tensor([3]))[0]  # image + "<bos> a red" visible
labels_prefix = [f"img{i}" for i in range(4)] + words
fig, axes = viz.plt.subplots(1, 3, figsize=(14, 4))
viz.plot_mask(unimodal, title="CoCa unimodal: [words ; CLS]", ax=axes[0], labels=words + ["[CLS]"])
viz.plot_mask(unimodal[:6, :6], title="CoCa multimodal: the words\n(+ every image query)", ax=axes[1], labels=words)
viz.plot_mask(prefix_mask, title="PrefixLM: image + 3 words as prefix", ax=axes[2], labels=labels_prefix)
fig.tight_layout()
assert unimodal[6, :5].all() and not unimodal[6, 5], "the CLS sees every real word and no padding"
assert prefix_mask[:7, :7].all() and not prefix_mask[7, 8], "prefix bidirectional, suffix causal"

# %% [markdown]
# ## 4. What a training step costs
#
# CoCa, BLIP and ALBEF at the same width (64), image encoder (3 layers, 64 patches) and text
# depth (4 layers: CoCa 2 + 2, BLIP 4 with cross-attention, ALBEF 2 + 2 fusion), on one batch of
# 32 pairs: the text Transformer passes each makes per step (counted with hooks on the online
# model; ALBEF and BLIP also run a momentum copy), the milliseconds of a full step (forward,
# backward, AdamW; median of 8 after 2 warm-up steps, in this run), and the parameters.

# %%
def median_step_ms(trainable, step_fn, batch, repeats=8, warmup=2):
    opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-4)
    trainable.train()
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        opt.zero_grad()
        step_fn(trainable, batch)["loss"].backward()
        opt.step()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def count_calls(modules):
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in modules]
    return calls, handles


pairs = image_text_pairs(64, noise=0.0, seed=70)
blip_batch = pair_batches(pairs, 32, seed=0)(0)
albef_batch = pretrain_batches(32, seed=70)(0)
coca_batch = {k: blip_batch[k] for k in ("images", "ids", "attention_mask")}
models = {
    "CoCa": (CoCa(CoCaConfig(**COCA_CONFIG)), coca_step, coca_batch, lambda m: [m.unimodal]),
    "BLIP": (BLIPPretrainer(BLIP(BLIPConfig(text_depth=4, queue_size=64))), blip_step, blip_batch,
             lambda t: [t.model.blocks[0]]),
    "ALBEF": (ALBEFPretrainer(ALBEF(ALBEFConfig(patch_size=4, queue_size=64))), albef_step, albef_batch,
              lambda t: [t.model.text, t.model.fusion]),
}
cost = {}
for name, (trainable, step_fn, batch, text_modules) in models.items():
    calls, handles = count_calls(text_modules(trainable))
    step_fn(trainable.train(), batch)
    passes = len(calls)
    for h in handles:
        h.remove()
    online = trainable.model if hasattr(trainable, "model") else trainable
    cost[name] = {"passes": passes, "ms": median_step_ms(trainable, step_fn, batch),
                  "params": count_parameters(online)}
print(f"{'model':7}{'text passes / step':>20}{'ms / step':>11}{'parameters':>12}")
for name, c in cost.items():
    print(f"{name:7}{c['passes']:>20}{c['ms']:>11.0f}{c['params']:>12,}")
viz.plot_bars({name: c["ms"] for name, c in cost.items()}, title="one training step, batch 32", ylabel="ms")
assert cost["CoCa"]["passes"] == 1 and cost["BLIP"]["passes"] >= 3
assert cost["CoCa"]["ms"] < cost["BLIP"]["ms"], "CoCa's step must cost less than BLIP's at matched size"

# %% [markdown]
# **At equal wall-clock time.** Each model trains for the number of steps that fits in the same
# 10 seconds at its measured cost, on clean pairs (CoCa and BLIP on the very same batches), then is scored on chapter 02's
# zero-shot protocol and image→text retrieval among 256 (both through the models' contrastive
# embeddings):

# %%
budget_s = 10.0
bench = ShapesBench()

seen = bench.classification("seen", n_per_class=5)
retrieval = bench.retrieval(256)
clean_pairs = pair_batches(image_text_pairs(2048, noise=0.0, seed=71), 32, seed=1)  # CoCa and BLIP: the same batches
stream = {"CoCa": clean_pairs, "BLIP": clean_pairs, "ALBEF": pretrain_batches(32, seed=71)}
equal_time = {}
for name, (trainable, step_fn, _, _) in models.items():
    steps = max(1, int(1000 * budget_s / cost[name]["ms"]))
    minivlm.seed_everything(0)
    start = time.perf_counter()
    fit(trainable, step_fn, stream[name], steps, lr=2e-3, warmup=10, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    online = (trainable.model if hasattr(trainable, "model") else trainable).eval()
    zs = interval((classify_zero_shot(online, seen, CLIP_TEMPLATES).argmax(1) == seen["labels"]).tolist())
    r1 = interval((itc_similarity(online, retrieval["images"], retrieval["captions"]).argmax(1)
                   == torch.arange(256)).tolist())
    equal_time[name] = {"steps": steps, "seconds": seconds, "zero_shot": zs, "r1": r1}
    print(f"{name:6} {steps:4} steps in {seconds:4.1f} s: zero-shot {zs}, R@1 {r1}")

# %% [markdown]
# ## 5. The zoo: CoCa against chapter 02's CLIP, and against PrefixLM
#
# `minivlm zoo build coca` trained CoCa and PrefixLM from scratch on the zoo CLIP's own batches
# (43 single-object + 21 two-object scenes per step) for the CLIP's 2,000 steps, three seeds each,
# and measured each on the manifest's bench sets (seed 1234). Chapter 02's CLIP, one seed, is the
# reference for zero-shot and retrieval.
#
# A third arm, `coca_pos1`, is the zoo's first CoCa: the same model with its ViT's position
# embeddings started at std 1 instead of CLIP's 0.02. Chapters 03–06 start their fusion encoders'
# image positions that large (chapter 03 showed why: a fusion encoder must tell patches apart from
# the first step). Behind CLIP's pre-norm LayerNorm, std-1 positions outweigh what the patches
# show, and the contrastive half learned far more slowly. The two CoCa arms differ in that one
# number only.

# %%
manifest = zoo.manifest("coca")
clip_metrics = zoo.manifest("clip")["metrics"]
arms = manifest["arms"]


def values(arm, metric):
    return [run[metric]["value"] if isinstance(run[metric], dict) else run[metric] for run in arms[arm]]


def pct(xs):
    return "  ".join(f"{100 * x:5.1f}" for x in xs)


print(f"{'per seed, %':24}{'CoCa (pos 0.02)':>22}{'coca_pos1 (pos 1)':>22}{'CLIP':>8}")
for metric in ("zero_shot_seen", "zero_shot_heldout", "i2t_r1"):
    print(f"{metric:24}{pct(values('coca', metric)):>22}{pct(values('coca_pos1', metric)):>22}"
          f"{100 * clip_metrics[metric]:>8.1f}")
print(f"\n{'captions, per seed':24}{'CoCa':>22}{'coca_pos1':>22}{'PrefixLM':>22}")
for metric in ("cider", "bleu4"):
    row = ["  ".join(f"{x:5.2f}" for x in values(arm, metric)) for arm in ("coca", "coca_pos1", "prefixlm")]
    print(f"{metric:24}" + "".join(f"{r:>22}" for r in row))
gap = [clip_metrics["zero_shot_seen"] - x for x in values("coca", "zero_shot_seen")]
gap_pos1 = [clip_metrics["zero_shot_seen"] - x for x in values("coca_pos1", "zero_shot_seen")]
print(f"\nCLIP − CoCa zero-shot (seen) per seed: {[f'{100 * g:+.1f}' for g in gap]} points (target: within 5); "
      f"with std-1 positions {[f'{100 * g:+.1f}' for g in gap_pos1]}")
seen = {arm: [r["zero_shot_seen"] for r in arms[arm]] for arm in ("coca", "coca_pos1")}
fig, ax = viz.plt.subplots(figsize=(7, 3.2))
for k, (arm, runs) in enumerate(seen.items()):
    for j, e in enumerate(runs):
        ax.errorbar(k + 0.1 * (j - 1), 100 * e["value"], yerr=[[100 * (e["value"] - e["low"])], [100 * (e["high"] - e["value"])]],
                    fmt="o", color=f"C{k}", capsize=3)
ax.axhline(100 * clip_metrics["zero_shot_seen"], color="k", ls="--", label="zoo CLIP (2,000 steps)")
ax.set_xticks([0, 1], ["CoCa, positions std 0.02", "coca_pos1, std 1"])
ax.set_ylabel("zero-shot, seen (%)")
ax.set_title("three seeds each, 95 % intervals, on the CLIP's batches and steps")
ax.legend(loc="lower left")
fig.tight_layout()

# %%
model = zoo.load("coca")
cap = bench.captioning(8)
captions = model.caption(cap["images"])
viz.show_images(cap["images"], titles=captions, ncols=4, scale=2.2)
live = coca_metrics(model)
print({k: (v["value"] if isinstance(v, dict) else v) for k, v in live.items()})
assert abs(live["zero_shot_seen"]["value"] - manifest["metrics"]["zero_shot_seen"]["value"]) < 0.02

# %%
chapter_seconds = time.perf_counter() - chapter_start
print(f"chapter: {chapter_seconds:.0f} s on this machine")
# the claims of "What we saw" below, checked against this run and the manifest's figures
assert all(abs(g) <= 0.05 for g in gap), "CoCa's zero-shot came out more than 5 points from CLIP's: update What we saw"
assert all(g > 0.3 for g in gap_pos1), "std-1 positions no longer hold CoCa back: update What we saw"
assert all(c > p for c, p in zip(values("coca", "cider"), values("prefixlm", "cider"))), "CoCa's captions above PrefixLM's per seed"
assert all(c > p for c, p in zip(values("coca", "cider"), values("coca_pos1", "cider")))
assert equal_time["CoCa"]["zero_shot"].value > max(equal_time[m]["zero_shot"].value for m in ("BLIP", "ALBEF"))

# %% [markdown]
# ## What we saw
#
# * **One pass is cheaper.** CoCa runs the caption through its text Transformer once per step;
#   BLIP three times and ALBEF five (plus their momentum copies). At the same width and depth its
#   step cost less than BLIP's and ALBEF's in this run (the table above), and in the same ten
#   seconds of training it reached a higher zero-shot accuracy than either. The cost side of
#   CoCa's claim holds.
# * **It also keeps up with CLIP — the target is met.** Trained from scratch on chapter 02's CLIP
#   batches for the CLIP's 2,000 steps, CoCa's zero-shot accuracy on seen compositions is
#   99.1–99.3 % over three seeds against the zoo CLIP's 99.3 % (within 0.3 points, target 5),
#   88 / 84 / 90 % on held-out ones (CLIP 86 %, 50 images each: wide intervals), and its
#   image→text R@1 among 256 is 53.9–63.7 % against CLIP's 59.8 %, while the same model captions.
# * **One number made the difference.** The zoo's first CoCa (`coca_pos1`) started its ViT's
#   position embeddings at std 1, as chapters 03–06 start their fusion encoders'; it reached only
#   47–56 % zero-shot and 36–40 % R@1, and its captions were worse too (CIDEr-D 1.42–1.54 against
#   2.23–2.64). Behind CLIP's pre-norm LayerNorm, positions that large outweigh what the patches
#   show. We found it by elimination, in checks outside this notebook (800 steps, captioning weight
#   0): the pooler vs the ViT's CLS token, the word-embedding scale and the CLS position made no
#   difference (24–26 %); position std 0.02 gave 85.6 % (CLIP: 94 % at 800 steps).
# * **CoCa captions better than PrefixLM at equal steps.** CoCa's greedy captions score CIDEr-D
#   2.64 / 2.60 / 2.23 against PrefixLM's 1.77 / 2.02 / 1.92, higher in every seed (the intervals
#   of seed 2 overlap), with more parameters (475 k vs 298 k). Neither comes near chapter 06's BLIP
#   (3.82): both trained on CLIP's batches of one- and two-object scenes, and the captioning bench
#   has up to four objects.
#
# **Exercises:** `exercises/07_coca.ipynb` — attentional pooling, the appended CLS and the words,
# and CoCa's weighted loss; `minivlm check exercises/07_coca.ipynb` tells you what is wrong.
#
# **References.** Yu et al., *CoCa* (2022); Wang et al., *SimVLM* (ICLR 2022); Desai and Johnson,
# *VirTex* (CVPR 2021); Lee et al., *Set Transformer* (attention pooling, ICML 2019); Radford et
# al., *CLIP* (ICML 2021); Li et al., *BLIP* (ICML 2022).
