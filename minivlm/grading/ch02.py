"""Checks for the chapter 02 exercises (exercises/02_clip): CLIP's loss for a batch with duplicate
captions (every pair of a group is a positive), a zero-shot classifier from class names and
templates, recall@k with any number of correct candidates per query, and an experiment: the
temperature learned or fixed.

Each check runs the learner's function on fresh random inputs (class names, templates and group
layouts drawn afresh, group ids that are not 0 … G − 1, shuffled in the batch) or on small
hand-made cases with a known answer, compares it with the library's reference (minivlm.losses,
minivlm.eval), checks the gradient of the loss, size-1 inputs and that the inputs come back
unchanged, and when it differs tries to name the plausible mistake: duplicates treated as
negatives, targets that do not sum to 1, the probability of any positive (MIL-NCE) instead of the
spread target, a one-sided or summed loss; one template, no renormalisation, prompts mixed up,
the templates ignored; the diagonal assumed, every correct candidate required in the top k, the
share of correct candidates found, ties in the model's favour, other correct candidates counted
as competitors, an off-by-one.

The experiment `temperature_experiment(image_features, text_features, learn_scale, steps, seed)`
is run by the check on paired features it draws, with the temperature fixed and learned. Untrained
runs (steps = 0) must repeat with one seed, differ between two and start at a log-scale of 0. The
returned projections and log-scale are read back: the fixed run's log-scale must still be 0, the
learned run's must have grown, and the reported loss must be the loss the check recomputes from
them on the features. The science: with the scale fixed at 1 the loss cannot fall below
ln(1 + (N − 1)·e⁻²) however well the pairs are ranked; the learned scale grows and the loss falls
far below the fixed run's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivlm.eval import recall_at_k as library_recall_at_k
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_gradients,
    expect_shape,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)


def _scalar(name: str, got) -> torch.Tensor:
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        return torch.tensor(float(got))
    if not isinstance(got, torch.Tensor):
        raise GradingFailure(f"{name} must return a scalar tensor, got {type(got).__name__}")
    if got.numel() != 1:
        raise GradingFailure(f"{name} must return one number (a scalar), got a tensor of shape {tuple(got.shape)}")
    return got.reshape(())


def _unchanged(given: dict, before: dict, what: str) -> None:
    for name, t in given.items():
        if isinstance(t, torch.Tensor):
            same = torch.equal(t.detach(), before[name])
        else:
            same = t == before[name]
        if not same:
            raise GradingFailure(f"{name} was changed in place by {what}: leave the inputs as they were")


# ----------------------------------------------------------------------------- 02.multi_positive_loss


def reference_clip_loss(logits: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def positive_targets(groups: torch.Tensor) -> torch.Tensor:
    """(N, N): row i spreads probability 1 evenly over the pairs j of i's group (i included)."""
    same = (groups[:, None] == groups[None, :]).float()
    return same / same.sum(1, keepdim=True)


def reference_multi_positive_loss(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss with soft targets: image i's target is spread over every text of its
    group, text j's over every image of its group; the two cross-entropies averaged."""
    targets = positive_targets(groups)  # symmetric: a group's members all have the group's size
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t())) / 2


def _loss_mistakes(logits, groups):
    same = groups[:, None] == groups[None, :]
    targets = positive_targets(groups)
    rows, cols = F.cross_entropy(logits, targets), F.cross_entropy(logits.t(), targets.t())
    log_rows, log_cols = logits.log_softmax(1), logits.log_softmax(0)
    unnormalised = (-(same * log_rows).sum(1).mean() - (same * log_cols).sum(0).mean()) / 2
    any_positive = (-(log_rows.exp() * same).sum(1).log().mean() - (log_cols.exp() * same).sum(0).log().mean()) / 2
    return [
        (reference_clip_loss(logits),
         "the groups are ignored: this is CLIP's loss with labels arange(N), which pushes two pairs with the same "
         "caption apart as if they were different; every pair of a group is a positive"),
        (unnormalised, "each row's target does not sum to 1: a pair with n positives must spread its target "
                       "evenly, 1/n on each (a soft target), or a large group weighs n times as much"),
        (any_positive, "this is -log of the summed probability of the positives (MIL-NCE, 'any positive will "
                       "do'): the target here spreads the probability evenly over the positives, a soft "
                       "cross-entropy"),
        (rows, "the loss is one-sided: only the image→text rows; average it with the text→image columns"),
        (cols, "the loss is one-sided: only the text→image columns; average it with the image→text rows"),
        (rows + cols, "the two cross-entropies are summed: average them, (rows + columns) / 2"),
        (reference_multi_positive_loss(logits, groups) * len(groups),
         "the loss is summed over the batch: take the mean over the N pairs"),
    ]


def _groups(n: int, g: torch.Generator) -> torch.Tensor:
    """(N,) group ids, not 0 … G − 1 and not contiguous: some groups of 2 or 3, the rest single."""
    for _ in range(100):
        ids = torch.randint(3, 3 + max(2, n // 2), (n,), generator=g) * 7  # e.g. caption ids 21, 35, ...
        sizes = torch.unique(ids, return_counts=True)[1]
        if (sizes > 1).any() and (sizes == 1).any():
            return ids
    raise RuntimeError("could not draw groups")  # pragma: no cover


@register("02.multi_positive_loss", title="CLIP's loss when a batch repeats a caption: every pair of a group is "
                                          "a positive")
def check_multi_positive_loss(fn) -> None:
    g = fresh_generator()
    cases = [(n, _groups(n, g)) for n in (randint(g, 7, 10), randint(g, 11, 14))]
    cases += [(5, torch.arange(5) * 3 + 1), (3, torch.full((3,), 9)), (1, torch.tensor([4]))]
    for n, groups in cases:
        logits = torch.randn(n, n, generator=g) * 3
        leaf = logits.clone().requires_grad_(True)
        given_groups = groups.clone()
        got = call(fn, leaf, given_groups)
        what = f"multi_positive_loss({n}×{n} logits, groups {groups.tolist()})"
        if isinstance(got, (int, float)):
            raise GradingFailure(f"{what} returned a Python number: keep the loss a tensor computed from the logits "
                                 f"(no .item() or float()), or training gets no gradient")
        raw = tensor_answer(what, got)
        got = _scalar(what, raw)
        _unchanged({"logits": leaf, "groups": given_groups}, {"logits": logits, "groups": groups},
                   "multi_positive_loss")
        want = reference_multi_positive_loss(logits, groups)
        if not is_close(got, want):
            if torch.isnan(got):
                raise GradingFailure(f"{what} is NaN")
            for candidate, message in _loss_mistakes(logits, groups):
                if n > 1 and is_close(got, candidate) and not is_close(candidate, want):
                    raise GradingFailure(f"{message} ({what})")
            raise GradingFailure(f"{what}: expected {float(want):.5f}, got {float(got):.5f}")
        expect_gradients(what, raw, reference_multi_positive_loss(leaf, groups).reshape(raw.shape), {"logits": leaf})
    # a perfect batch: every image scores its group's texts high and the rest low
    groups = _groups(8, g)
    same = groups[:, None] == groups[None, :]
    perfect = same.float() * 40
    got = float(_scalar("multi_positive_loss", call(fn, perfect, groups)))
    want = float(reference_multi_positive_loss(perfect, groups))
    if abs(got - want) > 1e-4:
        raise GradingFailure(f"logits that score every positive equally high and every negative low should give the "
                             f"loss of the spread target, {want:.4f} (the entropy of 1/n over n positives), got "
                             f"{got:.4f}")


# ----------------------------------------------------------------------------- 02.zero_shot_classifier

_WORDS = ["red", "blue", "green", "white", "purple", "orange", "yellow", "pink", "circle", "square", "star",
          "cross", "triangle", "diamond", "small", "large", "shiny", "striped"]
_TEMPLATES = ["a {}.", "a picture of a {}.", "there is a {}.", "an image with a small {}.", "{} in the middle.",
              "a drawing of the {}.", "this is a {}.", "look: a {}!"]


def _fake_text_encoder(dim: int, g: torch.Generator, calls: list | None = None):
    """A deterministic 'text tower': each word has a random vector, a prompt is the normalised,
    position-weighted sum (word order matters a little). `calls` records the batch sizes."""
    table: dict[str, torch.Tensor] = {}

    def encode_text(texts):
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"encode_text takes a list of strings, got {type(texts).__name__}")
        if calls is not None:
            calls.append(len(texts))
        rows = []
        for text in texts:
            v = torch.zeros(dim)
            for k, word in enumerate(text.replace(".", " .").replace("!", " !").split()):
                if word not in table:
                    table[word] = torch.randn(dim, generator=g)
                v = v + table[word] * (1 + 0.3 * k)
            rows.append(v)
        return F.normalize(torch.stack(rows), dim=-1)  # (K, E), unit rows like CLIP's encode_text

    return encode_text


def reference_classifier(encode_text, class_names, templates) -> torch.Tensor:
    rows = []
    for name in class_names:
        emb = encode_text([t.format(name) for t in templates])  # (K, E)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)  # (C, E)


def _classes(g: torch.Generator, c: int) -> list[str]:
    names: list[str] = []
    while len(names) < c:
        a, b = torch.randint(len(_WORDS), (2,), generator=g).tolist()
        name = f"{_WORDS[a]} {_WORDS[b]}"
        if a != b and name not in names:
            names.append(name)
    return names


@register("02.zero_shot_classifier", title="A zero-shot classifier from class names and templates")
def check_zero_shot_classifier(fn) -> None:
    g = fresh_generator()
    dim = randint(g, 9, 14)
    encode_text = _fake_text_encoder(dim, g)
    for c, k in ((randint(g, 3, 6), randint(g, 3, 5)), (1, 1), (2, 1)):
        class_names = _classes(g, c)
        templates = [_TEMPLATES[i] for i in torch.randperm(len(_TEMPLATES), generator=g)[:k].tolist()]
        given_names, given_templates = list(class_names), list(templates)
        got = tensor_answer("zero_shot_classifier", call(fn, encode_text, given_names, given_templates))
        what = f"zero_shot_classifier({c} classes, {k} templates)"
        _unchanged({"class_names": given_names, "templates": given_templates},
                   {"class_names": class_names, "templates": templates}, "zero_shot_classifier")
        expect_shape(what, got, (c, dim))
        want = reference_classifier(encode_text, class_names, templates)
        if is_close(got, want):
            continue
        named = [
            (reference_classifier(encode_text, class_names, templates[:1]),
             "only the first template is used: embed the class with every template and average"),
            (torch.stack([encode_text([t.format(n) for t in templates]).mean(0) for n in class_names]),
             "the averaged embeddings are not renormalised: a mean of unit vectors is shorter than 1, so "
             "L2-normalise each class vector again"),
            (reference_classifier(encode_text, class_names, ["{}"]),
             "the templates are ignored: the class names were embedded as they are; write each name into every "
             "template"),
        ]
        if k > 1:
            named.append((F.normalize(encode_text([t.format(n) for n in class_names for t in templates])
                                      .view(k, c, dim).mean(0), dim=-1),
                          "prompts and classes are mixed up: the prompts were built class by class (c0t0, c0t1, ...) "
                          "but averaged as if template by template; keep the same order"))
        for candidate, message in named:
            if is_close(got, candidate) and not is_close(candidate, want):
                raise GradingFailure(f"{message} ({what})")
        norms = got.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise GradingFailure(f"each class vector must have norm 1, got norms {[round(float(x), 3) for x in norms]}")
        expect_close(what, got, want)


# ----------------------------------------------------------------------------- 02.recall_at_k


def reference_recall_at_k(similarity, correct, k) -> float:
    """The library's recall@k with the correct candidates of each query given as a set."""
    return library_recall_at_k(similarity, k, targets=[set(row.nonzero().flatten().tolist()) for row in correct])


def _recall_mistakes(similarity, correct, k) -> list[tuple[float, str, str]]:
    """(value, key, message) of each plausible mistake on this case; the key names the mistake
    across cases (an off-by-one's message names its k)."""
    n_q, n_c = similarity.shape
    best = similarity.masked_fill(~correct, float("-inf")).max(1).values
    worst = similarity.masked_fill(~correct, float("inf")).min(1).values
    first = similarity.gather(1, correct.float().argmax(1, keepdim=True))
    out = [
        (float((((similarity >= worst[:, None]) & ~correct).sum(1) < k).float().mean()), "all",
         "every correct candidate was required in the top k: a query is answered when its BEST correct candidate "
         "is there (any one of them)"),
        (float((((similarity >= first) & ~correct).sum(1) < k).float().mean()), "first",
         "only the first correct candidate of each query was ranked: take the best-scoring of its correct "
         "candidates"),
        (float((((similarity > best[:, None]) & ~correct).sum(1) < k).float().mean()), "ties",
         "ties count in the model's favour: a wrong candidate scoring the same as the best correct one ranks above "
         "it (count the wrong candidates scoring >= it)"),
        (float(((similarity >= best[:, None]).sum(1) - 1 < k).float().mean()), "competitors",
         "other correct candidates were counted as competitors: only the WRONG candidates scoring >= the best "
         "correct one push it down"),
    ]
    per_candidate = []
    for q in range(n_q):
        for c in correct[q].nonzero().flatten().tolist():
            per_candidate.append(int(((similarity[q] >= similarity[q, c]) & ~correct[q]).sum()) < k)
    out.append((sum(per_candidate) / len(per_candidate), "candidates",
                "this is the share of correct *candidates* in the top k: recall@k is the share of *queries* with one "
                "in the top k"))
    if n_q <= n_c:
        out.append((library_recall_at_k(similarity, k), "diagonal",
                    "the correct argument is ignored: the diagonal was assumed (query q's match is candidate q); "
                    "read each query's correct candidates from correct"))
    for kk, key, word in ((k + 1, "k+1", f"the top {k + 1}"), (k - 1, "k-1", f"only the top {k - 1}")):
        if 1 <= kk <= n_c:
            out.append((reference_recall_at_k(similarity, correct, kk), key,
                        f"off by one: recall_at_k(…, {k}) counted {word}; a query is answered when fewer than k "
                        f"wrong candidates score at least as high as its best correct one"))
    return out


def _hand_case():
    """A hand-made case: query 0 has two correct candidates tied at the top; query 1's best correct
    candidate ties with a wrong one; query 2 has one correct candidate at rank 2; query 3 two correct
    candidates, the better at rank 1, the other last."""
    sim = torch.tensor([
        [0.9, 0.9, 0.1, 0.3, 0.2],
        [0.2, 0.7, 0.7, 0.1, 0.0],
        [0.5, 0.6, 0.4, 0.1, 0.0],
        [0.8, 0.7, 0.5, 0.6, 0.0],
    ])
    correct = torch.zeros(4, 5, dtype=torch.bool)
    correct[0, [0, 1]] = True
    correct[1, 2] = True
    correct[2, 2] = True
    correct[3, [1, 4]] = True
    return sim, correct


def _random_case(g: torch.Generator):
    n_q, n_c = randint(g, 9, 14), randint(g, 15, 22)
    sim = torch.randint(0, 6, (n_q, n_c), generator=g).float() / 5  # coarse values: ties happen
    correct = torch.rand(n_q, n_c, generator=g) < 0.12
    correct[torch.arange(n_q), torch.randint(n_c, (n_q,), generator=g)] = True  # every query has one
    return sim, correct


@register("02.recall_at_k", title="Recall@k with any number of correct candidates per query")
def check_recall_at_k(fn) -> None:
    g = fresh_generator()
    cases = [(*_hand_case(), k) for k in (1, 2, 3)]
    cases += [(*_random_case(g), k) for k in (1, 3, 5)]
    cases += [(torch.tensor([[0.3]]), torch.tensor([[True]]), 1)]  # one query, one candidate
    sim, correct = _random_case(g)
    cases += [(sim, correct, sim.shape[1])]  # k = every candidate: every query is answered
    explained = None  # the mistakes that explain every wrong value so far: the cases tell them apart
    first_wrong = None
    for sim, correct, k in cases:
        given = {"similarity": sim.clone(), "correct": correct.clone()}
        what = f"recall_at_k(similarity {tuple(sim.shape)}, correct, k={k})"
        raw = call(fn, given["similarity"], given["correct"], k)
        got = float(_scalar(what, raw))
        _unchanged(given, {"similarity": sim, "correct": correct}, "recall_at_k")
        want = reference_recall_at_k(sim, correct, k)
        if abs(got - want) < 1e-6:
            continue
        if abs(got - 100 * want) < 1e-4 and want > 0:
            raise GradingFailure(f"{what} is a percentage ({got:g}): return a fraction in [0, 1]")
        mistakes = _recall_mistakes(sim, correct, k)
        matched = {key for value, key, _ in mistakes if abs(got - value) < 1e-6 and abs(value - want) > 1e-6}
        explained = matched if explained is None else explained & matched
        first_wrong = first_wrong or (what, want, got, {key: message for _, key, message in mistakes})
    if first_wrong is None:
        return
    what, want, got, messages = first_wrong
    for key in ("all", "first", "ties", "competitors", "candidates", "diagonal", "k+1", "k-1"):
        if key in (explained or set()) and key in messages:
            raise GradingFailure(f"{messages[key]} ({what})")
    raise GradingFailure(f"{what}: expected {want:.4f}, got {got:.4f}")


# ----------------------------------------------------------------------------- 02.temperature_experiment

N_PAIRS, STEPS = 64, 300


def paired_features(n: int, g: torch.Generator, image_dim: int = 16, text_dim: int = 12, latent: int = 6,
                    noise: float = 0.5):
    """(n, image_dim) and (n, text_dim) features of n pairs: two noisy linear views of one latent."""
    a, b = torch.randn(latent, image_dim, generator=g), torch.randn(latent, text_dim, generator=g)
    z = torch.randn(n, latent, generator=g)
    return (z @ a + noise * torch.randn(n, image_dim, generator=g),
            z @ b + noise * torch.randn(n, text_dim, generator=g))


def experiment_loss(image_features, text_features, w_image, w_text, logit_scale) -> torch.Tensor:
    """CLIP's loss of the projections and log-scale on the pairs (the diagonal)."""
    image = F.normalize(image_features @ w_image, dim=-1)
    text = F.normalize(text_features @ w_text, dim=-1)
    return reference_clip_loss(logit_scale.exp() * image @ text.t())


def scale_floor(n: int, scale: float) -> float:
    """The lowest loss possible at a fixed scale: cosines lie in [-1, 1], so each of the n - 1 wrong
    candidates costs at least e^(-2·scale) against the right one: ln(1 + (n - 1)·e^(-2·scale))."""
    return math.log(1 + (n - 1) * math.exp(-2 * scale))


_KEYS = ("w_image", "w_text", "logit_scale", "loss")


def _experiment_run(fn, image, text, learn_scale, steps, seed) -> dict:
    given = {"image_features": image.clone(), "text_features": text.clone()}
    got = call(fn, given["image_features"], given["text_features"], learn_scale, steps, seed)
    _unchanged(given, {"image_features": image, "text_features": text}, "temperature_experiment")
    if not isinstance(got, dict) or any(k not in got for k in _KEYS):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"temperature_experiment must return a dict with keys {list(_KEYS)}, got {keys}")
    w_image = tensor_answer("w_image", got["w_image"]).detach().float()
    w_text = tensor_answer("w_text", got["w_text"]).detach().float()
    t = _scalar("logit_scale", got["logit_scale"]).detach().float()
    if w_image.ndim != 2 or w_image.shape[0] != image.shape[1]:
        raise GradingFailure(f"w_image must be (image_dim, E) = ({image.shape[1]}, E), got {tuple(w_image.shape)}")
    if w_text.ndim != 2 or w_text.shape != (text.shape[1], w_image.shape[1]):
        raise GradingFailure(f"w_text must be (text_dim, E) = ({text.shape[1]}, {w_image.shape[1]}), got "
                             f"{tuple(w_text.shape)}")
    loss = float(_scalar("loss", got["loss"]))
    with torch.no_grad():
        recomputed = float(experiment_loss(image, text, w_image, w_text, t))
    if abs(loss - recomputed) > 1e-4 * max(1.0, abs(recomputed)):
        with torch.no_grad():
            plain = float(reference_clip_loss(t * F.normalize(image @ w_image, dim=-1)
                                              @ F.normalize(text @ w_text, dim=-1).t()))
            unnormalised = float(reference_clip_loss(t.exp() * (image @ w_image) @ (text @ w_text).t()))
        arm = "learned" if learn_scale else "fixed"
        if abs(loss - plain) < 1e-4 * max(1.0, abs(plain)):
            raise GradingFailure(f"{arm} temperature: logit_scale is a log: the logits are exp(logit_scale) times "
                                 f"the cosine similarities")
        if abs(loss - unnormalised) < 1e-4 * max(1.0, abs(unnormalised)):
            raise GradingFailure(f"{arm} temperature: the projected features are not normalised: CLIP scores "
                                 f"cosine similarities")
        raise GradingFailure(f"{arm} temperature, {steps} steps: the reported loss is {loss:.5f}, but the "
                             f"projections and log-scale you returned give {recomputed:.5f} on the features: report "
                             f"the loss of the returned parameters on all the pairs, after training")
    return {"w_image": w_image, "w_text": w_text, "logit_scale": float(t), "loss": loss}


@register("02.temperature_experiment", title="The experiment: CLIP's temperature learned or fixed")
def check_temperature_experiment(fn) -> None:
    g = fresh_generator()
    image, text = paired_features(N_PAIRS, g)
    seed = randint(g, 0, 10_000)

    # untrained runs: the seed argument decides the initial projections; the log-scale starts at 0
    a = _experiment_run(fn, image, text, True, 0, seed)
    b = _experiment_run(fn, image, text, True, 0, seed)
    c = _experiment_run(fn, image, text, True, 0, seed + 1)
    if not (torch.equal(a["w_image"], b["w_image"]) and torch.equal(a["w_text"], b["w_text"])):
        raise GradingFailure("two runs with the same seed (steps = 0) gave different projections: draw them from a "
                             "generator seeded with the seed argument, so that a run can be repeated")
    if torch.equal(a["w_image"], c["w_image"]):
        raise GradingFailure("runs with seeds s and s + 1 gave the same projections: the seed argument is ignored "
                             "(a seed fixed inside the function); use the one you are given")
    if abs(a["logit_scale"]) > 1e-6:
        raise GradingFailure(f"after 0 steps the log-scale is {a['logit_scale']:.4g}: start it at 0 (a scale of 1), "
                             f"and train only for the steps you are given")

    for attempt in range(2):  # an honest run can land on a poor seed: a second one is tried
        fixed = _experiment_run(fn, image, text, False, STEPS, seed + 10 * attempt)
        if fixed["logit_scale"] != 0.0:
            raise GradingFailure(f"with learn_scale=False the log-scale moved to {fixed['logit_scale']:.4g}: it must "
                                 f"stay at 0 (leave it out of the optimizer, or give it no gradient)")
        learned = _experiment_run(fn, image, text, True, STEPS, seed + 10 * attempt)
        if learned["logit_scale"] == 0.0:
            raise GradingFailure("with learn_scale=True the log-scale did not move: it must be a parameter the "
                                 "optimizer updates with the projections")
        if torch.equal(fixed["w_image"], a["w_image"]):
            raise GradingFailure(f"after {STEPS} steps the projections are the untrained ones: train for the steps "
                                 f"you are given")
        if learned["logit_scale"] > math.log(2) and learned["loss"] < fixed["loss"] - 1.0:
            return
    floor = scale_floor(N_PAIRS, 1.0)
    if learned["logit_scale"] <= math.log(2):
        raise GradingFailure(f"after {STEPS} steps (two seeds) the learned scale is only "
                             f"{math.exp(learned['logit_scale']):.2f}: train the log-scale with the projections (Adam, "
                             f"lr about 0.01, on all the pairs each step)")
    raise GradingFailure(f"after {STEPS} steps (two seeds) the learned run's loss {learned['loss']:.3f} is not well "
                         f"below the fixed run's {fixed['loss']:.3f} (whose floor at scale 1 is {floor:.3f}): train "
                         f"both runs the same way (Adam, lr about 0.01, on all the pairs each step)")
