"""Caption metrics (minivlm.eval.bleu, cider_d): hand-checked values, bad input, and equality with
the COCO caption evaluation's own scorers (pycocoevalcap, test-only) on random corpora."""
import math
import random

import pytest

from minivlm.eval import bleu, caption_tokens, cider_d

WORDS = "a red blue green circle square star left of right the big small two three shapes and".split()


def test_tokens_are_lower_case_words_without_punctuation():
    assert caption_tokens("A red circle, left of a Star.") == ["a", "red", "circle", "left", "of", "a", "star"]


def test_a_candidate_equal_to_its_reference_scores_bleu_one():
    caps = ["a red circle left of a blue star", "two small green squares"]
    assert bleu(caps, [[c] for c in caps]) == pytest.approx(1.0, abs=1e-9)


def test_bleu_by_hand_with_the_brevity_penalty():
    # candidate "a red circle" vs reference "a red circle left of a star": every n-gram matches,
    # the candidate is 3 words against 7, so BLEU = exp(1 - 7/3)
    assert bleu(["a red circle"], [["a red circle left of a star"]], n=3) == pytest.approx(math.exp(1 - 7 / 3), rel=1e-6)
    # clipping: "the the the" against "the cat": 1 of 3 unigrams counts
    assert bleu(["the the the"], [["the cat"]], n=1) == pytest.approx(1 / 3, rel=1e-6)


def test_cider_rewards_the_right_caption_and_not_a_wrong_one():
    refs = [["a red circle", "a red round shape"], ["two blue squares", "a pair of blue squares"],
            ["a green star left of a white cross"]]
    right, per_item = cider_d(["a red circle", "two blue squares", "a green star left of a white cross"], refs)
    wrong, _ = cider_d(["two blue squares", "a green star left of a white cross", "a red circle"], refs)
    assert right > 2.0 > 0.5 > wrong >= 0 and len(per_item) == 3 and right == pytest.approx(sum(per_item) / 3)


@pytest.mark.parametrize("call, error, match", [
    (lambda: bleu("a red circle", [["a"]]), TypeError, "candidates must be a non-empty list of strings"),
    (lambda: bleu([], []), TypeError, "candidates must be a non-empty list"),
    (lambda: bleu(["a"], [["a"], ["b"]]), ValueError, "1 candidates, references 2"),
    (lambda: cider_d(["a"], ["a"]), ValueError, r"references\[0\] must be a non-empty list of strings"),
    (lambda: cider_d(["a"], [[]]), ValueError, r"references\[0\] must be a non-empty list"),
    (lambda: bleu([3], [["a"]]), TypeError, "captions must be str, got int"),
    (lambda: bleu(["a"], [["a"]], n=0), ValueError, "n must be"),
    (lambda: cider_d(["a"], [["a"]], sigma=0), ValueError, "sigma"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("seed", range(6))
def test_equal_to_the_coco_caption_scorers(seed):
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(seed)

    def sentence():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))

    n = rng.randint(2, 40)
    candidates = [sentence() for _ in range(n)]
    references = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(n)]
    references[0].append(candidates[0])  # at least one good match
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}
    theirs_bleu, _ = bleu_module.Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(1, 5):
        assert bleu(candidates, references, n=k) == pytest.approx(theirs_bleu[k - 1], rel=1e-9, abs=1e-12)
    theirs, theirs_each = cider_module.Cider().compute_score(gts, res)
    ours, ours_each = cider_d(candidates, references)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert ours_each == pytest.approx(list(theirs_each), rel=1e-9, abs=1e-12)
