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
# # 03 · ViLT — exercises
#
# Four pieces of chapter 03 (`notebooks/03_vilt.ipynb`) to write yourself: the single sequence
# `[text ; image]` that ViLT's one Transformer reads, BERT's masking for masked-language
# modelling (MLM), the MLM loss, and the pairs for image-text matching (ITM). The cell after each
# task runs `check(...)` on fresh inputs and tells you what is wrong. At the end your pieces run
# inside a freshly built ViLT from the library (`minivlm/models/vilt.py`). Grade the whole
# notebook from a terminal with `minivlm check exercises/03_vilt.ipynb`.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minivlm.data import ShapesWorld, Tokenizer
from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — one sequence for one Transformer
#
# ViLT has no vision encoder: the image is cut into patches, each patch is projected to a
# `D`-dimensional token, and the text tokens and the image tokens go through **one** Transformer
# together, so that every word can attend to every patch from the first layer on. Two things
# prepare that single stream:
#
# - a **modality embedding**, a learned `(2, D)` table: row 0 is added to every text token and
#   row 1 to every image token, so that a token "knows" which modality it comes from;
# - a **joint padding mask**: captions are right-padded to the longest in the batch, and no
#   token may attend to padding; image tokens are never padding.
#
# `text_tokens` is `(B, T, D)`, `image_tokens` `(B, N, D)`, `modality` `(2, D)` and `text_mask`
# `(B, T)` bool, True on real tokens. Return `x`, the `(B, T + N, D)` sequence **text first**,
# and `valid`, the `(B, T + N)` bool mask that is True on every real token. Do not change the
# tensors you are given.

# %%
def single_stream_input(text_tokens, image_tokens, modality, text_mask):
    ### BEGIN SOLUTION hint: each modality's row of the table goes onto its own tokens; join along the sequence axis,
    ###     text first; which image tokens are real?
    x = torch.cat([text_tokens + modality[0], image_tokens + modality[1]], dim=1)  # (B, T + N, D)
    image_valid = torch.ones(image_tokens.shape[:2], dtype=torch.bool)  # (B, N): no image token is padding
    valid = torch.cat([text_mask.bool(), image_valid], dim=1)  # (B, T + N)
    return x, valid
    ### END SOLUTION


# %%
check("03.single_stream_input", single_stream_input)

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
# tensors of ids, `mask_id` an int. Return `(inputs, labels)`, both `(B, T)`. Leave `ids` itself
# unchanged. Use `torch.rand` / `torch.randint` for the random choices: the check calls your
# function many times and measures the rates.

# %%
def mlm_mask(ids, special_ids, mask_id, word_ids, prob=0.15):
    ### BEGIN SOLUTION hint: only ids outside special_ids may be chosen, each with probability prob; one more uniform
    ###     draw per chosen word decides its fate; change a copy of ids, and label with the ids you started from
    chosen = ~torch.isin(ids, special_ids) & (torch.rand(ids.shape) < prob)  # (B, T) real words only
    fate = torch.rand(ids.shape)  # [0, 0.8): <mask>, [0.8, 0.9): a random word, [0.9, 1): kept
    to_mask = chosen & (fate < 0.8)
    to_random = chosen & (fate >= 0.8) & (fate < 0.9)
    random_words = word_ids[torch.randint(len(word_ids), ids.shape)]  # (B, T), never a special token
    inputs = ids.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_words[to_random]
    labels = torch.where(chosen, ids, -100)  # the original word where chosen, ignored elsewhere
    return inputs, labels
    ### END SOLUTION


# %%
check("03.mlm_mask", mlm_mask)

# %% [markdown]
# ## Task 3 — the MLM loss
#
# The MLM head turns the text positions' hidden states into `logits` `(B, T, V)`, a score for
# every word of the vocabulary at every position. Return the mean cross-entropy over the
# **chosen** positions only (label ≠ -100), as a scalar tensor attached to the logits. Unlike a
# causal language model, MLM predicts the word *at its own position*: there is no shift. A batch
# of short captions can have no chosen word at all; then return 0, not NaN (a mean over zero
# words).

# %%
def mlm_loss(logits, labels):
    ### BEGIN SOLUTION hint: keep only the positions whose label is not -100; what is the mean of an empty set?
    chosen = labels != -100  # (B, T)
    if not chosen.any():
        return logits.sum() * 0.0  # nothing to predict: 0, still attached to the graph
    return F.cross_entropy(logits[chosen], labels[chosen])  # (K, V) vs (K,)
    ### END SOLUTION


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
# Return the list of B captions to pair with the images and the labels, a `(B,)` long tensor.

# %%
def itm_pairs(scenes, captions):
    ### BEGIN SOLUTION hint: a coin per pair; a negative's partner is any scene whose objects, as a set, differ; 1 =
    ###     match
    objects = [sorted(s.names) for s in scenes]  # order does not matter: compare the sets
    texts, labels = [], []
    for i in range(len(scenes)):
        if torch.rand(()) < 0.5:
            others = [j for j in range(len(scenes)) if objects[j] != objects[i]]
            j = others[int(torch.randint(len(others), ()))]
            texts.append(captions[j])
            labels.append(0)
        else:
            texts.append(captions[i])
            labels.append(1)
    return texts, torch.tensor(labels)
    ### END SOLUTION


# %%
check("03.itm_pairs", itm_pairs)

# %% [markdown]
# ## Put together: your pieces inside a ViLT
#
# First your masking on real ShapesWorld captions; then your single stream through the
# Transformer of a freshly built (untrained) library ViLT, which must give exactly what
# `ViLT.forward` gives; then both pretraining losses on a batch from `pretrain_batches`.

# %%
from minivlm import grading  # noqa: E402

yours = {"03.single_stream_input": single_stream_input, "03.mlm_mask": mlm_mask, "03.mlm_loss": mlm_loss,
         "03.itm_pairs": itm_pairs}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("all four tasks pass: running your functions in a ViLT" if ready
      else "finish the four tasks above first: the next cells use all of them")

# %%
if ready:
    world = ShapesWorld(seed=0)
    captions = [world.caption(s) for s in world.sample(8)]
    ids, text_mask = tok(captions, add_bos=True, add_eos=True)
    inputs, labels = mlm_mask(ids, special_ids, tok.mask_id, word_ids)
    for i, caption in enumerate(captions):
        masked = tok.decode(inputs[i][text_mask[i]][1:-1], skip_special=False)  # without <bos>, <eos>, padding
        targets = [tok.vocab[j] for j in labels[i][labels[i] != -100].tolist()]
        print(f"  {caption}\n→ {masked}    predict: {targets}\n")

# %% [markdown]
# The model sees the masked caption and the image; the MLM loss asks it for every chosen word,
# the ones hidden behind `<mask>`, the ones replaced by a random word and the ones left as they
# were. The single stream: text tokens (`LN(word + position)`) and image tokens (the image CLS,
# then one token per 8×8 patch, plus positions) built by hand from the model's own layers, joined
# by your function, through the model's Transformer.

# %%
if ready:
    from minivlm.losses import itm_loss
    from minivlm.models.vilt import ViLT, ViLTConfig, pretrain_batches, pretrain_step
    from minivlm.nn import masks

    model = ViLT(ViLTConfig()).eval()  # freshly initialised: untrained
    batch = pretrain_batches(batch_size=16, seed=0)(0)
    images, ids, text_mask = batch["images"], batch["ids"], batch["attention_mask"]
    with torch.no_grad():
        text_tokens = model.text_norm(model.word_embeddings(ids) + model.text_pos[:, : ids.shape[1]])  # (B, T, D)
        patches = model.patch_embed((images - model.image_mean) / model.image_std)  # (B, N, D)
        image_tokens = torch.cat([model.image_cls.expand(len(images), -1, -1), patches], 1) + model.image_pos
        x, valid = single_stream_input(text_tokens, image_tokens, model.modality_embed.weight, text_mask)
        hidden = model.norm(model.transformer(x, mask=masks.padding(valid)))  # (B, T + 1 + N, D)
        reference = model(images, ids, text_mask)
    print(f"text {tuple(text_tokens.shape)} + image {tuple(image_tokens.shape)} → x {tuple(x.shape)}")
    print(f"max |your stream − ViLT.forward| = {(hidden - reference).abs().max():.2e}")

# %%
if ready:
    t = ids.shape[1]
    plt.figure(figsize=(8, 2.2))
    plt.imshow(valid.int(), cmap="Blues", aspect="auto", interpolation="nearest")
    plt.axvline(t - 0.5, color="red")
    plt.xlabel(f"position: text (0..{t - 1}) | image ({t}..{valid.shape[1] - 1})")
    plt.ylabel("pair")
    plt.title("valid: the joint padding mask (blue = a real token)")
    plt.show()

# %% [markdown]
# Both losses of pretraining. An untrained model guesses: the MLM loss is near ln V (one word in
# V) and the ITM loss near ln 2 (a coin). `pretrain_step` is the library's training step; your
# MLM loss on its masked captions gives the same number.

# %%
if ready:
    with torch.no_grad():
        mlm_logits = model.mlm_logits(model(images, batch["mlm_ids"], text_mask)[:, :t])  # (B, T, V)
        library = pretrain_step(model, batch)
        scenes = world.sample(16)
        texts, itm_labels = itm_pairs(scenes, [world.caption(s) for s in scenes])
        itm_ids, itm_mask = model.tokenize(texts)
        itm_logits = model.itm_logits(model.pool(model(world.render(scenes), itm_ids, itm_mask)))  # (B, 2)
    print(f"MLM loss: yours {mlm_loss(mlm_logits, batch['mlm_labels']):.4f}, pretrain_step {library['mlm']:.4f} "
          f"(ln V = {math.log(len(tok)):.2f})")
    print(f"ITM loss: on your pairs {itm_loss(itm_logits, itm_labels):.4f}, on pretrain_batches' pairs "
          f"{library['itm']:.4f} (ln 2 = {math.log(2):.3f})")
    for text, label in list(zip(texts, itm_labels.tolist()))[:4]:
        print(f"  {'match   ' if label else 'no match'}  {text}")
