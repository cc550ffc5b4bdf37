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
# # 02 · CLIP
#
# Radford et al., *Learning Transferable Visual Models From Natural Language Supervision* (2021).
#
# CLIP learns from image–caption pairs with one simple game: in a batch of $N$ pairs, find which
# caption goes with which image. An image tower and a text tower map both into one space where
# a matching pair has a high cosine similarity. No labels, no fixed set of classes — and yet at
# test time, writing a class name into a sentence ("a red circle.") gives a classifier for free:
# **zero-shot classification**.
#
# This chapter runs the paper's numpy pseudocode as printed, builds the dual encoder from
# chapter 01's blocks, trains it on ShapesWorld in under a minute, and measures what the paper
# claims: zero-shot accuracy (on compositions seen and never seen in training), prompt
# ensembling, retrieval, word order (relation swaps), and LiT's locked image tower.
#
# | piece | library |
# |---|---|
# | the model: towers, projections, temperature | `minivlm/models/clip.py`; the contrastive head `minivlm/nn/heads.py` (`ContrastiveHead`) |
# | the symmetric contrastive loss | `minivlm/losses.py` (`clip_loss`) |
# | zero-shot classification (templates, prototypes), metrics: zero-shot accuracy, R@k, swap scores | `minivlm/eval/retrieval.py` |
# | the trained CLIP later chapters start from | `minivlm/zoo` (`zoo.load("clip")`) |

# %%
import time

import numpy as np
import torch
import torch.nn.functional as F

import minivlm
from minivlm import viz, zoo
from minivlm.data import ShapesBench, ShapesWorld, Tokenizer
from minivlm.eval import (
    CLIP_TEMPLATES,
    class_prompts,
    retrieval_metrics,
    swap_scores,
    wilson,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_logits,
)
from minivlm.losses import clip_loss
from minivlm.models.clip import CLIP, CLIPConfig, clip_step, similarity, swap_similarity
from minivlm.nn import TextTransformer, ViT
from minivlm.train import fit
from minivlm.utils import freeze

minivlm.seed_everything(0)
device = minivlm.device()
chapter_start = time.perf_counter()
print("device:", device, "| torch threads:", torch.get_num_threads())

# %% [markdown]
# ## 1. The paper's pseudocode, run as printed
#
# Figure 3 of the paper gives the whole training objective in numpy-like pseudocode:
#
# ```python
# # image_encoder - ResNet or Vision Transformer
# # text_encoder  - CBOW or Text Transformer
# # I[n, h, w, c] - minibatch of aligned images
# # T[n, l]       - minibatch of aligned texts
# # W_i[d_i, d_e] - learned proj of image to embed
# # W_t[d_t, d_e] - learned proj of text to embed
# # t             - learned temperature parameter
# I_f = image_encoder(I)  #[n, d_i]
# T_f = text_encoder(T)   #[n, d_t]
# I_e = l2_normalize(np.dot(I_f, W_i), axis=1)
# T_e = l2_normalize(np.dot(T_f, W_t), axis=1)
# logits = np.dot(I_e, T_e.T) * np.exp(t)
# labels = np.arange(n)
# loss_i = cross_entropy_loss(logits, labels, axis=0)
# loss_t = cross_entropy_loss(logits, labels, axis=1)
# loss = (loss_i + loss_t)/2
# ```
#
# To run it we only need stand-ins for the two encoders (any function from a batch to a
# feature matrix will do: here fixed random linear maps) and the two helpers it names.
# `cross_entropy_loss(logits, labels, axis)` takes the softmax along `axis`: along the
# columns (axis=1) each image picks among the texts, along the rows (axis=0) each text picks
# among the images.

# %%
rng = np.random.default_rng(0)
n, h, w, c, l, vocab = 8, 32, 32, 3, 12, 100
d_i, d_t, d_e = 48, 40, 16
I = rng.uniform(size=(n, h, w, c))  # a minibatch of images
T = rng.integers(0, vocab, size=(n, l))  # and of token ids
A_img = rng.normal(size=(h * w * c, d_i)) / np.sqrt(h * w * c)  # stand-in image encoder: a random linear map
A_txt = rng.normal(size=(vocab, d_t))  # stand-in text encoder: mean of random word vectors (a CBOW)
W_i = rng.normal(size=(d_i, d_e))
W_t = rng.normal(size=(d_t, d_e))
t = np.log(1 / 0.07)


def image_encoder(I):
    return I.reshape(len(I), -1) @ A_img


def text_encoder(T):
    return A_txt[T].mean(axis=1)


def l2_normalize(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def cross_entropy_loss(logits, labels, axis):
    """Mean cross-entropy with the softmax taken along `axis`; labels index along that axis."""
    log_probs = logits - logits.max(axis=axis, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(axis=axis, keepdims=True))
    picked = np.take_along_axis(log_probs, np.expand_dims(labels, axis), axis=axis)
    return -picked.mean()


# ---- the paper's pseudocode, verbatim ----
I_f = image_encoder(I)  #[n, d_i]
T_f = text_encoder(T)   #[n, d_t]
I_e = l2_normalize(np.dot(I_f, W_i), axis=1)
T_e = l2_normalize(np.dot(T_f, W_t), axis=1)
logits = np.dot(I_e, T_e.T) * np.exp(t)
labels = np.arange(n)
loss_i = cross_entropy_loss(logits, labels, axis=0)
loss_t = cross_entropy_loss(logits, labels, axis=1)
loss = (loss_i + loss_t)/2
# ------------------------------------------

torch_loss = clip_loss(torch.from_numpy(I_e), torch.from_numpy(T_e), float(np.exp(t)))
print(f"numpy pseudocode loss: {loss:.6f}   minivlm.losses.clip_loss: {torch_loss.item():.6f}   ln n = {np.log(n):.4f}")
assert abs(loss - torch_loss.item()) < 1e-6

# %% [markdown]
# The two agree to float precision. With random encoders each of the $n$ choices is a guess,
# and a uniform guess would cost $\ln n$; ours costs more, because the scale of 14 makes the
# random guesses confident, and confidently wrong is expensive. Here is what the loss looks at —
# the $n \times n$ matrix of scaled cosine similarities. Row $i$ is image $i$ scoring every text, column $j$ is text $j$
# scoring every image; the correct answers (`labels = np.arange(n)`) are the **diagonal**. The
# loss is a cross-entropy along the rows (image → text) plus one along the columns (text →
# image), averaged: symmetric, so that neither tower can win by ignoring the other. Training
# must make the diagonal bright and everything else dark; right now it is noise.

# %%
viz.plot_similarity(torch.from_numpy(logits), row_labels=[f"image {i}" for i in range(n)],
                    col_labels=[f"text {j}" for j in range(n)], title="logits of random encoders (diagonal = pairs)");

# %% [markdown]
# Two details hide in `np.exp(t)`. The temperature is learned as a **log**: `exp` keeps it
# positive, and a multiplicative quantity gets additive gradient steps. It starts at
# $1/0.07 \approx 14.3$ and the paper clips it at 100 so that training stays stable. Because
# the features are unit vectors, the logits lie in $[-e^t, e^t]$: the scale alone decides how
# peaked the softmax can be.
#
# ## 2. The dual encoder from chapter 01's blocks
#
# * image tower: the ViT of chapter 01; its CLS token summarises the image;
# * text tower: the causal text Transformer of chapter 01, read at the **end-of-text token** —
#   with a causal mask it is the only position that has seen the whole caption (and padding
#   after it cannot change it);
# * two linear projections (no bias) into the shared space, then L2 normalisation;
# * `logit_scale`, a learned scalar, clamped at $\ln 100$ after exponentiation.
#
# Written out in 30 lines:

# %%
tok = Tokenizer.from_world()


class TinyCLIP(torch.nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = ViT(image_size=cfg.image_size, patch_size=cfg.patch_size, dim=cfg.vision_dim,
                          depth=cfg.vision_depth, heads=cfg.vision_heads, mlp_ratio=cfg.mlp_ratio, pool="cls",
                          pre_norm=True, patch_bias=False)
        self.text = TextTransformer(vocab_size=cfg.vocab_size, max_len=cfg.context_length, dim=cfg.text_dim,
                                    depth=cfg.text_depth, heads=cfg.text_heads, mlp_ratio=cfg.mlp_ratio, causal=True)
        self.image_projection = torch.nn.Linear(cfg.vision_dim, cfg.embed_dim, bias=False)
        self.text_projection = torch.nn.Linear(cfg.text_dim, cfg.embed_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def encode_image(self, images):  # (B, 3, H, W) in [0, 1]
        x = (images - 0.5) / 0.5  # to [-1, 1]
        return F.normalize(self.image_projection(self.visual(x)), dim=-1)  # (B, E)

    def encode_text(self, ids, mask):  # (B, T), (B, T)
        hidden = self.text(ids, mask)  # (B, T, D)
        eos = (ids == tok.eos_id).int().argmax(dim=1)  # (B,) first end-of-text position
        pooled = hidden[torch.arange(len(ids)), eos]  # (B, D)
        return F.normalize(self.text_projection(pooled), dim=-1)  # (B, E)

    def forward(self, images, ids, mask):
        scale = self.logit_scale.exp().clamp(max=100.0)
        return clip_loss(self.encode_image(images), self.encode_text(ids, mask), scale)


# %% [markdown]
# Same parameter names as the library's `minivlm.models.CLIP`, so we can copy a library model's
# weights into ours and check that both compute the same embeddings and the same loss:

# %%
# A 3-block ViT on 4×4 patches (as in chapter 01) and a 1-block text tower: the captions are short.
config = CLIPConfig(patch_size=4, vision_dim=64, vision_depth=3, text_dim=64, text_depth=1, embed_dim=64)
library_clip = CLIP(config)
ours = TinyCLIP(config)
ours.load_state_dict(library_clip.state_dict())

world = ShapesWorld(seed=0, image_size=32)
scenes = world.sample(6, n_objects=(1, 2))
images, captions = world.render(scenes), [world.caption(s) for s in scenes]
ids, mask = tok(captions)
with torch.no_grad():
    diff_img = (ours.encode_image(images) - library_clip.encode_image(images)).abs().max().item()
    diff_txt = (ours.encode_text(ids, mask) - library_clip.encode_text(captions)).abs().max().item()
    diff_loss = abs(ours(images, ids, mask).item() - clip_step(library_clip, {"images": images, "ids": ids,
                                                                              "attention_mask": mask})["loss"].item())
print(f"max |ours − library|: image emb {diff_img:.1e}, text emb {diff_txt:.1e}, loss {diff_loss:.1e}")
print(f"CLIP parameters: {minivlm.utils.count_parameters(library_clip):,}")
assert max(diff_img, diff_txt, diff_loss) < 1e-5
viz.show_images(images, titles=captions, ncols=6, scale=1.8);

# %% [markdown]
# ## 3. Training on ShapesWorld
#
# From here on we use the library's `CLIP`. The recipe is designed for a CPU minute: every
# batch holds **one single-object scene of every seen colour–shape pair** (43), captioned
# plainly ("a red circle."). No two captions of a batch then name the same object, so every
# in-batch negative is a true negative; and since each colour appears with five or six shapes,
# the image tower cannot win on colour alone: it must learn shapes. With random scenes instead,
# duplicates in a batch are pushed apart as if they were different, and colour alone separates
# most pairs; in our trials, adding even a few two-object scenes per batch (for retrieval and
# relations) cost zero-shot accuracy at this step budget. The zoo CLIP (section 7) trains
# longer and does include two-object and relational captions.
#
# The scenes come from the **train** split, which never shows the held-out compositions (a
# purple triangle, a red cross …). `fit` shows a progress bar; `clip_step` returns the loss and
# the current temperature scale.

# %%
from minivlm.data.shapesworld import SEEN_COMPOSITIONS  # noqa: E402

STEPS, LR = 800, 2e-3


def make_batches(seed):
    world = ShapesWorld(seed=seed, image_size=32, split="train")

    def batch(step):
        scenes = [world.sample(1, n_objects=1, compositions=[pair])[0] for pair in SEEN_COMPOSITIONS]
        captions = [world.caption(scene, style=0) for scene in scenes]  # "a red circle."
        ids, mask = tok(captions, max_len=config.context_length)
        return {"images": world.render(scenes), "ids": ids, "attention_mask": mask}  # (43, 3, 32, 32), (43, T) x2

    return batch


batches = make_batches(seed=1)
example = make_batches(seed=1)(0)
print("a training batch:", {k: tuple(v.shape) for k, v in example.items()})
print("captions:", tok.batch_decode(example["ids"][[0, 1, 2, 20, -1]]))

minivlm.seed_everything(0)
model = CLIP(config)
history = fit(model, clip_step, batches, steps=STEPS, lr=LR, weight_decay=0.05, warmup=30, desc="CLIP")
print(f"trained {STEPS} steps of {len(example['ids'])} pairs in {history.seconds:.1f} s")

# %%
fig, axes = viz.plt.subplots(1, 2, figsize=(10, 3))
viz.plot_losses({"loss": history.losses["loss"]}, ax=axes[0])
axes[0].axhline(np.log(len(example["ids"])), color="gray", ls="--", lw=1, label="ln B (chance)")
axes[0].legend(fontsize=8)
axes[1].plot(history.steps, history.losses["logit_scale"])
axes[1].axhline(100, color="gray", ls="--", lw=1)
axes[1].set(xlabel="step", ylabel="exp(logit_scale) = 1 / temperature", title="the learned temperature")
fig.tight_layout();

# %% [markdown]
# The scale grows from its initial $1/0.07 \approx 14$: as the embeddings separate, a sharper
# softmax lowers the loss. On a trained model the similarity matrix of a batch of *test*
# scenes now has its bright diagonal (off-diagonal bright cells are captions that fit another
# image too: with few words and many scenes, they happen).

# %%
bench = ShapesBench(image_size=32, seed=1234)
retrieval = bench.retrieval(256)
sim = similarity(model, retrieval["images"], retrieval["captions"])  # (256, 256) cosine similarities
viz.plot_similarity(sim[:8, :8], row_labels=[f"image {i}" for i in range(8)], col_labels=retrieval["captions"][:8],
                    title="trained CLIP: cosine similarity on test scenes");

# %% [markdown]
# ## 4. Zero-shot classification, and prompt ensembling
#
# A class name becomes a classifier by writing it into a sentence that looks like a training
# caption. ShapesBench's classification set has single-object test images of every seen
# colour–shape pair; the classifier chooses among **all 48** pairs. Prompt ensembling (paper
# §3.1.4) embeds each class with several templates and averages the unit vectors: the wording
# averages out and the concept stays. We measure one template alone ("{}." — the bare caption
# "an orange star."), each template alone, then the ensemble. Small prompt engineering: the class
# names get their article ("an orange star", not "a orange star"), as the captions write them.

# %%
templates = list(CLIP_TEMPLATES)
print("templates:", templates)
seen = bench.classification("seen")
heldout = bench.classification("heldout", n_per_class=200)  # 1,000 images: an interval of about ±3 points


def zero_shot(model, data, templates):
    prompts = class_prompts(data["class_names"])  # "red circle" -> "a red circle", "an orange star"
    classifier = zero_shot_classifier(model, prompts, templates)  # (48, E)
    logits = zero_shot_logits(model, data["images"], classifier)  # (N, 48)
    return zero_shot_accuracy(logits, data["labels"]), logits


acc = {}
for name, data in (("seen", seen), ("held-out", heldout)):
    acc[name, "one template"] = zero_shot(model, data, ["{}."])[0]
    acc[name, "ensemble"] = zero_shot(model, data, templates)[0]
    n = len(data["labels"])
    print(f"{name:9} zero-shot accuracy: one template ('{{}}.') {wilson(round(acc[name, 'one template'] * n), n)}, "
          f"ensemble of {len(templates)} {wilson(round(acc[name, 'ensemble'] * n), n)}")
per_template = {t: zero_shot(model, seen, [t])[0] for t in templates}
for t, a in per_template.items():
    print(f"  seen, template {t!r:28} {a:.1%}")
zs_seen, zs_heldout = acc["seen", "one template"], acc["held-out", "one template"]
ensemble_gain = acc["seen", "ensemble"] - acc["seen", "one template"]
print(f"ensemble gain (seen): {ensemble_gain:+.1%} over the plain prompt, "
      f"{acc['seen', 'ensemble'] - float(np.mean(list(per_template.values()))):+.1%} over the mean single template")

# %% [markdown]
# **Held-out compositions.** The held-out set shows only the five pairs the train split never
# showed (purple triangle, red cross, green star, blue diamond, yellow square) — every colour
# and every shape was seen, never together. Which classes does the model confuse them with?

# %%
_, logits_heldout = zero_shot(model, heldout, templates)
pred = logits_heldout.argmax(1)
names = heldout["class_names"]
for label in heldout["labels"].unique().tolist():
    rows = heldout["labels"] == label
    counts = torch.bincount(pred[rows], minlength=len(names))
    top = counts.argsort(descending=True)[:3]
    print(f"{names[label]:15} → " + ", ".join(f"{names[i]} ({int(counts[i])})" for i in top if counts[i] > 0))
pick = torch.arange(0, len(pred), len(pred) // 10)  # two images of each held-out class
viz.show_images(heldout["images"][pick],
                titles=[("✓ " if pred[i] == heldout["labels"][i] else "✗ ") + names[pred[i]]
                        for i in pick.tolist()],
                ncols=5, scale=1.8);

# %% [markdown]
# ## 5. Retrieval: R@1 and R@5, both ways
#
# 256 test scenes, one caption each (all distinct). Image → text: rank the 256 captions for
# each image; text → image: rank the 256 images for each caption. R@k is the fraction whose
# match lands in the top k (ties count against the model).

# %%
ret = retrieval_metrics(sim)
print(f"image→text R@1 {ret['i2t_r1']:.1%}, R@5 {ret['i2t_r5']:.1%}; text→image R@1 {ret['t2i_r1']:.1%}, "
      f"R@5 {ret['t2i_r5']:.1%} (chance R@1 = {1 / len(sim):.1%})")

# %% [markdown]
# The nearest captions of a few test images, and the nearest images of a few captions:

# %%
top_texts = sim[:4].topk(3, dim=1).indices  # (4, 3)
fig, axes = viz.plt.subplots(4, 2, figsize=(10, 6.4), gridspec_kw={"width_ratios": [1, 6]})
for i, ((ax_image, ax_text), row) in enumerate(zip(axes, top_texts)):
    ax_image.imshow(retrieval["images"][i].permute(1, 2, 0))
    ax_image.axis("off")
    ranked = [f"{rank}. {'✓' if j == i else '✗'} {retrieval['captions'][j]}"
              for rank, j in enumerate(row.tolist(), 1)]
    ax_text.text(0, 0.5, f"true: {retrieval['captions'][i]}\n" + "\n".join(ranked), va="center", fontsize=9)
    ax_text.axis("off")
fig.tight_layout()

# %%
queries = ["a red circle.", "a blue triangle.", "a green square and a white star."]
query_sim = similarity(model, retrieval["images"], queries).T  # (3, 256)
top_images = query_sim.topk(4, dim=1).indices  # (3, 4)
for q, row in zip(queries, top_images):
    print(f"{q!r}: " + " | ".join(retrieval["captions"][j] for j in row.tolist()))
viz.show_images(retrieval["images"][top_images.flatten()],
                titles=[f"{q[:22]}… #{r + 1}" if len(q) > 22 else f"{q} #{r + 1}" for q in queries for r in range(4)],
                ncols=4, scale=1.8);

# %% [markdown]
# ## 6. Does CLIP read word order? Relation swaps
#
# Winoground-style pairs (ShapesBench `swap`): image 0 shows "a red circle to the left of a
# blue square", image 1 the same two objects swapped, and the two captions use the same words
# in a different order. Text score: each image prefers its own caption; image score: each
# caption prefers its own image; group: both. A bag-of-words model scores at chance
# (1/4, 1/4, 1/6).

# %%
sw = bench.swap(128)
swap = swap_scores(swap_similarity(model, sw["images"], sw["captions"]))  # from scores[n, image i, caption j]
print(", ".join(f"{k} score {v:.1%}" for k, v in swap.items()), "(chance: text 25%, image 25%, group 16.7%)")
viz.show_images(sw["images"][:3].flatten(0, 1), titles=[c for pair in sw["captions"][:3] for c in pair], ncols=6,
                scale=2.2);

# %% [markdown]
# ## 7. LiT: lock the image tower, tune the text
#
# Zhai et al. (*LiT: Zero-Shot Transfer with Locked-image text Tuning*, 2022) start from an
# image tower pretrained on a large labelled dataset, **lock** it, and train only the text tower
# contrastively to match its embeddings. The image side is then as good as it will ever be from
# step 0 and the text side only has to learn to point at it.
#
# Our pretrained image tower is the zoo CLIP's (`zoo.load("clip")`: the same ViT as above, trained
# for longer with the recipe of `minivlm zoo build clip`). That is a *contrastively* pretrained
# tower rather than LiT's supervised one — the choice the course makes because it is the tower
# every later chapter loads, and it costs no extra training here. We compare, at the same
# number of steps and on the same batches:
#
# * **full**: both towers from scratch (what section 3 did, but shorter);
# * **LiT**: the zoo's image tower and image projection locked, a fresh text tower trained.

# %%
pretrained = zoo.load("clip")
print("zoo CLIP metrics (from its manifest):")
for key, value in zoo.manifest("clip")["metrics"].items():
    print(f"  {key:18} {value:.1%}")


def lit_model():
    m = CLIP(pretrained.config)
    m.visual.load_state_dict(pretrained.visual.state_dict())
    m.image_projection.load_state_dict(pretrained.image_projection.state_dict())
    freeze(m.visual)
    freeze(m.image_projection)
    return m


lit_steps = 60
runs = {}
for name, make in (("full", lambda: CLIP(pretrained.config)), ("LiT", lit_model)):
    minivlm.seed_everything(1)
    m = make()
    trainable = minivlm.utils.count_parameters(m, trainable_only=True)
    h = fit(m, clip_step, make_batches(seed=2), steps=lit_steps, lr=LR, weight_decay=0.05, warmup=30, desc=name)
    zs = zero_shot(m, seen, ["{}."])[0]
    r1 = retrieval_metrics(similarity(m, retrieval["images"], retrieval["captions"]))["i2t_r1"]
    runs[name] = {"zero-shot seen": zs, "i2t R@1": r1, "trainable": trainable, "seconds": h.seconds,
                  "loss": h.last("loss")}
    print(f"{name:4}: {trainable:,} trainable parameters, {h.seconds:.1f} s, final loss {h.last('loss'):.3f}, "
          f"zero-shot (seen) {zs:.1%}, image→text R@1 {r1:.1%}")
viz.plot_bars({f"{k} zero-shot": v["zero-shot seen"] for k, v in runs.items()}
              | {f"{k} R@1": v["i2t R@1"] for k, v in runs.items()}, title=f"{lit_steps} steps each");

# %% [markdown]
# ## What we measured
#
# Every number below was computed in this run. The bar: zero-shot accuracy on seen
# compositions ≥ 90 % with the plain prompt; the rest are reported (the target for held-out
# compositions is 50 %).

# %%
chapter_seconds = time.perf_counter() - chapter_start
results = {
    "zero-shot seen, plain prompt (the bar)": zs_seen,
    "zero-shot seen, ensemble": acc["seen", "ensemble"],
    "zero-shot held-out, plain prompt": zs_heldout,
    "zero-shot held-out, ensemble": acc["held-out", "ensemble"],
    "ensemble gain (seen, vs plain prompt)": ensemble_gain,
    **{f"retrieval {k}": v for k, v in ret.items()},
    **{f"swap {k}": v for k, v in swap.items()},
    **{f"{k} ({lit_steps} steps): zero-shot seen": v["zero-shot seen"] for k, v in runs.items()},
    **{f"{k} ({lit_steps} steps): i2t R@1": v["i2t R@1"] for k, v in runs.items()},
    "final temperature scale": float(model.scale().detach()),
    "chapter seconds": chapter_seconds,
}
for name, value in results.items():
    print(f"{name:42} {value:.4g}")
n_seen, n_held = len(seen["labels"]), len(heldout["labels"])
print(f"\nwith 95 % intervals: zero-shot seen {wilson(round(zs_seen * n_seen), n_seen)}, held-out "
      f"{wilson(round(zs_heldout * n_held), n_held)}, "
      f"image→text R@1 {wilson(round(ret['i2t_r1'] * len(sim)), len(sim))}")

assert abs(loss - torch_loss.item()) < 1e-6, "the numpy pseudocode and clip_loss must agree"
assert zs_seen >= 0.90, f"zero-shot accuracy (plain prompt) on seen compositions should be ≥ 90 %, got {zs_seen:.1%}"
assert ret["i2t_r1"] > 10 / len(sim), "retrieval R@1 should be far above chance"

# %% [markdown]
# ## What we saw
#
# * The paper's pseudocode runs as printed and equals `clip_loss`: the whole method is a
#   symmetric cross-entropy over the $N \times N$ similarity matrix, with the pairs on the diagonal.
# * Trained for about a minute, a CLIP of a quarter of a million parameters names single objects
#   it was never labelled with: the seen-composition zero-shot accuracy with the plain prompt
#   ("an orange star.", the bar) and with the ensemble are printed and asserted above. The
#   learned temperature scale rises from its initial 14 during training (plot in section 3).
# * **Prompt ensembling** — compare the "one template" and "ensemble" lines and the per-template
#   accuracies above. The single template is the exact training caption ("an orange star."), and
#   the other templates wrap it in words this model never saw in training, so here the ensemble
#   mostly adds off-distribution prompts and its gain over the plain prompt is not expected to
#   be positive; compare it with the mean single template too. The paper's
#   +3.5 % on ImageNet came from templates that close the gap between a bare label and messy web
#   captions — a gap ShapesWorld's clean captions do not have.
# * **Held-out compositions**: the accuracy on the five never-seen colour–shape pairs is printed
#   above next to the 50 % target, on 1,000 images (200 per pair), so its 95 % interval is about
#   ±2 points (on 50 images it would span some 17 points, too wide to tell two runs apart).
#   The confusion list shows what the model picks when it fails (a seen pair that
#   shares the colour or the shape). Composing two attributes that never co-occurred in training
#   is the hard case for a contrastive model; this one, on single objects, mostly manages it.
# * **Retrieval** R@1 and R@5, both directions, are printed in section 5 against a chance R@1 of
#   1/256. The test scenes hold one to four objects and any paraphrase, while this CLIP trained
#   on single objects with the plainest caption: what it retrieves comes from composing what it
#   learned. Many misses are captions that fit another scene as well (same objects, another
#   layout or size), which the nearest-caption pictures show.
# * **Relation swaps**: compare the printed text / image / group scores with chance (25 %, 25 %,
#   16.7 %). This chapter's CLIP never saw a relational caption (nor a two-object scene), so
#   it has no reason to read word order, and scores at or even below chance are the expected
#   result: when a model cannot tell the two orders apart it tends to prefer the *same* caption
#   for both images, which fails the text score on both, worse than a coin flip. The
#   zoo CLIP, which did see relational captions, reports its swap scores in its manifest
#   (printed in section 7). In-batch negatives almost never differ by word order alone, so even
#   with such captions contrastive training has little reason to learn it — Winoground's
#   finding for real CLIPs.
# * **LiT vs full** at equal steps: the numbers and bars of section 7. LiT starts from an image
#   tower that has already seen this world for many more steps and trains about half the
#   parameters; the full run starts both towers from nothing. That is not LiT's setting (a
#   supervised tower pretrained on other data), so read it as what a good locked tower buys at
#   a small step budget, as measured in this run.
#
# **Exercises:** `exercises/02_clip.ipynb` — the loss for a batch that repeats a caption (every
# pair of a group a positive), a zero-shot classifier from class names and templates, recall@k
# with several right answers per query, and an experiment: the temperature learned or fixed;
# `minivlm check exercises/02_clip.ipynb` tells you what is wrong.
#
# **References.** Radford et al., *Learning Transferable Visual Models From Natural Language
# Supervision* (2021, CLIP); Zhai et al., *LiT: Zero-Shot Transfer with Locked-image text
# Tuning* (2022); Thrush et al., *Winoground* (2022); van den Oord et al., *Representation
# Learning with Contrastive Predictive Coding* (2018, InfoNCE).
