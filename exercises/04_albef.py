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
# Four pieces of chapter 04 (`notebooks/04_albef.ipynb`) to write yourself: the momentum (EMA)
# update of ALBEF's second, slowly moving copy of the model; the targets of momentum distillation
# (MoD), which mix the data's labels with that copy's predictions; the distillation loss, a
# cross-entropy against those soft targets; and the hard negatives for image-text matching (ITM),
# drawn by ITC similarity. The cell after each task runs `check(...)` on fresh inputs and tells you
# what is wrong. At the end your four pieces replace the library's inside ALBEF's pretraining step
# (`minivlm/models/albef.py`). Grade the whole notebook from a terminal with
# `minivlm check exercises/04_albef.ipynb`.

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — the momentum update
#
# ALBEF trains with a second copy of its model, the **momentum model**, that no optimizer touches.
# After every training step its weights move a little towards those of the trained (online) model:
# an exponential moving average (EMA) of the online weights, parameter by parameter,
#
# $$\theta_m \leftarrow m\,\theta_m + (1 - m)\,\theta \qquad (m = 0.995 \text{ in ALBEF}).$$
#
# With $m$ close to 1 it changes slowly, so its features, kept in queues as extra negatives for the
# contrastive loss (ITC), stay comparable over many steps, and its predictions, an average of the
# model over its recent past, are a steadier teacher than the model itself (Tasks 2 and 3).
#
# `target` and `online` are two `nn.Module`s with the same parameters in the same order (`target`
# is `momentum_copy(online)`: a deep copy whose parameters have `requires_grad=False`), `momentum`
# a float in [0, 1]. Change **every parameter of `target` in place** and return nothing; leave
# `online` as it is. The momentum model is never trained by backpropagation: autograd must not
# record the update.

# %%
def momentum_update(target, online, momentum):
    raise NotImplementedError(
        "pair up the two modules' parameters (same order); change each of target's in place (mul_, add_, "
        "copy_) where autograd does not record it")


# %%
check("04.momentum_update", momentum_update)

# %% [markdown]
# ## Task 2 — the targets of momentum distillation
#
# ITC asks each image to pick its own caption among C candidates (the batch's captions and the
# queue's). Its usual target is one-hot: the image's own caption, and no other. On captions from
# the web that is too strict: another caption in the batch may describe the image just as well, and
# the image's own caption may be wrong. ALBEF softens the target with the momentum model's own
# opinion, its similarities of the same image to the same candidates (the *teacher's* logits):
#
# $$\text{targets} = (1 - \alpha)\,\text{hard} + \alpha\,\operatorname{softmax}(\text{teacher logits}),\qquad \alpha = 0.4.$$
#
# `hard` is `(N, C)`, each row a distribution over the C candidates (one-hot, or spread evenly over
# several true captions), `teacher_logits` `(N, C)` and `alpha` a float in [0, 1]. Return the
# `(N, C)` targets; each row sums to 1. The targets are constants for the loss: no gradient may
# flow through them into the teacher.

# %%
def mix_targets(hard, teacher_logits, alpha):
    raise NotImplementedError(
        "the teacher's probabilities for each row (over its C candidates), weighted by alpha, plus what is "
        "left for hard; cut the teacher off from autograd")


# %%
check("04.mix_targets", mix_targets)

# %% [markdown]
# ## Task 3 — the distillation loss
#
# With soft targets the loss is the cross-entropy between the targets and the model's predicted
# distribution, row by row, averaged over the rows:
#
# $$\mathcal{L} = -\frac{1}{N}\sum_{i=1}^{N}\sum_{j=1}^{C}\text{targets}_{ij}\,\log\operatorname{softmax}(\text{logits}_i)_j .$$
#
# For one-hot targets it is the ordinary cross-entropy (`F.cross_entropy`). ALBEF uses it twice:
# for ITC (image→text and text→image, targets from Task 2) and for masked-language modelling, where
# the momentum model's predicted words are mixed into the targets the same way.
#
# `logits` and `targets` are `(N, C)`. Return the loss as a scalar tensor attached to the logits.

# %%
def soft_cross_entropy(logits, targets):
    raise NotImplementedError(
        "the log-probabilities of each row, weighted by the targets and summed over the columns; then one "
        "number for the batch")


# %%
check("04.soft_cross_entropy", soft_cross_entropy)

# %% [markdown]
# ## Task 4 — hard negatives for image-text matching
#
# ITM is a binary classifier on the fusion encoder's output: does this caption match this image?
# Its negatives decide what it learns. A random caption from the batch is usually easy to reject
# ("two green stars" for a picture of a red circle); ALBEF draws the negatives that the contrastive
# model finds **hard**: for image i, caption j is drawn with probability
# $\operatorname{softmax}(\text{similarity}_i)_j$, its ITC similarity's softmax over the batch's
# captions, so captions that look like the image's own are drawn most often, yet every non-matching
# caption has a chance. A positive must never be drawn: `exclude[i, j]` is True where caption j is
# true of image i (its own caption, on the diagonal, and any other caption that describes it just
# as well). The same function draws a negative image for each caption, on the transposed matrices.
#
# `similarity` is `(N, M)` and `exclude` `(N, M)` bool; every row has at least one column not
# excluded. Return `(N,)` long indices, one column drawn per row. Draw with torch's global random
# generator (e.g. `torch.multinomial`): the check calls your function on thousands of rows and
# measures how often each column comes.

# %%
def sample_negatives(similarity, exclude):
    raise NotImplementedError(
        "each row's softmax over its columns, the excluded columns given weight 0, then one random draw per "
        "row (torch.multinomial renormalises each row)")


# %%
check("04.sample_negatives", sample_negatives)

# %% [markdown]
# ## Put together: your pieces inside ALBEF's pretraining
#
# The library's `pretrain_step` (`minivlm/models/albef.py`) calls the library's versions of your
# four functions: `momentum_update` at every training step, before the momentum model encodes the
# batch; `mix_targets` and `soft_cross_entropy` for ITC and MLM with distillation;
# `sample_negatives` for ITM's hard negatives. Below, a tiny ALBEF is pretrained twice from the
# same initial weights on the same batches: once with the library's pieces, once with yours
# swapped in (`unittest.mock.patch` replaces the names that `minivlm.models.albef` and the ITC and
# ITM losses it calls in `minivlm.losses` look up, only inside the `with` block).

# %%
from minivlm import grading  # noqa: E402

yours = {"04.momentum_update": momentum_update, "04.mix_targets": mix_targets,
         "04.soft_cross_entropy": soft_cross_entropy, "04.sample_negatives": sample_negatives}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("all four tasks pass: running your functions inside ALBEF's pretraining" if ready
      else "finish the four tasks above first: the next cells use all of them")

# %%
if ready:
    from contextlib import ExitStack
    from unittest import mock

    from minivlm import losses
    from minivlm.data.pairs import pretrain_batches
    from minivlm.models import albef
    from minivlm.train import fit

    def your_pieces():
        """Inside this context, ALBEF's pretraining step calls your four functions: its momentum
        update and MLM distillation in minivlm.models.albef, its ITC (momentum_itc) and ITM
        negatives (itm_negatives) in minivlm.losses."""
        stack = ExitStack()
        stack.enter_context(mock.patch.multiple(albef, momentum_update=momentum_update,
                                                soft_cross_entropy=soft_cross_entropy))
        stack.enter_context(mock.patch.multiple(losses, mix_targets=mix_targets, soft_cross_entropy=soft_cross_entropy,
                                                sample_negatives=sample_negatives))
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
# Both runs seed torch alike, so they draw the same random numbers. If your sampler turns them into
# negatives as `torch.multinomial` does on the same weights, the two runs are identical; if it draws
# another way, they part after the first step, by the luck of the draws, and should end about
# equally low. Sixty steps teach this tiny model little: ITC rises at first while the queues fill
# (their random starting features are easy negatives, the momentum features that replace them are
# not), and ITM settles near 0.64, the entropy of "one pair in three matches", the answer of a model
# that has learned only how often a pair matches. The chapter trains longer; here what matters is
# that the two runs agree.

# %%
if ready:
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    for ax, key in zip(axes, ("itc", "itm", "mlm")):
        ax.plot(h_library.losses[key], label="library's pieces")
        ax.plot(h_yours.losses[key], "--", label="your pieces")
        ax.set_title(key.upper())
        ax.set_xlabel("step")
    axes[0].legend()
    plt.tight_layout()
    plt.show()

# %% [markdown]
# The momentum model after training with your update: still frozen for autograd, trailing the
# online model, and one more update with your function gives what the library's gives.

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

# %% [markdown]
# On a batch neither run trained on, in evaluation mode (no update, no queue change): the ITC and
# MLM losses, with distillation at α = 0.4, come out the same with your pieces as with the
# library's; ITM differs only if your sampler draws other negatives.

# %%
if ready:
    batch = batches(STEPS)  # the step after the last one trained
    your_run.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        library_losses = albef.pretrain_step(your_run, batch)
        with your_pieces():
            torch.manual_seed(1)
            your_losses = albef.pretrain_step(your_run, batch)
    print(f"α = {library_losses['alpha']:.2f}")
    for key in ("itc", "itm", "mlm"):
        print(f"{key}: library {float(library_losses[key]):.5f}, yours {float(your_losses[key]):.5f}")

# %% [markdown]
# Finally your sampler on similarities worth sampling from. Sixty steps teach the tiny ALBEF above
# little, so its ITC similarities are nearly flat; the course's trained CLIP (chapter 02,
# `zoo.load("clip")`) is a contrastive model of the same kind as ALBEF's ITC, trained for long. For
# one image of a batch of 32: the weight of each caption (its softmax, the positives set to 0), how
# often your function drew it in 4,000 draws, and the captions it draws most.

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
    i, draws = 0, 4000
    weights = similarity[i].softmax(0).masked_fill(exclude[i], 0.0)
    weights = weights / weights.sum()
    drawn = sample_negatives(similarity[i].expand(draws, -1), exclude[i].expand(draws, -1))  # one row, 4,000 times
    freq = torch.bincount(drawn, minlength=len(weights)).float() / draws
    print(f"image {i}, its caption: {texts[i]!r}")
    for j in weights.argsort(descending=True)[:3].tolist():
        print(f"  weight {weights[j]:.3f}, drawn {freq[j]:.3f}: {texts[j]!r}")
    x = torch.arange(len(weights))
    plt.figure(figsize=(9, 2.6))
    plt.bar(x - 0.2, weights, width=0.4, label="softmax weight (positives 0)")
    plt.bar(x + 0.2, freq, width=0.4, label=f"your sampler, {draws} draws")
    plt.xlabel(f"caption j of the batch (image {i}'s own caption is {i})")
    plt.legend()
    plt.show()

# %% [markdown]
# The negatives your sampler gives ITM share most of the image's words: the same colour, or the
# same shape, or the same objects in another relation. Telling those apart is what the fusion
# encoder must learn, and what a uniformly drawn negative would rarely ask of it.
