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
# > **Exercises.** This notebook is generated from `solutions/01_transformer_blocks.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/01_transformer_blocks.ipynb`.

# %% [markdown]
# # 01 · Transformer blocks — exercises
#
# Four pieces from chapter 01 (`notebooks/01_transformer_blocks.ipynb`) to write yourself.
# Each task gives a function to complete; the cell after it runs `check(...)`, which tests
# your function on fresh random inputs against the library's reference and tells you what is
# wrong. Grade the whole notebook from a terminal with
# `minivlm check exercises/01_transformer_blocks.ipynb`.

# %%
import torch

from minivlm import viz
from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — scaled dot-product attention
#
# Return `(output, weights)` where `weights = softmax(q kᵀ / √d)` over the keys, and
# `output = weights @ v`. `q` is `(..., Tq, d)`, `k` and `v` are `(..., Tk, d)`. The optional
# boolean `mask` broadcasts to `(..., Tq, Tk)`; **True means "may attend"**: blocked pairs must
# get weight exactly 0.

# %%
def attention(q, k, v, mask=None):
    raise NotImplementedError(
        "scores of every query with every key, scaled; blocked pairs to -inf; softmax over the keys; mix "
        "the values")


# %%
check("01.attention", attention)

# %% [markdown]
# ## Task 2 — a causal mask
#
# Return a `(T, T)` boolean tensor where entry `[i, j]` is True when query `i` may attend to
# key `j`, i.e. when `j <= i`.

# %%
def causal_mask(t):
    raise NotImplementedError(
        "start from a (T, T) boolean matrix of ones and keep its lower triangle (torch.tril)")


# %%
check("01.causal_mask", causal_mask)

# %% [markdown]
# ## Task 3 — a prefix-LM mask
#
# The first `n` tokens (the prefix: an image, a prompt) see each other in full; every later
# token sees the whole prefix and the tokens before it (SimVLM, UniLM's seq2seq mask).

# %%
def prefix_mask(t, n):
    raise NotImplementedError("start from your causal mask and open up the columns of the prefix")


# %%
check("01.prefix_mask", prefix_mask)  # and, when it passes, a picture of your masks:
viz.plot_masks({"causal": causal_mask(6), "prefix (2)": prefix_mask(6, 2)});

# %% [markdown]
# ## Task 4 — patchify
#
# Cut a batch of images `(B, C, H, W)` into non-overlapping `P × P` patches and flatten each:
# the result is `(B, N, P·P·C)` with `N = (H/P)·(W/P)`. Patches go row by row (left to right,
# then down), and each patch is flattened as `(p1, p2, c)` — the channels vary fastest.
# `einops.rearrange` makes this one line.

# %%
from einops import rearrange  # noqa: E402


def patchify(images, p):
    raise NotImplementedError(
        "in einops, write the input as 'b c (h p1) (w p2)' and decide where h, w, p1, p2 and c go")


# %%
check("01.patchify", patchify)  # and, when it passes, your patches of one image:
patches = patchify(torch.rand(1, 3, 16, 16), 8)
viz.show_images(patches[0].reshape(4, 8, 8, 3).permute(0, 3, 1, 2), ncols=4);
