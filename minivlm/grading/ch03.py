"""Checks for the chapter 03 exercises (exercises/03_vilt): the single stream of a region-based
ViLT (modality embeddings and a joint attention mask over padded words and empty region slots),
BERT's masking for masked-language modelling, the MLM loss, the image-text-matching pairs, and
an experiment: does masked-word prediction read the image (the true image against a shuffled one).

The deterministic pieces are compared with the library (minivlm.models.vilt, minivlm.losses) on
fresh random inputs, with their gradients, a size-1 case and the inputs checked for changes
afterwards. Masking and ITM pairs are random, so their checks draw many batches and measure: the
rules that must hold on every draw (padding is never masked, a label is the original word, a
negative caption describes other objects, labels of the exact dtype the cross-entropy takes), the
rates, with tolerances many standard deviations wide, and the structure of the draws, which rates
alone do not show: a coin per word (not per caption or per position of the batch), a random word
per replaced position, a coin per pair (not per batch), and two calls that differ (no seed fixed
inside). When an answer is wrong the check tries to name the plausible mistake: a forgotten
modality embedding, image tokens first, the empty slots or the padding on the wrong side of the
mask; padding chosen for masking, labels on every position, every chosen word masked; a loss
averaged over every position, a detached 0 on a batch with nothing chosen; a negative that still
describes the image, inverted labels.

The experiment `image_ablation(model, images, captions, words)` is run by the check on fresh scenes
with the zoo's `vilt_pretrained` (colour words, then shape words) and with an untrained ViLT, and
each result is recomputed: the MLM head's accuracy on every occurrence of the words, masked, with
the true images and with the images rolled by one. The model must come back unchanged (weights
and mode). The zoo model recovers colours far better with the true image: it reads them there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.data.masking import IGNORE_INDEX
from minivlm.data.shapesworld import COLORS, SEEN_COMPOSITIONS, SHAPES, ShapesWorld
from minivlm.data.tokenizer import Tokenizer
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_gradients,
    expect_shape,
    expect_zero_loss,
    fresh_generator,
    is_close,
    register,
    tensor_answer,
)
from minivlm.losses import mlm_loss as library_mlm_loss
from minivlm.models.vilt import ViLT, ViLTConfig
from minivlm.zoo import store


def _pair(name: str, got, what: str) -> tuple:
    if not (isinstance(got, tuple) and len(got) == 2):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"{name} must return a tuple {what}, got {type(got).__name__}{extra}")
    return got



# ----------------------------------------------------------------------------- 03.joint_input


def reference_joint_input(text_tokens, image_tokens, modality, text_mask, image_mask):
    """[text + modality[0] ; image + modality[1]] and the (B, L, L) attention mask in which every
    query may attend to the real keys only (a padded word, an empty region slot are no keys)."""
    x = torch.cat([text_tokens + modality[0], image_tokens + modality[1]], dim=1)  # (B, T + N, D)
    valid = torch.cat([text_mask.bool(), image_mask.bool()], dim=1)  # (B, T + N)
    return x, valid[:, None, :].expand(-1, valid.shape[1], -1)  # (B, L, L): key j real


def _joint_case(b: int, t: int, n: int, d: int, g: torch.Generator):
    """Right-padded text (one full row, one of length 1) and region slots with empty ones among them
    (every image keeps its CLS slot, slot 0)."""
    text = torch.randn(b, t, d, generator=g)
    image = torch.randn(b, n, d, generator=g)
    modality = torch.randn(2, d, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    lengths[-1] = 1
    text_mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T) True on real tokens
    image_mask = torch.rand(b, n, generator=g) < 0.6
    image_mask[:, 0] = True  # the image CLS is always real
    if n > 2:
        image_mask[0, 1:] = True  # one image with every region
        image_mask[-1, -1] = False  # one with an empty last slot
    return text, image, modality, text_mask, image_mask


def _joint_mistakes(text, image, modality, text_mask, image_mask):
    m0, m1 = modality
    b, t, n = text.shape[0], text.shape[1], image.shape[1]
    _, right = reference_joint_input(text, image, modality, text_mask, image_mask)
    valid = torch.cat([text_mask, image_mask], 1)
    x_named = [
        (torch.cat([text, image], 1), "the modality embeddings are missing: add modality[0] to every text token "
                                      "and modality[1] to every image token"),
        (torch.cat([text + m0, image + m0], 1), "both modalities get row 0: the image tokens take modality[1]"),
        (torch.cat([text + m1, image + m1], 1), "both modalities get row 1: the text tokens take modality[0]"),
        (torch.cat([text + m1, image + m0], 1), "the modality rows are swapped: text is row 0, image is row 1"),
        (torch.cat([image + m1, text + m0], 1), "the image tokens come first: ViLT's sequence is [text ; image] "
                                                "(the pooled token is the first text token)"),
        (torch.cat([(text + m0) * text_mask[..., None], (image + m1) * image_mask[..., None]], 1),
         "the padded tokens were zeroed: leave x as it is; the attention mask is what hides padding"),
    ]
    mask_named = [
        (torch.cat([text_mask, torch.ones(b, n, dtype=torch.bool)], 1)[:, None].expand(b, t + n, t + n),
         "image_mask is ignored: an empty region slot is no token, so no query may attend to it"),
        (valid[:, :, None].expand(b, t + n, t + n),
         "the padding is on the queries (rows): a padded token is a *key* no one may attend to, so block its "
         "column, mask[b, :, j] = False"),
        (valid[:, :, None] & valid[:, None, :], "the padding blocks the rows as well as the columns: padding is a "
                                                "rule about keys; block the padded columns only"),
        (~right, "the mask is inverted: True means 'may attend'"),
        (torch.cat([image_mask, text_mask], 1)[:, None].expand(b, t + n, t + n),
         "the mask has the image part first: it must follow x, text then image"),
    ]
    return x_named, mask_named


@register("03.joint_input", title="One sequence [text ; regions] with modality embeddings and a joint attention "
                                  "mask")
def check_joint_input(fn) -> None:
    g = fresh_generator()
    # T != N != B, so a wrong axis cannot pass by accident; one image, one word, one slot last
    for b, t, n, d in ((3, 5, 7, 8), (4, 9, 4, 16), (1, 1, 1, 4)):
        text, image, modality, text_mask, image_mask = _joint_case(b, t, n, d, g)
        leaves = {"text_tokens": text.clone().requires_grad_(True), "image_tokens": image.clone().requires_grad_(True),
                  "modality": modality.clone().requires_grad_(True)}
        masks_given = {"text_mask": text_mask.clone(), "image_mask": image_mask.clone()}
        got = _pair("joint_input", call(fn, *leaves.values(), *masks_given.values()), "(x, mask)")
        for name, before in (("text_tokens", text), ("image_tokens", image), ("modality", modality),
                             ("text_mask", text_mask), ("image_mask", image_mask)):
            after = leaves.get(name, masks_given.get(name))
            if not torch.equal(after.detach(), before):
                raise GradingFailure(f"{name} was modified in place: `a + b` makes a new tensor, `a += b` changes the "
                                     f"caller's (the model would see its embeddings shifted twice)")
        x, mask = tensor_answer("x", got[0]), tensor_answer("mask", got[1])
        want_x, want_mask = reference_joint_input(text, image, modality, text_mask, image_mask)
        what = f"B={b}, T={t} text and N={n} image tokens"
        x_named, mask_named = _joint_mistakes(text, image, modality, text_mask, image_mask)

        expect_shape(f"x (B, T + N, D) for {what}", x, want_x.shape)
        if not is_close(x, want_x):
            for candidate, message in x_named:
                if is_close(x, candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"x ({what})", x, want_x)
        expect_gradients(f"x ({what})", got[0], reference_joint_input(*leaves.values(), text_mask, image_mask)[0],
                         leaves)

        if tuple(mask.shape) == (b, t + n):
            raise GradingFailure(f"mask is (B, T + N): it is the attention mask, (B, T + N, T + N) = "
                                 f"{(b, t + n, t + n)}, mask[b, i, j] True when token i may attend to token j")
        expect_shape(f"mask (B, T + N, T + N) for {what}", mask, want_mask.shape)
        if mask.dtype != torch.bool:
            raise GradingFailure(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
        if not torch.equal(mask, want_mask):
            for candidate, message in mask_named:
                if torch.equal(mask, candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"mask ({what})", mask, want_mask)


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
    if inputs.dtype != ids.dtype:
        raise GradingFailure(f"inputs must have the dtype of ids ({ids.dtype}): the embedding table reads it; got "
                             f"{inputs.dtype}")
    if labels.dtype != torch.long:
        raise GradingFailure(f"labels must be torch.long (int64), got {labels.dtype}: F.cross_entropy rejects other "
                             f"integer targets ('expected scalar type Long')")

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
    if ids.numel() and not (labels == IGNORE_INDEX).any():
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
    # the structure of the draws, not only their rates: a coin per word, a random word per position
    eligible = real.sum(1) >= 4
    per_column = [(chosen[real[:, j], j]) for j in range(ids.shape[1]) if int(real[:, j].sum()) >= 2]
    replacements = inputs[random]
    return {"real": int(real.sum()), "all": ids.numel(), "chosen": int(chosen.sum()),
            "masked": int((chosen & (inputs == mask_id)).sum()), "random": int(random.sum()),
            "kept": int((chosen & ~changed).sum()),
            "rows_eligible": int(eligible.sum()), "rows_all_chosen": int((eligible & (chosen == real).all(1)).sum()),
            "one_random_word": int(len(replacements) >= 4 and bool((replacements == replacements[0]).all())),
            "column_coins": int(bool(chosen.any()) and all(bool(c.all()) or not bool(c.any()) for c in per_column))}


def _mlm_stats(fn, tok, g, draws: int, prob: float | None) -> dict:
    special = torch.tensor(sorted(tok._special_ids))
    words = torch.tensor(sorted(set(range(len(tok))) - tok._special_ids))
    total: dict[str, int] = {}
    for _ in range(draws):
        t = int(torch.randint(12, 25, (1,), generator=g))
        counts = _mlm_draw(fn, _mlm_batch(tok, 64, t, g), special, tok.mask_id, words, prob, tok.pad_id)
        total = {k: total.get(k, 0) + v for k, v in counts.items()}
    total["draws"] = draws
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
    # the structure of the draws, which the rates alone do not show
    if s["rows_all_chosen"] > 0.05 * s["rows_eligible"]:
        raise GradingFailure(f"{s['rows_all_chosen']} of {s['rows_eligible']} captions of four or more words had every "
                             f"word chosen: one coin per caption decides all its words at once; choose each word "
                             f"with its own coin")
    if s["column_coins"] > s["draws"] // 2:
        raise GradingFailure("the same positions are chosen in every caption of a batch: one coin per position was "
                             "shared by the whole batch; every word of every caption needs its own coin")
    if s["one_random_word"] > s["draws"] // 2:
        raise GradingFailure("every random replacement of a call is the same word: one random word was drawn per "
                             "call; draw a random word for each replaced position")
    masked, random, kept = (s[k] / s["chosen"] for k in ("masked", "random", "kept"))
    if masked > 0.97:
        raise GradingFailure("every chosen word became <mask>: BERT's recipe masks 80 % of the chosen words, "
                             "replaces 10 % with a random word and keeps 10 % unchanged (so the model must model "
                             "every word, not only the <mask> positions)")
    if abs(masked - 0.8) > 0.05 or abs(random - 0.1) > 0.04 or abs(kept - 0.1) > 0.04:
        raise GradingFailure(f"of the chosen words {masked:.1%} became <mask>, {random:.1%} a random word and "
                             f"{kept:.1%} stayed unchanged; expected 80 % / 10 % / 10 % (one draw per word decides "
                             f"which)")
    # two calls on one batch: a seed fixed inside the function masks the same words every time
    special = torch.tensor(sorted(tok._special_ids))
    words = torch.tensor(sorted(set(range(len(tok))) - tok._special_ids))
    ids = _mlm_batch(tok, 64, 16, g)
    first = call(fn, ids.clone(), special.clone(), tok.mask_id, words.clone())
    second = call(fn, ids.clone(), special.clone(), tok.mask_id, words.clone())
    if all(isinstance(x, torch.Tensor) for x in (*first, *second)) and torch.equal(first[0], second[0]) \
            and torch.equal(first[1], second[1]):
        raise GradingFailure("two calls on the same captions masked exactly the same words: a seed fixed inside the "
                             "function makes every batch's masking the same; leave the random state alone")
    # a caption of one word, over many calls: chosen at the rate prob, and every rule on each call
    one = torch.tensor([[tok.bos_id, int(words[int(torch.randint(len(words), (1,), generator=g))]), tok.eos_id]])
    s = {}
    for _ in range(300):
        counts = _mlm_draw(fn, one, special, tok.mask_id, words, None, tok.pad_id)
        s = {k: s.get(k, 0) + v for k, v in counts.items()}
    if not 0.08 <= s["chosen"] / 300 <= 0.23:
        raise GradingFailure(f"a caption of one word ('<bos> w <eos>') had its word chosen in {s['chosen']} of 300 calls; "
                             f"expected about 15 %: every real word is chosen with probability prob, however short "
                             f"the caption")
    # empty batches and batches without a real word: nothing to choose, nothing changed
    for ids in (torch.zeros(0, 7, dtype=torch.long), torch.tensor([[tok.bos_id, tok.eos_id, tok.pad_id]] * 3)):
        _mlm_draw(fn, ids, special, tok.mask_id, words, None, tok.pad_id)
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
    for b, t, v in ((4, 7, 11), (3, 10, 13), (1, 1, 5)):  # the last: one caption of one chosen word
        logits = torch.randn(b, t, v, generator=g) * 2
        labels = torch.randint(v, (b, t), generator=g)
        chosen = torch.rand(b, t, generator=g) < 0.3
        chosen[0, 0] = True  # at least one chosen word
        if t > 1:
            chosen[0, 1] = False  # and one that is not
        labels[~chosen] = IGNORE_INDEX
        leaf = logits.clone().requires_grad_(True)
        given = labels.clone()
        got = call(fn, leaf, given)
        if not torch.equal(given, labels):
            raise GradingFailure("labels was modified in place: leave it as it is (the -100 positions mark what is "
                                 "not scored; the caller may reuse the batch)")
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
            expect_gradients(f"mlm_loss({b}×{t}×{v} logits)", got, library_mlm_loss(leaf, labels).reshape(got.shape),
                             {"logits": leaf})
            continue
        flat_logits, flat_labels = logits.reshape(-1, v), labels.reshape(-1)
        per_word = F.cross_entropy(flat_logits, flat_labels, reduction="none")  # 0 where the label is -100
        named = [
            (per_word.sum() / (b * t), "the loss is averaged over every position: divide by the number of chosen "
                                       "words, not by B·T (the -100 positions are not part of the mean)"),
            (per_word.sum(), "the loss is summed: take the mean over the chosen words"),
            (F.cross_entropy(flat_logits, flat_labels.clamp(min=0)),
             "the positions labelled -100 are counted (as word 0): only the chosen words enter the loss"),
            (F.cross_entropy(flat_logits.softmax(-1), flat_labels),
             "a softmax before the cross-entropy: F.cross_entropy takes the raw logits (it applies log-softmax "
             "itself)"),
        ]
        if t > 1:
            shifted = "the logits and labels are shifted by one: MLM predicts the word at its own position (where " \
                      "the <mask> is), not the next word as a causal language model does"
            named += [(F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1)), shifted),
                      (F.cross_entropy(logits[:, 1:].reshape(-1, v), labels[:, :-1].reshape(-1)), shifted)]
        for candidate, message in named:
            if is_close(got.reshape(()), candidate):
                raise GradingFailure(message)
        raise GradingFailure(f"mlm_loss on random {b}×{t}×{v} logits: expected {float(want):.5f}, "
                             f"got {float(got.detach()):.5f}")
    # batches in which no word was chosen (short captions, a small batch), and a batch of no caption:
    # nothing to predict; the loss is 0, and still a tensor of the graph, so that backward() runs
    for shape in ((2, 5, 7), (0, 4, 7)):
        leaf = torch.randn(*shape, generator=g).requires_grad_(True)
        got = call(fn, leaf, torch.full(shape[:2], IGNORE_INDEX))
        what = f"mlm_loss when no word is chosen (logits {shape})"
        expect_zero_loss(what, got, "words", "the logits")


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
    batch_shares = []  # the share of negatives in each batch
    wrong = []  # negatives whose caption is true of their own scene
    for _ in range(draws):
        picks = torch.randperm(len(SEEN_COMPOSITIONS), generator=g)[:3].tolist()
        scenes, captions = _itm_batch(world, [SEEN_COMPOSITIONS[k] for k in picks], b)
        given, given_scenes = list(captions), list(scenes)
        texts, labels = _pair("itm_pairs", call(fn, given_scenes, given), "(captions, labels)")
        if given != captions:
            raise GradingFailure("the captions list was modified in place: build a new list of texts")
        if any(a is not b for a, b in zip(given_scenes, scenes)) or len(given_scenes) != len(scenes):
            raise GradingFailure("the scenes list was modified in place: leave it as it is")
        if not isinstance(texts, (list, tuple)) or not all(isinstance(c, str) for c in texts):
            raise GradingFailure(f"the first result must be a list of B strings, got {type(texts).__name__}")
        if len(texts) != b:
            raise GradingFailure(f"expected {b} captions (one per scene), got {len(texts)}")
        labels = tensor_answer("labels", labels)
        expect_shape("labels", labels, (b,))
        if labels.dtype == torch.bool or labels.is_floating_point():
            raise GradingFailure(f"labels must be integer class indices (torch.long) for the cross-entropy, got "
                                 f"{labels.dtype}")
        if labels.dtype != torch.long:
            raise GradingFailure(f"labels must be torch.long (int64), got {labels.dtype}: F.cross_entropy rejects "
                                 f"other integer targets ('expected scalar type Long')")
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
        batch_shares.append(float((labels == 0).float().mean()))

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
    uniform = sum(x in (0.0, 1.0) for x in batch_shares)
    if uniform > draws // 3:
        raise GradingFailure(f"in {uniform} of {draws} batches the pairs were all negatives or all matches: one coin per "
                             f"batch decides every pair at once; each pair needs its own coin")
    if abs(share - 0.5) > 0.15:
        raise GradingFailure(f"{share:.0%} of the pairs are negatives; expected about half")
    if ((negative_count == 0) | (negative_count == draws)).any():
        k = int(((negative_count == 0) | (negative_count == draws)).nonzero()[0])
        raise GradingFailure(f"pair {k} is {'always' if negative_count[k] == draws else 'never'} a negative over "
                             f"{draws} batches: choose which pairs get a wrong caption at random, with a fresh draw "
                             f"on every call (a seed fixed inside the function repeats the same choice)")
    # two calls on one batch: a seed fixed inside the function gives the same pairs every time
    picks = torch.randperm(len(SEEN_COMPOSITIONS), generator=g)[:4].tolist()
    scenes, captions = _itm_batch(world, [SEEN_COMPOSITIONS[k] for k in picks], b)
    first = call(fn, list(scenes), list(captions))
    second = call(fn, list(scenes), list(captions))
    if list(first[0]) == list(second[0]) and torch.equal(torch.as_tensor(first[1]), torch.as_tensor(second[1])):
        raise GradingFailure("two calls on the same batch gave exactly the same pairs: a seed fixed inside the "
                             "function makes every batch's negatives the same; leave the random state alone")


# ----------------------------------------------------------------------------- 03.image_ablation


@torch.no_grad()
def reference_image_ablation(model, images, captions, words) -> dict:
    """Every occurrence of `words` in the captions becomes <mask>; the MLM head's accuracy on them
    with each caption's own image ("true") and with the previous scene's image ("shuffled",
    images rolled by one), and their number ("n")."""
    tok = model.get_tokenizer()
    ids, text_mask = model.tokenize(list(captions))  # (B, T) "<bos> words <eos>", padded
    target = torch.isin(ids, torch.tensor([tok.id(w) for w in words]))  # (B, T) the positions to recover
    masked = ids.masked_fill(target, tok.mask_id)
    out = {}
    for arm, shown in (("true", images), ("shuffled", images.roll(1, dims=0))):
        logits = model.mlm_logits(model(shown, masked, text_mask)[:, : ids.shape[1]])  # (B, T, V) text positions
        out[arm] = float((logits.argmax(-1)[target] == ids[target]).float().mean())
    out["n"] = int(target.sum())
    return out


def _state(model) -> tuple:
    return model.training, float(sum(p.detach().double().sum() for p in model.parameters()))


def _ablation_run(fn, model, images, captions, words, what: str) -> dict:
    given_images, given_captions, given_words = images.clone(), list(captions), list(words)
    before = _state(model)
    got = call(fn, model, given_images, given_captions, given_words)
    if not torch.equal(given_images, images):
        raise GradingFailure("images was changed in place (a shuffle written into it?): build the shuffled batch as "
                             "a new tensor and leave the caller's images as they were")
    if given_captions != list(captions) or given_words != list(words):
        raise GradingFailure("captions or words was modified in place: leave the lists as they are")
    after = _state(model)
    if after[0] != before[0]:
        raise GradingFailure(f"the model was left in {'training' if after[0] else 'eval'} mode: measure it in the mode "
                             f"it was given, and change nothing about it")
    if after[1] != before[1]:
        raise GradingFailure("the model's weights changed: the ablation only measures (no optimizer, no training)")
    if not isinstance(got, dict) or any(k not in got for k in ("true", "shuffled", "n")):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"image_ablation must return a dict with keys 'true', 'shuffled' and 'n', got {keys}")
    out = {}
    for key in ("true", "shuffled", "n"):
        value = got[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise GradingFailure(f"{key!r} must be one number, got {type(value).__name__} ({what})")
        out[key] = float(value)
    want = reference_image_ablation(model, images, captions, words)
    if out["n"] != want["n"]:
        raise GradingFailure(f"n = {out['n']:g}, but the captions hold {want['n']} occurrences of the words ({what}): "
                             f"mask every occurrence, in every caption (a caption of two objects has two colours)")
    tol = 1.5 / max(want["n"], 1)
    for key in ("true", "shuffled"):
        if abs(out[key] - 100 * want[key]) < 1e-3 and want[key] > 0.02:
            raise GradingFailure(f"{key!r} is a percentage: report a fraction in [0, 1]")
    if abs(out["true"] - want["shuffled"]) <= tol and abs(out["shuffled"] - want["true"]) <= tol \
            and abs(want["true"] - want["shuffled"]) > 2 * tol:
        raise GradingFailure(f"the arms are swapped: 'true' is the accuracy with each caption's own image ({what})")
    if abs(out["shuffled"] - want["true"]) <= tol and abs(want["true"] - want["shuffled"]) > 2 * tol:
        raise GradingFailure(f"the shuffled arm scores what the true arm scores: its captions still see their own "
                             f"images (the images were not shuffled, or the captions moved with them); pair caption i "
                             f"with image i - 1, images rolled by one ({what})")
    for key, definition in (("true", "with each caption's own image"),
                            ("shuffled", "with the previous scene's image (images rolled by one)")):
        if abs(out[key] - want[key]) > tol:
            raise GradingFailure(f"{key!r} = {out[key]:.4f}, but the model scores {want[key]:.4f} {definition} on "
                                 f"these {want['n']} masked words ({what}): the accuracy of the MLM head's top word at "
                                 f"the masked positions, every occurrence of the words replaced by <mask>")
    return want


@register("03.image_ablation", title="The experiment: does masked-word prediction use the image?")
def check_image_ablation(fn) -> None:
    g = fresh_generator()
    world = ShapesWorld(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), split="test")
    scenes = world.sample(96)
    images, captions = world.render(scenes), [world.caption(s) for s in scenes]
    model = store.load("vilt_pretrained").eval()
    colours = _ablation_run(fn, model, images, captions, list(COLORS), "colour words, the zoo's vilt_pretrained")
    _ablation_run(fn, model, images, captions, list(SHAPES), "shape words, the zoo's vilt_pretrained")
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        untrained = ViLT(ViLTConfig(patch_size=8)).eval()
    _ablation_run(fn, untrained, images, captions, list(COLORS), "colour words, an untrained ViLT")
    if colours["true"] < colours["shuffled"] + 0.2:  # the zoo model reads colours from the image: a library fact
        raise GradingFailure(f"the zoo's vilt_pretrained scores {colours['true']:.1%} with the true images and "
                             f"{colours['shuffled']:.1%} with shuffled ones: this is a problem of the zoo model, not "
                             f"of your function; report it")
