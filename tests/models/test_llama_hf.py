"""Our GPT in the Llama layout against Hugging Face transformers' LlamaForCausalLM (chapter 09).

A tiny randomly initialised Llama is built from a config (nothing is downloaded), every
parameter moved off its init (RMSNorm weights start at 1, where a swapped or missing copy would
hide), its weights copied with `GPT.from_hf`; both must give the same logits (tied and untied
heads, grouped-query attention, biases, explicit position ids, left padding) and the same greedy
continuations with and without either KV cache. Deliberately wrong mappings must be caught.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import minivlm.nn.attention as attention  # noqa: E402
from minivlm.models.gpt import GPT  # noqa: E402

VOCAB, CONTEXT, BOS, EOS = 101, 64, 1, 2
NEW = 20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (see tests/models/test_vilt.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def hf_llama(seed=0, head=True, **overrides):
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS,
              tie_word_embeddings=False)
    cfg = transformers.LlamaConfig(**{**kw, **overrides})
    model = (transformers.LlamaForCausalLM if head else transformers.LlamaModel)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # norms start at 1 and biases at 0: make every parameter random
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def random_ids(b, t, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def hf_greedy(hf, prompt, eos, pad, use_cache, attention_mask=None):
    """transformers' greedy search with every default that could differ from ours set explicitly."""
    mask = torch.ones_like(prompt) if attention_mask is None else attention_mask.long()
    return hf.generate(prompt, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=0, do_sample=False,
                       num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, use_cache=use_cache,
                       eos_token_id=eos, pad_token_id=pad)


# ----------------------------------------------------------------------------- logits
@pytest.mark.parametrize("overrides", [
    {},  # Llama 2 / TinyLlama: untied head, one key/value head per query head
    {"tie_word_embeddings": True, "num_key_value_heads": 2, "rope_theta": 500.0},  # SmolLM: tied, grouped-query
    {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 1},
], ids=["untied", "tied-gqa", "bias-mqa"])
def test_logits_match_transformers(overrides):
    hf = hf_llama(**overrides)
    ours = GPT.from_hf(hf)
    c = ours.config
    assert (c.vocab_size, c.max_len, c.dim, c.depth, c.heads, c.mlp_hidden) == (VOCAB, CONTEXT, 32, 2, 4, 48)
    assert (c.norm, c.positions, c.mlp, c.act) == ("rmsnorm", "rope", "glu", "silu")
    assert c.kv_heads == overrides.get("num_key_value_heads", 4) and c.eps == 1e-5
    assert c.rope_base == overrides.get("rope_theta", 10000.0) and c.bias == overrides.get("attention_bias", False)
    assert c.tie_head == overrides.get("tie_word_embeddings", False) and (ours.head is None) == c.tie_head
    assert (c.bos_id, c.eos_id, c.pad_id) == (BOS, EOS, EOS)
    for b, t in ((1, 1), (3, 7), (2, CONTEXT)):  # one token, a few, the full context
        ids = random_ids(b, t, seed=t)
        with torch.no_grad():
            want, got = hf(ids).logits, ours(ids)
        assert want.abs().max() > 1.0  # values large enough that a wrong mapping could not hide
        assert (got - want).abs().max() < 1e-5, (b, t)


def test_from_llama_model_without_head_matches_its_hidden_states():
    hf = hf_llama(head=False)  # LlamaModel: no lm_head, so our head is tied
    ours = GPT.from_hf(hf)
    assert ours.config.tie_head
    ids = random_ids(2, 9)
    with torch.no_grad():
        want, got = hf(ids).last_hidden_state, ours.text(ids)  # both after the final RMSNorm
    assert (got - want).abs().max() < 1e-5


def test_explicit_position_ids_and_left_padding_match_transformers():
    """Any integer positions (chapter 16 gives image tokens positions of their own), and left
    padding with positions counted from each row's first real token."""
    hf = hf_llama(seed=2, num_key_value_heads=2)
    ours = GPT.from_hf(hf)
    ids = random_ids(2, 10, seed=3)
    positions = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(4))  # unordered, > max_len
    with torch.no_grad():
        want, got = hf(ids, position_ids=positions).logits, ours(ids, position_ids=positions)
        assert (got - want).abs().max() < 1e-5
        assert (got - ours(ids)).abs().max() > 1e-2  # the positions do matter
        mask = torch.tensor([[False] * 4 + [True] * 6, [True] * 10])
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        want = hf(ids, attention_mask=mask.long(), position_ids=positions).logits
        got = ours(ids, mask, position_ids=positions)
    assert (got[0, 4:] - want[0, 4:]).abs().max() < 1e-5 and (got[1] - want[1]).abs().max() < 1e-5


def interleaved_rotary(x, cos, sin):
    """RoPE with the paper's pairs (2i, 2i + 1) instead of Llama's (i, i + d/2): a plausible port."""
    pair_cos, pair_sin = cos[..., :x.shape[-1] // 2].repeat_interleave(2, -1), sin[..., :x.shape[-1] // 2]
    pair_sin = pair_sin.repeat_interleave(2, -1)
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], -1).flatten(-2)
    return x * pair_cos[:, None] + rotated * pair_sin[:, None]


@pytest.mark.parametrize("mistake", ["swap gate and up", "interleaved rope", "swap norm1 and norm2", "swap q and k"])
def test_a_wrong_mapping_changes_the_logits(mistake, monkeypatch):
    """The tolerance above has teeth: each error a port could make moves the logits by far more
    than 1e-3 on these weights."""
    hf = hf_llama(seed=1)
    ours = GPT.from_hf(hf)
    block = ours.text.transformer.blocks[1]
    pairs = {"swap gate and up": (block.mlp.gate_proj, block.mlp.up_proj), "swap norm1 and norm2": (block.norm1,
             block.norm2), "swap q and k": (block.attn.q_proj, block.attn.k_proj)}
    with torch.no_grad():
        if mistake == "interleaved rope":
            monkeypatch.setattr(attention, "apply_rotary", interleaved_rotary)
        else:
            a, b = pairs[mistake]
            a_old = a.weight.clone()
            a.weight.copy_(b.weight)
            b.weight.copy_(a_old)
        ids = random_ids(3, 12)
        assert (ours(ids) - hf(ids).logits).abs().max() > 1e-3


def test_from_hf_refuses_what_this_gpt_cannot_express():
    with pytest.raises(ValueError, match="only plain RoPE.*'linear'"):
        GPT.from_hf(hf_llama(rope_scaling={"rope_type": "linear", "factor": 2.0}))
    with pytest.raises(ValueError, match="hidden_act must be 'silu'.*got 'gelu'"):
        GPT.from_hf(hf_llama(hidden_act="gelu"))
    with pytest.raises(ValueError, match=r"head_dim must be hidden_size / num_attention_heads = 32 / 4, got head_dim=16"):
        GPT.from_hf(hf_llama(head_dim=16))
    with pytest.raises(ValueError, match="attention_bias=True, mlp_bias=False"):
        GPT.from_hf(hf_llama(attention_bias=True))
    with pytest.raises(ValueError, match=r"eos_token_id must be one id in \[0, 100\], got \[2, 3\]"):
        GPT.from_hf(hf_llama(eos_token_id=[2, 3]))


# ----------------------------------------------------------------------------- decoding
@pytest.fixture(scope="module", params=["untied", "tied"])
def generation_setup(request):
    """A model, 5-token prompts, and two eos ids: one the greedy run never emits, one that row 0
    emits part-way (while another row goes on past it)."""
    hf = hf_llama(seed=3, tie_word_embeddings=request.param == "tied", num_key_value_heads=2)
    ours = GPT.from_hf(hf)
    prompt = random_ids(4, 5, seed=7)
    never = next(e for e in range(3, VOCAB) if e not in ours.generate(prompt, NEW, use_cache=False, eos_id=e)[:, 5:])
    rows = ours.generate(prompt, NEW, use_cache=False, eos_id=never)[:, 5:].tolist()
    mid = next(t for t in rows[0][1:-1] if rows[0].index(t) > 0
               and any(t not in r[:rows[0].index(t) + 2] for r in rows[1:]))
    return hf, ours, prompt, never, mid


@pytest.mark.parametrize("which_eos", ["never", "mid"])
@pytest.mark.parametrize("hf_cache", [True, False])
def test_greedy_generation_matches_transformers(generation_setup, which_eos, hf_cache):
    hf, ours, prompt, never, mid = generation_setup
    eos = never if which_eos == "never" else mid
    pad = ours.config.pad_id
    theirs = hf_greedy(hf, prompt, eos, pad, hf_cache)
    for use_cache in (True, False):
        got = ours.generate(prompt, NEW, use_cache=use_cache, eos_id=eos)
        assert torch.equal(got, theirs), use_cache
    if which_eos == "never":
        assert theirs.shape[1] == 5 + NEW
    else:  # row 0 stopped and was padded while another row went on
        assert theirs[0, -1] == pad and (theirs[:, -1] != pad).any()


@pytest.mark.parametrize("hf_cache", [True, False])
def test_left_padded_generation_matches_transformers(generation_setup, hf_cache):
    """Prompts of 1 to 12 tokens as one left-padded batch: transformers' generate (which counts
    positions from the first real token too) and ours agree token for token."""
    hf, ours, _, never, _ = generation_setup
    lengths = (1, 12, 4, 7)
    mask = torch.stack([torch.arange(12) >= 12 - n for n in lengths])
    prompt = random_ids(4, 12, seed=9).masked_fill(~mask, ours.config.pad_id)
    theirs = hf_greedy(hf, prompt, never, ours.config.pad_id, hf_cache, attention_mask=mask)
    for use_cache in (True, False):
        got = ours.generate(prompt, NEW, use_cache=use_cache, eos_id=never, attention_mask=mask)
        assert torch.equal(got, theirs), use_cache
    alone = ours.generate(prompt[:1, -1:], NEW, eos_id=never)  # and row 0 is what its one token gives alone
    assert torch.equal(theirs[0, 12:], alone[0, 1:])
