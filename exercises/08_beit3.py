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
# > **Exercises.** This notebook is generated from `solutions/08_beit3.py` by `minivlm exercises build`:
# > edit the solution, not this file.
# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a
# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run
# > `minivlm check exercises/08_beit3.ipynb`.

# %% [markdown]
# # 08 · BEiT-3 — exercises
#
# Three pieces of chapter 08 (`notebooks/08_beit3.ipynb`) to write yourself: the nearest-code
# lookup that turns BEiT-2's patch features into discrete *visual tokens*, the block-wise masking
# that decides which patches BEiT-3 must predict, and the choice of feed-forward expert for every
# token in every block of its Multiway Transformer. The cell after each task runs `check(...)` on
# fresh inputs and tells you what is wrong. At the end your pieces run next to the library's
# (`minivlm/nn/quantize.py`, `minivlm/data/masking.py`, `minivlm/models/beit3.py`) on a small
# visual tokenizer and a small BEiT-3. Grade the whole notebook from a terminal with
# `minivlm check exercises/08_beit3.ipynb`.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minivlm.grading import check
from minivlm.models.vlmo import LANGUAGE, VISION, VL

_ = torch.manual_seed(0)

# %% [markdown]
# ## Task 1 — BEiT-2's visual tokens: the nearest normalised code
#
# BEiT-3 treats an image as a foreign language: it masks patches and predicts them the way BERT
# predicts masked words, with a cross-entropy over a vocabulary. Patches have no vocabulary, so a
# **visual tokenizer** makes one. BEiT-2's VQ-KD encodes each patch to a vector z and replaces it
# by the nearest of K learned **codes**; the code's index is the patch's *visual token*. A
# decoder must rebuild a teacher's (CLIP's) feature of the patch from the codes alone, so a token
# says what CLIP sees in the patch (a red circle's edge), not which pixels are there.
#
# **Why normalised codes.** With the plain Euclidean distance ‖z − e‖², a vector's length counts
# as much as its direction: the few codes that happen to lie close to the data win nearly every
# patch and the others are never chosen again (*dead codes*; a vocabulary of 8,192 with a few
# hundred in use). BEiT-2 L2-normalises both z and the codes before the search. On the unit
# sphere ‖ẑ − ê‖² = 2 − 2 cos(z, e): the nearest code is the one with the largest cosine, only
# directions count, and no code can sit far from the data.
#
# **Why straight-through.** The index is an argmin: it has no gradient, and the encoder would
# learn nothing from the decoder. The trick of VQ-VAE: return `z + (q − z).detach()`. Its value is
# the code q; its gradient with respect to z is the identity, so whatever gradient the decoder
# sends to q is copied to z unchanged (the codes themselves learn from their own loss, or by a
# moving average, not through this path).
#
# `z` is `(B, N, D)` (a vector per patch), `codebook` `(K, D)` (not normalised). Return
# `(quantized, indices)`: `indices` `(B, N)` long, the nearest code of each normalised z on the
# unit sphere; `quantized` `(B, N, D)` with the value of that **normalised** code and a gradient
# with respect to z that is the identity.

# %%
def quantize(z, codebook):
    raise NotImplementedError(
        "F.normalize both (dim=-1); the nearest unit code is the one with the largest cosine, (ẑ @ "
        "codesᵀ).argmax(-1); q = codes[indices]; return z + (q − z).detach() and the indices")


# %%
check("08.quantize", quantize)

# %% [markdown]
# ## Task 2 — block-wise masking
#
# BEiT-3 masks 40 % of an image's patches and predicts their visual tokens. Which 40 % matters.
# Images are smooth: a patch looks much like its neighbours, so a patch masked on its own can be
# filled in by copying from the visible patches around it, and the model learns interpolation,
# not what objects are. BEiT masks **blocks** instead, so that most masked patches have no
# visible neighbour and must be inferred from what the rest of the image means.
#
# The algorithm (BEiT's, as `minivlm.data.masking.block_mask`), for one image of `grid × grid`
# patches:
#
# 1. the target is `ceil(ratio · grid²)` masked patches;
# 2. while fewer than the target are masked: with `needed` = target − masked so far, draw a
#    block **area** uniformly in `[min(min_patches, needed), needed]` and an **aspect ratio**
#    log-uniformly in `[min_aspect, 1 / min_aspect]` (so that h/w = 3 is as likely as w/h = 3);
#    its height is `round(√(area · aspect))`, its width `round(√(area / aspect))`, each clipped
#    to `[1, grid]`; place it at a random top-left corner where it fits, and mask it (blocks may
#    overlap);
# 3. return the mask flattened **row-major**, `(grid²,)` bool, True = masked: the patch order of
#    `patchify`, where patch (row r, column c) is number r · grid + c.
#
# Draw every random number from `generator` (`torch.rand((), generator=generator)`,
# `torch.randint(n, (), generator=generator)`), so that a seed gives its mask back.

# %%
def block_mask(grid, ratio, generator, min_patches=2, min_aspect=0.3):
    raise NotImplementedError(
        "a (grid, grid) bool mask; loop while mask.sum() < target; a uniform draw in [lo, hi] is lo + (hi − "
        "lo) · torch.rand((), generator=generator); the aspect is exp of a uniform draw in "
        "[log(min_aspect), −log(min_aspect)]; mask[top:top + h, left:left + w] = True; return "
        "mask.flatten()")


# %%
check("08.block_mask", block_mask)

# %% [markdown]
# ## Task 3 — which expert for which token
#
# BEiT-3's network is VLMo's Multiway Transformer (chapter 05): every block has one
# self-attention, shared by all tokens, and three feed-forward **experts**, V (vision, index
# `VISION` = 0), L (language, `LANGUAGE` = 1) and VL (vision-language, `VL` = 2; only the top
# blocks have one). Nothing is learned about which expert a token uses: it is decided by the
# token's modality and the block's depth,
#
# | mode | bottom depth − vl_depth blocks | top vl_depth blocks |
# |---|---|---|
# | `"image"` (image tokens only) | V | V |
# | `"text"` (text tokens only) | L | L |
# | `"fusion"` ([image ; text]) | V for image tokens, L for text tokens | VL for every token |
#
# Why by modality: patches and words need different feed-forward transformations, while the
# shared attention lets them read each other. Why by depth: in the bottom blocks each modality
# is encoded by its own expert, so the same network in image mode and in text mode is a dual
# encoder for fast retrieval, and in fusion mode its bottom blocks compute the same kind of
# features; the top blocks, where the modalities meet, get an expert of their own that is
# trained on fused tokens only.
#
# Return a list of `depth` long tensors, one per block (block 0 is the bottom), each `(T,)` with
# T = n_image + n_text: the expert index of every token, **image tokens first**.

# %%
def routes(mode, n_image, n_text, depth, vl_depth):
    raise NotImplementedError(
        "one (T,) tensor for the bottom blocks, torch.full((n_image,), VISION) then torch.full((n_text,), "
        "LANGUAGE); in fusion mode the blocks i >= depth − vl_depth are VL for every token")


# %%
check("08.routes", routes)

# %% [markdown]
# ## Put together: your pieces beside BEiT-3's
#
# The next cells route the tokens of a small BEiT-3 with your function, tokenize images with
# your lookup inside a (small, untrained) visual tokenizer, and draw your block masks next to the
# library's.

# %%
from minivlm import grading  # noqa: E402
from minivlm.data import ShapesBench  # noqa: E402
from minivlm.data.masking import block_mask as library_block_mask  # noqa: E402
from minivlm.models.beit3 import BEiT3, BEiT3Config, VisualTokenizer, VisualTokenizerConfig  # noqa: E402

yours = {"08.quantize": quantize, "08.block_mask": block_mask, "08.routes": routes}
ready = all(grading.run(task, fn).passed for task, fn in yours.items())
print("all three tasks pass: your pieces next to the library's" if ready
      else "finish the three tasks above first: the next cells use all of them")

# %% [markdown]
# **Your routes are the model's.** A BEiT-3 with two blocks, the top one with a VL expert; its
# image takes 1 + 16 tokens (a CLS and 4 × 4 patches). Below, the fusion mode block by block,
# V / L / VL per token (a caption of 5 tokens).

# %%
if ready:
    model = BEiT3(BEiT3Config(dim=32, depth=2, vl_depth=1, heads=2, embed_dim=32))
    c, n_image = model.config, model.n_image_tokens
    for mode, ni, nt in (("image", n_image, 0), ("text", 0, 12), ("fusion", n_image, 5)):
        same = all(torch.equal(a, b.cpu()) for a, b in zip(routes(mode, ni, nt, c.depth, c.vl_depth),
                                                             model.routes(mode, ni, nt)))
        print(f"{mode:6s} mode: your routes equal the model's: {same}")
    letters = {VISION: "V", LANGUAGE: "L", VL: "VL"}
    for i, r in reversed(list(enumerate(routes("fusion", n_image, 5, c.depth, c.vl_depth)))):
        print(f"block {i}:", " ".join(letters[int(e)] for e in r))

# %% [markdown]
# **Your lookup tokenizes images.** The tokenizer's encoder gives a vector per patch; your
# `quantize` on its codebook must choose the visual tokens that `tokenizer.tokenize` chooses (in
# eval mode, so that looking does not move the codes).

# %%
if ready:
    tokenizer = VisualTokenizer(VisualTokenizerConfig(dim=32, depth=1, heads=2, code_dim=16, codebook_size=16,
                                                      teacher_dim=32)).eval()
    images = ShapesBench().captioning(8)["images"]
    with torch.no_grad():
        z = tokenizer.encode(images)  # (8, 16, 16): a 16-wide vector for each of the 4 × 4 patches
        library = tokenizer.quantizer(z)
    quantized, indices = quantize(z, tokenizer.quantizer.codebook)
    print("visual tokens of image 0:\n", indices[0].view(4, 4))
    print("same tokens as tokenizer.tokenize:", torch.equal(indices, tokenizer.tokenize(images)))
    print("same quantized vectors as the library's quantizer:", torch.allclose(quantized, library.quantized))

# %% [markdown]
# **Why normalise, in numbers.** A thousand small vectors (as an encoder gives early in training)
# and 16 random codes of lengths from 0.5 to 2: how many vectors choose each code, by the plain
# Euclidean distance and by your search on the unit sphere.

# %%
if ready:
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(1, 1000, 16, generator=g) * 0.5
    codebook = torch.randn(16, 16, generator=g) * torch.linspace(0.5, 2, 16)[:, None]
    euclidean = torch.cdist(vectors[0], codebook).argmin(-1)
    _, normalised = quantize(vectors, codebook)
    for name, chosen in (("Euclidean", euclidean), ("normalised", normalised[0])):
        counts = torch.bincount(chosen, minlength=16)
        print(f"{name:10s}: {int((counts > 0).sum()):2d} of 16 codes used; counts {counts.tolist()}")

# %% [markdown]
# With plain distances the shortest codes take almost everything and most codes are dead; on
# the unit sphere every code gets its share.
#
# **Your block masks.** Four of yours (top) and four of the library's (bottom) on BEiT's 14 × 14
# grid (a 224-pixel image in 16-pixel patches) at a 40 % ratio, from the same four seeds (if you
# draw the random numbers in the library's order, the pairs are identical; another order gives
# other masks, just as good). Then, over 300 masks of each kind and as many patches scattered at
# random, the share of masked patches and the share of masked patches that touch a visible one
# (the patches that could be copied from a neighbour).

# %%
def touching_visible(masks, grid):
    """Of the masked patches of masks (M, grid²), the share with a visible 4-neighbour."""
    m = masks.view(-1, 1, grid, grid).float()
    visible = 1 - F.pad(m, (1, 1, 1, 1), value=1.0)  # outside the image counts as masked, not visible
    near = visible[..., :-2, 1:-1] + visible[..., 2:, 1:-1] + visible[..., 1:-1, :-2] + visible[..., 1:-1, 2:]
    return float(((near > 0) & (m > 0)).sum() / m.sum())


if ready:
    grid, ratio = 14, 0.4
    fig, axes = plt.subplots(2, 4, figsize=(8, 4.4))
    for k in range(4):
        for row, mask in enumerate((block_mask(grid, ratio, torch.Generator().manual_seed(k)),
                                    library_block_mask(1, grid, ratio, generator=torch.Generator().manual_seed(k))[0])):
            axes[row, k].imshow(mask.view(grid, grid), cmap="Blues", vmin=0, vmax=1.5)
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
    axes[0, 0].set_ylabel("yours")
    axes[1, 0].set_ylabel("library")
    fig.suptitle(f"block masks, {grid} × {grid} patches, ratio {ratio} (blue = masked)")
    plt.show()

    g = torch.Generator().manual_seed(1)
    masks = {"yours": torch.stack([block_mask(grid, ratio, g) for _ in range(300)]),
             "library": library_block_mask(300, grid, ratio, generator=g)}
    masks["scattered"] = masks["library"].gather(1, torch.rand(300, grid * grid, generator=g).argsort(1))
    for name, m in masks.items():
        print(f"{name:9s}: {m.float().mean():.1%} of the patches masked; "
              f"{touching_visible(m, grid):.0%} of the masked ones touch a visible patch")

# %% [markdown]
# Scattered at random, nearly every masked patch has a visible neighbour to copy from; in
# blocks, only those on a block's edge do, and the inside of a block must be inferred from the
# rest of the image.
