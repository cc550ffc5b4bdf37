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
#
# CoCa's loss is a weighted sum, $\mathcal{L}_{\mathrm{CoCa}} = \lambda_{\mathrm{Con}}\,\mathcal{L}_{\mathrm{Con}}
# + \lambda_{\mathrm{Cap}}\,\mathcal{L}_{\mathrm{Cap}}$ (the paper's weights 1 and 2, ours too):
#
# $$\mathcal{L}_{\mathrm{Con}} = -\frac{1}{N}\sum_{i=1}^{N}\Big(\log\frac{\exp(x_i^\top y_i/\sigma)}{\sum_{j}\exp(x_i^\top y_j/\sigma)}
#   + \log\frac{\exp(y_i^\top x_i/\sigma)}{\sum_{j}\exp(y_i^\top x_j/\sigma)}\Big), \qquad
#   \mathcal{L}_{\mathrm{Cap}} = -\sum_{t=1}^{T}\log P_\theta(w_t \mid w_{<t}, x),$$
#
# with $x_i$ the pooled image embedding, $y_i$ the embedding of the CLS appended after the
# caption, σ a learned temperature. PrefixLM (SimVLM) has one term: the caption is split at a
# random $T_p$, image and prefix are read in both directions, and only the suffix is predicted,
#
# $$\mathcal{L}_{\mathrm{PrefixLM}} = -\sum_{t=T_p}^{T}\log P_\theta(w_t \mid \text{image}, w_{<T_p}, w_{[T_p, t)}).$$

# %%
PIPELINES = {
    "ALBEF / BLIP\n(chapters 04, 06)": [
        ("image, caption", "input"), ("text pass 1: ITC", "text"), ("text pass 2: ITM\n(+ negatives)", "fusion"),
        ("text pass 3: MLM / LM", "fusion"), ("three losses", "head")],
    "CoCa": [
        ("image, caption", "input"), ("ViT → 2 poolers", "vision"), ("unimodal half:\nwords + CLS", "text"),
        ("contrastive loss:\nCLS vs pooled image", "head"), ("multimodal half:\nwords × image queries", "fusion"),
        ("captioning loss", "head")],
    "PrefixLM\n(SimVLM)": [
        ("[patches ; prefix ;\nsuffix]", "input"), ("one Transformer,\nprefix-LM mask", "fusion"),
        ("next word of\nthe suffix", "head")],
}
NOTES = {
    "ALBEF / BLIP\n(chapters 04, 06)": "the caption goes through the text Transformer once per loss (plus the momentum model)",
    "CoCa": "one pass of the caption gives both losses: the contrastive one halfway, the captioning one at the top",
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
n_q = 4  # four of the captioning pooler's image queries, for the drawing
multimodal = torch.cat([torch.ones(6, n_q, dtype=torch.bool), unimodal[:6, :6]], dim=1)  # (words, queries + words)
viz.plot_mask(multimodal, title="CoCa multimodal: image queries\n(cross-attn) + the words (causal)", ax=axes[1],
              labels=(words, [f"q{i}" for i in range(n_q)] + words))
viz.plot_mask(prefix_mask, title="PrefixLM: image + 3 words as prefix", ax=axes[2], labels=labels_prefix)
fig.tight_layout()
viz.plt.show()
assert unimodal[6, :5].all() and not unimodal[6, 5], "the CLS sees every real word and no padding"
assert prefix_mask[:7, :7].all() and not prefix_mask[7, 8], "prefix bidirectional, suffix causal"

# %% [markdown]
# ## 4. What a training step costs
#
# CoCa, BLIP and ALBEF at the same width (64), image encoder (3 layers, 64 patches) and text
# depth (4 layers: CoCa 2 + 2, BLIP 4 with cross-attention, ALBEF 2 + 2 fusion), on one batch of
# 32 pairs. One unit for all three: **text-layer passes per pair**, the number of times one
# caption (or a copy of it: a masked one, a hard negative) goes through one text-side layer in a
# step, counted with hooks on every text-side layer of the online model and, where there is one,
# of the momentum copy (which runs without gradients). Then the milliseconds of a full step
# (forward, backward, AdamW; median of 8 after 2 warm-up steps, in this run), and the parameters.

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


def text_layers(model):
    """Every text-side layer of a CoCa, a BLIP or an ALBEF (the image encoder excluded)."""
    if isinstance(model, CoCa):
        return [*model.unimodal.blocks, *model.multimodal.blocks]
    if isinstance(model, BLIP):
        return list(model.blocks)
    return [*model.text.transformer.blocks, *model.fusion.blocks]


def text_layer_passes(trainable, step_fn, batch):
    """(online, momentum) text-layer passes per pair in one training step."""
    counts = {"online": 0, "momentum": 0}
    handles = []
    for part in ("online", "momentum"):
        model = getattr(trainable, "model", trainable) if part == "online" else getattr(trainable, "momentum", None)
        for layer in text_layers(model) if model is not None else []:
            def hook(module, args, output, part=part):
                counts[part] += args[0].shape[0]  # sequences through this layer
            handles.append(layer.register_forward_hook(hook))
    step_fn(trainable.train(), batch)
    for h in handles:
        h.remove()
    b = len(batch["images"])
    return counts["online"] / b, counts["momentum"] / b


pairs = image_text_pairs(64, noise=0.0, seed=70)
blip_batch = pair_batches(pairs, 32, seed=0)(0)
albef_batch = pretrain_batches(32, seed=70)(0)
coca_batch = {k: blip_batch[k] for k in ("images", "ids", "attention_mask")}
models = {  # name: (a fresh trainable, its step, a batch)
    "CoCa": (lambda: CoCa(CoCaConfig(**COCA_CONFIG)), coca_step, coca_batch),
    "BLIP": (lambda: BLIPPretrainer(BLIP(BLIPConfig(text_depth=4, queue_size=64))), blip_step, blip_batch),
    "ALBEF": (lambda: ALBEFPretrainer(ALBEF(ALBEFConfig(patch_size=4, queue_size=64))), albef_step, albef_batch),
}
cost = {}
for name, (make, step_fn, batch) in models.items():
    trainable = make()
    online, momentum = text_layer_passes(trainable, step_fn, batch)
    model = trainable.model if hasattr(trainable, "model") else trainable
    cost[name] = {"online": online, "momentum": momentum, "ms": median_step_ms(trainable, step_fn, batch),
                  "params": count_parameters(model)}
print(f"{'model':7}{'text-layer passes / pair':>26}{'+ momentum copy':>17}{'ms / step':>11}{'parameters':>12}")
for name, c in cost.items():
    print(f"{name:7}{c['online']:>26.0f}{c['momentum']:>17.0f}{c['ms']:>11.0f}{c['params']:>12,}")
fig, axes = viz.plt.subplots(1, 2, figsize=(9, 2.8))
names = list(cost)
axes[0].bar(names, [c["online"] for c in cost.values()], label="online model")
axes[0].bar(names, [c["momentum"] for c in cost.values()], bottom=[c["online"] for c in cost.values()],
            label="momentum copy (no gradients)")
axes[0].set(ylabel="text-layer passes per pair", title="text-side work per step")
axes[0].legend(fontsize=8, loc="upper left")
axes[1].bar(names, [c["ms"] for c in cost.values()], color="C2")
axes[1].set(ylabel="ms per step (batch 32)", title="one training step, this machine")
fig.tight_layout()
viz.plt.show()
assert cost["CoCa"]["online"] == 4 and cost["CoCa"]["momentum"] == 0, "CoCa: each caption once through 4 layers"
assert cost["BLIP"]["online"] > 3 * cost["CoCa"]["online"]
assert cost["CoCa"]["ms"] < cost["BLIP"]["ms"], "CoCa's step must cost less than BLIP's at matched size"

# %% [markdown]
# **At equal steps.** A cheaper step only matters if the model learns as much per step. CoCa and
# BLIP, fresh, train the same 240 steps on the very same batches of clean pairs from the same
# seed, and are scored on chapter 02's zero-shot protocol (43 classes: chance 2.3 %) and
# image→text retrieval among 256 (chance 0.4 %), both through the models' contrastive
# embeddings, with 95 % intervals. ALBEF sits this race out to keep the chapter inside its time
# budget: it reads its own batch stream (it needs the masked words), so it would not be on the
# same batches anyway. One seed: the spread over seeds is not measured here.

# %%
RACE_STEPS = 240
bench = ShapesBench()

seen = bench.classification("seen", n_per_class=5)
retrieval = bench.retrieval(256)
clean_pairs = pair_batches(image_text_pairs(2048, noise=0.0, seed=71), 32, seed=1)  # CoCa and BLIP: the same batches
RACERS = ("CoCa", "BLIP")
chance = {"zero_shot": 1 / len(seen["classes"]), "r1": 1 / 256}
equal_steps = {}
for name in RACERS:
    make, step_fn, _ = models[name]
    minivlm.seed_everything(0)
    trainable = make()  # fresh weights: the timing steps above trained the other copies
    start = time.perf_counter()
    fit(trainable, step_fn, clean_pairs, RACE_STEPS, lr=2e-3, warmup=10, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    online = (trainable.model if hasattr(trainable, "model") else trainable).eval()
    zs = interval((classify_zero_shot(online, seen, CLIP_TEMPLATES).argmax(1) == seen["labels"]).tolist())
    r1 = interval((itc_similarity(online, retrieval["images"], retrieval["captions"]).argmax(1)
                   == torch.arange(256)).tolist())
    equal_steps[name] = {"seconds": seconds, "zero_shot": zs, "r1": r1}
    print(f"{name:6} {RACE_STEPS} steps in {seconds:5.1f} s: zero-shot {zs}, R@1 {r1}")
fig, axes = viz.plt.subplots(1, 2, figsize=(9, 2.8))
for ax, (key, label) in zip(axes, (("zero_shot", "zero-shot, seen (%)"), ("r1", "image→text R@1 among 256 (%)"))):
    for x, (name, r) in enumerate(equal_steps.items()):
        e = r[key]
        ax.errorbar(x, 100 * e.value, yerr=[[100 * (e.value - e.low)], [100 * (e.high - e.value)]], fmt="o",
                    capsize=4, color=f"C{x}")
    ax.axhline(100 * chance[key], color="grey", ls=":", label="chance")
    ax.set(xticks=range(len(RACERS)), xticklabels=[f"{n}\n{r['seconds']:.0f} s" for n, r in equal_steps.items()],
           ylabel=label, xlim=(-0.5, len(RACERS) - 0.5))
    ax.legend(fontsize=8, loc="upper right")
fig.suptitle(f"after {RACE_STEPS} training steps each (95 % intervals; seconds under each name)", y=1.02)
fig.tight_layout()
viz.plt.show()
for name, r in equal_steps.items():  # a race is only read where every model has left chance
    assert r["zero_shot"].low > chance["zero_shot"], f"{name} is still at chance after {RACE_STEPS} steps"

# %% [markdown]
# ## 5. The zoo: CoCa against chapter 02's CLIP, and against PrefixLM
#
# `minivlm zoo build coca` trained CoCa and PrefixLM from scratch on the zoo CLIP's own batches
# (43 single-object + 21 two-object scenes per step) for the CLIP's 2,000 steps, three seeds each,
# and measured each on the manifest's bench sets (seed 1234). Chapter 02's CLIP, one seed, is the
# reference for zero-shot and retrieval.
#
# A third arm, `coca_pos1`, is the zoo's first CoCa: the same model with its ViT's position
# embeddings started at std 1 instead of CLIP's 0.02, as the fusion encoders of chapters 03 and
# 05 start theirs. The two CoCa arms differ in that one number only. How large is a std-1
# position next to what a patch shows? At the ViT's input, before its pre-norm LayerNorm, the
# norm of each token's position embedding against the norm of its patch embedding, on 64 fresh
# images, for a fresh ViT with each initialisation and for the trained zoo CoCa:

# %%
norm_images = ShapesBench(seed=4321).captioning(64)["images"]


def position_to_content(coca_model):
    """Mean over images and patches of ‖position‖ / ‖patch embedding‖ at the ViT's input."""
    vit = coca_model.visual
    with torch.no_grad():
        content = vit.patch_embed((norm_images - coca_model.image_mean) / coca_model.image_std)  # (B, N, D)
        position = vit.pos_embedding[:, 1:]  # (1, N, D): the patches' positions, CLS excluded
        return (position.norm(dim=-1) / content.norm(dim=-1)).mean().item()


ratios = {}
for std in (0.02, 1.0):
    torch.manual_seed(0)
    ratios[f"fresh, positions std {std}"] = position_to_content(CoCa(CoCaConfig(**{**COCA_CONFIG, "pos_init_std": std})))
ratios["zoo CoCa (std 0.02), trained"] = position_to_content(zoo.load("coca"))
for name, r in ratios.items():
    print(f"{name:32} ‖position‖ / ‖patch content‖ = {r:6.2f}")
assert ratios["fresh, positions std 1.0"] > 5 * ratios["fresh, positions std 0.02"]

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
print("CIDEr-D with 95 % intervals, per seed:")
for s_ in range(3):
    print(f"  seed {s_}: " + "   ".join(f"{arm} {arms[arm][s_]['cider']['value']:.2f} [{arms[arm][s_]['cider']['low']:.2f}, "
                                       f"{arms[arm][s_]['cider']['high']:.2f}]" for arm in ("coca", "prefixlm")))
print(f"parameters: CoCa {manifest['parameters']:,}, PrefixLM {count_parameters(PrefixLM(PrefixLMConfig(**manifest['prefixlm_config']))):,}")
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
assert all(equal_steps["CoCa"][k].low > equal_steps["BLIP"][k].high
           for k in ("zero_shot", "r1")), "CoCa is no longer ahead at equal steps beyond the intervals"
assert equal_steps["CoCa"]["seconds"] < 0.5 * equal_steps["BLIP"]["seconds"]
assert all(arms["coca"][i]["cider"]["low"] > arms["prefixlm"][i]["cider"]["high"] for i in (0, 1)) and \
    arms["coca"][2]["cider"]["low"] <= arms["prefixlm"][2]["cider"]["high"], "the CIDEr intervals changed"

# %% [markdown]
# ## What we saw
#
# * **One pass is cheaper, and at equal steps CoCa learned more.** Counted in one unit for all
#   three, a CoCa step sends each caption through 4 text layers once; BLIP's and ALBEF's steps
#   send it (or its masked copy, or a hard negative) through many more, plus their momentum
#   copies (the table in section 4), and CoCa's step took the fewest milliseconds in this run. At
#   equal steps on the same batches (240, one seed, the timings printed), both CoCa and BLIP had
#   left chance, and CoCa's zero-shot accuracy and R@1 were above BLIP's with the intervals apart
#   (asserted), in less than half BLIP's time. This is one seed at one length: the seed spread of
#   the race is not measured, and why CoCa learns its contrastive half faster per step is untested
#   (its contrastive loss sits on a shallower text tower, and BLIP splits its steps between three
#   losses; no arm here separates these).
# * **It also keeps up with CLIP — the target is met.** Trained from scratch on chapter 02's CLIP
#   batches for the CLIP's 2,000 steps, CoCa's zero-shot accuracy on seen compositions is within
#   the target's 5 points of the zoo CLIP's in every seed (printed in section 5), its held-out
#   accuracy and R@1 are near CLIP's (printed; 50 images per held-out class, so wide intervals),
#   while the same model captions.
# * **One number made the difference.** The zoo's first CoCa (`coca_pos1`) started its ViT's
#   position embeddings at std 1; it stayed more than 30 points below CLIP's zero-shot in every
#   seed, and its captions scored lower too (asserted). At initialisation a std-1 position is
#   many times larger than the patch content it is added to (the ratio printed in section 5),
#   while a std-0.02 position is a small fraction of it. That the large positions drown the
#   content is the reading the two arms support; which part of the training it slows is untested.
# * **CoCa's captions scored above PrefixLM's, but the comparison is not controlled.** At equal
#   steps on the same batches, CoCa's CIDEr-D is above PrefixLM's in every seed, with the
#   intervals apart in seeds 0 and 1 and overlapping in seed 2 (printed). What was matched: the
#   data, the steps, the width and the image patches. What was not: CoCa has a separate image
#   encoder and more parameters (printed), a contrastive loss beside its captioning loss, and a
#   captioning loss on every word, where PrefixLM's covers only the suffix after a random split.
#   Any of these may give the difference; no arm here separates them. Neither comes near chapter
#   06's BLIP, whose bench has up to four objects per scene while both trained on CLIP's batches
#   of one- and two-object scenes.
#
# **Exercises:** `exercises/07_coca.ipynb` — attentional pooling over sets of different sizes, the
# unimodal half's input and mask for a padded batch, CoCa's weighted loss, and an experiment: how
# much of a fresh ViT's output is the image and how much the position, with positions started at
# std 0.02 and at std 1; `minivlm check exercises/07_coca.ipynb` tells you what is wrong.
#
# **References.** Yu et al., *CoCa* (2022); Wang et al., *SimVLM* (ICLR 2022); Desai and Johnson,
# *VirTex* (CVPR 2021); Lee et al., *Set Transformer* (attention pooling, ICML 2019); Radford et
# al., *CLIP* (ICML 2021); Li et al., *BLIP* (ICML 2022).
