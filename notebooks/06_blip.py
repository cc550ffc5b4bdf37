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
# # 06 · BLIP: one model that reads, matches and writes — and cleans its own data
#
# Li, Li, Xiong and Hoi, *BLIP: Bootstrapping Language-Image Pre-training for Unified
# Vision-Language Understanding and Generation* (ICML 2022).
#
# Every model so far could only *judge* text: CLIP and ALBEF score how well a caption fits an
# image, but none can write one. Encoder-decoder models write, but retrieve badly. BLIP's
# **multimodal mixture of encoder-decoder (MED)** is one text Transformer that runs in three
# modes over one image encoder:
#
# | mode | first token | self-attention | cross-attention to the image | loss |
# |---|---|---|---|---|
# | unimodal text encoder | `[CLS]` | bidirectional | none | ITC (ALBEF's, with momentum) |
# | image-grounded text encoder | `[ENC]` | bidirectional | every block | ITM (ALBEF's hard negatives) |
# | image-grounded text decoder | `[DEC]` | **causal** | every block | LM (next word, label smoothing 0.1) |
#
# One pretraining step sums the three losses, $\mathcal{L} = \mathcal{L}_{\mathrm{ITC}} +
# \mathcal{L}_{\mathrm{ITM}} + \mathcal{L}_{\mathrm{LM}}$:
#
# $$\mathcal{L}_{\mathrm{ITC}} = \tfrac12\big[H(y^{i2t}, p^{i2t}) + H(y^{t2i}, p^{t2i})\big], \qquad
#   p^{i2t}_j(I) = \frac{\exp(s(I, T_j)/\tau)}{\sum_{m=1}^{B+Q} \exp(s(I, T_m)/\tau)},$$
#
# over the batch's B captions and a queue of Q older ones, with targets y mixed with the
# momentum model's softmax (chapter 04's MoD); $H$ is the cross-entropy and $s$ the cosine of
# the `[CLS]` projections;
#
# $$\mathcal{L}_{\mathrm{ITM}} = \mathbb{E}_{(I, T)}\, H\big(y^{\mathrm{itm}}, p^{\mathrm{itm}}(I, T)\big)$$
#
# on the B true pairs and 2B hard negatives drawn by ITC similarity; and
#
# $$\mathcal{L}_{\mathrm{LM}} = -\sum_{t} \log p_\theta(w_t \mid w_{<t}, I),$$
#
# the decoder's next word given the words before it and the image.
#
# Encoder and decoder share every weight except the self-attention. BLIP's second idea is about
# data: web captions are noisy, so **CapFilt** fine-tunes a *captioner* (the decoder) and a
# *filter* (the ITM encoder) on a small clean set, lets the captioner write a synthetic caption for
# every web image, lets the filter throw out the web and synthetic captions it does not believe,
# and pretrains a new model on what is left.
#
# This chapter builds MED from the library, plots its masks, trains it live, decodes captions
# four ways through the course's `generate`, scores them with BLEU-4 and CIDEr-D against a
# nearest-caption baseline, and tests CapFilt: how well the filter catches ShapesWorld's noisy
# captions (the world knows which are noisy), and whether pretraining on the bootstrapped set
# beats pretraining on the raw noisy set, over three seeds.
#
# | piece | library |
# |---|---|
# | the MED block (a second, causal self-attention), the model, its three modes, `caption`, `match_probability` | `minivlm/models/blip.py`; the contrastive and LM heads `minivlm/nn/heads.py` |
# | the step function (ITC + ITM + LM, or any subset), CapFilt, the filter's precision and recall | `minivlm/models/blip.py` |
# | ITC with momentum and queues, ITM's hard negatives | `minivlm/losses.py` (`momentum_itc`, `itm_negatives`, chapter 04) |
# | the web and clean pair sets, their batches | `minivlm/data/pairs.py` (`image_text_pairs`, `pair_batches`) |
# | greedy, beam search, temperature / top-k / top-p sampling | `minivlm/generate.py` |
# | the LM loss with label smoothing | `minivlm/losses.py` (`lm_loss`) |
# | BLEU-4, CIDEr-D, captions evaluated against every paraphrase | `minivlm/eval/captions.py` (`evaluate_captions`) |
# | the post-LN (BERT) block, to load Salesforce's BLIP | `minivlm/nn/blocks.py` (`norm_first=False`), `minivlm/models/blip_hf.py` (`blip_from_hf`) |
# | the pretrained BLIP and its seed arms | `minivlm/zoo` (`zoo.load("blip")`, `zoo.manifest("blip")`) |

# %%
import dataclasses
import time

import torch

import minivlm
from minivlm import viz, zoo
from minivlm.data import ShapesBench, ShapesWorld, Tokenizer
from minivlm.data.pairs import image_text_pairs, pair_batches
from minivlm.eval import bleu, cider_d, evaluate_captions, interval, true_caption_rate
from minivlm.generate import generate, top_p_filter
from minivlm.models.blip import (
    BLIP,
    BLIP_CONFIG,
    BLIPConfig,
    BLIPPretrainer,
    capfilt,
    filter_scores,
    med_masks,
    pretrain_step,
)
from minivlm.models.clip import init_vision_from_clip
from minivlm.models.clip import similarity as clip_similarity
from minivlm.train import fit
from minivlm.utils import count_parameters

minivlm.seed_everything(0)
chapter_start = time.perf_counter()
print("torch threads:", torch.get_num_threads())

# %% [markdown]
# ## 1. Three models in one
#
# The image goes through a ViT once. The caption goes through the same text Transformer in up
# to three ways, each starting with its own special token (ours: `<bos>` for `[CLS]`, the
# tokenizer's spare tokens `<extra_0>` and `<extra_1>` for `[ENC]` and `[DEC]`):

# %%
PIPELINES = {
    "text encoder [CLS]": [("caption", "input"), ("bidirectional self-attn\n+ FFN", "text"),
                           ("[CLS] → projection", "head"), ("ITC: contrast with\nthe image's [CLS]", "head")],
    "image-grounded\nencoder [ENC]": [("caption", "input"), ("bidirectional self-attn\n+ cross-attn + FFN", "fusion"),
                                      ("[ENC] → ITM head", "head"), ("match / no match\n(hard negatives)", "head")],
    "image-grounded\ndecoder [DEC]": [("caption", "input"), ("CAUSAL self-attn\n+ cross-attn + FFN", "fusion"),
                                      ("every position →\nLM head", "head"), ("next word\n(captioning)", "head")],
}
NOTES = {
    "text encoder [CLS]": "the encoder's weights with the cross-attention skipped: a dual encoder, like CLIP",
    "image-grounded\nencoder [ENC]": "the same self-attention and FFN as above, plus the cross-attention to the ViT's tokens",
    "image-grounded\ndecoder [DEC]": "shares cross-attention, FFN and embeddings with the encoder; only its self-attention is its own",
}
viz.plot_pipelines(PIPELINES, NOTES);

# %% [markdown]
# The modes differ only in which tokens each text token may attend to. Below, the keys are four
# image tokens followed by a five-token caption with one padding slot; a row is a query (a text
# token). The text encoder sees no image; the two grounded modes see all of it; the decoder sees
# only the words before it (and itself), so each position can be trained to predict the next.

# %%
words = ["[first]", "a", "red", "star", ".", "<pad>"]
attention_mask = torch.tensor([[True] * 5 + [False]])
n_image = 4
grids, labels = {}, {}
for mode, first in (("text", "[CLS]"), ("encoder", "[ENC]"), ("decoder", "[DEC]")):
    self_mask, cross_mask = med_masks(attention_mask, mode, n_image)
    cross = cross_mask[0] if cross_mask is not None else torch.zeros(6, n_image, dtype=torch.bool)
    name = f"{mode} ({first})"
    grids[name] = torch.cat([cross, self_mask[0]], dim=1)  # (T, n_image + T)
    row_words = [first] + words[1:]  # each mode starts the caption with its own token
    labels[name] = (row_words, [f"img{i}" for i in range(n_image)] + row_words)
viz.plot_masks(grids, labels=labels, size=3.4);
decoder_self = med_masks(attention_mask, "decoder", n_image)[0][0]
assert not decoder_self[1, 2] and decoder_self[2, 1], "the decoder must see the past, never the future"

# %% [markdown]
# A MED block is chapter 01's block with cross-attention, plus a second self-attention for the
# decoder. Written out, pre-LN (our default; BERT's post-LN is the `norm_first=False` option of
# the library's block, which `blip_from_hf` uses), and checked against the library's block:

# %%
config = BLIPConfig(**BLIP_CONFIG)
model = BLIP(config)
block = model.blocks[0]


def med_block_inline(x, mode, self_mask, image_tokens):
    attn, norm = (block.attn_dec, block.norm1_dec) if mode == "decoder" else (block.attn, block.norm1)
    x = x + attn(norm(x), mask=self_mask)  # the mode's own self-attention
    if mode != "text":
        x = x + block.cross_attn(block.norm_cross(x), image_tokens)  # shared: look at the image
    return x + block.mlp(block.norm2(x))  # shared feed-forward


x, image_tokens = torch.randn(2, 6, config.dim), torch.randn(2, 65, config.vision_dim)
mask2 = torch.ones(2, 6, dtype=torch.bool)
for mode in ("text", "encoder", "decoder"):
    self_mask, _ = med_masks(mask2, mode, 65)
    diff = (med_block_inline(x, mode, self_mask, image_tokens) - block(x, mode, self_mask, image_tokens)).abs().max()
    print(f"{mode:8} max |inline − library| = {diff:.1e}")
    assert diff < 1e-5

# %% [markdown]
# What is shared, in parameters: the decoder adds one self-attention per block and nothing else.

# %%
parts = {
    "image encoder (ViT)": count_parameters(model.visual),
    "text embeddings": count_parameters(model.token_embedding) + model.pos_embedding.numel()
    + count_parameters(model.embed_norm),
    "shared: encoder self-attn": sum(count_parameters(b.attn) + count_parameters(b.norm1) for b in model.blocks),
    "shared: cross-attn + FFN": sum(count_parameters(b) - count_parameters(b.attn) - count_parameters(b.norm1)
                                    - count_parameters(b.attn_dec) - count_parameters(b.norm1_dec)
                                    for b in model.blocks),
    "decoder's own self-attn": sum(count_parameters(b.attn_dec) + count_parameters(b.norm1_dec) for b in model.blocks),
}
total = count_parameters(model)
for name, n in parts.items():
    print(f"{name:28} {n:9,}  {100 * n / total:5.1f} %")
print(f"{'heads, projections, rest':28} {total - sum(parts.values()):9,}")
print(f"{'total':28} {total:9,}")
# a change to the decoder's own self-attention leaves the encoder modes bit-identical
ids = torch.tensor([[config.bos_id, 40, 41, 42, config.eos_id]])
images = ShapesWorld(seed=1).batch(1)["images"]
with torch.no_grad():
    image_tokens, _ = model.encode_image(images)
    before = [model.text_forward(ids, None, m, image_tokens) for m in ("text", "encoder", "decoder")]
    for b in model.blocks:
        b.attn_dec.q_proj.weight.add_(0.5)
    after = [model.text_forward(ids, None, m, image_tokens) for m in ("text", "encoder", "decoder")]
print("changed by editing attn_dec:", [not torch.equal(a, b) for a, b in zip(before, after)])
assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]) and not torch.equal(before[2], after[2])

# %% [markdown]
# ## 2. Training MED: ITC + ITM + LM, live
#
# One step runs the image once and the caption three times: through the text encoder for ITC
# (against ALBEF's momentum model and queues), through the grounded encoder for ITM on the B
# true pairs and 2B hard negatives drawn by ITC similarity, and through the decoder for the LM
# loss. The image encoder starts from chapter 02's zoo CLIP, as ALBEF's did (the paper starts from
# an ImageNet ViT). 200 steps on clean pairs here; the zoo's BLIP trained 1,500.

# %%
clip = zoo.load("clip")
live = init_vision_from_clip(BLIP(BLIPConfig(**BLIP_CONFIG)), clip)
train_pairs = image_text_pairs(2048, noise=0.0, seed=60)
trainer = BLIPPretrainer(live)
start = time.perf_counter()
history = fit(trainer, pretrain_step, pair_batches(train_pairs, batch_size=32, seed=0), steps=200, lr=2e-3,
              warmup=30, weight_decay=0.01, seed=0, desc="BLIP: ITC + ITM + LM")
live_seconds = time.perf_counter() - start
print(f"{live_seconds:.1f} s, {1000 * live_seconds / 200:.0f} ms per step;",
      {k: round(history.last(k), 3) for k in ("itc", "itm", "lm", "itm_acc")})
fig, axes = viz.plt.subplots(1, 3, figsize=(12, 2.8))
for ax, key in zip(axes, ("itc", "itm", "lm")):
    viz.plot_losses({key: history.losses[key]}, ax=ax)
    ax.set_title(key.upper())
assert history.last("lm") < 0.6 * history.losses["lm"][0], "the decoder must learn to caption within 200 steps"

# %%
bench = ShapesBench()
cap_set = bench.captioning(256)
live.eval()
show = slice(0, 8)
viz.show_images(cap_set["images"][show], titles=live.caption(cap_set["images"][show]), ncols=4, scale=2.2);

# %% [markdown]
# ## 3. Decoding: greedy, beam, sampling
#
# The decoder gives logits for the next word; `minivlm.generate.generate` turns them into a
# caption. It only needs a function `next_logits(ids, rows)`: the captioner passes one that runs
# the decoder over the prefixes and picks each prefix's image by `rows`. The zoo's BLIP (1,500
# steps on a CapFilt-bootstrapped set) captioning the same images four ways:

# %%
blip = zoo.load("blip")
images = cap_set["images"][:4]
g = torch.Generator().manual_seed(0)
ways = {
    "greedy": blip.caption(images),
    "beam search, 3 beams": blip.caption(images, num_beams=3),
    "nucleus, p = 0.9": blip.caption(images, do_sample=True, top_p=0.9, generator=g),
    "temperature 1.5, top-k 20": blip.caption(images, do_sample=True, temperature=1.5, top_k=20, generator=g),
}
for i in range(len(images)):
    print(f"image {i}: reference  {cap_set['references'][i][0]}")
    for way, captions in ways.items():
        print(f"         {way:26} {captions[i]}")

# %% [markdown]
# Nucleus sampling keeps the smallest set of likely words whose probabilities add up to p and
# draws among them. Here is what it keeps for the first word after `[DEC]`:

# %%
with torch.no_grad():
    image_tokens, _ = blip.encode_image(images[:1])
    prefix = torch.tensor([[blip.config.dec_id]])
    logits = blip.lm_logits(blip.text_forward(prefix, None, "decoder", image_tokens))[:, -1]  # (1, V)
tok = Tokenizer.from_world()
probs = logits.softmax(-1)[0]
top = probs.topk(8)
for p_nucleus in (0.5, 0.9):
    kept = torch.isfinite(top_p_filter(logits, p_nucleus))[0]
    print(f"p = {p_nucleus}: keeps {int(kept.sum())} words:",
          ", ".join(f"{tok.vocab[i]!r} {probs[i]:.2f}" for i in top.indices.tolist() if kept[i]))

# %% [markdown]
# **Label smoothing, and the words no caption contains.** BLIP trains its decoder with label
# smoothing ε = 0.1: the target for the word after position t is not the true next word $w^*$
# alone but
#
# $$q(w) = (1 - \varepsilon)\,[w = w^*] + \frac{\varepsilon}{V}, \qquad
#   \mathcal{L}_{\mathrm{LM}} = -\sum_{t} \sum_{w=1}^{V} q_t(w) \log p_\theta(w \mid w_{<t}, I),$$
#
# which is smallest at $p_\theta = q$: every word of the vocabulary keeps ε/V. In the paper's
# vocabulary of English word pieces that mass lands on words a caption could use. Ours has
# V = 603 tokens (question words, answers, instructions for later chapters) of which captions use
# a few dozen, so at the optimum a decoder puts ε (V − V_caption) / V of every step's probability
# on words no caption contains, and nucleus sampling at p = 0.9, which keeps the smallest set of
# words holding 90 %, has to reach into them. The zoo's BLIP is therefore trained with ε = 0.
#
# The measurement behind that choice: two captioners fine-tuned from the zoo BLIP on the same
# clean batches for the same 150 steps, one with ε = 0.1 over all 603 tokens and one with ε = 0.
# Teacher-forced on a reference of each of 256 fresh images, we read the probability on
# non-caption words and, after nucleus filtering at p = 0.9, the chance that a step draws one.

# %%
def caption_vocabulary(tok, n=4096, seed=99):
    """The token ids that occur in ShapesWorld's captions (every paraphrase template, n scenes)."""
    ids = set()
    for c in image_text_pairs(n, noise=0.0, seed=seed)["captions"]:
        ids.update(tok.encode(c))
    in_captions = torch.zeros(len(tok.vocab), dtype=torch.bool)
    in_captions[sorted(ids)] = True
    return in_captions


def off_caption_mass(model, images, references, in_captions, top_p=0.9):
    """Mean per step, teacher-forced on `references`: P(a non-caption word), and the same after
    nucleus filtering at top_p (the chance that one sampling step draws such a word)."""
    mass, drawn = [], []
    with torch.no_grad():
        image_tokens, _ = model.encode_image(images)
        for i, ref in enumerate(references):
            ids = torch.tensor([[model.config.dec_id] + tok.encode(ref)[1:]])  # [DEC] words <eos>
            logits = model.lm_logits(model.text_forward(ids, None, "decoder", image_tokens[i:i + 1]))[0, :-1]
            mass.append(logits.softmax(-1)[:, ~in_captions].sum(-1))
            drawn.append(top_p_filter(logits, top_p).softmax(-1)[:, ~in_captions].sum(-1))
    return torch.cat(mass).mean().item(), torch.cat(drawn).mean().item()


in_captions = caption_vocabulary(tok)
V, V_cap = len(tok.vocab), int(in_captions.sum())
print(f"vocabulary {V} tokens, {V_cap} of them in captions: at the optimum ε = 0.1 leaves "
      f"{100 * 0.1 * (V - V_cap) / V:.1f} % on the other {V - V_cap}")
refs0 = [r[0] for r in cap_set["references"]]
smoothing = {"zoo BLIP (ε = 0)": blip}
clean_batches = pair_batches(image_text_pairs(512, noise=0.0, seed=63), 32, seed=0)
for eps in (0.1, 0.0):
    captioner = BLIP(dataclasses.replace(blip.config, label_smoothing=eps))
    captioner.load_state_dict(blip.state_dict())
    fit(BLIPPretrainer(captioner, losses=("lm",)), pretrain_step, clean_batches, 150, lr=5e-4, warmup=10,
        weight_decay=0.01, seed=0, progress=False)
    smoothing[f"+150 LM steps, ε = {eps}"] = captioner.eval()
smooth_rows = {}
print(f"{'':28}{'P(non-caption word)':>21}{'nucleus draws one':>19}   nucleus captions exactly true")
for name, m in smoothing.items():
    mass, drawn = off_caption_mass(m, cap_set["images"], refs0, in_captions)
    sampled = m.caption(cap_set["images"], do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(0))
    smooth_rows[name] = (mass, drawn, interval(true_caption_rate(sampled, cap_set["scenes"])), sampled)
    print(f"{name:28}{100 * mass:20.2f} %{100 * drawn:17.2f} %   {smooth_rows[name][2]}")
fig, ax = viz.plt.subplots(figsize=(6.5, 2.6))
names = list(smooth_rows)
ax.barh(range(len(names)), [100 * r[0] for r in smooth_rows.values()], color="C3")
ax.set(yticks=range(len(names)), yticklabels=names, xlabel="probability on words no caption contains (%)")
ax.axvline(100 * 0.1 * (V - V_cap) / V, color="k", ls="--", lw=1)
ax.text(100 * 0.1 * (V - V_cap) / V, 0.5, " the optimum at ε = 0.1", fontsize=8, va="center")
ax.invert_yaxis()
fig.tight_layout()
viz.plt.show()
eps01, eps0 = smooth_rows["+150 LM steps, ε = 0.1"], smooth_rows["+150 LM steps, ε = 0.0"]
print("nucleus, ε = 0.1:", *eps01[3][:3], sep="\n  ")
assert eps01[0] > 5 * eps0[0] and eps01[1] > 10 * eps0[1], "smoothing over all tokens must move mass to non-caption words"

# %% [markdown]
# `generate` is a loop: ask for logits, pick a token, append, stop at end-of-text. Written out
# for greedy decoding, it gives the library's tokens exactly:

# %%
def greedy_inline(next_logits, prompt, max_new_tokens, eos_id):
    ids, done = prompt, torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(max_new_tokens):
        token = next_logits(ids, torch.arange(len(ids))).argmax(-1).masked_fill(done, eos_id)  # (B,)
        ids = torch.cat([ids, token[:, None]], dim=1)
        done |= token == eos_id
        if done.all():
            break
    return ids


with torch.no_grad():
    image_tokens, _ = blip.encode_image(images)

    def next_logits(ids, rows):
        return blip.lm_logits(blip.text_forward(ids, None, "decoder", image_tokens[rows]))[:, -1]

    prompt = torch.full((len(images), 1), blip.config.dec_id)
    ours = greedy_inline(next_logits, prompt, 31, blip.config.eos_id)
    library = generate(next_logits, prompt, 31, blip.config.eos_id)
print("inline greedy == library greedy:", torch.equal(ours, library))
assert torch.equal(ours, library)

# %% [markdown]
# ## 4. Scoring captions: BLEU-4 and CIDEr-D
#
# Both compare a caption's n-grams (n = 1..4) with the references', here all six paraphrases of
# each scene. **BLEU-4** (Papineni et al. 2002) is the geometric mean of *clipped* n-gram
# precisions (an n-gram counts at most as often as it appears in one reference) times a
# brevity penalty, over the whole corpus. **CIDEr-D** (Vedantam et al. 2015) weights each n-gram
# by TF-IDF across the corpus, so words every caption has ("a", ".") count little and the
# distinctive ones ("purple", "star") count a lot, and scores the cosine similarity per image
# (×10, with a length penalty and clipping). Both are written from the papers in
# `minivlm.eval`, and tested equal to `pycocoevalcap` on random corpora.
#
# The baseline the paper's numbers are read against: **the nearest training caption**. Chapter
# 02's CLIP picks, for each test image, the most similar caption among 4,096 training captions,
# and we score that caption as if the model had written it.

# %%
start = time.perf_counter()
zoo_greedy = evaluate_captions(blip, cap_set["images"], cap_set["scenes"])
zoo_beam = evaluate_captions(blip, cap_set["images"], cap_set["scenes"], num_beams=3)
caption_seconds = time.perf_counter() - start
pool = list(dict.fromkeys(image_text_pairs(4096, noise=0.0, seed=61)["captions"]))  # distinct training captions
with torch.no_grad():
    nearest = [pool[j] for j in clip_similarity(clip, cap_set["images"], pool).argmax(1).tolist()]
refs = cap_set["references"]
baseline_cider, baseline_per_image = cider_d(nearest, refs)
baseline = {"cider": interval(baseline_per_image), "bleu4": bleu(nearest, refs),
            "true": interval(true_caption_rate(nearest, cap_set["scenes"]))}
live_eval = evaluate_captions(live, cap_set["images"], cap_set["scenes"])
rows = {"nearest training caption (CLIP)": baseline, "live BLIP, 200 steps, greedy": live_eval,
        "zoo BLIP, greedy": zoo_greedy, "zoo BLIP, beam 3": zoo_beam}
print(f"{len(pool):,} distinct pool captions; captioning 2 × 256 images took {caption_seconds:.1f} s")
print(f"{'':34}{'CIDEr-D':>28}{'BLEU-4':>9}   exactly true")
for name, r in rows.items():
    print(f"{name:34}{r['cider'].format(percent=False):>28}{r['bleu4']:9.3f}   {r['true']}")
viz.plot_bars({name: r["cider"].value for name, r in rows.items()}, title="CIDEr-D on 256 fresh images",
              ylabel="CIDEr-D")
assert zoo_greedy["cider"].low > baseline["cider"].high, "BLIP must beat the nearest-caption baseline"

# %%
wrong = [i for i, ok in enumerate(true_caption_rate(zoo_greedy["captions"], cap_set["scenes"])) if not ok][:4]
right = [i for i, ok in enumerate(true_caption_rate(zoo_greedy["captions"], cap_set["scenes"])) if ok][:4]
picked = right + wrong
viz.show_images(cap_set["images"][picked], titles=[("✓ " if i in right else "✗ ") + zoo_greedy["captions"][i]
                                                  for i in picked], ncols=4, scale=2.2);

# %% [markdown]
# ## 5. CapFilt, live: the captioner writes, the filter judges
#
# The paper's Figure 3, redrawn: BLIP's data loop. Pretrain on the web pairs and the small
# human-annotated set; fine-tune two copies on the human set only, one as **captioner** (LM) and
# one as **filter** (ITC + ITM); the captioner writes a synthetic caption for every web image;
# the filter removes the web and synthetic captions it judges unmatched; a fresh model is
# pretrained on what is left, plus the human set.

# %%
CAPFILT = {
    "1. pretrain": [("web pairs (noisy)\n+ human pairs", "input"), ("BLIP: ITC + ITM + LM", "fusion"),
                    ("pretrained BLIP", "head")],
    "2. fine-tune\non human pairs": [("pretrained BLIP\n(two copies)", "input"), ("LM → captioner\nITC + ITM → filter", "fusion"),
                                     ("captioner, filter", "head")],
    "3. bootstrap": [("web images", "input"), ("captioner writes\na synthetic caption", "text"),
                     ("filter: P(match) > 0.5?\nfor web and synthetic", "fusion"), ("kept captions", "head")],
    "4. pretrain\nagain": [("kept web + kept synthetic\n+ human pairs", "input"), ("a fresh BLIP:\nITC + ITM + LM", "fusion"),
                           ("the bootstrapped BLIP", "head")],
}
NOTES = {"3. bootstrap": "nucleus sampling (p = 0.9) for diverse synthetic captions; the paper also tried beam search",
         "4. pretrain\nagain": "same steps as step 1: equal steps, not equal compute (steps 1-3 come on top)"}
viz.plot_pipelines(CAPFILT, NOTES);

# %% [markdown]
# Steps 3's loop written out, checked against the library's `capfilt` below. A fresh web set of
# 512 pairs, 40 % of its captions describing another scene; the zoo BLIP serves as captioner and
# as filter. ShapesWorld knows which web captions are noisy, and which synthetic captions are
# exactly true of their scene, so we can score the filter on both: **precision** — of the
# captions it removed, the share that were bad; **recall** — of the bad captions, the share it
# removed.

# %%
def capfilt_inline(captioner, filt, web, top_p=0.9, seed=0, threshold=0.5):
    g = torch.Generator().manual_seed(seed)
    synthetic = captioner.caption(web["images"], do_sample=True, top_p=top_p, generator=g)  # write
    synthetic = [c if c else "." for c in synthetic]  # an empty caption is still judged
    web_kept = filt.match_probability(web["images"], list(web["captions"])) > threshold  # judge
    synthetic_kept = filt.match_probability(web["images"], synthetic) > threshold
    captions = ([c for c, k in zip(web["captions"], web_kept.tolist()) if k]  # keep
                + [c for c, k in zip(synthetic, synthetic_kept.tolist()) if k])
    image_ids = torch.cat([web_kept.nonzero().flatten(), synthetic_kept.nonzero().flatten()])
    return captions, image_ids, synthetic, web_kept, synthetic_kept


web = image_text_pairs(512, noise=0.4, seed=62)
start = time.perf_counter()
boot = capfilt(blip, blip, web, do_sample=True, top_p=0.9, seed=0)
capfilt_seconds = time.perf_counter() - start
small = image_text_pairs(64, noise=0.4, seed=64)  # the check, on a small web set
inline_captions, inline_ids, *_ = capfilt_inline(blip, blip, small)
library_boot = capfilt(blip, blip, small, do_sample=True, top_p=0.9, seed=0)
same = inline_captions == library_boot["data"]["captions"] and torch.equal(inline_ids, library_boot["data"]["image_ids"])
print("inline CapFilt == library CapFilt, on 64 web pairs:", same)
assert same

true_syn = torch.tensor(true_caption_rate(boot["synthetic"], web["scenes"]))
live_filter = filter_scores(boot["web_kept"], web["clean"])
live_syn_filter = filter_scores(boot["synthetic_kept"], true_syn)
good = int((boot["web_kept"] & web["clean"]).sum() + (boot["synthetic_kept"] & true_syn).sum())
n_boot = len(boot["data"]["captions"])
print(f"{capfilt_seconds:.1f} s for 512 captions written and 1,024 judged")
print(f"{'':22}{'bad':>6}{'removed':>9}{'precision':>32}{'recall':>32}")
for name, f in (("web captions", live_filter), ("synthetic captions", live_syn_filter)):
    print(f"{name:22}{f['noisy']:6}{f['removed']:9}{str(f['precision']):>32}{str(f['recall']):>32}")
print(f"synthetic captions exactly true: {interval(true_syn.tolist())}; kept {int(boot['synthetic_kept'].sum())} of 512")
print(f"clean or exactly true: raw web set {100 * web['clean'].float().mean():.1f} %, "
      f"bootstrapped set {100 * good / n_boot:.1f} % of {n_boot} pairs")
show = list(range(6))
titles = [f"web {'✓' if k else '✗'} ({'clean' if c else 'NOISY'}): {w}\nsynthetic {'✓' if s else '✗'} "
          f"({'true' if t else 'NOT TRUE'}): {syn}"
          for w, k, c, syn, s, t in zip([web["captions"][i] for i in show], boot["web_kept"][show].tolist(),
                                        web["clean"][show].tolist(), [boot["synthetic"][i] for i in show],
                                        boot["synthetic_kept"][show].tolist(), true_syn[show].tolist())]
assert live_filter["recall"].value >= 0.8, "the filter must catch at least 80 % of the noisy captions"
viz.show_images(web["images"][show], titles=titles, ncols=3, scale=3.4);

# %% [markdown]
# ✓ kept, ✗ removed. "Exactly true" is strict: a synthetic caption with one wrong colour or one
# missing object counts as not true, though it may still teach the model something.

# %% [markdown]
# ## 6. Does CapFilt help? The zoo's four arms, three seeds each
#
# `minivlm zoo build blip` ran the whole of BLIP's recipe three times (seeds 0–2), each on its own
# web set of 4,096 pairs with 40 % noise and a clean set of 512:
#
# 1. **noisy**: BLIP pretrained on web + clean, 1,500 steps;
# 2. a captioner (LM) and a filter (ITC + ITM) fine-tuned from it on the clean set, 200 steps each;
# 3. CapFilt with the captioner's synthetic captions drawn by nucleus sampling, and, as the
#    paper's comparison, by beam search;
# 4. **capfilt_nucleus** and **capfilt_beam**: a fresh BLIP pretrained on each bootstrapped set +
#    the clean set, the same 1,500 steps; and **filter_only**: the same, on the web captions the
#    filter kept and no synthetic ones — the arm that splits CapFilt's gain between its filter
#    and its captioner.
#
# The last three arms train as many steps as the noisy one, but they are not equal compute: each
# also paid for steps 1–3. What each arm paid, from the manifest:

# %%
manifest = zoo.manifest("blip")
arms, boots, compute = manifest["arms"], manifest["bootstrapping"], manifest["compute"]
print(f"{'arm':17}{'pretraining steps':>18}{'fine-tuning steps':>18}{'images captioned':>17}{'captions judged':>16}")
for arm, c in compute.items():
    print(f"{arm:17}{c['pretrain_steps']:>18,}{c.get('finetune_steps', 0):>18,}{c.get('captioned_images', 0):>17,}"
          f"{c.get('judged_captions', 0):>16,}")
print(f"(a step: {manifest['recipe']['batch_size']} pairs through ITC + ITM + LM; a fine-tuning step the same "
      "batch through LM only, or ITC + ITM only)")

# %% [markdown]
# First the filter, fine-tuned, on each seed's 4,096 web captions (bad = describes another scene)
# and on the 4,096 synthetic captions of each decoding (bad = not exactly true of the scene), and
# what the bootstrapped sets hold:

# %%
fmt = lambda e: f"{100 * e['value']:.1f} [{100 * e['low']:.1f}, {100 * e['high']:.1f}]"  # noqa: E731
print(f"{'seed':5}{'captions':20}{'bad':>6}{'precision':>24}{'recall':>24}{'clean or true in the set':>27}")
for b in boots:
    f = b["capfilt_nucleus"]["filter"]
    print(f"{b['seed']:<5}{'web':20}{f['noisy']:>6}{fmt(f['precision']):>24}{fmt(f['recall']):>24}"
          f"{100 * b['web_clean_share']:>19.1f} % raw, {100 * b['filter_only']['clean_or_true']:.1f} % kept")
    for how in ("nucleus", "beam"):
        part = b[f"capfilt_{how}"]
        sf = part["synthetic_filter"]
        print(f"{'':5}{'synthetic, ' + how:20}{sf['noisy']:>6}{fmt(sf['precision']):>24}{fmt(sf['recall']):>24}"
              f"{100 * part['clean_or_true']:>19.1f} % of {part['pairs']:,} pairs (web + synthetic kept)")
recalls = [b["capfilt_nucleus"]["filter"]["recall"]["value"] for b in boots]
assert min(recalls) >= 0.8, "the filter's recall of noisy captions must reach 80 % in every seed"

# %% [markdown]
# Then the four arms on the same ShapesBench sets (seed 1234): captioning CIDEr-D and BLEU-4
# (greedy), the share of captions exactly true, image→text R@1 by ITC among 256, ITM accuracy.

# %%
METRICS = {"cider": "CIDEr-D", "bleu4": "BLEU-4", "caption_true": "true", "i2t_r1_itc": "R@1 ITC", "itm": "ITM"}


def values(arm, metric):
    return [run[metric]["value"] if isinstance(run[metric], dict) else run[metric] for run in arms[arm]]


print(f"{'arm':17}" + "".join(f"{v:>20}" for v in METRICS.values()) + f"{'pairs':>8}")
for arm in arms:
    cells = [f"{sum(values(arm, m)) / 3:6.3f} ({min(values(arm, m)):.3f}–{max(values(arm, m)):.3f})"
             for m in METRICS]
    pairs = [run.get("pairs", 4096 + 512) for run in arms[arm]]
    print(f"{arm:17}" + "".join(f"{c:>20}" for c in cells) + f"{sum(pairs) // 3:8,}")

def verdict(a, b, name_b):
    gaps = [x - y for x, y in zip(a, b)]
    return ("every seed above " + name_b if min(gaps) > 0 and min(a) > max(b) else
            "every seed below " + name_b if max(gaps) < 0 and max(a) < min(b) else "the seeds overlap"), gaps


verdicts = {}
COMPARISONS = [("capfilt_nucleus", "noisy"), ("capfilt_beam", "noisy"), ("filter_only", "noisy"),
               ("capfilt_nucleus", "filter_only")]  # the last: what the captioner adds to the filter
for arm, base in COMPARISONS:
    for metric, label in METRICS.items():
        v, gaps = verdict(values(arm, metric), values(base, metric), base)
        verdicts[(arm, base, metric)] = v
        print(f"{arm:16} − {base:12} {label:8} per seed {' '.join(f'{d:+.3f}' for d in gaps)}: {v}")

fig, axes = viz.plt.subplots(1, len(METRICS), figsize=(14, 3.2))
for ax, (metric, label) in zip(axes, METRICS.items()):
    for x, arm in enumerate(arms):
        for j, run in enumerate(arms[arm]):
            e = run[metric]
            if isinstance(e, dict):
                ax.errorbar(x + 0.12 * (j - 1), e["value"], yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]],
                            fmt="o", ms=3, color=f"C{x}", capsize=2)
            else:
                ax.plot(x + 0.12 * (j - 1), e, "o", ms=3, color=f"C{x}")
    ax.set(xticks=range(len(arms)), xticklabels=[a.replace("_", "\n") for a in arms], title=label,
           ylabel=label if metric in ("cider", "bleu4") else "fraction")
fig.suptitle("each arm's three seeds, with 95 % intervals where the metric has one", y=1.02)
fig.tight_layout()
viz.plt.show()

# %% [markdown]
# **Nucleus or beam for the synthetic captions?** The paper found that the diverse captions of
# nucleus sampling made a better bootstrapped set than beam search's safe ones, although the
# filter throws more of them out. Beam search here writes fewer distinct captions, more of them
# exactly true, and the filter keeps more of them; the models pretrained on the two sets:

# %%
for metric, label in METRICS.items():
    v, gaps = verdict(values("capfilt_nucleus", metric), values("capfilt_beam", metric), "capfilt_beam")
    verdicts[("capfilt_nucleus", "capfilt_beam", metric)] = v
    print(f"nucleus − beam {label:8} per seed {' '.join(f'{d:+.3f}' for d in gaps)}: {v}")
for how in ("nucleus", "beam"):
    kept = [b[f"capfilt_{how}"]["synthetic_kept"] for b in boots]
    true = [b[f"capfilt_{how}"]["synthetic_true"]["value"] for b in boots]
    distinct = [b[f"capfilt_{how}"]["distinct_synthetic"] for b in boots]
    print(f"{how:8} synthetic captions: distinct {min(distinct):,}–{max(distinct):,} of 4,096, exactly true "
          f"{100 * min(true):.1f}–{100 * max(true):.1f} %, kept by the filter {min(kept):,}–{max(kept):,}")
print("examples (seed 0), nucleus:", *boots[0]["capfilt_nucleus"]["examples"][:4], sep="\n  ")
print("beam:", *boots[0]["capfilt_beam"]["examples"][:4], sep="\n  ")

# %%
chapter_seconds = time.perf_counter() - chapter_start
print(f"chapter: {chapter_seconds:.0f} s on this machine")
# the claims of "What we saw" below, checked against this run and the manifest's figures
before = [b["filter_before_finetune"]["recall"]["value"] for b in boots]
assert max(before) < min(recalls), "fine-tuning the filter on clean pairs raised its recall in every seed"
for arm in ("capfilt_nucleus", "capfilt_beam", "filter_only"):
    for metric in ("i2t_r1_itc", "itm", "caption_true"):
        assert verdicts[(arm, "noisy", metric)] == "every seed above noisy", (arm, metric)
for metric in ("cider", "caption_true", "bleu4"):  # the captioner's captions cost captioning quality
    assert verdicts[("capfilt_nucleus", "filter_only", metric)] == "every seed below filter_only", metric
assert verdicts[("capfilt_nucleus", "filter_only", "i2t_r1_itc")] == "the seeds overlap"
assert verdicts[("capfilt_nucleus", "filter_only", "itm")] == "every seed above filter_only"  # the small ITM gain
syn_recall = [b[f"capfilt_{h}"]["synthetic_filter"]["recall"]["value"] for b in boots for h in ("nucleus", "beam")]
assert max(syn_recall) < 0.6, "the filter now removes most untrue synthetic captions: update What we saw"
assert all(b[f"capfilt_{h}"]["clean_or_true"] < b["web_clean_share"] < b["filter_only"]["clean_or_true"]
           for b in boots for h in ("nucleus", "beam")), "the sets' clean-or-true shares changed order"
assert all(b["capfilt_nucleus"]["distinct_synthetic"] > b["capfilt_beam"]["distinct_synthetic"] for b in boots)
for metric in ("bleu4", "i2t_r1_itc"):
    assert verdicts[("capfilt_nucleus", "capfilt_beam", metric)] == "every seed below capfilt_beam", metric
for metric in ("cider", "caption_true", "itm"):
    assert verdicts[("capfilt_nucleus", "capfilt_beam", metric)] == "the seeds overlap", metric
assert all(b["capfilt_nucleus"]["synthetic_true"]["value"] < b["capfilt_beam"]["synthetic_true"]["value"]
           for b in boots)
assert live_eval["cider"].high < baseline["cider"].low
assert parts["decoder's own self-attn"] / total < 0.1

# %% [markdown]
# ## What we saw
#
# * **One Transformer, three jobs.** The three modes differ only in their masks and first token:
#   editing the decoder's own self-attention leaves the text encoder and the image-grounded
#   encoder bit-identical, and the decoder adds under a tenth of the model's parameters (the
#   table in section 1). Trained together on ITC + ITM + LM, every head's loss falls within the
#   200 live steps.
# * **It writes captions.** The zoo BLIP's greedy captions score above the
#   nearest-training-caption baseline (chapter 02's CLIP picking the best of the training
#   captions) with the intervals apart (section 4's table, asserted). 200 live steps are far
#   from enough: the live model's CIDEr-D is under the baseline's.
# * **Label smoothing over the whole vocabulary puts probability on words no caption uses.**
#   From the same start and the same 150 fine-tuning steps, the captioner trained with ε = 0.1
#   put over 10 % of each step's probability on the 568 non-caption tokens (the equation's
#   optimum holds 9.4 % there), and nucleus sampling drew such a word at several percent of its
#   steps, garbling captions (printed); with ε = 0 both fall to a fraction of a percent (the
#   table in section 3, asserted). The zoo BLIP is trained with ε = 0; the CapFilt arms below were
#   not re-run at ε = 0.1, so what the smoothing did to them is not measured.
# * **The filter catches the web noise, and little of the captioner's errors.** Fine-tuned on
#   512 clean pairs, the ITM filter removed over 99 % of the noisy web captions in every seed
#   (target 80 %), and threw out some clean ones with them (its precision in section 6). Before
#   that fine-tuning it caught fewer, in every seed. On the synthetic captions, which are exactly
#   true of their scene in only about one case in seven (nucleus) or five (beam), it removed
#   well under 60 % of the untrue ones (asserted). How far the untrue ones are from the truth is
#   not measured here; a caption one attribute off is the hard kind of negative that chapter 04
#   found ITM weakest on, which would fit, but no arm tests it. So the
#   bootstrapped sets hold a lower share of clean-or-true pairs than the raw web set, while the
#   web captions the filter keeps are almost all clean.
# * **CapFilt helped, and the filter did the helping.** At equal pretraining steps, every
#   bootstrapped arm beat the raw noisy set in every seed on retrieval, ITM and exactly-true
#   captions. The filter-only arm, which drops the synthetic captions, captioned better than
#   CapFilt with nucleus captions in every seed (CIDEr-D, BLEU-4 and exactly-true captions) and
#   retrieved as well (the seeds overlap); CapFilt's synthetic captions bought a small ITM gain
#   and cost captioning quality. That reproduces the paper's filter effect, and not its captioner
#   effect: our synthetic captions are mostly not exactly true (about 14 % with nucleus sampling),
#   and our filter lets most of the untrue ones through; whether a captioner that writes mostly
#   true captions would add to the filter is untested at our scale. None of these
#   arms is equal compute with the noisy one: each also paid for the noisy pretraining, the
#   fine-tunes and the judging (the compute table).
# * **Nucleus vs beam: not the paper's direction.** Nucleus sampling wrote more distinct
#   synthetic captions and fewer exactly true ones than beam search in every seed. The model
#   pretrained on beam's set was ahead on BLEU-4 and R@1 in every seed; on CIDEr-D, exactly-true
#   captions and ITM the seeds overlap. The paper found nucleus's diversity the better teacher;
#   at our scale, where the diverse captions are more often untrue and the filter keeps most of
#   them, it is not.
#
# **Exercises:** `exercises/06_blip.ipynb` — the three modes' masks for padding at either end,
# greedy decoding that runs the unfinished captions only, nucleus filtering, BLEU's clipped n-gram
# precision on punctuated mixed-case text, and an experiment: the filter's precision and recall on
# web captions and on the captioner's synthetic captions; `minivlm check exercises/06_blip.ipynb`
# tells you what is wrong.
#
# **With internet:** `blip_from_hf(BlipForConditionalGeneration.from_pretrained(
# "Salesforce/blip-image-captioning-base"))` loads Salesforce's weights into this from-scratch
# model (the post-LN option of the block exists for it); the tests check it against transformers
# on tiny random configs, offline.
#
# **References.** Li et al., *BLIP* (ICML 2022); Li et al., *ALBEF* (NeurIPS 2021); Holtzman et
# al., *The Curious Case of Neural Text Degeneration* (nucleus sampling, ICLR 2020); Papineni et
# al., *BLEU* (ACL 2002); Vedantam et al., *CIDEr* (CVPR 2015); Devlin et al., *BERT* (NAACL 2019).
