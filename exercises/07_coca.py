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
# Three pieces of chapter 07 (`notebooks/07_coca.ipynb`) to write yourself: the attentional
# pooling that turns a ViT's tokens into a few image vectors, the split of CoCa's decoder output
# into its text embedding and its words, and CoCa's weighted loss. The cell after each task runs
# `check(...)` on fresh inputs and tells you what is wrong. At the end your loss trains a small
# CoCa next to the library's `coca_step` (`minivlm/nn/pooling.py`, `minivlm/models/coca.py`).
# Grade the whole notebook from a terminal with `minivlm check exercises/07_coca.ipynb`.

# %%
import math

import torch
import torch.nn.functional as F

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — attentional pooling
#
# CoCa gives its contrastive loss one image vector and its captioning decoder 16, whatever the
# number of image tokens: **learned queries** attend to the tokens. Each query scores every token,
# `q · k / √d`, the scores go through a softmax over the **tokens**, and the query's output is
# the weighted sum of the tokens. With several heads, D is split into `heads` slices of
# D / heads, each slice attends on its own, and the outputs are concatenated.
#
# Here, without the projections the library's module adds: `context` `(B, N, D)` tokens,
# `queries` `(Q, D)`, the same for every image. Return `(B, Q, D)`.

# %%
def attentional_pool(context, queries, heads):
    raise NotImplementedError(
        "reshape both to heads: queries (1, H, Q, d), tokens (B, H, N, d) with d = D // heads; then "
        "softmax(q @ kᵀ / √d, dim=-1) @ k, and put the heads back together")


# %%
check("07.attentional_pool", attentional_pool)

# %% [markdown]
# ## Task 2 — the text embedding and the words, from one pass
#
# CoCa's unimodal half runs over `[w_1 ... w_T ; CLS]`: the CLS is **appended after** the words,
# and the decoder is causal, so the CLS is the one position that has seen every word. Its output
# is the text embedding for the contrastive loss; the T word positions go on to the multimodal
# half. `hidden` is the unimodal half's output `(B, T + 1, D)`. Return `(cls (B, D), words (B, T, D))`.

# %%
def split_outputs(hidden):
    raise NotImplementedError("the CLS is the last position")


# %%
check("07.split_outputs", split_outputs)

# %% [markdown]
# ## Task 3 — CoCa's loss
#
# loss = λ_con · contrastive + λ_cap · captioning, with
#
# * the contrastive loss of CLIP (chapter 02): the (B, B) similarities `scale · image @ textᵀ`
#   of unit-length features, cross-entropy towards the diagonal for each image over the texts and
#   for each text over the images, averaged;
# * the captioning loss: the logits `(B, T, V)` at position t predict token t + 1 of `ids`
#   `(B, T)`; a target counts only where `attention_mask` is True (no padding); the mean
#   cross-entropy over the targets.
#
# Return the scalar loss.

# %%
def coca_loss(image, text, logits, ids, attention_mask, scale, w_con, w_cap):
    raise NotImplementedError(
        "contrastive: F.cross_entropy on sim and on sim.t() with targets arange(B); captioning: "
        "F.cross_entropy(logits[:, :-1][m], ids[:, 1:][m]) with m = attention_mask[:, 1:]")


# %%
check("07.coca_loss", coca_loss)

# %% [markdown]
# ## Your loss trains a CoCa
#
# Twenty steps of a small CoCa with your loss, and the same twenty from the same start with the
# library's `coca_step`: the losses agree step for step.

# %%
from minivlm.data.pairs import caption_batches  # noqa: E402
from minivlm.models.coca import CoCa, CoCaConfig, coca_step  # noqa: E402

config = CoCaConfig(image_size=16, patch_size=8, dim=32, vision_depth=1, unimodal_depth=1, multimodal_depth=1,
                    heads=2, embed_dim=16, caption_queries=4, max_text_len=24)
batches = caption_batches(16, seed=3, image_size=16, max_text_len=24)
torch.manual_seed(0)
yours = CoCa(config)
library = CoCa(config)
library.load_state_dict(yours.state_dict())


def your_step(model, batch):
    image, queries = model.image_features(batch["images"])
    text, logits = model.decode(batch["ids"], batch["attention_mask"], queries)
    return coca_loss(image, text, logits, batch["ids"], batch["attention_mask"], model.scale(),
                     config.contrastive_weight, config.caption_weight)


losses = {"yours": [], "library": []}
for name, model, step in (("yours", yours, your_step), ("library", library, lambda m, b: coca_step(m, b)["loss"])):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for i in range(20):
        loss = step(model, batches(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[name].append(loss.item())
print("yours  ", [round(x, 3) for x in losses["yours"][::4]])
print("library", [round(x, 3) for x in losses["library"][::4]])
assert max(abs(a - b) for a, b in zip(losses["yours"], losses["library"])) < 1e-4
assert losses["yours"][-1] < losses["yours"][0]
