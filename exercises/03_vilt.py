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
# > **Exercises.** This notebook is generated from `solutions/03_vilt.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/03_vilt.ipynb`.

# %% [markdown]
# # 03 · ViLT — exercises
#
# Chapter 03 (`notebooks/03_vilt.ipynb`) wrote ViLT's single stream for patches, where every
# image token is real, and used the library's masking and losses. Here you write the next steps:
# the single stream of the *region* pipeline (section 5), where an image has empty region slots;
# BERT's masking for masked-language modelling (MLM); the MLM loss; and the pairs for image-text
# matching (ITM). Then an experiment: does the pretrained ViLT's masked-word prediction read the
# image? The cell after each task runs `check(...)` on fresh inputs and tells you what is wrong.
# At the end your pieces run inside the library's ViLT (`minivlm/models/vilt.py`). Grade the whole
# notebook from a terminal with `minivlm check exercises/03_vilt.ipynb`.

# %%
import math

import torch
import torch.nn.functional as F

from minivlm import viz, zoo
from minivlm.data import ShapesWorld, Tokenizer
from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — one sequence for one Transformer, with empty region slots
#
# In the region pipeline (chapter 03 §5) an image becomes its CLS token and up to `R` region
# tokens, one per box a detector found; an image with fewer objects leaves slots empty. Text and
# image tokens then go through **one** Transformer, so two things prepare the stream:
#
# - a **modality embedding**, a learned `(2, D)` table: row 0 is added to every text token and
#   row 1 to every image token;
# - an **attention mask** over the joint sequence: no token may attend to a padded word or to an
#   empty region slot.
#
# `text_tokens` is `(B, T, D)`, `image_tokens` `(B, N, D)`, `modality` `(2, D)`, `text_mask`
# `(B, T)` and `image_mask` `(B, N)` bool, True on real tokens. Return `x`, the `(B, T + N, D)`
# sequence **text first**, and `mask`, the `(B, T + N, T + N)` bool attention mask: `mask[b, i, j]`
# is True when token `i` may attend to token `j`. Gradients must reach the three float inputs;
# do not change the tensors you are given.

# %%
def joint_input(text_tokens, image_tokens, modality, text_mask, image_mask):
    raise NotImplementedError(
        "chapter 03 §2 (the single stream: modality-type embeddings, the joint padding mask) and §5 (region "
        "tokens, some slots empty); chapter 01 §3: padding is a rule about keys")


# %%
check("03.joint_input", joint_input)

# %% [markdown]
# ## Task 2 — BERT's masking
#
# ViLT learns language grounded in the image with BERT's masked-language modelling: hide some
# words of the caption and make the model recover them, from the rest of the caption *and from
# the image*. The recipe:
#
# 1. choose each **real word** with probability `prob` (15 %); special tokens (`<bos>`, `<eos>`,
#    `<unk>` ...) and padding are never chosen;
# 2. of the chosen words, 80 % become `<mask>`, 10 % a random word, 10 % stay unchanged — so the
#    model cannot learn that only `<mask>` positions matter: it must model every word;
# 3. the labels hold the **original** id at every chosen position and `-100` everywhere else
#    (`-100` is the cross-entropy's `ignore_index`: those positions are skipped).
#
# The vocabulary is the course tokenizer's; the cell below builds the three things your
# function receives besides the ids.

# %%
tok = Tokenizer.from_world()
special_ids = torch.tensor(sorted(tok._special_ids))  # <pad>, <bos>, <eos>, <unk>, <mask>, <image>, ...
word_ids = torch.tensor([i for i in range(len(tok)) if i not in tok._special_ids])  # what a random word may be
ids, _ = tok(["a red circle.", "there are two shapes: a blue square and a green star."], add_bos=True)
print(f"{len(tok)} tokens: {len(special_ids)} special, {len(word_ids)} words; "
      f"<mask> is {tok.mask_id}, <pad> {tok.pad_id}")
print(ids)

# %% [markdown]
# `ids` is `(B, T)` (`<bos> words <eos>`, then `<pad>`), `special_ids` and `word_ids` are 1-D
# tensors of ids, `mask_id` an int. Return `(inputs, labels)`, both `(B, T)` and `torch.long` (the
# cross-entropy takes no other targets). Leave `ids` itself unchanged. Use `torch.rand` /
# `torch.randint` for the random choices, one for every word: the check calls your function many
# times and measures the rates and how the choices fall (every word with its own coin, every
# replaced word with its own random word, a different masking on every call).

# %%
def mlm_mask(ids, special_ids, mask_id, word_ids, prob=0.15):
    raise NotImplementedError(
        "chapter 03 §3 (MLM: BERT's recipe, and the ratios it measures over twenty batches): a coin per "
        "real word, then one more draw per chosen word for its fate; the labels are what the model must "
        "recover, and the caller's ids stay as they were")


# %%
check("03.mlm_mask", mlm_mask)

# %% [markdown]
# ## Task 3 — the MLM loss
#
# The MLM head turns the text positions' hidden states into `logits` `(B, T, V)`, a score for
# every word of the vocabulary at every position. Return the mean cross-entropy over the
# **chosen** positions only (label ≠ -100), as a scalar tensor attached to the logits. Unlike a
# causal language model, MLM predicts the word *at its own position*: there is no shift. A batch
# of short captions can have no chosen word at all (and a batch can be empty); then return 0, not
# NaN (a mean over zero words), and a 0 that is still part of the graph, so that
# `loss.backward()` runs on every batch.

# %%
def mlm_loss(logits, labels):
    raise NotImplementedError(
        "chapter 03 §2, the MLM equation: a mean over the chosen positions M only, at each word's own "
        "position; a batch with M empty still has to give a loss that backward() can run through")


# %%
check("03.mlm_loss", mlm_loss)

# %% [markdown]
# ## Task 4 — image-text matching pairs
#
# ITM is the second pretraining task: given an image and a caption, does the caption describe the
# image? The model needs negatives, and the batch provides them. For each pair, with probability
# ½ (a fair coin per pair), replace the caption with the caption of **another scene whose set of
# objects differs**, label 0 (no match); otherwise keep the scene's own caption, label 1 (match).
# A partner with the same objects is no negative: its caption ("there are a red circle and a
# blue square.") is just as true of this image as the scene's own ("a picture of a blue square
# and a red circle.").
#
# `scenes` is a list of B ShapesWorld scenes (`scene.names` lists their objects, e.g.
# `['red circle', 'blue square']`, in no particular order) and `captions` their B captions.
# Return the list of B captions to pair with the images and the labels, a `(B,)` `torch.long`
# tensor. Leave both lists as they are.

# %%
def itm_pairs(scenes, captions):
    raise NotImplementedError(
        "chapter 03 §3 (ITM: half the pairs, chosen at random, get the caption of a scene with a different "
        "set of objects) and the ITM equation of §2 (y = 1 for a match, class indices for the "
        "cross-entropy)")


# %%
check("03.itm_pairs", itm_pairs)


# %% [markdown]
# ## Task 5 — the experiment: does masked-word prediction read the image?
#
# Chapter 03 §3 says that a masked *colour* or *shape* can only be recovered by looking at the
# image — that is what makes MLM a vision-language objective. Measure it on the zoo's pretrained
# ViLT: hide words, and compare the MLM head's accuracy when each caption sees its own image and
# when it sees another scene's.
#
# Write `image_ablation(model, images, captions, words)`: `model` is a ViLT, `images` `(B, 3, H, W)`
# and `captions` B strings (caption `i` describes image `i`), `words` a list of words (e.g. the
# colour names). Tokenize the captions with `model.tokenize(captions)` (ids and mask, `<bos> …
# <eos>`, padded), replace **every** occurrence of the words by `<mask>` (the ids come from
# `model.get_tokenizer()`: its `.id(word)` and `.mask_id`), run `model(images, ids, mask)` (hidden
# states `(B, T + 1 + N, D)`, text first) and read `model.mlm_logits(hidden[:, :T])`. Return a dict:
#
# - `"true"`: the accuracy of the head's top word at the masked positions, each caption with its
#   own image;
# - `"shuffled"`: the same with every caption paired with the previous scene's image (the images
#   rolled by one along the batch);
# - `"n"`: the number of masked words.
#
# Only measure: change nothing about the model (its weights, its mode) or the inputs. The check
# runs your function on fresh scenes, with the zoo model and with an untrained one, on colour words
# and on shape words, and measures again.

# %%
def image_ablation(model, images, captions, words):
    raise NotImplementedError(
        "chapter 03 §2 (where the text positions sit in the single stream, and the MLM head on them) and §3 "
        "(what a masked colour or shape needs); the two arms differ only in which image each caption sees")


# %%
check("03.image_ablation", image_ablation)

# %% [markdown]
# Your experiment on 512 fresh test scenes, colour words and shape words, with 95 % intervals.
# Chance is one word in the vocabulary; knowing only that a colour (or a shape) goes there is one
# in eight (one in six).

# %%
import time  # noqa: E402

from minivlm.data.shapesworld import COLORS, SHAPES  # noqa: E402
from minivlm.eval import wilson  # noqa: E402

pretrained = zoo.load("vilt_pretrained").eval()
world = ShapesWorld(seed=2024, split="test")
scenes = world.sample(512)
images, captions = world.render(scenes), [world.caption(s) for s in scenes]
start = time.perf_counter()
ablation = {"colour": image_ablation(pretrained, images, captions, list(COLORS)),
            "shape": image_ablation(pretrained, images, captions, list(SHAPES))}
print(f"measured in {time.perf_counter() - start:.1f} s")
for kind, r in ablation.items():
    n = r["n"]
    print(f"{kind:7} words ({n}):  own image {wilson(round(r['true'] * n), n)}   another scene's image "
          f"{wilson(round(r['shuffled'] * n), n)}")

# %% [markdown]
# **What the run shows** (the figures printed above). With its own image the pretrained ViLT
# recovers a masked colour far more often than with another scene's image: its MLM head reads
# the colour from the pixels. For shapes the two arms are much closer, though their intervals
# may still separate: the head recovers a shape only a little better from the right image than
# from a wrong one, so this model's MLM has learnt to read colour from the image far more than
# shape. Why shape lags is untested here (no arm varies what the model could use to see shape:
# patch size, resolution, training steps).
#
# ## Put together: your pieces inside a ViLT
#
# Your joint input through the Transformer of a freshly built region-based ViLT (the library's
# `visual="regions"`, chapter 03 §5) must give exactly what `ViLT.forward` gives; your masking on
# real captions; both pretraining losses on a batch from `pretrain_batches`.

# %%
from minivlm import grading  # noqa: E402

yours = {"03.joint_input": joint_input, "03.mlm_mask": mlm_mask, "03.mlm_loss": mlm_loss, "03.itm_pairs": itm_pairs}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("tasks 1-4 pass: running your functions in a ViLT" if ready
      else "finish tasks 1-4 first: the next cells use them")

# %%
if ready:
    from minivlm.data.pairs import oracle_regions
    from minivlm.models.vilt import ViLT, ViLTConfig

    region_vilt = ViLT(ViLTConfig(visual="regions")).eval()  # freshly initialised: untrained
    shown = world.sample(6)
    region_images = world.render(shown)
    boxes, box_mask = oracle_regions(shown)  # (B, R, 4), (B, R): empty slots where a scene has fewer objects
    ids, text_mask = region_vilt.tokenize([world.caption(s) for s in shown])
    modality = region_vilt.modality_embed.weight  # (2, D)
    with torch.no_grad():
        text_tokens = region_vilt.embed_text(ids) - modality[0]  # the library adds the modality row: take it off
        image_tokens = region_vilt.embed_image(region_images, boxes) - modality[1]  # (B, 1 + R, D)
        image_mask = torch.cat([torch.ones(len(shown), 1, dtype=torch.bool), box_mask], dim=1)  # the CLS is real
        x, mask = joint_input(text_tokens, image_tokens, modality, text_mask, image_mask)
        hidden = region_vilt.norm(region_vilt.transformer(x, mask=mask))
        reference = region_vilt(region_images, ids, text_mask, boxes=boxes, box_mask=box_mask)
    print(f"text {tuple(text_tokens.shape)} + image {tuple(image_tokens.shape)} → x {tuple(x.shape)}; "
          f"{int((~box_mask).sum())} empty region slots")
    print(f"max |your stream − ViLT.forward| = {(hidden - reference).abs().max():.2e}")
    viz.plot_masks({f"pair {i}": mask[i] for i in range(3)})

# %%
if ready:  # tok, special_ids and word_ids: the cell before task 2
    captions8 = [world.caption(s) for s in world.sample(8)]
    ids, text_mask = tok(captions8, add_bos=True, add_eos=True)
    inputs, labels = mlm_mask(ids, special_ids, tok.mask_id, word_ids)
    for i, caption in enumerate(captions8[:4]):
        masked = tok.decode(inputs[i][text_mask[i]][1:-1], skip_special=False)  # without <bos>, <eos>, padding
        targets = [tok.vocab[j] for j in labels[i][labels[i] != -100].tolist()]
        print(f"  {caption}\n→ {masked}    predict: {targets}\n")

# %% [markdown]
# Both losses of pretraining on the zoo's pretrained ViLT. `pretrain_step` is the library's
# training step; your MLM loss on its masked captions gives the same number; your ITM pairs get
# the library's ITM loss (chance is ln 2).

# %%
if ready:
    from minivlm.losses import itm_loss
    from minivlm.models.vilt import pretrain_batches, pretrain_step

    batch = pretrain_batches(batch_size=64, seed=0)(0)
    t = batch["ids"].shape[1]
    with torch.no_grad():
        mlm_logits = pretrained.mlm_logits(pretrained(batch["images"], batch["mlm_ids"], batch["attention_mask"])[:, :t])
        library = pretrain_step(pretrained, batch)
        scenes64 = ShapesWorld(seed=5, split="train").sample(64)
        texts, itm_labels = itm_pairs(scenes64, [world.caption(s) for s in scenes64])
        itm_ids, itm_mask = pretrained.tokenize(texts)
        itm_logits = pretrained.itm_logits(pretrained.pool(pretrained(world.render(scenes64), itm_ids, itm_mask)))
    print(f"MLM loss: yours {mlm_loss(mlm_logits, batch['mlm_labels']):.4f}, pretrain_step {library['mlm']:.4f} "
          f"(ln V = {math.log(len(tok)):.2f})")
    print(f"ITM loss: on your pairs {itm_loss(itm_logits, itm_labels):.4f}, on pretrain_batches' pairs "
          f"{library['itm']:.4f} (ln 2 = {math.log(2):.3f})")
    print(f"ITM accuracy on your pairs: {(itm_logits.argmax(1) == itm_labels).float().mean():.1%}")
