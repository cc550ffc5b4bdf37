"""Load a Hugging Face `transformers` BLIP into our from-scratch BLIP (chapter 06).

transformers keeps BLIP's two halves as two models:

    BlipForConditionalGeneration   vision_model + text_decoder (causal self-attention, cross-
                                   attention, LM head): captions, our "decoder" mode
    BlipForImageTextRetrieval      vision_model + text_encoder (bidirectional self-attention,
                                   cross-attention) + vision_proj, text_proj, itm_head: our
                                   "text" (ITC) and "encoder" (ITM) modes

Our BLIP holds both in one MED Transformer: the encoder and decoder share every weight but the
self-attention (`attn`/`norm1` for the encoder, `attn_dec`/`norm1_dec` for the decoder). So
`blip_from_hf` fills the half the given model has and leaves the other half at its random
initialisation: load a captioner to caption, a retrieval model to match and retrieve.

With internet access a learner can caption real photos through the from-scratch model
(the tests never download anything; they check the copy on tiny random models):

    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from transformers import BlipForConditionalGeneration, BlipProcessor
    from minivlm.models.blip_hf import blip_from_hf

    name = "Salesforce/blip-image-captioning-base"
    hf = BlipForConditionalGeneration.from_pretrained(name)
    tokenizer = BlipProcessor.from_pretrained(name).tokenizer      # BERT's WordPiece + [DEC]
    model = blip_from_hf(hf, tokenizer=tokenizer).eval()
    size = model.config.image_size                                 # 384
    photo = Image.open("photo.jpg").convert("RGB").resize((size, size), Image.BICUBIC)
    images = pil_to_tensor(photo)[None].float() / 255              # (1, 3, 384, 384) in [0, 1]
    print(model.caption(images, max_len=20))                       # greedy, from [DEC]

The model normalises the [0, 1] images itself with the config's image_mean / image_std
(OpenAI CLIP's statistics, which BLIP's image processor uses). For text inputs (ITM, ITC) pass
token ids made by transformers' BertTokenizer ("[CLS] words [SEP]"): the course tokenizer's
vocabulary is not BERT's.

Special ids. transformers' BLIP text config names pad_token_id, sep_token_id (ends a caption:
our eos_id) and bos_token_id, which is BLIP's [DEC] (30522: the decoder's first token, our
dec_id); its eos_token_id (2) is not used by BLIP. Our config also needs [CLS] (bos_id, the
unimodal text encoder's first token), [MASK] (mask_id; BLIP has no masked-LM loss, it is only
required by the config) and [ENC] (enc_id). transformers' config has none of them, so unless
given they are read off BERT's vocabulary layout: [CLS] 101, [SEP] 102, [MASK] 103 are
consecutive (bos_id = sep - 1, mask_id = sep + 1), and BLIP's tokenizer appends [DEC] 30522 and
then [ENC] 30523 to BERT's 30522 tokens (enc_id = dec + 1, or [CLS] when [DEC] is the last id).
This only decides which ids our `with_first_token` writes; transformers' retrieval model itself
uses the ids it is given unchanged.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from einops import rearrange

from minivlm.models.blip import BLIP, BLIPConfig

KINDS = {"BlipForConditionalGeneration": "decoder", "BlipForImageTextRetrieval": "encoder"}
# transformers' activation names → ours (the same functions)
HF_TO_OUR_ACT = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}
# OpenAI CLIP's statistics: what BLIP's image processor normalises with
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# our parameters a model of each kind has no weights for: they keep their initialisation
LEFT_AT_INIT = {
    "decoder": r"blocks\.\d+\.(attn|norm1)\.|image_projection\.|text_projection\.|itm_head\.|log_scale$",
    "encoder": r"blocks\.\d+\.(attn_dec|norm1_dec)\.|lm_transform\.|lm_norm\.|lm_bias$|log_scale$",
}


def model_kind(model) -> str:
    """"decoder" for a BlipForConditionalGeneration, "encoder" for a BlipForImageTextRetrieval
    (by class name: transformers is never imported here); TypeError for anything else."""
    for cls in type(model).__mro__:
        if cls.__name__ in KINDS:
            return KINDS[cls.__name__]
    raise TypeError(f"blip_from_hf takes a transformers BlipForConditionalGeneration (captions) or "
                    f"BlipForImageTextRetrieval (ITC, ITM), got {type(model).__name__}")


def _square(name: str, value, problems: list) -> int:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or pair[0] != pair[1]:
        problems.append(f"{name} must be square, got {value!r}")
    return int(pair[0])


def config_from_hf(hf_config, image_mean: Sequence[float] = OPENAI_MEAN, image_std: Sequence[float] = OPENAI_STD,
                   bos_id: int | None = None, mask_id: int | None = None, enc_id: int | None = None) -> BLIPConfig:
    """Our BLIPConfig for a transformers BlipConfig (see the module docstring for the special ids).
    Raises ValueError, listing every problem, for what our BLIP cannot represent."""
    tc, vc = hf_config.text_config, hf_config.vision_config
    problems = []
    if tc.hidden_act != vc.hidden_act:
        problems.append(f"text hidden_act {tc.hidden_act!r} != vision hidden_act {vc.hidden_act!r} (we have one act)")
    if vc.hidden_act not in HF_TO_OUR_ACT:
        problems.append(f"hidden_act {vc.hidden_act!r} is not one of {sorted(HF_TO_OUR_ACT)}")
    position = getattr(tc, "position_embedding_type", "absolute")
    if position != "absolute":
        problems.append(f"position_embedding_type={position!r} (only absolute learned positions)")
    if not getattr(tc, "is_decoder", True):
        problems.append("text_config.is_decoder=False: its text layers have no cross-attention, BLIP's MED needs it")
    if tc.encoder_hidden_size != vc.hidden_size:
        problems.append(f"text encoder_hidden_size={tc.encoder_hidden_size} != vision hidden_size={vc.hidden_size}")
    ratio = vc.intermediate_size / vc.hidden_size
    if int(vc.hidden_size * ratio) != vc.intermediate_size or int(tc.hidden_size * ratio) != tc.intermediate_size:
        problems.append(f"the MLP ratio must be the same in both towers (one mlp_ratio), got vision "
                        f"{vc.intermediate_size}/{vc.hidden_size}, text {tc.intermediate_size}/{tc.hidden_size}")
    image_size = _square("image_size", vc.image_size, problems)
    patch_size = _square("patch_size", vc.patch_size, problems)
    ids = {"pad_token_id": tc.pad_token_id, "sep_token_id": tc.sep_token_id, "bos_token_id ([DEC])": tc.bos_token_id}
    for name, value in ids.items():
        if not isinstance(value, int) or not 0 <= value < tc.vocab_size:
            problems.append(f"text_config.{name} must be an id in [0, {tc.vocab_size - 1}], got {value!r}")
    if problems:
        raise ValueError("cannot represent this transformers BLIP: " + "; ".join(problems))
    sep, dec = tc.sep_token_id, tc.bos_token_id
    bos_id = sep - 1 if bos_id is None else bos_id  # BERT: [CLS] 101, [SEP] 102, [MASK] 103
    mask_id = sep + 1 if mask_id is None else mask_id
    enc_id = (dec + 1 if dec + 1 < tc.vocab_size else bos_id) if enc_id is None else enc_id  # BLIP: [DEC], [ENC]
    for name, value in (("bos_id ([CLS])", bos_id), ("mask_id ([MASK])", mask_id), ("enc_id ([ENC])", enc_id)):
        if not isinstance(value, int) or not 0 <= value < tc.vocab_size:
            problems.append(f"{name} = {value!r} is not an id of the vocabulary (size {tc.vocab_size}): pass "
                            f"{name.split()[0]}= explicitly")
    if problems:
        raise ValueError("cannot represent this transformers BLIP: " + "; ".join(problems))
    return BLIPConfig(
        image_size=image_size, patch_size=patch_size,
        dim=tc.hidden_size, vision_dim=vc.hidden_size,
        vision_depth=vc.num_hidden_layers, text_depth=tc.num_hidden_layers,
        heads=tc.num_attention_heads, vision_heads=vc.num_attention_heads,
        mlp_ratio=ratio, embed_dim=hf_config.image_text_hidden_size,
        vocab_size=tc.vocab_size, max_text_len=tc.max_position_embeddings,
        act=HF_TO_OUR_ACT[vc.hidden_act], eps=vc.layer_norm_eps, text_eps=tc.layer_norm_eps,
        text_norm_first=False,  # BERT's post-LN layers
        vision_pre_norm=False,  # BLIP's ViT has no LayerNorm before its first block
        patch_bias=True,  # its patch embedding is a Conv2d with a bias
        pad_id=tc.pad_token_id, mask_id=mask_id, bos_id=bos_id, eos_id=sep, enc_id=enc_id, dec_id=dec,
        image_mean=tuple(image_mean), image_std=tuple(image_std),
    )


def hf_names(kind: str, vision_depth: int, text_depth: int) -> dict[str, str]:
    """Our parameter name → transformers' name, for a "decoder" (BlipForConditionalGeneration)
    or "encoder" (BlipForImageTextRetrieval) model. Two of theirs are reshaped on the way (see
    `hf_state_dict_to_ours`): the patch Conv2d kernel and the text positions; and the vision
    attention's fused `qkv` Linear appears here as its three thirds `qkv[q]`, `qkv[k]`, `qkv[v]`."""
    v = "vision_model"
    names = {
        "visual.patch_embed.proj": f"{v}.embeddings.patch_embedding",  # a stride-P Conv2d
        "visual.cls_token": f"{v}.embeddings.class_embedding",
        "visual.pos_embedding": f"{v}.embeddings.position_embedding",
        "visual.norm": f"{v}.post_layernorm",  # our ViT's final norm
    }
    for i in range(vision_depth):
        ours, theirs = f"visual.transformer.blocks.{i}", f"{v}.encoder.layers.{i}"
        names.update({
            f"{ours}.norm1": f"{theirs}.layer_norm1",
            f"{ours}.attn.q_proj": f"{theirs}.self_attn.qkv[q]",
            f"{ours}.attn.k_proj": f"{theirs}.self_attn.qkv[k]",
            f"{ours}.attn.v_proj": f"{theirs}.self_attn.qkv[v]",
            f"{ours}.attn.out_proj": f"{theirs}.self_attn.projection",
            f"{ours}.norm2": f"{theirs}.layer_norm2",
            f"{ours}.mlp.fc1": f"{theirs}.mlp.fc1",
            f"{ours}.mlp.fc2": f"{theirs}.mlp.fc2",
        })
    bert = "text_decoder.bert" if kind == "decoder" else "text_encoder"
    names.update({
        "token_embedding": f"{bert}.embeddings.word_embeddings",
        "pos_embedding": f"{bert}.embeddings.position_embeddings.weight",  # an Embedding table: a bare parameter here
        "embed_norm": f"{bert}.embeddings.LayerNorm",
    })
    # the self-attention is the one part encoder and decoder do not share
    attn, norm1 = ("attn_dec", "norm1_dec") if kind == "decoder" else ("attn", "norm1")
    for i in range(text_depth):
        ours, theirs = f"blocks.{i}", f"{bert}.encoder.layer.{i}"
        names.update({
            f"{ours}.{attn}.q_proj": f"{theirs}.attention.self.query",
            f"{ours}.{attn}.k_proj": f"{theirs}.attention.self.key",
            f"{ours}.{attn}.v_proj": f"{theirs}.attention.self.value",
            f"{ours}.{attn}.out_proj": f"{theirs}.attention.output.dense",
            f"{ours}.{norm1}": f"{theirs}.attention.output.LayerNorm",  # post-LN: after the residual sum
            f"{ours}.cross_attn.q_proj": f"{theirs}.crossattention.self.query",
            f"{ours}.cross_attn.k_proj": f"{theirs}.crossattention.self.key",  # from the image tokens
            f"{ours}.cross_attn.v_proj": f"{theirs}.crossattention.self.value",
            f"{ours}.cross_attn.out_proj": f"{theirs}.crossattention.output.dense",
            f"{ours}.norm_cross": f"{theirs}.crossattention.output.LayerNorm",
            f"{ours}.mlp.fc1": f"{theirs}.intermediate.dense",
            f"{ours}.mlp.fc2": f"{theirs}.output.dense",
            f"{ours}.norm2": f"{theirs}.output.LayerNorm",
        })
    if kind == "decoder":  # BERT's LM head; its output layer is the word embeddings (checked in blip_from_hf)
        names.update({
            "lm_transform": "text_decoder.cls.predictions.transform.dense",
            "lm_norm": "text_decoder.cls.predictions.transform.LayerNorm",
            "lm_bias": "text_decoder.cls.predictions.bias",
        })
    else:  # ITC projections and the ITM head
        names.update({"image_projection": "vision_proj", "text_projection": "text_proj", "itm_head": "itm_head"})
    return names


def hf_state_dict_to_ours(sd: dict, kind: str, vision_depth: int, text_depth: int) -> dict:
    """A transformers BLIP state dict → the part of our BLIP's state dict that `kind` covers."""
    sd = dict(sd)
    for i in range(vision_depth):  # split the fused qkv Linear: its output rows are q, then k, then v
        qkv = f"vision_model.encoder.layers.{i}.self_attn.qkv"
        for p in ("weight", "bias"):
            for part, tensor in zip("qkv", sd.pop(f"{qkv}.{p}").chunk(3, dim=0)):
                sd[f"{qkv}[{part}].{p}"] = tensor
    out = {}
    for ours, theirs in hf_names(kind, vision_depth, text_depth).items():
        if f"{theirs}.weight" in sd:  # a module: weight and (usually) bias
            out.update({f"{ours}.{p}": sd[f"{theirs}.{p}"] for p in ("weight", "bias") if f"{theirs}.{p}" in sd})
        else:  # a bare parameter
            out[ours] = sd[theirs]
    # a stride-P conv is a linear map of each flattened patch; our patchify flattens (p1, p2, c)
    out["visual.patch_embed.proj.weight"] = rearrange(out["visual.patch_embed.proj.weight"],
                                                      "d c p1 p2 -> d (p1 p2 c)")
    out["pos_embedding"] = out["pos_embedding"].unsqueeze(0)  # their table (T, D) → our parameter (1, T, D)
    return {k: t.detach().clone() for k, t in out.items()}


def blip_from_hf(model, tokenizer=None, image_mean: Sequence[float] = OPENAI_MEAN,
                 image_std: Sequence[float] = OPENAI_STD, bos_id: int | None = None, mask_id: int | None = None,
                 enc_id: int | None = None) -> BLIP:
    """Our BLIP with the configuration and weights of a transformers BlipForConditionalGeneration
    (vision model + decoder: captions) or BlipForImageTextRetrieval (vision model + text encoder,
    ITC projections, ITM head). The half the given model lacks keeps its initialisation.

    image_mean / image_std: the normalisation its image processor applies (OpenAI CLIP's by
    default), so that our model, which takes [0, 1] images, sees the same pixel values.
    tokenizer: optional, for `caption` (decoding) and strings; e.g. transformers' BertTokenizer.
    bos_id / mask_id / enc_id: [CLS], [MASK], [ENC], which transformers' config does not name
    (defaults: see the module docstring). The label smoothing, temperature and training fields
    keep BLIPConfig's defaults (the paper's). TypeError for another model type; ValueError for
    a configuration our BLIP cannot represent, or an LM head not tied to the word embeddings.
    """
    kind = model_kind(model)
    hc = model.config
    config = config_from_hf(hc, image_mean, image_std, bos_id, mask_id, enc_id)
    sd = model.state_dict()
    if kind == "decoder":
        head, words = "text_decoder.cls.predictions", "text_decoder.bert.embeddings.word_embeddings.weight"
        if not torch.equal(sd[f"{head}.decoder.weight"], sd[words]):
            raise ValueError("the LM head's output layer (text_decoder.cls.predictions.decoder.weight) differs from "
                             "the word embeddings: our BLIP ties them (tie_word_embeddings), it cannot hold both")
        if f"{head}.decoder.bias" in sd and not torch.equal(sd[f"{head}.decoder.bias"], sd[f"{head}.bias"]):
            raise ValueError("the LM head's decoder.bias differs from cls.predictions.bias: our BLIP has one lm_bias")
    ours = BLIP(config, tokenizer=tokenizer)
    result = ours.load_state_dict(
        hf_state_dict_to_ours(sd, kind, config.vision_depth, config.text_depth), strict=False)
    left = [k for k in result.missing_keys if not re.match(LEFT_AT_INIT[kind], k)]
    if result.unexpected_keys or left:  # a bug in the name map, not the user's
        raise RuntimeError(f"blip_from_hf name map out of date: unexpected {result.unexpected_keys}, missing {left}")
    device = next(model.parameters()).device
    return ours.to(device).train(model.training)
