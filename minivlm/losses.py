"""Training losses, one function per idea (chapter 02: CLIP's symmetric contrastive loss).

Later chapters add theirs here (ITM, MLM, captioning, distillation), each next to the chapter
that introduces it.

Empty inputs, one rule for every loss that averages over examples or positions (mlm_loss,
lm_loss, itm_loss, soft_cross_entropy, multi_positive_itc, and the models' own such as BEiT-3's
masked_token_loss): a loss over zero elements (an empty batch, a batch in which masking chose
nothing, a mask that is all padding) is 0, still attached to the graph, so that `backward()`
works and moves no weight, never NaN (the mean of nothing), which would poison every later step.
A training step adds such a 0 and goes on. The contrastive clip_loss is the exception: it needs
negatives, and fewer than 2 pairs is a ValueError.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivlm.utils import check_tensor


def check_logit_scale(logit_scale) -> torch.Tensor | float:
    """A positive scalar: a Python number or a one-element tensor."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar, got a tensor of shape {tuple(logit_scale.shape)}")
        value = float(logit_scale.detach())
    elif isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool):
        value = float(logit_scale)
    else:
        raise TypeError(f"logit_scale must be a float or a scalar tensor, got {type(logit_scale).__name__}")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"logit_scale must be positive (it is already exponentiated), got {value}")
    if not math.isfinite(value):
        raise ValueError(f"logit_scale must be finite (it is already exponentiated: exp of the learned "
                         f"log-scale, which CLIP clamps at 100), got {value}")
    return logit_scale.reshape(()) if isinstance(logit_scale, torch.Tensor) else value


def check_feature_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Both (B, D) float, with the same B and D."""
    check_tensor("image_features", image_features, ndim=2, dtype="float")
    check_tensor("text_features", text_features, ndim=2, dtype="float")
    if image_features.shape != text_features.shape:
        raise ValueError(
            "image_features and text_features must both be (B, D) with the same B and D, got "
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)}"
        )


def check_unit_rows(name: str, features: torch.Tensor, tol: float = 1e-3) -> None:
    """ValueError unless `features` (B, D) is finite and every row has L2 norm within `tol` of 1
    (wider for float16/bfloat16, whose rounding alone moves a norm by about their eps)."""
    x = features.detach()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(x)).sum())} NaN/inf value(s)")
    tol = max(tol, 2 * torch.finfo(x.dtype).eps)
    norms = torch.linalg.vector_norm(x.float(), dim=-1)  # (B,)
    deviation = (norms - 1).abs()
    worst = int(deviation.argmax())
    if float(deviation[worst]) > tol:
        raise ValueError(
            f"{name} must be L2-normalised (every row of norm 1 within {tol:g}), but row {worst} has norm "
            f"{float(norms[worst]):.6g} (largest deviation {float(deviation[worst]):.3g}); apply F.normalize(x, dim=-1) first"
        )


def nothing_to_average(logits: torch.Tensor) -> torch.Tensor:
    """The loss over zero elements (see the module docstring): 0, attached to the graph of `logits`."""
    return logits.sum() * 0.0


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
    """(N, D), (M, D), scale → (N, M) scaled cosine similarities (features already normalised)."""
    return logit_scale * image_features @ text_features.t()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss over a batch of B matching (image, text) pairs.

    image_features, text_features: (B, D), already L2-normalised; pair i is (image i, text i).
    logit_scale: the temperature's inverse, already exponentiated (a float or scalar tensor).

    Row i of the (B, B) logits asks "which of the B texts goes with image i?"; column j asks
    "which image goes with text j?". Both are B-way classifications whose answer is the
    diagonal, and the loss is the mean of the two cross-entropies (the paper's Figure 3).
    Every other pair in the batch serves as a negative, which is why CLIP wants large batches.

    Raises ValueError for B < 2 (one pair has no negative: its loss is exactly 0), for features
    that are not finite or whose rows are not unit length (within 1e-3), and for a logit_scale
    that is not positive and finite.
    """
    check_feature_pair(image_features, text_features)
    scale = check_logit_scale(logit_scale)
    B = image_features.shape[0]
    if B < 2:
        raise ValueError(
            f"clip_loss needs a batch of at least 2 pairs (a contrastive loss needs negatives; with 1 pair "
            f"it is exactly 0), got B={B}; if this is the last batch of a DataLoader, use drop_last=True"
        )
    for name, f in (("image_features", image_features), ("text_features", text_features)):
        check_unit_rows(name, f)
    logits = clip_logits(image_features, text_features, scale)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss_i2t = F.cross_entropy(logits, labels)  # each image picks its text
    loss_t2i = F.cross_entropy(logits.t(), labels)  # each text picks its image
    return (loss_i2t + loss_t2i) / 2


# ----------------------------------------------------------------------------- chapter 03: MLM and ITM


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Masked-language-modelling loss: the mean cross-entropy over the chosen positions only.

    logits (B, T, V), labels (B, T) with the original id at chosen positions and `ignore_index`
    (-100, `minivlm.data.masking.IGNORE_INDEX`) elsewhere. A batch in which nothing was chosen
    gives 0 (still attached to the graph), not NaN (the module's rule for empty inputs).
    """
    check_tensor("logits", logits, ndim=3, dtype="float")
    check_tensor("labels", labels, ndim=2, dtype="int")
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits (B, T, V) and labels (B, T) must agree on B and T, got logits "
                         f"{tuple(logits.shape)} and labels {tuple(labels.shape)}")
    chosen = labels != ignore_index
    if not bool(chosen.any()):
        return nothing_to_average(logits)
    bad = labels[chosen]
    if int(bad.min()) < 0 or int(bad.max()) >= logits.shape[-1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[-1] - 1}] (or be {ignore_index}), got values in "
                         f"[{int(bad.min())}, {int(bad.max())}]")
    return F.cross_entropy(logits[chosen], labels[chosen])  # (K, V) vs (K,)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching loss: a 2-way cross-entropy. logits (B, 2) (column 1 = "match"),
    labels (B,) in {0, 1} (1 = the text describes the image). B = 0 gives 0 (the module's rule)."""
    check_tensor("logits", logits, ndim=2, dtype="float")
    check_tensor("labels", labels, ndim=1, dtype="int")
    if logits.shape[1] != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (B, 2) and labels (B,), got logits {tuple(logits.shape)} and labels "
                         f"{tuple(labels.shape)}")
    if not labels.numel():
        return nothing_to_average(logits)
    if int(labels.min()) < 0 or int(labels.max()) > 1:
        raise ValueError(f"labels must be 0 (no match) or 1 (match), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------- chapter 04: ALBEF


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets: mean over rows of −Σ_j targets[j]·log softmax(logits)[j].

    logits and targets (N, C); each row of targets is a distribution (non-negative, sums to 1).
    With one-hot targets this is F.cross_entropy. ALBEF's momentum distillation uses it with
    targets = (1 − α)·one-hot + α·softmax(momentum model's logits) (see `mix_targets`).
    N = 0 gives 0 (the module's rule for empty inputs).
    """
    check_tensor("logits", logits, ndim=2, dtype="float")
    check_tensor("targets", targets, ndim=2, dtype="float")
    if logits.shape != targets.shape:
        raise ValueError(f"logits and targets must have the same shape (N, C), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if not len(logits):
        return nothing_to_average(logits)
    t = targets.detach()
    if bool((t < 0).any()) or not torch.allclose(t.sum(1), torch.ones_like(t[:, 0]), atol=1e-3):
        raise ValueError("every row of targets must be a probability distribution (>= 0, summing to 1); got row "
                         f"sums in [{float(t.sum(1).min()):.4g}, {float(t.sum(1).max()):.4g}], min value "
                         f"{float(t.min()):.4g}")
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def multi_positive_itc(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss where an image may have several true captions in the batch
    (ShapesWorld repeats captions): each row's target is uniform over its positives.

    similarity (B, B) image-to-text logits, already scaled by 1 / temperature; positives (B, B)
    bool, True where text j describes image i, with at least one True in every row and column.
    With positives = the identity this is `clip_loss` on the same logits (VLMo, chapter 05; BEiT-3's
    retrieval fine-tuning, chapter 08)."""
    check_tensor("similarity", similarity, ndim=2, dtype="float")
    check_tensor("positives", positives, ndim=2, dtype="bool")
    if similarity.shape != positives.shape or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity and positives must both be (B, B), got {tuple(similarity.shape)} and "
                         f"{tuple(positives.shape)}")
    if not bool(positives.any(1).all() and positives.any(0).all()):
        raise ValueError("every image and every text needs at least one positive (the diagonal, at least)")
    pos = positives.float()
    return (soft_cross_entropy(similarity, pos / pos.sum(1, keepdim=True))
            + soft_cross_entropy(similarity.t(), pos.t() / pos.t().sum(1, keepdim=True))) / 2


def check_alpha(alpha) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the distillation weight) must be a float in [0, 1], got {alpha!r}")
    return float(alpha)


def mix_targets(hard: torch.Tensor, teacher_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Momentum distillation's targets: (1 − α)·hard + α·softmax(teacher_logits), row by row.

    hard (N, C): the data's targets (one-hot, or several ones normalised); teacher_logits (N, C):
    the momentum model's logits for the same rows. No gradient flows into the teacher."""
    check_tensor("hard", hard, ndim=2, dtype="float")
    check_tensor("teacher_logits", teacher_logits, ndim=2, dtype="float")
    if hard.shape != teacher_logits.shape:
        raise ValueError(f"hard and teacher_logits must have the same shape, got {tuple(hard.shape)} and "
                         f"{tuple(teacher_logits.shape)}")
    a = check_alpha(alpha)
    return (1 - a) * hard + a * teacher_logits.detach().softmax(dim=1)


def sample_negatives(similarity: torch.Tensor, exclude: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """ALBEF's hard negatives: for each row i, draw one column j with probability
    softmax(similarity[i])[j], renormalised over the columns not excluded.

    similarity (N, M): e.g. image-to-text ITC logits of a batch (N = M = B); exclude (N, M)
    bool, True where column j is a positive for row i (the diagonal; captions identical to, or
    true of, the positive). Columns that look most like the positive are drawn most often.
    Returns (N,) long indices, never an excluded column. A row whose every column is excluded
    is a ValueError (no negative exists).
    """
    check_tensor("similarity", similarity, ndim=2, dtype="float")
    check_tensor("exclude", exclude, ndim=2, dtype="bool")
    if similarity.shape != exclude.shape:
        raise ValueError(f"similarity and exclude must have the same shape, got {tuple(similarity.shape)} and "
                         f"{tuple(exclude.shape)}")
    empty = exclude.all(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:5]} have every column excluded: no negative to sample (a batch needs at "
                         "least one pair that does not match)")
    with torch.no_grad():
        weights = similarity.detach().float().softmax(dim=1).masked_fill(exclude, 0.0)
        # a row whose allowed weights all underflow to 0 falls back to uniform over the allowed columns
        dead = weights.sum(dim=1) <= 0
        if bool(dead.any()):
            weights[dead] = (~exclude[dead]).float()
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)


# ----------------------------------------------------------------------------- chapter 06: language modelling


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token (language-modelling) loss: position t's logits predict token t + 1.

    logits (B, T, V) from a causal decoder over ids (B, T); attention_mask (B, T), True on real
    tokens (None: all real): a padded position is never a target. The mean cross-entropy over
    every target token, with `label_smoothing` (BLIP: 0.1) of the probability spread evenly.
    No target token at all (an empty batch, a mask that is all padding) gives 0 (the module's rule).
    """
    check_tensor("logits", logits, ndim=3, dtype="float")
    check_tensor("ids", ids, ndim=2, dtype="int")
    if logits.shape[:2] != ids.shape:
        raise ValueError(f"logits (B, T, V) and ids (B, T) must agree on B and T, got logits "
                         f"{tuple(logits.shape)} and ids {tuple(ids.shape)}")
    if ids.shape[1] < 2:
        raise ValueError(f"a next-token loss needs at least 2 tokens per row, got ids of shape {tuple(ids.shape)}")
    if not isinstance(label_smoothing, (int, float)) or isinstance(label_smoothing, bool) \
            or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}")
    targets = ids[:, 1:]
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, ndim=2)
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
        targets = targets.masked_fill(~attention_mask[:, 1:].bool(), -100)
    if not bool((targets != -100).any()):
        return nothing_to_average(logits)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100,
                           label_smoothing=float(label_smoothing))


def momentum_itc(trainer, image_feat: torch.Tensor, text_feat: torch.Tensor,
                 image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, positives: torch.Tensor, alpha: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITC of B images and B texts against the batch and the trainer's queues of momentum
    features (ALBEF's, chapter 04; BLIP reuses it: a trainer with `model`, `config.queue_size`,
    `config.distill`, `image_queue`, `text_queue` and `training`), with targets mixed with the momentum model's similarities when distilling; the
    momentum features then join the queues (in training). Features: (B, E) unit rows, `_m` from
    the momentum model; positives (B, B): caption j is true of image i.
    Returns (loss, image→text similarities (B, B), text→image (B, B)), both times 1/temperature,
    for drawing ITM's hard negatives."""
    m, c, b = trainer.model, trainer.config, image_feat.shape[0]
    scale = m.scale()
    with torch.no_grad():
        image_all = torch.cat([image_feat_m, trainer.image_queue.features])  # (B + Q, E)
        text_all = torch.cat([text_feat_m, trainer.text_queue.features])
        # targets: every true caption of an image in the batch is a positive (normalised), the queue none
        hard = torch.zeros(b, b + c.queue_size, device=image_feat.device)
        hard_i2t, hard_t2i = hard.clone(), hard.clone()
        hard_i2t[:, :b] = positives.float() / positives.float().sum(1, keepdim=True)
        hard_t2i[:, :b] = positives.t().float() / positives.t().float().sum(1, keepdim=True)
        if c.distill:
            targets_i2t = mix_targets(hard_i2t, scale * image_feat_m @ text_all.t(), alpha)
            targets_t2i = mix_targets(hard_t2i, scale * text_feat_m @ image_all.t(), alpha)
        else:
            targets_i2t, targets_t2i = hard_i2t, hard_t2i
    sim_i2t = scale * image_feat @ text_all.t()  # (B, B + Q)
    sim_t2i = scale * text_feat @ image_all.t()
    itc = (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2
    if trainer.training:
        trainer.image_queue.enqueue(image_feat_m)
        trainer.text_queue.enqueue(text_feat_m)
    return itc, sim_i2t[:, :b], sim_t2i[:, :b]


def itm_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, positives: torch.Tensor, hard: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM's negatives for a batch: (a wrong caption for each image (B,), a wrong image for each
    caption (B,)), drawn in proportion to the softmax of the ITC similarities (B, B) (hard) or
    uniformly, never a positive."""
    if not hard:  # uniform over the allowed columns: softmax of a constant
        sim_i2t = sim_t2i = torch.zeros_like(sim_i2t)
    return sample_negatives(sim_i2t, positives), sample_negatives(sim_t2i, positives.t())
