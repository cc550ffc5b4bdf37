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
# # 00 · ShapesWorld and the map of the field
#
# This course rebuilds some forty vision-language papers, each as a tiny model you train on a
# laptop CPU in about a minute. That is only possible on data that is small, clean, unlimited
# and — above all — *understood*: when a model fails, we want to know exactly what the image
# contained. So every chapter uses one synthetic world, **ShapesWorld**.
#
# First, the map: the papers and the chapter that rebuilds each.
#
# | piece | library |
# |---|---|
# | the world: scenes, rendering, captions, noisy captions, VQA, relation swaps | `minivlm/data/shapesworld.py` |
# | the word tokenizer every model shares | `minivlm/data/tokenizer.py` |
# | ShapesBench: the fixed evaluation sets | `minivlm/data/bench.py` |
# | intervals for every measured number; VQA accuracy | `minivlm/eval/stats.py`, `minivlm/eval/answers.py` |
# | the plots | `minivlm/viz.py` |

# %%
import time
from collections import Counter

import torch

import minivlm
from minivlm import viz
from minivlm.data import (COLORS, HELDOUT_COMPOSITIONS, RELATIONS, SHAPES, SIZES, ShapesBench, ShapesWorld,
                          Tokenizer)
from minivlm.eval import recall_at_k, retrieval_metrics, swap_scores, vqa_accuracy, zero_shot_accuracy
from minivlm.timeline import PAPERS, plot_timeline

minivlm.seed_everything(0)
chapter_start = time.perf_counter()
plot_timeline();

# %% [markdown]
# Three waves are visible. **2019–2021**: BERT-style encoders fuse image regions and words
# (ViLBERT, VisualBERT, ViLT) while CLIP shows that two separate encoders, trained only to
# match images with their captions, transfer zero-shot. **2021–2022**: fusion and unified
# models (ALBEF, BLIP, CoCa, BEiT-3) combine contrastive, matching and generative objectives.
# **2023–2024**: a frozen large language model does the talking, and the question becomes how
# to *bridge* vision into it (Flamingo, BLIP-2, LLaVA), how to see more pixels (LLaVA-NeXT,
# CogAgent) and how to add every other modality (ImageBind, Meta-Transformer).

# %%
by_family = Counter(p.family for p in PAPERS)
for family, n in by_family.most_common():
    print(f"{family:28} {n:2d} papers")

# %% [markdown]
# ## 1. A scene graph, then pixels and words
#
# A scene is a list of 1–4 objects. Each object has a **shape**, a **colour**, a **size**, a
# position, a depth (distance from the camera) and an exact bounding box. Everything else —
# the image, every caption, every question, later audio, depth maps and point clouds — is
# *derived* from this graph, so the ground truth of every task is known exactly.

# %%
print("shapes:   ", SHAPES)
print("colours:  ", list(COLORS))
print("sizes:    ", SIZES)
print("relations:", RELATIONS)

world = ShapesWorld(seed=0, image_size=32)
scenes = world.sample(8)
for i, obj in enumerate(scenes[0].objects):
    print(f"object {i}: {obj.size} {obj.color} {obj.shape}, centre ({obj.x:.2f}, {obj.y:.2f}), "
          f"radius {obj.radius:.2f}, depth {obj.depth:.2f}")
print("relations (i, relation, j):", "; ".join(f"{i} {rel} {j}" for i, rel, j in scenes[0].relations()))

# %%
images = world.render(scenes)  # (8, 3, 32, 32) floats in [0, 1]
print(images.shape, images.dtype, f"range [{images.min():.2f}, {images.max():.2f}]")
viz.show_images(images, titles=[f"{len(s.objects)} obj" for s in scenes],
                boxes=[[o.box for o in s.objects] for s in scenes], ncols=8);

# %% [markdown]
# The same scenes at a higher resolution — the scene graph is resolution-free, and later
# chapters (high resolution, grounding) render larger canvases:

# %%
viz.show_images(world.render(scenes[:4], image_size=128), ncols=4, scale=2.2);

# %% [markdown]
# ## 2. Text from the scene graph
#
# Captions come with paraphrases (so that a model must learn the content, not the template),
# relational captions describe how two objects are arranged, and visual questions cover
# colour, shape, count, existence, relations and position.

# %%
scene = scenes[0]
print("captions:")
for c in world.captions(scene):
    print("   ", c)
print("relational:", world.relational_caption(scene))
print("\nvisual questions:")
for question, answer, kind in world.vqa(scene)[:8]:
    print(f"   [{kind:8}] {question:45} → {answer}")

# %% [markdown]
# ### Web-like noise
#
# Web alt-texts often do not describe their image. ALBEF and BLIP (chapters 04 and 06) are
# about learning from such noisy pairs, so ShapesWorld has a knob: with probability `noise` a
# caption is replaced by the caption of another scene.

# %%
noisy_world = ShapesWorld(seed=0, noise=0.4)
noisy_scenes = noisy_world.sample(2000)
captions, clean = noisy_world.noisy_captions(noisy_scenes)
noise_rate = 1 - clean.float().mean().item()
print(f"noise knob 0.4 → measured fraction of wrong captions: {noise_rate:.3f}")
for c, ok in list(zip(captions, clean.tolist()))[:4]:
    print("   ", "clean" if ok else "NOISY", "|", c)

# %% [markdown]
# ## 3. Splits and held-out compositions
#
# Some colour–shape pairs never appear in the training split, although each colour and each
# shape does. A model that has learned "purple" and "triangle" *separately* should still
# recognise a purple triangle: chapter 02 measures exactly this compositional generalisation.

# %%
print("held-out compositions:", HELDOUT_COMPOSITIONS)
train_scenes = ShapesWorld(seed=1, split="train").sample(3000)
train_pairs = Counter((o.color, o.shape) for s in train_scenes for o in s.objects)
heldout_in_train = sum(train_pairs[pair] for pair in HELDOUT_COMPOSITIONS)
heldout_scenes = ShapesWorld(seed=1, split="heldout").sample(500)
heldout_coverage = sum(any((o.color, o.shape) in HELDOUT_COMPOSITIONS for o in s.objects)
                       for s in heldout_scenes) / len(heldout_scenes)
print(f"held-out pairs among {sum(train_pairs.values())} training objects: {heldout_in_train}")
print(f"heldout-split scenes containing a held-out pair: {heldout_coverage:.0%}")

# %% [markdown]
# ## 4. Dataset statistics
#
# A world is only useful if it is balanced: every shape, colour and object count should be
# about equally frequent, so that a model cannot score by guessing the majority class.

# %%
objects = [o for s in train_scenes for o in s.objects]
shape_counts = Counter(o.shape for o in objects)
color_counts = Counter(o.color for o in objects)
count_counts = Counter(len(s.objects) for s in train_scenes)
relation_counts = Counter(rel for s in train_scenes for _, rel, _ in s.relations())

fig, axes = viz.plt.subplots(1, 4, figsize=(15, 2.8))
viz.plot_bars(dict(sorted(shape_counts.items())), title="shapes", ax=axes[0])
viz.plot_bars(dict(sorted(color_counts.items())), title="colours", ax=axes[1])
viz.plot_bars({str(k): v for k, v in sorted(count_counts.items())}, title="objects per scene", ax=axes[2])
viz.plot_bars(dict(sorted(relation_counts.items())), title="relations", ax=axes[3])
for ax in axes:
    ax.tick_params(axis="x", rotation=60)
fig.tight_layout()


def imbalance(counts):
    """max/min frequency ratio: 1.0 is perfectly balanced."""
    return max(counts.values()) / min(counts.values())


print(f"shape imbalance {imbalance(shape_counts):.2f}, colour imbalance {imbalance(color_counts):.2f}, "
      f"object-count imbalance {imbalance(count_counts):.2f}")

# %% [markdown]
# ## 5. The tokenizer
#
# One word-level tokenizer for the whole course. Its vocabulary is fixed — the world's words,
# the words later chapters need (world facts, instructions), special tokens (`<pad>`, `<bos>`,
# `<eos>`, `<mask>`, `<image>`, `<box>`, location bins …) and reserved slots — so that trained
# weights stay valid from chapter to chapter. Unknown words become `<unk>` instead of crashing.

# %%
tok = Tokenizer.from_world()
print("vocabulary size:", len(tok), "| first specials:", tok.specials[:8])
ids, mask = tok(["a red circle to the left of a blue square", "is there a zebra?"], max_len=14)
print(ids)
print(tok.decode(ids[0]), "|", tok.decode(ids[1]))

# %% [markdown]
# ## 6. ShapesBench: the fixed evaluation sets and their metrics
#
# Every chapter evaluates on the same fixed sets, with the same metric code:
# zero-shot **accuracy**, retrieval **R@1 / R@5**, the Winoground-style **relation-swap**
# text/image/group scores, and **VQA accuracy**. Each metric on a case you can check by hand:

# %%
acc = zero_shot_accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]]), torch.tensor([0, 1, 1]))
print("zero-shot accuracy:", acc)  # rows 0 and 1 right, row 2 wrong
sim = torch.tensor([[0.9, 0.1, 0.0],   # query 0: its target (column 0) ranks 1st
                    [0.2, 0.5, 0.8],   # query 1: target ranks 2nd
                    [0.0, 0.3, 0.7]])  # query 2: target ranks 1st
r1, r2 = recall_at_k(sim, 1), recall_at_k(sim, 2)
print("recall@1:", r1, " recall@2:", r2)
perfect = retrieval_metrics(torch.eye(6) + 0.01 * torch.rand(6, 6))
print("retrieval on a near-identity similarity:", perfect)
# scores[n, i, j] = score of image i with caption j, for 2 swap pairs
s = torch.tensor([[[0.9, 0.2], [0.3, 0.8]],    # pair 0: every comparison right
                  [[0.6, 0.7], [0.5, 0.4]]])   # pair 1: image 0 prefers the wrong caption
swaps = swap_scores(s)
print("swap scores:", swaps)
vqa = vqa_accuracy(["Red", "three", "yes"], ["red", "3", "yes"])
print("VQA accuracy (answers normalised: case, number words):", vqa)

assert abs(acc - 2 / 3) < 1e-6 and abs(r1 - 2 / 3) < 1e-6 and r2 == 1.0
assert all(v == 1.0 for v in perfect.values())
assert swaps == {"text": 0.5, "image": 0.5, "group": 0.5} and vqa == 1.0

# %%
bench = ShapesBench(image_size=32)
swap = bench.swap(n=4)
viz.show_images(swap["images"][:2].flatten(0, 1), titles=[c for pair in swap["captions"][:2] for c in pair],
                ncols=4, scale=2.4);
print({name: len(bench.classification(split=name)["labels"]) for name in ("seen", "heldout")},
      "classification images;", len(bench.retrieval()["captions"]), "retrieval pairs")

# %% [markdown]
# ## 7. Render speed
#
# Every chapter renders its training data on the fly, so rendering must be cheap next to a
# training step. Rendering is vectorised over the whole batch (signed distances in torch, no
# Python loop over pixels), with anti-aliased edges.

# %%
from minivlm.data.shapesworld import time_render  # noqa: E402

speed = time_render(n=256, image_size=32)
print(f"{speed['n']} scenes at {speed['image_size']}×{speed['image_size']}: median {1e3 * speed['median_s']:.1f} ms "
      f"over {speed['repeats']} repeats ({speed['scenes_per_s']:,.0f} scenes per second)")

# %% [markdown]
# ## What we measured

# %%
chapter_seconds = time.perf_counter() - chapter_start
print(f"render 256 scenes at 32×32:          {speed['median_s'] * 1000:.1f} ms (median)")
print(f"measured caption noise (knob 0.4):   {noise_rate:.3f}")
print(f"held-out pairs in 3000 train scenes: {heldout_in_train}")
print(f"shape / colour imbalance:            {imbalance(shape_counts):.2f} / {imbalance(color_counts):.2f}")
print(f"chapter seconds:                     {chapter_seconds:.1f}")

assert heldout_in_train == 0, "held-out compositions must never appear in the training split"
assert heldout_coverage == 1.0, "every heldout-split scene must contain a held-out composition"
assert abs(noise_rate - 0.4) < 0.04, f"the noise knob should give ≈40 % wrong captions, got {noise_rate:.1%}"
assert imbalance(shape_counts) < 1.3 and imbalance(color_counts) < 1.4, "shapes and colours should be balanced"
assert speed["median_s"] < 0.5, "rendering 256 small scenes should take a fraction of a second"

# %% [markdown]
# ## What we saw
#
# * A scene graph of 1–4 objects gives images, captions, relations and questions whose ground
#   truth is exact; later chapters derive grounding boxes, depth, audio and video from it.
# * The training split never contains the held-out colour–shape pairs; the noise knob does
#   what it says; shapes and colours are balanced.
# * Rendering a training batch costs milliseconds — the models, not the data, will set the pace.
#
# **Next:** chapter 01 builds the Transformer blocks every model in the course is made of.
#
# **References.** Johnson et al., *CLEVR* (2017) — the classic diagnostic synthetic world;
# Thrush et al., *Winoground* (2022) — the swap test; the timeline's papers are cited in
# their chapters.
