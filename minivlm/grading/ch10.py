"""Checks for the chapter 10 exercises (exercises/10_frozen): the token layout of a prefix
captioner ("<bos> <image>×K words <eos>" with its attention and loss masks), the splice for
interleaved documents that puts each of a batch's N images (K embeddings each, in reading order)
in the places of its run of K `<image>` tokens, whatever number of images a row holds, the
captioning loss that scores only the caption, the count of the trainable parameters of a model
whose language model is frozen, and an experiment: knowledge questions asked after the model's own
caption with the image prefix kept and dropped, and the gap between the two accuracies.

The layout is compared with `minivlm.models.frozen.insert_image_tokens` on fresh random inputs:
right-padded rows of different lengths, an `<image>` id drawn at random (so that the course
tokenizer's id cannot be hard-coded), at a K that is not the chapter's 4, at K = 1, and on one row
(B = 1) of int32 ids (the dtype must be kept exactly). The splice is compared with a reference
(the library's `splice` where every row holds one image) on rows that hold no image, one or
several, each image after 0–2 words; on one image per row; on one row at K = 1; on a batch with no
image at all (N = 0); its gradients to the image embeddings and to the embedding table behind
`embeds` are compared with the reference's; then two broken batches must raise ValueError: two
rows drawn at random whose `<image>` runs disagree with `images_per_row` while the total still
fits (a flat assignment would silently move an image between rows), and image embeddings for one
image more than `images_per_row` sums to. The loss is compared with `lm_loss(logits, ids,
loss_mask)` at K = 1 … 6 on inputs redrawn until every plausible mistake gives another number than
the right answer (and than every other mistake), then on one caption of one word (B = 1, K = 1),
and its gradient with the reference's. The
counts are compared with `count_parameters` on two freshly built random captioners
(a vision encoder with batch norm, a mapper, a nanoGPT-style language model whose output head is
tied to its token embedding and which keeps a causal-mask buffer), one with the vision encoder
frozen and one with it trained, redrawn until every plausible mistake gives another number.
The experiment runs on the zoo's `clipcap`, loaded fresh, with 96 knowledge questions of a
ShapesBench drawn at a fresh seed and captions of which a random half are the model's own greedy
ones and the other half true captions of the scenes (so that a function that captions the images
itself, ignoring the captions given, gives other numbers); the check recomputes both
accuracies and the gap (no figure of the zoo model is written here, so a rebuilt model is checked
the same way), redrawing the questions until every mistake that changes an answer gives other
numbers than the right ones.

When an answer is wrong the check tries to name the plausible mistake: the <image> tokens put
before <bos> or after the padding, written over the words instead of inserted, ids that are no
longer integers, masks that are not bool, the <image> positions left out of the attention mask,
the masks not laid out like the ids, <bos>, the <image> tokens or the padding marked as targets,
<eos> left out, the loss mask shifted by one, the input changed in place, K hard-coded, the ids'
dtype promoted, a result that breaks at B = 1; the images written one position late or early, an
image's K embeddings reversed, images mixed (column-major order), a row's images in reverse order,
the other positions zeroed, the <image> token's embedding added instead of replaced, one image per
row assumed (a ValueError on a valid batch), the sequence grown instead of positions replaced,
embeds changed in place, no gradient to the image embeddings or to embeds, only the batch's total
checked (no ValueError for rows that disagree with images_per_row), no ValueError for a wrong
number of images; the <image> tokens (or the last of
them) scored as targets, the first word left out, <eos> left out, every position scored, padding
used as targets or counted in the mean, the prefix counted in the mean, no shift, the shift the
wrong way, the mask not shifted with the targets, the mean of per-row means, the sum, raw logits
taken for log-probabilities, a loss without gradient (detached, or rebuilt from .item()), a loss
that breaks at B = 1, the ids changed in place; every parameter counted as trainable, the
frozen ones counted, only the mapper counted, a tied weight counted twice, the sum over
state_dict() (tied copies and buffers, and no requires_grad), buffers counted, tensors counted
instead of numbers, parameters counted once per enclosing module, the fraction inverted, the
frozen fraction, a percentage, the ratio to the frozen parameters, integer division; the prefix
kept or dropped in both arms, the caption dropped from either arm, the gap reversed, the two
accuracies swapped, percentages or counts, answers not cut at the first ".", the question asked
without its "question: … answer:" frame, the captions given ignored (the model's own recomputed),
an interval returned instead of a number.
"""
from __future__ import annotations

import math
import numbers

import torch
from einops import rearrange
from torch import nn

from minivlm.data import ShapesBench
from minivlm.data.shapesworld import ShapesWorld
from minivlm.data.worldtext import qa_prompt
from minivlm.eval import answer_hits, vqa_accuracy
from minivlm.grading import (
    NO_SHIFT,
    WRONG_WAY,
    GradingFailure,
    all_distinct,
    call,
    expect_gradients,
    fresh_generator,
    is_close,
    masked_mean,
    randint,
    reduction_mistakes,
    register,
    tensor_answer,
    token_losses,
)
from minivlm.losses import lm_loss
from minivlm.models.frozen import insert_image_tokens
from minivlm.nn.blocks import Block
from minivlm.utils import count_parameters, freeze
from minivlm.zoo import store

PAD, BOS, EOS = 0, 1, 2  # the course tokenizer's ids; the <image> id is drawn at random


def _captions(g: torch.Generator, b: int, n_words: int, vocab: int, image_id: int):
    """Right-padded rows "<bos> words <eos> <pad>…" (B, 2 + n_words) of different lengths (a full
    row, a one-word row), with word ids that are never <pad>, <bos>, <eos> or <image>."""
    t = n_words + 2
    words = [i for i in range(3, vocab) if i != image_id]
    ids = torch.tensor(words)[torch.randint(len(words), (b, t), generator=g)]
    lengths = torch.randint(1, n_words + 1, (b,), generator=g)  # words per row
    lengths[0] = n_words
    if b > 1:
        lengths[1] = 1
    pos = torch.arange(t)[None]
    ids[:, 0] = BOS
    ids[pos == lengths[:, None] + 1] = EOS
    mask = pos <= lengths[:, None] + 1
    return ids.masked_fill(~mask, PAD), mask


# ----------------------------------------------------------------------------- 10.insert_image_tokens


def _bool_answer(name: str, got, shape: tuple[int, ...]) -> torch.Tensor:
    got = tensor_answer(name, got)
    if got.dtype != torch.bool:
        hint = (" (torch.cat promoted it: build the new part with dtype=torch.bool, e.g. torch.ones(B, K, "
                "dtype=torch.bool))") if got.is_floating_point() else " (comparisons, & and | give bool tensors)"
        raise GradingFailure(f"{name} must be a bool tensor (True = real token / target), got {got.dtype}"
                             f"{hint}")
    if tuple(got.shape) != shape:
        raise GradingFailure(f"{name} must have the new ids' shape (B, K + T) = {shape}, got "
                             f"{tuple(got.shape)}")
    return got.detach().cpu()


@register("10.insert_image_tokens", title="The prefix layout: <bos> <image>×K words <eos>, its attention and loss masks")
def check_insert_image_tokens(fn) -> None:
    g = fresh_generator()
    ks = [k for k in range(2, 8) if k != 4]
    for b, k, dtype in ((randint(g, 3, 5), ks[randint(g, 0, len(ks) - 1)], torch.long), (randint(g, 2, 4), 1, torch.long),
                        (1, randint(g, 2, 6), torch.int32)):
        vocab = randint(g, 12, 20)
        image_id = randint(g, 3, vocab - 1)
        ids, mask = _captions(g, b, randint(g, 3, 6), vocab, image_id)
        what = f"B = {b}, K = {k}, ids of dtype {dtype}"
        try:
            _check_layout_once(fn, ids.to(dtype), mask, k, image_id)
        except GradingFailure as exc:
            raise GradingFailure(f"{exc} ({what})") from None


def _check_layout_once(fn, ids: torch.Tensor, mask: torch.Tensor, k: int, image_id: int) -> None:
    b, t = ids.shape
    want_ids, want_mask, want_loss = insert_image_tokens(ids.long(), mask, k, image_id)
    ids_in, mask_in = ids.clone(), mask.clone()
    got = call(fn, ids_in, mask_in, k, image_id)
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"insert_image_tokens must return a tuple (ids, attention_mask, loss_mask), got "
                             f"{type(got).__name__}{extra}")
    if not (torch.equal(ids_in, ids) and torch.equal(mask_in, mask)):
        raise GradingFailure("the input ids or attention_mask were changed in place: build new tensors "
                             "(torch.cat makes new ones) and leave the caller's batch as it was")
    got_ids = tensor_answer("the new ids", got[0]).detach().cpu()
    image = torch.full((b, k), image_id)

    # the ids
    if got_ids.is_floating_point() or got_ids.dtype == torch.bool:
        raise GradingFailure(f"the new ids must stay integer token ids (an Embedding looks them up), got "
                             f"{got_ids.dtype}: build the <image> block with dtype=ids.dtype")
    if got_ids.dtype != ids.dtype:
        raise GradingFailure(f"the new ids are {got_ids.dtype}, the ids given {ids.dtype}: keep the caller's dtype "
                             f"exactly (a block of <image> ids built without dtype=ids.dtype is int64, and torch.cat "
                             f"promotes the whole batch to it)")
    got_ids = got_ids.long()
    if tuple(got_ids.shape) == (b, t):
        raise GradingFailure(f"the new ids have the old shape {(b, t)}: the K = {k} <image> tokens are INSERTED "
                             f"after <bos>, every row grows to (B, K + T) = {(b, k + t)}, no word is overwritten")
    if tuple(got_ids.shape) != (b, k + t):
        raise GradingFailure(f"the new ids must have shape (B, K + T) = {(b, k + t)}, got {tuple(got_ids.shape)}")
    if not torch.equal(got_ids, want_ids):
        if torch.equal(got_ids, torch.cat([image, ids], 1)):
            raise GradingFailure("the <image> tokens were put before <bos>: every text the language model read in "
                                 "chapter 09 began with <bos>; keep it first, then the K <image> tokens, then the "
                                 "words: torch.cat([ids[:, :1], image, ids[:, 1:]], dim=1)")
        if torch.equal(got_ids, torch.cat([ids, image], 1)):
            raise GradingFailure("the <image> tokens were appended at the end, after the caption and its padding: "
                                 "they are the prefix the caption is conditioned on, right after <bos>")
        r, s = map(int, (got_ids != want_ids).nonzero()[0])
        raise GradingFailure(f"the new ids differ from <bos>, K × image_id, then the rest of the row, first at row "
                             f"{r}, position {s}: expected {int(want_ids[r, s])}, got {int(got_ids[r, s])}")

    # the attention mask
    got_mask = _bool_answer("the new attention_mask", got[1], (b, k + t))
    if not torch.equal(got_mask, want_mask):
        no_image = want_mask.clone()
        no_image[:, 1:k + 1] = False
        if torch.equal(got_mask, no_image):
            raise GradingFailure("the <image> positions are False in attention_mask: they are real input that the "
                                 "words must attend to (the image!); only padding is False")
        if torch.equal(got_mask, torch.cat([mask, torch.ones(b, k, dtype=torch.bool)], 1)) \
                or torch.equal(got_mask, torch.cat([torch.ones(b, k, dtype=torch.bool), mask], 1)):
            raise GradingFailure("attention_mask is not laid out like the new ids: insert K True values after "
                                 "<bos>'s, at the same positions as the <image> tokens")
        raise GradingFailure("attention_mask must be True on <bos>, the K <image> tokens and the real tokens after "
                             "them, False on the padding, at the new ids' positions")

    # the loss mask
    got_loss = _bool_answer("loss_mask", got[2], (b, k + t))
    if torch.equal(got_loss, want_loss):
        return
    pos = torch.arange(k + t)[None]
    with_bos, with_image = want_loss | (pos == 0), want_loss | ((pos >= 1) & (pos <= k))
    new_eos = want_ids == EOS
    named = [
        (want_mask, "loss_mask is the attention mask: that marks <bos> and the K <image> tokens as targets too; "
                    "the targets are only the caption's words and <eos>"),
        (with_image, "the <image> positions are marked as targets: the model cannot predict an image embedding "
                     "(there is no token to predict there); the targets are only the words and <eos>"),
        (with_bos, "<bos> is marked as a target: nothing comes before it, so nothing predicts it (lm_loss would "
                   "skip it anyway, as the shift drops position 0, but loss_mask says which tokens are predicted); "
                   "the targets are only the words and <eos>"),
        ((want_ids != image_id) & (pos > 0), "padding is marked as a target: loss_mask is False after each "
                                             "caption's <eos> (use the attention mask)"),
        (want_loss & ~new_eos, "<eos> is left out of the targets: the model must learn where a caption ends, so "
                               "<eos> is a target like the words"),
        (want_loss.roll(-1, 1), "loss_mask is shifted by one: it marks the positions whose logits predict a word; "
                                "it must mark the predicted tokens themselves (lm_loss does the shift)"),
        (want_loss.roll(1, 1), "loss_mask is shifted one position late: the first word (at position K + 1) is a "
                               "target, the padding after <eos> is not"),
    ]
    for value, message in named:
        if torch.equal(got_loss, value):
            raise GradingFailure(message)
    r, s = map(int, (got_loss != want_loss).nonzero()[0])
    raise GradingFailure(f"loss_mask must be True on the words and <eos> only, first wrong at row {r}, position "
                         f"{s}: expected {bool(want_loss[r, s])}, got {bool(got_loss[r, s])}")


# ----------------------------------------------------------------------------- 10.splice_images


def splice_images_reference(embeds: torch.Tensor, ids: torch.Tensor, image_embeds: torch.Tensor, image_id: int,
                            images_per_row: torch.Tensor) -> torch.Tensor:
    """Interleaved documents: row b holds images_per_row[b] images (0, 1, several), each a run of
    K <image> tokens anywhere in the row; image_embeds (N, K, D) are the batch's N images in reading
    order (row 0's left to right, then row 1's …). Each image's K embeddings go, in order, to its
    K places; every other position keeps its token embedding. A row whose <image> count is not
    images_per_row[b]·K, or N != images_per_row.sum(), raises ValueError. -> a new (B, T, D)."""
    n, k, d = image_embeds.shape
    at = ids == image_id  # (B, T)
    counts, want = at.sum(1), images_per_row.to(torch.long) * k
    bad = counts != want
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(f"row {row} has {int(counts[row])} <image> tokens, expected {int(images_per_row[row])} "
                         f"images × K={k}")
    if int(images_per_row.sum()) != n:
        raise ValueError(f"images_per_row sums to {int(images_per_row.sum())}, but image_embeds holds N={n} images")
    out = embeds.clone()
    out[at] = image_embeds.reshape(n * k, d)  # row-major: the boolean index walks the batch in reading order
    return out


def _place(base: torch.Tensor, at: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    out = base.clone()
    out[at] = flat
    return out


def _interleaved(g: torch.Generator, per_row: list[int], k: int, vocab: int, image_id: int) -> torch.Tensor:
    """Right-padded rows "<bos> words <image>×K words <image>×K … <eos> <pad>…": row b holds per_row[b]
    images, each after 0–2 words (two images may touch), the rows of different lengths."""
    words = [i for i in range(3, vocab) if i != image_id]

    def word():
        return words[randint(g, 0, len(words) - 1)]

    rows = []
    for m in per_row:
        row = [BOS]
        for _ in range(m):
            row += [word() for _ in range(randint(g, 0, 2))] + [image_id] * k
        row += [word() for _ in range(randint(g, 1, 3))] + [EOS]
        rows.append(row)
    t = max(map(len, rows)) + 1
    return torch.tensor([row + [PAD] * (t - len(row)) for row in rows])


def _splice_case(g: torch.Generator, per_row: list[int], k: int):
    """An embedding table (a leaf), interleaved ids, image embeddings (a leaf) and the layout's numbers."""
    d, vocab = randint(g, 4, 8), randint(g, 12, 20)
    image_id = randint(g, 3, vocab - 1)
    ids = _interleaved(g, per_row, k, vocab, image_id)
    table = torch.randn(vocab, d, generator=g).requires_grad_(True)
    image_embeds = torch.randn(sum(per_row), k, d, generator=g).requires_grad_(True)
    return table, ids, image_embeds, image_id, torch.tensor(per_row)


def _splice_mistakes(embeds, ids, image_embeds, image_id, per_row) -> list[tuple[torch.Tensor, str]]:
    n, k, d = image_embeds.shape
    at = ids == image_id
    flat = image_embeds.reshape(n * k, d)
    mistakes = [
        (_place(embeds, at.roll(1, 1), flat),
         "the images were written one position late: each image embedding belongs exactly where an <image> token "
         "is (ids == image_id), not at the token after it"),
        (_place(embeds, at.roll(-1, 1), flat),
         "the images were written one position early: each image embedding belongs exactly where an <image> token "
         "is (ids == image_id)"),
        (_place(embeds, at, image_embeds.flip(1).reshape(n * k, d)),
         "each image's K embeddings are in reverse order: an image's first <image> place gets its embedding 0, the "
         "last one its embedding K − 1"),
        (_place(embeds, at, rearrange(image_embeds, "n k d -> (k n) d")),
         "images are mixed: the image embeddings were flattened column-major ('n k d -> (k n) d', or a transpose "
         "before the reshape), so the first places got the first embedding of every image; the places are walked "
         "row by row, left to right, and so must the N images' K embeddings be, image after image"),
        (_place(torch.zeros_like(embeds), at, flat),
         "the other positions were zeroed: every position that is not an <image> token keeps its token embedding"),
        (_place(embeds, at, embeds[at] + flat),
         "the <image> token's own embedding was added to the image embedding: the image embedding REPLACES it "
         "(the <image> row of the table is never trained and means nothing to the frozen LM), chapter 10 §2"),
    ]
    if n:
        reverse = torch.cat([image_embeds[int(s):int(s) + int(m)].flip(0) for s, m in
                             zip(per_row.cumsum(0) - per_row, per_row)]) if n else image_embeds
        mistakes.append((_place(embeds, at, reverse.reshape(n * k, d)),
                         "the images of a row are in reverse order: image_embeds holds the batch's images in reading "
                         "order, a row's first image first"))
    return mistakes


def _check_splice_once(fn, g: torch.Generator, per_row: list[int], k: int, what: str) -> None:
    table, ids, image_embeds, image_id, images_per_row = _splice_case(g, per_row, k)
    n, _, d = image_embeds.shape
    embeds = table[ids]  # (B, T, D): the token embeddings, a non-leaf that carries the gradient to the table
    before = embeds.detach().clone()
    want = splice_images_reference(embeds.detach(), ids, image_embeds.detach(), image_id, images_per_row)
    ids_in, per_row_in = ids.clone(), images_per_row.clone()
    where = f" ({what}: images per row {per_row}, K = {k})"
    try:
        got = call(fn, embeds, ids_in, image_embeds, image_id, per_row_in)
    except GradingFailure as exc:
        if "ValueError" in str(exc):
            raise GradingFailure(f"a ValueError on a valid batch{where}: every row holds images_per_row[b] runs of K "
                                 f"<image> tokens here, and image_embeds holds their N = {n} images; ({exc})") from None
        raise GradingFailure(f"{exc}{where}") from None
    got = tensor_answer("splice_images' result", got)
    b, t = ids.shape
    if tuple(got.shape) != (b, t, d):
        raise GradingFailure(f"splice_images must return embeds' shape (B, T, D) = {(b, t, d)}{where}, got "
                             f"{tuple(got.shape)}: the image embeddings take the PLACES of the <image> tokens")
    if got is embeds or not torch.equal(embeds.detach(), before):
        raise GradingFailure("embeds was changed in place: the caller's token embeddings now hold the images; write "
                             "into a copy and return it")
    if not (torch.equal(ids_in, ids) and torch.equal(per_row_in, images_per_row)):
        raise GradingFailure("ids or images_per_row was changed in place: leave the caller's tensors as they are")
    if not is_close(got, want, atol=1e-6, rtol=1e-6):
        for value, message in _splice_mistakes(embeds.detach(), ids, image_embeds.detach(), image_id, images_per_row):
            if is_close(got, value, atol=1e-6, rtol=1e-6):
                raise GradingFailure(message + where)
        wrong = (got.detach().cpu() - want).abs().amax(-1) > 1e-5  # (B, T): positions with a wrong vector
        r, s = map(int, wrong.nonzero()[0])
        kind = "an <image> position" if int(ids[r, s]) == image_id else "a text position"
        raise GradingFailure(f"splice_images' result differs from the reference{where}, first at row {r}, position "
                             f"{s} ({kind})")
    leaves = {"image_embeds": image_embeds, "the embedding table (through embeds)": table}
    expect_gradients(f"splice_images' result{where}", got,
                     splice_images_reference(table[ids], ids, image_embeds, image_id, images_per_row), leaves)


def _expect_value_error(fn, g: torch.Generator, args: tuple, what: str, fix: str) -> None:
    try:
        fn(*args)
    except ValueError:
        return
    except Exception as exc:
        raise GradingFailure(f"{what}: raise ValueError naming the row (or the counts), not {type(exc).__name__}: "
                             f"{str(exc).strip()[:120]}") from None
    raise GradingFailure(f"{what}, and splice_images returned without an error: {fix}")


def _check_splice_counts(fn, g: torch.Generator) -> None:
    """Two rows, drawn at random, whose <image> runs disagree with images_per_row while the batch's
    total stays N·K (a flat assignment would run and move an image into another row); then a batch
    whose images_per_row is right for the ids but image_embeds holds one image more."""
    b, k = randint(g, 4, 6), randint(g, 2, 3)
    per_row = [randint(g, 1, 2) for _ in range(b)]
    table, ids, image_embeds, image_id, images_per_row = _splice_case(g, per_row, k)
    more, fewer = (int(i) for i in torch.randperm(b, generator=g)[:2])
    claimed = images_per_row.clone()
    claimed[more] -= 1  # the ids of row `more` hold one image more than claimed, row `fewer` one image fewer
    claimed[fewer] += 1
    embeds = table.detach()[ids]
    _expect_value_error(
        fn, g, (embeds.clone(), ids.clone(), image_embeds.detach().clone(), image_id, claimed.clone()),
        f"row {more} holds {int(images_per_row[more])} images' <image> tokens but images_per_row says "
        f"{int(claimed[more])}, row {fewer} holds {int(images_per_row[fewer])} but images_per_row says "
        f"{int(claimed[fewer])}",
        f"the batch's total is still N·K, so a flat assignment silently moved an image from row {more} into row "
        f"{fewer}; check each row's count of <image> tokens against images_per_row[b]·K")
    extra = torch.cat([image_embeds.detach(), image_embeds.detach()[:1]])  # N + 1 images for N places' worth
    _expect_value_error(
        fn, g, (embeds.clone(), ids.clone(), extra, image_id, images_per_row.clone()),
        f"image_embeds holds N = {len(extra)} images but images_per_row sums to {int(images_per_row.sum())}",
        "check that the number of images given is the number the rows hold")


@register("10.splice_images", title="The splice for interleaved documents: each row's images at their <image> runs")
def check_splice_images(fn) -> None:
    g = fresh_generator()
    b = randint(g, 3, 5)
    per_row = [randint(g, 0, 3) for _ in range(b)]
    zero, two = (int(i) for i in torch.randperm(b, generator=g)[:2])
    per_row[zero], per_row[two] = 0, max(2, per_row[two])  # a row without an image, one with several
    _check_splice_once(fn, g, per_row, randint(g, 2, 4), "interleaved rows")
    _check_splice_once(fn, g, [1] * randint(g, 2, 3), randint(g, 2, 5), "one image per row, as in chapter 10")
    _check_splice_once(fn, g, [randint(g, 1, 3)], 1, "one row, K = 1")
    _check_splice_once(fn, g, [0] * randint(g, 2, 3), randint(g, 2, 4), "no image in the batch, N = 0")
    _check_splice_counts(fn, g)


# ----------------------------------------------------------------------------- 10.caption_loss


def caption_loss_reference(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor, image_id: int
                           ) -> torch.Tensor:
    """The mean next-token cross-entropy over the caption's tokens (the words and <eos>) only.
    logits (B, T, V); ids (B, T) "<bos> <image>×K words <eos> <pad>…"; attention_mask (B, T).
    Position 0 (<bos>) is never a target of a shifted loss, so only the <image> tokens and the
    padding need leaving out."""
    targets = attention_mask.bool() & (ids != image_id)  # the caption (and <bos>, which is never a target)
    return lm_loss(logits, ids, targets)


def _caption_mistakes(logits, ids, mask, image_id, k: int) -> list[tuple[torch.Tensor, str]]:
    """The plausible wrong losses; k: the number of <image> tokens (every row has K, right after <bos>)."""
    m = mask.bool()
    pos = torch.arange(ids.shape[1])[None]
    caption = m & (ids != image_id) & (pos > 0)  # (B, T): the words and <eos>
    target = caption[:, 1:].float()  # (B, T-1): which shifted targets count
    shifted = token_losses(logits[:, :-1], ids[:, 1:])
    return [
        (masked_mean(shifted, m[:, 1:]),
         "the <image> tokens were scored as targets (lm_loss with the attention mask): the image embeddings are "
         "given, not predicted; score only the caption, where ids != image_id (and attention_mask is True)"),
        (masked_mean(shifted, (m & (pos >= k))[:, 1:]),
         "off by one: the last <image> token was scored as a target; the prefix is <bos> and K <image> tokens, "
         "positions 0..K, and the caption starts at position K + 1 (use ids != image_id rather than counting)"),
        (masked_mean(shifted, (m & (pos >= k + 2))[:, 1:]),
         "the first word was not scored: it is predicted by the LAST <image> position's logits (position K), which "
         "must be kept; the targets are every caption token, the first word included"),
        (masked_mean(shifted, (caption & (ids != EOS))[:, 1:]),
         "<eos> was left out of the targets: the model must learn where a caption ends"),
        (shifted.mean(),
         "every position was scored: the <image> tokens and the padding too; score only the caption's tokens"),
        (masked_mean(shifted, ((ids != image_id) & (pos > 0))[:, 1:]),
         "padding used as targets: every position after a caption's <eos> is scored against the pad token; keep "
         "only the targets where attention_mask is True"),
        ((shifted * target).sum() / target.numel(),
         "padding (and the prefix) counted in the mean: the targets left out were zeroed but still divide the "
         "sum; divide by the number of caption targets"),
        ((shifted * target).sum() / m[:, 1:].sum(),
         "the prefix counted in the mean: the <image> targets were zeroed but still divide the sum; divide by the "
         "number of caption targets"),
        (masked_mean(token_losses(logits, ids), caption), NO_SHIFT),
        (masked_mean(token_losses(logits[:, 1:], ids[:, :-1]), caption[:, :-1]), WRONG_WAY),
        (masked_mean(token_losses(logits[:, 1:], ids[:, :-1]), caption[:, 1:]), WRONG_WAY),
        (masked_mean(shifted, caption[:, :-1]),
         "the mask was not shifted with the targets: the targets are ids[:, 1:], so the caption targets are "
         "caption_mask[:, 1:]; caption_mask[:, :-1] scores the last <image> position predicting the FIRST word "
         "out and the <eos> position predicting padding in"),
        *reduction_mistakes(logits, ids, target, "caption", "caption tokens"),
    ]


def _caption_inputs(g: torch.Generator):
    """Logits, ids "<bos> <image>×K words <eos> <pad>…" with a random <image> id, their attention
    mask and K; redrawn until every mistake gives its own number."""
    for _ in range(50):
        b, n_words, k, vocab = randint(g, 3, 5), randint(g, 4, 7), randint(g, 1, 6), randint(g, 12, 20)
        image_id = randint(g, 3, vocab - 1)
        text, mask = _captions(g, b, n_words, vocab, image_id)
        ids, mask, loss_mask = insert_image_tokens(text, mask, k, image_id)
        logits = torch.randn(b, ids.shape[1], vocab, generator=g) * 2
        values = [float(caption_loss_reference(logits, ids, mask, image_id))]
        values += [float(value) for value, _ in _caption_mistakes(logits, ids, mask, image_id, k)]
        if all_distinct(values):
            return logits, ids, mask, loss_mask, image_id, k
    raise RuntimeError("could not draw inputs on which the mistakes differ")  # pragma: no cover


def _check_caption_once(fn, logits, ids, mask, loss_mask, image_id, k, what: str) -> None:
    want = lm_loss(logits, ids, loss_mask)  # the library's way: lm_loss over insert_image_tokens' loss mask
    leaf = logits.clone().requires_grad_(True)
    ids_in, mask_in = ids.clone(), mask.clone()
    try:
        got = tensor_answer("caption_loss's result", call(fn, leaf, ids_in, mask_in, image_id))
    except GradingFailure as exc:
        raise GradingFailure(f"{exc} (on {what})") from None
    if not (torch.equal(ids_in, ids) and torch.equal(mask_in, mask)):
        raise GradingFailure("ids or attention_mask was changed in place: build the targets as a new tensor; the "
                             "caller's batch is read again")
    if got.numel() != 1:
        b, t = ids.shape
        hint = " (one loss per target token: reduce them to their mean)" if got.numel() in (b * t, b * (t - 1)) else ""
        raise GradingFailure(f"the loss must be one number (a 0-dim tensor), got shape {tuple(got.shape)}{hint}")
    if not got.is_floating_point():
        raise GradingFailure(f"the loss must be a float tensor, got {got.dtype}")
    if not is_close(got.reshape(()), want):
        for value, message in _caption_mistakes(logits, ids, mask, image_id, k):
            if is_close(got.reshape(()), value):
                raise GradingFailure(f"{message} ({what})")
        raise GradingFailure(f"caption_loss returned {float(got.detach()):.5f}, expected {float(want):.5f} (lm_loss over the "
                             f"caption's tokens; {what})")
    expect_gradients("the loss", got, caption_loss_reference(leaf, ids, mask, image_id).reshape(got.shape),
                     {"logits": leaf})


@register("10.caption_loss", title="The captioning loss of a prefix model: the caption's tokens only")
def check_caption_loss(fn) -> None:
    g = fresh_generator()
    logits, ids, mask, loss_mask, image_id, k = _caption_inputs(g)
    _check_caption_once(fn, logits, ids, mask, loss_mask, image_id, k, f"B = {len(ids)}, K = {k}")
    # one caption (B = 1) of one word, after one <image> place (K = 1)
    vocab = randint(g, 12, 20)
    image_id = randint(g, 3, vocab - 1)
    text, text_mask = _captions(g, 1, 1, vocab, image_id)
    ids, mask, loss_mask = insert_image_tokens(text, text_mask, 1, image_id)
    _check_caption_once(fn, torch.randn(1, ids.shape[1], vocab, generator=g) * 2, ids, mask, loss_mask, image_id, 1,
                        "one caption of one word, B = 1, K = 1")


# ----------------------------------------------------------------------------- 10.count_trainable


class TinyLM(nn.Module):
    """A language model laid out as nanoGPT's (and Hugging Face's GPT-2): token and position
    embeddings, blocks, a final LayerNorm, and an output head `lm_head` whose weight IS the token
    embedding's (weight tying: one tensor under two names), plus a causal-mask buffer as nanoGPT
    kept one. (The library's GPT ties with F.linear on the embedding's weight: one name only.)"""

    def __init__(self, vocab: int, dim: int, depth: int, max_len: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads=2, mlp_ratio=2.0) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.register_buffer("causal", torch.ones(max_len, max_len, dtype=torch.bool).tril())


class TinyVision(nn.Module):
    """A small CNN image encoder: conv, batch norm (its running statistics are buffers), pooling,
    a projection; the pixel mean and std are non-persistent buffers, as in the library's CLIP."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.register_buffer("image_mean", torch.full((1, 3, 1, 1), 0.5), persistent=False)
        self.register_buffer("image_std", torch.full((1, 3, 1, 1), 0.25), persistent=False)
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.proj = nn.Linear(channels, embed_dim)


class TinyCaptioner(nn.Module):
    """vision (a CNN) -> mapper (image embedding -> K vectors of the LM's width) -> a frozen TinyLM.
    train_vision False: ClipCap (only the mapper trains); True: Frozen (the vision encoder too)."""

    def __init__(self, vocab: int, dim: int, depth: int, max_len: int, channels: int, embed_dim: int,
                 n_prefix: int, hidden: int, train_vision: bool):
        super().__init__()
        self.vision = TinyVision(channels, embed_dim)
        self.mapper = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_prefix * dim))
        self.lm = freeze(TinyLM(vocab, dim, depth, max_len))
        if not train_vision:
            freeze(self.vision)


def count_trainable_reference(model: nn.Module) -> tuple[int, int, float]:
    """(trainable parameters, all parameters, their fraction): numbers of scalars, each shared
    tensor counted once, buffers not counted."""
    trainable, total = count_parameters(model, trainable_only=True), count_parameters(model)
    return trainable, total, trainable / total


def _random_captioner(g: torch.Generator, train_vision: bool) -> TinyCaptioner:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(randint(g, 0, 2**31 - 2))
        return TinyCaptioner(vocab=randint(g, 20, 60), dim=2 * randint(g, 4, 8), depth=randint(g, 1, 2),
                             max_len=randint(g, 8, 16), channels=randint(g, 3, 8), embed_dim=randint(g, 4, 12),
                             n_prefix=randint(g, 2, 4), hidden=randint(g, 8, 24), train_vision=train_vision)


def _count_mistakes(model: nn.Module) -> dict[str, list[tuple[float, str]]]:
    """The plausible wrong answers for each of the three values."""
    params = list(model.parameters())
    total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    frozen = total - trainable
    tied = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False)) - total
    persistent = sum(v.numel() for v in model.state_dict().values()) - total - tied
    buffers = sum(v.numel() for v in model.buffers())
    nested = sum(p.numel() for m in model.modules() for p in m.parameters())
    nested_trainable = sum(p.numel() for m in model.modules() for p in m.parameters() if p.requires_grad)
    # only the mapper: a mistake only where something else trains too (-1: never matched)
    mapper = count_parameters(model.mapper) if count_parameters(model.mapper) != trainable else -1
    twice = ("a tied weight was counted twice: lm_head.weight IS wte.weight, one tensor under two names; "
             "model.parameters() yields each tensor once, while state_dict(), named_parameters(remove_duplicate="
             "False) or a count per module yield it once per name")
    per_module = ("parameters counted once per enclosing module: model.modules() yields the model and every "
                  "submodule, and each one's .parameters() recurses into its children; iterate model.parameters() "
                  "once")
    state_dict = ("the sum over state_dict(): it holds every name of a tied weight (lm_head.weight and wte.weight "
                  "are one tensor) and the buffers (batch-norm statistics, the causal mask), which are not "
                  "parameters; iterate model.parameters()")
    buffers_msg = ("buffers were counted (batch-norm running statistics, the causal mask, the pixel mean and "
                   "std): they are state, not parameters, and nothing trains them; count model.parameters() only")
    return {
        "total": [
            (total + tied, twice),
            (total + tied + persistent, state_dict),
            (total + buffers, buffers_msg),
            (total + persistent, buffers_msg),
            (trainable, "the total counts only the trainable parameters: it is every parameter, frozen or not"),
            (len(params), "tensors were counted, not numbers: a (V, D) weight holds V·D parameters, p.numel()"),
            (nested, per_module),
        ],
        "trainable": [
            (total, "every parameter was counted as trainable: a frozen one has requires_grad False; count those "
                    "with p.requires_grad"),
            (frozen, "the frozen parameters were counted: the trainable ones are those with requires_grad True"),
            (0, "no parameter was counted as trainable: state_dict() returns detached tensors, whose requires_grad "
                "is always False; count model.parameters() with p.requires_grad"),
            (sum(1 for p in params if p.requires_grad),
             "tensors were counted, not numbers: a (V, D) weight holds V·D parameters, p.numel()"),
            (nested_trainable, per_module),
            (mapper, "only the mapper was counted: here the vision encoder trains too (Frozen fine-tunes it); "
                     "count every parameter with requires_grad True, wherever it is"),
        ],
        "fraction": [
            (total / trainable, "the fraction is inverted: trainable / total, a number between 0 and 1"),
            (frozen / total, "that is the frozen fraction: the trainable fraction is trainable / total"),
            (100 * trainable / total, "a percentage: return the fraction trainable / total, between 0 and 1 "
                                      "(print it as a percentage if you like)"),
            (trainable / frozen, "the ratio to the frozen parameters: the fraction is trainable / total, the "
                                 "frozen ones included in the total"),
            (0.0, "the fraction is 0: integer division (trainable // total)? use trainable / total"),
        ],
    }


def _distinct_counts(model: nn.Module) -> bool:
    trainable, total, fraction = count_trainable_reference(model)
    mistakes = _count_mistakes(model)
    totals = [total] + [v for v, _ in mistakes["total"]]
    trainables = [trainable] + [v for v, _ in mistakes["trainable"] if v >= 0]
    fractions = [fraction] + [v for v, _ in mistakes["fraction"]]
    return len(set(totals)) == len(totals) and len(set(trainables)) == len(trainables) and all_distinct(fractions)


def _whole_number(name: str, got) -> int:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise GradingFailure(f"{name} must be one number, got a tensor of shape {tuple(got.shape)}")
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        raise GradingFailure(f"{name} must be a number, got {type(got).__name__}")
    if not float(got).is_integer():
        raise GradingFailure(f"{name} must be a whole number of parameters, got {got}")
    return int(got)


def _real(name: str, got) -> float:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise GradingFailure(f"{name} must be one number, got a tensor of shape {tuple(got.shape)}")
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        raise GradingFailure(f"{name} must be a number, got {type(got).__name__}")
    return float(got)


def _check_counts(fn, model: nn.Module, what: str) -> None:
    flags = [p.requires_grad for p in model.parameters()]
    got = call(fn, model)
    if [p.requires_grad for p in model.parameters()] != flags:
        raise GradingFailure("count_trainable changed which parameters are trainable (requires_grad): only read the "
                             "model")
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"count_trainable must return a tuple (trainable, total, fraction), got "
                             f"{type(got).__name__}{extra}")
    trainable, total, fraction = count_trainable_reference(model)
    mistakes = _count_mistakes(model)
    got_total = _whole_number("total", got[1])
    if got_total != total:
        for value, message in mistakes["total"]:
            if got_total == value:
                raise GradingFailure(f"total ({what}): {message}")
        raise GradingFailure(f"total ({what}): expected {total:,} parameters (each tensor counted once, buffers "
                             f"not counted), got {got_total:,}")
    got_trainable = _whole_number("trainable", got[0])
    if got_trainable != trainable:
        for value, message in mistakes["trainable"]:
            if got_trainable == value:
                raise GradingFailure(f"trainable ({what}): {message}")
        raise GradingFailure(f"trainable ({what}): expected {trainable:,} (the parameters with requires_grad "
                             f"True), got {got_trainable:,}")
    got_fraction = _real("fraction", got[2])
    if not math.isclose(got_fraction, fraction, rel_tol=1e-6):
        for value, message in mistakes["fraction"]:
            if math.isclose(got_fraction, value, rel_tol=1e-6, abs_tol=1e-12):
                raise GradingFailure(f"fraction ({what}): {message}")
        raise GradingFailure(f"fraction ({what}): expected trainable / total = {fraction:.6g}, got {got_fraction:.6g}")


@register("10.count_trainable", title="Trainable parameters of a model with a frozen language model, and their share")
def check_count_trainable(fn) -> None:
    g = fresh_generator()
    for train_vision, what in ((False, "a ClipCap-like model: only the mapper trains"),
                               (True, "a Frozen-like model: the vision encoder trains too")):
        for _ in range(50):
            model = _random_captioner(g, train_vision)
            if _distinct_counts(model):
                break
        else:  # pragma: no cover
            raise RuntimeError("could not draw a model on which the mistakes differ")
        _check_counts(fn, model, what)


# ----------------------------------------------------------------------------- 10.prefix_gap

GAP_ITEMS = 96  # knowledge questions per check: about a second of the zoo model's decoding on one thread
GAP_TOKENS = 4  # new tokens per answer: the longest answer ("red and yellow") and its "."


def _zoo_prefix_model():
    """The zoo's ClipCap, loaded fresh (a learner's code cannot leave a mark on the next check)."""

    try:
        return store.load("clipcap")
    except Exception as exc:  # not the learner's doing: say what the check needs
        raise GradingFailure(f"this check runs the zoo's clipcap, which did not load ({type(exc).__name__}: {exc}); "
                             f"rebuild it with `minivlm zoo build clipcap`") from None


def _gap_prompts(captions, questions) -> list[str]:

    return [f"{c} {qa_prompt(q)}" for c, q in zip(captions, questions)]


def prefix_gap_reference(model, data: dict, captions, max_new_tokens: int = GAP_TOKENS) -> tuple[float, float, float]:
    """Knowledge questions asked after the given captions two ways, the same text in both: with the
    image prefix ("<bos> <image>×K caption question: … answer:", the prefix model's completion) and
    without it ("<bos> caption question: … answer:", the frozen LLM's), greedy, cut at ".".
    Returns (with_prefix, without_prefix, gap = with_prefix − without_prefix), accuracies in [0, 1]."""

    prompts = _gap_prompts(captions, data["questions"])
    with_prefix = model.complete(data["images"], prompts, max_new_tokens, stop=".")
    without = model.llm.complete(prompts, max_new_tokens, stop=".", tokenizer=model.tokenizer)
    a, b = vqa_accuracy(with_prefix, list(data["answers"])), vqa_accuracy(without, list(data["answers"]))
    return a, b, a - b


def _gap_arms(model, data: dict, captions, only: tuple[str, ...] | None = None) -> dict[str, list[bool]]:
    """Which questions each way of asking gets right, for every way a right or wrong answer is made of
    (only: just those ways)."""

    images, answers = data["images"], list(data["answers"])
    asked = [qa_prompt(q) for q in data["questions"]]
    after = _gap_prompts(captions, data["questions"])
    bare = [f"{c} {q}" for c, q in zip(captions, data["questions"])]  # no "question: … answer:" frame

    def prefixed(prompts, stop="."):
        return answer_hits(model.complete(images, prompts, GAP_TOKENS, stop=stop), answers)

    def text(prompts, stop="."):
        return answer_hits(model.llm.complete(prompts, GAP_TOKENS, stop=stop, tokenizer=model.tokenizer), answers)

    ways = {"with": lambda: prefixed(after), "without": lambda: text(after), "direct": lambda: prefixed(asked),
            "alone": lambda: text(asked), "with_no_stop": lambda: prefixed(after, stop=None),
            "without_no_stop": lambda: text(after, stop=None), "with_bare": lambda: prefixed(bare),
            "without_bare": lambda: text(bare)}
    return {name: way() for name, way in ways.items() if only is None or name in only}


_BOTH = "both arms read the same text, the caption then the question; only the prefix differs"
_NO_STOP = "go on after the answer ('four. question …'): only what comes before the first '.' is the answer"
# (the arm read as with_prefix, the arm read as without_prefix, how the three numbers are made, what is wrong)
GAP_MISTAKES = [
    ("with", "with", "right", "the prefix was kept in both arms: without_prefix is the frozen language model alone "
                              "(model.llm) reading the same text, caption then question, with no image embeddings"),
    ("without", "without", "right", "the prefix was dropped in both arms: with_prefix is the prefix model's answer, "
                                    "the K image embeddings first, then the caption and the question"),
    ("with", "alone", "right", f"without_prefix dropped the caption too (the question alone to the language model): "
                               f"drop only the prefix; {_BOTH}"),
    ("direct", "without", "right", f"with_prefix dropped the caption (the prefix, then the question): {_BOTH}"),
    ("with", "without", "reversed", "the gap is without − with: it is with_prefix − without_prefix (negative where "
                                    "the prefix hurts)"),
    ("without", "with", "right", "the two accuracies are swapped: return (with_prefix, without_prefix, gap)"),
    ("with", "without", "percent", "percentages: return the accuracies as fractions between 0 and 1"),
    ("with", "without", "count", "counts of right answers: return the accuracies, right answers / questions"),
    ("with_no_stop", "without", "right", f"the prefix model's answers were not cut at the first '.': they {_NO_STOP}"),
    ("with", "without_no_stop", "right", f"the language model's answers were not cut at the first '.': they "
                                         f"{_NO_STOP}"),
    ("with_no_stop", "without_no_stop", "right", f"the answers were not cut at the first '.': they {_NO_STOP}"),
    ("with_bare", "without_bare", "right", "the question was asked without its frame: the language model read "
                                           "questions as 'question: … answer:' in chapter 09, and answers after "
                                           "'answer:'"),
]


def _gap_numbers(hits: dict[str, list[bool]], with_arm: str, without_arm: str, how: str) -> tuple[float, float, float]:
    n = len(hits["with"])
    w, o = sum(hits[with_arm]) / n, sum(hits[without_arm]) / n
    scale = {"percent": 100.0, "count": float(n)}.get(how, 1.0)
    return scale * w, scale * o, scale * (o - w if how == "reversed" else w - o)


def _gap_mistakes(hits: dict[str, list[bool]]) -> list[tuple[tuple[float, float, float], str]]:
    """The numbers of each mistake that changes something on these questions (not cutting answers that
    end by themselves, for one, changes nothing), with its message."""
    return [(_gap_numbers(hits, a, b, how), message) for a, b, how, message in GAP_MISTAKES
            if how != "right" or hits[a] != hits["with"] or hits[b] != hits["without"]]


def _triple_close(a, b, tol: float = 1e-6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def _gap_number(name: str, got) -> float:
    if hasattr(got, "value") and hasattr(got, "low"):
        raise GradingFailure(f"{name}: return the accuracy as a plain number (an interval's .value), got "
                             f"{type(got).__name__}")
    return _real(name, got)


@register("10.prefix_gap", title="The experiment: knowledge accuracy after the caption with the prefix kept and dropped")
def check_prefix_gap(fn) -> None:

    g = fresh_generator()
    model = _zoo_prefix_model()
    for _ in range(4):  # fresh questions, redrawn until every mistake gives other numbers than the right answer
        data = ShapesBench(image_size=model.image_size, seed=randint(g, 0, 10**6)).knowledge(GAP_ITEMS)
        own = model.caption(data["images"])  # the model's own, greedy
        # half of them, drawn at random, replaced by a true caption of the scene: the function must read
        # the captions it is given (one that captions the images itself would not see these)
        world = ShapesWorld(seed=randint(g, 0, 10**6))
        true = torch.randperm(GAP_ITEMS, generator=g)[:GAP_ITEMS // 2].tolist()
        captions = [world.caption(data["scenes"][i]) if i in true else c for i, c in enumerate(own)]
        hits = _gap_arms(model, data, captions)
        want = _gap_numbers(hits, "with", "without", "right")
        mistakes = _gap_mistakes(hits)
        if not any(_triple_close(want, value, 0.5 / GAP_ITEMS) for value, _ in mistakes):
            break
    given = {**data, "images": data["images"].clone(), "questions": list(data["questions"]),
             "answers": list(data["answers"])}
    got = call(fn, model, given, list(captions))
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        extra = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise GradingFailure(f"prefix_gap must return a tuple (with_prefix, without_prefix, gap), got "
                             f"{type(got).__name__}{extra}")
    got = tuple(_gap_number(name, x) for name, x in zip(("with_prefix", "without_prefix", "gap"), got))
    if _triple_close(got, want):
        return
    for value, message in mistakes:
        if _triple_close(got, value):
            raise GradingFailure(message)
    n = GAP_ITEMS
    if not _triple_close(got[:2], want[:2]):
        mine = _gap_arms(model, data, own, only=("with", "without"))  # the model's own captions everywhere
        both = {"with": hits["with"], "without": hits["without"], "with_own": mine["with"],
                "without_own": mine["without"]}
        for with_arm, without_arm, which in (("with_own", "without_own", "in either arm"),
                                             ("with_own", "without", "in the arm with the prefix (model.ask with "
                                                                     "describe_first captions the images itself)"),
                                             ("with", "without_own", "in the arm without the prefix")):
            if _triple_close(got, _gap_numbers(both, with_arm, without_arm, "right")):
                raise GradingFailure(f"the captions given were not used {which}: those numbers come from the "
                                     f"model's own captions, but {len(true)} of the {n} captions given here are true "
                                     f"ones; ask each question after the caption you are given for its image")
    if _triple_close(got[:2], want[:2]):
        raise GradingFailure(f"gap = {got[2]:.4g}: it is with_prefix − without_prefix = {want[0]:.4g} − {want[1]:.4g} "
                             f"= {want[2]:.4g}")
    for name, g_, w_, how in (("with_prefix", got[0], want[0], "the prefix model, image embeddings then the caption "
                               "and the question"),
                              ("without_prefix", got[1], want[1], "the language model alone, the same caption and "
                               "question")):
        if abs(g_ - w_) > 1e-6:
            raise GradingFailure(f"{name} = {g_:.4g}, expected {w_:.4g} ({round(w_ * n)} of {n} questions right: "
                                 f"{how}, greedy, at most {GAP_TOKENS} new tokens, cut at the first '.', an answer "
                                 f"right when it equals the true one after normalising, as vqa_accuracy decides)")
    raise GradingFailure(f"prefix_gap returned {got}, expected {want}")  # pragma: no cover
