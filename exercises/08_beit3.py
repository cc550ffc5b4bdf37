# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -nbgrader
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
# > **Exercises.** This notebook is generated from `solutions/08_beit3.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/08_beit3.ipynb`.

# %% [markdown]
# # 08 · BEiT-3 — exercises
#
# Chapter 08 (`notebooks/08_beit3.ipynb`) wrote the visual tokenizer's lookup inline and used the
# library for the rest. Here you write the pieces around that lookup and the masking: how the
# codes themselves move (BEiT-2's exponential moving average, an online k-means), the VQ-KD loss
# that trains the tokenizer's encoder and decoder, and BEiT's block-wise masking. Then an
# experiment: how many codes die without restarts, and how many with. The cell after each task
# runs `check(...)` on fresh inputs and tells you what is wrong. At the end your pieces run next
# to the library's (`minivlm/nn/quantize.py`, `minivlm/models/beit3.py`,
# `minivlm/data/masking.py`). Grade the whole notebook from a terminal with
# `minivlm check exercises/08_beit3.ipynb`.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — how the codes move: one EMA step
#
# Chapter 08 §1 snaps each encoder vector to its nearest code on the unit sphere and says that the
# codes themselves move "by an exponential moving average". That is k-means, run online, one
# batch at a time (VQ-VAE-2; BEiT-2's tokenizer). Each code j keeps two running statistics: a
# count $n_j$ and a sum $s_j$ of the vectors assigned to it. One step with a batch of vectors
# $z_i$ and their chosen codes $k_i$, at decay $\gamma$ (0.99):
#
# $$n_j \leftarrow \gamma\, n_j + (1 - \gamma)\, \#\{i : k_i = j\}, \qquad
#   s_j \leftarrow \gamma\, s_j + (1 - \gamma) \sum_{i : k_i = j} z_i, \qquad
#   e_j = s_j / \tilde n_j,$$
#
# where $\tilde n_j = \frac{n_j + \varepsilon}{N + K\varepsilon}\, N$ with $N = \sum_j n_j$
# (Laplace smoothing: the total count stays N, and no count is ever 0, so no code divides by
# zero). Every code's statistics decay at every step, also those of the codes that no vector chose.
#
# `codebook` `(K, D)`, `cluster_size` `(K,)` (the $n_j$), `embed_sum` `(K, D)` (the $s_j$), `z`
# `(..., D)` the vectors as the search saw them, with any leading shape (e.g. `(B, N, D)`), and
# `indices` `(...)` long, the chosen code of each; `decay` and `eps` floats. Return the new
# `(codebook, cluster_size, embed_sum)`, in the dtype of the statistics, as new tensors: leave the
# ones you are given unchanged (the caller decides when to commit a step). A batch may hold no
# vector at all; then only the decay acts.

# %%
def ema_update(codebook, cluster_size, embed_sum, z, indices, decay, eps=1e-5):
    raise NotImplementedError(
        "chapter 08 §1 (the VQ-KD loss: codes moved by an exponential moving average) and the equations "
        "above: per code, a count and a sum of the vectors that chose it in this batch, both blended with "
        "the old statistics, then their ratio with the smoothed count")


# %%
check("08.ema_update", ema_update)

# %% [markdown]
# ## Task 2 — the VQ-KD loss
#
# The tokenizer's encoder gives a vector $h_i$ per patch; it snaps to its code $v_{z_i}$; the
# decoder rebuilds, from the codes alone, a feature $o_i$ that should point where the teacher's
# (CLIP's) feature $t_i$ points. Chapter 08 §1's loss:
#
# $$\mathcal{L}_{\mathrm{VQ\text{-}KD}} = \frac{1}{N}\sum_{i}\big(1 - \cos(o_i, t_i)\big)
#   + \beta\,\big\lVert \ell_2(h_i) - \mathrm{sg}[\ell_2(v_{z_i})]\big\rVert^2 ,$$
#
# the first term a mean over every patch of the batch, the second (the *commitment*) the mean
# squared difference over every patch and every component, between the unit encoder vector and
# its unit code ($\ell_2$: L2-normalised; sg: stop-gradient). The codes get no gradient from this
# loss: they move by the EMA of task 1.
#
# `decoded` `(B, N, T)` and `teacher` `(B, N, T)` features, `z` `(B, N, D)` the raw encoder vectors,
# `codebook` `(K, D)` raw codes, `indices` `(B, N)` long, each patch's code, `beta` a float. Return
# the loss, a scalar tensor through which gradients reach `decoded` and `z`, and not the codebook.

# %%
def vq_kd_loss(decoded, teacher, z, codebook, indices, beta):
    raise NotImplementedError(
        "chapter 08 §1, the VQ-KD equation: the distillation term is a cosine per patch, the commitment "
        "term compares unit vectors, and sg[·] says which side of it may learn")


# %%
check("08.vq_kd_loss", vq_kd_loss)

# %% [markdown]
# ## Task 3 — block-wise masking
#
# BEiT-3 masks 40 % of an image's patches and predicts their visual tokens. Which 40 % matters.
# Images are smooth: a patch looks much like its neighbours, so a patch masked on its own can be
# filled in by copying from the visible patches around it, and the model learns interpolation,
# not what objects are. BEiT masks **blocks** instead, so that most masked patches have no
# visible neighbour and must be inferred from what the rest of the image means.
#
# The algorithm (BEiT's, as `minivlm.data.masking.block_mask`), for one image of `grid × grid`
# patches:
#
# 1. the target is `ceil(ratio · grid²)` masked patches;
# 2. while fewer than the target are masked: with `needed` = target − masked so far, draw a
#    block **area** uniformly in `[min(min_patches, needed), needed]` and an **aspect ratio**
#    log-uniformly in `[min_aspect, 1 / min_aspect]` (so that h/w = 3 is as likely as w/h = 3);
#    its height is `round(√(area · aspect))`, its width `round(√(area / aspect))`, each clipped
#    to `[1, grid]`; place it at a random top-left corner where it fits, and mask it (blocks may
#    overlap);
# 3. return the mask flattened **row-major**, `(grid²,)` bool, True = masked: the patch order of
#    `patchify`, where patch (row r, column c) is number r · grid + c.
#
# Draw every random number from `generator` (`torch.rand((), generator=generator)`,
# `torch.randint(n, (), generator=generator)`), so that a seed gives its mask back. The check
# draws a few hundred masks on grids of several sizes, with other `min_patches` and `min_aspect`
# too, and compares how their blocks are shaped and placed with the library's.

# %%
def block_mask(grid, ratio, generator, min_patches=2, min_aspect=0.3):
    raise NotImplementedError(
        "chapter 08 §3 (why images are masked in blocks, and the masked patches drawn greyed) and the "
        "algorithm above: every block is a rectangle that fits inside the grid, of a random area, shape and "
        "place; the shape's draw is symmetric between tall and wide")


# %%
check("08.block_mask", block_mask)

# %% [markdown]
# ## Task 4 — the experiment: dead codes, with and without restarts
#
# Chapter 08 §1 reports that all 64 codes of the zoo's tokenizer are in use "only because dead
# codes were restarted". Measure it. A code that no vector chooses never moves (its statistics
# only decay), so it stays where it is, unchosen, for good: a **dead code**. A **restart** puts
# every code that no vector chose since the last restart onto a random vector of the current
# batch (and its statistics with it, `embed_sum` = that vector, `cluster_size` = 1, or the next
# EMA step pulls it back), giving it a chance to win some.
#
# Write `dead_codes(features, codebook, steps, restart_every, generator, batch_size=256, decay=0.99)`.
# `features` `(M, D)` are unit encoder vectors (the zoo tokenizer's, on fresh images), `codebook`
# `(K, D)` the codes to start from. Train the codes twice from that start, with your `ema_update`
# (statistics starting at `cluster_size` = ones, `embed_sum` = the codebook: each code as if one
# vector, itself, had chosen it): `"without"` restarts and `"with"` a restart every
# `restart_every` steps (counting the codes chosen since the last restart). A step draws
# `batch_size` rows of `features` at random with `generator`, snaps each to its nearest code by
# cosine, and applies one EMA step. At the end, count the codes that no vector of `features`
# chooses. Return
#
# `{"without": {"codebook": (K, D), "dead": int, "restarted": 0}, "with": {"codebook": (K, D), "dead": int,
#   "restarted": int}}` (`"restarted"`: how many restarts, summed over the run).
#
# Change nothing you are given. The check runs your function on fresh features, recounts the dead
# codes of the codebooks you return, checks that the dead codes of the run without restarts
# still point where they started, runs it once more with no restart due, and runs the experiment
# itself with another generator to see that your counts are within its spread.

# %%
def dead_codes(features, codebook, steps, restart_every, generator, batch_size=256, decay=0.99):
    raise NotImplementedError(
        "chapter 08 §1 (the codes in use and the restarts of the build) and task 1; the two arms differ "
        "only in the restarts, and a restart must move a code's EMA statistics along with it")


# %%
check("08.dead_codes", dead_codes)

# %% [markdown]
# Your experiment on the encoder vectors of the zoo's tokenizer for 512 fresh images (8,192
# patches), 64 codes started from random directions, as a freshly built quantiser starts; three
# generators.

# %%
import time  # noqa: E402

from minivlm import zoo  # noqa: E402
from minivlm.data import ShapesBench  # noqa: E402

visual_tokenizer = zoo.load("beit3_tokenizer").eval()
with torch.no_grad():
    encoded = visual_tokenizer.encode(ShapesBench(seed=808).captioning(512)["images"])  # (512, 16, 32)
features = F.normalize(encoded.reshape(-1, encoded.shape[-1]), dim=-1)  # (8192, 32)
start_codes = torch.randn(64, features.shape[1], generator=torch.Generator().manual_seed(8))
start = time.perf_counter()
runs = [dead_codes(features, start_codes, 300, 25, torch.Generator().manual_seed(seed)) for seed in range(3)]
print(f"measured in {time.perf_counter() - start:.1f} s")
for arm in ("without", "with"):
    print(f"{arm:7} restarts: dead codes {[r[arm]['dead'] for r in runs]} of 64; restarts made "
          f"{[r[arm]['restarted'] for r in runs]}")

# %% [markdown]
# **What the run shows** (the figures printed above). From random directions, most of the 64
# codes die without restarts: the codes that lie nearest the data win its vectors from the first
# steps, and the others are never chosen, so their statistics only decay and they never move
# towards the data. With a restart every 25 steps the dead codes are put back on data vectors and
# almost all of them stay in use. The restarts are what keeps the zoo tokenizer's vocabulary
# alive at this scale (the chapter's claim); whether a k-means start on the first batch would do
# as well without restarts is not tested here.

# %% [markdown]
# ## Put together: your pieces beside the library's
#
# The next cells move a library quantiser's codes with your EMA step, score the zoo tokenizer with
# your loss, and draw your block masks next to the library's.

# %%
from minivlm import grading  # noqa: E402
from minivlm.data.masking import block_mask as library_block_mask  # noqa: E402
from minivlm.models.beit3 import tokenizer_batches, vqkd_step  # noqa: E402
from minivlm.nn.quantize import VectorQuantizer  # noqa: E402

yours = {"08.ema_update": ema_update, "08.vq_kd_loss": vq_kd_loss, "08.block_mask": block_mask}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("tasks 1-3 pass: your pieces next to the library's" if ready
      else "finish tasks 1-3 first: the next cells use them")

# %% [markdown]
# **Your EMA step is the quantiser's.** A library quantiser with EMA codes, in training mode, moves
# its codes when it looks at a batch; your step from the same statistics must land on the same
# codes.

# %%
if ready:
    vq = VectorQuantizer(codebook_size=16, dim=8, ema=0.99)
    stats = (vq.codebook.clone(), vq.cluster_size.clone(), vq.embed_sum.clone())
    z = torch.randn(4, 10, 8)
    out = vq(z)  # training mode: one EMA step
    mine = ema_update(*stats, F.normalize(z, dim=-1), out.indices, 0.99, vq.eps)
    print("codes moved by the quantiser:", int((vq.codebook != stats[0]).any(1).sum()), "of 16; max |yours − "
          f"library| = {(mine[0] - vq.codebook).abs().max():.1e}")

# %% [markdown]
# **Your loss is the tokenizer's.** The zoo tokenizer (eval mode: looking does not move its codes)
# on a batch of 16 images and the zoo CLIP's patch features: your VQ-KD loss against the library's
# training step.

# %%
if ready:
    clip = zoo.load("clip")
    batch = tokenizer_batches(clip, 16, seed=3)(0)
    with torch.no_grad():
        h = visual_tokenizer.encode(batch["images"])  # (16, 16, 32)
        decoded, q = visual_tokenizer(batch["images"])
        library_loss = vqkd_step(visual_tokenizer, batch)["loss"]
        your_loss = vq_kd_loss(decoded, batch["targets"], h, visual_tokenizer.quantizer.codebook, q.indices,
                               visual_tokenizer.config.beta)
    print(f"VQ-KD loss: yours {your_loss:.5f}, vqkd_step {library_loss:.5f}")

# %% [markdown]
# **Your block masks.** Four of yours (top) and four of the library's (bottom) on BEiT's 14 × 14
# grid (a 224-pixel image in 16-pixel patches) at a 40 % ratio, from the same four seeds (if you
# draw the random numbers in the library's order, the pairs are identical; another order gives
# other masks, just as good). Then, over 300 masks of each kind and as many patches scattered at
# random, the share of masked patches and the share of masked patches that touch a visible one
# (the patches that could be copied from a neighbour).

# %%
def touching_visible(masks, grid):
    """Of the masked patches of masks (M, grid²), the share with a visible 4-neighbour."""
    m = masks.view(-1, 1, grid, grid).float()
    visible = 1 - F.pad(m, (1, 1, 1, 1), value=1.0)  # outside the image counts as masked, not visible
    near = visible[..., :-2, 1:-1] + visible[..., 2:, 1:-1] + visible[..., 1:-1, :-2] + visible[..., 1:-1, 2:]
    return float(((near > 0) & (m > 0)).sum() / m.sum())


if ready:
    grid, ratio = 14, 0.4
    fig, axes = plt.subplots(2, 4, figsize=(8, 4.4))
    for k in range(4):
        for row, mask in enumerate((block_mask(grid, ratio, torch.Generator().manual_seed(k)),
                                    library_block_mask(1, grid, ratio, generator=torch.Generator().manual_seed(k))[0])):
            axes[row, k].imshow(mask.view(grid, grid), cmap="Blues", vmin=0, vmax=1.5)
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
    axes[0, 0].set_ylabel("yours")
    axes[1, 0].set_ylabel("library")
    fig.suptitle(f"block masks, {grid} × {grid} patches, ratio {ratio} (blue = masked)")
    plt.show()

    g = torch.Generator().manual_seed(1)
    masks = {"yours": torch.stack([block_mask(grid, ratio, g) for _ in range(300)]),
             "library": library_block_mask(300, grid, ratio, generator=g)}
    masks["scattered"] = masks["library"].gather(1, torch.rand(300, grid * grid, generator=g).argsort(1))
    for name, m in masks.items():
        print(f"{name:9s}: {m.float().mean():.1%} of the patches masked; "
              f"{touching_visible(m, grid):.0%} of the masked ones touch a visible patch")

# %% [markdown]
# Scattered at random, nearly every masked patch has a visible neighbour to copy from; in
# blocks, only those on a block's edge do, and the inside of a block must be inferred from the
# rest of the image.
