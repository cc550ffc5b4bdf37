"""Checks for the chapter 03 exercises (exercises/03_vilt): ViLT's single-stream input, BERT's
masking for masked-language modelling, the MLM loss, and the image-text-matching pairs.

The deterministic pieces are compared with the library (minivlm.models.vilt, minivlm.losses) on
fresh random inputs. Masking and ITM pairs are random, so their checks draw many batches and
measure: the rules that must hold on every draw (padding is never masked, a label is the original
word, a negative caption describes other objects) and the rates, with tolerances many standard
deviations wide, so that a correct implementation never fails them. When an answer is wrong the
check tries to name the plausible mistake: a forgotten modality embedding, image tokens first,
padding chosen for masking, labels on every position, every chosen word masked, a loss averaged
over every position, a negative that still describes the image, inverted labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.data.masking import IGNORE_INDEX
from minivlm.data.shapesworld import SEEN_COMPOSITIONS, ShapesWorld
from minivlm.data.tokenizer import Tokenizer
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_dtype,
    expect_shape,
    fresh_generator,
    is_close,
    register,
    tensor_answer,
)
from minivlm.losses import mlm_loss as library_mlm_loss


def _pair(name: str, got, what: str) -> tuple:
    if not (isinstance(got, tuple) and len(got) == 2):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"{name} must return a tuple {what}, got {type(got).__name__}{extra}")
    return got



# ----------------------------------------------------------------------------- 03.single_stream_input


def reference_single_stream_input(text_tokens, image_tokens, modality, text_mask):
    """[text + modality[0] ; image + modality[1]] and the joint padding mask, as `ViLT.forward` builds them."""
    b, n = image_tokens.shape[:2]
    x = torch.cat([text_tokens + modality[0], image_tokens + modality[1]], dim=1)  # (B, T + N, D)
    image_valid = torch.ones(b, n, dtype=torch.bool, device=text_mask.device)  # every image token is real
    return x, torch.cat([text_mask.bool(), image_valid], dim=1)  # (B, T + N)


@register("03.single_stream_input", title="One sequence [text ; image] with modality embeddings and a joint mask")
def check_single_stream_input(fn) -> None:
    g = fresh_generator()
    for b, t, n, d in ((3, 5, 7, 8), (4, 9, 4, 16)):  # T != N, so a wrong axis cannot pass by accident
        text = torch.randn(b, t, d, generator=g)
        image = torch.randn(b, n, d, generator=g)
        modality = torch.randn(2, d, generator=g)
        lengths = torch.randint(2, t + 1, (b,), generator=g)
        lengths[0], lengths[1] = t, 2  # one full row, one padded row, the rest at random
        text_mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T) True on real tokens, right padding
        given = (text.clone(), image.clone(), modality.clone(), text_mask.clone())
        x, valid = _pair("single_stream_input", call(fn, *given), "(x, valid)")
        for name, before, after in zip(("text_tokens", "image_tokens", "modality", "text_mask"),
                                       (text, image, modality, text_mask), given):
            if not torch.equal(before, after):
                raise GradingFailure(f"{name} was modified in place: `a + b` makes a new tensor, `a += b` changes "
                                     f"the caller's (the model would see its embeddings shifted twice)")
        x, valid = tensor_answer("x", x), tensor_answer("valid", valid)
        want_x, want_valid = reference_single_stream_input(text, image, modality, text_mask)

        # ---- x: text first, each token + its modality's row
        expect_shape(f"x (B, T + N, D) for T={t} text and N={n} image tokens", x, want_x.shape)
        if not is_close(x, want_x):
            m0, m1 = modality
            named = [
                (torch.cat([text, image], 1), "the modality embeddings are missing: add modality[0] to every text "
                                              "token and modality[1] to every image token"),
                (torch.cat([text + m0, image + m0], 1), "both modalities get row 0: the image tokens take modality[1]"),
                (torch.cat([text + m1, image + m1], 1), "both modalities get row 1: the text tokens take modality[0]"),
                (torch.cat([text + m1, image + m0], 1), "the modality rows are swapped: text is row 0, image is row 1"),
                (torch.cat([image + m1, text + m0], 1), "the image tokens come first: ViLT's sequence is [text ; image] "
                                                        "(the pooled token is the first text token)"),
                (torch.cat([image + m0, text + m1], 1), "the image tokens come first: ViLT's sequence is [text ; image] "
                                                        "(the pooled token is the first text token)"),
                (torch.cat([(text + m0) * text_mask[..., None], image + m1], 1),
                 "the padded text tokens were zeroed: leave x as it is; the mask (valid) is what hides padding"),
            ]
            for candidate, message in named:
                if is_close(x, candidate):
                    raise GradingFailure(message)
            expect_close("x", x, want_x)

        # ---- valid: the text mask, then True for every image token
        if tuple(valid.shape) == (t + n, b):
            raise GradingFailure(f"valid is transposed: it must be (B, T + N) = {(b, t + n)}, one row per sequence, "
                                 f"got {(t + n, b)}")
        if tuple(valid.shape) == (b, 1, t + n):
            raise GradingFailure("valid must be (B, T + N); masks.padding(valid) turns it into the (B, 1, T + N) "
                                 "attention mask later")
        expect_shape(f"valid (B, T + N) for T={t} text and N={n} image tokens", valid, want_valid.shape)
        if valid.dtype != torch.bool:
            raise GradingFailure(f"valid must be a bool tensor (True = a real token), got {valid.dtype}: "
                                 f"torch.cat of a bool mask with torch.ones(...) needs dtype=torch.bool on the ones")
        if not torch.equal(valid, want_valid):
            if torch.equal(valid, torch.cat([torch.ones(b, n, dtype=torch.bool), text_mask], 1)):
                raise GradingFailure("valid has the image part first: it must follow x, text then image")
            if not valid[:, t:].any():
                raise GradingFailure("the image tokens are marked invalid: every image token is real, so valid is "
                                     "True on all N of them")
            if valid[:, :t].all():
                raise GradingFailure("padded text positions are marked valid: the text part of valid is text_mask "
                                     "(False on padding), so that no token attends to padding")
            if torch.equal(valid[:, :t], ~text_mask):
                raise GradingFailure("the text mask is inverted: text_mask is already True on real tokens; use it as "
                                     "it is")
            expect_close("valid", valid, want_valid)


# ----------------------------------------------------------------------------- 03.mlm_mask


def _mlm_batch(tok: Tokenizer, b: int, t: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) ids: "<bos> words <eos>" right-padded, with an extra special token inside some rows."""
    words = torch.tensor(sorted(set(range(len(tok))) - tok._special_ids))
    ids = torch.full((b, t), tok.pad_id, dtype=torch.long)
    extra = [tok.id("<sep>"), tok.id("<image>"), tok.unk_id]
    for i in range(b):
        length = int(torch.randint(t // 2, t + 1, (1,), generator=g))  # <bos> + words + <eos>
        ids[i, :length] = words[torch.randint(len(words), (length,), generator=g)]
        ids[i, 0], ids[i, length - 1] = tok.bos_id, tok.eos_id
        if i % 3 == 0:  # a special token among the words (an <unk>, a <sep>): never chosen either
            ids[i, int(torch.randint(1, length - 1, (1,), generator=g))] = extra[i % len(extra)]
    return ids


def _mlm_draw(fn, ids, special, mask_id, words, prob, pad_id) -> dict:
    """One call of the learner's mlm_mask, with every rule that must hold on each draw; returns counts."""
    given = ids.clone()
    kwargs = {} if prob is None else {"prob": prob}
    inputs, labels = _pair("mlm_mask", call(fn, given, special.clone(), mask_id, words.clone(), **kwargs),
                           "(inputs, labels)")
    if not torch.equal(given, ids):
        raise GradingFailure("ids was modified in place: build inputs from a copy (ids.clone()); the caller still "
                             "needs the original words, and the labels are made from them")
    inputs, labels = tensor_answer("inputs", inputs), tensor_answer("labels", labels)
    expect_shape("inputs", inputs, ids.shape)
    expect_shape("labels", labels, ids.shape)
    expect_dtype("inputs", inputs, "int")
    expect_dtype("labels (cross-entropy targets)", labels, "int")

    is_pad = ids == pad_id
    is_special = torch.isin(ids, special) & ~is_pad
    changed = inputs != ids
    if (changed & is_pad).any():
        raise GradingFailure("padding was masked or replaced: <pad> positions are not text; choose real words only "
                             "(ids not in special_ids)")
    if (changed & is_special).any():
        raise GradingFailure("special tokens (<bos>, <eos>, <unk>, <sep> ...) were replaced: never choose an id that "
                             "is in special_ids")
    chosen = labels != IGNORE_INDEX
    if not (labels == IGNORE_INDEX).any():
        if torch.equal(labels, ids):
            raise GradingFailure("labels on every position: the label is the original id only where the word was "
                                 "chosen, and -100 everywhere else (the cross-entropy skips -100)")
        if (labels == 0).any():
            raise GradingFailure("the positions that were not chosen must be labelled -100 (the cross-entropy's "
                                 "ignore_index), not 0: 0 is <pad>, a real class")
        raise GradingFailure("no label is -100: label only the chosen words, -100 everywhere else")
    if (chosen & is_pad).any():
        raise GradingFailure("padding positions carry a label: padding is never chosen, its label is -100")
    if (chosen & is_special).any():
        raise GradingFailure("special tokens (<bos>, <eos> ...) carry a label: they are never chosen, their label "
                             "is -100")
    if (changed & ~chosen).any():
        raise GradingFailure("a word was replaced in inputs but its label is -100: every chosen word, and only a "
                             "chosen one, is changed, and its label is its original id")
    wrong = chosen & (labels != ids)
    if wrong.any():
        if (labels[wrong] == mask_id).all():
            raise GradingFailure("labels hold the <mask> id: the label is the original word (from ids), the one "
                                 "the model must recover")
        if (labels[wrong] == inputs[wrong]).all():
            raise GradingFailure("labels hold the replaced word (taken from inputs after masking): the label is the "
                                 "original id, from ids")
        raise GradingFailure("at a chosen position the label must be the original id from ids")
    random = changed & (inputs != mask_id)
    if torch.isin(inputs[random], special).any():
        raise GradingFailure("a random replacement is a special token (<pad>, <bos>, <loc_3> ...): draw the random "
                             "words from word_ids only")
    if not torch.isin(inputs[random], words).all():
        raise GradingFailure("a random replacement is not one of word_ids: draw the random words from word_ids")
    real = ~torch.isin(ids, special)
    return {"real": int(real.sum()), "all": ids.numel(), "chosen": int(chosen.sum()),
            "masked": int((chosen & (inputs == mask_id)).sum()), "random": int(random.sum()),
            "kept": int((chosen & ~changed).sum())}


def _mlm_stats(fn, tok, g, draws: int, prob: float | None) -> dict:
    special = torch.tensor(sorted(tok._special_ids))
    words = torch.tensor(sorted(set(range(len(tok))) - tok._special_ids))
    total = {"real": 0, "all": 0, "chosen": 0, "masked": 0, "random": 0, "kept": 0}
    for _ in range(draws):
        t = int(torch.randint(12, 25, (1,), generator=g))
        counts = _mlm_draw(fn, _mlm_batch(tok, 64, t, g), special, tok.mask_id, words, prob, tok.pad_id)
        total = {k: total[k] + counts[k] for k in total}
    return total


@register("03.mlm_mask", title="BERT's masking: 15 % of the words, 80 % <mask> / 10 % random / 10 % kept")
def check_mlm_mask(fn) -> None:
    g = fresh_generator()
    tok = Tokenizer.from_world()
    # ~30 000 real words, ~4 500 chosen: the tolerances below are 7 standard deviations or more.
    s = _mlm_stats(fn, tok, g, draws=60, prob=None)
    rate, rate_all = s["chosen"] / s["real"], s["chosen"] / s["all"]
    if abs(rate - 0.15) > 0.025:
        if abs(rate_all - 0.15) < abs(rate - 0.15):
            raise GradingFailure(f"{rate:.1%} of the real words were chosen, {rate_all:.1%} of all positions: you "
                                 f"choose 15 % of all positions (padding and specials included); choose each real "
                                 f"word with probability prob instead")
        raise GradingFailure(f"{rate:.1%} of the real words were chosen (with the default prob); expected about 15 %: "
                             f"choose each real word independently with probability prob")
    masked, random, kept = (s[k] / s["chosen"] for k in ("masked", "random", "kept"))
    if masked > 0.97:
        raise GradingFailure("every chosen word became <mask>: BERT's recipe masks 80 % of the chosen words, "
                             "replaces 10 % with a random word and keeps 10 % unchanged (so the model must model "
                             "every word, not only the <mask> positions)")
    if abs(masked - 0.8) > 0.05 or abs(random - 0.1) > 0.04 or abs(kept - 0.1) > 0.04:
        raise GradingFailure(f"of the chosen words {masked:.1%} became <mask>, {random:.1%} a random word and "
                             f"{kept:.1%} stayed unchanged; expected 80 % / 10 % / 10 % (one draw per word decides "
                             f"which)")
    # prob is a parameter, not a constant
    s = _mlm_stats(fn, tok, g, draws=15, prob=0.4)
    rate = s["chosen"] / s["real"]
    if abs(rate - 0.4) > 0.04:
        raise GradingFailure(f"with prob=0.4, {rate:.1%} of the real words were chosen: use the prob argument, not "
                             f"a fixed 15 %")


# ----------------------------------------------------------------------------- 03.mlm_loss


@register("03.mlm_loss", title="The MLM loss: cross-entropy over the chosen words only")
def check_mlm_loss(fn) -> None:
    g = fresh_generator()
    for b, t, v in ((4, 7, 11), (3, 10, 13)):
        logits = torch.randn(b, t, v, generator=g) * 2
        labels = torch.randint(v, (b, t), generator=g)
        chosen = torch.rand(b, t, generator=g) < 0.3
        chosen[0, 0], chosen[0, 1] = True, False  # at least one of each
        labels[~chosen] = IGNORE_INDEX
        leaf = logits.clone().requires_grad_(True)
        got = call(fn, leaf, labels.clone())
        if isinstance(got, (int, float)):
            raise GradingFailure("mlm_loss returned a Python number: keep it a tensor attached to the logits (no "
                                 ".item() or float()), or training gets no gradient")
        got = tensor_answer("the loss", got)
        if got.numel() != 1:
            raise GradingFailure(f"mlm_loss must return one number (a scalar), got a tensor of shape "
                                 f"{tuple(got.shape)}: take the mean over the chosen positions")
        if not got.requires_grad:
            raise GradingFailure("the loss is detached from the logits: no gradient would reach the model")
        want = library_mlm_loss(logits, labels)
        if is_close(got.reshape(()), want):
            continue
        flat_logits, flat_labels = logits.reshape(-1, v), labels.reshape(-1)
        per_word = F.cross_entropy(flat_logits, flat_labels, reduction="none")  # 0 where the label is -100
        named = [
            (per_word.sum() / (b * t), "the loss is averaged over every position: divide by the number of chosen "
                                       "words, not by B·T (the -100 positions are not part of the mean)"),
            (per_word.sum(), "the loss is summed: take the mean over the chosen words"),
            (F.cross_entropy(flat_logits, flat_labels.clamp(min=0)),
             "the positions labelled -100 are counted (as word 0): only the chosen words enter the loss"),
            (F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1)),
             "the logits and labels are shifted by one: MLM predicts the word at its own position (where the "
             "<mask> is), not the next word as a causal language model does"),
            (F.cross_entropy(logits[:, 1:].reshape(-1, v), labels[:, :-1].reshape(-1)),
             "the logits and labels are shifted by one: MLM predicts the word at its own position (where the "
             "<mask> is), not the next word as a causal language model does"),
            (F.cross_entropy(flat_logits.softmax(-1), flat_labels),
             "a softmax before the cross-entropy: F.cross_entropy takes the raw logits (it applies log-softmax "
             "itself)"),
        ]
        for candidate, message in named:
            if is_close(got.reshape(()), candidate):
                raise GradingFailure(message)
        raise GradingFailure(f"mlm_loss on random {b}×{t}×{v} logits: expected {float(want):.5f}, "
                             f"got {float(got):.5f}")
    # a batch in which no word was chosen (short captions, a small batch): nothing to predict
    logits = torch.randn(2, 5, 7, generator=g)
    got = call(fn, logits, torch.full((2, 5), IGNORE_INDEX))
    got = torch.as_tensor(got).detach().float().reshape(-1)
    if got.numel() == 1 and torch.isnan(got).all():
        raise GradingFailure("a batch in which no word was chosen gives NaN (a mean over zero words): return 0 "
                             "there; one NaN loss would ruin the whole training")
    expect_close("mlm_loss when no word is chosen", got.reshape(()), torch.tensor(0.0))


# ----------------------------------------------------------------------------- 03.itm_pairs


def _itm_batch(world: ShapesWorld, compositions, b: int) -> tuple[list, list[str]]:
    """Scenes over a few colour-shape pairs, so that many share their objects (in either order) and
    their captions differ only by paraphrase: a negative must differ in objects, not only in words."""
    while True:
        scenes = world.sample(b, n_objects=(1, 2), compositions=compositions)
        if len({tuple(sorted(s.names)) for s in scenes}) > 1:
            return scenes, [world.caption(s) for s in scenes]


@register("03.itm_pairs", title="ITM pairs: half the captions swapped for one of other objects")
def check_itm_pairs(fn) -> None:
    g = fresh_generator()
    world = ShapesWorld(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), split="train")
    b, draws = 24, 30
    negative_count = torch.zeros(b)
    wrong = []  # negatives whose caption is true of their own scene
    for _ in range(draws):
        picks = torch.randperm(len(SEEN_COMPOSITIONS), generator=g)[:3].tolist()
        scenes, captions = _itm_batch(world, [SEEN_COMPOSITIONS[k] for k in picks], b)
        given = list(captions)
        texts, labels = _pair("itm_pairs", call(fn, list(scenes), given), "(captions, labels)")
        if given != captions:
            raise GradingFailure("the captions list was modified in place: build a new list of texts")
        if not isinstance(texts, (list, tuple)) or not all(isinstance(c, str) for c in texts):
            raise GradingFailure(f"the first result must be a list of B strings, got {type(texts).__name__}")
        if len(texts) != b:
            raise GradingFailure(f"expected {b} captions (one per scene), got {len(texts)}")
        labels = tensor_answer("labels", labels)
        expect_shape("labels", labels, (b,))
        if labels.dtype == torch.bool or labels.is_floating_point():
            raise GradingFailure(f"labels must be integer class indices (torch.long) for the cross-entropy, got "
                                 f"{labels.dtype}")
        if not ((labels == 0) | (labels == 1)).all():
            raise GradingFailure(f"labels must be 1 (match) or 0 (no match), got values {sorted(set(labels.tolist()))}")

        own = torch.tensor([texts[i] == captions[i] for i in range(b)]).long()  # the scene's own caption, word for word
        if torch.equal(labels, 1 - own):
            raise GradingFailure("the labels are inverted: 1 means the caption matches the image (the scene's own "
                                 "caption), 0 means it does not")
        if ((labels == 1) & (own == 0)).any():
            i = int(((labels == 1) & (own == 0)).nonzero()[0])
            raise GradingFailure(f"pair {i} is labelled 1 (match) but its caption {texts[i]!r} is not the scene's "
                                 f"own caption {captions[i]!r}")
        for i in (labels == 0).nonzero().flatten().tolist():
            sources = [j for j in range(b) if captions[j] == texts[i]]  # the scenes this caption may come from
            if not sources:
                raise GradingFailure(f"pair {i}: the negative caption {texts[i]!r} is not one of the batch's captions")
            if all(sorted(scenes[j].names) == sorted(scenes[i].names) for j in sources):
                others = [j for j in sources if j != i and scenes[j].names != scenes[i].names]
                wrong.append({"i": i, "text": texts[i], "own": captions[i], "names": scenes[i].names,
                              "reordered": scenes[others[0]].names if others else None})
        negative_count += (labels == 0).float()

    # Negatives true of their image, judged over every batch (which mistake it is shows in the pattern):
    # a partner listing the same objects in another order; the scene's own caption; another paraphrase.
    if wrong:
        if all(w["reordered"] is not None for w in wrong):
            w = wrong[0]
            raise GradingFailure(
                f"pair {w['i']}: the negative {w['text']!r} comes from a scene with the same objects listed in another "
                f"order ({w['names']} vs {w['reordered']}): compare the *sets* of objects (e.g. sorted(scene.names)), "
                f"not the lists")
        paraphrases = [w for w in wrong if w["text"] != w["own"]]
        if not paraphrases:
            w = wrong[0]
            raise GradingFailure(f"pair {w['i']} is labelled 0 (no match) but its caption is the scene's own caption "
                                 f"{w['text']!r}: a negative takes the caption of another scene, one with other objects")
        w = paraphrases[0]
        raise GradingFailure(
            f"pair {w['i']}: the negative {w['text']!r} describes the same objects as the scene's own caption "
            f"{w['own']!r} (another paraphrase): it is true of the image, so it is no negative; take the caption of a "
            f"scene whose set of objects differs")

    share = float(negative_count.sum()) / (b * draws)
    if share > 0.95:
        raise GradingFailure("every pair is a negative: only half of the pairs (chosen at random) get another "
                             "scene's caption; the others keep their own, label 1")
    if share < 0.05:
        raise GradingFailure("no pair is a negative: half of the pairs (chosen at random) get the caption of a "
                             "scene with other objects, label 0")
    if abs(share - 0.5) > 0.15:
        raise GradingFailure(f"{share:.0%} of the pairs are negatives; expected about half")
    if ((negative_count == 0) | (negative_count == draws)).any():
        k = int(((negative_count == 0) | (negative_count == draws)).nonzero()[0])
        raise GradingFailure(f"pair {k} is {'always' if negative_count[k] == draws else 'never'} a negative over "
                             f"{draws} batches: choose which pairs get a wrong caption at random")
