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
