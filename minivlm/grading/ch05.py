"""Checks for the chapter 05 exercises (exercises/05_vlmo): VLMo's routing of tokens to modality
experts (the Multiway layer of its Mixture-of-Modality-Experts Transformer), the number of
Transformer passes that each way of retrieving needs, and the re-ranking of the dual encoder's
top k by the fusion encoder.

Routing is compared with the library (minivlm.nn.multiway.Multiway) on fresh random tokens,
routes and expert modules; the experts count the tokens they are given, so that a version that
runs every expert on every token is caught even when it picks the right outputs. The pass counts
are compared with the formulas on many random sizes. Re-ranking is judged by what it must do, not
by its values: the pairs it asks the fusion function to score (each row's top k by dual score,
and no other) and the order its scores give each row (the k re-ranked by fusion score, above all
others, which keep their dual order). When an answer is wrong the check tries to name the
plausible mistake: routing by position instead of by index, every expert on every token (summed,
averaged, or chosen afterwards), an off-by-one expert index, outputs concatenated in expert order
(the token order lost), another sequence's routes; n² passes, a re-rank that forgets the dual
passes or does not cap k; scoring every pair (the fusion mode, not a re-rank), top k along the
wrong axis, fusion scores ignored or sorted the wrong way, the re-ranked k not above the rest.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)
from minivlm.models.vlmo import retrieval_passes
from minivlm.nn.multiway import Multiway

# ----------------------------------------------------------------------------- 05.route_to_experts


class _CountingExpert(nn.Module):
    """An expert that counts the tokens (rows) it is given, so that the check sees who ran on what."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[-1]:
            self.rows += x.numel() // x.shape[-1]
        return self.inner(x)


def _expert(d: int, d_out: int, g: torch.Generator) -> nn.Module:
    """A small random MLP, token by token (D → D_out), as an FFN expert is."""
    hidden = randint(g, 5, 9)
    mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, d_out))
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return mlp


def _route_by(x: torch.Tensor, which: torch.Tensor, experts) -> torch.Tensor:
    """Each token (b, t) through experts[which[b, t]]; where which is -1 the output is 0."""
    with torch.no_grad():
        outs = [e(x) for e in experts]  # (B, T, D_out) each
        out = torch.zeros_like(outs[0])
        for e, y in enumerate(outs):
            out = torch.where((which == e)[..., None], y, out)
    return out


def _route_candidates(x: torch.Tensor, modality: torch.Tensor, experts) -> list[tuple[torch.Tensor, str]]:
    b, t = modality.shape
    n = len(experts)
    with torch.no_grad():
        outs = torch.stack([e(x) for e in experts])  # (E, B, T, D_out)
        # the first T/c tokens to expert 0, the next T/c to expert 1 ... (c = 2: "the first half to expert 0")
        # (odd T: the middle token on either side, hence two roundings)
        by_position = [(torch.arange(t) * c // t).expand(b, t) for c in range(2, n + 1)]
        by_position += [(torch.arange(t) // -(-t // c)).clamp(max=n - 1).expand(b, t) for c in range(2, n + 1)]
        by_position += [(torch.arange(t) >= t // 2).long().expand(b, t)]
        in_expert_order = torch.cat([e(x[modality == i]) for i, e in enumerate(experts)])  # (B·T, D_out)
        tokens_major = modality.t().reshape(b, t)  # x flattened b-major, modality t-major
        skip_first = torch.where(modality == 0, -1, modality - 1)  # experts[e] on the tokens of index e + 1
        last_unrouted = torch.where(modality == n - 1, -1, modality)  # range(len(experts) - 1)
    position = ("routed by position, not by index: token t of every sequence went to one expert by where it "
                "stands (the first tokens to expert 0, the next to expert 1 ...); route each token by its own "
                "modality[b, t], whatever its position (VLMo's fusion mode mixes modalities in one sequence, and "
                "later chapters put image tokens between words)")
    off_by_one = ("off-by-one expert index: token (b, t) must go through experts[modality[b, t]] — index 0 is the "
                  "first expert, not expert 1")
    mixing = ("tokens were routed by another sequence's indices: token (b, t) must use modality[b, t] of its own "
              "sequence b (keep the batch and token axes together, e.g. chosen = modality == e, a (B, T) mask, "
              "and x[chosen])")
    return [
        (outs.sum(0), "every expert was applied to every token and the outputs summed: a token goes through one "
                      "expert only, experts[modality[b, t]]; a Mixture-of-Modality-Experts is not an ensemble"),
        (outs.mean(0), "every expert was applied to every token and the outputs averaged: a token goes through one "
                       "expert only, experts[modality[b, t]]"),
        *((_route_by(x, which, experts), position) for which in by_position),
        (_route_by(x, modality.flip(1), experts), position + " (the routes were read back to front)"),
        (_route_by(x, (modality + 1) % n, experts), off_by_one),
        (_route_by(x, (modality - 1) % n, experts), off_by_one),
        (_route_by(x, skip_first, experts), off_by_one),
        (in_expert_order.view(b, t, -1),
         "the token order is lost: the outputs were concatenated expert by expert (all of expert 0's tokens, then "
         "expert 1's ...); put each output back where its token was, e.g. out[chosen] = expert(x[chosen])"),
        (_route_by(x, modality[:1].expand(b, t), experts), mixing + " (here every sequence used the first one's)"),
        (_route_by(x, modality.roll(1, dims=0), experts), mixing),
        (_route_by(x, tokens_major, experts), mixing),
        (_route_by(x, last_unrouted, experts),
         f"the tokens of the last expert (index {n - 1}) came out as zeros: loop over every expert, "
         f"range(len(experts)), not range(len(experts) - 1)"),
    ]


@register("05.route_to_experts", title="Route each token to the expert its modality index names (a Multiway layer)")
def check_route_to_experts(fn) -> None:
    g = fresh_generator()
    # round 1: three experts, every one used, routes random (not sorted by position), B != T, D_out != D;
    # round 2: VLMo's image mode in a block with a vision-language expert: one expert no token uses
    for used in (3, 2):
        n_experts = 3
        b = randint(g, 2, 4)
        t = randint(g, 7, 12)
        d = randint(g, 4, 7)
        d_out = d + randint(g, 1, 3)
        inner = [_expert(d, d_out, g) for _ in range(n_experts)]
        experts = [_CountingExpert(m) for m in inner]
        while True:  # every used expert in every sequence, and the sequences routed differently
            modality = torch.randint(0, used, (b, t), generator=g)
            if all(bool((row == e).any()) for row in modality for e in range(used)) \
                    and not bool((modality == modality[:1]).all()):
                break
        x = torch.randn(b, t, d, generator=g)
        want = Multiway(inner)(x, modality).detach()  # the library's layer, on the same (uncounted) modules

        given_x, given_modality = x.clone().requires_grad_(True), modality.clone()
        got = call(fn, given_x, given_modality, experts)
        if not torch.equal(given_x.detach(), x) or not torch.equal(given_modality, modality):
            raise GradingFailure("an input was modified in place: leave x and modality as they are")
        got = tensor_answer("the output", got)
        shape = (b, t, d_out)
        if tuple(got.shape) != shape:
            if tuple(got.shape) == (b * t, d_out):
                raise GradingFailure(f"the output is flat, shape {(b * t, d_out)}: put the tokens back in their "
                                     f"sequences, shape (B, T, D_out) = {shape}")
            if tuple(got.shape) == (b, t, d):
                raise GradingFailure(f"the output has the input's width D = {d}, but these experts map D = {d} → "
                                     f"D_out = {d_out}: build the output from the experts' outputs (e.g. "
                                     f"x.new_zeros(B, T, D_out)), not from x; expected shape {shape}")
            raise GradingFailure(f"wrong shape: expected (B, T, D_out) = {shape}, got {tuple(got.shape)}")
        if not is_close(got, want, atol=1e-5):
            for candidate, message in _route_candidates(x, modality, inner):
                if not is_close(candidate, want, atol=1e-5) and is_close(got, candidate, atol=1e-5):
                    raise GradingFailure(message)
            expect_close(f"route_to_experts on random tokens {tuple(x.shape)} routed to {n_experts} experts", got, want)
        if not got.requires_grad:
            raise GradingFailure("the output is detached from x and the experts (no gradient): the experts are "
                                 "trained through this layer, so keep the computation in autograd (no .detach(), "
                                 "no torch.no_grad())")
        counts = [int((modality == e).sum()) for e in range(n_experts)]
        rows = [e.rows for e in experts]
        if rows != counts:
            if all(r >= b * t for r in rows):
                raise GradingFailure(f"every expert ran on all {b * t} tokens (the outputs are right, but each token "
                                     f"paid for {n_experts} FFNs): give each expert only its own tokens, "
                                     f"x[modality == e], and run it once on them together; that VLMo's cost per "
                                     f"token is one FFN, whatever the number of experts, is the point of routing")
            e = next(i for i in range(n_experts) if rows[i] != counts[i])
            raise GradingFailure(f"expert {e} ran on {rows[e]} tokens, but {counts[e]} are routed to it "
                                 f"(modality == {e}); experts ran on {rows} tokens, routes give {counts}: run each "
                                 f"expert on exactly its own tokens")


# ----------------------------------------------------------------------------- 05.retrieval_passes




_PASS_MISTAKES = {
    "dual": [
        (lambda n, m, k: n * m, "that is the fusion mode's count: in the dual mode each image and each text is "
                                "encoded once, on its own (n_images + n_texts passes), and one matrix product "
                                "scores every pair"),
        (lambda n, m, k: 2 * n, "2·n_images assumes as many texts as images: count n_images + n_texts"),
        (lambda n, m, k: 2 * m, "2·n_texts assumes as many images as texts: count n_images + n_texts"),
        (lambda n, m, k: n, "the texts are not counted: the dual mode encodes every text too (n_images + n_texts)"),
        (lambda n, m, k: m, "the images are not counted: the dual mode encodes every image too (n_images + n_texts)"),
        (lambda n, m, k: 1, "one pass for the whole matrix product: count Transformer passes, one per image and one "
                            "per text (n_images + n_texts); the matrix product runs no Transformer"),
        (lambda n, m, k: 2, "two passes (one per modality): a pass encodes one sequence, so the dual mode needs "
                            "one per image and one per text, n_images + n_texts"),
    ],
    "fusion": [
        (lambda n, m, k: n * n, "n_images² assumes as many texts as images: the fusion mode runs once per (image, "
                                "text) pair, n_images · n_texts"),
        (lambda n, m, k: m * m, "n_texts² assumes as many images as texts: the fusion mode runs once per (image, "
                                "text) pair, n_images · n_texts"),
        (lambda n, m, k: n + m, "that is the dual mode's count: the fusion mode runs the Transformer on every "
                                "(image, text) pair together, n_images · n_texts passes"),
        (lambda n, m, k: n * m + n + m, "the fusion mode needs no dual passes: it encodes each (image, text) pair "
                                        "jointly, n_images · n_texts passes in all"),
        (lambda n, m, k: n * min(k, m), "the fusion mode scores every pair, not the top k: n_images · n_texts"),
    ],
    "rerank": [
        (lambda n, m, k: n * min(k, m), "the re-rank forgets the dual passes: the top k come from the dual mode, "
                                        "which first encodes every image and every text (n_images + n_texts), then "
                                        "n_images · min(k, n_texts) fusion passes"),
        (lambda n, m, k: n + m + n * k, "k is not capped at n_texts: an image cannot have more than n_texts "
                                        "candidates to re-rank, so min(k, n_texts) fusion passes per image"),
        (lambda n, m, k: n + m + m * min(k, n), "k images re-ranked per text: in image → text retrieval each of "
                                                "the n_images queries re-ranks its own top k texts, "
                                                "n_images · min(k, n_texts) fusion passes"),
        (lambda n, m, k: n + m + m * k, "k per text (k · n_texts): in image → text retrieval each of the n_images "
                                        "queries re-ranks its own top k texts, n_images · min(k, n_texts) fusion "
                                        "passes"),
        (lambda n, m, k: n + m + n * min(k, n), "k capped at n_images: an image's candidates are the texts, so "
                                                "min(k, n_texts)"),
        (lambda n, m, k: n + m + min(k, m), "k fusion passes in all: each of the n_images queries re-ranks its own "
                                            "top k, n_images · min(k, n_texts)"),
        (lambda n, m, k: n + m + k, "k fusion passes in all: each of the n_images queries re-ranks its own top k, "
                                    "n_images · min(k, n_texts)"),
        (lambda n, m, k: n * m + n + m, "that counts every pair in fusion mode: the re-rank scores only each "
                                        "image's top k, n_images + n_texts + n_images · min(k, n_texts)"),
        (lambda n, m, k: n + m + n * min(k, m) * m, "the fusion passes are multiplied by n_texts too: each image "
                                                    "re-ranks its k candidates, one pass each"),
    ],
}

_FORMULAS = {"dual": "n_images + n_texts", "fusion": "n_images · n_texts",
             "rerank": "n_images + n_texts + n_images · min(k, n_texts)"}


def _passes_cases(g: torch.Generator, mode: str) -> list[tuple[int, int, int]]:
    cases = []
    while len(cases) < 40:
        n, m = randint(g, 1, 3000), randint(g, 1, 3000)
        if len(cases) % 4 == 2:  # k larger than the texts: must be capped
            m = randint(g, 1, 40)
            k = m + randint(g, 1, 30)
        elif len(cases) % 4 == 3:  # k larger than the images (not than the texts): no cap
            n = randint(g, 1, 40)
            k = n + randint(g, 1, 30)
            m = k + randint(g, 1, 3000)
        else:
            k = randint(g, 1, 64)
        if n != m and (n, m, k) not in cases:
            cases.append((n, m, k))
    cases.append((randint(g, 2, 9), 1, randint(g, 2, 9)))  # a single text: the re-rank has one candidate
    return cases


def _as_count(name: str, got) -> int:
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.dtype == torch.bool:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        raise GradingFailure(f"{name} must return a number (an int), got {type(got).__name__}")
    if got != int(got):
        raise GradingFailure(f"{name} returned {got}: a number of passes is a whole number")
    return int(got)


@register("05.retrieval_passes", title="Transformer passes of dual, fusion and re-rank retrieval")
def check_retrieval_passes(fn) -> None:
    g = fresh_generator()
    for mode in ("dual", "fusion", "rerank"):
        cases = _passes_cases(g, mode)
        got = [_as_count(f"retrieval_passes({n}, {m}, {mode!r}, {k})", call(fn, n, m, mode, k)) for n, m, k in cases]
        want = [retrieval_passes(n, m, mode, k) for n, m, k in cases]
        if got == want:
            continue
        for formula, message in _PASS_MISTAKES[mode]:
            mistaken = [formula(n, m, k) for n, m, k in cases]
            if mistaken != want and got == mistaken:
                raise GradingFailure(f"mode {mode!r}: {message}")
        i = next(i for i in range(len(cases)) if got[i] != want[i])
        n, m, k = cases[i]
        raise GradingFailure(f"retrieval_passes({n}, {m}, {mode!r}, {k}) returned {got[i]}, expected {want[i]} "
                             f"({_FORMULAS[mode]}); wrong on {sum(a != b for a, b in zip(got, want))} of "
                             f"{len(cases)} random sizes")
    bad_mode = "cross"
    try:
        returned = fn(5, 7, bad_mode, 3)
    except Exception:  # noqa: BLE001 — any error is a fine answer to a mode that does not exist
        return
    raise GradingFailure(f"retrieval_passes(5, 7, {bad_mode!r}, 3) returned {returned!r} for a mode that does not "
                         f"exist: raise a ValueError for anything but 'dual', 'fusion' and 'rerank' (a typo must not "
                         f"quietly give another mode's count)")


# ----------------------------------------------------------------------------- 05.rerank


class _FusionOracle:
    """A stand-in for the fusion encoder: scores[i, j] for each (image i, text j) it is asked about,
    recording every pair."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores
        self.asked: list[torch.Tensor] = []

    def __call__(self, pairs):
        n, m = self.scores.shape
        if not isinstance(pairs, torch.Tensor):
            raise GradingFailure(f"fusion_score_fn takes the pairs as one (P, 2) tensor of (image index, text "
                                 f"index), got {type(pairs).__name__}")
        if pairs.is_floating_point() or pairs.dtype == torch.bool:
            raise GradingFailure(f"the pairs given to fusion_score_fn must be integer indices (torch.long), got "
                                 f"{pairs.dtype}")
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            hint = " (stack the two index vectors along dim=1, not dim=0)" if pairs.ndim == 2 and pairs.shape[0] == 2 \
                else ""
            raise GradingFailure(f"fusion_score_fn takes pairs of shape (P, 2), one row (image index, text index) "
                                 f"per pair, got shape {tuple(pairs.shape)}{hint}")
        pairs = pairs.detach().cpu().long()
        if pairs.numel() and (int(pairs.min()) < 0 or int(pairs[:, 0].max()) >= n or int(pairs[:, 1].max()) >= m):
            raise GradingFailure(f"a pair given to fusion_score_fn is out of range: pairs[:, 0] are image indices in "
                                 f"[0, {n - 1}] (the rows), pairs[:, 1] text indices in [0, {m - 1}] (the columns); "
                                 f"got pairs[:, 0] in [{int(pairs[:, 0].min())}, {int(pairs[:, 0].max())}], "
                                 f"pairs[:, 1] in [{int(pairs[:, 1].min())}, {int(pairs[:, 1].max())}] (columns "
                                 f"swapped?)")
        self.asked.append(pairs)
        return self.scores[pairs[:, 0], pairs[:, 1]].clone()  # (P,)


def _rerank_inputs(g: torch.Generator, n: int, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarities (N, M) in [-1, 1], their top-k texts (N, k), and fusion scores (N, M) (log-odds, some far
    below -1) that reorder the top k: each row's best by dual score is its worst by fusion score."""
    a = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(m, 4, generator=g), dim=1)
    dual = a @ b.t()  # (N, M)
    top = dual.topk(min(k, m), dim=1).indices  # (N, k)
    fusion = torch.randn(n, m, generator=g) * 2
    rows = torch.arange(n)
    fusion[rows, top[:, 0]] = -3.0 - torch.rand(n, generator=g)  # the dual's favourite, the fusion's worst
    if top.shape[1] >= 3:  # row 0: fusion puts its second above its third, so no wrong order mimics another
        s, t = fusion[0, top[0, 1]].clone(), fusion[0, top[0, 2]].clone()
        fusion[0, top[0, 1]], fusion[0, top[0, 2]] = torch.maximum(s, t) + 0.5, torch.minimum(s, t)
    return dual, top, fusion


def _pair_set(pairs: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs.tolist()}


def _check_asked(oracle: _FusionOracle, top: torch.Tensor, dual: torch.Tensor, k: int) -> None:
    n, m = dual.shape
    asked = torch.cat(oracle.asked) if oracle.asked else torch.zeros(0, 2, dtype=torch.long)
    want = _pair_set(torch.stack([torch.arange(n).repeat_interleave(top.shape[1]), top.flatten()], dim=1))
    if not len(asked):
        raise GradingFailure("the fusion scores are ignored: fusion_score_fn was never called; ask it for the "
                             "fusion score of each row's top k pairs and order those k by it")
    got = _pair_set(asked)
    if len(asked) >= n * m and got == {(i, j) for i in range(n) for j in range(m)} and k < m:
        raise GradingFailure(f"fusion_score_fn scored all N·M = {n * m} pairs: that is the fusion mode, not "
                             f"re-ranking; score only each row's top k by dual score (N·k = {n * k} pairs) — that "
                             f"saving is the point of re-ranking")
    by_column = dual.topk(k, dim=0).indices if k <= n else None  # (k, M): the k best images of each text
    if by_column is not None and got == _pair_set(
            torch.stack([by_column.flatten(), torch.arange(m).repeat(k)], dim=1)) and got != want:
        raise GradingFailure("top k taken along the wrong axis (dim 0: the k best images of each text): each row is "
                             "an image (a query) and its candidates are the texts in its row, dual_scores.topk(k, "
                             "dim=1)")
    if len(asked) > len(got):
        raise GradingFailure(f"fusion_score_fn was asked about {len(asked)} pairs, only {len(got)} of them different: "
                             f"score each pair once (every fusion score costs a Transformer pass)")
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        example = f"it scored {extra[0]}, not among row {extra[0][0]}'s top {k}" if extra else \
            f"it never scored {missing[0]}, one of row {missing[0][0]}'s top {k}"
        raise GradingFailure(f"fusion_score_fn must score exactly each row's top {k} pairs by dual score (N·k = "
                             f"{len(want)} pairs, (image i, text j)); got {len(got)} pairs: {example}")


def _check_order(got: torch.Tensor, dual: torch.Tensor, top: torch.Tensor, fusion: torch.Tensor) -> None:
    n, m = dual.shape
    k = top.shape[1]
    ignored, ascending = True, True
    first_wrong = None
    for i in range(n):
        inside = top[i]
        outside = torch.tensor([j for j in range(m) if j not in set(inside.tolist())], dtype=torch.long)
        g = got[i].detach().cpu().double()
        if len(outside) and float(g[inside].min()) <= float(g[outside].max()):
            below = int(inside[g[inside].argmin()])
            above = int(outside[g[outside].argmax()])
            raise GradingFailure(f"the re-ranked k are not placed above all others: in row {i}, text {above} (not in "
                                 f"the row's top {k} by dual score) scores {float(g[above]):.3g}, above or level with "
                                 f"re-ranked text {below} ({float(g[below]):.3g}); a fusion score (a log-odds) is "
                                 f"not on the scale of a cosine similarity, so shift the re-ranked scores above every "
                                 f"dual score (e.g. + dual_scores.max() − fused.min() + 1)")
        want_in = inside[fusion[i, inside].argsort(descending=True)]
        order_in = inside[g[inside].argsort(descending=True, stable=True)]
        ties_in = len(set(g[inside].tolist())) < k
        ignored &= torch.equal(order_in, inside) and not ties_in
        ascending &= torch.equal(order_in, want_in.flip(0)) and not ties_in
        if first_wrong is None and (ties_in or not torch.equal(order_in, want_in)):
            first_wrong = (i, order_in, want_in)
        if len(outside):
            rest = outside[dual[i, outside].argsort(descending=True)]  # the others, in their dual order
            values = g[rest]
            if len(rest) > 1 and not bool((values[:-1] > values[1:]).all()):
                tied = len(set(values.tolist())) < len(values)
                raise GradingFailure(f"the texts outside the top k lost their dual order (row {i}"
                                     f"{': several score the same' if tied else ''}): keep their dual scores, so "
                                     f"that they follow the re-ranked k in the dual encoder's order")
    if first_wrong is not None:
        if ignored:
            raise GradingFailure("the fusion scores are ignored: the top k keep their dual order; order them by the "
                                 "scores fusion_score_fn returns, highest first")
        if ascending:
            raise GradingFailure("the re-ranked k are in ascending order of fusion score: the highest fusion score "
                                 "(the most likely match) must rank first")
        i, order_in, want_in = first_wrong
        raise GradingFailure(f"row {i}: the re-ranked texts rank {order_in.tolist()}, but by fusion score (highest "
                             f"first) they are {want_in.tolist()}; did each fusion score go back to its own (image, "
                             f"text) position?")


def _rerank_case(fn, g: torch.Generator, n: int, m: int, k: int) -> None:
    dual, top, fusion = _rerank_inputs(g, n, m, k)
    oracle = _FusionOracle(fusion)
    given = dual.clone()
    got = call(fn, given, oracle, k)
    if not torch.equal(given, dual):
        raise GradingFailure("dual_scores was modified in place: work on a copy (e.g. dual_scores.scatter(...), not "
                             "scatter_), the caller may still need the dual scores")
    _check_asked(oracle, top, dual, min(k, m))
    got = tensor_answer("the scores", got)
    if tuple(got.shape) != (n, m):
        raise GradingFailure(f"rerank must return scores for every (image, text) pair, shape (N, M) = {(n, m)}, got "
                             f"{tuple(got.shape)}")
    if not got.is_floating_point():
        raise GradingFailure(f"rerank returns scores (floats), got {got.dtype}")
    _check_order(got, dual, top, fusion)


@register("05.rerank", title="Re-rank the dual top k of each row by fusion scores")
def check_rerank(fn) -> None:
    g = fresh_generator()
    # k below both N and M, so that a wrong axis or scoring every pair shows; twice, on fresh inputs
    for _ in range(2):
        _rerank_case(fn, g, randint(g, 5, 8), randint(g, 9, 14), randint(g, 3, 4))
    # more than M asked for: every text of a row is re-ranked
    n, m = randint(g, 3, 6), randint(g, 3, 5)
    k = m + randint(g, 1, 5)
    try:
        _rerank_case(fn, g, n, m, k)
    except GradingFailure as exc:
        raise GradingFailure(f"with k = {k} larger than the M = {m} texts: {exc}; cap k at the number of texts, "
                             f"min(k, M)") from None
