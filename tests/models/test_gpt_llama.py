"""The GPT of chapter 09 in the Llama layout (RMSNorm, RoPE, SwiGLU, no biases, grouped-query
attention, an untied head), the GPT-2 layout kept as the default (the zoo's `llm` loads
unchanged).
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
