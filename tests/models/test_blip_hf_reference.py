"""Our BLIP against Hugging Face transformers' BLIP (an independent implementation).

Tiny randomly initialised BlipForConditionalGeneration and BlipForImageTextRetrieval models
are built from a config (nothing is downloaded), their weights copied with `blip_from_hf`, and
ours must give the same image features, text hidden states in all three MED modes, caption
logits, ITM logits, ITC features, and the same greedy captions token for token.
"""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from minivlm.generate import generate  # noqa: E402
from minivlm.models.blip_hf import blip_from_hf  # noqa: E402

VOCAB, POSITIONS, PAD, SEP, DEC = 100, 40, 0, 12, 98
ATOL = 1e-5


def hf_config(**text_kw):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, attention_dropout=0.0, layer_norm_eps=1e-5)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=POSITIONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                layer_norm_eps=1e-12, pad_token_id=PAD, bos_token_id=DEC, eos_token_id=2, sep_token_id=SEP)
    text.update(text_kw)
    return transformers.BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=24,
                                   attn_implementation="eager")


def hf_blip(kind="BlipForConditionalGeneration", seed=0, **text_kw):
    torch.manual_seed(seed)
    model = getattr(transformers, kind)(hf_config(**text_kw)).eval()
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0) and biases to 0: make every parameter
        for p in model.parameters():  # random, so that a swapped or missing copy cannot pass unnoticed
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def captioner():
    hf = hf_blip()
    return hf, blip_from_hf(hf).eval()


@pytest.fixture(scope="module")
def retrieval():
    hf = hf_blip("BlipForImageTextRetrieval", seed=1)
    return hf, blip_from_hf(hf).eval()


def inputs(ours, b=4, t=9, first=DEC, seed=2):
    """images in [0, 1] for ours, the pixel_values HF's processor would give, and ids / mask
    with two padded rows."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 32, 32, generator=g)
    ids = torch.randint(SEP + 2, DEC, (b, t), generator=g)
    ids[:, 0] = first
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 7:] = 0
    ids[mask == 0] = PAD
    return images, (images - ours.image_mean) / ours.image_std, ids, mask


def test_config_read_from_transformers(captioner):
    hf, ours = captioner
    c = ours.config
    assert (c.dim, c.vision_dim, c.heads, c.vision_heads, c.text_depth, c.vision_depth) == (32, 32, 2, 2, 2, 2)
    assert (c.image_size, c.patch_size, c.mlp_ratio, c.embed_dim, c.max_text_len, c.vocab_size) == \
        (32, 8, 2.0, 24, POSITIONS, VOCAB)
    assert (c.eps, c.text_eps, c.text_norm_first, c.vision_pre_norm, c.patch_bias) == (1e-5, 1e-12, False, False, True)
    # [DEC] is transformers' bos_token_id, [SEP] ends captions; [CLS], [MASK], [ENC] from BERT's / BLIP's layout
    assert (c.pad_id, c.dec_id, c.eos_id, c.bos_id, c.mask_id, c.enc_id) == (PAD, DEC, SEP, SEP - 1, SEP + 1, DEC + 1)
    assert c.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert not ours.training and hf.text_decoder.config._attn_implementation == "eager"


def test_captioner_matches_transformers(captioner):
    hf, ours = captioner
    images, pixel_values, ids, mask = inputs(ours)
    with torch.no_grad():
        image_tokens, _ = ours.encode_image(images)
        theirs_image = hf.vision_model(pixel_values=pixel_values).last_hidden_state
        torch.testing.assert_close(image_tokens, theirs_image, rtol=0, atol=ATOL)
        decoded = ours.text_forward(ids, mask.bool(), "decoder", image_tokens)
        out = hf.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=theirs_image,
                              output_hidden_states=True)
        torch.testing.assert_close(decoded, out.hidden_states[-1], rtol=0, atol=ATOL)
        torch.testing.assert_close(ours.lm_logits(decoded), out.logits, rtol=0, atol=ATOL)
        # the whole model's forward, as a caption-training step sees it
        full = hf(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours.lm_logits(decoded), full, rtol=0, atol=ATOL)
    assert decoded[:, 0].std(0).mean() > 0.02  # the image changes the decoder's states: a meaningful check


def test_retrieval_model_matches_transformers(retrieval):
    hf, ours = retrieval
    images, pixel_values, ids, mask = inputs(ours, first=SEP - 1)  # "[CLS] ...", as BertTokenizer writes
    with torch.no_grad():
        image_tokens, image_feat = ours.encode_image(images)
        theirs_image = hf.vision_model(pixel_values=pixel_values).last_hidden_state
        torch.testing.assert_close(image_tokens, theirs_image, rtol=0, atol=ATOL)
        # "text": the unimodal encoder (no cross-attention) and its ITC feature
        text_tokens, text_feat, _ = ours.encode_text(ids, mask)
        theirs_text = hf.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(text_tokens, theirs_text, rtol=0, atol=ATOL)
        torch.testing.assert_close(image_feat, F.normalize(hf.vision_proj(theirs_image[:, 0]), dim=-1),
                                   rtol=0, atol=ATOL)
        torch.testing.assert_close(text_feat, F.normalize(hf.text_proj(theirs_text[:, 0]), dim=-1), rtol=0, atol=ATOL)
        itc = hf(input_ids=ids, pixel_values=pixel_values, attention_mask=mask, use_itm_head=False).itm_score
        torch.testing.assert_close(image_feat @ text_feat.t(), itc, rtol=0, atol=ATOL)
        # "encoder": the image-grounded encoder and the ITM head
        enc_ids = ours.with_first_token(ids, "encoder")
        encoded = ours.text_forward(enc_ids, mask.bool(), "encoder", image_tokens)
        out = hf(input_ids=enc_ids, pixel_values=pixel_values, attention_mask=mask, use_itm_head=True)
        torch.testing.assert_close(encoded, out.question_embeds, rtol=0, atol=ATOL)
        torch.testing.assert_close(ours.itm_logits(encoded), out.itm_score, rtol=0, atol=ATOL)
    assert (text_tokens - encoded).abs().max() > 0.1  # cross-attention did something


def test_greedy_captions_match_transformers():
    """transformers' BLIP generate starts every row at [DEC] (its bos_token_id), stops a row at
    [SEP] (sep_token_id) and pads the finished rows with pad_token_id until all are done or
    max_length tokens ([DEC] included) are reached; `generate` does the same from a [DEC] prompt."""
    # a larger [SEP] bias, so that rows finish at different steps and the stopping is exercised
    hf = hf_blip(seed=5)
    with torch.no_grad():
        hf.text_decoder.cls.predictions.bias[SEP] += 0.9
    ours = blip_from_hf(hf).eval()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pixel_values = (images - ours.image_mean) / ours.image_std
    max_length = 12
    with torch.no_grad():
        theirs = hf.generate(pixel_values=pixel_values, max_length=max_length, num_beams=1, do_sample=False)
        image_tokens, _ = ours.encode_image(images)

        def next_logits(ids, rows):
            return ours.lm_logits(ours.text_forward(ids, None, "decoder", image_tokens[rows]))[:, -1]

        prompt = torch.full((len(images), 1), ours.config.dec_id, dtype=torch.long)
        mine = generate(next_logits, prompt, max_length - 1, ours.config.eos_id, pad_id=ours.config.pad_id)
    assert torch.equal(mine, theirs)
    stops = {row.index(SEP) for row in theirs.tolist() if SEP in row}
    assert len(stops) >= 2 and not (theirs == SEP).any(1).all()  # rows stop at different steps, some never
    assert len(set(map(tuple, theirs.tolist()))) > 1  # captions depend on the image


def test_wrong_model_type_raises():
    with pytest.raises(TypeError, match="BlipForConditionalGeneration"):
        blip_from_hf(transformers.BlipVisionModel(hf_config().vision_config))
    with pytest.raises(TypeError, match="got str"):
        blip_from_hf("Salesforce/blip-image-captioning-base")


def test_untied_lm_head_raises():
    hf = hf_blip()
    head = hf.text_decoder.cls.predictions
    head.decoder.weight = torch.nn.Parameter(head.decoder.weight.detach() + 0.01)
    with pytest.raises(ValueError, match="word embeddings"):
        blip_from_hf(hf)


def test_unrepresentable_configs_raise():
    hf = hf_blip(intermediate_size=96)  # text MLP ratio 3, vision 2
    with pytest.raises(ValueError, match="MLP ratio"):
        blip_from_hf(hf)
    hf = hf_blip()
    hf.config.text_config.position_embedding_type = "relative_key"
    hf.config.text_config.hidden_act = "silu"
    with pytest.raises(ValueError, match="position_embedding_type.*hidden_act|hidden_act.*position_embedding_type"):
        blip_from_hf(hf)
