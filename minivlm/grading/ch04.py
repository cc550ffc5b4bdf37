"""Checks for the chapter 04 exercises (exercises/04_albef): the momentum (EMA) update of a momentum
model that keeps only some of the online model's parts (paired by name), the feature queue as a
ring buffer that any batch size can enter (wrapping around its end), momentum distillation for
masked-language modelling (the MoD loss over the masked positions only), the ITM batch of ALBEF
(B true pairs, a hard negative caption per image and a hard negative image per caption, drawn by
ITC similarity), and an experiment: momentum distillation off and on at 40 % caption noise, on a
tiny linear dual encoder.

The deterministic pieces are compared with references on fresh random inputs, with their
gradients, empty and size-1 inputs, and the inputs checked for changes afterwards (the online
model's weights and its .grad included: a momentum update that calls online.zero_grad() throws the
optimizer's gradients away). The test models are laid out so that a shortcut gives a wrong answer:
the momentum model's parts come in another order than the online model's, so pairing parameters by
position fails; queue pointers and batch sizes are drawn (a batch that ends exactly at the end of
the queue, one that runs past it, one longer than the queue, an empty one). The ITM sampler is
random, so its check draws many batches and measures the structure of the draws: never a positive
(with a positives matrix that is not symmetric, so that the captions' exclusions must be its
transpose), a draw per row in proportion to the softmax of that row's own similarities in each
direction (the captions' from sim_t2i, which is not sim_i2t transposed), and two calls that differ.

The experiment `mod_experiment(image_features, text_features, alpha, steps, seed)` is run by the
check on noisy pairs it draws: after 0 steps (the seed decides the initial weights), after 10 steps
against a reference run from the same seed (the recipe: the momentum update, then the teacher's
targets, both directions, one Adam step; the momentum update after the Adam step is accepted too),
and after the full run, MoD off and on, whose
held-out recall and fit of the noisy pairs the check measures from the returned weights and
compares with the reference run's. When an answer is wrong the check tries to name the plausible
mistake.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.masking import IGNORE_INDEX
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_gradients,
    expect_shape,
    expect_zero_loss,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)
from minivlm.losses import sample_negatives


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


# ----------------------------------------------------------------------------- 04.momentum_update

_PARTS = ("vision", "text", "proj", "itm_head")


def _part(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))  # every part alike: pairing by position gives no error


def _momentum_pair(g: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """online: a model as training leaves it (random weights, each with a .grad), its four parts in a
    drawn order; target: a momentum model of three of them (no ITM head), in another order, with
    weights of its own (it has trailed for a while) and requires_grad=False."""
    d = randint(g, 3, 6)
    while True:
        online_order = [_PARTS[i] for i in torch.randperm(4, generator=g).tolist()]
        target_order = [p for p in (_PARTS[i] for i in torch.randperm(4, generator=g).tolist()) if p != "itm_head"]
        if [p for p in online_order if p != "itm_head"][:3] != target_order and online_order[:3] != target_order:
            break  # zip(target.parameters(), online.parameters()) pairs the wrong parts
    online = nn.ModuleDict({name: _part(d) for name in online_order})
    target = nn.ModuleDict({name: _part(d) for name in target_order})
    with torch.no_grad():
        for p in online.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            p.grad = torch.randn(p.shape, generator=g)  # as after loss.backward()
        for p in target.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            p.requires_grad_(False)
    return target, online


@torch.no_grad()
def reference_momentum_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Every parameter of target, in place: m·target + (1 − m)·online's parameter of the same name."""
    theirs = dict(online.named_parameters())
    for name, p in target.named_parameters():
        p.mul_(momentum).add_(theirs[name].detach(), alpha=1 - momentum)


def _flat(params: dict) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


@register("04.momentum_update", title="The momentum (EMA) update of a momentum model with fewer parts, paired by name")
def check_momentum_update(fn) -> None:
    g = fresh_generator()
    # a momentum far from ½ (swapped weights cannot pass), then one close to 1 as in ALBEF
    for m in (_uniform(g, 0.6, 0.9), _uniform(g, 0.97, 0.99)):
        target, online = _momentum_pair(g)
        t0 = {k: p.detach().clone() for k, p in target.named_parameters()}
        o0 = {k: p.detach().clone() for k, p in online.named_parameters()}
        grads0 = {k: p.grad.clone() for k, p in online.named_parameters()}
        reference = copy.deepcopy(target)
        reference_momentum_update(reference, online, m)
        want = {k: p.detach() for k, p in reference.named_parameters()}

        got = call(fn, target, online, m)

        # ---- online is the model being trained: its weights and its gradients stay as they were
        o1 = dict(online.named_parameters())
        if any(not torch.equal(o1[k].detach(), o0[k]) for k in o0):
            raise GradingFailure("online was modified: only the momentum model (target) moves; online is the model "
                                 "being trained, and only its optimizer changes it (the arguments are (target, "
                                 "online, momentum))")
        if any(p.grad is None for p in online.parameters()):
            raise GradingFailure("online's gradients (.grad) were cleared (online.zero_grad()?): a trainer may call "
                                 "the momentum update anywhere in its step (MoCo's code: between loss.backward() and "
                                 "the optimizer's step, which still needs them); read online's weights and leave "
                                 "everything else about it alone")
        if any(not torch.equal(p.grad, grads0[k]) for k, p in online.named_parameters()):
            raise GradingFailure("online's gradients (.grad) were changed: the momentum update reads online's weights "
                                 "only, and the optimizer still needs the gradients")

        # ---- the momentum model is never trained by backpropagation
        t1 = dict(target.named_parameters())
        if t1.keys() != t0.keys():
            raise GradingFailure(f"target's parameters changed names: expected {sorted(t0)}, got {sorted(t1)}; "
                                 f"update the existing parameters, do not replace them")
        if any(p.grad_fn is not None for p in t1.values()):
            raise GradingFailure("the update was recorded by autograd (target's parameters now have a grad_fn and "
                                 "require gradients): the momentum model never receives gradients, only the EMA "
                                 "moves it; update it where autograd does not record")
        if any(p.requires_grad for p in t1.values()):
            raise GradingFailure("target's parameters now require gradients: the momentum model is never trained by "
                                 "backpropagation; keep requires_grad=False (change the existing parameters in place, "
                                 "do not create new nn.Parameters)")
        if any(p.grad is not None for p in t1.values()):
            raise GradingFailure("target's parameters received a .grad: the momentum model takes no gradients; it "
                                 "only follows online's weights")

        # ---- in place, paired by name, the right values
        changed = {k for k in t0 if not torch.equal(t1[k].detach(), t0[k])}
        if not changed:
            if got is not None:
                raise GradingFailure(f"target was not changed; your function returned a {type(got).__name__} "
                                     f"instead: change target's parameters in place, since the trainer keeps using the "
                                     f"module it holds")
            raise GradingFailure("target was not changed: `p = m * p + ...` only rebinds a local name; change the "
                                 "parameter itself, in place")
        if all(is_close(t1[k], want[k]) for k in t0):
            continue
        if changed != set(t0) and all(is_close(t1[k], want[k]) for k in changed):
            missed = sorted(set(t0) - changed)
            raise GradingFailure(f"parameters {missed} were left unchanged: update every parameter of target (biases "
                                 f"and LayerNorm weights too)")
        shared = [k for k in o0 if k in t0]  # online's parameters without the ITM head, in online's order
        by_position = [{k: m * t0[k] + (1 - m) * o0[ko] for k, ko in zip(t0, order)} for order in (list(o0), shared)]
        if any(all(is_close(t1[k], pairing[k]) for k in t0) for pairing in by_position):
            raise GradingFailure(f"the parameters were paired by position (zip of the two parameter lists): online "
                                 f"has parts the momentum model does not keep (an ITM head) and its parts come in "
                                 f"another order ({list(dict(online.named_children()))} against "
                                 f"{list(dict(target.named_children()))}), so target's vision weights were mixed with "
                                 f"another part's; pair each parameter of target with online's parameter of the "
                                 f"same name")
        t, o = _flat(t0), torch.cat([o0[k].reshape(-1) for k in t0])  # online's namesakes, in target's order
        got_flat = _flat(t1)
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
                     _flat(want))


# ----------------------------------------------------------------------------- 04.enqueue


def reference_enqueue(queue: torch.Tensor, ptr: int, features: torch.Tensor) -> int:
    """Row k of features goes to row (ptr + k) % Q of the queue, in order (a later row overwrites an
    earlier one, so a batch longer than the queue leaves its last Q rows); returns (ptr + B) % Q."""
    q, b = queue.shape[0], features.shape[0]
    with torch.no_grad():
        rows = (ptr + torch.arange(b)) % q
        keep = slice(max(0, b - q), b)
        queue[rows[keep]] = features[keep].detach().to(queue.dtype)
    return (ptr + b) % q


def _enqueue_cases(g: torch.Generator) -> list[tuple[int, int, int, int, torch.dtype]]:
    """(Q, E, ptr, B, queue dtype): inside the queue, ending exactly at its end, one row at the last
    slot, running past the end, longer than the queue, empty, a queue of one row, a float64 queue."""
    q = randint(g, 7, 12)
    e = randint(g, 2, 5)
    inside_ptr = randint(g, 0, q - 4)
    return [
        (q, e, inside_ptr, randint(g, 1, q - inside_ptr - 1), torch.float32),  # inside: no wrap
        (q, e, q - 3, 3, torch.float32),  # ends exactly at the end: the pointer goes back to 0
        (q, e, q - 1, 1, torch.float32),  # one row, in the last slot
        (q, e, randint(g, q - 4, q - 2), randint(g, 5, q - 1), torch.float32),  # runs past the end: wraps
        (q, e, randint(g, 1, q - 1), q + randint(g, 1, q - 1), torch.float32),  # longer than the queue
        (q, e, randint(g, 0, q - 1), 0, torch.float32),  # an empty batch
        (1, e, 0, 2, torch.float32),  # a queue of one row
        (q, e, randint(g, q - 4, q - 2), randint(g, 5, q - 1), torch.float64),  # the queue keeps its dtype
    ]


def _enqueue_mistakes(queue, ptr, features) -> list:
    """(queue after, message) of the plausible wrong writes."""
    q, b = queue.shape[0], features.shape[0]
    f = features.detach().to(queue.dtype)
    named = []
    truncated = queue.clone()
    truncated[ptr:ptr + b] = f[:q - ptr]
    named.append((truncated, "the rows that run past the end of the queue were dropped: a batch that does not fit "
                             "before the end wraps around, its remaining rows written from row 0 on"))
    if b > q:
        first = queue.clone()
        first[(ptr + torch.arange(q)) % q] = f[:q]
        named.append((first, "the batch is longer than the queue and the queue kept its FIRST Q rows: a queue keeps "
                             "the newest features, so the last Q rows of the batch remain (each row overwrites what "
                             "came earlier)"))
    if b <= q:
        at_start = queue.clone()
        at_start[torch.arange(b) % q] = f
        named.append((at_start, "the batch was written from row 0: it goes over the oldest rows, from the pointer on"))
        before = queue.clone()
        before[(ptr - b + torch.arange(b)) % q] = f
        named.append((before, "the batch was written before the pointer: the pointer marks the oldest row, where the "
                              "batch starts"))
        reversed_ = queue.clone()
        reversed_[(ptr + torch.arange(b)) % q] = f.flip(0)
        named.append((reversed_, "the batch was written in reverse order: row k of the batch goes to row ptr + k"))
    return named


@register("04.enqueue", title="The feature queue: a batch over the oldest rows, wrapping around the end, any batch size")
def check_enqueue(fn) -> None:
    g = fresh_generator()
    for q, e, ptr, b, dtype in _enqueue_cases(g):
        queue = F.normalize(torch.randn(q, e, generator=g), dim=1).to(dtype)
        features = F.normalize(torch.randn(b, e, generator=g), dim=1)
        given_queue = queue.clone()
        given_features = features.clone().requires_grad_(True)  # features that still carry a graph
        storage = given_queue.data_ptr()
        what = f"a queue of {q} rows, pointer {ptr}, a batch of {b}"
        try:
            got = call(fn, given_queue, ptr, given_features)
        except GradingFailure as failure:
            if str(failure).startswith("not implemented yet"):
                raise
            hint = ""
            if ptr + b > q:
                hint = ("; the batch runs past the end of the queue, so it must wrap around to row 0 (a slice "
                        "queue[ptr:ptr + B] stops at the end)")
            elif b == 0:
                hint = "; an empty batch changes nothing (the last batch of an epoch can be short, even empty)"
            raise GradingFailure(f"{failure} (on {what}){hint}") from None
        if not torch.equal(given_features.detach(), features):
            raise GradingFailure(f"features was modified ({what}): leave the batch as it is")
        if given_queue.requires_grad or given_queue.grad_fn is not None:
            raise GradingFailure(f"the queue now carries a graph (it requires grad) after {what}: the queue stores "
                                 f"features as constants, detached from the graph that made them (else every step "
                                 f"would keep every earlier step's graph alive through it)")
        if given_queue.dtype != dtype:
            raise GradingFailure(f"the queue changed dtype from {dtype} to {given_queue.dtype}: write the features into "
                                 f"it (they take its dtype), do not replace it")
        if given_queue.data_ptr() != storage:
            raise GradingFailure(f"the queue's storage was replaced ({what}): change the rows of the tensor you are "
                                 f"given in place (its owner keeps that tensor)")
        want_queue = queue.clone()
        want_ptr = reference_enqueue(want_queue, ptr, features)
        if not torch.equal(given_queue, want_queue):
            if torch.equal(given_queue, queue) and b:
                returned = type(got).__name__
                raise GradingFailure(f"the queue was not changed ({what}); your function returned a {returned}: write "
                                     f"the batch into the queue you are given, in place, and return the new pointer")
            for candidate, message in _enqueue_mistakes(queue, ptr, features):
                if torch.equal(given_queue, candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"the queue after enqueueing ({what})", given_queue, want_queue)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point() \
                and got.dtype != torch.bool:
            got = int(got)
        if not isinstance(got, int) or isinstance(got, bool):
            raise GradingFailure(f"enqueue must return the new pointer, an int, got {type(got).__name__} ({what})")
        if got != want_ptr:
            if got == ptr + b:
                raise GradingFailure(f"the pointer was returned as ptr + B = {got}, past the end of the queue ({what}): "
                                     f"it wraps around too, (ptr + B) % Q = {want_ptr}")
            if got == ptr and b and got == b % q:  # both mistakes give this pointer here: name both
                raise GradingFailure(f"the pointer did not move, or it ignores where the batch started (B % Q = "
                                     f"{got} = ptr, {what}): the next batch goes after this one, at (ptr + B) % Q = "
                                     f"{want_ptr}")
            if got == ptr and b:
                raise GradingFailure(f"the pointer did not move ({what}): the next batch goes after this one, at "
                                     f"(ptr + B) % Q = {want_ptr}")
            if got == b % q:
                raise GradingFailure(f"the pointer returned ({got}) ignores where the batch started ({what}): the next "
                                     f"batch goes after this one, at (ptr + B) % Q = {want_ptr}")
            raise GradingFailure(f"the new pointer is {got} ({what}): expected (ptr + B) % Q = {want_ptr}")


# ----------------------------------------------------------------------------- 04.mlm_distillation


def reference_mlm_distillation(logits, teacher_logits, labels, alpha):
    """Mean over the masked positions (label != -100) of the cross-entropy of the logits against
    (1 − α)·one-hot(label) + α·softmax(teacher's logits); 0, attached to the logits, where none is masked."""
    chosen = labels != IGNORE_INDEX  # (B, T)
    if not bool(chosen.any()):
        return logits.sum() * 0.0
    z = logits[chosen]  # (K, V)
    targets = (1 - alpha) * F.one_hot(labels[chosen], z.shape[-1]).to(z.dtype) \
        + alpha * teacher_logits[chosen].detach().softmax(-1)
    return -(targets * z.log_softmax(-1)).sum(-1).mean()


def _mlm_case(b: int, t: int, v: int, g: torch.Generator, chosen_share: float):
    logits = torch.randn(b, t, v, generator=g) * 2
    teacher = torch.randn(b, t, v, generator=g) * 2
    chosen = torch.rand(b, t, generator=g) < chosen_share
    if b and t and chosen_share > 0:
        chosen[0, randint(g, 0, t - 1)] = True  # at least one masked word
        if b > 2:
            chosen[-1] = False  # a caption with nothing masked
    labels = torch.where(chosen, torch.randint(v, (b, t), generator=g), torch.full((b, t), IGNORE_INDEX))
    return logits, teacher, labels


def _mlm_mistakes(logits, teacher, labels, alpha) -> list:
    chosen = labels != IGNORE_INDEX
    z, tz = logits.log_softmax(-1), teacher.softmax(-1)
    y = labels.clamp(min=0)
    ce = -z.gather(-1, y[..., None]).squeeze(-1)  # (B, T) the hard term at every position
    soft = -(tz * z).sum(-1)  # (B, T) the distillation term at every position
    soft_wrong_axis = -(teacher.softmax(1) * z).sum(-1)
    per = (1 - alpha) * ce + alpha * soft
    keep = chosen.float()

    def mean(x):
        return (x * keep).sum() / keep.sum()

    rows = chosen.any(1)
    per_caption = ((per * keep).sum(1)[rows] / keep.sum(1)[rows]).mean()
    return [
        (mean(alpha * ce + (1 - alpha) * soft), "the weights are swapped: (1 − α) on the true word (the hard label), "
                                                "α on the teacher's distribution"),
        ((1 - alpha) * mean(ce) + alpha * soft.mean(),
         "the distillation term is averaged over every position: the teacher's targets count only where a word was "
         "masked (label != -100), like the hard term; the other positions predict nothing"),
        (((1 - alpha) * ce * keep + alpha * soft).mean(),
         "the loss is averaged over every position: only the masked positions (label != -100) count"),
        ((per * keep).sum(), "the loss is summed over the masked positions: take their mean"),
        (per_caption, "the mean of per-caption means: a caption with one masked word then weighs as much as one with "
                      "five; take the mean over all masked positions of the batch"),
        (mean((1 - alpha) * ce + alpha * soft_wrong_axis),
         "the teacher's softmax runs over the wrong axis (the positions, dim 1): each masked position's teacher "
         "distribution is over the vocabulary, the last axis"),
        (mean((1 - alpha) * ce - alpha * (teacher * z).sum(-1)),
         "the teacher's logits are used raw: turn them into probabilities first (a softmax over the vocabulary)"),
        (mean((1 - alpha) * ce + alpha * (soft + (tz * tz.log()).sum(-1))),
         "this is the KL divergence from the teacher (the cross-entropy minus the teacher's entropy): same gradient, "
         "but the loss here is the cross-entropy against the mixed targets"),
        (mean((1 - alpha) * ce - alpha * z.gather(-1, teacher.argmax(-1, keepdim=True)).squeeze(-1)),
         "the teacher's top word was used as a hard label: distillation uses the teacher's whole distribution"),
        (mean(ce), "the distillation term is missing: mix the teacher's distribution in with weight α"),
        (mean(soft), "only the teacher's distribution: the true word keeps weight (1 − α)"),
    ] + [(mean((1 - a) * ce + a * soft), f"alpha is ignored (a fixed {a}?): use the alpha you are given "
                                         f"(here {alpha:.3f}; training ramps it up from 0)") for a in (0.4, 0.5)]


@register("04.mlm_distillation", title="Momentum distillation for MLM: soft targets at the masked positions only")
def check_mlm_distillation(fn) -> None:
    g = fresh_generator()
    # B != T != V, so a wrong axis cannot pass; one masked word in a batch of one; α on both sides of ½
    for (b, t, v), alpha in (((3, 6, 9), _uniform(g, 0.15, 0.3)), ((4, 5, 7), _uniform(g, 0.6, 0.85)),
                             ((1, 1, 5), _uniform(g, 0.2, 0.8))):
        logits, teacher, labels = _mlm_case(b, t, v, g, 0.4)
        leaves = {"logits": logits.clone().requires_grad_(True),
                  "teacher_logits": teacher.clone().requires_grad_(True)}
        given_labels = labels.clone()
        what = f"logits (B, T, V) = {(b, t, v)}, {int((labels != IGNORE_INDEX).sum())} masked, alpha={alpha:.3f}"
        got = call(fn, leaves["logits"], leaves["teacher_logits"], given_labels, alpha)
        if not (torch.equal(leaves["logits"].detach(), logits) and torch.equal(leaves["teacher_logits"].detach(),
                                                                                 teacher)
                and torch.equal(given_labels, labels)):
            raise GradingFailure("an input was modified in place: compute the loss without changing logits, "
                                 "teacher_logits or labels")
        if isinstance(got, (int, float)):
            raise GradingFailure("mlm_distillation returned a Python number: keep it a tensor attached to the logits "
                                 "(no .item() or float()), or training gets no gradient")
        got = tensor_answer("the loss", got)
        if got.numel() != 1:
            raise GradingFailure(f"the loss must be one number (a scalar), got shape {tuple(got.shape)} ({what}): the "
                                 f"mean over the masked positions")
        want = reference_mlm_distillation(logits, teacher, labels, alpha)
        if not is_close(got.reshape(()), want):
            for candidate, message in _mlm_mistakes(logits, teacher, labels, alpha):
                if is_close(got.reshape(()), candidate):
                    raise GradingFailure(f"{message} ({what})")
            expect_close(f"mlm_distillation ({what})", got.reshape(()), want)
        if got.grad_fn is not None:
            (to_teacher,) = torch.autograd.grad(got.sum(), [leaves["teacher_logits"]], retain_graph=True,
                                                allow_unused=True)
            if to_teacher is not None and bool(to_teacher.abs().gt(0).any()):
                raise GradingFailure(f"a gradient reaches teacher_logits ({what}): the teacher's distribution is a "
                                     f"constant target; a gradient through it would train the momentum model, which "
                                     f"only the EMA may move")
        expect_gradients(f"the loss ({what})", got.reshape(()),
                         reference_mlm_distillation(leaves["logits"], leaves["teacher_logits"], labels, alpha),
                         {"logits": leaves["logits"]})
    # nothing masked (short captions), and an empty batch: 0, still part of the graph
    for shape in ((2, 4, 6), (0, 4, 6)):
        leaf = torch.randn(*shape, generator=g).requires_grad_(True)
        got = call(fn, leaf, torch.randn(*shape, generator=g), torch.full(shape[:2], IGNORE_INDEX), 0.4)
        what = f"mlm_distillation when no word is masked (logits {shape})"
        expect_zero_loss(what, got, "positions", "the logits")


# ----------------------------------------------------------------------------- 04.itm_batch


def reference_itm_batch(sim_i2t, sim_t2i, positives):
    """(image_index, text_index, labels), each (3B,) long: the B true pairs (i, i), label 1; image i
    with a caption drawn by softmax(sim_i2t[i]) among those not true of it, label 0; caption j with
    an image drawn by softmax(sim_t2i[j]) among those it is not true of (positives[:, j]), label 0."""
    b = positives.shape[0]
    neg_text = sample_negatives(sim_i2t, positives)  # (B,) a caption per image
    neg_image = sample_negatives(sim_t2i, positives.t())  # (B,) an image per caption
    rows = torch.arange(b)
    labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
    return torch.cat([rows, rows, neg_image]), torch.cat([rows, neg_text, rows]), labels


def _asymmetric_positives(b: int, g: torch.Generator) -> torch.Tensor:
    """(B, B) bool: the diagonal, and captions true of other images, not symmetric (caption j may be
    true of image i while caption i is not true of image j); every row and column keeps a negative."""
    positives = torch.eye(b, dtype=torch.bool) | (torch.rand(b, b, generator=g) < 0.25)
    positives &= ~positives.t() | torch.eye(b, dtype=torch.bool)  # one direction only: not symmetric
    for i in range(b):
        positives[i, (i + 1) % b] = False  # row i and column (i + 1) keep a negative
    return positives


def _itm_answer(fn, sim_i2t, sim_t2i, positives) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = positives.shape[0]
    given = (sim_i2t.clone(), sim_t2i.clone(), positives.clone())
    got = call(fn, *given)
    if not (torch.equal(given[0], sim_i2t) and torch.equal(given[1], sim_t2i) and torch.equal(given[2], positives)):
        raise GradingFailure("an input was modified in place (e.g. similarity[positives] = -inf): work on copies; the "
                             "caller still needs the similarities (they are the ITC logits)")
    if not (isinstance(got, tuple) and len(got) == 3):
        raise GradingFailure(f"itm_batch must return a tuple (image_index, text_index, labels), got "
                             f"{type(got).__name__}")
    out = []
    for name, x in zip(("image_index", "text_index", "labels"), got):
        x = tensor_answer(name, x)
        if tuple(x.shape) == (3 * b, 1):
            raise GradingFailure(f"{name} has shape {(3 * b, 1)}: one entry per pair, shape (3B,) = {(3 * b,)}")
        expect_shape(f"{name} (3B,)", x, (3 * b,))
        if x.dtype != torch.long:
            use = "F.cross_entropy rejects other targets ('expected scalar type Long')" if name == "labels" \
                else "indexing the batch needs integer indices"
            raise GradingFailure(f"{name} must be torch.long (int64), got {x.dtype}: {use}")
        out.append(x)
    image_index, text_index, labels = out
    if bool((image_index < 0).any() | (image_index >= b).any() | (text_index < 0).any() | (text_index >= b).any()):
        raise GradingFailure(f"an index is outside [0, {b - 1}]: each is a row (an image) or a column (a caption) of "
                             f"the batch")
    rows = torch.arange(b)
    want_labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
    if not torch.equal(labels, want_labels):
        if torch.equal(labels, 1 - want_labels):
            raise GradingFailure("the labels are inverted: 1 means the caption matches the image (the B true pairs "
                                 "first), 0 a negative")
        raise GradingFailure(f"labels must be B ones (the true pairs, first) and then 2B zeros (the negatives), got "
                             f"{labels.tolist()}")
    if not (torch.equal(image_index[:b], rows) and torch.equal(text_index[:b], rows)):
        raise GradingFailure("the first B pairs must be the true pairs (image i, caption i), in order")
    if b > 1 and torch.equal(text_index[b:2 * b], rows) and torch.equal(image_index[2 * b:], rows) \
            and not torch.equal(image_index[b:2 * b], rows):
        raise GradingFailure("the negative images and negative captions are in the wrong blocks: pairs B..2B-1 are "
                             "(image i, a negative caption), pairs 2B..3B-1 (a negative image, caption j)")
    if not torch.equal(image_index[b:2 * b], rows):
        raise GradingFailure("pairs B..2B-1 are image i (in order) with a negative caption: image_index[B:2B] must be "
                             "0, 1, ..., B-1")
    if not torch.equal(text_index[2 * b:], rows):
        raise GradingFailure("pairs 2B..3B-1 are a negative image with caption j (in order): text_index[2B:] must be "
                             "0, 1, ..., B-1")
    return image_index, text_index, labels


def _group_case(r: int, k: int, g: torch.Generator):
    """B = k·r: row i and column j belong to groups i % k and j % k; sim_i2t[i, j] = A[i % k, j % k],
    sim_t2i[j, i] = C[j % k, i % k] (another matrix, not A transposed), positives[i, j] = P[i % k, j % k]
    with P's diagonal True and P not symmetric. A draw's group is what the frequencies are measured on."""
    while True:
        a = torch.randn(k, k, generator=g) * 1.2
        c = torch.randn(k, k, generator=g) * 1.2
        p = torch.eye(k, dtype=torch.bool)
        p[torch.arange(k), (torch.arange(k) + 1 + torch.randint(k - 2, (k,), generator=g) + 0) % k] = True
        if not torch.equal(p, p.t()) and not (p.all(1).any() or p.all(0).any()):
            break
    a, c = a + 2.0 * p.float(), c + 2.0 * p.t().float()  # what is true looks like it: positives most similar
    group = torch.arange(k * r) % k
    sim_i2t, sim_t2i = a[group][:, group], c[group][:, group]
    positives = p[group][:, group]
    return a, c, p, sim_i2t, sim_t2i, positives


def _group_freq(indices, rows, k, r_total) -> torch.Tensor:
    """(k, k): for the rows of group u, the share of draws that fell in column group w."""
    group = torch.arange(len(rows)) % k
    return torch.stack([torch.bincount(indices[group == u] % k, minlength=k).float() for u in range(k)]) / r_total


def _expected_weights(weights: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """(k, k): group frequencies when each column of group w has weight weights[u, w] for the rows of group u,
    excluded ones 0 (r columns a group, so a group's share is its weight's)."""
    w = weights.masked_fill(exclude, 0.0)
    return w / w.sum(1, keepdim=True)


def _expected(scores: torch.Tensor, exclude: torch.Tensor, r: int) -> torch.Tensor:
    return _expected_weights(scores.softmax(1), exclude)


@register("04.itm_batch", title="ALBEF's ITM batch: the true pairs, a hard negative caption per image and a hard "
                                "negative image per caption")
def check_itm_batch(fn) -> None:
    g = fresh_generator()
    # ---- the rule of every draw: never a positive, in either direction (positives not symmetric)
    hits = {"text": 0, "image": 0, "image_untransposed_only": 0}
    for _ in range(20):
        b = randint(g, 6, 14)
        positives = _asymmetric_positives(b, g)
        sim_i2t = torch.randn(b, b, generator=g) * 2 + 4.0 * positives.float()
        sim_t2i = torch.randn(b, b, generator=g) * 2 + 4.0 * positives.t().float()
        image_index, text_index, _ = _itm_answer(fn, sim_i2t, sim_t2i, positives)
        rows = torch.arange(b)
        hits["text"] += int(positives[rows, text_index[b:2 * b]].sum())
        bad_image = positives[image_index[2 * b:], rows]  # image i drawn for caption j although caption j is true of i
        hits["image"] += int(bad_image.sum())
        hits["image_untransposed_only"] += int((positives[rows, image_index[2 * b:]] & ~bad_image).sum())
    if hits["text"]:
        raise GradingFailure(f"a caption true of its image was drawn as its negative ({hits['text']} times): never draw "
                             f"caption j for image i where positives[i, j]; give those columns weight 0 (a similarity "
                             f"of 0 still has weight exp(0) > 0)")
    if hits["image"]:
        extra = ""
        if hits["image"] and hits["image_untransposed_only"] == 0:
            extra = (": the images excluded for caption j are those it is true of, the column positives[:, j] (the "
                     "transpose of positives), not the row positives[j]")
        raise GradingFailure(f"an image that its caption is true of was drawn as the caption's negative "
                             f"({hits['image']} times){extra or ': never draw image i for caption j where positives[i, j]'}")

    # ---- two images: each has exactly one negative, in each direction
    sim = torch.randn(2, 2, generator=g)
    image_index, text_index, _ = _itm_answer(fn, sim, torch.randn(2, 2, generator=g), torch.eye(2, dtype=torch.bool))
    if not (torch.equal(text_index[2:4], torch.tensor([1, 0])) and torch.equal(image_index[4:6], torch.tensor([1, 0]))):
        raise GradingFailure(f"with two images, each one's only negative is the other's caption (and each caption's "
                             f"the other image), got negative captions {text_index[2:4].tolist()} and negative images "
                             f"{image_index[4:6].tolist()}")

    # ---- the frequencies, each direction from its own similarities: many rows in k groups
    k, r, calls = 5, 120, 8  # 960 draws per group and direction: a share's SD is at most 0.016, the tolerance 4.5 SDs
    tol = 0.07
    for _ in range(100):  # similarities on which every named mistake is far (>= 0.2) from the right shares
        a, c, p, sim_i2t, sim_t2i, positives = _group_case(r, k, g)
        right_text, right_image = _expected(a, p, r), _expected(c, p.t(), r)
        named_text = [
            (_expected(torch.zeros_like(a), p, r), "the negative captions are drawn uniformly: weight caption j by "
                                                   "softmax(sim_i2t[i])[j], so that the most similar are drawn most "
                                                   "often"),
            (_expected(-a, p, r), "the least similar captions are drawn most often: hard negatives are the most "
                                  "similar, weights softmax(+sim_i2t[i])"),
            (_expected(c.t(), p, r), "the negative captions follow sim_t2i: image i's negative caption is drawn by "
                                     "softmax(sim_i2t[i]), the image-to-text similarities"),
        ]
        named_image = [
            (_expected(torch.zeros_like(c), p.t(), r), "the negative images are drawn uniformly: weight image i by "
                                                       "softmax(sim_t2i[j])[i]"),
            (_expected(-c, p.t(), r), "the least similar images are drawn most often: weights softmax(+sim_t2i[j])"),
            (_expected(a.t(), p.t(), r), "the negative images were drawn by sim_i2t transposed, and sim_t2i was "
                                         "ignored: caption j's negative image is drawn by softmax(sim_t2i[j]), the "
                                         "text-to-image similarities (in ALBEF they come from other features: the "
                                         "online text against the momentum images)"),
        ]
        named_text.append((_expected_weights(a.softmax(0), p), "the softmax over the wrong axis (down the columns): "
                                                               "image i's weights are softmax(sim_i2t[i]) over its row"))
        named_image.append((_expected_weights(c.softmax(0), p.t()), "the softmax over the wrong axis (down the "
                                                                     "columns): caption j's weights are "
                                                                     "softmax(sim_t2i[j]) over its row"))
        if all(float((cand - right).abs().max()) >= 0.2 for named, right in ((named_text, right_text),
                                                                             (named_image, right_image))
               for cand, _ in named):
            break
    b = k * r
    text_draws, image_draws, firsts = [], [], []
    shared = {"caption": 0, "image": 0}  # calls in which all rows of equal similarities drew alike
    for _ in range(calls):
        image_index, text_index, _ = _itm_answer(fn, sim_i2t, sim_t2i, positives)
        if bool(positives[torch.arange(b), text_index[b:2 * b]].any()) or \
                bool(positives[image_index[2 * b:], torch.arange(b)].any()):
            raise GradingFailure("a positive was drawn as a negative: never draw a pair that positives marks as true")
        if len(set(text_index[b:2 * b].tolist())) == 1 or len(set(image_index[2 * b:].tolist())) == 1:
            raise GradingFailure(f"every image of a batch of {b} got the same negative caption (or every caption the "
                                 f"same image): draw one negative per row, each from its own row's weights")
        for direction, drawn in (("caption", text_index[b:2 * b]), ("image", image_index[2 * b:])):
            spread = [len(set((drawn[torch.arange(b) % k == u] % k).tolist())) for u in range(k)]
            if max(spread) == 1:
                shared[direction] += 1
        text_draws.append(text_index[b:2 * b])
        image_draws.append(image_index[2 * b:])
        firsts.append((text_index.clone(), image_index.clone()))
    if all(torch.equal(firsts[0][0], t) and torch.equal(firsts[0][1], i) for t, i in firsts[1:]):
        raise GradingFailure("every call gave the same negatives: a seed fixed inside the function repeats the same "
                             "draws on every step; draw from torch's global random generator and leave its state "
                             "alone")
    for direction, draws, right, named in (("caption", text_draws, right_text, named_text),
                                           ("image", image_draws, right_image, named_image)):
        freq = sum(_group_freq(d, torch.arange(b), k, r) for d in draws) / calls  # (k, k)
        argmax = F.one_hot(right.argmax(1), k).float()
        if float((freq - argmax).abs().max()) <= 1e-6:
            raise GradingFailure(f"always the most similar allowed {direction}: draw at random in proportion to the "
                                 f"softmax weights, don't take the argmax; ALBEF wants hard negatives, but varied ones")
        if shared[direction] == calls:
            raise GradingFailure(f"in every call, all the rows with the same similarities got a negative {direction} "
                                 f"of the same kind: one random number was shared by the whole batch; draw each row's "
                                 f"negative with its own random number")
        if float((freq - right).abs().max()) <= tol:
            continue
        for candidate, message in named:
            if float((freq - candidate).abs().max()) <= tol:
                raise GradingFailure(message)
        u = int((freq - right).abs().max(dim=1).values.argmax())
        fmt = ", ".join(f"{x:.2f}" for x in freq[u].tolist())
        want = ", ".join(f"{x:.2f}" for x in right[u].tolist())
        raise GradingFailure(f"the negative {direction}s do not follow the softmax of their row's similarities over "
                             f"the allowed columns: for one group of rows, over {calls * r} draws, the column groups "
                             f"came [{fmt}] of the time; expected about [{want}]")


# ----------------------------------------------------------------------------- 04.mod_experiment

EMBED, SCALE, LR, MOMENTUM = 8, 10.0, 0.01, 0.99
STEPS, RECIPE_STEPS = 200, 10


def noisy_pairs(n_train: int, n_test: int, noise: float, g: torch.Generator, dim: int = 16, latent: int = 8):
    """Paired features, two noisy linear views (image, text) of n hidden vectors: a training set in
    which a share `noise` of the pairs have another pair's text (a wrong caption), and a clean
    held-out set. Returns (train_image, train_text, wrong, test_image, test_text); wrong (n_train,)
    bool marks the pairs whose text was replaced."""
    a, b = torch.randn(latent, dim, generator=g), torch.randn(latent, dim, generator=g)

    def views(n):
        z = torch.randn(n, latent, generator=g)
        return z @ a + 0.5 * torch.randn(n, dim, generator=g), z @ b + 0.5 * torch.randn(n, dim, generator=g)

    train_image, train_text = views(n_train)
    test_image, test_text = views(n_test)
    wrong = torch.rand(n_train, generator=g) < noise
    other = (torch.arange(n_train) + torch.randint(1, max(n_train, 2), (n_train,), generator=g)) % max(n_train, 1)
    train_text = torch.where(wrong[:, None], train_text[other], train_text)
    return train_image, train_text, wrong, test_image, test_text


def _scores(image, text, w_image, w_text):
    return SCALE * F.normalize(image @ w_image, dim=-1) @ F.normalize(text @ w_text, dim=-1).t()  # (N, N)


def reference_mod_experiment(image_features, text_features, alpha, steps, seed, variant: str | None = None) -> dict:
    """The recipe of the exercise; `variant` turns one knob (a named mistake) for the check's diagnosis."""
    g = torch.Generator().manual_seed(seed)
    di, dt = image_features.shape[1], text_features.shape[1]
    w_image = (torch.randn(di, EMBED, generator=g) / di ** 0.5).requires_grad_()
    w_text = (torch.randn(dt, EMBED, generator=g) / dt ** 0.5).requires_grad_()
    w_image_m, w_text_m = w_image.detach().clone(), w_text.detach().clone()
    optimizer = torch.optim.Adam([w_image, w_text], lr=LR)
    n = len(image_features)
    eye = torch.eye(n)
    for _ in range(steps):
        with torch.no_grad():
            if variant not in ("no_update", "update_after"):
                w_image_m.mul_(MOMENTUM).add_(w_image.detach(), alpha=1 - MOMENTUM)
                w_text_m.mul_(MOMENTUM).add_(w_text.detach(), alpha=1 - MOMENTUM)
            teacher = _scores(image_features, text_features, w_image_m, w_text_m)
            t2i_teacher = teacher if variant == "same_teacher" else teacher.t()
            target_i2t = (1 - alpha) * eye + alpha * teacher.softmax(1)
            target_t2i = (1 - alpha) * eye + alpha * t2i_teacher.softmax(1)
        s = _scores(image_features, text_features, w_image, w_text)
        i2t = -(target_i2t * s.log_softmax(1)).sum(1).mean()
        t2i = -(target_t2i * s.t().log_softmax(1)).sum(1).mean()
        loss = i2t if variant == "one_direction" else (i2t + t2i) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if variant == "update_after":
            with torch.no_grad():
                w_image_m.mul_(MOMENTUM).add_(w_image.detach(), alpha=1 - MOMENTUM)
                w_text_m.mul_(MOMENTUM).add_(w_text.detach(), alpha=1 - MOMENTUM)
    return {"w_image": w_image.detach(), "w_text": w_text.detach(), "w_image_m": w_image_m, "w_text_m": w_text_m}


def recall_at_1(image, text, w_image, w_text) -> float:
    """Image→text R@1 of the projections: the share of images whose own caption scores highest."""
    with torch.no_grad():
        return float((_scores(image, text, w_image, w_text).argmax(1) == torch.arange(len(image))).float().mean())


def wrong_fit(image, text, wrong, w_image, w_text) -> float:
    """How much the model believes the wrong captions: the mean softmax probability an image of a
    noisy training pair gives its (wrong) caption among the training captions."""
    with torch.no_grad():
        p = _scores(image, text, w_image, w_text).softmax(1).diagonal()
        return float(p[wrong].mean())


_KEYS = ("w_image", "w_text", "w_image_m", "w_text_m")


def _mod_run(fn, image, text, alpha, steps, seed) -> dict:
    given = (image.clone(), text.clone())
    got = call(fn, given[0], given[1], alpha, steps, seed)
    if not (torch.equal(given[0], image) and torch.equal(given[1], text)):
        raise GradingFailure("the features were modified in place: leave image_features and text_features as they are")
    if not isinstance(got, dict) or any(k not in got for k in _KEYS):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"mod_experiment must return a dict with keys {list(_KEYS)}, got {keys}")
    out = {}
    for key in _KEYS:
        w = tensor_answer(key, got[key]).detach().float()
        side = image if "image" in key else text
        if tuple(w.shape) != (side.shape[1], EMBED):
            raise GradingFailure(f"{key} must be ({side.shape[1]}, {EMBED}), got {tuple(w.shape)}")
        out[key] = w
    return out


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in _KEYS)


def _same_run(a: dict, b: dict) -> bool:
    """The same weights up to the float rounding of another order of operations: at most 1 % of the
    entries of each tensor differ by more than 1e-5 (Adam's first steps are about lr·sign(gradient),
    so a gradient entry near 0 may round to either sign)."""
    return all(float(((a[k] - b[k]).abs() > 1e-5).float().mean()) <= 0.01 for k in _KEYS)


def _diagnose_recipe(yours: dict, image, text, alpha, seed) -> None:
    """Raise the failure that names how the learner's first RECIPE_STEPS steps differ from the recipe."""
    if _same_run(yours, reference_mod_experiment(image, text, 0.0, RECIPE_STEPS, seed)):
        raise GradingFailure(f"with alpha = {alpha} the run trained exactly as without distillation: either alpha is "
                             f"ignored, or the teacher is the online model itself (its own softmax as a target adds "
                             f"no gradient, only scales the one-hot part's, which Adam does not see); the targets are "
                             f"(1 − α)·one-hot + α·softmax of the MOMENTUM weights' scores")
    variants = {
        "no_update": "the momentum weights never moved: update them at every step, θ_m ← 0.99·θ_m + 0.01·θ "
                     "(chapter 04 §3)",
        "same_teacher": "the text-to-image targets use the image-to-text teacher scores as they are: for the captions "
                        "the teacher's scores are transposed (row j: caption j against every image)",
        "one_direction": "only the image-to-text loss is trained: ITC is symmetric, the mean of image→text and "
                         "text→image",
    }
    for variant, message in variants.items():
        if _same_run(yours, reference_mod_experiment(image, text, alpha, RECIPE_STEPS, seed, variant)):
            raise GradingFailure(message)
    want = reference_mod_experiment(image, text, alpha, RECIPE_STEPS, seed)
    raise GradingFailure(f"after {RECIPE_STEPS} steps from seed {seed} the weights differ from the recipe's by up to "
                         f"{_max_diff(yours, want):.3g}: per step, update the momentum weights, compute the teacher's "
                         f"targets from them, then one Adam step (lr 0.01) on the mean of the two directions' "
                         f"cross-entropies against those targets, the scores 10 · cos")


@register("04.mod_experiment", title="The experiment: momentum distillation off and on at 40 % caption noise")
def check_mod_experiment(fn) -> None:
    g = fresh_generator()
    image, text, wrong, test_image, test_text = noisy_pairs(128, 128, 0.4, g)
    seed = randint(g, 0, 10_000)
    alpha = 0.4

    # ---- untrained: the seed decides the initial weights; the momentum copies start equal to them
    a = _mod_run(fn, image, text, alpha, 0, seed)
    b = _mod_run(fn, image, text, alpha, 0, seed)
    c = _mod_run(fn, image, text, alpha, 0, seed + 1)
    if _max_diff(a, b) > 0:
        raise GradingFailure("two runs with the same seed (steps = 0) gave different weights: draw them from a "
                             "generator seeded with the seed argument, so that a run can be repeated")
    if torch.equal(a["w_image"], c["w_image"]):
        raise GradingFailure("runs with seeds s and s + 1 gave the same weights: the seed argument is ignored (a seed "
                             "fixed inside the function); use the one you are given")
    start = reference_mod_experiment(image, text, alpha, 0, seed)
    if not (is_close(a["w_image"], start["w_image"]) and is_close(a["w_text"], start["w_text"])):
        raise GradingFailure("the initial weights are not the ones the task describes: from a generator seeded with "
                             "seed, first w_image (image_dim, 8), then w_text (text_dim, 8), standard normal divided "
                             "by the square root of their input width")
    if not (torch.equal(a["w_image_m"], a["w_image"]) and torch.equal(a["w_text_m"], a["w_text"])):
        raise GradingFailure("after 0 steps the momentum weights differ from the online ones: the momentum model "
                             "starts as a copy of the model")

    # ---- ten steps against the recipe, from the same seed (the momentum update before or after the step)
    yours = _mod_run(fn, image, text, alpha, RECIPE_STEPS, seed)
    order = None
    if not _same_run(yours, reference_mod_experiment(image, text, alpha, RECIPE_STEPS, seed)):
        if _same_run(yours, reference_mod_experiment(image, text, alpha, RECIPE_STEPS, seed, "update_after")):
            order = "update_after"  # the momentum update after the optimizer's step: as good a recipe
        else:
            _diagnose_recipe(yours, image, text, alpha, seed)

    # ---- the full runs, MoD off and on: the held-out recall and the fit of the wrong captions, from your weights
    # ---- the full runs, MoD off and on: the held-out recall and the fit of the wrong captions, from your weights
    for arm in (0.0, alpha):
        yours = _mod_run(fn, image, text, arm, STEPS, seed)
        ref = reference_mod_experiment(image, text, arm, STEPS, seed, order)
        r_yours, r_ref = recall_at_1(test_image, test_text, yours["w_image"], yours["w_text"]), \
            recall_at_1(test_image, test_text, ref["w_image"], ref["w_text"])
        f_yours, f_ref = wrong_fit(image, text, wrong, yours["w_image"], yours["w_text"]), \
            wrong_fit(image, text, wrong, ref["w_image"], ref["w_text"])
        if abs(r_yours - r_ref) > 0.04 or abs(f_yours - f_ref) > 0.01 + 0.1 * f_ref:
            raise GradingFailure(f"alpha = {arm}, {STEPS} steps from seed {seed}: your run reaches held-out R@1 "
                                 f"{r_yours:.3f} and believes the wrong captions at {f_yours:.3f}, the recipe's run "
                                 f"{r_ref:.3f} and {f_ref:.3f}: train for all the steps you are given, the same way as "
                                 f"the first two")
