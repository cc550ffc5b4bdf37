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
# Chapter 01 (`notebooks/01_transformer_blocks.ipynb`) wrote attention for one head, drew each
# mask on its own and cut one square image into patches. Here you take the next step of each:
# multi-head attention from its weight matrices, one mask for a whole padded batch whose
# sequences each have their own prefix, and the full input of a ViT. Then an experiment: train
# the same tiny model with a causal and with a bidirectional mask, and measure what the mask
# changes. The cell after each task runs `check(...)` on fresh inputs and tells you what is
# wrong. Grade the whole notebook from a terminal with
# `minivlm check exercises/01_transformer_blocks.ipynb`.

# %%
import torch
import torch.nn.functional as F

from minivlm import viz
from minivlm.grading import check
from minivlm.nn import MultiHeadAttention, Transformer, ViT, masks

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — multi-head attention
#
# `x` is `(B, T, D)`; `w_q`, `w_k`, `w_v` and `w_o` are `(D, D)` matrices, applied as `x @ w`
# (no biases). Return the `(B, T, D)` output of self-attention with `heads` heads: project `x` to
# queries, keys and values, let each head attend on its own `D / heads` features, join the heads'
# outputs and apply `w_o`. The optional boolean `mask` is `(T, T)` or `(B, T, T)`, True = may
# attend, the same for every head. Gradients must reach `x` and all four matrices.

# %%
def multi_head_attention(x, w_q, w_k, w_v, w_o, heads, mask=None):
    raise NotImplementedError(
        "chapter 01 §2 (multi-head attention): each head is §1's attention on its own slice of the "
        "features, with its own width in the scale; a mask is shared by the heads; the heads' outputs sit "
        "side by side in each token before the output projection mixes them")


# %%
check("01.multi_head_attention", multi_head_attention)

# %% [markdown]
# Your function and the library's `MultiHeadAttention` (without biases) on the same weights:
# `nn.Linear` stores its matrix transposed, `y = x @ weight.T`.

# %%
mha = MultiHeadAttention(dim=32, heads=4, bias=False)
x = torch.randn(2, 9, 32)
weights = [layer.weight.T for layer in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj)]
with torch.no_grad():
    diff = (multi_head_attention(x, *weights, 4, masks.causal(9)) - mha(x, mask=masks.causal(9))).abs().max()
print(f"max |yours − MultiHeadAttention| = {diff:.1e}")

# %% [markdown]
# ## Task 2 — one mask for a padded batch of prefix-LM sequences
#
# A batch holds sequences of different lengths, and each has its own prefix (an image's
# tokens, a prompt) that is read bidirectionally while the rest is read causally. `valid` is
# `(B, T)` bool, True on real tokens; padding may sit anywhere: at the end of a short text, or
# inside the prefix (an empty region slot, as in chapter 03's region tokens). `prefix_len` is
# `(B,)` long, the prefix length of each sequence (0 gives a causal sequence, `T` a
# bidirectional one). Return the `(B, T, T)` bool mask: `mask[b, i, j]` is True when query `i`
# of sequence `b` may attend to key `j`. Nobody may attend to padding.

# %%
def batch_mask(valid, prefix_len):
    raise NotImplementedError(
        "chapter 01 §3 (masks): the prefix mask and the padding mask, one per sequence, combined; padding "
        "is about keys, a prefix opens keys to every query; True means may attend")


# %%
check("01.batch_mask", batch_mask)  # and, when it passes, your masks of a small batch:
valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
shown = batch_mask(valid, torch.tensor([3, 0, 3]))
viz.plot_masks({"prefix 3": shown[0], "causal, 2 padded at the end": shown[1],
                "prefix 3, an empty slot at 1": shown[2]});

# %% [markdown]
# ## Task 3 — a ViT's input tokens
#
# `images` is `(B, C, H, W)`, not necessarily square, with `H` and `W` multiples of
# `patch_size`. Cut each image into patches as the chapter does (row by row, each patch
# flattened `(p1, p2, c)`), embed each patch with `w_patch` `(P·P·C, D)`, put the learned
# `cls_token` `(D,)` in front, and add the position embeddings `pos` `(1 + N, D)`. Return the
# `(B, 1 + N, D)` tokens that the Transformer reads. Gradients must reach all four inputs.

# %%
from einops import rearrange  # noqa: E402


def vit_tokens(images, patch_size, w_patch, cls_token, pos):
    raise NotImplementedError(
        "chapter 01 §5 (an image is a sequence of patches) and the paragraph after its patch picture: "
        "patches in reading order, one linear map each, one CLS token per image in front, then a position "
        "for every token, the CLS token's included")


# %%
check("01.vit_tokens", vit_tokens)  # and, when it passes, your tokens equal a library ViT's:
vit = ViT(image_size=32, patch_size=8, dim=48, depth=1, heads=4, patch_bias=False)
images = torch.rand(2, 3, 32, 32)
with torch.no_grad():
    yours = vit_tokens(images, 8, vit.patch_embed.proj.weight.T, vit.cls_token[0, 0], vit.pos_embedding[0])
    library = torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(images)], 1) + vit.pos_embedding
print(f"max |yours − ViT's tokens| = {(yours - library).abs().max():.1e}")

# %% [markdown]
# ## Task 4 — the experiment: what does the causal mask do?
#
# A language model is trained on every position at once: position `t` reads tokens `0 … t` and
# is scored on token `t + 1` (teacher forcing, chapter 01 §7). The causal mask is what keeps
# token `t + 1` out of position `t`'s view. What happens without it?
#
# The data: `k` random symbols, a separator, then the same `k` symbols each shifted by a fixed
# amount (mod the number of symbols). The first half is random: no model can predict it. The
# second half follows a rule: a model that has learned the rule can generate it from the first
# half.
#
# Write `mask_experiment(mask, train, test, steps, seed)`:
#
# 1. build a tiny model (token embeddings, learned positions, the library's `Transformer` of one
#    block, a linear head over all ids, separator included) whose every attention uses `mask`
#    (`(T, T)` bool for `T = 2k`; cut it to the length of the input), initialised from `seed`;
# 2. train it for `steps` steps on random batches of 64 rows of `train` (`(n, 2k + 1)` long), on
#    every position's next token, with Adam (lr 3e-3);
# 3. return `(model, results)`: `model(ids)` maps `(B, T')` ids to `(B, T', V)` logits for any
#    `T' <= 2k`, and `results` holds three accuracies measured on `test`:
#    - `"random"`: teacher-forced, on the random half's targets `x_2 … x_k`;
#    - `"copy_teacher_forced"`: teacher-forced, on the `k` targets after the separator;
#    - `"copy_generated"`: the second half generated greedily from `test[:, :k + 1]`, one token at
#      a time, each step fed back in.
#
# The check runs your function on data it draws, with a causal and with a bidirectional mask, looks
# inside the model you return and measures it again.

# %%
def shifted_copies(n, k, symbols, shift, generator):
    """(n, 2k + 1): k random symbols, the separator (= symbols), the k symbols shifted by `shift`."""
    x = torch.randint(symbols, (n, k), generator=generator)
    return torch.cat([x, torch.full((n, 1), symbols), (x + shift) % symbols], dim=1)


print(shifted_copies(3, 4, 8, 3, torch.Generator().manual_seed(0)))


# %%
def mask_experiment(mask, train, test, steps, seed):
    raise NotImplementedError(
        "chapter 01 §7 trains a caption LM on every position's next token; do the same with the mask you "
        "are given in every block; a seeded generator makes the run repeatable; measure the three "
        "accuracies as the task defines them, the generated one with each prediction fed back in as in the "
        "chapter's greedy decoding")


# %%
check("01.mask_experiment", mask_experiment)

# %% [markdown]
# Your experiment, three seeds per mask, and a third arm: the prefix mask of task 2 with the
# first half and the separator as the prefix (SimVLM's and PrefixLM's layout).

# %%
import time  # noqa: E402

K, SYMBOLS, STEPS = 4, 8, 200
masks_to_try = {"causal": masks.causal(2 * K), "bidirectional": masks.bidirectional(2 * K),
                f"prefix {K + 1}": batch_mask(torch.ones(1, 2 * K, dtype=torch.bool), torch.tensor([K + 1]))[0]}
start = time.perf_counter()
table = {}
for seed in range(3):
    data = torch.Generator().manual_seed(100 + seed)
    train, test = shifted_copies(2048, K, SYMBOLS, 3, data), shifted_copies(512, K, SYMBOLS, 3, data)
    for name, mask in masks_to_try.items():
        table.setdefault(name, []).append(mask_experiment(mask, train, test, STEPS, seed)[1])
print(f"{len(masks_to_try) * 3} runs of {STEPS} steps in {time.perf_counter() - start:.1f} s; chance on the random "
      f"half: {1 / SYMBOLS:.1%}")
print(f"{'':15}" + "".join(f"{m:>28}" for m in ("random half", "copy, teacher-forced", "copy, generated")))
for name, runs in table.items():
    cells = ["  ".join(f"{r[m]:6.1%}" for r in runs) for m in ("random", "copy_teacher_forced", "copy_generated")]
    print(f"{name:15}" + "".join(f"{c:>28}" for c in cells))

# %% [markdown]
# **What the runs show** (the figures are the ones printed above; each cell lists three seeds).
# With the causal mask the model scores chance on the random half — nothing can predict a random
# symbol from the ones before it — and generates the second half: it learned the shift. With the
# bidirectional mask it scores near 100 % on the random half, which is impossible without seeing
# the answer: position `t` reads token `t + 1`, and its training loss falls to almost zero for
# that reason alone. Teacher-forced, the second half looks perfect too; generated one token at a
# time, where no later token exists yet, it is much worse, because what the model learned was to
# read the next token, not the shift. A training loss measured through a mask that leaks says
# nothing. The prefix arm leaks inside its prefix (the random half scores like the
# bidirectional arm) and still generates the second half, which it reads causally: this is why a
# prefix LM scores its loss on the part after the prefix only.
