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
# > **Exercises.** This notebook is generated from `solutions/05_vlmo.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/05_vlmo.ipynb`.

# %% [markdown]
# # 05 · VLMo — exercises
#
# Three pieces of chapter 05 (`notebooks/05_vlmo.ipynb`) to write yourself: the routing at the
# heart of VLMo's Mixture-of-Modality-Experts (MoME) Transformer, which sends every token through
# the feed-forward expert of its modality; the cost of retrieval in each of the ways one VLMo can
# retrieve, counted in Transformer passes; and the re-ranking that buys most of a fusion encoder's
# accuracy at little more than a dual encoder's cost. The cell after each task runs `check(...)` on
# fresh inputs and tells you what is wrong. At the end your routing runs inside every block of a
# VLMo, and your re-ranking on a VLMo and on the zoo's trained ALBEF (chapter 04), against the
# library's (`minivlm/nn/multiway.py`, `minivlm/models/vlmo.py`). Grade the whole notebook from a
# terminal with `minivlm check exercises/05_vlmo.ipynb`.

# %%
import matplotlib.pyplot as plt
import torch

from minivlm.grading import check

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — route each token to its expert
#
# A VLMo block keeps one self-attention, shared by image and text tokens, and gives each modality
# its own feed-forward network (FFN), an **expert**: V-FFN for image patches, L-FFN for words and,
# in the top blocks, VL-FFN for the fused sequence. Unlike a sparse mixture of experts, nothing is
# learned about the choice: every token carries a **modality index**, and its expert is the one
# with that index,
#
# $$y_{b,t} = \text{FFN}_{\,e}(x_{b,t}),\qquad e = \text{modality}[b, t].$$
#
# Routing by index, not by position, lets one sequence mix modalities in any order ([image ; text]
# here; image tokens between words in chapter 17's CogVLM). And a token costs one FFN, however many
# experts there are: the tokens of each expert are **gathered**, run through it together, and
# **scattered** back to their places.
#
# `x` is `(B, T, D)`, `modality` a `(B, T)` long tensor of expert indices, `experts` a list of
# modules, each mapping `(n, D)` tokens to `(n, D_out)` (here D_out may differ from D). Return the
# `(B, T, D_out)` outputs, token (b, t) through `experts[modality[b, t]]` alone. Run each expert
# only on its own tokens (the check counts the tokens each expert is given), and keep everything in
# autograd: the experts are trained through this layer.

# %%
def route_to_experts(x, modality, experts):
    raise NotImplementedError(
        "for each expert e, a (B, T) mask of its tokens (modality == e); x[mask] gathers them as (n_e, D), "
        "and out[mask] = ... puts the expert's outputs back in place")


# %%
check("05.route_to_experts", route_to_experts)

# %% [markdown]
# ## Task 2 — what each way of retrieving costs
#
# To rank n_texts captions for each of n_images images:
#
# * a **dual encoder** (CLIP, chapter 02; VLMo in image mode and text mode) encodes every image
#   once and every text once, then scores every pair with one matrix product: n_images + n_texts
#   Transformer passes. Fast, but the two modalities meet only in a dot product;
# * a **fusion encoder** (ViLT, ALBEF's fusion layers; VLMo in fusion mode) runs the Transformer on
#   each (image, text) pair together, words and patches attending to each other in every layer
#   (the papers expect better matching from it; the chapter measures whether our VLMo gets it, and
#   at our scale it does not), at n_images · n_texts passes;
# * **re-ranking** (ALBEF's retrieval, chapter 04) takes each image's top k texts by the dual
#   score and scores only those with the fusion encoder: n_images + n_texts + n_images · k passes,
#   where an image cannot have more than n_texts candidates, so k is capped at n_texts.
#
# VLMo's argument is that one set of weights gives both encoders: the dual mode where speed
# matters, the fusion mode where the papers expect accuracy. Return the number of Transformer passes `mode`
# (`"dual"`, `"fusion"` or `"rerank"`) needs for `n_images` queries and `n_texts` candidates (`k`
# is used by `"rerank"` only); raise a `ValueError` for any other mode.

# %%
def retrieval_passes(n_images, n_texts, mode, k):
    raise NotImplementedError(
        "one pass per image and per text for the dual mode, one per pair for the fusion mode; the re-rank "
        "adds k fusion passes per image to the dual ones, k at most n_texts")


# %%
check("05.retrieval_passes", retrieval_passes)

# %% [markdown]
# **Counted, not just computed.** The library's VLMo counts every sequence its Transformer runs
# (`model.passes`), and `minivlm.models.vlmo.retrieve` retrieves in each of the three ways. A tiny
# VLMo, freshly built (untrained: only the counting matters here), on 8 ShapesBench images and
# their 8 captions, k = 3:

# %%
from minivlm import grading  # noqa: E402
from minivlm.data import ShapesBench  # noqa: E402
from minivlm.models.vlmo import VLMo, VLMoConfig, retrieve  # noqa: E402

torch.manual_seed(0)
tiny = VLMo(VLMoConfig(dim=32, depth=2, vl_depth=1, heads=2, embed_dim=32)).eval()  # 2 blocks, the top one with VL
bench = ShapesBench(seed=4321)
data = bench.retrieval(8)
images, captions = data["images"], data["captions"]
passes_ready = grading.run("05.retrieval_passes", retrieval_passes).passed
for mode in ("dual", "fusion", "rerank"):
    out = retrieve(tiny, images, captions, mode=mode, k=3)
    yours = retrieval_passes(8, 8, mode, 3) if passes_ready else "(finish Task 2)"
    print(f"{mode:7} passes counted by the model {out['passes']:3}, your formula {yours}")

# %% [markdown]
# The same counts as the sizes grow (k = 16), the lines from your formula, the dots counted by the
# model on 4 to 32 images and as many captions. Fusion scoring grows as N², the other two as N:
# at a thousand images and captions, re-ranking costs under 2 % of the passes of scoring every
# pair, the dual mode 0.2 %. Below N = k every caption is re-ranked, and the re-rank costs more
# than the fusion mode (its passes plus the dual ones): it pays only where k is well below N.

# %%
if passes_ready:
    K = 16
    sizes = torch.logspace(0.5, 4, 40).round().long().unique().tolist()
    measured = {mode: [] for mode in ("dual", "rerank", "fusion")}
    small = [4, 8, 16, 32]
    for n in small:
        subset = bench.retrieval(n)
        for mode in measured:
            measured[mode].append(retrieve(tiny, subset["images"], subset["captions"], mode=mode, k=K)["passes"])
    plt.figure(figsize=(6.5, 3.6))
    for mode, color in (("dual", "tab:blue"), ("rerank", "tab:green"), ("fusion", "tab:red")):
        plt.plot(sizes, [retrieval_passes(n, n, mode, K) for n in sizes], color=color, label=f"{mode} (your formula)")
        plt.plot(small, measured[mode], "o", color=color, markersize=4)
    plt.xscale("log")
    plt.yscale("log")
    plt.xlabel("N images = N captions")
    plt.ylabel("Transformer passes")
    plt.title(f"Retrieval cost, k = {K} (dots: counted by the model)")
    plt.legend()
    plt.tight_layout()
    plt.show()
    fusion = retrieval_passes(1000, 1000, "fusion", K)
    print(f"N = 1000: dual {retrieval_passes(1000, 1000, 'dual', K) / fusion:.1%}, "
          f"rerank {retrieval_passes(1000, 1000, 'rerank', K) / fusion:.1%} of the fusion mode's passes")

# %% [markdown]
# ## Task 3 — re-rank the dual top k by fusion
#
# Re-ranking keeps the dual ranking but asks the fusion encoder about each image's top k: those k
# texts are put in the order of their fusion scores, **above** every other text, and the others
# follow in their dual order. The fusion encoder sees N·k pairs instead of N·M.
#
# One catch: the two scores are not on one scale. A dual score is a cosine similarity, in
# [−1, 1]; a fusion score is ITM's log-odds (match − no match), anywhere on the real line, so a
# re-ranked text written back as its bare fusion score may land below texts that were never
# re-ranked. Shift the k re-ranked scores above every dual score.
#
# `dual_scores` is `(N, M)`, row i the cosine similarities of image i to the M texts.
# `fusion_score_fn(pairs)` takes a `(P, 2)` long tensor of (image index, text index) rows and
# returns their `(P,)` fusion scores, one Transformer pass each: ask it about each row's top k
# pairs only, each once (the check counts them). Return `(N, M)` scores whose descending order in
# each row is the re-ranked order; if k is more than M, every text is re-ranked. Leave
# `dual_scores` as it is.

# %%
def rerank(dual_scores, fusion_score_fn, k):
    raise NotImplementedError(
        "topk along the texts (dim=1), k capped at M; one (image, text) row per pair for fusion_score_fn; "
        "scatter the fusion scores, shifted above the largest dual score, into a copy")


# %%
check("05.rerank", rerank)

# %% [markdown]
# ## Put together: your pieces inside VLMo
#
# First your routing in every block of the tiny VLMo: `unittest.mock.patch` makes the library's
# `Multiway` layer call your `route_to_experts` (only inside the `with` block), and the three ways
# of retrieving run again. VLMo routes a whole batch alike, so it gives one `(T,)` route per block;
# it is expanded to `(B, T)` for your function.

# %%
yours = {"05.route_to_experts": route_to_experts, "05.retrieval_passes": retrieval_passes, "05.rerank": rerank}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("all three tasks pass: running your functions inside VLMo" if ready
      else "finish the three tasks above first: the next cells use all of them")

# %%
if ready:
    from unittest import mock

    from minivlm.nn.multiway import Multiway

    def your_multiway(self, x, modality):
        return route_to_experts(x, modality.expand(x.shape[0], -1) if modality.ndim == 1 else modality, self.experts)

    for mode in ("dual", "fusion", "rerank"):
        library_scores = retrieve(tiny, images, captions, mode=mode, k=3)["scores"]
        with mock.patch.object(Multiway, "forward", your_multiway):
            your_scores = retrieve(tiny, images, captions, mode=mode, k=3)["scores"]
        print(f"{mode:7} max |your routing − library's| over the 8 × 8 scores: "
              f"{(your_scores - library_scores).abs().max():.1e}")

# %% [markdown]
# Then your re-ranking on the tiny VLMo's own scores: its dual mode's similarities, and its fusion
# mode for the pairs you ask about. It must rank every caption of every image as the library's
# `retrieve(mode="rerank")` does, with the passes your formula counts.

# %%
if ready:
    from minivlm.eval import itc_similarity
    from minivlm.models.vlmo import fusion_scores

    before = sum(tiny.passes.values())
    dual = itc_similarity(tiny, images, captions)  # (8, 8), 8 + 8 passes
    your_ranked = rerank(dual, lambda pairs: fusion_scores(tiny, images, captions, pairs), 3)
    counted = sum(tiny.passes.values()) - before
    library_ranked = retrieve(tiny, images, captions, mode="rerank", k=3)["scores"]
    same = torch.equal(your_ranked.argsort(1, descending=True), library_ranked.argsort(1, descending=True))
    print(f"same ranking of all 8 captions for each of the 8 images as the library's: {same}")
    print(f"passes counted {counted}, your formula {retrieval_passes(8, 8, 'rerank', 3)}")

# %% [markdown]
# Finally re-ranking on a model that has learned something. The tiny VLMo above is untrained, so
# its rankings mean nothing; the zoo's ALBEF (chapter 04, `zoo.load("albef")`) has both halves
# trained: ITC, a dual encoder, and ITM on its fusion layers. Among 256 fresh ShapesBench scenes and
# their 256 captions, each image's top 4 captions by ITC are re-ranked by ITM with your function,
# and checked against the library's ITC-then-ITM `retrieve` (`minivlm/eval/retrieval.py`).

# %%
if ready:
    import time

    from minivlm import zoo
    from minivlm.eval import itc_similarity
    from minivlm.eval import retrieve as itc_itm_retrieve

    model = zoo.load("albef").eval()
    data = bench.retrieval(256)
    images_256, captions_256 = data["images"], data["captions"]
    K, target = 4, torch.arange(256)
    t0 = time.perf_counter()
    with torch.no_grad():
        itc = itc_similarity(model, images_256, captions_256)  # (256, 256) cosine similarities
        text_tokens, _, text_mask = model.encode_text(captions_256)  # each caption encoded once
        image_tokens, _ = model.encode_image(images_256)

        def albef_fusion(pairs):
            """ITM log-odds of (image, caption) pairs: one pass of ALBEF's fusion layers each."""
            i, j = pairs[:, 0], pairs[:, 1]
            logits = model.itm_logits(model.fuse(text_tokens[j], text_mask[j], image_tokens[i]))
            return logits[:, 1] - logits[:, 0]

        ranked = rerank(itc, albef_fusion, K)
    seconds = time.perf_counter() - t0
    library = itc_itm_retrieve(model, images_256, captions_256, rerank_k=K)["scores"]
    same = torch.equal(ranked.argsort(1, descending=True), library.argsort(1, descending=True))
    print(f"same ranking as the library's retrieve: {same} ({seconds:.1f} s, {256 * K:,} fusion passes instead of "
          f"{256 * 256:,})")
    dual_hit, rerank_hit = itc.argmax(1) == target, ranked.argmax(1) == target
    print(f"R@1 by ITC alone {dual_hit.float().mean():.3f}, after re-ranking the top {K} by ITM "
          f"{rerank_hit.float().mean():.3f}")
    print(f"re-ranking fixed {int((~dual_hit & rerank_hit).sum())} images and broke "
          f"{int((dual_hit & ~rerank_hit).sum())}")

# %% [markdown]
# Re-ranking changes the top-1 answer of a few dozen images, in both directions: ITM, which reads
# the words and the patches together, fixes some of ITC's mistakes and makes a few of its own, a
# small net gain that one set of 256 cannot tell from noise (chapter 04 measured it the same way).
# Its cost is not in doubt: 1,024 fusion passes instead of 65,536. The chapter measures the same
# trade on VLMo itself, one set of weights for both halves, with its R@1 intervals.
