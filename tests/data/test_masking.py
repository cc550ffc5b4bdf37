"""mlm_mask (chapter 03): BERT's 15 % / 80-10-10 recipe, measured over many random draws."""
import math

import pytest
import torch

from minivlm.data.masking import IGNORE_INDEX, mlm_mask
from minivlm.data.tokenizer import Tokenizer

TOK = Tokenizer.from_world()
SPECIAL_IDS = sorted(TOK.id(s) for s in TOK.specials)
WORD_IDS = [i for i in range(len(TOK)) if i not in set(SPECIAL_IDS)]


def random_batch(seed: int, b: int = 64, t: int = 32) -> torch.Tensor:
    """(b, t) ids like a padded caption batch: <bos> words <eos> <pad>..., with a few other
    special tokens (<unk>, <image>, <loc_k>, ...) sprinkled among the words."""
    g = torch.Generator().manual_seed(seed)
    words = torch.tensor(WORD_IDS)
    ids = words[torch.randint(len(words), (b, t), generator=g)]
    specials = torch.tensor(SPECIAL_IDS)
    sprinkle = torch.rand(b, t, generator=g) < 0.1
    ids[sprinkle] = specials[torch.randint(len(specials), (int(sprinkle.sum()),), generator=g)]
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0] = TOK.bos_id
        ids[row, n - 1] = TOK.eos_id
        ids[row, n:] = TOK.pad_id
    return ids


def is_special(ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(SPECIAL_IDS))


def tally(prob, mask_fraction, random_fraction, draws=12):
    """Counts over `draws` fresh batches and generators: real words, chosen, and the fate of the chosen."""
    words = chosen = masked = replaced = kept = 0
    for d in range(draws):
        ids = random_batch(100 + d)
        g = torch.Generator().manual_seed(10_000 + d)
        inputs, labels = mlm_mask(ids, TOK, prob=prob, mask_fraction=mask_fraction,
                                  random_fraction=random_fraction, generator=g)
        sel = labels != IGNORE_INDEX
        words += int((~is_special(ids)).sum())
        chosen += int(sel.sum())
        masked += int((sel & (inputs == TOK.mask_id)).sum())
        replaced += int((sel & (inputs != TOK.mask_id) & (inputs != ids)).sum())
        kept += int((sel & (inputs == ids)).sum())
    return words, chosen, masked, replaced, kept


def within_5_sigma(count: int, n: int, p: float) -> bool:
    sigma = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= 5 * sigma + 1


@pytest.mark.parametrize("prob,mask_fraction,random_fraction", [(0.15, 0.8, 0.1), (0.4, 0.5, 0.3)])
def test_chosen_fraction_and_80_10_10_split(prob, mask_fraction, random_fraction):
    words, chosen, masked, replaced, kept = tally(prob, mask_fraction, random_fraction)
    assert words > 10_000 and masked + replaced + kept == chosen
    assert within_5_sigma(chosen, words, prob), (chosen / words, prob)
    # A random replacement may draw the original word again (1 in len(WORD_IDS)): it then looks "kept".
    p_same = random_fraction / len(WORD_IDS)
    assert within_5_sigma(masked, chosen, mask_fraction), (masked / chosen, mask_fraction)
    assert within_5_sigma(replaced, chosen, random_fraction - p_same), (replaced / chosen, random_fraction)
    keep = 1 - mask_fraction - random_fraction + p_same
    assert within_5_sigma(kept, chosen, keep), (kept / chosen, keep)


def test_extreme_probabilities():
    ids = random_batch(1)
    real = ~is_special(ids)
    inputs, labels = mlm_mask(ids, TOK, prob=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(inputs, ids) and (labels == IGNORE_INDEX).all()
    # prob=1 and everything masked: every real word becomes <mask>, every special stays
    inputs, labels = mlm_mask(ids, TOK, prob=1.0, mask_fraction=1.0, random_fraction=0.0,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels != IGNORE_INDEX, real)
    assert (inputs[real] == TOK.mask_id).all() and torch.equal(inputs[~real], ids[~real])
    # prob=1 and nothing masked or replaced: inputs unchanged, every real word still a target
    inputs, labels = mlm_mask(ids, TOK, prob=1.0, mask_fraction=0.0, random_fraction=0.0,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(inputs, ids) and torch.equal(labels[real], ids[real])


def test_specials_and_padding_are_never_chosen_and_labels_are_the_originals():
    for d in range(5):
        ids = random_batch(200 + d)
        before = ids.clone()
        inputs, labels = mlm_mask(ids, TOK, prob=0.5, generator=torch.Generator().manual_seed(d))
        assert torch.equal(ids, before)  # the input is not modified in place
        special = is_special(ids)
        chosen = labels != IGNORE_INDEX
        assert not (chosen & special).any()
        assert not (chosen & (ids == TOK.pad_id)).any()
        assert torch.equal(labels[chosen], ids[chosen])
        assert (labels[~chosen] == IGNORE_INDEX).all()
        # only chosen positions change; specials and padding come through untouched
        assert torch.equal(inputs[~chosen], ids[~chosen])
        assert inputs.dtype == ids.dtype and labels.dtype == ids.dtype


def test_random_replacements_are_ordinary_words_spread_over_the_vocabulary():
    seen = set()
    for d in range(4):
        ids = random_batch(300 + d)
        inputs, labels = mlm_mask(ids, TOK, prob=1.0, mask_fraction=0.0, random_fraction=1.0,
                                  generator=torch.Generator().manual_seed(d))
        chosen = labels != IGNORE_INDEX
        replacement = inputs[chosen]
        assert not is_special(replacement).any()  # never <mask>, <pad>, <bos> ... as a "random word"
        # mostly a different word (1 in len(WORD_IDS) draws the original again)
        assert (replacement != ids[chosen]).float().mean() > 0.98
        seen.update(replacement.tolist())
    assert len(seen) > 0.9 * len(WORD_IDS)  # drawn from the whole word list, not a few ids


def test_same_seed_same_output_and_different_seed_differs():
    ids = random_batch(7)
    a = mlm_mask(ids, TOK, generator=torch.Generator().manual_seed(42))
    b = mlm_mask(ids, TOK, generator=torch.Generator().manual_seed(42))
    c = mlm_mask(ids, TOK, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    torch.manual_seed(5)
    d = mlm_mask(ids, TOK)  # no generator: torch's global generator
    torch.manual_seed(5)
    e = mlm_mask(ids, TOK)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prob=-0.1), r"prob.*\[0, 1\].*-0\.1"),
        (dict(prob=1.5), r"prob.*\[0, 1\].*1\.5"),
        (dict(mask_fraction=1.2, random_fraction=0.0), r"mask_fraction.*1\.2"),
        (dict(random_fraction=-0.5), r"random_fraction.*-0\.5"),
        (dict(mask_fraction=0.9, random_fraction=0.2), r"<= 1.*0\.9.*0\.2"),
        (dict(prob=True), r"prob"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlm_mask(random_batch(0, 2, 8), TOK, **kwargs)


def test_bad_ids_raise():
    v = len(TOK)
    with pytest.raises(ValueError, match=rf"\[0, {v - 1}\].*{v}\]"):
        mlm_mask(torch.tensor([[1, 200, v, 2]]), TOK)
    with pytest.raises(ValueError, match=r"\[0, .*-1"):
        mlm_mask(torch.tensor([[1, -1, 200, 2]]), TOK)
    with pytest.raises(ValueError, match="integer"):
        mlm_mask(random_batch(0, 2, 8).float(), TOK)
    with pytest.raises(ValueError, match="2 dims"):
        mlm_mask(random_batch(0, 2, 8)[0], TOK)
    with pytest.raises(TypeError):
        mlm_mask([[1, 200, 2]], TOK)
