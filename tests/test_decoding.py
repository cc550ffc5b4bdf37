"""minivlm.generate: greedy, beam search, sampling, stopping, filters, bad input."""
import itertools
import math

import pytest
import torch

from minivlm.generate import generate, strip_generated, top_k_filter, top_p_filter

EOS = 0


def table_model(table):
    """next_logits from a dict: prefix tuple (after the prompt token) -> log-probabilities."""
    def next_logits(ids, rows):
        return torch.stack([torch.tensor(table[tuple(r[1:])], dtype=torch.float) for r in ids.tolist()])
    return next_logits


# vocab: 0 = eos, 1, 2. Greedy takes 1 (p .6) then is unsure; 2 (p .4) leads to a sure ending.
LOG = math.log
TRAP = {
    (): [LOG(1e-6), LOG(0.6), LOG(0.4 - 1e-6)],
    (1,): [LOG(0.34), LOG(0.33), LOG(0.33)],
    (2,): [LOG(0.999), LOG(0.0005), LOG(0.0005)],
}
for a, b in itertools.product((1, 2), repeat=2):
    TRAP[(a, b)] = [0.0, -30.0, -30.0]


def seq_logp(seq):
    total, prefix = 0.0, ()
    for tok in seq:
        total += torch.tensor(TRAP[prefix]).log_softmax(0)[tok].item()
        if tok == EOS:
            break
        prefix += (tok,)
    return total


def test_beam_search_finds_the_sequence_greedy_misses():
    prompt = torch.tensor([[5]])
    greedy = generate(table_model(TRAP), prompt, 3, EOS)
    beam = generate(table_model(TRAP), prompt, 3, EOS, num_beams=2, length_penalty=0.0)
    assert greedy[0, 1].item() == 1
    # brute force: the best finished sequence of up to 3 tokens by total log-probability
    candidates = [s for n in (1, 2, 3) for s in itertools.product((0, 1, 2), repeat=n) if s[-1] == EOS
                  and EOS not in s[:-1]]
    best = max(candidates, key=seq_logp)
    assert best == (2, 0)
    assert strip_generated(beam, 1, EOS)[0] == [2]
    assert seq_logp(best) > seq_logp(tuple(greedy[0, 1:].tolist()))


def random_model(vocab=7, seed=0):
    weights = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

    def next_logits(ids, rows):
        return weights[ids[:, -1]] + 0.1 * ids.shape[1]  # depends on the last token
    return next_logits


def test_one_beam_is_greedy_and_greedy_is_argmax():
    model, prompt = random_model(), torch.tensor([[1], [2], [3], [4]])
    greedy = generate(model, prompt, 6, EOS, pad_id=6)
    assert torch.equal(greedy, generate(model, prompt, 6, EOS, pad_id=6, num_beams=1))
    ids, done = prompt, torch.zeros(4, dtype=torch.bool)
    for _ in range(6):
        tok = model(ids, torch.arange(4)).argmax(-1)
        tok = torch.where(done, torch.full_like(tok, 6), tok)
        ids = torch.cat([ids, tok[:, None]], 1)
        done |= tok == EOS
        if done.all():
            break
    assert torch.equal(greedy, ids)


def test_stops_at_end_of_text_and_pads_finished_rows():
    calls = []

    def model(ids, rows):
        calls.append(ids.shape[1])
        logits = torch.full((len(ids), 4), -5.0)
        step = ids.shape[1] - 1
        for i, r in enumerate(rows.tolist()):
            logits[i, EOS if step >= r + 1 else 3] = 5.0  # row r ends after r + 1 words
        return logits

    prompt = torch.tensor([[2], [2], [2]])
    out = generate(model, prompt, 10, EOS, pad_id=1)
    assert torch.equal(out[:, :1], prompt)
    assert out.tolist() == [[2, 3, 0, 1, 1], [2, 3, 3, 0, 1], [2, 3, 3, 3, 0]]
    assert len(calls) == 4  # stopped as soon as every row had ended
    assert generate(model, prompt, 10, EOS)[0, 3].item() == EOS  # pad_id defaults to eos_id
    assert generate(model, prompt, 2, EOS, pad_id=1).shape == (3, 3)  # never more than max_new_tokens
    assert strip_generated(out, 1, EOS) == [[3], [3, 3], [3, 3, 3]]


def test_rows_tell_the_model_which_example_a_prefix_continues():
    seen = []

    def model(ids, rows):
        seen.append(rows.clone())
        logits = torch.full((len(ids), 5), -4.0)
        logits[torch.arange(len(ids)), rows + 1] = 4.0  # example i prefers token i + 1
        if ids.shape[1] > 2:
            logits[:, EOS] = 10.0
        return logits

    prompt = torch.tensor([[4], [4], [4]])
    assert torch.equal(seen.clear() or generate(model, prompt, 4, EOS)[:, 1], torch.tensor([1, 2, 3]))
    assert torch.equal(seen[0], torch.arange(3))
    seen.clear()
    beam = generate(model, prompt, 4, EOS, num_beams=2)
    assert torch.equal(seen[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert beam[:, 1].tolist() == [1, 2, 3] and beam[:, 2].tolist() == [1, 2, 3]


def test_sampling_is_reproducible_and_follows_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])

    def model(ids, rows):
        return logits.expand(len(ids), -1)

    prompt = torch.zeros(4000, 1, dtype=torch.long)
    # eos: token 3, the least likely (an eos outside the 5 logits would be an error)
    for temperature in (1.0, 0.5):
        draws = generate(model, prompt, 1, 3, do_sample=True, temperature=temperature,
                         generator=torch.Generator().manual_seed(0))[:, 1]
        freq = torch.bincount(draws, minlength=5).float() / len(draws)
        assert torch.allclose(freq, (logits / temperature).softmax(0), atol=0.03)
    a = generate(model, prompt[:50], 3, 3, do_sample=True, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt[:50], 3, 3, do_sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    top1 = generate(model, prompt[:50], 3, 3, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(top1, generate(model, prompt[:50], 3, 3))
    top2 = generate(model, prompt, 1, 3, do_sample=True, top_k=2, generator=torch.Generator().manual_seed(3))
    assert set(top2[:, 1].tolist()) == {0, 1}
    nucleus = generate(model, prompt, 1, 3, do_sample=True, top_p=0.6, generator=torch.Generator().manual_seed(4))
    assert set(nucleus[:, 1].tolist()) == {0, 1}  # p(0) = .52 < .6: the token that crosses .6 is kept


def test_top_p_keeps_the_token_that_crosses_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # unsorted on purpose
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.85) == [False, True, True, True]
    assert kept(0.97) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    batch = torch.stack([logits[0], logits[0].flip(0)])
    assert torch.isfinite(top_p_filter(batch, 0.7)).tolist() == [[False, True, False, True],
                                                                   [True, False, True, False]]
    kept_values = top_p_filter(logits, 0.7)
    assert torch.equal(kept_values[torch.isfinite(kept_values)], logits[torch.isfinite(kept_values)])


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.0, 0.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, False, True, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 9), logits)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_beams=0), "num_beams"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(do_sample=True, num_beams=2), "num_beams=1"),
])
def test_bad_settings_are_named(kwargs, match):
    args = dict(max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(random_model(), torch.tensor([[1]]), eos_id=EOS, **{k: v for k, v in args.items()})


def test_bad_prompt_and_bad_model_output_are_named():
    with pytest.raises(ValueError, match="prompt"):
        generate(random_model(), torch.tensor([[1.0]]), 3, EOS)
    with pytest.raises(ValueError, match="prompt"):
        generate(random_model(), torch.tensor([1, 2]), 3, EOS)
    with pytest.raises(ValueError, match=r"next_logits\(ids, rows\) must return"):
        generate(lambda ids, rows: torch.zeros(len(ids) + 1, 4), torch.tensor([[1]]), 3, EOS)
