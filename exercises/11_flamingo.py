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
# > **Exercises.** This notebook is generated from `solutions/11_flamingo.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/11_flamingo.ipynb`.

# %% [markdown]
# # 11 · Flamingo — exercises
#
# Chapter 11 (`notebooks/11_flamingo.ipynb`) wrote out three pieces for the simplest case: the
# media-location mask of one document, where each token sees the image just before it; the
# Perceiver Resampler for one image; and the gated cross-attention block's forward. Here you write
# the next steps: the mask for a *batch* of documents with different numbers of images, in both of
# the chapter's modes; the resampler over several *frames* with padding; and the gated block with
# the media mask, the tokens that see no image, and the gates at zero. Then an experiment: what
# does a Flamingo look like at step 0, gated against ungated? The cell after each task runs
# `check(...)` on fresh inputs and tells you what is wrong. At the end your three pieces run inside
# a Flamingo in place of the library's (`minivlm/nn/masks.py`, `minivlm/nn/pooling.py`,
# `minivlm/nn/gated.py`). Grade the whole notebook from a terminal with
# `minivlm check exercises/11_flamingo.ipynb`.

# %%
import torch

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — the media-location mask of a batch of documents
#
# A batch of interleaved documents is padded twice: the texts to one length T, and the images to
# one number of image *slots* n_media, so that the visual tokens are one `(B, n_media · L, D)`
# tensor, L tokens per image (the resampler's latents). Image m's tokens are columns
# `m·L .. (m + 1)·L − 1`, images in the order they occur in the text; a row with fewer images than
# n_media leaves its last slots empty (zeros), and no token may ever read them.
#
# Which image may token t read? Let c(t) be the number of `<image>` tokens at or before t in its own
# row (an `<image>` token reads its own image; text before the row's first image has c(t) = 0).
# Flamingo's mode (`only_immediate=True`): token t sees only image c(t)'s tokens, the image just
# before it. The chapter's other mode (`only_immediate=False`): every image up to c(t). Either
# way a token with c(t) = 0 sees nothing: its row of the mask is all False.
#
# `media_locations` is a `(B, T)` bool tensor, True at each `<image>` token (rows may hold any number
# of images, none included). Return the `(B, T, n_media · tokens_per_media)` **bool** mask, True
# where token t may read visual token j. Leave `media_locations` as it is; n_media may be 0 (a
# batch with no image: the mask has no column).

# %%
def media_mask(media_locations, n_media, tokens_per_media, only_immediate):
    raise NotImplementedError(
        "chapter 11 §3, the media-location mask (c(t), the images at or before each token, counted along "
        "each row; which image each column belongs to) and chapter 01 §3 (a mask is a comparison that "
        "broadcasts, True = may attend)")


# %%
check("11.media_mask", media_mask)

# %% [markdown]
# ## Task 2 — the Perceiver Resampler over F frames, with padding
#
# The chapter resampled one image: its N tokens, every one real. The resampler was built for more:
# a video's F frames (or several views of a scene) of N tokens each, read by one set of latents, and
# tokens that are padding. Its forward, for `x` of shape `(B, F, N, D)` and `mask` `(B, F, N)`, True
# on real tokens (or `None`: all real):
#
# 1. add frame f's learned time embedding `time_embedding[f]` (shape `(1, D)`) to each of its tokens;
# 2. flatten the frames into one set of F·N tokens (and the mask with them);
# 3. start from the learned latents `(Q, D)`, one copy per row, and for each layer i:
#    `latents = latents + CrossAttn_i(LN_q(latents), [LN_kv(tokens) ; LN_q(latents)])`, the latents
#    reading the tokens *and themselves* (the latents are never padding), then
#    `latents = latents + FF_i(LN_ff(latents))`;
# 4. return `LN(latents)`, `(B, Q, D)`.
#
# Use the parts of the given `PerceiverResampler` (`minivlm/nn/pooling.py`), not its forward:
# `resampler.latents`, `resampler.time_embedding` (`(max_frames, 1, D)`), and for layer i
# `resampler.attn[i].norm_queries` (LN_q), `resampler.attn[i].norm_context` (LN_kv),
# `resampler.attn[i].cross_attn(queries, keys_values, mask)` (attention with a bool mask that
# broadcasts to `(B, Q, number of keys)`, True = may attend), `resampler.norm_ff[i]`,
# `resampler.ff[i]`, and `resampler.norm`. Keep everything in autograd (gradients must reach `x` and
# every parameter) and leave `x` and `mask` unchanged.

# %%
def resample(resampler, x, mask):
    raise NotImplementedError(
        "chapter 11 §1-§2, the Perceiver Resampler (its equations, and the time embeddings that let frames "
        "share one set of latents); chapter 07 §2 (latents that read a set through cross-attention) and "
        "chapter 01 §3 (padding is a rule about keys)")


# %%
check("11.resample", resample)

# %% [markdown]
# ## Task 3 — the gated cross-attention block, with the media mask
#
# The block the chapter inserts before each frozen LLM layer:
#
# $$x \leftarrow x + \tanh(\alpha)\cdot \text{CrossAttn}\big(\text{LN}(x),\ \text{visual},\ \text{media mask}\big),\qquad
# x \leftarrow x + \tanh(\beta)\cdot \text{FF}\big(\text{LN}(x)\big).$$
#
# Two details make it right. A token whose media-mask row is all False (text before its row's
# first image) must get a read of **zero**: an attention whose every key is masked does not return
# zero (the library's lets such a query see every key rather than divide by nothing), so zero
# those reads yourself, before the gate. And at α = β = 0 the block must be the identity, bit for
# bit: that is how a Flamingo starts as its frozen LLM. There the gates still learn (∂/∂α ≠ 0)
# while the cross-attention gets no gradient at all.
#
# `x` is `(B, T, D)`, `visual` `(B, M, D_v)`, `media_mask` `(B, T, M)` bool (Task 1's mask). Use the
# parts of the given `GatedCrossAttentionBlock` (`minivlm/nn/gated.py`), not its forward:
# `block.norm_cross`, `block.cross_attn(queries, visual, mask)`, `block.attn_gate` (α, a
# parameter of shape `(1,)`), `block.norm_ff`, `block.ff`, `block.ff_gate` (β). Return the
# `(B, T, D)` output; keep it in autograd and leave the inputs unchanged.

# %%
def gated_block(block, x, visual, media_mask):
    raise NotImplementedError(
        "chapter 11 §4, the gated cross-attention block (tanh gates that start at zero) and §3, the "
        "media-location mask (why text before the first image must read nothing); chapter 01 §4 (the pre-LN "
        "residual block)")


# %%
check("11.gated_block", gated_block)

# %% [markdown]
# ## Task 4 — the experiment: a gated and an ungated Flamingo at step 0
#
# The chapter's claim about the gates is about step 0: with tanh(α) = tanh(β) = 0 the Flamingo *is*
# its frozen LLM, so training starts from a model that already speaks, and only has to learn to
# look. VisualGPT and VC-GPT put cross-attention into a pretrained decoder without such a gate
# (`FlamingoConfig(gated=False)`, and VC-GPT's layout `placement="after_attention"`, no
# feed-forward, all patch tokens). What does their randomly initialised cross-attention do to the
# LLM before a single step?
#
# Write the measurement: `gate_experiment(model, batch, items, images)`, with `model` a Flamingo,
# `batch` a batch of interleaved documents (`interleaved_batches`), `items` world-fact questions
# (`recall_items`) and `images` `(N, 3, H, W)` images unrelated to them. Return a dict:
#
# - `"loss"`: the LM loss of the model on the batch, a number (the tokens of `batch["loss_mask"]`:
#   `flamingo_step` computes it);
# - `"same_as_llm"`: True if the model's logits on the batch equal the frozen LLM's (`model.llm`
#   reading the same ids) **bit for bit**, else False;
# - `"recall"`: the fraction of `items` the model answers right, each asked after an unrelated
#   image (`fact_recall(model, items, images)`, a number in [0, 1]).
#
# Measure in eval mode, and change nothing: the model's weights, mode and gradients, the batch and
# the images come back as they went in. The check runs your function on five Flamingos built on
# the zoo's `clip` and `llm`, one of them with a gate opened by a hair, and recomputes every number.

# %%
def gate_experiment(model, batch, items, images):
    raise NotImplementedError(
        "chapter 11 §4 (the frozen LLM exactly at initialisation, shown bit for bit, and the fact recall of "
        "the VC-GPT layout after an image); \"bit for bit\" is exact equality, which no tolerance tests")


# %%
check("11.gate_experiment", gate_experiment)

# %% [markdown]
# The experiment. Three arms on the zoo's frozen `clip` and `llm`, each built from the same seed (so
# the gated and the ungated Flamingo start with the same cross-attention weights, and differ only
# in the gates): Flamingo (tanh gates at zero), the same without gates (VisualGPT-style), and
# VC-GPT's layout (no gate, no feed-forward, cross-attention inside each layer, on all patch
# tokens). Three seeds each; one fixed batch of 16 interleaved documents and 40 world facts, each
# asked after an unrelated image. The frozen LLM alone, on the same batch, is the reference.

# %%
import time  # noqa: E402

from minivlm import grading, zoo  # noqa: E402
from minivlm.data.interleaved import interleaved_batches  # noqa: E402
from minivlm.data.worldtext import recall_items  # noqa: E402
from minivlm.losses import lm_loss  # noqa: E402
from minivlm.models.flamingo import Flamingo, FlamingoConfig  # noqa: E402

experiment_ready = grading.run("11.gate_experiment", gate_experiment).passed
print("task 4 passes: running the experiment" if experiment_ready else "finish task 4 first")

# %%
if experiment_ready:
    start = time.perf_counter()
    batch = interleaved_batches(32, seed=0)(0)
    items = recall_items()[:40]
    unrelated = interleaved_batches(8, seed=12)(0)["images"][:, 0]  # (8, 3, 32, 32): first image of 8 documents
    with torch.no_grad():
        llm = zoo.load("llm").eval()
        llm_loss = float(lm_loss(llm(batch["ids"], attention_mask=batch["attention_mask"]), batch["ids"],
                                 batch["loss_mask"]))
    arms = {"Flamingo (tanh gates at 0)": FlamingoConfig(),
            "no gate (VisualGPT-style)": FlamingoConfig(gated=False),
            "VC-GPT layout (no gate, no FF, patches)": FlamingoConfig(gated=False, feedforward=False,
                                                                       placement="after_attention", visual="patches")}
    results = {}
    for arm, config in arms.items():
        for seed in range(3):
            torch.manual_seed(seed)
            model = Flamingo(zoo.load("clip"), zoo.load("llm"), config)
            results[arm, seed] = gate_experiment(model, batch, items, unrelated)
    print(f"the experiment took {time.perf_counter() - start:.1f} s; the frozen LLM alone: LM loss {llm_loss:.3f}")
    print(f"{'arm':42} {'seed':>4} {'LM loss':>8} {'= LLM bit for bit':>18} {'facts recalled':>15}")
    for (arm, seed), r in results.items():
        print(f"{arm:42} {seed:4d} {r['loss']:8.3f} {str(r['same_as_llm']):>18} {r['recall']:15.1%}")

# %% [markdown]
# **What the run shows** (the figures printed above). The gated Flamingo's loss is the frozen LLM's
# to every printed digit in all three seeds, its logits equal the LLM's bit for bit, and it
# recalls the facts the LLM knows (39 of 40): with the gates at zero the new layers are invisible,
# whatever their random weights. Both ungated arms start above the LLM's loss on this batch (by
# about 0.8 to 2 nats, depending on the seed and the layout), and their fact recall falls to zero:
# a randomly initialised cross-attention added at full weight rewrites every token's state before
# the first step, and training must undo that before it can teach the model to look. The loss gap
# is the weaker of the two signs: it depends on the batch (on a batch of binding episodes that the
# LLM itself predicts badly, a noisy ungated model can score a lower loss than the LLM, its
# confident mistakes blurred); the collapse of what the LLM knew does not. Whether the ungated
# arms recover with training, and how fast, is the chapter's race at equal steps; here we see only
# where each starts.
#
# ## Put together: your pieces inside a Flamingo
#
# A small random Flamingo (a tiny CLIP and a tiny Llama-style LLM, its gates opened to 0.5 so that
# every piece matters) reads a batch of interleaved documents twice: with the library's mask,
# resampler and gated blocks, and with yours in their place (`unittest.mock.patch`, only inside the
# `with` block). Your resampler is called with one frame and no mask, the way the model calls it.

# %%
from unittest import mock  # noqa: E402

from minivlm.models.clip import CLIP, CLIPConfig  # noqa: E402
from minivlm.models.gpt import GPT, GPTConfig  # noqa: E402
from minivlm.nn.gated import GatedCrossAttentionBlock  # noqa: E402
from minivlm.nn.pooling import PerceiverResampler  # noqa: E402

yours = {"11.media_mask": media_mask, "11.resample": resample, "11.gated_block": gated_block}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("tasks 1-3 pass: running your functions inside a Flamingo" if ready
      else "finish tasks 1-3 first: the next cell uses them")

# %%
if ready:
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(image_size=32, patch_size=8, vision_dim=32, vision_depth=1, vision_heads=2, text_dim=32,
                           text_depth=1, text_heads=2, embed_dim=24, context_length=16))
    small = Flamingo(clip, GPT(GPTConfig.llama(max_len=128, dim=48, depth=2, heads=4)),
                     FlamingoConfig(n_latents=3, heads=2)).eval()
    with torch.no_grad():
        for block in small.xattn.values():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    docs = interleaved_batches(6, seed=5, max_len=128)(0)

    def your_resampler(self, x, mask=None):
        return resample(self, x[:, None], None if mask is None else mask[:, None])  # one frame per image

    def your_block(self, x, visual, media_mask=None, need_weights=False):
        return gated_block(self, x, visual, media_mask)

    for only_immediate in (True, False):
        small.config.only_immediate = only_immediate
        with torch.no_grad():
            library = small(docs["images"], docs["n_images"], docs["ids"], docs["attention_mask"])
            with mock.patch("minivlm.nn.masks.media", media_mask), \
                    mock.patch.object(PerceiverResampler, "forward", your_resampler), \
                    mock.patch.object(GatedCrossAttentionBlock, "forward", your_block):
                ours = small(docs["images"], docs["n_images"], docs["ids"], docs["attention_mask"])
        print(f"only_immediate={only_immediate}: max |your logits − library's| over {tuple(ours.shape)}: "
              f"{(ours - library).abs().max():.1e}")
    small.config.only_immediate = True

# %% [markdown]
# Your three pieces, put in place of the library's, give a Flamingo the same logits on documents
# with two to five images each, in both masking modes.
