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
# > **Exercises.** This notebook is generated from `solutions/07_coca.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/07_coca.ipynb`.

# %% [markdown]
# # 07 · CoCa — exercises
#
# Chapter 07 (`notebooks/07_coca.ipynb`) wrote out the attentional pooler for one batch of images
# that all have the same tokens, drew the mask of CoCa's unimodal half for one caption, and used
# the library's `coca_step`. Here you write the next steps: attentional pooling over sets of
# different sizes (a key-padding mask), the unimodal half's input and attention mask for a padded
# batch of captions, and CoCa's weighted loss with its gradients. Then an experiment: chapter 07
# found that CoCa's ViT learned far less with its position embeddings started at std 1 than at
# 0.02; measure how much of what a fresh ViT's tokens carry is the image and how much is only where
# the token stands. The cell after each task runs `check(...)` on fresh inputs and tells you what
# is wrong. At the end your input and your loss train a small CoCa next to the library's
# (`minivlm/nn/pooling.py`, `minivlm/models/coca.py`). Grade the whole notebook from a terminal
# with `minivlm check exercises/07_coca.ipynb`.

# %%
import math

import torch
import torch.nn.functional as F

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — attentional pooling over sets of different sizes
#
# CoCa gives its contrastive loss one image vector and its decoder 16, whatever the number of image
# tokens: **learned queries** attend to the tokens. Each query scores every token, `q · k / √d`,
# the scores go through a softmax over the **tokens**, and the query's output is the weighted sum
# of the tokens; with several heads, D is split into `heads` slices of D / heads, each slice
# attends on its own, and the outputs are concatenated. The chapter wrote this out for a batch in
# which every image has the same tokens. A batch of token *sets* of different sizes (regions of a
# detector, patches of images of different sizes, frames of videos of different lengths) is padded
# to one N, and a padded token must get **no weight**: the weights of each query still sum to 1,
# over the real tokens.
#
# Here without the projections the library's module adds: `context` `(B, N, D)` tokens, `queries`
# `(Q, D)`, the same for every set, `heads` an int that divides D, and `mask` `(B, N)` bool, True on
# real tokens (padding may sit anywhere: a set has no order; every set has at least one real
# token). Return `(B, Q, D)`, with gradients reaching `context` and `queries`; change no input.

# %%
def attentional_pool(context, queries, heads, mask):
    raise NotImplementedError(
        "chapter 07 §2 (the attentional pooler written out: queries, heads, the softmax over the tokens) "
        "and chapter 01 §3 (padding: a key no query may read gets a score of -inf, before the softmax)")


# %%
check("07.attentional_pool", attentional_pool)

# %% [markdown]
# ## Task 2 — the unimodal half's input and mask
#
# CoCa's unimodal half runs over `[w_1 ... w_T ; CLS]`: a learned CLS vector is **appended after**
# the words, and the half is causal, so the CLS is the one position that sees every word; its
# output is the text embedding of the contrastive loss. A batch of captions is right-padded to T
# tokens; the CLS goes at position T, **after** the padding, so that it is at index -1 in every
# row, and the mask must keep every query from reading a padded word (the CLS would otherwise
# average padding into the text embedding). The chapter drew this mask for one caption (§3).
#
# `words` is `(B, T, D)` (the embedded tokens, padding included), `attention_mask` `(B, T)` bool,
# True on real tokens (right-padded), `cls` `(D,)`. Return `x`, the `(B, T + 1, D)` input, and
# `mask`, the `(B, T + 1, T + 1)` bool attention mask, `mask[b, i, j]` True when position i may
# attend to position j. Gradients must reach `words` and `cls`; change no input.

# %%
def unimodal_input(words, attention_mask, cls):
    raise NotImplementedError(
        "chapter 07 §3 (CoCa's mask: the CLS appended last, causal, padding hidden) and chapter 01 §3 (a "
        "causal mask and a key-padding mask, combined; padding is a rule about keys)")


# %%
check("07.unimodal_input", unimodal_input)

# %% [markdown]
# ## Task 3 — CoCa's loss
#
# loss = λ_con · contrastive + λ_cap · captioning (chapter 07 §1), with
#
# * the contrastive loss of CLIP (chapter 02): the (B, B) similarities `scale · image @ textᵀ`
#   of unit-length features, cross-entropy towards the diagonal for each image over the texts and
#   for each text over the images, averaged;
# * the captioning loss: the logits `(B, T, V)` at position t predict token t + 1 of `ids`
#   `(B, T)`; a target counts only where `attention_mask` is True (no padding; a caption of one
#   token has no target at all); the mean cross-entropy over all the batch's targets.
#
# `scale` is a scalar tensor (the model's learned 1 / temperature, `model.scale()`), `w_con` and
# `w_cap` floats. Return the scalar loss, with gradients reaching `image`, `text`, `logits` and
# `scale`: the training step calls `backward()` on it.

# %%
def coca_loss(image, text, logits, ids, attention_mask, scale, w_con, w_cap):
    raise NotImplementedError(
        "chapter 07 §1 (the two terms and their weights), chapter 02 (the symmetric contrastive loss with "
        "its temperature) and chapter 06 §1 (the next-word loss: shifted by one, padding never a target, a "
        "mean over the target tokens)")


# %%
check("07.coca_loss", coca_loss)

# %% [markdown]
# ## Task 4 — the experiment: what do a fresh ViT's tokens carry, with small or large positions?
#
# Chapter 07 §5 found the zoo's first CoCa, its ViT's position embeddings started at std 1, more than
# 30 points of zero-shot accuracy below the same model started at std 0.02, and measured at the
# ViT's input that a std-1 position is many times larger than the patch it is added to. Does that
# survive the ViT's pre-norm LayerNorm and its layers? Measure it where the poolers read: at the
# ViT's output, split the variation of the patch tokens into what differs **between images** at a
# fixed position (the content) and what differs **between positions** (the same in every image).
#
# `content_share(model, images)`: `model` a CoCa, `images` `(B, 3, H, W)` in [0, 1]. The ViT's tokens
# are `model.visual.forward_features((images - model.image_mean) / model.image_std)`, `(B, 1 + N,
# D)`, the CLS first; take the N patch tokens. Return one number,
#
# $$\text{share} = \frac{\frac{1}{N}\sum_{n}\sum_{d}\operatorname{Var}_{b}\big(h_{b,n,d}\big)}{\sum_{d}\operatorname{Var}_{b,n}\big(h_{b,n,d}\big)},$$
#
# the variance across images at each position, averaged over positions, over the variance of all
# B·N tokens, both **population** variances (`unbiased=False`, so that content and position add up
# to exactly 1). Only measure: change nothing about the model (weights, mode) or the images. The
# check runs your function on fresh images with fresh CoCas of both initialisations and with the
# zoo's CoCa, and recomputes every number.

# %%
def content_share(model, images):
    raise NotImplementedError(
        "chapter 07 §5 (the two position initialisations, and the ratio measured at the ViT's input); the "
        "law of total variance: across images at a fixed position, plus across positions")


# %%
check("07.content_share", content_share)

# %% [markdown]
# The experiment: the chapter's CoCa (`COCA_CONFIG`), fresh, with its image positions at std 0.02
# and at std 1, three seeds each, and the trained zoo CoCa (std 0.02), on 64 fresh ShapesBench
# images.

# %%
import time  # noqa: E402

from minivlm import grading, zoo  # noqa: E402
from minivlm.data import ShapesBench  # noqa: E402
from minivlm.models.coca import COCA_CONFIG, CoCa, CoCaConfig  # noqa: E402

if grading.run("07.content_share", content_share).passed:
    start = time.perf_counter()
    share_images = ShapesBench(seed=4321).captioning(64)["images"]
    shares = {}
    for std in (0.02, 1.0):
        shares[f"fresh, positions std {std}"] = []
        for seed in range(3):
            torch.manual_seed(seed)
            fresh = CoCa(CoCaConfig(**{**COCA_CONFIG, "pos_init_std": std})).eval()
            shares[f"fresh, positions std {std}"].append(content_share(fresh, share_images))
    shares["zoo CoCa (std 0.02), trained"] = [content_share(zoo.load("coca").eval(), share_images)]
    print(f"measured in {time.perf_counter() - start:.1f} s")
    for name, values in shares.items():
        print(f"{name:32} content share of the patch tokens' variance: "
              + "  ".join(f"{100 * v:5.1f} %" for v in values))
else:
    print("finish task 4 first")

# %% [markdown]
# **What the run shows** (the figures printed above). With positions at std 0.02 a fresh ViT's patch
# tokens vary mostly between images: about nine tenths of their variance is content. With std-1
# positions the split turns over: about one twentieth is content, and the rest says only where a
# token stands, the same in every image, in every seed. The ViT's pre-norm LayerNorm and its
# layers do not undo what the chapter measured at its input: the poolers start by reading mostly
# position. The trained zoo CoCa keeps about the share its initialisation had. That a start this
# position-heavy is what held `coca_pos1` back is the reading that fits the chapter's two arms; how
# fast training would have rebalanced it is untested here (no arm trains from std 1 and measures
# this share along the way).
#
# ## Your input and your loss train a CoCa
#
# Twenty steps of a small CoCa whose unimodal half reads your input and mask and whose loss is
# yours, and the same twenty from the same start with the library's `coca_step`: the losses agree
# step for step. Your pooling, with the library's projections around it, gives the library's
# pooler on a padded batch.

# %%
from minivlm.data.pairs import caption_batches  # noqa: E402
from minivlm.models.coca import coca_step  # noqa: E402
from minivlm.nn.pooling import AttentionalPooler  # noqa: E402

yours = {"07.attentional_pool": attentional_pool, "07.unimodal_input": unimodal_input, "07.coca_loss": coca_loss}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("tasks 1-3 pass: running your functions in a CoCa" if ready
      else "finish tasks 1-3 first: the next cells use them")

# %%
if ready:
    config = CoCaConfig(image_size=16, patch_size=8, dim=32, vision_depth=1, unimodal_depth=1, multimodal_depth=1,
                        heads=2, embed_dim=16, caption_queries=4, max_text_len=24)
    batches = caption_batches(16, seed=3, image_size=16, max_text_len=24)
    torch.manual_seed(0)
    mine = CoCa(config)
    library = CoCa(config)
    library.load_state_dict(mine.state_dict())

    def your_step(model, batch):
        ids, mask = batch["ids"], batch["attention_mask"]
        image, queries = model.image_features(batch["images"])
        x, attn = unimodal_input(model.token_embedding(ids), mask.bool(), model.cls_embedding)
        hidden = model.unimodal(x + model.pos_embedding[:, :x.shape[1]], mask=attn)  # (B, T + 1, D)
        text = F.normalize(model.text_projection(model.cls_norm(hidden[:, -1])), dim=-1)  # the CLS's output
        t = ids.shape[1]
        words = model.multimodal(hidden[:, :t], mask=attn[:, :t, :t], context=queries)  # the words only
        logits = F.linear(model.text_norm(words), model.token_embedding.weight)  # (B, T, V), tied
        return coca_loss(image, text, logits, ids, mask, model.scale(), config.contrastive_weight,
                         config.caption_weight)

    losses = {"yours": [], "library": []}
    for name, model, step in (("yours", mine, your_step), ("library", library, lambda m, b: coca_step(m, b)["loss"])):
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        for i in range(20):
            loss = step(model, batches(i))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    print("yours  ", [round(x, 3) for x in losses["yours"][::4]])
    print("library", [round(x, 3) for x in losses["library"][::4]])
    gap = max(abs(a - b) for a, b in zip(losses["yours"], losses["library"]))
    print(f"max |yours − library| over 20 steps: {gap:.1e}")

# %%
if ready:
    torch.manual_seed(0)
    pooler = AttentionalPooler(dim=32, context_dim=32, n_queries=4, heads=2).eval()
    a = pooler.cross_attn
    with torch.no_grad():  # values = keys and no output projection: the library's pooler becomes your task's
        a.v_proj.load_state_dict(a.k_proj.state_dict())
        a.out_proj.weight.copy_(torch.eye(32))
        a.out_proj.bias.zero_()
        tokens = torch.randn(3, 7, 32)
        real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [False, True, False, True, True, False, True]])
        keys = a.k_proj(pooler.norm_context(tokens))  # (B, N, D)
        queries = a.q_proj(pooler.norm_queries(pooler.queries))  # (Q, D)
        mine_pooled = attentional_pool(keys, queries, a.heads, real)
        gap = (mine_pooled - pooler(tokens, real)).abs().max()
        print(f"max |your pooling − AttentionalPooler on a padded batch| = {gap:.1e}")
