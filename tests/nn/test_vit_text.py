import pytest
import torch

from minivlm.nn import Block, TextTransformer, ViT, patchify, unpatchify


def test_patchify_by_hand_and_round_trip():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (2, 4, 12)
    # patch 1 is the top-right 2x2 block; its first entry is pixel (0, 2) of channel 0
    assert p[0, 1, 0] == img[0, 0, 0, 2]
    assert p[0, 1, 1] == img[0, 1, 0, 2]  # (p1 p2 c): channels vary fastest
    torch.testing.assert_close(unpatchify(p, 2, 3), img)


def test_patch_embed_equals_strided_conv():
    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2)
    conv = torch.nn.Conv2d(3, 16, 4, stride=4)
    with torch.no_grad():
        w = vit.patch_embed.proj.weight.reshape(16, 4, 4, 3).permute(0, 3, 1, 2)
        conv.weight.copy_(w)
        conv.bias.copy_(vit.patch_embed.proj.bias)
    x = torch.rand(2, 3, 8, 8)
    want = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(vit.patch_embed(x), want, atol=1e-5, rtol=1e-5)


def test_vit_outputs_and_errors():
    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, dim=32, depth=2, heads=4, num_classes=5)
    x = torch.rand(3, 3, 16, 16)
    assert vit.forward_features(x).shape == (3, 17, 32)
    logits = vit(x)
    assert logits.shape == (3, 5)
    # each image is processed independently of the others in the batch
    torch.testing.assert_close(vit(x[:1]), logits[:1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected 16, got 12"):
        vit(torch.rand(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"expected 3, got 1"):
        vit(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="floating"):
        vit(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible"):
        ViT(image_size=30, patch_size=4)


def test_text_transformer_causal_padding_and_errors():
    torch.manual_seed(0)
    tt = TextTransformer(vocab_size=20, max_len=8, dim=16, depth=2, heads=2)
    ids = torch.randint(0, 20, (2, 6))
    h = tt(ids)
    # causal: changing a later token leaves earlier positions unchanged
    ids2 = ids.clone()
    ids2[:, 4] = (ids2[:, 4] + 1) % 20
    h2 = tt(ids2)
    torch.testing.assert_close(h[:, :4], h2[:, :4])
    assert not torch.allclose(h[:, 4:], h2[:, 4:])
    # bidirectional: it changes everything
    bi = TextTransformer(vocab_size=20, max_len=8, dim=16, depth=2, heads=2, causal=False)
    assert not torch.allclose(bi(ids)[:, 0], bi(ids2)[:, 0])
    # padded keys are invisible: appending pad tokens (masked) leaves real positions unchanged
    padded = torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], 1)
    valid = torch.cat([torch.ones(2, 6), torch.zeros(2, 2)], 1).bool()
    torch.testing.assert_close(bi(padded, valid)[:, :6], bi(ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="longer than the context max_len=8"):
        tt(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 19\]"):
        tt(torch.tensor([[3, 25]]))
    with pytest.raises(ValueError, match="integer"):
        tt(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        tt(ids, torch.ones(2, 5))


def test_block_cross_attention_requires_context():
    b = Block(16, 2, cross_attention=True, context_dim=8)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    assert b(x, context=ctx).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="context"):
        b(x)


def test_tiny_vit_learns_a_separable_task():
    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2, num_classes=2)
    x = torch.rand(64, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))).long()  # is red brighter than blue?
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (vit(x).argmax(1) == y).float().mean() > 0.9
