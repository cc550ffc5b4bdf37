"""Chapter 05 checks: the library's routing (Multiway) and the reference pass counts and re-ranking
(what the solutions mirror) pass, the stub says "not implemented yet", and each plausible wrong
version fails with its own message."""
import torch
from grading_suite import grading_tests

from minivlm.grading import run
from minivlm.models.vlmo import retrieval_passes
from minivlm.nn.multiway import Multiway


def library_route(x, modality, experts):
    return Multiway(experts)(x, modality)


def reference_rerank(dual_scores, fusion_score_fn, k):
    """As minivlm.models.vlmo.retrieve's "rerank" mode does it, on given scores."""
    n, m = dual_scores.shape
    k = min(k, m)
    top = dual_scores.topk(k, dim=1).indices  # (N, k)
    pairs = torch.stack([torch.arange(n).repeat_interleave(k), top.flatten()], dim=1)  # (N·k, 2)
    fused = fusion_score_fn(pairs).view(n, k)
    return dual_scores.scatter(1, top, fused - fused.min() + 3.0)  # cosines lie in [-1, 1]: 3 is above them all


GOOD = {"05.route_to_experts": library_route, "05.retrieval_passes": retrieval_passes,
        "05.rerank": reference_rerank}


# ----------------------------------------------------------------------------- wrong versions: route_to_experts


def _routed(x, which, experts):
    """Each token through experts[which[b, t]] (gathered, scattered back); -1: left at zero."""
    out = None
    for e, expert in enumerate(experts):
        chosen = which == e
        y = expert(x[chosen])
        out = x.new_zeros(*x.shape[:2], y.shape[-1]) if out is None else out
        out[chosen] = y
    return out


def _by_position(x, modality, experts):
    b, t = modality.shape
    return _routed(x, (torch.arange(t) * len(experts) // t).expand(b, t), experts)


def _first_half(x, modality, experts):
    b, t = modality.shape
    return _routed(x, (torch.arange(t) >= t // 2).long().expand(b, t), experts)  # two halves, experts 0 and 1


def _summed(x, modality, experts):
    return sum(e(x) for e in experts)


def _dense_then_pick(x, modality, experts):
    outs = torch.stack([e(x) for e in experts])  # (E, B, T, D_out): right values, E times the compute
    return outs.gather(0, modality[None, ..., None].expand(1, *modality.shape, outs.shape[-1]))[0]


def _off_by_one(x, modality, experts):
    return _routed(x, (modality + 1) % len(experts), experts)


def _enumerate_from_one(x, modality, experts):
    out = None
    for e, expert in enumerate(experts, start=1):
        chosen = modality == e
        y = expert(x[chosen])
        out = x.new_zeros(*x.shape[:2], y.shape[-1]) if out is None else out
        out[chosen] = y
    return out


def _expert_order(x, modality, experts):
    b, t = modality.shape
    return torch.cat([e(x[modality == i]) for i, e in enumerate(experts)]).view(b, t, -1)


def _flat(x, modality, experts):
    return _routed(x, modality, experts).reshape(-1, _routed(x, modality, experts).shape[-1])


def _first_row_routes(x, modality, experts):
    return _routed(x, modality[:1].expand_as(modality), experts)


def _transposed_routes(x, modality, experts):
    flat_x, flat_m = x.reshape(-1, x.shape[-1]), modality.t().reshape(-1)  # b-major tokens, t-major routes
    out = None
    for e, expert in enumerate(experts):
        y = expert(flat_x[flat_m == e])
        out = flat_x.new_zeros(len(flat_x), y.shape[-1]) if out is None else out
        out[flat_m == e] = y
    return out.view(*x.shape[:2], -1)


def _last_expert_skipped(x, modality, experts):
    out = None
    for e in range(len(experts) - 1):
        chosen = modality == e
        y = experts[e](x[chosen])
        out = x.new_zeros(*x.shape[:2], y.shape[-1]) if out is None else out
        out[chosen] = y
    return out


def _input_width(x, modality, experts):
    return x.clone()


def _detached(x, modality, experts):
    with torch.no_grad():
        return _routed(x, modality, experts)


WRONG_ROUTE = [
    (_by_position, "routed by position, not by index"),
    (_first_half, "routed by position, not by index"),
    (_summed, "outputs summed"),
    (_dense_then_pick, "every expert ran on all"),
    (_off_by_one, "off-by-one expert index"),
    (_enumerate_from_one, "off-by-one expert index"),
    (_expert_order, "token order is lost"),
    (_flat, "the output is flat"),
    (_first_row_routes, "another sequence's indices"),
    (_transposed_routes, "another sequence's indices"),
    (_last_expert_skipped, "came out as zeros"),
    (_input_width, "the output has the input's width"),
    (_detached, "detached"),
]


# ----------------------------------------------------------------------------- wrong versions: retrieval_passes


def _passes(dual=lambda n, m, k: n + m, fusion=lambda n, m, k: n * m,
            rerank=lambda n, m, k: n + m + n * min(k, m)):
    def passes(n_images, n_texts, mode, k):
        formula = {"dual": dual, "fusion": fusion, "rerank": rerank}[mode]
        return formula(n_images, n_texts, k)
    return passes


def _no_mode_check(n, m, mode, k):
    if mode == "dual":
        return n + m
    if mode == "fusion":
        return n * m
    return n + m + n * min(k, m)


WRONG_PASSES = [
    (_passes(fusion=lambda n, m, k: n ** 2), "n_images² assumes as many texts as images"),
    (_passes(dual=lambda n, m, k: 2 * n), "2·n_images assumes as many texts as images"),
    (_passes(dual=lambda n, m, k: n * m), "that is the fusion mode's count"),
    (_passes(dual=lambda n, m, k: 1), "one pass for the whole matrix product"),
    (_passes(fusion=lambda n, m, k: n + m), "that is the dual mode's count"),
    (_passes(rerank=lambda n, m, k: n * min(k, m)), "forgets the dual passes"),
    (_passes(rerank=lambda n, m, k: n + m + n * k), "k is not capped at n_texts"),
    (_passes(rerank=lambda n, m, k: n + m + k * m), "(k · n_texts)"),
    (_passes(rerank=lambda n, m, k: n + m + n * min(k, n)), "k capped at n_images"),
    (_passes(rerank=lambda n, m, k: n + m + k), "k fusion passes in all"),
    (_passes(rerank=lambda n, m, k: n * m + n + m), "counts every pair in fusion mode"),
    (_passes(rerank=lambda n, m, k: n + m + n * min(k, m) + 1), "expected"),  # no name: shows a case
    (lambda n, m, mode, k: float(retrieval_passes(n, m, mode, k)) + 0.5, "a whole number"),
    (lambda n, m, mode, k: str(retrieval_passes(n, m, mode, k)), "must return a number"),
    (_no_mode_check, "a mode that does not exist"),
]


# ----------------------------------------------------------------------------- wrong versions: rerank


def _top_pairs(dual, k, dim=1):
    n, m = dual.shape
    top = dual.topk(k, dim=dim).indices
    if dim == 1:
        return top, torch.stack([torch.arange(n).repeat_interleave(k), top.flatten()], dim=1)
    return top, torch.stack([top.flatten(), torch.arange(m).repeat(k)], dim=1)


def _raw_scatter(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    return dual.scatter(1, top, fn(pairs).view(len(dual), k))  # log-odds among cosines: not above the rest


def _wrong_axis(dual, fn, k):
    k = min(k, dual.shape[0])
    top, pairs = _top_pairs(dual, k, dim=0)  # the k best images of each text
    fused = fn(pairs).view(k, dual.shape[1])
    return dual.scatter(0, top, fused - fused.min() + 3.0)


def _ignores_fusion(dual, fn, k):
    k = min(k, dual.shape[1])
    fn(_top_pairs(dual, k)[1])  # scored, then forgotten
    return dual.clone()


def _never_calls(dual, fn, k):
    return dual.clone()


def _all_pairs(dual, fn, k):
    n, m = dual.shape
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(m))
    return fn(pairs).view(n, m)  # the fusion mode


def _uncapped(dual, fn, k):
    top, pairs = _top_pairs(dual, k)  # topk raises for k > M
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _ascending(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter(1, top, fused.max() - fused + 3.0)


def _others_to_minus_inf(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    return torch.full_like(dual, float("-inf")).scatter(1, top, fn(pairs).view(len(dual), k))


def _pairs_transposed(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs.flip(1)).view(len(dual), k)  # (text, image): out of range
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _pairs_stacked_on_rows(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs.t()).view(len(dual), k)  # (2, P)
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _scatter_in_place(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter_(1, top, fused - fused.min() + 3.0)


def _scores_twice(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fn(pairs)
    fused = fn(pairs).view(len(dual), k)
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _fused_wrong_layout(dual, fn, k):
    k = min(k, dual.shape[1])
    top, pairs = _top_pairs(dual, k)
    fused = fn(pairs).view(k, len(dual)).t()  # the scores put back in the wrong places
    return dual.scatter(1, top, fused - fused.min() + 3.0)


def _returns_indices(dual, fn, k):
    return reference_rerank(dual, fn, k).argsort(dim=1, descending=True)


WRONG_RERANK = [
    (_raw_scatter, "not placed above all others"),
    (_wrong_axis, "wrong axis"),
    (_ignores_fusion, "fusion scores are ignored"),
    (_never_calls, "fusion scores are ignored"),
    (_all_pairs, "not re-ranking"),
    (_uncapped, "cap k at the number of texts"),
    (_ascending, "ascending order of fusion score"),
    (_others_to_minus_inf, "lost their dual order"),
    (_pairs_transposed, "out of range"),
    (_pairs_stacked_on_rows, "not dim=0"),
    (_scatter_in_place, "modified in place"),
    (_scores_twice, "score each pair once"),
    (_fused_wrong_layout, "did each fusion score go back to its own"),
    (_returns_indices, "returns scores (floats)"),
]

WRONG = {"05.route_to_experts": WRONG_ROUTE, "05.retrieval_passes": WRONG_PASSES, "05.rerank": WRONG_RERANK}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_chapter_05_has_at_least_three_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("05"))
    assert len(grading.tasks_for_chapter("05")) >= 3


def test_correct_answers_written_another_way_pass():
    """Per-token routing (slow, but each token through its own expert alone), batched fusion calls and a
    shift by the dual maximum are all correct."""

    def token_by_token(x, modality, experts):
        return torch.stack([torch.stack([experts[int(modality[b, t])](x[b, t]) for t in range(x.shape[1])])
                            for b in range(x.shape[0])])

    def batched_calls(dual, fn, k):
        n, m = dual.shape
        k = min(k, m)
        top = dual.argsort(dim=1, descending=True)[:, :k]
        fused = torch.stack([fn(torch.stack([torch.full((k,), i), top[i]], dim=1)) for i in range(n)])  # row by row
        return dual.scatter(1, top, fused + dual.max() - fused.min() + 1)

    def passes_with_dict(n_images, n_texts, mode, k=16):
        return {"dual": lambda: n_images + n_texts, "fusion": lambda: n_images * n_texts,
                "rerank": lambda: n_images + n_texts + n_images * min(k, n_texts)}[mode]()

    for task, fn in (("05.route_to_experts", token_by_token), ("05.rerank", batched_calls),
                     ("05.retrieval_passes", passes_with_dict)):
        for _ in range(3):
            result = run(task, fn)
            assert result.passed, (task, result.message)


def test_rerank_agrees_with_the_library_on_a_tiny_vlmo():
    """The reference re-rank, fed VLMo's own dual and fusion scores, ranks as `retrieve(mode="rerank")` does."""
    from minivlm.data import ShapesBench
    from minivlm.eval import itc_similarity
    from minivlm.models.vlmo import VLMo, VLMoConfig, fusion_scores, retrieve

    torch.manual_seed(0)
    model = VLMo(VLMoConfig(dim=32, depth=2, vl_depth=1, heads=2, embed_dim=32))
    data = ShapesBench(seed=5).retrieval(6)
    images, texts = data["images"], data["captions"]
    library = retrieve(model, images, texts, mode="rerank", k=3)["scores"]
    ours = reference_rerank(itc_similarity(model, images, texts), lambda p: fusion_scores(model, images, texts, p), 3)
    assert torch.equal(ours.argsort(1, descending=True), library.argsort(1, descending=True))
