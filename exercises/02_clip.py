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
# > **Exercises.** This notebook is generated from `solutions/02_clip.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/02_clip.ipynb`.

# %% [markdown]
# # 02 · CLIP — exercises
#
# Four pieces of chapter 02 (`notebooks/02_clip.ipynb`) to write yourself: CLIP's symmetric
# loss, its scaled cosine scores, a zero-shot classifier built from class names and prompt
# templates, and recall@k for retrieval. The cell after each task runs `check(...)` on fresh
# inputs and tells you what is wrong. At the end your pieces classify and retrieve with the
# course's pretrained CLIP. Grade the whole notebook from a terminal with
# `minivlm check exercises/02_clip.ipynb`.

# %%
import torch
import torch.nn.functional as F

from minivlm import viz, zoo
from minivlm.data import ShapesBench
from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — the symmetric loss from logits
#
# `logits` is the `(N, N)` matrix of scaled similarities of a batch: row `i` is image `i`
# scoring the `N` texts, column `j` is text `j` scoring the `N` images, and pair `i` is
# `(image i, text i)` — the diagonal. Return CLIP's loss: the cross-entropy of each image
# choosing its text (over the rows) and of each text choosing its image (over the columns),
# **averaged**. Use `F.cross_entropy` (it takes the mean over the batch).

# %%
def clip_loss(logits):
    raise NotImplementedError(
        "the right caption of image i is caption i; score the rows (image→text) and the columns "
        "(text→image) and average")


# %%
check("02.clip_loss", clip_loss)

# %% [markdown]
# ## Task 2 — normalise and score
#
# `image_features` `(N, D)` and `text_features` `(M, D)` come straight out of the two
# projections. Return the `(N, M)` logits: the cosine similarity of every image with every
# text, times the temperature's inverse. As in the paper, `logit_scale` is stored as a **log**
# (a scalar tensor): the factor is `exp(logit_scale)`.

# %%
def scores(image_features, text_features, logit_scale):
    raise NotImplementedError("cosine similarity needs unit vectors; the scale is stored as a log")


# %%
check("02.scores", scores)

# %% [markdown]
# ## Task 3 — a zero-shot classifier from class names and templates
#
# `encode_text(list_of_strings)` returns `(K, E)` unit vectors. For each class name, write it
# into every template (`"a picture of a {}.".format("red circle")`), embed the prompts,
# average them, and renormalise: the mean of unit vectors is shorter than 1. Return the `(C, E)`
# matrix whose row `c` is class `c`'s prototype (prompt ensembling, CLIP §3.1.4).

# %%
def zero_shot_classifier(encode_text, class_names, templates):
    raise NotImplementedError(
        "one prototype per class: embed every template filled with the class name, average, and keep it a "
        "unit vector")


# %%
check("02.zero_shot_classifier", zero_shot_classifier)

# %% [markdown]
# ## Task 4 — recall@k
#
# `similarity` is `(Nq, Nc)`: row `q` scores every candidate for query `q`, and the correct
# candidate of query `q` is candidate `q`. Return the fraction of queries whose correct
# candidate is among the top `k`, as a float. **Ties count against the model**: the match is
# found when fewer than `k` *other* candidates score at least as high as it.

# %%
def recall_at_k(similarity, k):
    raise NotImplementedError(
        "query q's correct candidate is q; count how many candidates score at least as high (ties count "
        "against you)")


# %%
check("02.recall_at_k", recall_at_k)

# %% [markdown]
# ## Put together: your pieces on the course's CLIP
#
# `zoo.load("clip")` is the chapter's CLIP, trained longer. With your classifier and your
# scores it classifies the ShapesBench test images among all 48 colour–shape classes; with your
# recall@k it retrieves captions.

# %%
from minivlm import grading  # noqa: E402

yours = {"02.clip_loss": clip_loss, "02.scores": scores, "02.zero_shot_classifier": zero_shot_classifier,
         "02.recall_at_k": recall_at_k}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("all four tasks pass: running your functions on the zoo CLIP" if ready
      else "finish the four tasks above first: the next two cells use all of them")

# %%
if ready:
    from minivlm.eval import CLIP_TEMPLATES, class_prompts

    clip = zoo.load("clip")
    bench = ShapesBench(seed=1234)
    data = bench.classification("seen", n_per_class=4)
    with torch.no_grad():
        encode = lambda texts: clip.encode_text(list(texts))
        prompts = class_prompts(data["class_names"])  # "an orange star": names as captions write them
        prototypes = zero_shot_classifier(encode, prompts, list(CLIP_TEMPLATES))  # (48, E)
        logits = scores(clip.encode_image(data["images"]), prototypes, clip.logit_scale)  # (N, 48)
    accuracy = (logits.argmax(1) == data["labels"]).float().mean().item()
    print(f"zero-shot accuracy with your classifier: {accuracy:.1%} on {len(data['labels'])} images, 48 classes")
    viz.show_images(data["images"][:8], titles=[data["class_names"][i] for i in logits[:8].argmax(1)], ncols=8);

# %%
if ready:
    ret = bench.retrieval(128)
    with torch.no_grad():
        sim = scores(clip.encode_image(ret["images"]), clip.encode_text(ret["captions"]), clip.logit_scale)
    print({f"image→text R@{k}": round(recall_at_k(sim, k), 3) for k in (1, 5)})
    print("first batch loss with your clip_loss:", round(clip_loss(sim[:32, :32]).item(), 3))
