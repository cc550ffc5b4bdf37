"""The tiny GPT (chapter 09): tied head, cached decoding equal to uncached, `complete`, scoring,
the training step, a frozen GPT under a trainable bridge, and fact recall.
(`GPT.from_hf` is tested against transformers in tests/models/test_gpt_hf.py.)"""
import copy

import pytest
import torch
from torch import nn

from minivlm.data import Tokenizer
from minivlm.data.worldtext import RecallItem
from minivlm.losses import lm_loss
from minivlm.models.gpt import GPT, GPTConfig, fact_recall, lm_batches, lm_step
from minivlm.train import fit
from minivlm.utils import freeze

PAD, BOS, EOS = 0, 1, 2
TOK = Tokenizer.from_world()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (see tests/models/test_vilt.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_gpt(seed=0, vocab_size=40, max_len=24, dim=16, depth=2, heads=2, scale=0.3, double=True, **kw):
    """A random GPT with every parameter moved off its init (well-separated logits, so greedy
    decoding has no near-ties), in float64 by default so cached and uncached agree to 1e-12.
    vocab_size=None: the course tokenizer's."""
    torch.manual_seed(seed)
    ids = {} if vocab_size is None else dict(pad_id=PAD, bos_id=BOS, eos_id=EOS)
    model = GPT(GPTConfig(vocab_size=vocab_size, max_len=max_len, dim=dim, depth=depth, heads=heads, **ids, **kw))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return (model.double() if double else model).eval()


def random_ids(seed, shape, vocab_size=40, low=3):
    return torch.randint(low, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def greedy_by_hand(model, prompt, n):
    """Greedy decoding without any cache: the full model on the whole prefix at every step; a row
    that emitted eos is padded."""
    ids, done = prompt, torch.zeros(len(prompt), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(n):
            token = model(ids)[:, -1].argmax(-1).masked_fill(done, model.config.pad_id)
            ids = torch.cat([ids, token[:, None]], 1)
            done |= token == model.config.eos_id
            if done.all():
                break
    return ids


def record_fed_lengths(model):
    """The number of tokens each forward call gets (forward pre-hook); returns the list."""
    fed = []
    model.register_forward_pre_hook(lambda m, args: fed.append(args[0].shape[1]))
    return fed


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("seed", range(3))
def test_head_is_tied_to_the_token_embedding(seed):
    model = tiny_gpt(seed, double=False)
    ids = random_ids(seed, (2, 7))
    with torch.no_grad():
        want = model.text(ids) @ model.token_embedding.weight.T
        torch.testing.assert_close(model(ids), want, atol=1e-5, rtol=1e-5)
    c = model.config
    tables = [k for k, v in model.state_dict().items() if v.shape == (c.vocab_size, c.dim)]
    assert tables == ["text.token_embedding.weight"]  # one copy of the matrix
    with torch.no_grad():  # changing the embedding changes the head
        model.token_embedding.weight[5].mul_(-3.0)
        assert torch.allclose(model(ids), model.text(ids) @ model.token_embedding.weight.T, atol=1e-5)
        assert not torch.allclose(model(ids), want, atol=1e-3)


def test_inputs_embeds_of_embed_equal_ids():
    model = tiny_gpt(3)
    ids = random_ids(3, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=model.embed(ids)), model(ids))
        shifted = model(inputs_embeds=model.embed(ids) + 0.1 * torch.randn(3, 9, 16, dtype=torch.float64))
    assert not torch.allclose(shifted, model(ids), atol=1e-3)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embed(ids))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match=r"\[0, 39\]"):
        model.embed(torch.tensor([[1, 40]]))


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("seed", range(3))
def test_greedy_generate_with_and_without_cache_equals_greedy_by_hand(seed):
    model = tiny_gpt(seed)
    prompt = random_ids(seed, (3, 4))
    fed = record_fed_lengths(model)
    cached = model.generate(prompt, 12, use_cache=True)
    assert fed[0] == 4 and set(fed[1:]) == {1}  # the cache is used: one new token per step
    fed.clear()
    uncached = model.generate(prompt, 12, use_cache=False)
    assert fed[:3] == [4, 5, 6]
    want = greedy_by_hand(model, prompt, 12)
    assert torch.equal(cached, want) and torch.equal(uncached, want)
    assert torch.equal(cached[:, :4], prompt)


@pytest.mark.parametrize("seed", range(3))
def test_beam_search_with_and_without_cache_agree(seed):
    model = tiny_gpt(seed + 10)
    prompt = random_ids(seed, (2, 3))
    fed = record_fed_lengths(model)
    cached = model.generate(prompt, 10, num_beams=3, use_cache=True)
    assert fed[0] == 3 and set(fed[1:]) == {1}  # rows reordered by the beams are picked out of the cache
    uncached = model.generate(prompt, 10, num_beams=3, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] > 3 and torch.equal(cached[:, :3], prompt)


@pytest.mark.parametrize("seed", range(3))
def test_seeded_sampling_with_and_without_cache_agree(seed):
    model = tiny_gpt(seed + 20)
    prompt = random_ids(seed, (4, 2))
    runs = [model.generate(prompt, 12, use_cache=c, do_sample=True, generator=torch.Generator().manual_seed(seed),
                           top_k=10, temperature=1.5) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    other = model.generate(prompt, 12, do_sample=True, generator=torch.Generator().manual_seed(seed + 100),
                           top_k=10, temperature=1.5)
    assert not torch.equal(runs[0], other)  # the seed decides the draw


def test_next_logits_fn_follows_grown_reordered_and_new_rows():
    model = tiny_gpt(4)
    fn = model.next_logits_fn(use_cache=True)
    a, b, c = random_ids(1, (2, 5)), random_ids(2, (2, 7)), random_ids(4, (2, 8))
    with torch.no_grad():
        for ids in (a[:, :3], a[:, :4], a,  # grown
                    torch.cat([a[[1, 0, 0]], random_ids(3, (3, 1))], 1),  # reordered, repeated, grown
                    b,  # a new, longer prompt with fewer rows: not a continuation of the cache
                    c,  # as many rows, longer, other tokens: not a continuation either
                    c[:, :2]):  # shorter: starts over
            torch.testing.assert_close(fn(ids, torch.arange(len(ids))), model(ids)[:, -1])


def test_generate_bad_lengths():
    model = tiny_gpt(0)
    with pytest.raises(ValueError, match=r"20 tokens.*max_new_tokens=5.*25.*max_len=24"):
        model.generate(random_ids(0, (1, 20)), 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(random_ids(0, (1, 3)), -1)
    prompt = random_ids(0, (2, 24))
    assert torch.equal(model.generate(prompt, 0), prompt)
    assert model.generate(random_ids(0, (1, 4)), 20).shape[1] <= 24


# ----------------------------------------------------------------------------- complete
@pytest.fixture(scope="module")
def course_gpt():
    return tiny_gpt(7, vocab_size=None, max_len=32, dim=16, depth=2, scale=0.5)


def test_complete_decodes_one_left_padded_batch_equal_to_each_prompt_alone(course_gpt, monkeypatch):
    prompts = ["a red", "the", "a blue", "", "what is", "two shapes: a", "grass"]
    calls = []
    generate = course_gpt.generate

    def recording(prompt, *args, **kwargs):
        calls.append((prompt.tolist(), kwargs["attention_mask"].tolist()))
        return generate(prompt, *args, **kwargs)

    monkeypatch.setattr(course_gpt, "generate", recording)
    together = course_gpt.complete(prompts, max_new_tokens=6)
    lengths = [len(TOK.encode(p)) + 1 for p in prompts]
    (ids, mask), = calls  # one batch, as long as the longest prompt, padded on the left
    assert [sum(m) for m in mask] == lengths and all(len(row) == max(lengths) for row in ids)
    for row, m, n in zip(ids, mask, lengths):
        assert m == [False] * (max(lengths) - n) + [True] * n and row[-n] == BOS
        assert row[:-n] == [course_gpt.config.pad_id] * (max(lengths) - n)
    alone = [course_gpt.complete([p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone
    assert len(set(together)) > 2  # a random model says different things after different prompts


def scripted(words, vocab_size=len(TOK)):
    """A next_logits_fn factory whose model says `words` (tokens, "<eos>" allowed) after any prompt."""
    script = [TOK.id(w) for w in words]

    def factory(use_cache=True, embed=None, attention_mask=None, hooks=None):
        state = {}

        def next_logits(ids, rows):
            k = ids.shape[1] - state.setdefault("start", ids.shape[1])
            logits = torch.zeros(ids.shape[0], vocab_size)
            logits[:, script[min(k, len(script) - 1)]] = 10.0
            return logits
        return next_logits
    return factory


@pytest.mark.parametrize("words, stop, n, want", [
    (["red", "and", "blue", ".", "green"], ".", 8, "red and blue"),
    (["red", "<eos>", ".", "blue"], ".", 8, "red"),
    (["red", ".", "green", "<eos>", "blue"], None, 8, "red. green"),
    (["red", "and", "blue", "and"], ".", 2, "red and"),
    (["what", "?", "yes", "."], "?", 8, "what"),
])
def test_complete_stops_at_stop_and_at_eos(course_gpt, monkeypatch, words, stop, n, want):
    monkeypatch.setattr(course_gpt, "next_logits_fn", scripted(words))
    assert course_gpt.complete(["a prompt", "a longer prompt here"], max_new_tokens=n, stop=stop) == [want, want]


def test_complete_cuts_at_eos_even_when_the_tokenizer_decodes_it(course_gpt, monkeypatch):
    class KeepSpecials:  # like GPT-2's tokenizer, whose decode writes "<|endoftext|>" out
        encode = staticmethod(TOK.encode)

        @staticmethod
        def decode(ids):
            return TOK.decode(ids, skip_special=False)

    monkeypatch.setattr(course_gpt, "next_logits_fn", scripted(["red", "blue", "<eos>", "green"]))
    got = course_gpt.complete(["a", "a red"], max_new_tokens=6, stop=None, tokenizer=KeepSpecials())
    assert got == ["red blue", "red blue"]


def test_complete_empty_prompt_generates_from_bos(course_gpt, monkeypatch):
    calls = []
    generate = course_gpt.generate
    monkeypatch.setattr(course_gpt, "generate", lambda p, *a, **k: calls.append(p.tolist()) or generate(p, *a, **k))
    got = course_gpt.complete([""], max_new_tokens=6)[0]
    assert calls == [[[TOK.bos_id]]]
    row = generate(torch.tensor([[TOK.bos_id]]), 6)[0, 1:].tolist()
    ends = [row.index(t) for t in (TOK.eos_id, TOK.id(".")) if t in row]
    assert got == TOK.decode(row[:min(ends)] if ends else row).strip()


def test_complete_unknown_words_become_unk(course_gpt, monkeypatch):
    calls = []
    generate = course_gpt.generate
    monkeypatch.setattr(course_gpt, "generate", lambda p, *a, **k: calls.append(p.tolist()) or generate(p, *a, **k))
    got = course_gpt.complete(["zyzzyva qwertz red"], max_new_tokens=5)
    assert calls[0] == [[TOK.bos_id, TOK.unk_id, TOK.unk_id, TOK.id("red")]]
    assert got == course_gpt.complete(["<unk> <unk> red"], max_new_tokens=5)


def test_complete_bad_arguments(course_gpt):
    with pytest.raises(TypeError, match="wrap it in a list"):
        course_gpt.complete("a red circle")
    with pytest.raises(TypeError, match="list of strings"):
        course_gpt.complete(["a", 3])
    with pytest.raises(ValueError, match="at least one"):
        course_gpt.complete([])
    long = " ".join(["red"] * 28)  # 29 tokens with <bos>
    with pytest.raises(ValueError, match=r"29 tokens.*max_new_tokens=4.*33.*max_len=32"):
        course_gpt.complete([long], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        course_gpt.complete(["red"], max_new_tokens=-1)
    with pytest.raises(ValueError, match="one token"):
        course_gpt.complete(["red"], stop="red blue")
    with pytest.raises(ValueError, match="vocab"):
        tiny_gpt(0).complete(["red"])  # a GPT of another vocabulary needs its own tokenizer


# ----------------------------------------------------------------------------- scoring and training
@pytest.mark.parametrize("seed", range(3))
def test_token_logprobs_by_hand_and_zero_on_padding(seed):
    model = tiny_gpt(seed + 30)
    ids = random_ids(seed, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    ids[~mask] = PAD
    logp, scored = model.token_logprobs(ids, mask)
    assert torch.equal(scored, mask[:, 1:])
    with torch.no_grad():
        table = model(ids).log_softmax(-1)
    for b in range(3):
        for t in range(7):
            want = table[b, t, ids[b, t + 1]] if mask[b, t + 1] else 0.0
            assert float(logp[b, t]) == pytest.approx(float(want), abs=1e-5)
    assert (logp < 0).sum() == mask[:, 1:].sum()
    all_logp, all_scored = model.token_logprobs(ids)
    assert all_scored.all() and torch.allclose(all_logp[mask[:, 1:]], logp[mask[:, 1:]])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model.token_logprobs(ids[:, :1])


def test_lm_step_equals_lm_loss_and_the_mean_negative_log_probability():
    model = tiny_gpt(40, vocab_size=None, max_len=64, double=False)
    batch = lm_batches(batch_size=6, seed=2)(0)
    loss = lm_step(model, batch)["loss"]
    ids, mask = batch["ids"], batch["attention_mask"]
    torch.testing.assert_close(loss, lm_loss(model(ids), ids, mask))
    logp, scored = model.token_logprobs(ids, mask)
    assert float(loss.detach()) == pytest.approx(float(-logp.sum() / scored.sum()), rel=1e-5)
    with pytest.raises(TypeError, match="GPT"):
        lm_step(nn.Linear(2, 2), batch)
    with pytest.raises(ValueError, match="attention_mask"):
        lm_step(model, {"ids": ids})


def test_lm_batches_are_deterministic_and_whole_documents():
    batches = lm_batches(batch_size=8, seed=3)
    b5 = batches(5)
    assert torch.equal(b5["ids"], lm_batches(batch_size=8, seed=3)(5)["ids"])
    assert not torch.equal(batches(6)["ids"][:, :5], b5["ids"][:, :5])
    assert not torch.equal(lm_batches(batch_size=8, seed=4)(5)["ids"][:, :5], b5["ids"][:, :5])
    ids, mask = b5["ids"], b5["attention_mask"]
    assert ids.shape[0] == 8 and ids.shape[1] <= 64
    assert (ids[:, 0] == TOK.bos_id).all()
    last = mask.sum(1) - 1
    assert (ids[torch.arange(8), last] == TOK.eos_id).all()  # never truncated
    assert (ids[~mask] == TOK.pad_id).all()
    with pytest.raises(ValueError, match="split"):
        lm_batches(split="test")
    with pytest.raises(ValueError, match="batch_size"):
        lm_batches(batch_size=0)


def test_fit_on_lm_batches_lowers_the_loss():
    model = tiny_gpt(50, vocab_size=None, max_len=64, dim=32, depth=1, scale=0.0, double=False)
    batches = lm_batches(batch_size=16, seed=5)
    held = lm_batches(batch_size=32, seed=99)(0)
    with torch.no_grad():
        before = float(lm_step(model, held)["loss"])
    history = fit(model, lm_step, batches, steps=40, lr=1e-2, progress=False, device="cpu")
    with torch.no_grad():
        after = float(lm_step(model, held)["loss"])
    assert before > 6.0  # about log(603) at init
    assert after < before - 1.5, (before, after)
    assert history.last(n=5) < sum(history.losses["loss"][:5]) / 5 - 1.5


def test_frozen_gpt_under_a_trainable_bridge_stays_bit_identical():
    gpt = tiny_gpt(60, double=False)
    twin = copy.deepcopy(gpt)
    freeze(gpt)
    before = {k: v.clone() for k, v in gpt.state_dict().items()}

    class Bridged(nn.Module):
        def __init__(self, lm):
            super().__init__()
            torch.manual_seed(0)
            self.bridge, self.lm = nn.Linear(8, lm.config.dim), lm

        def forward(self, x):
            return self.lm(inputs_embeds=self.bridge(x))

    model = Bridged(gpt).train()
    x, target = torch.randn(4, 6, 8), random_ids(0, (4, 6))
    bridge_before = model.bridge.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # every parameter, frozen included
    loss = lm_loss(model(x), target)
    loss.backward()
    grad = model.bridge.weight.grad.clone()
    opt.step()
    assert all(p.grad is None for p in gpt.parameters())
    for k, v in gpt.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert grad.abs().sum() > 0 and not torch.equal(model.bridge.weight, bridge_before)
    # freezing did not cut the graph: the bridge gets the same gradient through an unfrozen twin
    twin_model = Bridged(twin)
    lm_loss(twin_model(x), target).backward()
    torch.testing.assert_close(twin_model.bridge.weight.grad, grad)
    # and `fit` trains only the bridge, keeping the frozen GPT as it was
    fit(model, lambda m, b: {"loss": lm_loss(m(b[0]), b[1])}, [(x, target)], steps=3, progress=False, device="cpu")
    for k, v in gpt.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not gpt.training


# ----------------------------------------------------------------------------- fact recall
def test_fact_recall_counts_hits_per_family(course_gpt, monkeypatch):
    items = [
        RecallItem("q1", "three", "shape", "corners", "question", None),
        RecallItem("q2", "three", "shape", "sides", "question", None),
        RecallItem("q3", "circle", "shape", "corners", "cloze", None),
        RecallItem("q4", "green", "thing_color", "thing_color", "question", None),
        RecallItem("q5", "blue", "thing_color", "thing_color", "question", None),
        RecallItem("q6", "red and blue", "mixing", "mix_parts", "question", None),
    ]
    said = {"q1": "Three", "q2": "four", "q3": "the circle", "q4": "green leaf", "q5": "", "q6": "red and blue"}
    calls = []

    def complete(prompts, max_new_tokens, use_cache=True, **kw):
        calls.append((list(prompts), max_new_tokens))
        return [said[p] for p in prompts]

    monkeypatch.setattr(course_gpt, "complete", complete)
    out = fact_recall(course_gpt, items)
    assert calls == [(["q1", "q2", "q3", "q4", "q5", "q6"], 4)]  # the longest answer has 3 words, + 1
    assert out["predictions"] == [said[f"q{i}"] for i in range(1, 7)]
    assert out["hits"] == [True, False, True, False, False, True]
    assert out["accuracy"].value == pytest.approx(3 / 6) and out["accuracy"].n == 6
    fam = out["per_family"]
    assert sorted(fam) == ["mixing", "shape", "thing_color"]
    assert (fam["shape"].value, fam["shape"].n) == (pytest.approx(2 / 3), 3)
    assert (fam["thing_color"].value, fam["thing_color"].n) == (0.0, 2)
    assert (fam["mixing"].value, fam["mixing"].n) == (1.0, 1)
    assert fam["shape"].low <= 2 / 3 <= fam["shape"].high
    with pytest.raises(ValueError, match="at least one"):
        fact_recall(course_gpt, [])


def test_fact_recall_through_real_decoding(course_gpt, monkeypatch):
    """With a scripted model, `complete` and the hit count work together end to end."""
    monkeypatch.setattr(course_gpt, "next_logits_fn", scripted(["red", "and", "blue", ".", "<eos>"]))
    items = [RecallItem("what is purple made of?", "red and blue", "mixing", "mix_parts", "question", None),
             RecallItem("grass is", "green", "thing_color", "thing_color", "cloze", None)]
    out = fact_recall(course_gpt, items)
    assert out["predictions"] == ["red and blue", "red and blue"]
    assert out["hits"] == [True, False]
