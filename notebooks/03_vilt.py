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
# # 03 · ViLT and the single-stream family
#
# Kim, Son and Kim, *ViLT: Vision-and-Language Transformer Without Convolution or Region
# Supervision* (2021); before it, VisualBERT (Li et al., 2019), ViLBERT (Lu et al., 2019) and
# VL-BERT (Su et al., 2020).
#
# CLIP (chapter 02) keeps image and text apart until one dot product at the very end: it can
# match a caption to an image, but it cannot answer "is the red circle left of the star?",
# which needs words and pixels to look at each other. **Fusion encoders** put both into one
# Transformer. Their first generation fed it *region features* from an object detector; ViLT
# showed that the detector can go: cut the image into patches, embed each with one linear map
# (as ViT does), and put them in the same stream as the words.
#
# This chapter builds ViLT from the library's blocks, pretrains it with the two objectives of
# the paper — masked language modelling (MLM) and image-text matching (ITM) — fine-tunes it
# for visual question answering (VQA), and measures: VQA accuracy per question kind next to a
# question-only model that never sees the image, ITM accuracy, whether pretraining helps at
# equal fine-tune steps (beyond the seed spread), and the region pipeline ViLT removed, with its
# token counts and stage times.
#
# | piece | library |
# |---|---|
# | the model: embeddings, single-stream encoder, pooler, ITM / VQA heads | `minivlm/models/vilt.py`; the tied MLM head `minivlm/nn/heads.py` (`MLMHead`) |
# | VQA batches, the oracle boxes of the regions pipeline | `minivlm/data/pairs.py` (`vqa_batches`, `oracle_regions`) |
# | MLM masking (15 %, 80/10/10) | `minivlm/data/masking.py` |
# | MLM and ITM losses | `minivlm/losses.py` |
# | VQA and ITM evaluation sets, intervals, the per-kind majority | `minivlm/data/bench.py`, `minivlm/eval/answers.py` |
# | the question-only baseline (a bag of words, blind to the image) | `minivlm/models/question_only.py`; its training `minivlm/drivers.py` (`train_question_only`) |
# | the pretrained and fine-tuned ViLTs | `minivlm/zoo` (`zoo.load("vilt_pretrained")`, `zoo.load("vilt")`) |

# %%
import math
import textwrap
import time

import torch

import minivlm
from minivlm import viz, zoo
from minivlm.data import ShapesBench, ShapesWorld, Tokenizer
from minivlm.data.masking import IGNORE_INDEX, mlm_mask
from minivlm.data.pairs import oracle_regions, vqa_batches
from minivlm.drivers import train_question_only
from minivlm.eval import answer_hits, answer_prior, evaluate_itm, evaluate_vqa, interval
from minivlm.models.vilt import ViLT, ViLTConfig, crop_regions, pretrain_batches, pretrain_step, vqa_step
from minivlm.nn import masks
from minivlm.train import fit
from minivlm.utils import count_parameters

minivlm.seed_everything(0)
device = minivlm.device()
chapter_start = time.perf_counter()
print("device:", device, "| torch threads:", torch.get_num_threads())

# %% [markdown]
# ## 1. Three ways to feed an image to a Transformer
#
# * **VisualBERT, VL-BERT** (single stream): a detector (a CNN backbone, region proposals,
#   RoI pooling) finds objects; each region's feature vector plus its box becomes a token, and
#   one BERT reads `[words ; regions]`.
# * **ViLBERT** (two streams): the same region features, but words and regions each get their
#   own Transformer, and *co-attention* layers let each stream query the other.
# * **ViLT** (single stream, no detector): the image is cut into patches, each patch is
#   embedded by one linear map, and one Transformer reads `[words ; patches]`.
#
# The picture below is drawn from a small table; the costs under each row are the ViLT paper's
# own measurements (its Figure 1, on a V100 for one image-text pair), quoted, not measured here.

# %%
PIPELINES = {
    "VisualBERT / VL-BERT\n(2019, single stream)": [
        ("image", "input"), ("detector: CNN,\nproposals, RoI pooling", "vision"),
        ("region features\n+ box coordinates", "vision"),
        ("+ words", "text"), ("one Transformer over\n[words ; regions]", "fusion"), ("heads", "head")],
    "ViLBERT\n(2019, two streams)": [
        ("image", "input"), ("detector:\nregion features", "vision"), ("vision stream\nTransformer", "vision"),
        ("co-attention layers\nvision ⇄ language", "fusion"), ("language stream\nTransformer ← words", "text"),
        ("heads", "head")],
    "ViLT\n(2021, single stream)": [
        ("image", "input"), ("patches:\none linear map", "vision"), ("+ words", "text"),
        ("one Transformer over\n[words ; patches]", "fusion"), ("heads", "head")],
}
NOTES = {
    "VisualBERT / VL-BERT\n(2019, single stream)": "ViLT paper, Fig. 1: region features ≈ 810 ms of a ≈ 900 ms "
                                                   "forward (UNITER-Base); most of the time is the detector",
    "ViLBERT\n(2019, two streams)": "the same detector cost, plus two Transformers and cross-stream layers",
    "ViLT\n(2021, single stream)": "ViLT paper, Fig. 1: patch projection ≈ 0.4 ms of a ≈ 15 ms forward (ViLT-B/32)",
}
viz.plot_pipelines(PIPELINES, NOTES);

# %% [markdown]
# The ViLT paper's Figure 2 sorts vision-and-language models by where their compute goes: the
# visual embedder (VE), the textual embedder (TE) and the modality interaction (MI). Redrawn
# below as the paper draws it, schematic: the bar lengths are the paper's relative sizes, not
# measurements.

# %%
TAXONOMY = [  # (category, examples, relative sizes of VE, TE, MI as the paper's figure draws them)
    ("(a) VE > TE > MI", "VSE++, SCAN", (3, 2, 1)),
    ("(b) VE = TE > MI", "CLIP (chapter 02)", (3, 3, 1)),
    ("(c) VE > MI > TE", "ViLBERT, UNITER, VisualBERT", (3, 1, 2)),
    ("(d) MI > VE = TE", "ViLT (this chapter)", (1, 1, 3)),
]
PARTS = (("visual embedder", "#4c72b0"), ("textual embedder", "#dd8452"), ("modality interaction", "#55a868"))
fig, ax = viz.plt.subplots(figsize=(9, 2.8))
for row, (category, examples, sizes) in enumerate(TAXONOMY):
    left = 0
    for (part, color), size in zip(PARTS, sizes):
        ax.barh(row, size, left=left, color=color, edgecolor="white", label=part if row == 0 else None)
        left += size
    ax.text(left + 0.15, row, examples, va="center", fontsize=8)
ax.set(yticks=range(len(TAXONOMY)), yticklabels=[t[0] for t in TAXONOMY], xticks=[], xlim=(0, 12),
       xlabel="relative compute (schematic, after the ViLT paper's Figure 2)")
ax.invert_yaxis()
ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
fig.tight_layout();

# %% [markdown]
# ## 2. The single stream, built step by step
#
# Text and image each get their embeddings, and a **modality-type embedding** (one learned
# vector for "text", one for "image") is added to every token, so the shared Transformer knows
# which stream a token came from even where positions look alike:
#
# * text: `LN(word + position) + type[0]`, the sentence wrapped as `<bos> words <eos>` (our
#   `<bos>` plays BERT's `[CLS]`);
# * image: `[image CLS ; patches] + position + type[1]`, each patch embedded by one linear map;
# * one bidirectional Transformer over `[text ; image]`, with a **joint padding mask**: the
#   padding after a short question is blocked for every query, the image tokens are always real.
#
# One choice of ours differs from ViT's recipe: the patch positions start at the scale of the
# patch contents (standard deviation 1) instead of ViT's 0.02, a position signal as large as the
# pixels'. Section 4 tests it: the zoo trained the same ViLT from scratch with each
# initialisation, three seeds each, and reads what each answers.
#
# Written out with the library model's own weights, and checked against its `forward`:

# %%
config = ViLTConfig(patch_size=8)
tok = Tokenizer.from_world()
library_vilt = ViLT(config)

world = ShapesWorld(seed=0, image_size=32)
scenes = world.sample(4)
images = world.render(scenes)
questions = ["what color is the star?", "how many shapes are there?", "is there a red circle?",
             "is the blue square to the left of the white cross?"]
ids, text_mask = tok(questions, add_bos=True, add_eos=True)  # (B, T), (B, T) True on real tokens


def single_stream(model, images, ids, text_mask):
    m = model
    text = m.text_norm(m.word_embeddings(ids) + m.text_pos[:, : ids.shape[1]]) + m.modality_embed.weight[0]
    pixels = (images - 0.5) / 0.5  # [0, 1] → [-1, 1]
    patches = m.patch_embed(pixels)  # (B, N, D): patchify + one linear map
    image = torch.cat([m.image_cls.expand(len(images), -1, -1), patches], dim=1) + m.image_pos
    image = image + m.modality_embed.weight[1]  # (B, 1 + N, D)
    x = torch.cat([text, image], dim=1)  # (B, T + 1 + N, D)
    valid = torch.cat([text_mask, torch.ones(len(images), image.shape[1], dtype=torch.bool)], dim=1)
    return m.norm(m.transformer(x, mask=masks.padding(valid))), valid


with torch.no_grad():
    ours, valid = single_stream(library_vilt, images, ids, text_mask)
    diff = (ours - library_vilt(images, ids, text_mask)).abs().max().item()
print(f"tokens per pair: {ids.shape[1]} text + 1 image CLS + {config.num_patches} patches = {ours.shape[1]}")
print(f"max |inline − library| = {diff:.1e}")
assert diff < 1e-5

# %% [markdown]
# The joint padding mask of this batch: each row is one question with its image; blue tokens
# may be attended to, grey ones (padding after a short question) may not.

# %%
fig, ax = viz.plt.subplots(figsize=(10, 1.8))
ax.imshow(valid.int(), cmap=viz.ListedColormap([viz.BLOCKED_COLOR, viz.ATTEND_COLOR]), aspect="auto")
ax.axvline(ids.shape[1] - 0.5, color="black", lw=1.5)
ax.set(yticks=range(len(questions)), yticklabels=[q[:34] for q in questions], xlabel="token (text | image)",
       title="joint padding mask: text tokens, then image CLS + 16 patches");

# %% [markdown]
# On top of the encoder sit a **pooler** (a linear layer and tanh on the first token, BERT's
# `[CLS]` recipe) and three heads: **MLM** predicts a masked word from its hidden state, with
# the word-embedding matrix as its output layer (weight tying); **ITM** says match / no match
# from the pooled token; **VQA** classifies the pooled token over the answer vocabulary.

# %%
print(f"ViLT parameters: {count_parameters(library_vilt):,} "
      f"(encoder {count_parameters(library_vilt.transformer):,}, word embeddings "
      f"{library_vilt.word_embeddings.weight.numel():,}, VQA head {count_parameters(library_vilt.vqa_head):,})")
print(f"{len(config.answers)} answers:", ", ".join(config.answers))

# %% [markdown]
# **The three losses, written out.** For an image $I$ and a caption or question
# $w = (w_1, \dots, w_T)$, wrapped in `<bos> … <eos>`, the encoder gives hidden states $h$; the
# pooled token is $p = \tanh(W_p h_0 + b_p)$, with $h_0$ the state of `<bos>`.
#
# **ITM.** A pair is matched ($y = 1$) or mismatched ($y = 0$), each with probability 0.5. With
# $s = \mathrm{softmax}(W_{\text{itm}}\, p) \in \mathbb{R}^2$,
#
# $$\mathcal{L}_{\text{ITM}} = -\frac{1}{B}\sum_{(I, w)} \big[\,y \log s_1 + (1 - y) \log s_0\,\big],$$
#
# the binary cross-entropy on the pooled token (a softmax over two logits is a sigmoid of their
# difference). The paper makes a mismatched pair by replacing the *image* with another one;
# `pretrain_batches` replaces the *caption* with another scene's (never one that is true of this
# image), which gives the same half-and-half mix from the other side.
#
# **MLM.** With $M$ the positions chosen for masking in the batch (15 % of the real words) and
# $\tilde w$ the masked caption,
#
# $$\mathcal{L}_{\text{MLM}} = -\frac{1}{|M|}\sum_{t \in M} \log P(w_t \mid \tilde w, I),$$
#
# a cross-entropy over the word vocabulary from the tied head on $h_t$, which has the unmasked
# words and every image patch in view. Pretraining minimises
# $\mathcal{L}_{\text{MLM}} + \mathcal{L}_{\text{ITM}}$ (the paper adds a word–patch alignment
# term; section 3 says why it is not here).
#
# **VQA fine-tuning.** A ShapesWorld question has one true answer $a^*$ among the answers printed
# above, so `vqa_step` uses a softmax cross-entropy over them, with $z = \mathrm{MLP}(p)$:
#
# $$\mathcal{L}_{\text{VQA}} = -\frac{1}{B}\sum_{(I, w)} \log \mathrm{softmax}(z)_{a^*}.$$
#
# The paper's differs: VQAv2 gives each question ten human answers, turned into a soft score
# $t_a \in [0, 1]$ for every answer candidate, and ViLT trains a binary cross-entropy per
# candidate, $-\sum_a \big[t_a \log \sigma(z_a) + (1 - t_a) \log(1 - \sigma(z_a))\big]$.

# %% [markdown]
# ## 3. Pretraining: masked language modelling and image-text matching
#
# **MLM.** BERT's recipe: choose 15 % of the real words (never `<bos>`, `<eos>` or padding);
# of those, 80 % become `<mask>`, 10 % a random word and 10 % stay as they are; predict every
# chosen word. In a caption, a masked *colour* or *shape* can only be recovered by looking at
# the image — that is what makes MLM a vision-language objective here.

# %%
captions = [world.caption(s) for s in scenes]
cap_ids, _ = tok(captions, add_bos=True, add_eos=True)
masked, labels = mlm_mask(cap_ids, tok, generator=torch.Generator().manual_seed(3))
for original, m, lab in zip(cap_ids, masked, labels):
    targets = [tok.vocab[int(t)] for t in lab if t != IGNORE_INDEX]
    print(f"caption: {tok.decode(original)}\ninput:   {tok.decode(m, skip_special=False).replace('<pad>', '').strip()}"
          f"\npredict: {targets}\n")

# The ratios, measured over 20 training batches:
count = {"real words": 0, "chosen": 0, "<mask>": 0, "kept": 0, "special chosen": 0}
specials = torch.tensor(sorted(tok._special_ids))
g = torch.Generator().manual_seed(0)
for step in range(20):
    batch_ids = pretrain_batches(64, seed=9)(step)["ids"]  # (64, T)
    m_ids, m_labels = mlm_mask(batch_ids, tok, generator=g)
    real, chosen = ~torch.isin(batch_ids, specials), m_labels != IGNORE_INDEX
    count["real words"] += int(real.sum())
    count["chosen"] += int(chosen.sum())
    count["<mask>"] += int((m_ids[chosen] == tok.mask_id).sum())
    count["kept"] += int((m_ids[chosen] == batch_ids[chosen]).sum())
    count["special chosen"] += int((chosen & ~real).sum())
share = {"chosen / real words": count["chosen"] / count["real words"],
         "<mask> / chosen": count["<mask>"] / count["chosen"],
         "kept / chosen": count["kept"] / count["chosen"]}
share["random / chosen"] = 1 - share["<mask> / chosen"] - share["kept / chosen"]
print({k: f"{v:.1%}" for k, v in share.items()}, f"over {count['real words']:,} real words")
assert count["special chosen"] == 0, "a special token or padding was chosen"

# %% [markdown]
# **Whole-word masking.** The ViLT paper masks whole words: with WordPiece, "giraffe" becomes
# "gi ##raf ##fe", and masking one piece leaves the other two to give the word away without a
# look at the image. Our tokenizer is word-level, so every token is a whole word and masking
# tokens already masks whole words. The one thing it splits off is punctuation (`.`, `,`, `:`
# each become a token of their own), which is part of no word; BERT's whole-word masking, too,
# counts a punctuation mark as a word of its own. Counted over 200 training captions:

# %%
wwm_captions = [world.mixed_caption(s, 0.3) for s in world.sample(200)]  # the pretraining mix: 30 % relations
w_ids, w_mask = tok(wwm_captions, add_bos=True, add_eos=True)  # (200, T), (200, T)
n_tokens = (w_mask.sum(1) - 2).tolist()  # between <bos> and <eos>
n_words = [len(c.split()) for c in wwm_captions]  # whitespace-separated words
n_punct = [sum(not ch.isalnum() and not ch.isspace() for ch in c) for c in wwm_captions]
print(f"{sum(n_tokens):,} tokens = {sum(n_words):,} words + {sum(n_punct):,} punctuation marks "
      f"({''.join(sorted({ch for c in wwm_captions for ch in c if not ch.isalnum() and not ch.isspace()}))})")
print(wwm_captions[0], "→", tok.tokenize(wwm_captions[0]))
assert n_tokens == [w + p for w, p in zip(n_words, n_punct)], "a word was split into more than one token"
assert not (w_ids == tok.unk_id).any(), "a caption word is missing from the vocabulary"

# %% [markdown]
# One token per word, caption by caption: whole-word masking and token masking choose the same
# positions here, so the paper's whole-word-masking arm would be identical to the token masking
# above, and we do not run it. The paper's word–patch alignment (WPA, an optimal-transport
# distance between word and patch states added to ITM) is not built in this chapter.

# %% [markdown]
# **ITM.** Half the pairs of a batch, chosen at random, get the caption of *another* scene —
# one with a different set of objects, and never a caption that happens to be true of this
# image (another scene's relation can hold here too). The pooled token must say which pairs
# match: a two-way classification.

# %%
example = pretrain_batches(8, seed=4)(0)
itm_texts = [tok.decode(r) for r in example["itm_ids"]]
viz.show_images(example["images"], titles=[textwrap.fill(("✓ " if y else "✗ ") + t, 34) for t, y in
                                           zip(itm_texts, example["itm_labels"].tolist())], ncols=4, scale=2.6);

# %% [markdown]
# A short live pretraining run (the paper's two forward passes per step: masked captions with
# their images for MLM, half-mismatched pairs for ITM; loss = MLM + ITM). The zoo's
# `vilt_pretrained` ran the same recipe for many more steps (`minivlm zoo build vilt_pretrained`).

# %%
PRE_STEPS = 100
minivlm.seed_everything(0)
live = ViLT(config)
history = fit(live, pretrain_step, pretrain_batches(64, seed=1), PRE_STEPS, lr=2e-3, warmup=50, desc="MLM + ITM")
pre_manifest = zoo.manifest("vilt_pretrained")
print(f"{PRE_STEPS} steps in {history.seconds:.1f} s: MLM {history.last('mlm'):.3f}, ITM {history.last('itm'):.3f} "
      f"(chance ln 2 = 0.693); the zoo model after {pre_manifest['steps']} steps: MLM {pre_manifest['final_mlm']}, "
      f"ITM {pre_manifest['final_itm']}")
fig, axes = viz.plt.subplots(1, 2, figsize=(10, 3))
viz.plot_losses({"MLM": history.losses["mlm"]}, ax=axes[0])
viz.plot_losses({"ITM": history.losses["itm"]}, ax=axes[1])
axes[1].axhline(math.log(2), color="gray", ls="--", lw=1, label="chance, ln 2")
axes[1].legend(fontsize=8)
fig.tight_layout();

# %% [markdown]
# **What the live run shows, and what it is for.** In this run the ITM curve sits on the dashed
# line: after the live steps the ITM loss is still at chance, ln 2, the loss of a model that
# says "match" with probability ½ to every pair. That is what "has learnt nothing yet" looks
# like. The zoo's `vilt_pretrained` trained the same two objectives for the manifest's number of
# steps and ended well off chance (its last ITM loss, read from the manifest, is printed below);
# *when* in those steps its ITM left chance is untested here, because the manifest keeps only
# the final losses.
#
# The live model is here to show the mechanics, two forward passes and two losses, and nothing
# below uses it. The ITM accuracy is the zoo's `vilt_pretrained`; the live VQA fine-tunes start
# from `vilt_pretrained` and from a fresh random ViLT (the regions arm from its own random
# start); the shipped per-kind results and the attention maps are the zoo's fine-tuned `vilt`.

# %%
print(f"ITM loss: live model after {PRE_STEPS} steps {history.last('itm'):.3f}; zoo vilt_pretrained after "
      f"{pre_manifest['steps']:,} steps {pre_manifest['final_itm']:.3f}; chance ln 2 = {math.log(2):.3f}")

# %% [markdown]
# **ITM accuracy** of the zoo's pretrained model, on fresh ShapesBench items (a bench seed
# never used in training or in the manifest), with its 95 % interval:

# %%
pretrained = zoo.load("vilt_pretrained")
fresh = ShapesBench(seed=4321)
itm_result = evaluate_itm(pretrained, fresh.itm(1000))
itm_acc = itm_result["accuracy"]
print(f"ITM accuracy (zoo vilt_pretrained, fresh items): {itm_acc}   chance 50 %")

# %% [markdown]
# ## 4. VQA, and does pretraining help?
#
# Six kinds of question (colour, shape, count, exists, relation, position), each answered by
# one word from the answer vocabulary printed in section 2. A VQA model has used the image only
# where it beats a model that never sees it, so two blind baselines come first. The weaker is
# the **per-kind majority**: for each kind, the most frequent answer in the training data,
# whatever the image and whatever the question says — asked "is the red circle on the left or on
# the right?", it gives its kind's most frequent answer even where the question rules it out.

# %%
train_vqa = ShapesWorld(seed=5, split="train").vqa_sample(3000)
prior = answer_prior(train_vqa["answers"], train_vqa["kinds"])
test_vqa = fresh.vqa(1200)
prior_hits = answer_hits([prior[k] for k in test_vqa["kinds"]], test_vqa["answers"])
KINDS = list(dict.fromkeys(test_vqa["kinds"]))


def per_kind(hits, kinds):
    return {k: interval([h for h, kk in zip(hits, kinds) if kk == k]) for k in KINDS}


prior_kind = per_kind(prior_hits, test_vqa["kinds"])
print("per-kind majority:", {k: prior[k] for k in KINDS})
print(f"overall {interval(prior_hits)}")

# %% [markdown]
# The stronger, and the one this chapter reads every VQA effect against, is the
# **question-only model** (`minivlm/models/question_only.py`): the mean of the question's word
# embeddings, then a small MLP over the answers. It reads the words and never the image, so it
# learns what the words alone tell — which answers a question allows ("left" or "right", not
# "top") and which of those the training questions favour. It trains here on the stream the
# VQA fine-tunes below read (`vqa_batches(64, seed=2)`), and `evaluate_vqa` scores it on the
# same test questions as every ViLT. The mean loss of its middle and of its last 50 steps are
# printed: close values mean the loss had flattened before training stopped.

# %%
QO_STEPS = 150
question_only, qo_history = train_question_only(steps=QO_STEPS, seed=2)  # seed 2: the fine-tunes' VQA stream
qo_losses = qo_history.losses["loss"]
print(f"question-only model: {QO_STEPS} steps in {qo_history.seconds:.1f} s, mean loss of steps 51-100 "
      f"{sum(qo_losses[50:100]) / 50:.3f}, of steps 101-150 {sum(qo_losses[100:150]) / 50:.3f}")
qo_result = evaluate_vqa(question_only, test_vqa)  # the images are passed, and ignored
print(f"{'':10} {'per-kind majority':31} question-only model")
for k in KINDS:
    print(f"{k:10} {prior_kind[k]!s:31} {qo_result['per_kind'][k]}")
print(f"{'overall':10} {interval(prior_hits)!s:31} {qo_result['overall']}")

# %% [markdown]
# Now the same VQA fine-tune, at equal steps and on the same batches, from two starts: the
# zoo's MLM + ITM-pretrained ViLT, and a random initialisation.

# %%
FT_STEPS = 300


def finetune(model, desc):
    h = fit(model, vqa_step, vqa_batches(64, seed=2), FT_STEPS, lr=2e-3, warmup=50, desc=desc)
    return evaluate_vqa(model, test_vqa), h


minivlm.seed_everything(0)
arms = {"pretrained": zoo.load("vilt_pretrained"), "scratch": ViLT(config)}
results, histories = {}, {}
for name, model in arms.items():
    results[name], histories[name] = finetune(model, f"VQA from {name}")
    print(f"{name:10} {histories[name].seconds:5.1f} s  VQA {results[name]['overall']}")

# %%
baselines = {"per-kind majority": prior_kind, "question-only model": qo_result["per_kind"]}
vilts = {f"{k} + {FT_STEPS} VQA steps": v["per_kind"] for k, v in results.items()}
rows = baselines | vilts
print(f"{'':28}" + "".join(f"{k:>13}" for k in KINDS))
for name, est in rows.items():
    print(f"{name:28}" + "".join(f"{100 * est[k].value:7.1f} ±{100 * est[k].half_width:4.1f}" for k in KINDS))
colors = {"per-kind majority": "0.85", "question-only model": "0.5"} | {name: f"C{i}" for i, name in enumerate(vilts)}
fig, ax = viz.plt.subplots(figsize=(10, 3.4))
width = 0.8 / len(rows)
for r, (name, est) in enumerate(rows.items()):
    xs = [i + (r - (len(rows) - 1) / 2) * width for i in range(len(KINDS))]
    errors = [[max(0.0, est[k].value - est[k].low) for k in KINDS], [max(0.0, est[k].high - est[k].value) for k in KINDS]]
    ax.bar(xs, [est[k].value for k in KINDS], width, yerr=errors, capsize=2, color=colors[name], label=name)
ax.set(xticks=range(len(KINDS)), xticklabels=KINDS, ylim=(0, 1), xlabel="question kind",
       ylabel="VQA accuracy (fresh items)", title="per question kind, 95 % intervals; the blind baselines in grey")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
fig.tight_layout();

# %% [markdown]
# One run per arm proves little: the difference must be compared with how much a run varies
# with its seed. `minivlm zoo build vilt` trained both arms with three seeds each (pretraining
# included, for the pretrained arm), at the recipe's longer fine-tune; their figures are in the
# manifest. The shipped `vilt` is seed 0's pretrained arm, re-evaluated here on fresh items.

# %%
vilt_manifest = zoo.manifest("vilt")
for arm, runs in vilt_manifest["arms"].items():
    values = [r["vqa"]["value"] for r in runs]
    print(f"{arm:10} VQA per seed: {[f'{v:.1%}' for v in values]}  (spread {max(values) - min(values):.1%})")
gain = vilt_manifest["pretraining_gain"]
print(f"pretrained − scratch, per seed: {[f'{g:+.1%}' for g in gain['per_seed']]}")
shipped = zoo.load("vilt")
shipped_result = evaluate_vqa(shipped, test_vqa)
vqa_acc = shipped_result["overall"]
print(f"zoo vilt ({vilt_manifest['steps']} VQA steps) on fresh items: {vqa_acc}")
print(f"question-only model on the same items:    {qo_result['overall']}")
for k in KINDS:
    print(f"  {k:9} {shipped_result['per_kind'][k]}   question-only {qo_result['per_kind'][k].value:6.1%}   "
          f"majority {prior_kind[k].value:6.1%}")

# %% [markdown]
# **What holds relation and position back?** Three suspects, each tested in the zoo by an arm
# that changes one thing from the scratch arm (2,000 VQA steps from random weights), three seeds
# each: the patch positions started at ViT's std 0.02 instead of 1 (`scratch_pos002`); 4×4
# patches instead of 8×8, so 64 image tokens and four times the spatial detail
# (`scratch_patch4`); and twice the training (`scratch_steps2x`, 4,000 steps). The question-only
# model is scored on the manifest's own 1,200 questions, so every row reads the same items.

# %%
bench_vqa = ShapesBench(seed=vilt_manifest["recipe"]["bench_seed"]).vqa(1200)
qo_bench = evaluate_vqa(question_only, bench_vqa)
variant_arms = ["scratch", *vilt_manifest["scratch_variants"], "pretrained"]
print(f"{'mean of 3 seeds, %':22}" + "".join(f"{k:>10}" for k in ["overall", *KINDS]))
for arm in variant_arms:
    runs = vilt_manifest["arms"][arm]
    cells = [sum(r[key]["value"] for r in runs) / len(runs) for key in ["vqa", *[f"vqa_{k}" for k in KINDS]]]
    print(f"{arm:22}" + "".join(f"{100 * c:10.1f}" for c in cells))
print(f"{'question-only':22}" + "".join(f"{100 * e.value:10.1f}" for e in
                                          [qo_bench["overall"], *[qo_bench["per_kind"][k] for k in KINDS]]))
print(f"{'  its upper 95 % bound':22}" + "".join(f"{100 * e.high:10.1f}" for e in
                                                [qo_bench["overall"], *[qo_bench["per_kind"][k] for k in KINDS]]))
fig, axes = viz.plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
for ax, kind in zip(axes, ("relation", "position")):
    for x, arm in enumerate(variant_arms):
        for j, r in enumerate(vilt_manifest["arms"][arm]):
            e = r[f"vqa_{kind}"]
            ax.errorbar(x + 0.12 * (j - 1), 100 * e["value"], yerr=[[100 * (e["value"] - e["low"])],
                                                                      [100 * (e["high"] - e["value"])]],
                        fmt="o", ms=3, capsize=2, color=f"C{x}")
    q = qo_bench["per_kind"][kind]
    ax.axhspan(100 * q.low, 100 * q.high, color="grey", alpha=0.25, label="question-only model, 95 %")
    ax.set(xticks=range(len(variant_arms)), xticklabels=[a.replace("_", "\n") for a in variant_arms],
           title=f"{kind} questions (200 per seed)", ylabel="accuracy (%)" if kind == "relation" else None)
    ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
viz.plt.show()
for arm in variant_arms[:-1]:  # the claim of "What we saw": no from-scratch arm reads relation or position
    for kind in ("relation", "position"):
        assert all(r[f"vqa_{kind}"]["value"] <= qo_bench["per_kind"][kind].high
                   for r in vilt_manifest["arms"][arm]), f"{arm} now reads {kind} questions: update What we saw"

# %% [markdown]
# ## 5. The pipeline ViLT removed: regions from a detector
#
# VisualBERT's image tokens are *regions*: a detector proposes boxes, each box's feature is
# pooled from the image, and its coordinates are embedded beside it. Here the detector is an
# **oracle**: ShapesWorld knows every object's exact box, for free. Each box is cropped and
# resized to 8 × 8 pixels (bilinear, like RoIAlign), flattened and embedded, plus an embedding
# of `(x0, y0, x1, y1, area)`. The rest is the same ViLT.

# %%
boxes, box_mask = oracle_regions(scenes)
crops = crop_regions(images, boxes, 8)  # (B, R, 8·8·3)
shown = [(i, r) for i in range(len(scenes)) for r in range(len(scenes[i]))][:8]
viz.show_images(torch.stack([crops[i, r].view(8, 8, 3).permute(2, 0, 1) for i, r in shown]),
                titles=[scenes[i].objects[r].name for i, r in shown], ncols=8, scale=1.3);

# %%
region_config = ViLTConfig(visual="regions")
minivlm.seed_everything(0)
region_vilt = ViLT(region_config)
region_result, region_history = finetune(region_vilt, "VQA, regions, from scratch")
print(f"regions from scratch, {FT_STEPS} steps: {region_history.seconds:.1f} s, VQA {region_result['overall']}")
print(f"patches from scratch, {FT_STEPS} steps: {histories['scratch'].seconds:.1f} s, "
      f"VQA {results['scratch']['overall']}")
for k in KINDS:
    print(f"  {k:9} regions {region_result['per_kind'][k].value:6.1%}   patches "
          f"{results['scratch']['per_kind'][k].value:6.1%}")

# %% [markdown]
# Token counts and the time of each stage, measured here for a batch of 256 test questions
# (median of 5 runs, no gradients). The oracle costs nothing; a real detector is the ViLT
# paper's ≈ 810 ms *per image* on a GPU — most of the forward pass of a region-based model.

# %%
def median_ms(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


batch_images, batch_qs, batch_scenes = test_vqa["images"][:256], test_vqa["questions"][:256], test_vqa["scenes"][:256]
q_ids, q_mask = tok(batch_qs, add_bos=True, add_eos=True)
patch_vilt, region_vilt = arms["scratch"].eval(), region_vilt.eval()
with torch.no_grad():
    b, bm = oracle_regions(batch_scenes)
    stages = {
        "patches: patch embedding": median_ms(lambda: patch_vilt.embed_image(batch_images)),
        "patches: whole forward": median_ms(lambda: patch_vilt(batch_images, q_ids, q_mask)),
        "regions: oracle detector (boxes)": median_ms(lambda: oracle_regions(batch_scenes)),
        "regions: crop + resize": median_ms(lambda: crop_regions((batch_images - 0.5) / 0.5, b, 8)),
        "regions: region embedding": median_ms(lambda: region_vilt.embed_image(batch_images, b)),
        "regions: whole forward": median_ms(lambda: region_vilt(batch_images, q_ids, q_mask, boxes=b, box_mask=bm)),
    }
for name, ms in stages.items():
    print(f"{name:34} {ms:7.2f} ms")
n_regions = float(bm.sum(1).float().mean())
print(f"image tokens: patches 1 + {config.num_patches}; regions 1 + {region_config.max_regions} slots "
      f"({n_regions:.2f} real boxes per image on average)")

# %% [markdown]
# ## 6. Where the pooled token looks
#
# The answer is read from the first token. Its attention to the image patches in the last
# layer (averaged over heads, and rescaled so that the 16 patch weights sum to 1) shows which
# part of the image the pooled token reads. Each example is a pair of panels: the image as it
# is, so that colours can be judged, and beside it the attention map on the same patch grid,
# with its colour bar. The title holds the question, the model's answer and the true answer.

# %%
attn_idx = [i for i, k in enumerate(test_vqa["kinds"]) if k in ("color", "shape", "position")][:6]
att_images = test_vqa["images"][attn_idx]
att_questions = [test_vqa["questions"][i] for i in attn_idx]
att_truth = [test_vqa["answers"][i] for i in attn_idx]
a_ids, a_mask = tok(att_questions, add_bos=True, add_eos=True)
with torch.no_grad():
    shipped(att_images, a_ids, a_mask, need_weights=True)
last = shipped.attention_maps()[-1].mean(dim=1)  # (B, L, L), averaged over heads
to_patches = last[:, 0, a_ids.shape[1] + 1:]  # (B, 16): first token → the patches
to_patches = to_patches / to_patches.sum(dim=1, keepdim=True)  # each row sums to 1
answers = shipped.answer(att_images, att_questions)
att_hits = answer_hits(answers, att_truth)
print(f"right on {sum(att_hits)} of {len(att_hits)} shown")

# %%
grid = math.isqrt(to_patches.shape[1])  # 4 × 4 patches of 8 × 8 pixels
fig, axes = viz.plt.subplots(3, 4, figsize=(11, 9.5))
for n, (img, w, q, a, truth) in enumerate(zip(att_images, to_patches, att_questions, answers, att_truth)):
    ax_img, ax_att = axes.flat[2 * n], axes.flat[2 * n + 1]
    ax_img.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")  # (H, W, 3)
    ax_img.set_title(textwrap.fill(q, 30) + f"\nmodel: {a} · true: {truth}", fontsize=9)
    heat = ax_att.imshow(w.reshape(grid, grid).numpy(), cmap="viridis", vmin=0, interpolation="nearest")
    fig.colorbar(heat, ax=ax_att, fraction=0.046, pad=0.04, label="attention weight")
    ax_att.set_title("first token → patches", fontsize=9)
    for ax in (ax_img, ax_att):
        ax.set(xticks=[], yticks=[])
fig.tight_layout(h_pad=2.0);

# %% [markdown]
# How many of the shown answers are right is printed above; six examples are an illustration,
# not a measurement (the per-kind accuracies of section 4 are the measurement). Where a map
# puts its weight on the object the question names, the pooled token has read that object's
# patches in the last layer; where it spreads over the background or lands on another object,
# it has not. Either way, a map shows *where* the pooled token reads, not *why* the answer is
# right or wrong: attention is one step of the computation, earlier layers have already mixed
# every token with every other, and the value vectors and the MLPs after it can use or ignore
# what it reads. Attention weights are a known weak explanation for that reason; whether these
# patches *cause* the answer would need an intervention (masking them and re-asking), which is
# untested here.

# %% [markdown]
# ## What we measured
#
# Every number below was computed in this run: the live arms trained here, the zoo models
# re-evaluated here on fresh items (bench seed 4321, which neither training nor the manifest
# used). The manifest's seed figures come from `minivlm zoo build vilt`.

# %%
chapter_seconds = time.perf_counter() - chapter_start
measured = {
    "VQA, zoo vilt (fresh items)": vqa_acc,
    "ITM, zoo vilt_pretrained (fresh items)": itm_acc,
    "VQA, question-only model": qo_result["overall"],
    "VQA, per-kind majority": interval(prior_hits),
    **{f"VQA, live {k} ({FT_STEPS} steps)": v["overall"] for k, v in results.items()},
    f"VQA, live regions ({FT_STEPS} steps)": region_result["overall"],
}
for name, est in measured.items():
    print(f"{name:42} {est}")
print(f"{'chapter seconds':42} {chapter_seconds:.1f}")

# Bars: ITM 90 % (target 85 %; the zoo model's figure is deterministic up to float order); VQA
# 55 %, a few points under the zoo model's 59-61 % — the 65 % target is not reached (see below).
ITM_BAR, VQA_BAR = 0.90, 0.55
assert diff < 1e-5, "the inline single stream must equal the library's forward"
assert itm_acc.value >= ITM_BAR, f"ITM accuracy should be ≥ {ITM_BAR:.0%}, got {itm_acc}"
assert vqa_acc.value >= VQA_BAR, f"zoo ViLT VQA accuracy should be ≥ {VQA_BAR:.0%}, got {vqa_acc}"
assert vqa_acc.low > interval(prior_hits).high, "the zoo ViLT must beat the blind baseline beyond the intervals"
qo_overall = qo_result["overall"]
assert vqa_acc.low > qo_overall.high, "the zoo ViLT must beat the question-only model beyond the intervals"
assert results["pretrained"]["overall"].low > qo_overall.high, "the live pretrained arm must beat the question-only model"
# the claims of "What we saw" below
assert qo_overall.low > interval(prior_hits).high, "the question-only model must beat the per-kind majority"
assert results["scratch"]["overall"].low <= qo_overall.high, "the live scratch arm now beats the question-only model"
for kind in ("relation", "position"):
    assert shipped_result["per_kind"][kind].low <= qo_result["per_kind"][kind].high, f"the zoo ViLT now reads {kind}"
for kind in ("color", "count", "exists"):
    assert shipped_result["per_kind"][kind].low > qo_result["per_kind"][kind].high, f"the zoo ViLT no longer reads {kind}"
assert results["pretrained"]["overall"].value > results["scratch"]["overall"].value + 0.05, \
    "at equal fine-tune steps the pretrained start should be clearly ahead of the random one"
assert min(r["vqa"]["value"] for r in vilt_manifest["arms"]["pretrained"]) > \
    max(r["vqa"]["value"] for r in vilt_manifest["arms"]["scratch"]), "the zoo's seeds: pretraining beyond the spread"

# %% [markdown]
# ## What we saw
#
# * **The single stream is a few lines.** Word embeddings and patch projections, one
#   modality-type vector each, one concatenation and one padding mask: the inline version equals
#   the library's `forward` to the difference printed above. The masking ratios measured over
#   twenty training batches sit on BERT's 15 % and 80/10/10. Whole-word masking would change
#   nothing here: every caption token is a whole word or a punctuation mark (asserted over 200
#   captions), so it would choose the same positions as token masking.
# * **ITM.** The live pretraining run stays at chance, ln 2, over its steps: it shows the
#   mechanics, and nothing after it uses it. The zoo's pretrained ViLT ended its run well off
#   chance (its last ITM loss is printed above; when it left chance is untested here) and tells a
#   matching caption from another scene's caption with the accuracy printed above on fresh
#   items (the chapter's target is 85 %, its bar 90 %). These negatives are easy: another
#   scene's objects. Chapter 04 builds the hard ones, a caption that differs by one attribute or
#   a swapped relation.
# * **VQA: the 65 % target is not reached, and on two kinds ViLT reads only the question.** The
#   zoo ViLT (3,000 pretraining steps, 2,000 VQA steps) answers the fresh questions with the
#   accuracy printed in section 4 (the bar asserts 55 %). The baseline it is read against is the
#   question-only model, which never sees the image (the per-kind majority is a weaker bar: it
#   answers "top" to "on the left or on the right?"). Per kind, the zoo ViLT is above the
#   question-only model beyond the intervals on colour, count and exists, and not on **relation
#   and position**, where both sit at a coin flip: each has two answers the question's form gives
#   away, and ViLT gets no further than the words.
# * **None of the three suspects moves relation or position.** Started with ViT's std-0.02
#   positions, cut into 4×4 patches (64 image tokens), or trained twice as long, the from-scratch
#   ViLT stays at or below the question-only model on both kinds in every seed (asserted; the
#   figure in section 4; the other kinds are in the table above it). So the target is missed for
#   a reason these arms do not reach. What
#   such a question needs, finding the named object among several and then reading where it is,
#   is untested here: no arm changes how the pooled token gathers an object's place (the ViLT
#   paper's word-patch alignment objective is one such change; it is not built here).
#   The live arm trained from random weights for 300 steps is no better than the question-only
#   model overall: at that length it has not learned to use the image at all.
# * **Pretraining helps, beyond the seed spread.** Live, at 300 fine-tune steps, the pretrained
#   start is ahead of the random one by the margin printed above (the chapter asserts more than
#   five points); the per-kind table shows on which kinds, and which of the two objectives,
#   MLM or ITM, gives the gain is untested (no arm drops one of them). In the zoo's three seeds
#   at 2,000 steps the per-seed gains are printed above, and every pretrained seed beats every
#   scratch seed (asserted). Whether the gain shrinks as fine-tuning lengthens is untested: the
#   live and zoo comparisons differ in their test items and seeds as well as in their steps.
# * **Regions vs patches.** From scratch at equal steps, the oracle-region ViLT is ahead of the
#   patch ViLT (printed above), with a few real image tokens (their mean is printed) instead of
#   16 patches, and the forward times printed above. The arms differ only in how the image
#   becomes tokens; that the gain comes from the detector handing the model objects, so that it
#   need not learn to find them, is a plausible reading that no arm here tests. And the oracle
#   is free here while a real detector is not: the ViLT paper measured about 810 ms per image
#   for region features against 0.4 ms for the patch projection. ViLT gives up the regions'
#   head start to drop the detector; on real images, with pretraining at scale, the paper
#   found it a good trade.
#
# **Exercises:** `exercises/03_vilt.ipynb` — the single stream of the region pipeline (modality
# types and one attention mask over padded words and empty region slots), MLM masking (80/10/10,
# never specials), the MLM loss, ITM pairs with true negatives, and an experiment: does the
# pretrained ViLT's masked-word prediction read the image (its own image against another scene's);
# `minivlm check exercises/03_vilt.ipynb` tells you what is wrong.
#
# **References.** Kim, Son and Kim, *ViLT: Vision-and-Language Transformer Without
# Convolution or Region Supervision* (ICML 2021); Li et al., *VisualBERT: A Simple and
# Performant Baseline for Vision and Language* (2019); Lu et al., *ViLBERT: Pretraining
# Task-Agnostic Visiolinguistic Representations for Vision-and-Language Tasks* (NeurIPS 2019);
# Su et al., *VL-BERT: Pre-training of Generic Visual-Linguistic Representations* (ICLR 2020);
# Chen et al., *UNITER* (ECCV 2020); Devlin et al., *BERT* (2019).
