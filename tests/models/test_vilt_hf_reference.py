"""Our ViLT against Hugging Face transformers' ViltModel (an independent implementation).

Tiny randomly initialised Vilt models are built from a config (nothing is downloaded), their
weights are copied with `ViLT.from_hf`, and both must give the same hidden states, pooled
output, VQA logits and MLM logits, with padded text.

transformers' ViltEmbeddings.visual_embed shuffles the patch tokens with torch.multinomial
(on the global generator) even when it keeps every patch, so its image hidden states come out
permuted. `run_hf` recovers the permutation: it seeds torch, calls visual_embed alone to get
the `patch_index` (row, column) of each of its image tokens, re-seeds identically and runs the
model, which then draws the same order. Our image tokens are in row-major patch order, so our
token `row * side + column` is theirs.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from minivlm.data.shapesworld import VQA_ANSWER_VOCAB  # noqa: E402
from minivlm.models.vilt import ViLT, hf_state_dict_to_ours  # noqa: E402

VOCAB, CONTEXT = 603, 16  # the course tokenizer's vocabulary
ANSWERS = ("yes", "no", "red", "circle", "two")


def hf_vilt(kind="ViltModel", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
               patch_size=8, vocab_size=VOCAB, max_position_embeddings=CONTEXT, layer_norm_eps=1e-5, pad_token_id=0)
    if kind == "ViltForQuestionAnswering":
        cfg.update(id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})
    cfg.update(kw)
    model = getattr(transformers, kind)(transformers.ViltConfig(**cfg)).eval()
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0), biases, CLS and positions to 0: make every
        for p in model.parameters():  # parameter random, so that a swapped or missing copy cannot pass unnoticed
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(b=4, t=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 32, 32, generator=g)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 5:] = 0  # padded rows: their keys must be ignored by every query, text and image
    mask[2, 8:] = 0
    ids[mask == 0] = 0
    return images, ids, mask


def run_hf(vilt, ids, mask, pixel_values, seed=1234):
    """Run a ViltModel; return its output and order (B, N): order[b, j] is the row-major index
    of the patch behind its image token 1 + j (see the module docstring)."""
    emb, cfg = vilt.embeddings, vilt.config
    pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:])
    torch.manual_seed(seed)
    _, _, (patch_index, _) = emb.visual_embed(pixel_values, pixel_mask, max_image_length=cfg.max_image_length)
    torch.manual_seed(seed)
    out = vilt(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, pixel_mask=pixel_mask)
    side = cfg.image_size // cfg.patch_size
    order = patch_index[..., 0] * side + patch_index[..., 1]  # (B, N)
    assert (order.sort(dim=1).values == torch.arange(side * side)).all()  # a permutation: every patch kept
    return out, order


def compare_encoders(hf_core, ours, images, ids, mask):
    """Text, image and pooled outputs of the two encoders; returns the image order HF used."""
    t = ids.shape[1]
    with torch.no_grad():
        out, order = run_hf(hf_core, ids, mask, (images - 0.5) / 0.5)  # HF takes normalised pixels
        hidden = ours(images, ids, mask.bool())  # (B, T + 1 + N, D)
        pooled = ours.pool(hidden)
    theirs = out.last_hidden_state
    torch.testing.assert_close(hidden[:, :t], theirs[:, :t], rtol=0, atol=1e-5)  # text, padded positions too
    torch.testing.assert_close(hidden[:, t], theirs[:, t], rtol=0, atol=1e-5)  # the image CLS
    patches = hidden[:, t + 1:]
    ours_in_their_order = torch.gather(patches, 1, order[..., None].expand_as(patches))
    torch.testing.assert_close(ours_in_their_order, theirs[:, t + 1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, out.pooler_output, rtol=0, atol=1e-5)
    assert (pooled[0] - pooled[1]).abs().max() > 1e-2  # the comparison is meaningful: outputs vary with input
    return order


@pytest.mark.parametrize("kw", [
    dict(),
    dict(patch_size=4, num_attention_heads=2, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-12),
])
def test_hidden_states_and_pooled_output_match_transformers(kw):
    hf = hf_vilt(**kw)
    ours = ViLT.from_hf(hf).eval()
    assert ours.config.max_text_len == CONTEXT and ours.config.eps == hf.config.layer_norm_eps
    order = compare_encoders(hf, ours, *inputs())
    # the shuffle is real: without undoing it the image tokens would not line up
    assert (order != torch.arange(order.shape[1])).any()


def test_vqa_logits_match_transformers():
    hf = hf_vilt("ViltForQuestionAnswering")
    ours = ViLT.from_hf(hf).eval()
    assert ours.config.answers == ANSWERS
    images, ids, mask = inputs(seed=2)
    compare_encoders(hf.vilt, ours, images, ids, mask)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=(images - 0.5) / 0.5).logits
        logits = ours.vqa_logits(ours.pool(ours(images, ids, mask.bool())))
    torch.testing.assert_close(logits, theirs, rtol=0, atol=1e-5)
    # questions as strings, tokenised by the course tokenizer (different lengths: padding)
    questions = ["what color is the circle", "how many shapes", "is there a red square", "what shape is left"]
    qids, qmask = ours.tokenize(questions)
    assert not qmask.all()
    with torch.no_grad():
        theirs = hf(input_ids=qids, attention_mask=qmask.long(), pixel_values=(images - 0.5) / 0.5).logits
        ours_answers = ours.answer(images, questions)
    assert ours_answers == [ANSWERS[i] for i in theirs.argmax(1).tolist()]


def test_mlm_logits_match_transformers():
    hf = hf_vilt("ViltForMaskedLM", hidden_act="relu")
    ours = ViLT.from_hf(hf).eval()
    assert ours.config.answers == VQA_ANSWER_VOCAB  # no VQA head in theirs: ours keeps its init
    images, ids, mask = inputs(seed=3)
    compare_encoders(hf.vilt, ours, images, ids, mask)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=(images - 0.5) / 0.5).logits
        logits = ours.mlm_logits(ours(images, ids, mask.bool())[:, : ids.shape[1]])
    assert logits.shape == (4, ids.shape[1], VOCAB)
    torch.testing.assert_close(logits, theirs, rtol=0, atol=1e-5)


def test_heads_without_weights_keep_their_init():
    hf = hf_vilt()
    torch.manual_seed(7)
    ours = ViLT.from_hf(hf)
    converted = hf_state_dict_to_ours(hf.state_dict(), 2)
    assert not any(k.startswith(("vqa_head", "itm_head", "mlm_")) for k in converted)
    torch.testing.assert_close(ours.word_embeddings.weight, hf.embeddings.text_embeddings.word_embeddings.weight)
    assert ours.mlm_bias.abs().max() == 0  # our init, not a copy


def test_unrepresentable_configs_raise():
    with pytest.raises(ValueError, match="qkv_bias"):
        ViLT.from_hf(hf_vilt(qkv_bias=False))
    # every problem is named at once
    with pytest.raises(ValueError, match=r"qkv_bias.*num_channels.*hidden_act"):
        ViLT.from_hf(hf_vilt(qkv_bias=False, num_channels=1, hidden_act="silu"))
    with pytest.raises(ValueError, match="image_size must be square"):
        ViLT.from_hf(hf_vilt(image_size=(32, 16)))
    with pytest.raises(ValueError, match="max_image_length"):
        ViLT.from_hf(hf_vilt(max_image_length=8))  # 16 patches: HF would keep a random half
    ViLT.from_hf(hf_vilt(max_image_length=16))  # keeps them all (shuffled): fine
    hf = hf_vilt("ViltForMaskedLM")
    hf.mlm_score.decoder.weight = torch.nn.Parameter(hf.mlm_score.decoder.weight.detach() + 1)  # untie
    with pytest.raises(ValueError, match="tied"):
        ViLT.from_hf(hf)
    hf = hf_vilt("ViltForQuestionAnswering")
    hf.classifier[1].eps = 1e-12
    with pytest.raises(ValueError, match="VQA head's LayerNorm eps"):
        ViLT.from_hf(hf)
