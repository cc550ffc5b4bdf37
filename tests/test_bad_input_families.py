"""Bad input by family (issue 14): sizes, counts, heads and depths that are zero, negative, bool,
float or text; dropouts, MLP ratios and epsilons out of range; tensors of the wrong dtype; a
checkpoint or a zoo manifest that does not fit the model. Each must fail at the public boundary
with a ValueError/TypeError that names the parameter and the value, never from inside torch."""
import json
import math
import re
import shutil

import pytest
import torch
from torch import nn

from minivlm.models import CLIP, CLIPConfig
from minivlm.nn import MLP, Block, MultiHeadAttention, PatchEmbed, TextTransformer, Transformer, ViT, masks
from minivlm.nn.vit import patchify, unpatchify
from minivlm.train import load_checkpoint, save_checkpoint

# the smallest valid arguments of each constructor
VALID = {
    "MultiHeadAttention": (MultiHeadAttention, dict(dim=8, heads=2)),
    "MLP": (MLP, dict(dim=8, hidden=16)),
    "Block": (Block, dict(dim=8, heads=2)),
    "Block(cross)": (Block, dict(dim=8, heads=2, cross_attention=True, context_dim=6)),
    "Transformer": (Transformer, dict(dim=8, depth=1, heads=2)),
    "PatchEmbed": (PatchEmbed, dict(patch_size=4, channels=3, dim=8)),
    "ViT": (ViT, dict(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=3)),
    "TextTransformer": (TextTransformer, dict(vocab_size=10, max_len=8, dim=8, depth=1, heads=2)),
    "CLIPConfig": (CLIPConfig, dict(image_size=8, patch_size=4, vision_dim=8, vision_depth=1, vision_heads=2,
                                    vocab_size=20, context_length=8, text_dim=8, text_depth=1, text_heads=2,
                                    embed_dim=8, eos_id=2)),
}

INTS = {  # parameters that must be an int >= 1
    "MultiHeadAttention": ["dim", "heads", "context_dim"],
    "MLP": ["dim", "hidden"],
    "Block": ["dim", "heads"],
    "Block(cross)": ["context_dim"],
    "Transformer": ["dim", "depth", "heads"],
    "PatchEmbed": ["patch_size", "channels", "dim"],
    "ViT": ["image_size", "patch_size", "dim", "depth", "heads", "channels", "num_classes"],
    "TextTransformer": ["vocab_size", "max_len", "dim", "depth", "heads"],
    "CLIPConfig": ["image_size", "patch_size", "vision_dim", "vision_depth", "vision_heads", "vocab_size",
                   "context_length", "text_dim", "text_depth", "text_heads", "embed_dim"],
}
BAD_INTS = [0, -1, True, 2.0, "4"]

NUMBERS = {  # (parameter, bad values) per constructor
    "dropout": (["MultiHeadAttention", "MLP", "Block", "Transformer", "ViT", "TextTransformer", "CLIPConfig"],
                [-0.1, 1.0, 1.5, math.nan, True, "0.1"]),
    "mlp_ratio": (["Block", "Transformer", "ViT", "TextTransformer", "CLIPConfig"],
                  [0, -2.0, math.inf, math.nan, False, "4"]),
    "eps": (["Block", "Transformer", "ViT", "TextTransformer", "CLIPConfig"], [0, -1e-5, math.inf, math.nan, "1e-5"]),
    "init_temperature": (["CLIPConfig"], [0, -0.07, math.nan, math.inf]),
    "max_logit_scale": (["CLIPConfig"], [0, -100.0, math.nan, math.inf]),
}


def _build(kind, **override):
    factory, kwargs = VALID[kind]
    return factory(**{**kwargs, **override})


def _expect_named(excinfo, name, value):
    msg = str(excinfo.value)
    assert name in msg, msg
    assert repr(value) in msg, f"the message should show the bad value {value!r}: {msg}"


@pytest.mark.parametrize("kind", list(VALID))
def test_the_valid_arguments_build(kind):
    _build(kind)


@pytest.mark.parametrize("kind,name,value",
                         [(k, n, v) for k, names in INTS.items() for n in names for v in BAD_INTS],
                         ids=lambda x: repr(x) if not isinstance(x, str) else x)
def test_sizes_counts_heads_and_depths_must_be_positive_ints(kind, name, value):
    with pytest.raises((ValueError, TypeError), match=rf"{re.escape(name)} must be an int >= 1") as e:
        _build(kind, **{name: value})
    _expect_named(e, name, value)


@pytest.mark.parametrize("kind,name,value",
                         [(k, n, v) for n, (kinds, values) in NUMBERS.items() for k in kinds for v in values],
                         ids=lambda x: repr(x) if not isinstance(x, str) else x)
def test_dropouts_ratios_and_epsilons_must_be_numbers_in_range(kind, name, value):
    with pytest.raises((ValueError, TypeError), match=rf"{re.escape(name)} must be a number in") as e:
        _build(kind, **{name: value})
    _expect_named(e, name, value)


@pytest.mark.parametrize("kind,override,pattern", [
    ("MultiHeadAttention", dict(dim=10, heads=4), r"dim.*divisible by heads.*dim=10, heads=4"),
    ("Block", dict(dim=10, heads=4), r"dim.*divisible by heads.*dim=10, heads=4"),
    ("ViT", dict(dim=10, heads=4), r"dim.*divisible by heads.*dim=10, heads=4"),
    ("TextTransformer", dict(dim=10, heads=4), r"dim.*divisible by heads.*dim=10, heads=4"),
    ("CLIPConfig", dict(vision_dim=10, vision_heads=4), r"vision_dim=10 must be divisible by vision_heads=4"),
    ("CLIPConfig", dict(text_dim=6, text_heads=4), r"text_dim=6 must be divisible by text_heads=4"),
    ("ViT", dict(image_size=10, patch_size=4), r"image_size=10 must be divisible by patch_size=4"),
    ("Block", dict(mlp_ratio=0.01), r"mlp_ratio=0.01 leaves the MLP no hidden unit"),
    ("CLIPConfig", dict(eos_id=20), r"eos_id must lie in \[0, 19\], got 20"),
    ("CLIPConfig", dict(pad_id=-1), r"pad_id must be an int >= 0, got -1"),
    ("CLIPConfig", dict(pre_norm=1), r"pre_norm must be True or False, got 1"),
    ("CLIPConfig", dict(image_std=(0.5, 0.0, 0.5)), r"image_std \(G\) must be a number in \(0, inf\), got 0.0"),
    ("CLIPConfig", dict(image_mean=(0.5, math.nan, 0.5)), r"image_mean \(G\) must be a number.*got nan"),
    ("CLIPConfig", dict(image_mean=(0.5, 0.5)), r"image_mean must be 3 numbers"),
])
def test_sizes_that_do_not_fit_together(kind, override, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        _build(kind, **override)


def test_context_dim_none_means_dim_and_zero_is_rejected():
    assert MultiHeadAttention(8, 2).context_dim == 8  # None: self-attention width
    assert MultiHeadAttention(8, 2, context_dim=6).context_dim == 6
    with pytest.raises(ValueError, match="context_dim must be an int >= 1, got 0"):  # was silently 8
        MultiHeadAttention(8, 2, context_dim=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):  # was silently no head
        ViT(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=0)


@pytest.mark.parametrize("call,pattern", [
    (lambda: masks.causal(-1), r"t must be an int >= 0, got -1"),
    (lambda: masks.causal(2.0), r"t must be an int >= 0, got 2.0"),
    (lambda: masks.bidirectional(True), r"t must be an int >= 0, got True"),
    (lambda: masks.prefix(4, True), r"prefix_len must be an int >= 0, got True"),
    (lambda: masks.prefix(4, 1.5), r"prefix_len must be an int >= 0, got 1.5"),
    (lambda: masks.prefix(4, 5), r"prefix_len must lie in \[0, 4\], got 5"),
    (lambda: masks.prefix(-2, 0), r"t must be an int >= 0, got -2"),
], ids=["causal-neg", "causal-float", "bidirectional-bool", "prefix-bool", "prefix-float", "prefix-long",
        "prefix-t-neg"])
def test_mask_sizes(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("call,pattern", [
    (lambda: patchify(torch.rand(1, 3, 8, 8), 0), r"patch_size must be an int >= 1, got 0"),  # was ZeroDivisionError
    (lambda: patchify(torch.rand(1, 3, 8, 8), 4.0), r"patch_size must be an int >= 1, got 4.0"),
    (lambda: unpatchify(torch.rand(1, 4, 48), 4, channels=0), r"channels must be an int >= 1, got 0"),
], ids=["patchify-0", "patchify-float", "unpatchify-channels-0"])
def test_patch_helpers(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


# ----------------------------------------------------------------------------- dtypes

def _seeded(kind, **override):
    torch.manual_seed(0)
    return _build(kind, **override).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["vit", "vit.forward_features", "patch_embed", "mha.x", "mha.context", "block",
                                  "transformer", "clip.encode_image"])
def test_a_tensor_of_another_dtype_than_the_model_names_both(case, dtype):
    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, (1,))))
    images = torch.rand(2, 3, 8, 8, generator=g).to(dtype)
    tokens = torch.randn(2, 5, 8, generator=g)
    if case == "vit":
        call, name = lambda: _seeded("ViT")(images), "images"
    elif case == "vit.forward_features":
        call, name = lambda: _seeded("ViT").forward_features(images), "images"
    elif case == "patch_embed":
        call, name = lambda: _seeded("PatchEmbed")(images), "images"
    elif case == "mha.x":
        call, name = lambda: _seeded("MultiHeadAttention")(tokens.to(dtype)), "x"
    elif case == "mha.context":
        mha = _seeded("MultiHeadAttention", context_dim=6)
        call, name = lambda: mha(tokens, context=torch.randn(2, 3, 6, generator=g).to(dtype)), "context"
    elif case == "block":
        call, name = lambda: _seeded("Block")(tokens.to(dtype)), "x"
    elif case == "transformer":
        call, name = lambda: _seeded("Transformer")(tokens.to(dtype)), "x"
    else:
        model = CLIP(_build("CLIPConfig")).eval()
        if dtype != torch.float64:  # (images - mean) / std promotes half images to the float32 buffers: fine
            torch.testing.assert_close(model.encode_image(images), model.encode_image(images.float()),
                                       rtol=0.02, atol=0.02)
            return
        call, name = lambda: model.encode_image(images), "images"
    with pytest.raises(ValueError, match=rf"{name} must have the model's dtype torch.float32, got {dtype}"):
        call()


def test_integer_ids_and_float_images_are_still_required():
    text = _seeded("TextTransformer")
    with pytest.raises(ValueError, match="ids must be an integer tensor, got dtype torch.float32"):
        text(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="images must be a floating tensor, got dtype torch.uint8"):
        _seeded("ViT")(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_a_model_in_float64_takes_float64_input_and_agrees_with_float32():
    vit32 = _seeded("ViT")
    vit64 = _seeded("ViT").double()
    images = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(vit64(images.double()), vit32(images).double(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="images must have the model's dtype torch.float64, got torch.float32"):
        vit64(images)


def test_autocast_mixes_dtypes_without_an_error():
    vit = _seeded("ViT")
    images = torch.rand(3, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = vit(images)  # bf16 activations meet fp32 LayerNorm/Linear weights inside: that is the point
    torch.testing.assert_close(low.float(), vit(images), rtol=0.1, atol=0.1)


# ----------------------------------------------------------------------------- checkpoints

def _net(widths, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths, widths[1:])])


@pytest.mark.parametrize("widths,strict,pattern", [
    ((4, 6, 2), True, r"key '0.weight' has shape \(5, 4\), the model expects \(6, 4\)"),
    ((4, 5, 2), True, r"unexpected key '2.bias'"),  # the file's keys are sorted
    ((4, 5, 3, 2), True, r"missing key '2.weight'"),
    ((4, 6, 2), False, r"key '0.weight' has shape \(5, 4\), the model expects \(6, 4\)"),
], ids=["shape", "unexpected", "missing", "shape-not-strict"])
def test_a_checkpoint_that_does_not_fit_names_the_file_and_first_key(tmp_path, widths, strict, pattern):
    path = tmp_path / "run7.safetensors"
    save_checkpoint(path, _net((4, 5, 3, 2)) if widths == (4, 5, 2) else _net((4, 5, 2)))
    model = _net(widths, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"checkpoint .*run7.safetensors does not fit this Sequential.*{pattern}"):
        load_checkpoint(path, model, strict=strict)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "nothing may be half-loaded"


def test_a_non_strict_load_still_skips_missing_keys(tmp_path):
    save_checkpoint(tmp_path / "a.safetensors", _net((4, 5, 2), seed=3))
    model = _net((4, 5, 2, 3), seed=4)
    load_checkpoint(tmp_path / "a.safetensors", model, strict=False)
    torch.testing.assert_close(model[0].weight, _net((4, 5, 2), seed=3)[0].weight)


def test_an_optimizer_that_does_not_fit_names_the_file(tmp_path):
    net = _net((4, 5, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "a.safetensors", net, opt)
    other = _net((4, 5, 2))
    two_groups = torch.optim.SGD([{"params": other[0].parameters()}, {"params": [other[1].weight]}], lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer state in checkpoint .*a.safetensors does not fit"):
        load_checkpoint(tmp_path / "a.safetensors", other, two_groups)


# ----------------------------------------------------------------------------- zoo manifests

def _edited_clip(tmp_path, edit):
    from minivlm import zoo

    for name in ("clip.safetensors", "clip.json"):
        shutil.copy(zoo.WEIGHTS_DIR / name, tmp_path / name)
    info = json.loads((tmp_path / "clip.json").read_text())
    edit(info)
    (tmp_path / "clip.json").write_text(json.dumps(info))
    return zoo


def _set(*keys, value):
    def edit(info):
        d = info
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit,pattern", [
    (_set("name", value="vilt"), r"clip.json: 'name' is 'vilt', expected 'clip'"),
    (_set("file", value="vilt.safetensors"), r"clip.json: 'file' is 'vilt.safetensors', expected 'clip.safetensors'"),
    (_set("bytes", value=123), r"clip.json: 'bytes' is 123, the weights file has \d+"),
    (_set("parameters", value=1), r"clip.json: 'parameters' is 1, the model its config builds has \d+"),
    (_set("config", value=[1, 2]), r"clip.json: 'config' must be a JSON object, got list"),
    (_set("config", "vision_width", value=64), r"clip.json: its 'config' does not build a 'clip' model.*vision_width"),
    (_set("config", "dropout", value=1.5), r"clip.json: its 'config' does not build.*dropout must be a number in"),
    (_set("config", "text_depth", value=3), r"clip.json: config key 'text_depth' is 3, but the recipe trained with 2"),
    (_set("config", "eos_id", value=3), r"clip.json: config key 'eos_id' is 3, but the course tokenizer has 2"),
    (_set("config", "vocab_size", value=604), r"clip.json: config key 'vocab_size' is 604, but the course tokenizer"),
    (_set("tokenizer_vocab_size", value=9), r"clip.json: 'tokenizer_vocab_size' is 9, but the course tokenizer"),
    # fields that change no weight's shape, caught by the config the build saved inside the weights file
    (_set("config", "eps", value=1e-6), r"clip.json: config key 'eps' is 1e-06, but the weights were trained and "
                                        r"saved with 1e-05"),
    (_set("config", "act", value="quick_gelu"), r"clip.json: config key .act. is .quick_gelu., but the weights were "
                                                 r"trained"),
], ids=["name", "file", "bytes", "parameters", "config-list", "config-unknown-key", "config-bad-value",
        "config-vs-recipe", "eos_id", "vocab_size", "tokenizer_vocab_size", "config-eps", "config-act"])
def test_a_zoo_manifest_with_edited_fields_names_the_file_and_field(tmp_path, edit, pattern):
    zoo = _edited_clip(tmp_path, edit)
    with pytest.raises(ValueError, match=pattern):
        zoo.load("clip", weights_dir=tmp_path)


def test_an_edited_config_whose_shapes_no_longer_fit_names_the_key(tmp_path):
    def wider_embedding(info):
        info["config"]["embed_dim"] = 32
        info["recipe"]["config"].pop("embed_dim", None)  # an edit made consistently in both places
    zoo = _edited_clip(tmp_path, wider_embedding)
    with pytest.raises(ValueError, match=r"clip.safetensors does not fit.*key 'image_projection.weight' has shape "
                                         r"\(64, 64\), the model expects \(32, 64\)"):
        zoo.load("clip", weights_dir=tmp_path)


# ----------------------------------------------------------------------------- the encoder configs' shared checks
def _encoder_configs() -> dict:
    from minivlm.models.albef import ALBEFConfig
    from minivlm.models.beit3 import BEiT3Config, VisualTokenizerConfig
    from minivlm.models.blip import BLIPConfig
    from minivlm.models.coca import CoCaConfig
    from minivlm.models.prefixlm import PrefixLMConfig
    from minivlm.models.vilt import ViLTConfig
    from minivlm.models.vlmo import VLMoConfig

    return {c.__name__: c for c in (ALBEFConfig, BLIPConfig, VLMoConfig, BEiT3Config, CoCaConfig, ViLTConfig,
                                    PrefixLMConfig, VisualTokenizerConfig)}


ENCODER_CONFIGS = ["ALBEFConfig", "BLIPConfig", "VLMoConfig", "BEiT3Config", "CoCaConfig", "ViLTConfig",
                   "PrefixLMConfig", "VisualTokenizerConfig"]


@pytest.mark.parametrize("kind", ENCODER_CONFIGS)
@pytest.mark.parametrize("kw, error, match", [
    (dict(heads=0), ValueError, r"heads must be an int >= 1, got 0"),
    (dict(patch_size=4.0), ValueError, r"patch_size must be an int >= 1, got 4\.0"),
    (dict(image_size=30), ValueError, r"image_size=30 must be divisible by patch_size=\d+"),
    (dict(dim=30, heads=4), ValueError, r"dim=30 must be divisible by heads=4"),
    (dict(act="swish"), ValueError, r"act must be one of .*got 'swish'"),
    (dict(mlp_ratio=0), ValueError, r"mlp_ratio must be a number in \(0, inf\], got 0"),
    (dict(mlp_ratio=math.nan), ValueError, r"mlp_ratio must be a number in \(0, inf\], got nan"),
    (dict(eps=0.0), ValueError, r"eps must be a number in \(0, 1\.0\], got 0\.0"),
    (dict(image_std=(0.5, 0.0, 0.5)), ValueError, r"image_mean/image_std must be 3 values \(std > 0\)"),
], ids=["heads", "patch_size", "image_size", "dim", "act", "mlp_ratio", "mlp_ratio-nan", "eps", "image_std"])
def test_every_encoder_config_names_a_bad_shared_field(kind, kw, error, match):
    with pytest.raises(error, match=match):
        _encoder_configs()[kind](**kw)


@pytest.mark.parametrize("kind, kw, error, match", [
    ("ALBEFConfig", dict(distill=1), TypeError, r"distill must be True or False, got 1"),
    ("BLIPConfig", dict(text_norm_first="yes"), TypeError, r"text_norm_first must be True or False, got 'yes'"),
    ("CoCaConfig", dict(patch_bias=None), TypeError, r"patch_bias must be True or False, got None"),
    ("BLIPConfig", dict(dec_id=603), ValueError, r"dec_id must lie in \[0, 602\], got 603"),
    ("CoCaConfig", dict(bos_id=True), ValueError, r"bos_id must lie in \[0, 602\], got True"),
    ("PrefixLMConfig", dict(eos_id=-1), ValueError, r"eos_id must lie in \[0, 602\], got -1"),
    ("ViLTConfig", dict(dropout=1.0), ValueError, r"dropout must be a number in \[0, 1\), got 1\.0"),
    ("VLMoConfig", dict(temp=0.0), ValueError, r"temp must be a number in \(0\.0, 1\.0\], got 0\.0"),
    ("BEiT3Config", dict(answers=("yes", "yes")), ValueError, r"answers must be at least 2 distinct strings"),
])
def test_encoder_config_flags_ids_and_ranges_are_named(kind, kw, error, match):
    with pytest.raises(error, match=match):
        _encoder_configs()[kind](**kw)


def test_encoder_configs_take_every_token_id_from_the_course_tokenizer():
    from minivlm.data.tokenizer import Tokenizer

    tok = Tokenizer.from_world()
    configs = _encoder_configs()
    blip = configs["BLIPConfig"]()
    assert (blip.vocab_size, blip.pad_id, blip.mask_id, blip.bos_id, blip.eos_id, blip.enc_id, blip.dec_id) == (
        len(tok), tok.pad_id, tok.mask_id, tok.bos_id, tok.eos_id, tok.id("<extra_0>"), tok.id("<extra_1>"))
    assert len({blip.pad_id, blip.mask_id, blip.bos_id, blip.eos_id, blip.enc_id, blip.dec_id}) == 6
    coca = configs["CoCaConfig"](bos_id=7)  # a given id is kept, the others filled
    assert (coca.bos_id, coca.eos_id, coca.pad_id) == (7, tok.eos_id, tok.pad_id)
    vilt = configs["ViLTConfig"](vocab_size=50, pad_id=1, mask_id=2)  # nothing left to fill: no tokenizer needed
    assert (vilt.vocab_size, vilt.pad_id, vilt.mask_id) == (50, 1, 2)
