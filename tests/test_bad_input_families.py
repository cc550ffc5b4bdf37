"""Bad input by family (issue 14): sizes, counts, heads and depths that are zero, negative, bool,
float or text; dropouts, MLP ratios and epsilons out of range; tensors of the wrong dtype; a
checkpoint or a zoo manifest that does not fit the model. Each must fail at the public boundary
with a ValueError/TypeError that names the parameter and the value, never from inside torch.
Issue 28 (the second half): a string where strings are expected, sequences that do not line up,
NaN, ids outside the logits, a loss over nothing, an empty batch to caption, a batch size of 0,
a batch missing keys, a device torch cannot read, the zoo's weights_dir and manifests."""
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


# ============================================================================= issue 28
# Bad input that used to return a wrong number silently, or fail with a message naming nothing,
# by family, each probed across the public functions of models, generate, eval, losses and nn
# (the commands' families are in tests/test_commands_keep_work.py).

def _tiny_models() -> dict:
    """Builders of the smallest model of each kind (seeded, eval mode), by name."""
    from minivlm.models.albef import ALBEF, ALBEFConfig, ALBEFPretrainer
    from minivlm.models.beit3 import BEiT3, BEiT3Config, VisualTokenizer, VisualTokenizerConfig
    from minivlm.models.blip import BLIP, BLIPConfig, BLIPPretrainer
    from minivlm.models.coca import CoCa, CoCaConfig
    from minivlm.models.frozen import PrefixConfig, PrefixVLM
    from minivlm.models.gpt import GPT, GPTConfig
    from minivlm.models.prefixlm import PrefixLM, PrefixLMConfig
    from minivlm.models.question_only import QuestionOnly, QuestionOnlyConfig
    from minivlm.models.vilt import ViLT, ViLTConfig
    from minivlm.models.vlmo import VLMo, VLMoConfig

    def clip16():
        return CLIP(CLIPConfig(image_size=16, patch_size=4, vision_dim=32, vision_depth=1, vision_heads=2,
                               text_dim=32, text_depth=1, text_heads=2, embed_dim=24, context_length=16))

    builders = {
        "clip": clip16,
        "gpt": lambda: GPT(GPTConfig(dim=32, depth=1, heads=2, max_len=40)),
        "vilt": lambda: ViLT(ViLTConfig(dim=32, depth=1, heads=4, patch_size=8, max_text_len=32)),
        "albef": lambda: ALBEFPretrainer(ALBEF(ALBEFConfig(dim=32, heads=2, vision_depth=1, text_depth=1,
                                                           fusion_depth=1, embed_dim=16, queue_size=32))),
        "vlmo": lambda: VLMo(VLMoConfig(dim=32, depth=2, vl_depth=1, heads=2, patch_size=8, embed_dim=16)),
        "blip": lambda: BLIP(BLIPConfig(image_size=16, patch_size=8, dim=32, vision_depth=1, text_depth=2, heads=2,
                                        embed_dim=16, queue_size=8, max_text_len=16)),
        "coca": lambda: CoCa(CoCaConfig(image_size=16, patch_size=8, dim=32, vision_depth=1, unimodal_depth=1,
                                        multimodal_depth=1, heads=2, embed_dim=16, caption_queries=4, max_text_len=16)),
        "prefixlm": lambda: PrefixLM(PrefixLMConfig(image_size=16, patch_size=8, dim=32, depth=2, heads=2,
                                                    max_text_len=16)),
        "beit3": lambda: BEiT3(BEiT3Config(dim=16, depth=2, vl_depth=1, heads=2, embed_dim=16, codebook_size=8)),
        "vqkd": lambda: VisualTokenizer(VisualTokenizerConfig(dim=16, depth=1, heads=2, code_dim=8, codebook_size=8,
                                                              teacher_dim=16)),
        "prefixvlm": lambda: PrefixVLM(clip16(), GPT(GPTConfig(dim=32, depth=1, heads=2, max_len=40)),
                                       PrefixConfig("clipcap", n_prefix=3, hidden=16, mapper_dim=16, mapper_heads=2)),
        "question_only": lambda: QuestionOnly(QuestionOnlyConfig(dim=16, hidden=16)),
    }
    builders["blip_trainer"] = lambda: BLIPPretrainer(builders["blip"]())
    return builders


def _tiny(name: str):
    torch.manual_seed(0)
    return _tiny_models()[name]().eval()


def _image_size(model) -> int:
    config = getattr(model, "config", None) or model.model.config
    return getattr(config, "image_size", 16)


# ----------------------------------------------------------------------------- a string where strings are expected
def _string_probes() -> dict:
    from minivlm.data import ShapesBench
    from minivlm.eval import answer_prior, class_prompts, true_caption_rate
    from minivlm.models.beit3 import BEiT3Config
    from minivlm.models.blip import BLIPPretrainer
    from minivlm.models.frozen import answer_figures, caption_qa_set
    from minivlm.models.gpt import world_perplexity
    from minivlm.models.question_only import QuestionOnlyConfig
    from minivlm.models.vilt import ViLTConfig
    from minivlm.nn.multiway import MoMEBlock, Multiway

    def images(model, n=2):
        return torch.rand(n, 3, _image_size(model), _image_size(model))

    return {  # name -> (call, the argument it must name)
        "ViLTConfig.answers": (lambda: ViLTConfig(answers="yes"), "answers"),
        "BEiT3Config.answers": (lambda: BEiT3Config(answers="yes"), "answers"),
        "QuestionOnlyConfig.answers": (lambda: QuestionOnlyConfig(answers="yes"), "answers"),
        "world_perplexity": (lambda: world_perplexity(_tiny("gpt"), "a red circle. a blue square."), "documents"),
        "answer_figures.kinds": (lambda: answer_figures(["red"], ["red"], kinds="color"), "kinds"),
        "answer_figures.predictions": (lambda: answer_figures("red", ["red"], kinds=["color"]), "predictions"),
        "answer_prior": (lambda: answer_prior("ab", ["color", "shape"]), "answers"),
        "class_prompts": (lambda: class_prompts("red circle"), "class_names"),
        "true_caption_rate": (lambda: true_caption_rate("a", ShapesBench(image_size=16).captioning(1)["scenes"]),
                              "captions"),
        "BEiT3.answer": (lambda: _tiny("beit3").answer(images(_tiny("beit3"), 25), "what shape is the object?"),
                         "questions"),
        "PrefixVLM.complete": (lambda: _tiny("prefixvlm").complete(images(_tiny("prefixvlm"), 1), "a", 2, stop=None),
                               "prompts"),
        "PrefixVLM.ask": (lambda: _tiny("prefixvlm").ask(images(_tiny("prefixvlm"), 1), "what color?"), "questions"),
        "BLIPPretrainer.losses": (lambda: BLIPPretrainer(_tiny("blip"), losses="lm"), "losses"),
        "MoMEBlock.experts": (lambda: MoMEBlock(8, 2, experts="vision"), "experts"),
        "Multiway.names": (lambda: Multiway([nn.Linear(2, 2), nn.Linear(2, 2)], names="ab"), "names"),
        "caption_qa_set.kinds": (lambda: caption_qa_set(__import__("minivlm.data.pairs", fromlist=["x"])
                                                        .image_text_pairs(4, 0.0, seed=0), kinds="color"), "kinds"),
    }


@pytest.mark.parametrize("case", list(_string_probes()))
def test_a_string_where_a_list_of_strings_is_expected_is_a_type_error(case):
    call, name = _string_probes()[case]
    with pytest.raises(TypeError, match=rf"{name} must be a list of strings, got one str"):
        call()


# ----------------------------------------------------------------------------- sequences that must line up
def _set_probes() -> dict:
    from minivlm.data import ShapesBench
    from minivlm.eval import evaluate_hard_itm, evaluate_itm, evaluate_vqa
    from minivlm.models.frozen import answer_figures

    bench = ShapesBench(image_size=32, seed=0)
    itm, vqa, hard = bench.itm(3), bench.vqa(3), bench.hard_itm(3)
    return {
        "evaluate_itm one label": (lambda: evaluate_itm(_tiny("vilt"), {**itm, "labels": torch.tensor([1])}),
                                   r"data\['labels'\] must hold a 0 or 1 per caption \(3\), got 1 labels"),
        "evaluate_itm label 2": (lambda: evaluate_itm(_tiny("vilt"), {**itm, "labels": torch.tensor([0, 2, 1])}),
                                 r"data\['labels'\] must hold a 0 or 1 per caption"),
        "evaluate_itm float labels": (lambda: evaluate_itm(_tiny("vilt"), {**itm, "labels": torch.ones(3)}),
                                      r"data\['labels'\] must be an integer tensor"),
        "evaluate_vqa answers": (lambda: evaluate_vqa(_tiny("vilt"), {**vqa, "answers": vqa["answers"][:1]}),
                                 r"must have the same length, got .*data\['answers'\]=1"),
        "evaluate_hard_itm kinds": (lambda: evaluate_hard_itm(_tiny("vilt"), {**hard, "kinds": hard["kinds"][:2]}),
                                    r"must have the same length, got .*data\['kinds'\]=2"),
        "answer_figures kinds": (lambda: answer_figures(["red", "blue", "star"], ["red", "blue", "star"], ["color"]),
                                 r"predictions, answers, kinds must have the same length, got predictions=3, "
                                 r"answers=3, kinds=1"),
    }


@pytest.mark.parametrize("case", list(_set_probes()))
def test_sequences_that_must_line_up_are_checked_not_broadcast_or_truncated(case):
    call, pattern = _set_probes()[case]
    with pytest.raises(ValueError, match=pattern):
        call()


# ----------------------------------------------------------------------------- NaN and ids outside the vocabulary
def _logits_fn(value=None, vocab=10):
    def next_logits(ids, rows):
        out = torch.randn(len(ids), vocab, generator=torch.Generator().manual_seed(ids.shape[1]))
        if value is not None:
            out[0, 3] = value
        return out
    return next_logits


DECODINGS = {"greedy": {}, "beam": dict(num_beams=3), "sample": dict(do_sample=True, top_k=4)}


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_generate_rejects_logits_that_are_nan_or_plus_inf(decoding, value):
    from minivlm.generate import generate

    prompt = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"next_logits returned NaN or \+inf logits in 1 of \d rows"):
        generate(_logits_fn(value), prompt, 3, 1, **DECODINGS[decoding])
    generate(_logits_fn(-math.inf), prompt, 3, 1, **DECODINGS[decoding])  # a banned token is fine


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("name, kw", [("eos_id", dict(eos_id=99)), ("pad_id", dict(eos_id=1, pad_id=10))])
def test_generate_rejects_token_ids_outside_the_logits(decoding, name, kw):
    from minivlm.generate import generate

    value = kw[name]
    with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 9\] \(next_logits returns 10 logits per row\), "
                                         rf"got {value}"):
        generate(_logits_fn(), torch.zeros(2, 1, dtype=torch.long), 3, **kw, **DECODINGS[decoding])


@pytest.mark.parametrize("call", ["forward", "restart_dead"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_vector_quantizer_rejects_non_finite_vectors(call, value):
    from minivlm.nn.quantize import VectorQuantizer

    vq = VectorQuantizer(4, 3)
    z = torch.randn(2, 5, 3)
    z[1, 2, 0] = value
    with pytest.raises(ValueError, match=r"z must be finite, got 1 NaN/inf value\(s\) of 30"):
        vq(z) if call == "forward" else vq.restart_dead(z, torch.zeros(4, dtype=torch.long))


def test_cider_d_needs_a_corpus():
    from minivlm.eval import cider_d

    with pytest.raises(ValueError, match="CIDEr-D needs a corpus of at least 2 images.*got .* for 1"):
        cider_d(["a red circle"], [["a red circle"]])
    perfect, _ = cider_d(["a red circle", "two blue squares"], [["a red circle"], ["two blue squares"]])
    assert perfect == pytest.approx(7.5)  # 10 × (1 + 1 + 1 + 0) / 4: three words hold no 4-gram


# ----------------------------------------------------------------------------- a loss over nothing
def _empty_losses() -> dict:
    from minivlm.losses import itm_loss, lm_loss, mlm_loss, multi_positive_itc, soft_cross_entropy
    from minivlm.models.beit3 import masked_token_loss

    def logits(*shape):
        return torch.randn(*shape, requires_grad=True)

    return {  # name -> () -> (loss, the logits it read)
        "lm_loss all padding": lambda: (lambda x: (lm_loss(x, torch.zeros(2, 4, dtype=torch.long),
                                                           torch.zeros(2, 4, dtype=torch.bool)), x))(logits(2, 4, 7)),
        "lm_loss one real token": lambda: (lambda x: (lm_loss(x, torch.zeros(2, 4, dtype=torch.long),
                                                              torch.tensor([[1, 0, 0, 0]] * 2).bool()), x))(
            logits(2, 4, 7)),
        "lm_loss empty batch": lambda: (lambda x: (lm_loss(x, torch.zeros(0, 4, dtype=torch.long)), x))(logits(0, 4, 7)),
        "mlm_loss nothing chosen": lambda: (lambda x: (mlm_loss(x, torch.full((2, 4), -100)), x))(logits(2, 4, 7)),
        "itm_loss empty batch": lambda: (lambda x: (itm_loss(x, torch.zeros(0, dtype=torch.long)), x))(logits(0, 2)),
        "soft_cross_entropy empty": lambda: (lambda x: (soft_cross_entropy(x, torch.zeros(0, 5)), x))(logits(0, 5)),
        "multi_positive_itc empty": lambda: (lambda x: (multi_positive_itc(x, torch.zeros(0, 0, dtype=torch.bool)),
                                                        x))(logits(0, 0)),
        "masked_token_loss nothing chosen": lambda: (lambda x: (masked_token_loss(
            x, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool)), x))(logits(2, 4, 7)),
    }


@pytest.mark.parametrize("case", list(_empty_losses()))
def test_a_loss_over_nothing_is_zero_with_a_gradient_path(case):
    """The rule of minivlm.losses' docstring: 0, attached to the graph, never NaN."""
    loss, logits = _empty_losses()[case]()
    assert loss.shape == () and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_a_contrastive_loss_over_nothing_is_an_error():
    from minivlm.losses import clip_loss

    with pytest.raises(ValueError, match="at least 2 pairs.*B=0"):
        clip_loss(torch.zeros(0, 4), torch.zeros(0, 4), 10.0)


def test_a_training_step_on_a_batch_where_masking_chose_nothing_goes_on():
    """ViLT's pretraining step adds MLM on a batch where masking chose no word: finite, trainable."""
    from minivlm.data.pairs import pretrain_batches
    from minivlm.models.vilt import pretrain_step

    model = _tiny("vilt").train()
    batch = pretrain_batches(4, seed=0, image_size=32)(0)
    batch["mlm_labels"] = torch.full_like(batch["mlm_labels"], -100)
    out = pretrain_step(model, {**batch, "itm_ids": batch["ids"], "itm_mask": batch["attention_mask"],
                                "itm_labels": torch.ones(4, dtype=torch.long)})
    assert out["mlm"].item() == 0.0 and math.isfinite(out["loss"].item())
    out["loss"].backward()


# ----------------------------------------------------------------------------- captioning an empty batch
CAPTIONERS = ["blip", "coca", "prefixlm", "beit3", "prefixvlm"]


@pytest.mark.parametrize("name", CAPTIONERS + ["captions_of"])
def test_every_captioner_rejects_an_empty_batch_alike(name):
    from minivlm.models.coca import captions_of

    model = _tiny("coca" if name == "captions_of" else name)
    size = _image_size(model)
    call = (lambda: captions_of(model, torch.rand(0, 3, size, size))) if name == "captions_of" else \
        (lambda: model.caption(torch.rand(0, 3, size, size)))
    with pytest.raises(ValueError, match=rf"images must hold at least one image to caption, got shape \(0, 3, "
                                         rf"{size}, {size}\)"):
        call()
    assert len(model.caption(torch.rand(1, 3, size, size), max_len=4)) == 1


# ----------------------------------------------------------------------------- a batch size of zero
def _batch_size_probes() -> dict:
    from minivlm.eval import itc_similarity, zero_shot_classifier
    from minivlm.models.coca import captions_of
    from minivlm.models.gpt import world_perplexity

    images = torch.rand(2, 3, 16, 16)
    return {
        "world_perplexity": lambda: world_perplexity(_tiny("gpt"), ["a red circle ."], batch_size=0),
        "BEiT3.answer": lambda: _tiny("beit3").answer(torch.rand(2, 3, 32, 32), ["what?", "why?"], batch_size=0),
        "captions_of": lambda: captions_of(_tiny("coca"), images, batch_size=0),
        "BLIP.caption": lambda: _tiny("blip").caption(images, batch_size=0),
        "BLIP.match_probability": lambda: _tiny("blip").match_probability(images, ["a", "b"], batch_size=0),
        "itc_similarity": lambda: itc_similarity(_tiny("clip"), images, ["a", "b"], batch_size=0),
        "zero_shot_classifier": lambda: zero_shot_classifier(_tiny("clip"), ["red circle"], batch_size=0),
    }


@pytest.mark.parametrize("case", list(_batch_size_probes()))
def test_a_batch_size_of_zero_is_named(case):
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):  # not range()'s message
        _batch_size_probes()[case]()


# ----------------------------------------------------------------------------- a batch missing a key
def _step_probes() -> dict:
    from minivlm.models import albef, beit3, blip, clip, coca, frozen, gpt, prefixlm, question_only, vilt, vlmo

    return {  # step -> model
        "clip_step": (clip.clip_step, "clip"), "lm_step": (gpt.lm_step, "gpt"),
        "vilt.pretrain_step": (vilt.pretrain_step, "vilt"), "vilt.vqa_step": (vilt.vqa_step, "vilt"),
        "albef.pretrain_step": (albef.pretrain_step, "albef"),
        "vlmo.mim_step": (vlmo.mim_step, "vlmo"), "vlmo.text_mlm_step": (vlmo.text_mlm_step, "vlmo"),
        "vlmo.pair_step": (vlmo.pair_step, "vlmo"), "blip.pretrain_step": (blip.pretrain_step, "blip_trainer"),
        "coca_step": (coca.coca_step, "coca"), "prefixlm_step": (prefixlm.prefixlm_step, "prefixlm"),
        "beit3.vqkd_step": (beit3.vqkd_step, "vqkd"), "beit3.mdm_step": (beit3.mdm_step, "beit3"),
        "beit3.vqa_step": (beit3.vqa_step, "beit3"), "beit3.retrieval_step": (beit3.retrieval_step, "beit3"),
        "beit3.caption_step": (beit3.caption_step, "beit3"), "prefix_step": (frozen.prefix_step, "prefixvlm"),
        "caption_distill_step": (frozen.caption_distill_step, "prefixvlm"),
        "question_only_step": (question_only.question_only_step, "question_only"),
    }


@pytest.mark.parametrize("case", list(_step_probes()))
def test_every_step_names_the_keys_a_batch_lacks(case):
    step, name = _step_probes()[case]
    model = _tiny(name)
    size = _image_size(model)
    with pytest.raises(ValueError, match=r"^batch (is missing \[.*\].*expected keys|must be a dict with)") as e:
        step(model, {"images": torch.rand(2, 3, size, size), "positives": torch.eye(2, dtype=torch.bool)})
    assert "KeyError" not in repr(e.value.__context__)
    with pytest.raises((TypeError, ValueError), match="batch must be a dict"):
        step(model, [torch.rand(2, 3, size, size)])


# ----------------------------------------------------------------------------- a device torch cannot read
@pytest.mark.parametrize("case", ["fit", "zoo.load", "bench_clip"])
@pytest.mark.parametrize("device, error", [("gpu", ValueError), (3.0, TypeError)])
def test_a_device_that_is_not_one_is_named(case, device, error):
    from minivlm import benchmarks, zoo
    from minivlm.train import fit

    calls = {"fit": lambda: fit(nn.Linear(2, 2), lambda m, b: {"loss": m.weight.sum()}, lambda i: None, 1,
                                device=device, progress=False),
             "zoo.load": lambda: zoo.load("clip", device=device),
             "bench_clip": lambda: benchmarks.bench_clip(device=device)}
    with pytest.raises(error, match=rf"device must .*got .*{re.escape(repr(device))}"):
        calls[case]()


def test_the_bench_command_reports_a_bad_device(capsys):
    from minivlm import cli

    assert cli.main(["bench", "clip", "--device", "gpu", "--repeats", "1"]) == 2
    assert "error: device must name a torch device such as 'cpu', 'cuda', 'cuda:0' or 'mps', got 'gpu'" \
        in capsys.readouterr().err


# ----------------------------------------------------------------------------- the zoo: weights_dir and manifests
def _zoo_copy(tmp_path, names):
    from minivlm import zoo

    for name in names:
        for ext in ("json", "safetensors"):
            shutil.copy(zoo.WEIGHTS_DIR / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
    return zoo


def test_a_model_on_other_entries_loads_them_from_weights_dir(tmp_path):
    zoo = _zoo_copy(tmp_path, ["clipcap", "clip", "llm"])
    model = zoo.load("clipcap", weights_dir=tmp_path)  # a full copy loads
    assert type(model).__name__ == "PrefixVLM"
    with open(tmp_path / "clip.safetensors", "r+b") as f:  # the folder's clip, not the package's, is read
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'clip.safetensors'))} is corrupt or stale"):
        zoo.load("clipcap", weights_dir=tmp_path)
    (tmp_path / "clip.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "clip.json"))) as e:
        zoo.load("clipcap", weights_dir=tmp_path)
    assert "out_dir=" in str(e.value) and "minivlm zoo build" not in str(e.value), "the hint must build into that folder"
    assert zoo.load("clip").config.embed_dim  # the package's own entries are read again after


@pytest.mark.parametrize("text", ['{"name": "clip", "sha2', "", "[" * 100_000], ids=["truncated", "empty", "deep"])
def test_a_manifest_that_is_not_json_names_its_path(tmp_path, text):
    zoo = _zoo_copy(tmp_path, ["clip"])
    (tmp_path / "clip.json").write_text(text)
    with pytest.raises(ValueError, match=rf"manifest {re.escape(str(tmp_path / 'clip.json'))} is not valid JSON"):
        zoo.load("clip", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="is not valid JSON"):
        zoo.manifest("clip", tmp_path)


@pytest.mark.parametrize("fn", ["fact_recall", "kshot_figures"])
@pytest.mark.parametrize("items, error", [("a red circle", TypeError), ([], ValueError), (["a red circle"], TypeError)],
                         ids=["string", "empty", "strings"])
def test_recall_and_kshot_items_must_be_their_items(fn, items, error):
    import minivlm.models.gpt as gpt
    from minivlm.data.incontext import kshot_items
    from minivlm.data.worldtext import recall_items

    model = gpt.GPT(gpt.GPTConfig(dim=32, depth=1, heads=2, max_len=40))
    with pytest.raises(error, match="items must"):
        getattr(gpt, fn)(model, items)
    with pytest.raises(TypeError, match="RecallItem" if fn == "fact_recall" else "ShotItem"):
        wrong = kshot_items("attribute", 1, 1) if fn == "fact_recall" else recall_items()[:1]
        getattr(gpt, fn)(model, wrong)
