"""The shared heads (minivlm/nn/heads.py): the contrastive head of chapter 02 (CLIP) and the tied
masked-LM head of chapter 03 (ViLT), and every model that uses one. The state-dict keys of each
model are pinned to the list taken before the heads moved into one module, so the zoo's weight
files and every checkpoint still load."""
import hashlib

import pytest
import torch

from minivlm.models.albef import ALBEF, ALBEFConfig
from minivlm.models.beit3 import BEiT3, BEiT3Config
from minivlm.models.blip import BLIP, BLIPConfig
from minivlm.models.clip import CLIP, CLIPConfig
from minivlm.models.coca import CoCa, CoCaConfig
from minivlm.models.vilt import ViLT, ViLTConfig
from minivlm.models.vlmo import VLMo, VLMoConfig
from minivlm.nn.heads import ContrastiveHead, LMHead, MLMHead, TiedWordHead, check_temperature

BUILD = {  # tiny models, one per model with a shared head (ViLT in both visual modes)
    "clip": lambda: CLIP(CLIPConfig(image_size=16, patch_size=8, vision_dim=16, vision_depth=1, vision_heads=2,
                                    text_dim=16, text_depth=1, text_heads=2, embed_dim=8, context_length=12)),
    "albef": lambda: ALBEF(ALBEFConfig(image_size=16, patch_size=8, dim=16, heads=2, vision_depth=1, text_depth=1,
                                       fusion_depth=1, embed_dim=8, max_text_len=12)),
    "blip": lambda: BLIP(BLIPConfig(image_size=16, patch_size=8, vision_dim=16, dim=16, vision_depth=1, text_depth=1,
                                    heads=2, embed_dim=8, max_text_len=12)),
    "coca": lambda: CoCa(CoCaConfig(image_size=16, patch_size=8, dim=16, vision_depth=1, unimodal_depth=1,
                                    multimodal_depth=1, heads=2, embed_dim=8, max_text_len=12)),
    "vlmo": lambda: VLMo(VLMoConfig(image_size=16, patch_size=8, dim=16, depth=2, vl_depth=1, heads=2, embed_dim=8,
                                    max_text_len=12)),
    "vilt": lambda: ViLT(ViLTConfig(image_size=16, patch_size=8, dim=16, depth=1, heads=2, max_text_len=12,
                                    answers=("yes", "no"))),
    "vilt_regions": lambda: ViLT(ViLTConfig(image_size=16, patch_size=8, dim=16, depth=1, heads=2, max_text_len=12,
                                            answers=("yes", "no"), visual="regions", max_regions=3)),
    "beit3": lambda: BEiT3(BEiT3Config(image_size=16, patch_size=8, dim=16, depth=2, vl_depth=1, heads=2,
                                       embed_dim=8, max_text_len=12, codebook_size=8, answers=("yes", "no"))),
}

# Taken from the models before nn/heads.py existed: (number of state-dict entries, sha256 of the
# ordered "key shape" lines (first 16 hex digits; the vocabulary size written V), and each head
# entry with its position in the state dict). The order matters too: an optimizer's saved state
# follows the order of the parameters.
KEYS = {
    "clip": (46, "663c238ea148b1c8", [
        (0, "logit_scale", ()),
        (44, "image_projection.weight", (8, 16)),
        (45, "text_projection.weight", (8, 16)),
    ]),
    "albef": (83, "a16157b9c890b192", [
        (0, "log_scale", ()),
        (1, "mlm_bias", ("V",)),
        (73, "image_projection.weight", (8, 16)),
        (74, "image_projection.bias", (8,)),
        (75, "text_projection.weight", (8, 16)),
        (76, "text_projection.bias", (8,)),
        (79, "mlm_transform.weight", (16, 16)),
        (80, "mlm_transform.bias", (16,)),
        (81, "mlm_norm.weight", (16,)),
        (82, "mlm_norm.bias", (16,)),
    ]),
    "blip": (77, "9a05738963e9992d", [
        (1, "log_scale", ()),
        (2, "lm_bias", ("V",)),
        (67, "image_projection.weight", (8, 16)),
        (68, "image_projection.bias", (8,)),
        (69, "text_projection.weight", (8, 16)),
        (70, "text_projection.bias", (8,)),
        (73, "lm_transform.weight", (16, 16)),
        (74, "lm_transform.bias", (16,)),
        (75, "lm_norm.weight", (16,)),
        (76, "lm_norm.bias", (16,)),
    ]),
    "coca": (101, "c63cea4feb7e4ddc", [
        (2, "log_scale", ()),
        (99, "image_projection.weight", (8, 16)),
        (100, "text_projection.weight", (8, 16)),
    ]),
    "vlmo": (76, "b3d05b01820a6e51", [
        (4, "log_scale", ()),
        (5, "mlm_bias", ("V",)),
        (64, "image_projection.weight", (8, 16)),
        (65, "image_projection.bias", (8,)),
        (66, "text_projection.weight", (8, 16)),
        (67, "text_projection.bias", (8,)),
        (70, "mlm_transform.weight", (16, 16)),
        (71, "mlm_transform.bias", (16,)),
        (72, "mlm_norm.weight", (16,)),
        (73, "mlm_norm.bias", (16,)),
    ]),
    "vilt": (42, "9ec37ebe10d81b2b", [
        (3, "mlm_bias", ("V",)),
        (30, "mlm_transform.weight", (16, 16)),
        (31, "mlm_transform.bias", (16,)),
        (32, "mlm_norm.weight", (16,)),
        (33, "mlm_norm.bias", (16,)),
    ]),
    "vilt_regions": (46, "6014cdbbdf40891a", [
        (3, "mlm_bias", ("V",)),
        (34, "mlm_transform.weight", (16, 16)),
        (35, "mlm_transform.bias", (16,)),
        (36, "mlm_norm.weight", (16,)),
        (37, "mlm_norm.bias", (16,)),
    ]),
    "beit3": (82, "0a51ada674beab29", [
        (4, "log_scale", ()),
        (5, "mlm_bias", ("V",)),
        (64, "image_projection.weight", (8, 16)),
        (65, "image_projection.bias", (8,)),
        (66, "text_projection.weight", (8, 16)),
        (67, "text_projection.bias", (8,)),
        (68, "mlm_transform.weight", (16, 16)),
        (69, "mlm_transform.bias", (16,)),
        (70, "mlm_norm.weight", (16,)),
        (71, "mlm_norm.bias", (16,)),
    ]),
}
HEAD_PREFIXES = ("image_projection", "text_projection", "logit_scale", "log_scale", "mlm_", "lm_")


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILD[name]().eval()


def keys_and_shapes(model) -> list[tuple[str, tuple]]:
    v = model.config.vocab_size
    return [(k, tuple("V" if n == v else n for n in t.shape)) for k, t in model.state_dict().items()]


@pytest.mark.parametrize("name", list(BUILD))
def test_state_dict_keys_and_shapes_are_unchanged(name):
    count, digest, heads = KEYS[name]
    got = keys_and_shapes(build(name))
    got_heads = [(i, k, s) for i, (k, s) in enumerate(got) if k.startswith(HEAD_PREFIXES)]
    assert got_heads == heads
    assert len(got) == count
    lines = "\n".join(f"{k} {s}" for k, s in got)
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == digest, lines


# ----------------------------------------------------------------------------- one implementation

CONTRASTIVE = {"clip": "logit_scale", "albef": "log_scale", "blip": "log_scale", "coca": "log_scale",
               "vlmo": "log_scale", "beit3": "log_scale"}
MLM = {"albef": "text.token_embedding", "vilt": "word_embeddings", "vilt_regions": "word_embeddings",
       "vlmo": "token_embedding", "beit3": "token_embedding"}


def test_every_model_with_a_head_takes_it_from_nn_heads():
    for model in (CLIP, ALBEF, BLIP, CoCa, VLMo, BEiT3):
        assert issubclass(model, ContrastiveHead) and model.scale is ContrastiveHead.scale, model
    for model in (ViLT, ALBEF, VLMo, BEiT3):
        assert issubclass(model, MLMHead) and model.mlm_logits is MLMHead.mlm_logits, model
    assert issubclass(BLIP, LMHead) and BLIP.lm_logits is LMHead.lm_logits
    assert not issubclass(CLIP, TiedWordHead) and not issubclass(CoCa, TiedWordHead)  # CoCa's: a bare tied linear
    for model in (ViLT, ALBEF, BLIP, VLMo):  # one name per operation
        assert callable(model.match_probability) and not hasattr(model, "match"), model


# ----------------------------------------------------------------------------- contrastive head


@pytest.mark.parametrize("name", list(CONTRASTIVE))
def test_scale_is_exp_of_the_learned_log_clamped_at_the_configs_maximum(name):
    m = build(name)
    param = getattr(m, CONTRASTIVE[name])
    biggest = getattr(m.config, "max_logit_scale" if name == "clip" else "max_scale")
    temperature = m.config.init_temperature if name == "clip" else m.config.temp
    assert param.requires_grad and param.shape == ()
    assert param.item() == pytest.approx(-torch.tensor(temperature).log().item())  # log(1 / τ)
    with torch.no_grad():
        param.fill_(1.5)
    assert m.scale().item() == pytest.approx(torch.tensor(1.5).exp().item())  # e^1.5 = 4.48 < max: unclamped
    m.scale().backward()
    assert param.grad.item() == pytest.approx(torch.tensor(1.5).exp().item())  # d e^s / ds = e^s
    with torch.no_grad():
        param.fill_(10.0)  # e^10 = 22,026
    assert m.scale().item() == biggest
    param.grad = None
    m.scale().backward()
    assert param.grad.item() == 0.0  # clamped: no gradient


def test_clamp_follows_the_config_and_projections_have_bias_where_the_paper_has():
    m = build("albef")
    m.config.max_scale = 20.0
    with torch.no_grad():
        m.log_scale.fill_(5.0)
    assert m.scale().item() == 20.0
    for name, bias in (("clip", False), ("coca", False), ("albef", True), ("blip", True), ("vlmo", True)):
        model = build(name)
        assert (model.image_projection.bias is not None) == bias and (model.text_projection.bias is not None) == bias


@pytest.mark.parametrize("temperature,max_scale,pattern", [
    (0.0, 100.0, r"temp must be a number in \(0.0, 1.0\], got 0.0"),
    (-0.07, 100.0, r"temp must be a number in \(0.0, 1.0\], got -0.07"),
    (1.5, 100.0, r"temp must be a number in \(0.0, 1.0\], got 1.5"),
    (float("nan"), 100.0, r"temp must be a number .*got nan"),
    (True, 100.0, r"temp must be a number .*got True"),
    ("0.07", 100.0, r"temp must be a number .*got '0.07'"),
    (0.07, 0.0, r"max_scale must be a number in \(0.0, inf\), got 0.0"),
    (0.07, float("inf"), r"max_scale must be a number in \(0.0, inf\), got inf"),
    (0.07, None, r"max_scale must be a number .*got None"),
    (0.07, 10.0, r"max_scale must be at least 1 / temp = 14.29, got 10.0: the scale would start clamped"),
])
def test_check_temperature_rejects_bad_values(temperature, max_scale, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_temperature("temp", temperature, "max_scale", max_scale)


def test_check_temperature_accepts_the_papers_values_and_the_edges():
    for temperature, max_scale in ((0.07, 100.0), (1.0, 1.0), (0.01, 100.0), (0.5, 2)):
        check_temperature("temp", temperature, "max_scale", max_scale)


def test_every_config_checks_its_temperature():
    with pytest.raises(ValueError, match=r"init_temperature must be a number in \(0.0, 1.0\], got 2.0"):
        CLIPConfig(init_temperature=2.0)
    with pytest.raises(ValueError, match=r"max_logit_scale must be at least 1 / init_temperature"):
        CLIPConfig(init_temperature=0.07, max_logit_scale=10.0)
    for config in (ALBEFConfig, BLIPConfig, CoCaConfig, VLMoConfig, BEiT3Config):
        with pytest.raises(ValueError, match=r"temp must be a number in \(0"):
            config(temp=0.0)
        with pytest.raises(ValueError, match=r"max_scale must be"):
            config(max_scale=float("inf"))


# ----------------------------------------------------------------------------- tied word head


def moved(m):
    """Every parameter off its initial value (LayerNorm off (1, 0), a non-zero output bias)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m


@pytest.mark.parametrize("name", list(MLM) + ["blip"])
def test_word_logits_are_berts_head_with_the_word_embeddings_as_output_layer(name):
    m = moved(build(name))
    prefix = "lm" if name == "blip" else "mlm"
    transform, norm, bias = (getattr(m, f"{prefix}_{part}") for part in ("transform", "norm", "bias"))
    words = m.get_submodule(MLM.get(name, "token_embedding")).weight  # (V, D)
    h = torch.randn(2, 5, m.config.dim, generator=torch.Generator().manual_seed(2))
    x = h @ transform.weight.T + transform.bias
    x = 0.5 * x * (1 + torch.erf(x / 2**0.5))  # GELU, the models' act
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    x = (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    want = x @ words.T + bias  # (B, T, V)
    got = m.lm_logits(h) if name == "blip" else m.mlm_logits(h)
    assert got.shape == (2, 5, m.config.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # tied: the output layer is the embedding matrix itself, so a change to one is a change to the other
    with torch.no_grad():
        words[7] += 1.0
    after = m.lm_logits(h) if name == "blip" else m.mlm_logits(h)
    torch.testing.assert_close(after[..., 7], got[..., 7] + x.sum(-1))
    torch.testing.assert_close(after[..., :7], got[..., :7])
    assert sum(t.shape == words.shape for t in m.state_dict().values()) == 1  # no second (V, D) matrix


def test_word_head_uses_the_configs_activation():
    m = moved(build("vilt"))
    m.config.act = "relu"
    h = torch.randn(2, 3, m.config.dim, generator=torch.Generator().manual_seed(3))
    x = m.mlm_norm(torch.relu(m.mlm_transform(h)))
    torch.testing.assert_close(m.mlm_logits(h), x @ m.word_embeddings.weight.T + m.mlm_bias)
