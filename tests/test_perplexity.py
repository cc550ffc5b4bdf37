"""Perplexity (chapter 09): exp of the mean negative log-probability per token over all tokens of
all documents, with a bootstrap interval over documents; and `world_perplexity` of a GPT."""
import math

import numpy as np
import pytest
import torch

from minivlm.data.worldtext import WorldText
from minivlm.eval import perplexity
from minivlm.models.gpt import GPT, GPTConfig, world_perplexity


def random_logprobs(rng, n_docs, lo=3, hi=40, vocab=50):
    """Per-document log-probabilities of random tokens under random softmax distributions."""
    docs = []
    for _ in range(n_docs):
        t = int(rng.integers(lo, hi))
        logits = torch.from_numpy(rng.normal(0, 2, (t, vocab)))
        tokens = torch.from_numpy(rng.integers(0, vocab, t))
        docs.append(logits.log_softmax(-1)[torch.arange(t), tokens])
    return docs


@pytest.mark.parametrize("seed", range(4))
def test_perplexity_by_hand_over_all_tokens(seed):
    docs = random_logprobs(np.random.default_rng(seed), 12)
    total = sum(float(d.sum()) for d in docs)
    count = sum(len(d) for d in docs)
    est = perplexity(docs)
    assert est.value == pytest.approx(math.exp(-total / count), rel=1e-12)
    assert est.n == len(docs)
    # lists and numpy arrays give the same
    assert perplexity([d.tolist() for d in docs]).value == pytest.approx(est.value, rel=1e-12)
    assert perplexity([d.numpy() for d in docs]).value == pytest.approx(est.value, rel=1e-12)


@pytest.mark.parametrize("vocab", [2, 7, 603])
def test_a_uniform_model_has_perplexity_v(vocab):
    rng = np.random.default_rng(vocab)
    docs = [torch.full((int(rng.integers(1, 30)),), -math.log(vocab), dtype=torch.float64) for _ in range(9)]
    est = perplexity(docs)
    assert est.value == pytest.approx(vocab, rel=1e-9)
    assert est.low == pytest.approx(vocab, rel=1e-9) and est.high == pytest.approx(vocab, rel=1e-9)


def test_a_certain_model_has_perplexity_one():
    assert perplexity([[0.0, 0.0], [0.0]]).value == 1.0
    assert perplexity([[-1e-9, 0.0]]).value == pytest.approx(1.0)  # rounding above 0 is no error


def test_tokens_weigh_not_documents():
    short, long = [-1.0], [-3.0] * 9  # one token at perplexity e, nine at e^3
    est = perplexity([short, long])
    assert est.value == pytest.approx(math.exp((1 + 27) / 10))
    assert est.value != pytest.approx((math.e + math.e ** 3) / 2)  # mean of per-document perplexities
    assert est.value != pytest.approx(math.exp((1 + 3) / 2))  # mean of per-document mean log-probs
    # order does not matter; splitting a document in two does not either
    assert perplexity([long, short]).value == pytest.approx(est.value)
    assert perplexity([short, long[:4], long[4:]]).value == pytest.approx(est.value)


def test_interval_contains_the_value_and_narrows_with_more_documents():
    rng = np.random.default_rng(0)
    small, large = perplexity(random_logprobs(rng, 15)), perplexity(random_logprobs(rng, 600))
    for est in (small, large):
        assert est.low < est.value < est.high and est.method == "bootstrap"
    assert large.half_width < small.half_width / 3  # about sqrt(600 / 15) = 6.3 times narrower
    # both intervals estimate the same perplexity: they overlap
    assert large.low < small.high and small.low < large.high
    # the interval resamples documents: one document gives a zero-width interval
    one = perplexity(random_logprobs(rng, 1))
    assert one.low == pytest.approx(one.value) == pytest.approx(one.high)


def test_interval_is_reproducible_by_seed():
    docs = random_logprobs(np.random.default_rng(5), 30)
    assert perplexity(docs, seed=3) == perplexity(docs, seed=3)
    assert (perplexity(docs, seed=3).low, perplexity(docs, seed=3).high) != (
        perplexity(docs, seed=4).low, perplexity(docs, seed=4).high)


@pytest.mark.parametrize("bad, error, match", [
    ([[-1.0, 0.5]], ValueError, r"document 0.*<= 0"),
    ([[-1.0], [-0.5, float("nan")]], ValueError, r"document 1.*finite"),
    ([[-1.0, -math.inf]], ValueError, r"document 0.*finite"),
    ([[-1.0], []], ValueError, r"document 1.*non-empty"),
    ([np.full((2, 3), -1.0)], ValueError, r"document 0.*1-D.*\(2, 3\)"),
    ([], TypeError, "non-empty list"),
    (torch.full((2, 3), -1.0), TypeError, "Tensor"),
    (np.full((2, 3), -1.0), TypeError, "ndarray"),
    (-1.0, TypeError, "float"),
])
def test_bad_input_raises_with_a_clear_message(bad, error, match):
    with pytest.raises(error, match=match):
        perplexity(bad)


# ----------------------------------------------------------------------------- a GPT's perplexity
@pytest.fixture(scope="module")
def gpt():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(max_len=64, dim=16, depth=1, heads=2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    yield model.eval()
    torch.set_num_threads(old)


def test_world_perplexity_by_hand_and_independent_of_batching(gpt):
    docs = WorldText(seed=4).documents(7)
    tok = gpt.get_tokenizer()
    per_doc = []
    with torch.no_grad():
        for d in docs:  # one document at a time: no padding anywhere
            ids = torch.tensor([tok.encode(d, add_bos=True, add_eos=True)])
            logp = gpt(ids).log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
            per_doc.append(logp.squeeze(-1))
    total, count = sum(float(lp.sum()) for lp in per_doc), sum(len(lp) for lp in per_doc)
    est = world_perplexity(gpt, docs)
    assert est.value == pytest.approx(math.exp(-total / count), rel=1e-5)
    assert est.n == 7
    assert world_perplexity(gpt, docs, batch_size=2).value == pytest.approx(est.value, rel=1e-5)


def test_world_perplexity_refuses_a_document_longer_than_the_context(gpt):
    with pytest.raises(ValueError, match=r"72 tokens, longer than max_len=64"):  # 70 words, <bos>, <eos>
        world_perplexity(gpt, ["a red circle.", "red " * 70])
