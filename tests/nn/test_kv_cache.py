"""The KV cache (chapter 09): feeding a text in chunks through one cache must give what the whole
text gives at once, for random models, with padding, after reordering rows (beam search)."""
import random

import pytest
import torch

from minivlm.models.gpt import GPT, GPTConfig
from minivlm.nn import masks
from minivlm.nn.attention import KVCache, LayerCache, MultiHeadAttention
from minivlm.nn.text import TextTransformer

CHUNKS = (3, 1, 1, 4)  # a prompt, two decoding steps, then a few tokens at once


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (see tests/models/test_vilt.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def perturb(model, seed, scale=0.3):
    """Every parameter moved off its initial value (LayerNorms at (1, 0) and zero biases would hide
    a wrong mapping), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def random_config(seed):
    rng = random.Random(seed)
    heads = rng.choice([1, 2, 4])
    return dict(vocab_size=rng.randint(12, 60), max_len=rng.randint(sum(CHUNKS), 20), dim=heads * rng.choice([4, 8]),
                depth=rng.choice([1, 2, 3]), heads=heads, mlp_ratio=rng.choice([1.0, 2.0, 4.0]))


def random_text_model(seed):
    cfg = random_config(seed)
    torch.manual_seed(seed)
    model = TextTransformer(cfg.pop("vocab_size"), **cfg)
    return perturb(model, seed)


def random_gpt(seed):
    cfg = random_config(seed)
    torch.manual_seed(seed)
    return perturb(GPT(GPTConfig(**cfg, pad_id=0, bos_id=1, eos_id=2)), seed)


def depth_of(model):
    return model.config.depth if isinstance(model, GPT) else len(model.transformer.blocks)


def chunked(model, ids, attention_mask=None, chunks=CHUNKS, embeds=False, need_weights=False):
    """Run `ids` through `model` chunk by chunk with one cache; return the outputs and len(cache)
    after each chunk."""
    cache, outs, lengths, start = KVCache(depth_of(model)), [], [], 0
    for n in chunks:
        part = ids[:, start:start + n]
        mask = None if attention_mask is None else attention_mask[:, :start + n]
        kwargs = dict(need_weights=need_weights) if not isinstance(model, GPT) else {}
        if embeds:
            outs.append(model(None, mask, inputs_embeds=model.token_embedding(part), cache=cache, **kwargs))
        else:
            outs.append(model(part, mask, cache=cache, **kwargs))
        start += n
        lengths.append(len(cache))
    return torch.cat(outs, dim=1), lengths


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["text", "gpt"])
def test_chunks_through_a_cache_equal_the_full_forward(seed, kind):
    model = random_text_model(seed) if kind == "text" else random_gpt(seed)
    vocab = model.vocab_size if kind == "text" else model.config.vocab_size
    ids = torch.randint(0, vocab, (3, sum(CHUNKS)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(ids)
        got, lengths = chunked(model, ids)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    assert lengths == [3, 4, 5, 9]
    # the check has teeth: without the cache the later chunks see no past and differ
    with torch.no_grad():
        alone = model(ids[:, 3:4])
    assert not torch.allclose(alone, full[:, 3:4], atol=1e-3)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("need_weights", [False, True])
def test_chunks_with_padding_mask_over_past_and_new_tokens(seed, need_weights):
    model = random_text_model(seed + 10)
    t = sum(CHUNKS)
    ids = torch.randint(0, model.vocab_size, (4, t), generator=torch.Generator().manual_seed(seed))
    valid = torch.ones(4, t, dtype=torch.bool)
    valid[1, :2] = False  # left padding
    valid[2, -3:] = False  # right padding
    valid[3, 4] = False  # a hole, inside the one-token chunk
    with torch.no_grad():
        full = model(ids, valid, need_weights=need_weights)
        got, _ = chunked(model, ids, valid, need_weights=need_weights)
        no_mask = model(ids)
    torch.testing.assert_close(got[valid], full[valid], atol=1e-5, rtol=1e-5)  # padded queries output padding
    assert not torch.allclose(full[valid], no_mask[valid], atol=1e-3)  # the mask matters


def test_inputs_embeds_through_a_cache_equal_the_full_forward():
    model = random_text_model(5)
    ids = torch.randint(0, model.vocab_size, (2, sum(CHUNKS)))
    with torch.no_grad():
        full = model(inputs_embeds=model.token_embedding(ids))
        got, _ = chunked(model, ids, embeds=True)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_need_weights_with_a_cache_gives_weights_over_past_and_new_keys():
    model = random_text_model(6)
    ids = torch.randint(0, model.vocab_size, (2, 7))
    with torch.no_grad():
        model(ids, need_weights=True)
        full = [w.clone() for w in model.transformer.attention_maps()]
        cache = KVCache(len(model.transformer.blocks))
        model(ids[:, :4], cache=cache)
        model(ids[:, 4:], cache=cache, need_weights=True)
    for w, f in zip(model.transformer.attention_maps(), full):
        assert w.shape[-2:] == (3, 7)
        torch.testing.assert_close(w, f[:, :, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_select_reorders_and_repeats_rows(seed):
    model = random_gpt(seed + 20)
    g = torch.Generator().manual_seed(seed)
    v = model.config.vocab_size
    prefix, new = torch.randint(0, v, (3, 5), generator=g), torch.randint(0, v, (4, 3), generator=g)
    rows = torch.tensor([2, 0, 0, 1])  # beam search: reorder, repeat
    cache = model.new_cache()
    with torch.no_grad():
        model(prefix, cache=cache)
        assert cache.select(rows) is cache and len(cache) == 5
        got = model(new, cache=cache)
        want = model(torch.cat([prefix[rows], new], dim=1))[:, 5:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(cache) == 8 and cache.layers[0].k.shape[0] == 4


def test_select_on_an_empty_cache_is_harmless():
    cache = KVCache(2).select(torch.tensor([1, 0]))
    assert len(cache) == 0 and all(layer.k is None for layer in cache.layers)


def test_a_chunk_past_max_len_raises_with_cached_and_new_counts_and_keeps_the_cache():
    torch.manual_seed(0)
    model = perturb(TextTransformer(30, max_len=10, dim=8, depth=2, heads=2), 0)
    ids = torch.randint(0, 30, (2, 10))
    cache = KVCache(2)
    with torch.no_grad():
        model(ids[:, :6], cache=cache)
        with pytest.raises(ValueError, match=r"11 tokens \(6 cached \+ 5 new\).*max_len=10"):
            model(torch.randint(0, 30, (2, 5)), cache=cache)
        assert len(cache) == 6  # nothing was appended
        got = model(ids[:, 6:], cache=cache)  # the 4 that fit still work
        torch.testing.assert_close(got, model(ids)[:, 6:], atol=1e-5, rtol=1e-5)


def test_attention_mask_must_cover_past_and_new_tokens():
    model = random_text_model(1)
    ids = torch.randint(0, model.vocab_size, (2, 5))
    cache = KVCache(len(model.transformer.blocks))
    with torch.no_grad():
        model(ids[:, :3], cache=cache)
        with pytest.raises(ValueError, match=r"\(2, 5\)"):
            model(ids[:, 3:], torch.ones(2, 2, dtype=torch.bool), cache=cache)


def test_cross_attention_with_a_cache_raises():
    attn = MultiHeadAttention(8, 2, context_dim=6)
    cache = LayerCache()
    with pytest.raises(ValueError, match="cache"):
        attn(torch.randn(2, 3, 8), torch.randn(2, 4, 6), cache=cache)
    assert len(cache) == 0


def test_a_cache_with_the_wrong_number_of_layers_raises():
    model = TextTransformer(20, max_len=8, dim=8, depth=2, heads=2)
    ids = torch.randint(0, 20, (1, 4))
    for depth in (1, 3):
        with pytest.raises(ValueError, match=f"{depth} layers.*2 blocks"):
            model(ids, cache=KVCache(depth))


def test_a_cache_refuses_keys_of_another_batch():
    model = random_text_model(2)
    cache = KVCache(len(model.transformer.blocks))
    with torch.no_grad():
        model(torch.randint(0, model.vocab_size, (2, 3)), cache=cache)
        with pytest.raises(ValueError, match="batch"):
            model(torch.randint(0, model.vocab_size, (3, 1)), cache=cache)


def test_kv_cache_depth_must_be_a_positive_int():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="depth"):
            KVCache(bad)


def test_layer_cache_appends_along_time():
    cache = LayerCache()
    k1, v1, k2, v2 = (torch.randn(2, 3, n, 4) for n in (2, 2, 5, 5))
    cache.append(k1, v1)
    k, v = cache.append(k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))
    assert len(cache) == 7


@pytest.mark.parametrize("t", range(0, 6))
@pytest.mark.parametrize("past", range(0, 6))
def test_causal_with_past_is_the_last_rows_of_the_full_causal_mask(t, past):
    got = masks.causal(t, past=past)
    assert got.shape == (t, past + t) and got.dtype == torch.bool
    assert torch.equal(got, masks.causal(past + t)[past:])


def test_causal_past_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="past"):
        masks.causal(3, past=-1)
