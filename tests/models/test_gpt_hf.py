"""Our GPT against Hugging Face transformers' GPT2LMHeadModel (an independent implementation).

A tiny randomly initialised GPT-2 is built from a config (nothing is downloaded), its weights
are copied with `GPT.from_hf`, and both must give the same logits, the same greedy
continuations (with and without either KV cache, with rows stopping at eos while others go on),
and our beam search must not depend on the cache. A deliberately wrong mapping must be caught.
"""
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minivlm.models.gpt import GPT  # noqa: E402

VOCAB, CONTEXT, BOS, EOS = 101, 32, 1, 2
NEW = 20  # new tokens per generation test: 5-token prompts + 20 fit the 32-token context


def hf_gpt2(activation="gelu_new", n_inner=None, seed=0, head=True):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                                  n_inner=n_inner, activation_function=activation, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=BOS, eos_token_id=EOS)
    model = (transformers.GPT2LMHeadModel if head else transformers.GPT2Model)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0) and biases to 0: make every parameter
        for p in model.parameters():  # random, so that a swapped, untransposed or missing copy shows
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def random_ids(b, t, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def greedy_by_hand(model, prompt, steps):
    """The argmax continuation, one full forward per token: the reference both generators must give."""
    ids = prompt
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def hf_greedy(hf, prompt, eos, pad, use_cache):
    """transformers' greedy search with every default that could differ from ours set explicitly."""
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW, min_new_tokens=0,
                       do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                       use_cache=use_cache, eos_token_id=eos, pad_token_id=pad)


# ----------------------------------------------------------------------------- logits
@pytest.mark.parametrize("activation,n_inner", [("gelu_new", None), ("gelu_new", 48), ("relu", 80)])
def test_logits_match_transformers(activation, n_inner):
    hf = hf_gpt2(activation, n_inner)
    ours = GPT.from_hf(hf)
    c = ours.config
    assert (c.vocab_size, c.max_len, c.dim, c.depth, c.heads) == (VOCAB, CONTEXT, 32, 2, 4)
    assert c.dim * c.mlp_ratio == (n_inner or 4 * 32) and (c.bos_id, c.eos_id, c.pad_id) == (BOS, EOS, EOS)
    assert c.act == {"gelu_new": "gelu_tanh", "relu": "relu"}[activation]
    for b, t in ((1, 1), (3, 7), (2, CONTEXT)):  # one token, a few, the full context
        ids = random_ids(b, t, seed=t)
        with torch.no_grad():
            want, got = hf(ids).logits, ours(ids)
        assert want.abs().max() > 1.0  # values large enough that a wrong mapping could not hide
        assert (got - want).abs().max() < 1e-5, (b, t)


def test_from_gpt2model_without_head_matches_its_hidden_states():
    hf = hf_gpt2(head=False)  # GPT2Model: from_hf reads it directly (no .transformer)
    ours = GPT.from_hf(hf)
    ids = random_ids(2, 9)
    with torch.no_grad():
        want, got = hf(ids).last_hidden_state, ours.text(ids)  # both after the final LayerNorm
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("mistake", ["swap q and k", "untransposed out_proj", "swap norm1 and norm2"])
def test_a_wrong_mapping_changes_the_logits(mistake):
    """The tolerance above has teeth: each mapping error a port could make moves the logits by
    far more than 1e-3 on these weights."""
    hf = hf_gpt2()
    ours = GPT.from_hf(hf)
    block = ours.text.transformer.blocks[1]
    with torch.no_grad():
        if mistake == "swap q and k":
            for name in ("weight", "bias"):
                q, k = getattr(block.attn.q_proj, name), getattr(block.attn.k_proj, name)
                q_old = q.clone()
                q.copy_(k)
                k.copy_(q_old)
        elif mistake == "untransposed out_proj":
            block.attn.out_proj.weight.copy_(block.attn.out_proj.weight.t().clone())
        else:
            for name in ("weight", "bias"):
                a, b = getattr(block.norm1, name), getattr(block.norm2, name)
                a_old = a.clone()
                a.copy_(b)
                b.copy_(a_old)
        ids = random_ids(3, 12)
        assert (ours(ids) - hf(ids).logits).abs().max() > 1e-3


def test_from_hf_rejects_other_models():
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    with pytest.raises(TypeError, match="GPT-2 model, got model_type='bert'"):
        GPT.from_hf(bert)
    with pytest.raises(TypeError, match="model_type=None"):
        GPT.from_hf(types.SimpleNamespace(config=types.SimpleNamespace()))


# ----------------------------------------------------------------------------- decoding
@pytest.fixture(scope="module")
def generation_setup():
    """A model, 5-token prompts, the by-hand greedy continuation, and two eos ids: one the greedy
    run never emits, one that row 0 emits part-way (while another row goes on past it)."""
    hf = hf_gpt2(seed=3)
    ours = GPT.from_hf(hf)
    prompt = random_ids(4, 5, seed=7)
    reference = greedy_by_hand(ours, prompt, NEW)
    generated = reference[:, 5:]
    never = next(i for i in range(VOCAB) if i not in set(generated.flatten().tolist()) | {EOS})
    row0 = generated[0].tolist()
    mid = row0[NEW // 2]
    first = row0.index(mid)
    assert 0 < first < NEW - 1  # row 0 stops part-way: stopping and padding are exercised
    assert any(mid not in row[:first + 1] for row in generated.tolist()[1:])  # another row goes on
    return hf, ours, prompt, reference, never, mid


def expected_with_eos(reference, prompt_len, eos, pad):
    """The by-hand greedy ids with each row cut after its first eos and padded with `pad`;
    trailing columns that only padding fills are dropped (generation stops when every row has)."""
    out = reference.clone()
    ends = []
    for row in out:
        gen = row[prompt_len:].tolist()
        end = prompt_len + gen.index(eos) + 1 if eos in gen else len(row)
        row[end:] = pad
        ends.append(end)
    return out[:, :max(ends)]


@pytest.mark.parametrize("which_eos", ["never", "mid"])
@pytest.mark.parametrize("hf_cache", [True, False])
def test_greedy_generation_matches_transformers(generation_setup, which_eos, hf_cache):
    hf, ours, prompt, reference, never, mid = generation_setup
    eos = never if which_eos == "never" else mid
    pad = ours.config.pad_id  # ours pads finished rows with its pad id; tell transformers to do the same
    assert eos != pad
    want = expected_with_eos(reference, prompt.shape[1], eos, pad)
    theirs = hf_greedy(hf, prompt, eos, pad, hf_cache)
    assert torch.equal(theirs, want)
    for use_cache in (True, False):
        got = ours.generate(prompt, NEW, use_cache=use_cache, eos_id=eos)
        assert torch.equal(got, theirs), use_cache
    if which_eos == "never":
        assert want.shape[1] == prompt.shape[1] + NEW
    else:
        assert (want == pad).any() and want.shape[1] > prompt.shape[1] + reference[0, 5:].tolist().index(mid) + 1


def test_beam_search_does_not_depend_on_the_cache(generation_setup):
    hf, ours, prompt, reference, never, mid = generation_setup
    for eos in (never, mid):  # with mid, beams finish at different steps and the cache is reordered
        cached = ours.generate(prompt, NEW, use_cache=True, num_beams=3, eos_id=eos)
        full = ours.generate(prompt, NEW, use_cache=False, num_beams=3, eos_id=eos)
        assert torch.equal(cached, full), eos
        assert torch.equal(cached[:, :5], prompt)
    assert not torch.equal(ours.generate(prompt, NEW, num_beams=3, eos_id=never), reference)  # beams ≠ greedy


class CharTokenizer:
    """A stand-in for GPT-2's tokenizer: one id per printable ASCII character (ids 3-97; 0-2 and
    98-100 decode to nothing). The interface `complete` needs is just encode and decode."""

    def encode(self, text: str) -> list[int]:
        return [ord(ch) - 32 + 3 for ch in text]

    def decode(self, ids) -> str:
        return "".join(chr(i - 3 + 32) for i in ids if 3 <= i < 98)


def test_complete_with_a_stand_in_tokenizer(generation_setup):
    """`complete` with any tokenizer that has encode and decode (GPT-2's own, for real GPT-2):
    "<bos> prompt", greedy, cut at eos or at the stop token, gives transformers' continuation."""
    hf, ours, *_ = generation_setup
    tok = CharTokenizer()

    def theirs(text, stop):
        prompt = torch.tensor([[BOS] + tok.encode(text)])
        row = hf_greedy(hf, prompt, EOS, EOS, True)[0, prompt.shape[1]:prompt.shape[1] + 12].tolist()
        ends = [row.index(t) for t in [EOS, *tok.encode(stop or "")] if t in row]
        return tok.decode(row[:min(ends)] if ends else row).strip()

    prompts = ["the cat", "a dog is", "the sun"]  # two lengths: decoded as two batches
    got = ours.complete(prompts, max_new_tokens=12, stop=None, tokenizer=tok)
    assert got == [theirs(p, None) for p in prompts] and all(got)
    stop = got[0].strip()[2]  # a character part-way through the first completion
    cut = ours.complete(prompts, max_new_tokens=12, stop=stop, tokenizer=tok)
    assert cut == [theirs(p, stop) for p in prompts] and len(cut[0]) < len(got[0])
