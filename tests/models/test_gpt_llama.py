"""The GPT of chapter 09 in the Llama layout (RMSNorm, RoPE, SwiGLU, no biases, grouped-query
attention, an untied head), the GPT-2 layout kept as the default (the zoo's `llm` loads
unchanged), and left-padded batched generation equal to one prompt at a time.
(`GPT.from_hf` for Llama is tested against transformers in tests/models/test_llama_hf.py.)"""
import pytest
import torch

from minivlm import zoo
from minivlm.models.gpt import GPT, LLAMA, GPTConfig
from minivlm.nn.blocks import GatedMLP, RMSNorm
from minivlm.zoo.recipes import config_dict

PAD, BOS, EOS = 0, 1, 2
LAYOUTS = {"gpt2": {}, "llama": dict(LLAMA, kv_heads=1, tie_head=False)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_gpt(layout="llama", seed=0, scale=0.3, **kw):
    """A random GPT, every parameter moved off its init (norm weights too), in float64 so that
    padded and unpadded runs agree to ~1e-12 and greedy decoding has no near-ties."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, max_len=24, dim=16, depth=2, heads=2, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    model = GPT(GPTConfig(**{**cfg, **LAYOUTS[layout], **kw}))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.double().eval()


def random_ids(seed, shape, low=3, vocab_size=40):
    return torch.randint(low, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def left_pad(prompts, filler=PAD):
    """One (B, T) batch of 1-D prompts, padded on the left with `filler`, and its mask."""
    t = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.full((t - len(p),), filler), p]) for p in prompts])
    mask = torch.stack([torch.arange(t) >= t - len(p) for p in prompts])
    return ids, mask


# ----------------------------------------------------------------------------- the layout
def test_llama_preset_and_its_parameters():
    c = GPTConfig.llama(vocab_size=40, dim=32, heads=4, pad_id=0, bos_id=1, eos_id=2)
    assert (c.norm, c.positions, c.mlp, c.act, c.bias, c.tie_head) == ("rmsnorm", "rope", "glu", "silu", False, True)
    assert GPTConfig.llama(vocab_size=40, pad_id=0, bos_id=1, eos_id=2, bias=True).bias  # overridable
    model = GPT(c)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("bias") for n in names) and not any("pos_embedding" in n for n in names)
    assert all(isinstance(m, RMSNorm) for m in (model.text.norm, model.text.transformer.blocks[0].norm1))
    assert isinstance(model.text.transformer.blocks[0].mlp, GatedMLP)
    assert model.text.transformer.blocks[0].mlp.gate_proj.out_features == 88  # 2/3 · 128, up to a multiple of 8
    assert model.head is None and model.state_dict().keys() == GPT(GPTConfig(**config_dict(model))).state_dict().keys()


def test_untied_head_and_grouped_query_attention():
    model = tiny_gpt("llama")
    block = model.text.transformer.blocks[0]
    assert block.attn.k_proj.weight.shape == (8, 16)  # one key/value head of width 8
    ids = random_ids(0, (2, 6))
    with torch.no_grad():
        assert torch.allclose(model(ids), model.text(ids) @ model.head.weight.T)
        assert (model(ids) - model.text(ids) @ model.token_embedding.weight.T).abs().max() > 1e-2


def test_default_layout_keeps_gpt2_keys_and_the_zoo_llm_loads():
    """GPT-2's layout is the default: the same modules and state-dict keys as before the Llama
    options, and a manifest config without the new fields (older zoo entries) still builds the
    model its weights load into."""
    model = GPT(GPTConfig(vocab_size=40, depth=1, pad_id=0, bos_id=1, eos_id=2))
    block = {f"text.transformer.blocks.0.{m}.{p}" for m in ("norm1", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                            "attn.out_proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")}
    assert set(model.state_dict()) == {"text.token_embedding.weight", "text.pos_embedding", "text.norm.weight",
                                       "text.norm.bias", *block}
    assert model.head is None and not any(isinstance(m, (RMSNorm, GatedMLP)) for m in model.modules())
    info = zoo.manifest("llm")
    llm = zoo.load("llm")
    rebuilt = GPT(GPTConfig(**info["config"]))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in llm.state_dict().items()}
    assert rebuilt.config == llm.config


def test_bad_config_values_are_named():
    base = dict(vocab_size=40, pad_id=0, bos_id=1, eos_id=2)
    for field, value, message in (("norm", "batchnorm", "norm must be one of"), ("positions", "alibi", "positions"),
                                  ("mlp", "swiglu", r"mlp must be one of \['mlp', 'glu'\], got 'swiglu'"),
                                  ("kv_heads", 3, "heads=4 must be a multiple of kv_heads=3"),
                                  ("rope_base", 0.5, "rope_base"), ("mlp_hidden", 0, "mlp_hidden")):
        with pytest.raises(ValueError, match=message):
            GPTConfig(**base, **{field: value})
    with pytest.raises(TypeError, match="tie_head must be True or False, got 1"):
        GPTConfig(**base, tie_head=1)
    with pytest.raises(ValueError, match="dim / heads = 5 must be even"):
        GPTConfig.llama(**base, dim=20, heads=4)


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_generation_equals_uncached(layout):
    model = tiny_gpt(layout, seed=3)
    prompt = random_ids(3, (3, 4))
    cached, uncached = (model.generate(prompt, 16, use_cache=c) for c in (True, False))
    assert torch.equal(cached, uncached) and cached.shape[1] == 20
    beams = [model.generate(prompt, 16, use_cache=c, num_beams=3) for c in (True, False)]
    assert torch.equal(*beams)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_left_padded_logits_equal_each_row_alone(layout):
    model = tiny_gpt(layout, seed=4)
    prompts = [random_ids(10 + i, (n,)) for i, n in enumerate((2, 11, 6))]
    ids, mask = left_pad(prompts, filler=7)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(ids, mask, position_ids=positions)
        for row, p in enumerate(prompts):
            alone = model(p[None])[0]
            assert torch.allclose(batched[row, -len(p):], alone, atol=1e-10), row
        if layout == "gpt2":  # learned positions: the padded columns' positions would be wrong
            assert (model(ids, mask)[0, -2:] - model(prompts[0][None])[0]).abs().max() > 1e-3


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_left_padded_generation_equals_one_prompt_at_a_time(layout, use_cache, num_beams):
    """Prompts of 1 to 14 tokens as one left-padded batch give, row by row, the tokens each gives
    alone, whatever fills the padding; rows stopping at eos early are padded while others go on."""
    model = tiny_gpt(layout, seed=5)
    prompts = [random_ids(20 + i, (n,)) for i, n in enumerate((1, 14, 5, 9))]

    def one_at_a_time(eos_id):
        return [model.generate(p[None], 8, use_cache=False, num_beams=num_beams, eos_id=eos_id)[0, len(p):]
                for p in prompts]

    # an eos no row emits (all 8 tokens compared), then one that some rows emit and others do not
    # (the padding of finished rows is exercised while other rows go on)
    never, alone = next((e, a) for e in range(3, 40) for a in [one_at_a_time(e)] if all(e not in r for r in a))
    mid, alone_mid = next((e, a) for e in alone[0].tolist() if e != PAD for a in [one_at_a_time(e)]
                          if 0 < sum(e in r for r in a) < len(a))
    for filler in (PAD, 9):
        ids, mask = left_pad(prompts, filler)
        for eos_id, want in ((never, alone), (mid, alone_mid)):
            got = model.generate(ids, 8, use_cache=use_cache, attention_mask=mask, num_beams=num_beams,
                                 eos_id=eos_id)
            assert torch.equal(got[:, :ids.shape[1]], ids)
            for row, w in zip(got[:, ids.shape[1]:], want):
                assert torch.equal(row[:len(w)], w) and (row[len(w):] == PAD).all(), (filler, eos_id)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_complete_with_an_embed_hook_decodes_prompts_of_any_length_together(layout):
    """`complete` left-pads all prompts into one batch; an embed hook (chapter 10 splices images
    in) gets the padded ids and rows that index the prompts, and each prompt gets what it gets
    alone."""
    model = tiny_gpt(layout, seed=6, vocab_size=None, pad_id=None, bos_id=None, eos_id=None, max_len=32, scale=0.5)
    shift = 0.5 * torch.randn(4, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen = []

    def embed(ids, rows):  # a per-prompt vector on every position: a stand-in for an image
        seen.append(rows.tolist())
        return model.embed(ids) + shift[rows][:, None]

    prompts = ["a red", "", "two shapes: a red circle and a blue", "grass is"]
    together = model.complete(prompts, max_new_tokens=6, stop=None, embed=embed)
    assert seen[0] == [0, 1, 2, 3]
    alone = [model.complete([p], max_new_tokens=6, stop=None, embed=lambda ids, rows, i=i: embed(ids, rows + i))[0]
             for i, p in enumerate(prompts)]
    assert together == alone and len(set(together)) > 2
    assert model.complete(prompts, max_new_tokens=6, stop=None) != together  # the hook is used


def test_generate_rejects_a_bad_attention_mask():
    model = tiny_gpt("llama")
    ids = random_ids(0, (2, 4))
    with pytest.raises(ValueError, match=r"attention_mask must have the prompt's shape \(2, 4\), got \(2, 3\)"):
        model.generate(ids, 2, attention_mask=torch.ones(2, 3, dtype=torch.bool))
    for bad in ([[1, 1, 1, 0], [1, 1, 1, 1]], [[0, 1, 0, 1], [1, 1, 1, 1]], [[0, 0, 0, 0], [1, 1, 1, 1]]):
        with pytest.raises(ValueError, match="False only on left padding"):
            model.generate(ids, 2, attention_mask=torch.tensor(bad))
    all_real = model.generate(ids, 3, attention_mask=torch.ones(2, 4, dtype=torch.long))
    assert torch.equal(all_real, model.generate(ids, 3))
