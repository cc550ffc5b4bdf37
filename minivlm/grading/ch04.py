"""Checks for the chapter 04 exercises (exercises/04_albef): ALBEF's momentum update, the
momentum-distillation targets, the distillation loss (a cross-entropy against soft targets), and
the hard negatives for image-text matching drawn by ITC similarity.

Each check runs the learner's function on fresh random inputs and compares it with the library
(minivlm.nn.momentum, minivlm.losses). The sampler is random, so its check draws many times and
measures: the rule that must hold on every draw (never an excluded column, i.e. never a positive)
and the frequencies, which must follow the softmax of each row's similarities, with tolerances many
standard deviations wide, so that a correct implementation never fails them. When an answer is
wrong the check tries to name the plausible mistake: the momentum weights swapped, an update that
autograd records (the momentum model would receive gradients), an update that is not in place;
mixing weights swapped, a softmax over the wrong axis, a teacher that is not detached; a loss summed
over the rows, probabilities where log-probabilities belong, a sign error; a sampler that returns
the positive, takes the argmax, draws uniformly, or normalises over the wrong axis.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_shape,
    fresh_generator,
    is_close,
    register,
    tensor_answer,
)
from minivlm.losses import mix_targets as library_mix_targets
from minivlm.losses import soft_cross_entropy as library_soft_cross_entropy
from minivlm.nn.momentum import momentum_copy
from minivlm.nn.momentum import momentum_update as library_momentum_update


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))




# ----------------------------------------------------------------------------- 04.momentum_update


def _online_model(g: torch.Generator) -> nn.Module:
    """A small model as training leaves it: random weights (biases and LayerNorm included), each with a .grad."""
    d_in, d_hidden, d_out = (int(x) for x in torch.randint(3, 9, (3,), generator=g))
    model = nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.LayerNorm(d_hidden), nn.Linear(d_hidden, d_out))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            p.grad = torch.randn(p.shape, generator=g)  # as after loss.backward()
    return model


def _flat(params: dict) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


@register("04.momentum_update", title="The momentum (EMA) update: target ← m·target + (1 − m)·online, in place")
def check_momentum_update(fn) -> None:
    g = fresh_generator()
    # a momentum far from ½ (so that swapped weights cannot pass), then one close to 1 as in ALBEF
    for m in (_uniform(g, 0.6, 0.9), _uniform(g, 0.97, 0.99)):
        online = _online_model(g)
        target = momentum_copy(online)  # requires_grad=False on every parameter
        with torch.no_grad():
            for p in target.parameters():  # a momentum model that has trailed for a while: not equal to online
                p.copy_(torch.randn(p.shape, generator=g))
        t0 = {k: p.detach().clone() for k, p in target.named_parameters()}
        o0 = {k: p.detach().clone() for k, p in online.named_parameters()}
        grads0 = {k: p.grad.clone() for k, p in online.named_parameters()}
        reference = copy.deepcopy(target)
        library_momentum_update(reference, online, m)
        want = {k: p.detach() for k, p in reference.named_parameters()}  # m·t0 + (1 − m)·o0

        got = call(fn, target, online, m)

        # ---- online is the model being trained: it must not move
        o1 = dict(online.named_parameters())
        if any(not torch.equal(o1[k].detach(), o0[k]) for k in o0):
            if all(is_close(o1[k], m * o0[k] + (1 - m) * t0[k]) for k in o0):
                raise GradingFailure("online was updated instead of target: the arguments are (target, online, "
                                     "momentum); the momentum model (target) trails the model being trained (online)")
            raise GradingFailure("online was modified: only the momentum model (target) moves; online is the model "
                                 "being trained, and only its optimizer changes it")
        if any(not torch.equal(p.grad, grads0[k]) for k, p in online.named_parameters() if p.grad is not None):
            raise GradingFailure("online's gradients (.grad) were changed: the momentum update reads online's weights "
                                 "only")

        # ---- the momentum model is never trained by backpropagation
        t1 = dict(target.named_parameters())
        if t1.keys() != t0.keys():
            raise GradingFailure(f"target's parameters changed names: expected {sorted(t0)}, got {sorted(t1)}; "
                                 f"update the existing parameters, do not replace them")
        if any(p.grad_fn is not None for p in t1.values()):
            raise GradingFailure("the update was recorded by autograd (target's parameters now have a grad_fn and "
                                 "require gradients): do it under torch.no_grad() (e.g. decorate the function with "
                                 "@torch.no_grad()); the momentum model must never receive gradients, only the EMA "
                                 "moves it")
        if any(p.requires_grad for p in t1.values()):
            raise GradingFailure("target's parameters now require gradients: the momentum model is never trained "
                                 "by backpropagation; keep requires_grad=False (update the existing parameters in "
                                 "place under torch.no_grad(), do not create new nn.Parameters)")
        if any(p.grad is not None for p in t1.values()):
            raise GradingFailure("target's parameters received a .grad: the momentum model takes no gradients; it "
                                 "only follows online's weights")

        # ---- in place, and the right values
        changed = {k for k in t0 if not torch.equal(t1[k].detach(), t0[k])}
        if not changed:
            if got is not None:
                raise GradingFailure(f"target was not changed; your function returned a {type(got).__name__} "
                                     f"instead: update target's parameters in place (p_m.mul_(m).add_(...) or "
                                     f"p_m.copy_(...)), since the trainer keeps using the module it holds")
            raise GradingFailure("target was not changed: `p_m = m * p_m + ...` only rebinds a local name; update "
                                 "the parameter itself in place (p_m.mul_(m).add_(...) or p_m.copy_(...))")
        if all(is_close(t1[k], want[k]) for k in t0):
            continue
        if changed != set(t0) and all(is_close(t1[k], want[k]) for k in changed):
            missed = sorted(set(t0) - changed)
            raise GradingFailure(f"parameters {missed} were left unchanged: update every parameter of the model "
                                 f"(biases and LayerNorm weights too), e.g. zip(target.parameters(), "
                                 f"online.parameters())")
        t, o, got_flat = _flat(t0), _flat(o0), _flat(t1)
        named = [
            ((1 - m) * t + m * o, "the weights are swapped: the momentum model keeps m of itself and takes 1 − m of "
                                  "online (m close to 1, so it moves slowly): target ← m·target + (1 − m)·online"),
            (o, "target was overwritten with online's weights: an EMA keeps m of the old target, "
                "target ← m·target + (1 − m)·online"),
            (m * t, "online's weights are missing: target ← m·target + (1 − m)·online"),
            (m * t + o, "online's weights are not scaled by (1 − m): target ← m·target + (1 − m)·online"),
            (t + (1 - m) * o, "the old target is not scaled by m: target ← m·target + (1 − m)·online"),
        ]
        named += [(fixed * t + (1 - fixed) * o, f"the momentum argument is ignored (a fixed {fixed}?): use the "
                                                f"momentum you are given (here {m:.4f})")
                  for fixed in (0.995, 0.999, 0.99, 0.9)]
        for candidate, message in named:
            if is_close(got_flat, candidate):
                raise GradingFailure(message)
        expect_close(f"target's parameters after momentum_update(target, online, {m:.4f})", got_flat,
                     torch.cat([want[k].reshape(-1) for k in t0]))


# ----------------------------------------------------------------------------- 04.mix_targets


@register("04.mix_targets", title="Momentum distillation's targets: (1 − α)·hard + α·softmax(teacher)")
def check_mix_targets(fn) -> None:
    g = fresh_generator()
    # α far from ½ on both sides (swapped weights cannot pass) and never a usual constant
    for n, c, alpha in ((5, 8, _uniform(g, 0.1, 0.3)), (6, 4, _uniform(g, 0.6, 0.9))):  # N != C
        hard = F.one_hot(torch.randint(c, (n,), generator=g), c).float()
        hard[0] = 0.0
        hard[0, :2] = 0.5  # a row with two positives (two true captions), normalised
        teacher = (torch.randn(n, c, generator=g) * 2).requires_grad_(True)  # the momentum model's logits
        given_hard, given_teacher = hard.clone(), teacher.detach().clone().requires_grad_(True)
        got = call(fn, given_hard, given_teacher, alpha)
        if not torch.equal(given_hard, hard) or not torch.equal(given_teacher.detach(), teacher.detach()):
            raise GradingFailure("an input was modified in place: build the targets as a new tensor")
        got = tensor_answer("the targets", got)
        if tuple(got.shape) == (c, n):
            raise GradingFailure(f"the targets are transposed: expected (N, C) = {(n, c)} like hard, got {(c, n)}")
        expect_shape("the targets (N, C), like hard", got, (n, c))
        if not got.is_floating_point():
            raise GradingFailure(f"the targets must be floats (probabilities), got {got.dtype}")
        want = library_mix_targets(hard, teacher, alpha)
        if not is_close(got, want):
            t = teacher.detach()
            soft = t.softmax(dim=1)
            named = [
                (alpha * hard + (1 - alpha) * soft, "the weights are swapped: (1 − α) on the data's targets (hard), "
                                                    "α on the teacher's probabilities"),
                ((1 - alpha) * hard + alpha * t.softmax(dim=0),
                 "softmax over the wrong axis (dim 0, down the columns): each row is one image's (or caption's) "
                 "distribution over the C candidates, softmax(teacher_logits, dim=1)"),
                ((1 - alpha) * hard + alpha * t, "the teacher's logits are mixed in raw: turn them into "
                                                 "probabilities first, softmax(teacher_logits, dim=1)"),
                ((1 - alpha) * hard + alpha * t.log_softmax(dim=1),
                 "log_softmax gives log-probabilities: the targets are probabilities, softmax(teacher_logits, dim=1)"),
                (hard + alpha * soft, "hard is not scaled by (1 − α): each row of the targets must sum to 1"),
                (soft, "only the teacher's probabilities: mix them with the data's targets, (1 − α)·hard + α·softmax"),
                ((1 - alpha) * hard + alpha * (t - t.max(1, keepdim=True).values).exp(),
                 "exp without normalising: use softmax(teacher_logits, dim=1), each row sums to 1"),
            ]
            named += [((1 - a) * hard + a * soft, f"alpha is ignored (a fixed {a}?): use the alpha you are given "
                                                  f"(here {alpha:.3f}; training ramps it up from 0)")
                      for a in (0.4, 0.5)]
            for candidate, message in named:
                if is_close(got, candidate):
                    raise GradingFailure(message)
            expect_close(f"mix_targets(hard, teacher_logits, alpha={alpha:.3f})", got, want)
        if got.requires_grad:
            raise GradingFailure("the targets are attached to the teacher's logits (they require grad): use "
                                 "teacher_logits.detach() (or compute under torch.no_grad()); the targets are "
                                 "constants, and a gradient through them would train the momentum model, which only "
                                 "the EMA may move")


# ----------------------------------------------------------------------------- 04.soft_cross_entropy


@register("04.soft_cross_entropy", title="The distillation loss: cross-entropy against soft targets")
def check_soft_cross_entropy(fn) -> None:
    g = fresh_generator()
    for n, c in ((5, 8), (7, 4)):  # N != C, so a wrong axis cannot pass
        logits = torch.randn(n, c, generator=g) * 2
        targets = (torch.randn(n, c, generator=g) * 2).softmax(dim=1)  # soft: every entry matters
        leaf = logits.clone().requires_grad_(True)
        given_targets = targets.clone()
        got = call(fn, leaf, given_targets)
        if not torch.equal(leaf.detach(), logits) or not torch.equal(given_targets, targets):
            raise GradingFailure("an input was modified in place: compute the loss without changing logits or targets")
        if isinstance(got, (int, float)):
            raise GradingFailure("soft_cross_entropy returned a Python number: keep it a tensor attached to the "
                                 "logits (no .item() or float()), or training gets no gradient")
        got = tensor_answer("the loss", got)
        if got.numel() != 1:
            if tuple(got.shape) == (n,):
                raise GradingFailure(f"the loss is one number per row, shape {(n,)}: take the mean over the rows")
            raise GradingFailure(f"soft_cross_entropy must return one number (a scalar), got a tensor of shape "
                                 f"{tuple(got.shape)}: sum over the classes, then take the mean over the rows")
        got = got.reshape(())
        want = library_soft_cross_entropy(logits, targets)
        if not is_close(got, want):
            lsm = logits.log_softmax(dim=1)
            named = [
                (-(targets * lsm).sum(), "the loss is summed over the rows: take the mean over the N rows (the "
                                         "loss of a batch must not grow with its size)"),
                (-(targets * lsm).mean(), "the loss is averaged over all N·C entries: sum over the classes (one "
                                          "row's cross-entropy), then take the mean over the rows"),
                ((targets * lsm).sum(1).mean(), "the sign is wrong: the cross-entropy is −Σ targets·log p (log p ≤ 0, "
                                                "so the loss is positive)"),
                (-(targets * logits.softmax(dim=1)).sum(1).mean(),
                 "probabilities where log-probabilities belong: use log_softmax(logits, dim=1) (a softmax is not a "
                 "cross-entropy)"),
                (-(targets * logits.log_softmax(dim=0)).sum(1).mean(),
                 "log_softmax over the wrong axis (dim 0, down the columns): each row is a distribution over its C "
                 "columns, log_softmax(logits, dim=1)"),
                (-(targets * logits).sum(1).mean(), "the logits are used raw: take log_softmax(logits, dim=1) first"),
                ((targets * (targets.log() - lsm)).sum(1).mean(),
                 "this is the KL divergence (the cross-entropy minus the targets' entropy): same gradient, but the "
                 "loss here is the cross-entropy −Σ targets·log softmax(logits), which equals F.cross_entropy for "
                 "one-hot targets"),
                (F.cross_entropy(logits, targets.argmax(dim=1)),
                 "the targets were turned into hard labels (argmax): distillation uses the whole soft distribution, "
                 "−Σ targets·log softmax(logits)"),
                (-(logits.softmax(dim=1) * targets.log()).sum(1).mean(),
                 "logits and targets are swapped: the log-probabilities are the student's, log_softmax(logits), "
                 "weighted by the targets"),
            ]
            for candidate, message in named:
                if is_close(got, candidate):
                    raise GradingFailure(message)
            expect_close(f"soft_cross_entropy on random {n}×{c} logits and soft targets", got, want)
        if not got.requires_grad:
            raise GradingFailure("the loss is detached from the logits: no gradient would reach the model")
        (grad,) = torch.autograd.grad(got, leaf)
        want_grad = (logits.softmax(dim=1) - targets) / n  # d/dlogits of the mean soft cross-entropy
        if not is_close(grad, want_grad, atol=1e-5):
            raise GradingFailure("the loss has the right value but the wrong gradient with respect to the logits: "
                                 "is part of the computation detached (e.g. a .detach() inside the log_softmax)?")
    # one-hot targets: the ordinary cross-entropy
    logits = torch.randn(6, 5, generator=g)
    labels = torch.randint(5, (6,), generator=g)
    got = call(fn, logits.clone(), F.one_hot(labels, 5).float())
    expect_close("soft_cross_entropy with one-hot targets (must equal F.cross_entropy)",
                 torch.as_tensor(got).detach().reshape(()), F.cross_entropy(logits, labels), atol=1e-4)


# ----------------------------------------------------------------------------- 04.sample_negatives


def _itc_like(b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) similarities as ALBEF's ITC gives them (the positives the most similar) and the exclude mask:
    the diagonal, a few other captions true of the image, one row with a single allowed column."""
    sim = torch.randn(b, b, generator=g) * 2
    exclude = torch.eye(b, dtype=torch.bool)
    extra = torch.rand(b, b, generator=g) < 0.12  # captions that are also true of image i (a paraphrase...)
    exclude |= extra
    k = int(torch.randint(b, (1,), generator=g))  # row k: a single negative, any column but k
    exclude[k] = True
    exclude[k, (k + 1 + int(torch.randint(b - 1, (1,), generator=g))) % b] = False
    full = exclude.all(dim=1).nonzero().flatten()
    exclude[full, (full + 1) % b] = False  # every row keeps at least one negative
    sim = sim + 6.0 * exclude.float()  # what is true of the image looks like it: the positives score highest
    return sim, exclude


def _fmt(v: torch.Tensor) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in v.tolist()) + "]"


def _draw(fn, sim: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    n, m = sim.shape
    given_sim, given_exclude = sim.clone(), exclude.clone()
    got = call(fn, given_sim, given_exclude)
    if not torch.equal(given_sim, sim):
        raise GradingFailure("similarity was modified in place (e.g. similarity[exclude] = -inf): work on a copy, "
                             "e.g. similarity.masked_fill(exclude, float('-inf')); the caller still needs the "
                             "similarities (they are the ITC logits)")
    if not torch.equal(given_exclude, exclude):
        raise GradingFailure("exclude was modified in place: leave it as it is")
    got = tensor_answer("the indices", got)
    if tuple(got.shape) == (n, 1):
        raise GradingFailure(f"the indices have shape {(n, 1)}: return one index per row, shape (N,) = {(n,)} "
                             f"(torch.multinomial(weights, 1) gives (N, 1): squeeze it)")
    if tuple(got.shape) == (n, m):
        raise GradingFailure("the result is (N, M): return one sampled column index per row, shape (N,), not "
                             "the weights")
    expect_shape("the indices (one per row)", got, (n,))
    if got.is_floating_point() or got.dtype == torch.bool:
        raise GradingFailure(f"the indices must be integers (torch.long), got {got.dtype}")
    if bool((got < 0).any()) or bool((got >= m).any()):
        raise GradingFailure(f"an index is outside [0, {m - 1}]: each must be a column of similarity")
    return got.long()


@register("04.sample_negatives", title="Hard negatives: a column per row drawn by softmax(similarity), never a positive")
def check_sample_negatives(fn) -> None:
    g = fresh_generator()
    # ---- the rule of every draw: never an excluded column (a positive)
    diagonal, other = 0, 0
    for _ in range(20):
        b = int(torch.randint(6, 17, (1,), generator=g))
        sim, exclude = _itc_like(b, g)
        got = _draw(fn, sim, exclude)
        hit = exclude[torch.arange(b), got]
        diagonal += int((hit & (got == torch.arange(b))).sum())
        other += int((hit & (got != torch.arange(b))).sum())
    weight_zero = ("give every excluded column weight 0: its similarity −inf before the softmax, or its weight zeroed "
                   "after it (a similarity of 0 still has weight exp(0) > 0)")
    if diagonal:
        raise GradingFailure(f"a positive was drawn ({diagonal} times row i got its own column i, {other} times another "
                             f"column marked in exclude): never draw a column where exclude is True; {weight_zero}")
    if other >= 20:  # the other positives are as similar as the diagonal: drawn often, unless excluded too
        raise GradingFailure(f"an excluded column was drawn {other} times, but never the diagonal: you excluded only "
                             f"the diagonal, and exclude also marks other columns that are true of row i (e.g. a "
                             f"paraphrase of the image's own caption); never draw any column where exclude is True")
    if other:
        raise GradingFailure(f"a positive was drawn ({other} times a column marked in exclude): never draw a column "
                             f"where exclude is True; {weight_zero}")

    # ---- the frequencies: many rows sharing a few similarity patterns, one draw each
    k, m, r = 3, 6, 5000  # 5,000 draws per pattern: a frequency's SD is at most 0.0071, the tolerance 7 SDs
    tol = 0.05
    for _ in range(200):  # patterns on which every named mistake is far (>= 0.2) from the right frequencies
        patterns = torch.randn(k, m, generator=g) * 1.5
        pat_exclude = torch.zeros(k, m, dtype=torch.bool)
        pat_exclude[torch.arange(k), torch.randperm(m, generator=g)[:k]] = True  # each pattern's positive
        patterns = patterns + 3.0 * pat_exclude.float()  # the positive is the most similar
        rows = torch.arange(k).repeat(r)  # row i follows pattern i % k
        sim, exclude = patterns[rows], pat_exclude[rows]
        weights = sim.softmax(dim=1).masked_fill(exclude, 0.0)
        right = weights[:k] / weights[:k].sum(1, keepdim=True)  # (K, M): rows 0..K-1 are one of each pattern
        allowed = (~pat_exclude).float()
        uniform = allowed / allowed.sum(1, keepdim=True)
        argmax = F.one_hot(patterns.masked_fill(pat_exclude, float("-inf")).argmax(1), m).float()
        by_column = sim.softmax(dim=0).masked_fill(exclude, 0.0)[:k]
        by_column = by_column / by_column.sum(1, keepdim=True)
        easiest = (-sim).softmax(dim=1).masked_fill(exclude, 0.0)[:k]
        easiest = easiest / easiest.sum(1, keepdim=True)
        named = [
            (argmax, "always the most similar allowed column: draw at random in proportion to the softmax weights "
                     "(torch.multinomial), don't take the argmax; ALBEF wants hard negatives, but varied ones"),
            (uniform, "the draws are uniform over the allowed columns: weight column j by softmax(similarity[i])[j], "
                      "so that the most similar (hardest) negatives are drawn most often"),
            (by_column, "softmax over the wrong axis (dim 0, down the columns): row i's weights are "
                        "softmax(similarity[i]) over its columns (dim=1)"),
            (easiest, "the least similar columns are drawn most often: hard negatives are the most similar, "
                      "weights softmax(+similarity), not softmax(−similarity)"),
        ]
        if all(float((c - right).abs().max()) >= 0.2 for c, _ in named):
            break
    got = _draw(fn, sim, exclude)
    if bool(exclude[torch.arange(len(got)), got].any()):
        raise GradingFailure("an excluded column (a positive) was drawn: never draw a column where exclude is True")
    freq = torch.stack([torch.bincount(got[rows == p], minlength=m).float() / r for p in range(k)])  # (K, M)
    if float((freq - right).abs().max()) <= tol:
        return
    if torch.equal(freq, argmax):  # not a frequency near the argmax's: every single draw is the argmax
        raise GradingFailure(named[0][1])
    for candidate, message in named[1:]:
        if float((freq - candidate).abs().max()) <= tol:
            raise GradingFailure(message)
    p = int((freq - right).abs().max(dim=1).values.argmax())
    raise GradingFailure(f"the draws do not follow softmax(similarity[i]) over the allowed columns: for rows with "
                         f"similarities {_fmt(patterns[p])} (exclude {pat_exclude[p].int().tolist()}), over {r} draws "
                         f"the columns came {_fmt(freq[p])} of the time; expected about {_fmt(right[p])}")
