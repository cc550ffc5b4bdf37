"""Chapter 04 checks: the references pass, the stub says "not implemented yet", and each plausible
wrong version fails with its own message: wrong values, parameters paired by position, side effects
(online.zero_grad(), inputs changed in place, a queue that carries a graph or changes dtype), no
gradient and a gradient into the teacher, empty and size-1 inputs, the structure of random draws
(never a positive in either direction, each direction's own similarities, one draw per row, a seed
fixed inside), exact dtypes, an argument ignored, and an experiment trained another way."""
import copy

import torch
import torch.nn.functional as F
from grading_suite import grading_tests
from torch import nn

from minivlm.grading import run
from minivlm.grading.ch04 import (
    reference_enqueue,
    reference_itm_batch,
    reference_mlm_distillation,
    reference_mod_experiment,
    reference_momentum_update,
)

GOOD = {"04.momentum_update": reference_momentum_update, "04.enqueue": reference_enqueue,
        "04.mlm_distillation": reference_mlm_distillation, "04.itm_batch": reference_itm_batch,
        "04.mod_experiment": reference_mod_experiment}


# ----------------------------------------------------------------------------- wrong versions: momentum_update


def _ema(target, online, m, keep=lambda t, o, m: m * t + (1 - m) * o, grad=False, which=None):
    """An EMA paired by name with one knob turned: the formula, autograd on, or only the parameters `which` keeps."""
    theirs = dict(online.named_parameters())
    with torch.enable_grad() if grad else torch.no_grad():
        for name, t in target.named_parameters():
            if which is None or which(name):
                t.copy_(keep(t, theirs[name], m))


def _zipped(target, online, m):  # the chapter's full-copy update, which pairs by position
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(m).add_(o, alpha=1 - m)


def _zipped_without_head(target, online, m):  # the head dropped by name, the rest still paired by position
    with torch.no_grad():
        kept = [o for name, o in online.named_parameters() if not name.startswith("itm_head")]
        for t, o in zip(target.parameters(), kept):
            t.mul_(m).add_(o, alpha=1 - m)


def _zero_grad(target, online, m):
    reference_momentum_update(target, online, m)
    online.zero_grad()


def _zero_grad_keep(target, online, m):
    reference_momentum_update(target, online, m)
    online.zero_grad(set_to_none=False)


def _rebind(target, online, m):
    theirs = dict(online.named_parameters())
    for name, t in target.named_parameters():
        t = m * t + (1 - m) * theirs[name]  # noqa: F841 — a new local tensor, the parameter is untouched


def _returns_new(target, online, m):
    new = copy.deepcopy(target)
    reference_momentum_update(new, online, m)
    return new


def _new_parameters(target, online, m):
    online_modules = dict(online.named_modules())
    with torch.no_grad():
        for name, module in target.named_modules():
            for key, t in list(module._parameters.items()):
                o = online_modules[name]._parameters[key]
                module._parameters[key] = nn.Parameter(m * t + (1 - m) * o)  # requires_grad=True by default


def _updates_online(target, online, m):
    theirs = dict(target.named_parameters())
    with torch.no_grad():
        for name, o in online.named_parameters():
            if name in theirs:
                o.mul_(m).add_(theirs[name], alpha=1 - m)


def _copies_grad(target, online, m):
    reference_momentum_update(target, online, m)
    theirs = dict(online.named_parameters())
    for name, t in target.named_parameters():
        t.grad = theirs[name].grad.clone()


WRONG_MOMENTUM = [
    (_zipped, "paired by position"),
    (_zipped_without_head, "paired by position"),
    (_zero_grad, "gradients (.grad) were cleared"),
    (_zero_grad_keep, "gradients (.grad) were changed"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: (1 - m) * t + m * o), "weights are swapped"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: o.detach()), "overwritten with online"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: m * t), "online's weights are missing"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: m * t + o), "not scaled by (1 − m)"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: t + (1 - m) * o), "old target is not scaled by m"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: 0.995 * t + 0.005 * o), "momentum argument is ignored"),
    (lambda t, o, m: _ema(t, o, m, grad=True), "recorded by autograd"),
    (lambda t, o, m: _ema(t, o, m, which=lambda name: name.endswith("weight")), "were left unchanged"),
    (_rebind, "only rebinds a local name"),
    (_returns_new, "returned a ModuleDict instead"),
    (_new_parameters, "now require gradients"),
    (_updates_online, "online was modified"),
    (_copies_grad, "received a .grad"),
]


# ----------------------------------------------------------------------------- wrong versions: enqueue


def _slice(queue, ptr, features):  # the library's rule (B divides Q): a slice that stops at the end
    queue[ptr:ptr + len(features)] = features.detach()
    return (ptr + len(features)) % len(queue)


def _truncate(queue, ptr, features):
    queue[ptr:ptr + len(features)] = features.detach()[:len(queue) - ptr]
    return (ptr + len(features)) % len(queue)


def _rows(queue, ptr, features):
    return (ptr + torch.arange(len(features))) % len(queue)


def _first_rows(queue, ptr, features):  # a batch longer than the queue: its oldest rows kept
    q = len(queue)
    queue[_rows(queue, ptr, features)[:q]] = features.detach()[:q]
    return (ptr + len(features)) % q


def _with_graph(queue, ptr, features):
    keep = slice(max(0, len(features) - len(queue)), len(features))
    queue[_rows(queue, ptr, features)[keep]] = features[keep]  # no detach, no no_grad: the queue joins the graph
    return (ptr + len(features)) % len(queue)


def _ptr(fn_ptr):
    def wrong(queue, ptr, features):
        reference_enqueue(queue, ptr, features)
        return fn_ptr(queue, ptr, features)
    return wrong


def _returns_new_queue(queue, ptr, features):
    new = queue.clone()
    return new, reference_enqueue(new, ptr, features)


def _replaces_storage(queue, ptr, features):
    new = queue.clone()
    p = reference_enqueue(new, ptr, features)
    queue.data = new.float()  # a new tensor (and dtype) behind the caller's name
    return p


def _at_zero(queue, ptr, features):
    b = min(len(features), len(queue))
    queue[torch.arange(b)] = features.detach()[-b:] if b else features.detach()[:0]
    return (ptr + len(features)) % len(queue)


def _reversed(queue, ptr, features):
    return reference_enqueue(queue, ptr, features.flip(0))


def _mutates_features(queue, ptr, features):
    p = reference_enqueue(queue, ptr, features)
    with torch.no_grad():
        features.zero_()
    return p


WRONG_ENQUEUE = [
    (_slice, "wrap around to row 0"),
    (_truncate, "were dropped"),
    (_first_rows, "kept its FIRST Q rows"),
    (_with_graph, "carries a graph"),
    (_ptr(lambda q, p, f: p + len(f)), "past the end of the queue"),
    (_ptr(lambda q, p, f: p), "the pointer did not move"),
    (_ptr(lambda q, p, f: len(f) % len(q)), "ignores where the batch started"),
    (_ptr(lambda q, p, f: torch.tensor(float((p + len(f)) % len(q)))), "must return the new pointer, an int"),
    (_returns_new_queue, "the queue was not changed"),
    (_replaces_storage, "storage was replaced"),
    (_at_zero, "written from row 0"),
    (_reversed, "reverse order"),
    (_mutates_features, "features was modified"),
]


# ----------------------------------------------------------------------------- wrong versions: mlm_distillation


def _terms(logits, teacher, labels, alpha):
    """(the hard term, the distillation term) at every position, (B, T), and the masked positions."""
    chosen = labels != -100
    log_p = logits.log_softmax(-1)
    hard = -log_p.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    soft = -(teacher.detach().softmax(-1) * log_p).sum(-1)
    return hard, soft, chosen


def _distill(weight_hard, weight_soft, soft_everywhere=False, reduce="mean"):
    def wrong(logits, teacher, labels, alpha):
        hard, soft, chosen = _terms(logits, teacher, labels, alpha)
        if not chosen.any():
            return logits.sum() * 0.0
        h, s = hard[chosen].mean(), (soft.mean() if soft_everywhere else soft[chosen].mean())
        if reduce == "sum":
            return ((weight_hard(alpha) * hard + weight_soft(alpha) * soft)[chosen]).sum()
        return weight_hard(alpha) * h + weight_soft(alpha) * s
    return wrong


def _all_positions(logits, teacher, labels, alpha):
    hard, soft, chosen = _terms(logits, teacher, labels, alpha)
    return ((1 - alpha) * hard * chosen + alpha * soft).mean()  # every position in the mean


def _wrong_axis(logits, teacher, labels, alpha):
    chosen = labels != -100
    if not chosen.any():
        return logits.sum() * 0.0
    t = teacher.detach().softmax(1)[chosen]  # over the positions
    y = F.one_hot(labels[chosen], logits.shape[-1]).float()
    return -(((1 - alpha) * y + alpha * t) * logits[chosen].log_softmax(-1)).sum(-1).mean()


def _per_caption(logits, teacher, labels, alpha):
    hard, soft, chosen = _terms(logits, teacher, labels, alpha)
    per = ((1 - alpha) * hard + alpha * soft) * chosen
    rows = chosen.any(1)
    return (per.sum(1)[rows] / chosen.sum(1)[rows]).mean()


def _nan_when_empty(logits, teacher, labels, alpha):
    hard, soft, chosen = _terms(logits, teacher, labels, alpha)
    return ((1 - alpha) * hard + alpha * soft)[chosen].mean()


def _detached_zero(logits, teacher, labels, alpha):
    if not (labels != -100).any():
        return torch.tensor(0.0)
    return reference_mlm_distillation(logits, teacher, labels, alpha)


def _attached_teacher(logits, teacher, labels, alpha):
    chosen = labels != -100
    if not chosen.any():
        return logits.sum() * 0.0
    t = teacher[chosen].softmax(-1)  # no detach: the gradient reaches the momentum model
    y = F.one_hot(labels[chosen], logits.shape[-1]).float()
    return -(((1 - alpha) * y + alpha * t) * logits[chosen].log_softmax(-1)).sum(-1).mean()


def _kl(logits, teacher, labels, alpha):
    chosen = labels != -100
    if not chosen.any():
        return logits.sum() * 0.0
    log_p = logits[chosen].log_softmax(-1)
    hard = F.nll_loss(log_p, labels[chosen])
    return (1 - alpha) * hard + alpha * F.kl_div(log_p, teacher[chosen].detach().softmax(-1), reduction="batchmean")


def _argmax_teacher(logits, teacher, labels, alpha):
    chosen = labels != -100
    if not chosen.any():
        return logits.sum() * 0.0
    z = logits[chosen]
    return (1 - alpha) * F.cross_entropy(z, labels[chosen]) + alpha * F.cross_entropy(z, teacher[chosen].argmax(-1))


WRONG_MLM = [
    (_distill(lambda a: a, lambda a: 1 - a), "the weights are swapped"),
    (_distill(lambda a: 1 - a, lambda a: a, soft_everywhere=True), "distillation term is averaged over every position"),
    (_all_positions, "averaged over every position"),
    (_distill(lambda a: 1 - a, lambda a: a, reduce="sum"), "summed over the masked positions"),
    (_per_caption, "per-caption means"),
    (_wrong_axis, "wrong axis"),
    (_kl, "KL divergence"),
    (_argmax_teacher, "top word was used as a hard label"),
    (_distill(lambda a: 1.0, lambda a: 0.0), "distillation term is missing"),
    (_distill(lambda a: 0.0, lambda a: 1.0), "only the teacher's distribution"),
    (_distill(lambda a: 0.6, lambda a: 0.4), "alpha is ignored"),
    (_attached_teacher, "a gradient reaches teacher_logits"),
    (lambda z, t, y, a: reference_mlm_distillation(z.detach(), t, y, a), "carries no gradient"),
    (lambda z, t, y, a: torch.tensor(reference_mlm_distillation(z, t, y, a).item()), "carries no gradient"),
    (lambda z, t, y, a: reference_mlm_distillation(z, t, y, a).item(), "Python number"),
    (_nan_when_empty, "NaN"),
    (_detached_zero, "detached 0"),
]


# ----------------------------------------------------------------------------- wrong versions: itm_batch


def _itm(neg_text_fn, neg_image_fn, labels_dtype=torch.long, order="right"):
    def wrong(sim_i2t, sim_t2i, positives):
        b = len(positives)
        rows = torch.arange(b)
        neg_text, neg_image = neg_text_fn(sim_i2t, sim_t2i, positives), neg_image_fn(sim_i2t, sim_t2i, positives)
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).to(labels_dtype)
        if order == "swapped_blocks":
            return torch.cat([rows, neg_image, rows]), torch.cat([rows, rows, neg_text]), labels
        if order == "inverted":
            labels = 1 - labels
        return torch.cat([rows, rows, neg_image]), torch.cat([rows, neg_text, rows]), labels
    return wrong


def _draw(weights):
    return torch.multinomial(weights, 1).squeeze(1)


def _text(sim, _, pos):
    return _draw(sim.softmax(1).masked_fill(pos, 0.0))


def _image(_, sim, pos):
    return _draw(sim.softmax(1).masked_fill(pos.t(), 0.0))


def _seeded(sim_i2t, sim_t2i, positives):
    torch.manual_seed(0)
    return reference_itm_batch(sim_i2t, sim_t2i, positives)


def _one_draw(sim_i2t, sim_t2i, positives):  # one random number for the whole batch, inverse-CDF per row
    def shared(similarity, exclude):
        cdf = similarity.softmax(1).masked_fill(exclude, 0.0).cumsum(1)
        return (cdf < torch.rand(()) * cdf[:, -1:]).sum(1)

    b = len(positives)
    rows = torch.arange(b)
    labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
    return (torch.cat([rows, rows, shared(sim_t2i, positives.t())]), torch.cat([rows, shared(sim_i2t, positives), rows]),
            labels)


def _in_place(sim_i2t, sim_t2i, positives):
    sim_i2t[positives] = float("-inf")
    return reference_itm_batch(sim_i2t, sim_t2i, positives)


WRONG_ITM = [
    (_itm(lambda s, t, p: _draw(s.softmax(1)), _image), "a caption true of its image was drawn"),
    (_itm(lambda s, t, p: _draw(s.masked_fill(p, 0.0).softmax(1)), _image), "a caption true of its image was drawn"),
    (_itm(_text, lambda s, t, p: _draw(t.softmax(1).masked_fill(p, 0.0))), "the transpose of positives"),
    (_itm(_text, lambda s, t, p: _image(s, s.t(), p)), "sim_t2i was ignored"),
    (_itm(lambda s, t, p: _text(t.t(), t, p), _image), "the negative captions follow sim_t2i"),
    (_itm(lambda s, t, p: _text(torch.zeros_like(s), t, p), _image), "captions are drawn uniformly"),
    (_itm(_text, lambda s, t, p: _image(s, torch.zeros_like(t), p)), "images are drawn uniformly"),
    (_itm(lambda s, t, p: s.masked_fill(p, float("-inf")).argmax(1), _image), "always the most similar allowed"),
    (_itm(lambda s, t, p: _text(-s, t, p), _image), "least similar captions"),
    (_itm(_text, lambda s, t, p: _image(s, -t, p)), "least similar images"),
    (_itm(lambda s, t, p: _draw(s.softmax(0).masked_fill(p, 0.0)), _image), "the wrong axis"),
    (_itm(_text, lambda s, t, p: _draw(t.softmax(0).masked_fill(p.t(), 0.0))), "the wrong axis"),
    (_itm(_text, _image, labels_dtype=torch.int32), "must be torch.long"),
    (_itm(_text, _image, labels_dtype=torch.float32), "must be torch.long"),
    (_itm(_text, _image, order="inverted"), "labels are inverted"),
    (_itm(_text, _image, order="swapped_blocks"), "wrong blocks"),
    (_seeded, "every call gave the same negatives"),
    (_one_draw, "one random number was shared by the whole batch"),
    (_in_place, "modified in place"),
    (lambda s, t, p: reference_itm_batch(s, t, p)[:2], "must return a tuple (image_index, text_index, labels)"),
]


# ----------------------------------------------------------------------------- wrong versions: mod_experiment


def _variant(variant):
    return lambda *args: reference_mod_experiment(*args, variant=variant)


def _fixed_seed(image, text, alpha, steps, seed):
    return reference_mod_experiment(image, text, alpha, steps, 0)


def _unseeded(image, text, alpha, steps, seed):
    return reference_mod_experiment(image, text, alpha, steps, int(torch.randint(0, 10_000, (1,))))


def _no_alpha(image, text, alpha, steps, seed):
    return reference_mod_experiment(image, text, 0.0, steps, seed)


def _short(image, text, alpha, steps, seed):
    return reference_mod_experiment(image, text, alpha, min(steps, 50), seed)


def _momentum_not_copied(image, text, alpha, steps, seed):
    out = reference_mod_experiment(image, text, alpha, steps, seed)
    return out | {"w_image_m": torch.zeros_like(out["w_image_m"])} if steps == 0 else out


def _other_init(image, text, alpha, steps, seed):
    g = torch.Generator().manual_seed(seed)
    w_text = torch.randn(text.shape[1], 8, generator=g) / text.shape[1] ** 0.5  # text first
    w_image = torch.randn(image.shape[1], 8, generator=g) / image.shape[1] ** 0.5
    return {"w_image": w_image, "w_text": w_text, "w_image_m": w_image.clone(), "w_text_m": w_text.clone()}


def _online_teacher(image, text, alpha, steps, seed):  # the teacher's softmax from the online weights themselves
    g = torch.Generator().manual_seed(seed)
    w_image = (torch.randn(image.shape[1], 8, generator=g) / image.shape[1] ** 0.5).requires_grad_()
    w_text = (torch.randn(text.shape[1], 8, generator=g) / text.shape[1] ** 0.5).requires_grad_()
    w_image_m, w_text_m = w_image.detach().clone(), w_text.detach().clone()
    optimizer = torch.optim.Adam([w_image, w_text], lr=0.01)
    eye = torch.eye(len(image))
    for _ in range(steps):
        with torch.no_grad():
            w_image_m.mul_(0.99).add_(w_image, alpha=0.01)
            w_text_m.mul_(0.99).add_(w_text, alpha=0.01)
        s = 10 * F.normalize(image @ w_image, dim=-1) @ F.normalize(text @ w_text, dim=-1).t()
        t = s.detach()
        t_i2t, t_t2i = (1 - alpha) * eye + alpha * t.softmax(1), (1 - alpha) * eye + alpha * t.t().softmax(1)
        loss = (-(t_i2t * s.log_softmax(1)).sum(1).mean() - (t_t2i * s.t().log_softmax(1)).sum(1).mean()) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"w_image": w_image.detach(), "w_text": w_text.detach(), "w_image_m": w_image_m, "w_text_m": w_text_m}


def _mutates(image, text, alpha, steps, seed):
    out = reference_mod_experiment(image, text, alpha, steps, seed)
    image.mul_(2)
    return out


WRONG_MOD = [
    (_fixed_seed, "the seed argument is ignored"),
    (_unseeded, "gave different weights"),
    (_other_init, "initial weights are not the ones the task describes"),
    (_momentum_not_copied, "starts as a copy of the model"),
    (_no_alpha, "trained exactly as without distillation"),
    (_online_teacher, "the teacher is the online model itself"),
    (_variant("no_update"), "the momentum weights never moved"),
    (_variant("same_teacher"), "teacher's scores are transposed"),
    (_variant("one_direction"), "only the image-to-text loss"),
    (_short, "train for all the steps"),
    (_mutates, "modified in place"),
    (lambda *args: (reference_mod_experiment(*args)["w_image"], None), "must return a dict"),
]

WRONG = {"04.momentum_update": WRONG_MOMENTUM, "04.enqueue": WRONG_ENQUEUE, "04.mlm_distillation": WRONG_MLM,
         "04.itm_batch": WRONG_ITM, "04.mod_experiment": WRONG_MOD}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG, draws={"04.itm_batch": 2, "04.mod_experiment": 1})


def test_chapter_04_tasks():
    from minivlm import grading

    assert set(grading.tasks_for_chapter("04")) == set(GOOD)


def test_momentum_update_after_the_step_passes_the_experiment():
    """An honest run that updates the momentum weights after the optimizer's step (not before the teacher) passes."""
    result = run("04.mod_experiment", lambda *args: reference_mod_experiment(*args, variant="update_after"))
    assert result.passed, result.message


def test_itm_sampler_written_another_way_passes():
    """A correct sampler need not draw as torch.multinomial does: inverse-CDF sampling passes too."""

    def inverse_cdf(similarity, exclude):
        weights = similarity.softmax(dim=1).masked_fill(exclude, 0.0)
        cdf = weights.cumsum(dim=1)
        u = torch.rand(len(similarity), 1) * cdf[:, -1:]
        return (cdf < u).sum(dim=1)

    def itm_batch(sim_i2t, sim_t2i, positives):
        b = len(positives)
        rows = torch.arange(b)
        neg_text, neg_image = inverse_cdf(sim_i2t, positives), inverse_cdf(sim_t2i, positives.t())
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
        return torch.cat([rows, rows, neg_image]), torch.cat([rows, neg_text, rows]), labels

    for _ in range(3):
        result = run("04.itm_batch", itm_batch)
        assert result.passed, result.message


def test_itm_mistake_without_a_name_gets_the_frequencies():
    """Weights softmax(2·similarity) (an unasked-for temperature) are wrong in no named way: the message shows the
    measured shares against the expected ones."""
    torch.manual_seed(0)
    result = run("04.itm_batch", _itm(lambda s, t, p: _text(2 * s, t, p), _image))
    assert not result.passed
    assert "do not follow the softmax" in result.message and "expected about" in result.message, result.message


def test_enqueue_written_with_a_loop_passes():
    def loop(queue, ptr, features):
        with torch.no_grad():
            for row in features:
                queue[ptr] = row
                ptr = (ptr + 1) % len(queue)
        return ptr

    result = run("04.enqueue", loop)
    assert result.passed, result.message


def test_mod_experiment_written_another_way_passes():
    """The recipe with another order of operations (each direction's scores computed on its own, F.cross_entropy
    with probability targets, the EMA through copy_) rounds differently and still passes."""

    def other(image, text, alpha, steps, seed):
        g = torch.Generator().manual_seed(seed)
        w_image = (torch.randn(image.shape[1], 8, generator=g) / image.shape[1] ** 0.5).requires_grad_()
        w_text = (torch.randn(text.shape[1], 8, generator=g) / text.shape[1] ** 0.5).requires_grad_()
        w_image_m, w_text_m = w_image.detach().clone(), w_text.detach().clone()
        optimizer = torch.optim.Adam([w_image, w_text], lr=0.01)
        one_hot = torch.eye(len(image))
        for _ in range(steps):
            with torch.no_grad():
                w_image_m.copy_(0.99 * w_image_m + 0.01 * w_image)
                w_text_m.copy_(0.99 * w_text_m + 0.01 * w_text)
                a_m, b_m = F.normalize(image @ w_image_m, dim=-1), F.normalize(text @ w_text_m, dim=-1)
                t_i2t = (1 - alpha) * one_hot + alpha * (10 * a_m @ b_m.t()).softmax(1)
                t_t2i = (1 - alpha) * one_hot + alpha * (10 * b_m @ a_m.t()).softmax(1)
            a, b = F.normalize(image @ w_image, dim=-1), F.normalize(text @ w_text, dim=-1)
            loss = 0.5 * F.cross_entropy(10 * a @ b.t(), t_i2t) + 0.5 * F.cross_entropy(10 * b @ a.t(), t_t2i)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"w_image": w_image.detach(), "w_text": w_text.detach(), "w_image_m": w_image_m, "w_text_m": w_text_m}

    result = run("04.mod_experiment", other)
    assert result.passed, result.message
