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
# > **Exercises.** This notebook is generated from `solutions/04_albef.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/04_albef.ipynb`.

# %% [markdown]
# # 04 · ALBEF — exercises
#
# Chapter 04 (`notebooks/04_albef.ipynb`) wrote out one momentum update, one ITC step with a queue,
# and one direction of ITM's hard negatives, each on the whole of a model or a batch. Here you write
# the next steps: the momentum update of a momentum model that keeps only some of the model's parts;
# the feature queue itself, for any batch size; momentum distillation (MoD) for masked-language
# modelling, where only the masked positions count; and ALBEF's whole ITM batch, with hard negatives
# in both directions. Then an experiment: momentum distillation off and on, with 40 % of the
# captions wrong. The cell after each task runs `check(...)` on fresh inputs and tells you what is
# wrong. At the end your pieces run inside ALBEF's pretraining step (`minivlm/models/albef.py`).
# Grade the whole notebook from a terminal with `minivlm check exercises/04_albef.ipynb`.

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — the momentum update, part by part
#
# The momentum model trails the trained (online) model as an exponential moving average of its
# weights, $\theta_m \leftarrow m\,\theta_m + (1 - m)\,\theta$ (chapter 04 §3 writes it out for a
# full copy). ALBEF's momentum model is not a full copy: it keeps only what the teacher and the
# queues need (the image and text encoders and their projections), and no ITM head. So the two
# modules no longer have the same list of parameters: online has more, and nothing promises that
# its parts come in the same order. What pairs a parameter of the momentum model with its online
# twin is its **name**.
#
# `target` (the momentum model) and `online` are `nn.Module`s; every parameter of `target` has a
# namesake of the same shape in `online`, which may have others; `momentum` is a float in [0, 1].
# Change **every parameter of `target` in place** and return nothing. Leave `online` exactly as it
# is, its gradients (`.grad`) included: a trainer may call the update between `loss.backward()` and
# the optimizer's step. The momentum model is never trained by backpropagation: autograd must not
# record the update, and its parameters keep `requires_grad=False`.

# %%
def momentum_update(target, online, momentum):
    raise NotImplementedError(
        "chapter 04 §3 (the momentum model: an exponential moving average of the online weights, which no "
        "gradient ever reaches); what makes two parameters twins here is their name")


# %%
check("04.momentum_update", momentum_update)

# %% [markdown]
# ## Task 2 — the feature queue
#
# ALBEF contrasts every image with the captions of its batch *and* with a queue of Q older caption
# features from the momentum model (chapter 04 §3), and every caption with a queue of images. The
# queue is a ring buffer: a `(Q, E)` tensor and a pointer to its oldest row. Each step writes the
# batch's B features over the oldest rows, from the pointer on, and moves the pointer past them.
# The library's queue (`minivlm/nn/momentum.py`), like ALBEF's, demands that B divide Q, so that a
# batch never meets the end. Write the general one:
#
# - a batch that runs past the last row **wraps around**: its remaining rows go to rows 0, 1, …;
# - a batch longer than the queue leaves its **last** Q rows (each row overwrites what came before);
# - an empty batch changes nothing (the last batch of an epoch can be short, even empty).
#
# `queue` is `(Q, E)` (any float dtype), `ptr` an int in [0, Q), `features` `(B, E)`. Write into
# `queue` in place (row `k` of the batch to row `(ptr + k) % Q`) and return the new pointer,
# `(ptr + B) % Q`, an int. The queue stores constants: no graph may follow the features into it.
# Leave `features` as it is.

# %%
def enqueue(queue, ptr, features):
    raise NotImplementedError(
        "chapter 04 §3 (the queue of momentum features: the newest Q kept, the oldest overwritten); a ring "
        "buffer has no end, only a pointer")


# %%
check("04.enqueue", enqueue)

# %% [markdown]
# ## Task 3 — momentum distillation for masked-language modelling
#
# MoD softens the targets of ITC *and* of MLM (chapter 04 §1, the last equation): at a masked
# position, the target is no longer the true word alone but
#
# $$(1 - \alpha)\,\text{one-hot}(\text{true word}) + \alpha\,\operatorname{softmax}(\text{momentum model's logits}),$$
#
# and the loss is the cross-entropy of the online model's prediction against it. Chapter 04 §3
# wrote this for ITC, on an `(N, C)` matrix where every row counts. For MLM the logits are
# `(B, T, V)`, one distribution over the V words at every position, and only the **masked** positions
# count (label ≠ -100, as in chapter 03's MLM loss); the others predict nothing.
#
# `logits` and `teacher_logits` are `(B, T, V)`, the online and the momentum model's; `labels`
# `(B, T)` long, the true word at masked positions and -100 elsewhere; `alpha` a float in [0, 1].
# Return the mean over the masked positions of the batch, a scalar tensor attached to `logits`.
# The teacher's distribution is a constant target: no gradient may reach `teacher_logits`. A batch
# with no masked word (short captions), or an empty batch, gives 0, still part of the graph, so that
# `loss.backward()` runs on every batch.

# %%
def mlm_distillation(logits, teacher_logits, labels, alpha):
    raise NotImplementedError(
        "chapter 04 §1 (the MLM loss and how MoD changes its targets) and §3 (the soft targets and their "
        "cross-entropy, written for ITC); chapter 03's MLM loss for which positions count and what an empty "
        "selection must give")


# %%
check("04.mlm_distillation", mlm_distillation)

# %% [markdown]
# ## Task 4 — ALBEF's ITM batch
#
# ITM learns from the B true pairs of a batch and 2B negatives (chapter 04 §4): for each image a
# caption, for each caption an image, drawn in proportion to the ITC softmax so that the ones that
# look most alike come most often, and never one that is true of it. Chapter 04 §4 drew the
# captions for the images. The images for the captions use their own similarities: in ALBEF
# `sim_t2i` is the online *text* features against the momentum *images*, not `sim_i2t` transposed.
#
# `sim_i2t` is `(B, B)`, row i image i against every caption; `sim_t2i` `(B, B)`, row j caption j
# against every image; `positives` `(B, B)` bool, `positives[i, j]` True where caption j is true of
# image i (caption i is image i's own; others may be true of it too, and the relation need not be
# symmetric). Return `(image_index, text_index, labels)`, three `(3B,)` `torch.long` tensors, the
# pairs for the fusion encoder in this order:
#
# 1. the B true pairs `(i, i)`, label 1;
# 2. image i with a caption drawn from `softmax(sim_i2t[i])` over the captions not true of it, label 0;
# 3. an image drawn from `softmax(sim_t2i[j])` over the images caption j is not true of, with
#    caption j, label 0.
#
# Draw with torch's global random generator (e.g. `torch.multinomial`), the captions first, then the
# images: the check calls your function on thousands of rows and measures how often each column
# comes, in each direction. Leave the inputs as they are.

# %%
def itm_batch(sim_i2t, sim_t2i, positives):
    raise NotImplementedError(
        "chapter 04 §4 (hard negatives: each row's ITC softmax with the positives given no weight); for a "
        "caption, the images it is not true of are a column of positives")


# %%
check("04.itm_batch", itm_batch)

# %% [markdown]
# ## Task 5 — the experiment: momentum distillation at 40 % caption noise
#
# MoD's claim (chapter 04 §3 and §8): when some captions are wrong, the momentum model's softmax
# tempers the one-hot target, so the model is not pushed to learn a wrong caption as gospel.
# Chapter 04 §8 reads the zoo's arms (600 steps of a full ALBEF, three seeds each); here you run the
# ablation yourself, on the smallest model that has the mechanism: a linear dual encoder trained with
# ITC alone, with a momentum copy as its teacher.
#
# The data: paired features, `image_features` `(N, Di)` and `text_features` `(N, Dt)`, pair i on row i
# of each, two noisy views of one hidden vector; in a share of the pairs the text is another pair's
# (a wrong caption). The helper below (from the check module) draws them, with clean held-out pairs.
# Write `mod_experiment(image_features, text_features, alpha, steps, seed)`:
#
# 1. draw `w_image` `(Di, 8)`, then `w_text` `(Dt, 8)` from a generator seeded with `seed` (standard
#    normal, divided by the square root of their input width); the momentum copies `w_image_m`,
#    `w_text_m` start equal to them;
# 2. every step, on all N pairs at once: first the momentum update (`m = 0.99`, as in Task 1); then the
#    scores `10 · cos`, `(N, N)`, image i against text j, of the online weights and of the momentum
#    weights (the teacher); targets `(1 − α)·I + α·softmax(teacher scores)`, row by row, for
#    image→text, and the same with the teacher's scores transposed for text→image; the loss, the
#    mean of the two directions' cross-entropies against their targets; one Adam step (lr 0.01) on
#    `w_image` and `w_text`;
# 3. return a dict of the four trained tensors: `"w_image"`, `"w_text"`, `"w_image_m"`, `"w_text_m"`.
#
# `alpha = 0` is plain ITC (no distillation). The check runs your function on pairs it draws, from
# a seed, against the recipe for a few steps, then for the full run with MoD off and on, and
# measures both from the weights you return.

# %%
from minivlm.grading.ch04 import noisy_pairs, recall_at_1, wrong_fit  # noqa: E402

image_features, text_features, wrong, _, _ = noisy_pairs(6, 4, 0.4, torch.Generator().manual_seed(0))
print("image features", tuple(image_features.shape), "text features", tuple(text_features.shape),
      "wrong captions", wrong.tolist())


# %%
def mod_experiment(image_features, text_features, alpha, steps, seed):
    raise NotImplementedError(
        "chapter 04 §1 (ITC and how MoD mixes its targets, both directions) and §3 (the momentum model: "
        "updated first in every step, then its softmax taken as a constant teacher); a generator seeded "
        "with seed makes the run repeatable")


# %%
check("04.mod_experiment", mod_experiment)

# %% [markdown]
# Your experiment: three draws of 128 training pairs, with 0 % and 40 % of the captions wrong, each
# trained 200 steps with MoD off (α = 0) and on (α = 0.4) from the same seed. Measured from the
# weights: image→text R@1 among 128 clean held-out pairs, and on the training pairs with a wrong
# caption, the softmax probability the image gives that wrong caption (how far the model has learned
# the noise; 1 / 128 ≈ 0.008 is not at all).

# %%
import time  # noqa: E402

start = time.perf_counter()
results = {}
for draw in range(3):
    for noise in (0.0, 0.4):
        train_i, train_t, wrong, test_i, test_t = noisy_pairs(128, 128, noise, torch.Generator().manual_seed(draw))
        for alpha in (0.0, 0.4):
            w = mod_experiment(train_i, train_t, alpha, 200, seed=draw)
            results[draw, noise, alpha] = (recall_at_1(test_i, test_t, w["w_image"], w["w_text"]),
                                           wrong_fit(train_i, train_t, wrong, w["w_image"], w["w_text"])
                                           if wrong.any() else float("nan"))
print(f"12 runs in {time.perf_counter() - start:.1f} s")
print(f"{'draw':>5}{'noise':>7}{'R@1 no MoD':>12}{'R@1 MoD':>9}{'MoD − no MoD':>14}{'wrong-caption p, no MoD':>25}"
      f"{'MoD':>7}")
for draw in range(3):
    for noise in (0.0, 0.4):
        (r0, f0), (r1, f1) = results[draw, noise, 0.0], results[draw, noise, 0.4]
        print(f"{draw:5}{noise:7.0%}{r0:12.3f}{r1:9.3f}{r1 - r0:+14.3f}{f0:25.3f}{f1:7.3f}")
gains = {noise: [results[d, noise, 0.4][0] - results[d, noise, 0.0][0] for d in range(3)] for noise in (0.0, 0.4)}
fits = [(results[d, 0.4, 0.0][1], results[d, 0.4, 0.4][1]) for d in range(3)]

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, noise in zip(axes, (0.0, 0.4)):
    for d in range(3):
        ax.plot([0, 1], [results[d, noise, 0.0][0], results[d, noise, 0.4][0]], "o-", color=f"C{d}", label=f"draw {d}")
    ax.set(xticks=[0, 1], xticklabels=["no MoD", "MoD (α = 0.4)"], xlim=(-0.3, 1.3), ylim=(0, 1),
           title=f"{noise:.0%} wrong captions", ylabel="held-out R@1 among 128")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# **What the run shows** (the figures printed above). With 40 % of the captions wrong, MoD does what
# its mechanism says: the model believes the wrong captions less (their probability is lower with
# MoD in every draw). It does not buy retrieval here: on clean held-out pairs R@1 is *lower* with MoD,
# at 40 % noise and at 0 %, in every draw, and the noise costs far more than MoD changes. A teacher
# that trails the model by about 100 steps (m = 0.99) pulls a 200-step run back towards what it knew
# earlier, and this linear model has nothing the teacher could add that the one-hot targets lack.
# This agrees with chapter 04 §8 as far as it goes: there, on ITC retrieval alone, the MoD and no-MoD
# seeds overlap; MoD's gains at 40 % noise are on the ITM figures, which this model does not have.
# Whether a warm-up of α (ALBEF ramps it up from 0), or a longer run, changes the sign here is
# untested.

# %% [markdown]
# ## Put together: your pieces inside ALBEF's pretraining
#
# The library's `pretrain_step` (`minivlm/models/albef.py`) calls the library's versions of three
# of your functions: `momentum_update` at every training step, before the momentum model encodes
# the batch; the queues' `enqueue` after ITC; `itm_negatives` for ITM's hard negatives, which your
# `itm_batch` provides. Below, a tiny ALBEF is pretrained twice from the same initial weights on the
# same batches: once with the library's pieces, once with yours swapped in (`unittest.mock.patch`
# replaces the names that `minivlm.models.albef` looks up, and the queue's method, only inside the
# `with` block).

# %%
from minivlm import grading  # noqa: E402

yours = {"04.momentum_update": momentum_update, "04.enqueue": enqueue, "04.mlm_distillation": mlm_distillation,
         "04.itm_batch": itm_batch}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("tasks 1-4 pass: running your functions inside ALBEF's pretraining" if ready
      else "finish tasks 1-4 first: the next cells use all of them")

# %%
if ready:
    from contextlib import ExitStack
    from unittest import mock

    from minivlm.data.pairs import pretrain_batches
    from minivlm.models import albef
    from minivlm.nn.momentum import FeatureQueue
    from minivlm.train import fit

    def your_itm_negatives(sim_i2t, sim_t2i, positives, hard=True):
        """The library's itm_negatives from your itm_batch: (a caption per image, an image per caption)."""
        if not hard:  # uniform over the allowed columns: the softmax of a constant
            sim_i2t = sim_t2i = torch.zeros_like(sim_i2t)
        image_index, text_index, _ = itm_batch(sim_i2t, sim_t2i, positives)
        b = len(positives)
        return text_index[b:2 * b], image_index[2 * b:]

    def your_enqueue(queue, x):
        """FeatureQueue.enqueue from your enqueue: the queue's buffer and pointer, written in place."""
        queue.ptr.fill_(enqueue(queue.features, int(queue.ptr), x))

    def your_pieces():
        """Inside this context, ALBEF's pretraining step calls your momentum update, queue and ITM negatives."""
        stack = ExitStack()
        stack.enter_context(mock.patch.multiple(albef, momentum_update=momentum_update,
                                                itm_negatives=your_itm_negatives))
        stack.enter_context(mock.patch.object(FeatureQueue, "enqueue", your_enqueue))
        return stack

    STEPS = 60
    config = albef.ALBEFConfig(dim=32, vision_depth=1, text_depth=1, fusion_depth=1, heads=2, embed_dim=32,
                               queue_size=64, alpha_warmup=20)  # tiny: a few seconds on a CPU
    batches = pretrain_batches(batch_size=16, seed=0)
    torch.manual_seed(0)
    start = albef.ALBEFPretrainer(albef.ALBEF(config))
    library_run, your_run = copy.deepcopy(start), copy.deepcopy(start)
    h_library = fit(library_run, albef.pretrain_step, batches, STEPS, lr=2e-3, desc="library's pieces")
    with your_pieces():
        h_yours = fit(your_run, albef.pretrain_step, batches, STEPS, lr=2e-3, desc="your pieces")
    for key in ("itc", "itm", "mlm"):
        gap = max(abs(a - b) for a, b in zip(h_library.losses[key], h_yours.losses[key]))
        print(f"{key}: last 10 steps library {h_library.last(key, 10):.3f}, yours {h_yours.last(key, 10):.3f}; "
              f"largest gap over the run {gap:.2e}")

# %% [markdown]
# Both runs seed torch alike, so they draw the same random numbers. If your `itm_batch` turns them
# into negatives as `torch.multinomial` does on the same weights, captions first, the two runs are
# identical; if it draws another way, they part after the first step, by the luck of the draws, and
# should end about equally low. Sixty steps teach this tiny model little: ITC rises at first while
# the queues fill (their random starting features are easy negatives, the momentum features that
# replace them are not), and ITM settles near 0.64, the entropy of "one pair in three matches", the
# answer of a model that has learned only how often a pair matches. The chapter trains longer; here
# what matters is that the two runs agree.

# %%
if ready:
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    for ax, key in zip(axes, ("itc", "itm", "mlm")):
        ax.plot(h_library.losses[key], label="library's pieces")
        ax.plot(h_yours.losses[key], "--", label="your pieces")
        ax.set_title(key.upper())
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    axes[0].legend()
    plt.tight_layout()
    plt.show()

# %% [markdown]
# The momentum model and the queues after training with your pieces: the momentum model still
# frozen for autograd and trailing the online model, one more update with your function equal to
# the library's, and the queues' pointers where 60 batches of 16 leave them in a queue of 64.

# %%
if ready:
    from minivlm.nn.momentum import momentum_update as library_momentum_update

    online, slow = your_run.model, your_run.momentum
    params = list(slow.parameters())
    print(f"momentum model: {sum(p.requires_grad for p in params)} of {len(params)} parameters require grad, "
          f"{sum(p.grad is not None for p in params)} have a .grad")

    def flat(module):
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    drift = (flat(slow) - flat(online)).norm() / flat(online).norm()
    print(f"‖θ_momentum − θ‖ / ‖θ‖ = {drift:.3f} after {STEPS} steps")
    a, b = copy.deepcopy(slow), copy.deepcopy(slow)
    momentum_update(a, online, 0.995)
    library_momentum_update(b, online, 0.995)
    print(f"one more update, max |yours − library's| = {(flat(a) - flat(b)).abs().max():.2e}")
    print(f"queue pointers: text {int(your_run.text_queue.ptr)}, image {int(your_run.image_queue.ptr)} "
          f"(60 · 16 mod 64 = {60 * 16 % 64}); max |your queue − library's| = "
          f"{(your_run.text_queue.features - library_run.text_queue.features).abs().max():.2e}")

# %% [markdown]
# Your MoD for MLM on a batch neither run trained on, in evaluation mode (no update, no queue
# change): the online and momentum models' logits at every position, and your loss against the MLM
# loss that `pretrain_step` reports, which mixes the same two terms, (1 − α)·MLM + α·distillation.

# %%
if ready:
    batch = batches(STEPS)  # the step after the last one trained
    your_run.eval()
    with torch.no_grad():
        library_losses = albef.pretrain_step(your_run, batch)
        m, mom, mask = your_run.model, your_run.momentum, batch["attention_mask"]
        logits = m.mlm_logits(m.fuse(m.encode_text(batch["mlm_ids"], mask)[0], mask,
                                     m.encode_image(batch["images"])[0]))  # (B, T, V)
        teacher_logits = mom.mlm_logits(mom.fuse(mom.encode_text(batch["mlm_ids"], mask)[0], mask,
                                                 mom.encode_image(batch["images"])[0]))
        your_mlm = mlm_distillation(logits, teacher_logits, batch["mlm_labels"], library_losses["alpha"])
    print(f"α = {library_losses['alpha']:.2f}, {int((batch['mlm_labels'] != -100).sum())} masked words: "
          f"MLM with MoD, library {float(library_losses['mlm']):.5f}, yours {float(your_mlm):.5f}")

# %% [markdown]
# Finally your sampler on similarities worth sampling from. Sixty steps teach the tiny ALBEF above
# little, so its ITC similarities are nearly flat; the course's trained CLIP (chapter 02,
# `zoo.load("clip")`) is a contrastive model of the same kind as ALBEF's ITC, trained for long. For
# one image of a batch of 32: the weight of each caption (its softmax, the positives set to 0), how
# often your `itm_batch` drew it as the image's negative in 2,000 calls, and the captions it draws
# most.

# %%
if ready:
    from minivlm import zoo

    clip = zoo.load("clip").eval()
    batch = pretrain_batches(batch_size=32, seed=1)(0)
    tok = clip.get_tokenizer()
    texts = [tok.decode(ids[valid]) for ids, valid in zip(batch["ids"], batch["attention_mask"])]
    with torch.no_grad():
        similarity = clip.scale() * clip.encode_image(batch["images"]) @ clip.encode_text(texts).t()  # (B, B)
    exclude = batch["positives"]  # (B, B): caption j is true of image i
    i, draws, b = 0, 2000, len(texts)
    weights = similarity[i].softmax(0).masked_fill(exclude[i], 0.0)
    weights = weights / weights.sum()
    drawn = torch.stack([itm_batch(similarity, similarity.t(), exclude)[1][b + i] for _ in range(draws)])
    freq = torch.bincount(drawn, minlength=len(weights)).float() / draws
    print(f"image {i}, its caption: {texts[i]!r}")
    for j in weights.argsort(descending=True)[:3].tolist():
        print(f"  weight {weights[j]:.3f}, drawn {freq[j]:.3f}: {texts[j]!r}")
    x = torch.arange(len(weights))
    plt.figure(figsize=(9, 2.6))
    plt.bar(x - 0.2, weights, width=0.4, label="softmax weight (positives 0)")
    plt.bar(x + 0.2, freq, width=0.4, label=f"your itm_batch, {draws} calls")
    plt.xlabel(f"caption j of the batch (image {i}'s own caption is {i})")
    plt.ylabel("probability of drawing j")
    plt.legend()
    plt.show()

# %% [markdown]
# The negatives your sampler gives ITM share most of the image's words: the same colour, or the
# same shape, or the same objects in another relation. Telling those apart is what the fusion
# encoder must learn, and what a uniformly drawn negative would rarely ask of it.
