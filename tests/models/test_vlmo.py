"""VLMo (chapter 05): the routing of each mode, checked through the weights each mode may and
may not read; the three staged pretraining steps against their formulas and their gradients;
retrieval three ways with its Transformer passes counted; bad input."""
import pytest
import torch
import torch.nn.functional as F
from negative_recorder import Recorder

import minivlm.drivers
import minivlm.models.vlmo as vlmo_module
import minivlm.train
from minivlm.data.masking import IGNORE_INDEX, block_mask
from minivlm.data.tokenizer import Tokenizer
from minivlm.drivers import staged_pretrain
from minivlm.eval import itc_similarity
from minivlm.losses import itm_loss, mlm_loss, soft_cross_entropy
from minivlm.models.vlmo import (
    VLMo,
    VLMoConfig,
    fusion_scores,
    mim_step,
    pair_step,
    retrieve,
    set_stage,
    stage_batches,
    stage_parameters,
    text_mlm_step,
)
from minivlm.nn.vit import patchify

TOK = Tokenizer.from_world()
TEXTS = ["a red circle.", "two shapes: a blue square and a green star.", "a small white cross above a cyan diamond"]
TINY = dict(dim=32, depth=2, vl_depth=1, heads=2, patch_size=8, embed_dim=16)
N = 16  # patches of a 32 × 32 image, 8 × 8 each
V, L, VL = 0, 1, 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (see tests/models/test_vilt.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(**kw) -> VLMo:
    """A tiny VLMo whose weights have moved off their initial values (LayerNorms off (1, 0), a
    non-zero mask token and MLM bias), so that every parameter leaves a trace in the outputs."""
    torch.manual_seed(0)
    m = VLMo(VLMoConfig(**{**TINY, **kw}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim:  # all but the temperature
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m


def images(b: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def differs(a, b, tol=1e-4) -> bool:
    return bool((a - b).abs().max() > tol)


def expert_params(m: VLMo, expert: int, blocks=None) -> dict[str, torch.nn.Parameter]:
    """The parameters of expert `expert` (V=0, L=1, VL=2) in the given blocks (default: all that have it)."""
    out = {}
    for i, block in enumerate(m.blocks):
        if (blocks is None or i in blocks) and expert < len(block.ffn.experts):
            for name, p in block.ffn.experts[expert].named_parameters():
                out[f"blocks.{i}.ffn.experts.{expert}.{name}"] = p
    return out


def perturb(m: VLMo, expert: int, blocks=None, seed: int = 2) -> None:
    params = expert_params(m, expert, blocks)
    assert params, "nothing to perturb"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def names_with(m: VLMo, *parts: str) -> set[str]:
    return {n for n, _ in m.named_parameters() if any(part in n for part in parts)}


# ----------------------------------------------------------------------------- config and routing


def test_config_defaults_and_vl_depth():
    c = VLMoConfig()
    assert c.vocab_size == len(TOK) and c.pad_id == TOK.pad_id and c.mask_id == TOK.mask_id
    assert c.num_patches == 16
    m = tiny(depth=3, vl_depth=1)
    assert [b.ffn.names for b in m.blocks] == [("vision", "language")] * 2 + [("vision", "language", "vl")]
    assert all(len(b.ffn) == 2 for b in tiny(vl_depth=0).blocks)
    assert all(len(b.ffn) == 3 for b in tiny(vl_depth=2).blocks)


@pytest.mark.parametrize("depth,vl_depth", [(2, 1), (3, 1), (3, 0), (3, 3)])
def test_routes_of_each_mode(depth, vl_depth):
    m = tiny(depth=depth, vl_depth=vl_depth)
    image = m.routes("image", 5, 0)
    text = m.routes("text", 0, 4)
    fusion = m.routes("fusion", 5, 4)
    assert len(image) == len(text) == len(fusion) == depth
    for i in range(depth):
        assert image[i].tolist() == [V] * 5
        assert text[i].tolist() == [L] * 4
        if i < depth - vl_depth:  # bottom: each token its own modality's expert
            assert fusion[i].tolist() == [V] * 5 + [L] * 4
        else:  # top: the vision-language expert for every token
            assert fusion[i].tolist() == [VL] * 9


# ----------------------------------------------------------------------------- image mode


def test_encode_image_tokens_feature_and_independence():
    m = tiny()
    imgs = images(3)
    tokens, feat = m.encode_image(imgs)
    assert tokens.shape == (3, 1 + N, 32) and feat.shape == (3, 16)
    x = m.embed_image(imgs)
    for block in m.blocks:  # every block, the vision expert for every token
        x = block(x, torch.full((1 + N,), V))
    close(tokens, m.norm(x))
    close(feat, F.normalize(m.image_projection(tokens[:, 0]), dim=-1))
    close(feat.norm(dim=1), torch.ones(3))
    close(m.encode_image(imgs[1:2])[1], feat[1:2])  # each image on its own


def test_image_mode_reads_only_the_vision_experts():
    m = tiny()
    imgs = images(2)
    tokens = m.encode_image(imgs)[0]
    perturb(m, L)
    perturb(m, VL)
    assert torch.equal(m.encode_image(imgs)[0], tokens)
    perturb(m, V, blocks=[1])  # the top block too: image mode never switches to VL
    assert differs(m.encode_image(imgs)[0], tokens)


def test_patch_mask_replaces_patches_by_the_mask_token():
    m = tiny()
    imgs = images(2)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, [0, 5, 6]] = True
    mask[1, [15]] = True
    plain, masked = m.embed_image(imgs), m.embed_image(imgs, mask)
    tokens = masked[:, 1:]  # (B, N, D) without CLS
    close(tokens[~mask], plain[:, 1:][~mask])
    want = m.mask_token[0, 0] + m.image_pos[0, 1:] + m.type_embedding.weight[0]  # (N, D)
    close(tokens[0, [0, 5, 6]], want[[0, 5, 6]])
    close(tokens[1, 15], want[15])
    # the pixels under a masked patch can't be seen: patch 5 is rows 8-15, columns 8-15
    other = imgs.clone()
    other[0, :, 8:16, 8:16] = torch.rand(3, 8, 8)
    assert torch.equal(m.encode_image(other, mask)[0], m.encode_image(imgs, mask)[0])
    assert differs(m.encode_image(other)[0], m.encode_image(imgs)[0])


# ----------------------------------------------------------------------------- text mode


def test_encode_text_strings_equal_ids():
    m = tiny()
    tokens, feat, mask = m.encode_text(TEXTS)
    ids, mask_tok = TOK(TEXTS, add_bos=True, add_eos=True)
    assert torch.equal(mask, mask_tok) and mask.dtype == torch.bool
    assert tokens.shape == (3, ids.shape[1], 32) and feat.shape == (3, 16)
    t_ids, f_ids, _ = m.encode_text(ids, mask_tok)
    close(tokens, t_ids)
    close(feat, F.normalize(m.text_projection(tokens[:, 0]), dim=-1))  # the <bos> token
    close(feat.norm(dim=1), torch.ones(3))


def test_text_mode_reads_only_the_language_experts():
    m = tiny()
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    tokens = m.encode_text(ids, mask)[0]
    perturb(m, V)
    perturb(m, VL)
    assert torch.equal(m.encode_text(ids, mask)[0], tokens)
    perturb(m, L, blocks=[1])
    assert differs(m.encode_text(ids, mask)[0][mask], tokens[mask])


def test_padding_does_not_change_the_real_text_tokens():
    m = tiny()
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    tokens, feat, _ = m.encode_text(ids, mask)
    # 5 more positions, masked; real words (not <pad>), so that only the mask can hide them
    extra = torch.randint(10, len(TOK), (3, 5), generator=torch.Generator().manual_seed(3))
    padded_ids = torch.cat([ids, extra], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    p_tokens, p_feat, _ = m.encode_text(padded_ids, padded_mask)
    close(p_tokens[:, :ids.shape[1]][mask], tokens[mask])
    close(p_feat, feat)
    close(m.encode_text(TEXTS[:1])[1], feat[:1])  # alone, with no padding at all


# ----------------------------------------------------------------------------- fusion mode


def test_fuse_shape_strings_and_both_ways_attention():
    m = tiny()
    imgs = images(3)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    fused = m.fuse(imgs, TEXTS)
    assert fused.shape == (3, 1 + N + ids.shape[1], 32)
    close(fused, m.fuse(imgs, ids, mask))
    close(m(imgs, TEXTS), fused)
    other_image = m.fuse(images(3, seed=1), TEXTS)
    assert differs(other_image[:, 1 + N:][mask], fused[:, 1 + N:][mask])  # the text attends to the image
    other_text = m.fuse(imgs, TEXTS[1:] + TEXTS[:1])
    assert differs(other_text[:, :1 + N], fused[:, :1 + N])  # and the image to the text


def test_fusion_mode_uses_vl_experts_on_top_and_own_experts_below():
    m = tiny()
    imgs = images(2)
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    fused = m.fuse(imgs, ids, mask)
    image_tokens, text_tokens = m.encode_image(imgs)[0], m.encode_text(ids, mask)[0]
    # the top block's V and L experts are never used in fusion mode
    perturb(m, V, blocks=[1])
    perturb(m, L, blocks=[1], seed=3)
    assert torch.equal(m.fuse(imgs, ids, mask), fused)
    # the VL expert is used (by image and text tokens alike), and only in fusion mode
    m = tiny()
    perturb(m, VL)
    new = m.fuse(imgs, ids, mask)
    assert differs(new[:, :1 + N], fused[:, :1 + N]) and differs(new[:, 1 + N:][mask], fused[:, 1 + N:][mask])
    assert torch.equal(m.encode_image(imgs)[0], image_tokens)
    assert torch.equal(m.encode_text(ids, mask)[0], text_tokens)
    # below, image tokens go through V and text tokens through L
    m = tiny()
    perturb(m, V, blocks=[0])
    assert differs(m.fuse(imgs, ids, mask), fused)
    m = tiny()
    perturb(m, L, blocks=[0])
    assert differs(m.fuse(imgs, ids, mask), fused)


def test_fusion_by_hand():
    m = tiny()
    imgs = images(2)
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    x = torch.cat([m.embed_image(imgs), m.embed_text(ids)], dim=1)
    valid = torch.cat([torch.ones(2, 1 + N, dtype=torch.bool), mask], dim=1)
    route = torch.tensor([V] * (1 + N) + [L] * ids.shape[1])
    x = m.blocks[0](x, route, valid[:, None, :])
    x = m.blocks[1](x, torch.full_like(route, VL), valid[:, None, :])
    close(m.fuse(imgs, ids, mask), m.norm(x))


def test_padding_does_not_change_the_fused_match_score():
    m = tiny()
    imgs = images(3, seed=2)
    ids, mask = TOK(TEXTS, add_bos=True, add_eos=True)
    fused = m.fuse(imgs, ids, mask)
    extra = torch.randint(10, len(TOK), (3, 4), generator=torch.Generator().manual_seed(3))
    padded = m.fuse(imgs, torch.cat([ids, extra], 1), torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1))
    close(m.itm_logits(padded), m.itm_logits(fused))
    close(padded[:, :1 + N], fused[:, :1 + N])
    close(m.itm_logits(m.fuse(imgs[:1], TEXTS[:1])), m.itm_logits(fused)[:1])


def test_heads():
    m = tiny()
    imgs = images(2)
    fused = m.fuse(imgs, TEXTS[:2])
    close(m.itm_logits(fused), m.itm_head(fused[:, 1 + N]))  # the text's first token, after the image
    text = fused[:, 1 + N:]
    logits = m.mlm_logits(text)
    assert logits.shape == (2, text.shape[1], len(TOK))
    close(logits, m.mlm_norm(F.gelu(m.mlm_transform(text))) @ m.token_embedding.weight.T + m.mlm_bias)
    tokens = m.encode_image(imgs)[0]
    pixels = m.mim_pixels(tokens)
    assert pixels.shape == (2, N, 8 * 8 * 3)
    close(pixels, m.mim_head(tokens[:, 1:]))


def test_passes_are_counted_per_sequence_and_mode():
    m = tiny()
    m.encode_image(images(3))
    m.encode_text(TEXTS[:2])
    m.fuse(images(2), TEXTS[:2])
    assert m.passes == {"image": 3, "text": 2, "fusion": 2}


def test_match_probability_is_the_itm_softmax_in_any_batch_size():
    m = tiny()
    imgs = images(3)
    m.eval()
    want = m.itm_logits(m.fuse(imgs, TEXTS)).softmax(1)[:, 1]
    m.train()
    got = m.match_probability(imgs, TEXTS)
    close(got, want)
    assert ((got >= 0) & (got <= 1)).all()
    close(m.match_probability(imgs, TEXTS, batch_size=2), want)
    assert not hasattr(m, "match")  # one name per operation: match_probability, as ALBEF's and BLIP's
    assert m.training and torch.is_grad_enabled()  # mode and grad mode restored


# ----------------------------------------------------------------------------- stages


def test_stage_parameters_image_and_text():
    m = tiny()
    every = {n for n, _ in m.named_parameters()}
    attention = names_with(m, ".attn.", ".norm1.")
    vision, language, vl = (set(expert_params(m, e)) for e in (V, L, VL))
    assert attention and vision and language and vl

    image = set(stage_parameters(m, "image", True))
    assert attention | vision <= image
    assert {"patch_embed.proj.weight", "image_cls", "image_pos", "mask_token", "mim_head.weight"} <= image
    assert not image & (language | vl | names_with(m, "token_embedding", "mlm_", "itm_head"))

    image_alone = set(stage_parameters(m, "image", False))
    assert vision <= image_alone and not image_alone & (attention | language | vl)

    text = set(stage_parameters(m, "text", False))
    assert language <= text and {"token_embedding.weight", "text_pos", "mlm_bias", "mlm_transform.weight"} <= text
    assert not text & (attention | vision | vl | names_with(m, "patch_embed", "mim_head", "mask_token") | {"norm.weight"})

    text_shared = set(stage_parameters(m, "text", True))
    assert attention | language <= text_shared and not text_shared & (vision | vl)
    assert set(stage_parameters(m, "pairs")) == every


@pytest.mark.parametrize("stage,shared", [("image", True), ("image", False), ("text", False), ("pairs", True)])
def test_set_stage_freezes_the_rest(stage, shared):
    m = tiny()
    names = set_stage(m, stage, shared)
    assert names == sorted(stage_parameters(m, stage, shared))
    for n, p in m.named_parameters():
        assert p.requires_grad == (n in names), n


def mim_batch(b: int = 3, seed: int = 0) -> dict:
    return {"images": images(b, seed), "patch_mask": block_mask(b, 4, 0.4, generator=torch.Generator().manual_seed(seed))}


def grads(m: VLMo) -> tuple[set[str], set[str]]:
    """(names with a non-zero gradient, names with no gradient or a zero one)."""
    got = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return got, {n for n, _ in m.named_parameters()} - got


def test_mim_step_backward_reaches_only_the_trainable_vision_side():
    m = tiny()
    trainable = set(set_stage(m, "image", True))
    out = mim_step(m, mim_batch())
    assert set(out) >= {"loss", "mim"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    got, _ = grads(m)
    assert got <= trainable
    assert set(expert_params(m, V)) | names_with(m, ".attn.", ".norm1.", "patch_embed", "mask_token",
                                                 "mim_head") <= got
    # in the pairs stage everything is trainable, and still only the vision experts are used
    m = tiny()
    set_stage(m, "pairs")
    mim_step(m, mim_batch())["loss"].backward()
    got, _ = grads(m)
    assert set(expert_params(m, V)) <= got
    assert not got & (set(expert_params(m, L)) | set(expert_params(m, VL)) | names_with(m, "token_embedding"))


def test_text_stage_without_shared_parts_trains_the_language_side_only():
    m = tiny()
    trainable = set(set_stage(m, "text", shared=False))
    batch = stage_batches("text", batch_size=4, seed=1)(0)
    out = text_mlm_step(m, batch)
    out["loss"].backward()
    got, _ = grads(m)
    assert got <= trainable
    assert set(expert_params(m, L)) | {"token_embedding.weight", "mlm_bias", "mlm_transform.weight"} <= got
    for n, p in m.named_parameters():
        if ".attn." in n or ".experts.0." in n or ".experts.2." in n:
            assert p.grad is None, n
    # the MLM loss by hand: text mode, then the tied MLM head, on the chosen words only
    tokens = m.encode_text(batch["mlm_ids"], batch["attention_mask"])[0]
    logits = m.mlm_logits(tokens)
    chosen = batch["mlm_labels"] != IGNORE_INDEX
    assert chosen.any()
    close(out["loss"], F.cross_entropy(logits[chosen], batch["mlm_labels"][chosen]))


@pytest.mark.parametrize("mim_target", ["pixels", "normalized"])
def test_mim_loss_by_hand_on_masked_patches_only(mim_target):
    m = tiny(mim_target=mim_target)
    batch = mim_batch(3, seed=4)
    imgs, mask = batch["images"], batch["patch_mask"]
    loss = mim_step(m, batch)["loss"]
    tokens = m.encode_image(imgs, mask)[0]
    pred = m.mim_pixels(tokens)  # (B, N, 8·8·3)
    norm = (imgs - 0.5) / 0.5
    errors, all_errors = [], []
    for b in range(3):
        for n in range(N):
            r, c = divmod(n, 4)  # row-major patches
            target = norm[b, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].permute(1, 2, 0).flatten()  # (p1, p2, c)
            if mim_target == "normalized":  # MAE: the patch minus its mean, over its (unbiased) spread
                centred = target - target.sum() / target.numel()
                target = centred / (centred.pow(2).sum() / (target.numel() - 1) + 1e-6).sqrt()
            e = (pred[b, n] - target).pow(2).mean()
            all_errors.append(e)
            if mask[b, n]:
                errors.append(e)
    close(loss, torch.stack(errors).mean())
    assert differs(torch.stack(all_errors).mean(), loss, 1e-3)  # the hand check can tell "all patches" apart

    # the prediction at an unmasked patch does not count; at a masked one it does
    original = m.mim_pixels

    def shifted(where):
        def f(tokens):
            out = original(tokens).clone()
            out[where] += 3.0
            return out
        return f

    m.mim_pixels = shifted(~mask)
    close(mim_step(m, batch)["loss"], loss)
    m.mim_pixels = shifted(mask)
    assert differs(mim_step(m, batch)["loss"], loss, 1e-2)



@pytest.mark.parametrize("negatives", ["hard", "mixed", "random"])
def test_pair_step_losses_equal_the_formulas(monkeypatch, negatives):
    m = tiny(negatives=negatives)
    batch = stage_batches("pairs", batch_size=6, seed=2)(0)
    positives = batch["positives"]
    recorder = Recorder()
    monkeypatch.setattr(vlmo_module, "sample_negatives", recorder)
    out = pair_step(m, batch)
    assert set(out) >= {"loss", "itc", "itm", "mlm", "itm_acc", "temp"}
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.values())
    close(out["loss"], out["itc"] + out["itm"] + out["mlm"])

    imgs, ids, mask = batch["images"], batch["ids"], batch["attention_mask"]
    image_feat, text_feat = m.encode_image(imgs)[1], m.encode_text(ids, mask)[1]
    sim = m.scale() * image_feat @ text_feat.t()
    pos = positives.float()
    itc = (soft_cross_entropy(sim, pos / pos.sum(1, keepdim=True))
           + soft_cross_entropy(sim.t(), pos.t() / pos.t().sum(1, keepdim=True))) / 2
    close(out["itc"], itc)

    # negatives: drawn by ITC similarity or uniformly (the softmax of zeros), as configured; never a positive
    (s_text, ex_text, neg_text), (s_image, ex_image, neg_image) = recorder.calls
    assert torch.equal(ex_text, positives) and torch.equal(ex_image, positives.t())
    if negatives == "random":
        assert not s_text.any()
    else:
        close(s_text, sim.detach())
    if negatives == "hard":
        close(s_image, sim.detach().t())
    else:
        assert not s_image.any()
    assert not positives[torch.arange(6), neg_text].any()
    assert not positives[neg_image, torch.arange(6)].any()

    fused = m.fuse(torch.cat([imgs, imgs, imgs[neg_image]]), torch.cat([ids, ids[neg_text], ids]),
                   torch.cat([mask, mask[neg_text], mask]))
    labels = torch.cat([torch.ones(6), torch.zeros(12)]).long()
    close(out["itm"], itm_loss(m.itm_logits(fused), labels))

    fused_mlm = m.fuse(imgs, batch["mlm_ids"], mask)
    close(out["mlm"], mlm_loss(m.mlm_logits(fused_mlm[:, 1 + N:]), batch["mlm_labels"]))
    close(out["temp"], 1 / m.scale())


def test_pair_step_gradients_reach_every_expert():
    m = tiny()
    set_stage(m, "pairs")
    pair_step(m, stage_batches("pairs", batch_size=4, seed=3)(0))["loss"].backward()
    got, none = grads(m)
    for e in (V, L, VL):
        assert set(expert_params(m, e)) <= got, e
    assert names_with(m, ".attn.", "itm_head", "image_projection", "text_projection", "log_scale",
                      "token_embedding") <= got
    assert {"mask_token"} | names_with(m, "mim_head") <= none  # MIM is the image stage's


@pytest.mark.parametrize("mim_mask", ["random", "block"])
def test_stage_batches_have_their_keys_and_are_deterministic(mim_mask):
    a = stage_batches("image", batch_size=4, seed=5, mim_mask=mim_mask)(3)
    b = stage_batches("image", batch_size=4, seed=5, mim_mask=mim_mask)(3)
    assert a["patch_mask"].shape == (4, N) and a["patch_mask"].dtype == torch.bool
    assert torch.equal(a["patch_mask"], b["patch_mask"]) and torch.equal(a["images"], b["images"])
    assert (a["patch_mask"].sum(1) >= 7).all()  # ceil(0.4 · 16)
    if mim_mask == "random":
        assert (a["patch_mask"].sum(1) == 7).all()  # exactly ceil(0.4 · 16), anywhere
    assert not torch.equal(stage_batches("image", batch_size=4, seed=5)(4)["patch_mask"], a["patch_mask"])
    assert "patch_mask" not in stage_batches("pairs", batch_size=4, seed=5)(3)


def test_pretrain_trains_each_stage_its_parameters(monkeypatch):
    """Image stage (shared): attention and V experts move, L and VL experts and the words don't;
    text stage (attention frozen): L experts and words move, attention and V don't; pairs: VL too."""
    m = tiny()
    changes = []
    real_fit = minivlm.train.fit

    def recording_fit(model, *args, **kwargs):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        history = real_fit(model, *args, **kwargs)
        changes.append({n for n, p in model.named_parameters() if not torch.equal(p, before[n])})
        return history

    monkeypatch.setattr(minivlm.drivers, "fit", recording_fit)  # the fit staged_pretrain calls
    histories = staged_pretrain(m, [("image", 2, True), ("text", 2, False), ("pairs", 2, True)], batch_size=4,
                                progress=False)
    assert list(histories) == ["1: image", "2: text (attention frozen)", "3: pairs"]
    assert all(len(h.steps) == 2 for h in histories.values())
    assert "mim" in histories["1: image"].losses and "itm" in histories["3: pairs"].losses
    assert all(p.requires_grad for p in m.parameters()) and not m.training
    attention = names_with(m, ".attn.")
    vision, language, vl = (set(expert_params(m, e)) for e in (V, L, VL))
    image_stage, text_stage, pairs_stage = changes
    assert attention | vision <= image_stage
    assert not image_stage & (language | vl | {"token_embedding.weight"})
    assert language | {"token_embedding.weight"} <= text_stage
    assert not text_stage & (attention | vision | vl)
    assert vl | attention | vision | language <= pairs_stage


def test_pretrain_calls_on_stage_end_after_each_stage_with_that_stage_done():
    m = tiny()
    seen = []

    def on_stage_end(label, model):
        attention = [p for n, p in model.named_parameters() if ".attn." in n]
        seen.append((label, [p.detach().clone() for p in attention]))

    staged_pretrain(m, [("image", 1, True), ("text", 1, False), ("pairs", 1, True)], batch_size=4, progress=False,
             on_stage_end=on_stage_end)
    assert [label for label, _ in seen] == ["1: image", "2: text (attention frozen)", "3: pairs"]
    after_image, after_text, after_pairs = (weights for _, weights in seen)
    assert all(torch.equal(a, b) for a, b in zip(after_image, after_text)), "stage 2 keeps the attention frozen"
    assert not all(torch.equal(a, b) for a, b in zip(after_text, after_pairs)), "stage 3 trains the attention"


# ----------------------------------------------------------------------------- retrieval


@pytest.fixture(scope="module")
def gallery():
    texts = TEXTS + ["a yellow triangle.", "a big black circle left of a red star", "three circles."]
    return images(5, seed=7), texts


def test_retrieval_passes_equal_the_formula(gallery):
    imgs, texts = gallery
    m = tiny()
    want = {"dual": 5 + 6, "fusion": 5 * 6, "rerank": 5 + 6 + 5 * 3}
    for mode, n in want.items():
        r = retrieve(m, imgs, texts, mode, k=3)
        assert r["passes"] == r["formula"] == n, mode
        assert r["scores"].shape == (5, 6) and r["seconds"] >= 0
    assert retrieve(m, imgs, texts, "rerank", k=100)["passes"] == 5 + 6 + 5 * 6  # k capped at the texts


def test_rerank_reorders_the_dual_top_k_by_fusion(gallery):
    imgs, texts = gallery
    m = tiny()
    m.train()
    dual = itc_similarity(m, imgs, texts)
    fusion = fusion_scores(m, imgs, texts)
    assert m.training  # the scorers run in eval mode and restore the mode
    close(retrieve(m, imgs, texts, "dual")["scores"], dual)
    close(retrieve(m, imgs, texts, "fusion")["scores"], fusion)
    rerank = retrieve(m, imgs, texts, "rerank", k=3)["scores"]
    top = dual.topk(3, dim=1).indices
    for i in range(5):
        rest = [j for j in range(6) if j not in top[i].tolist()]
        close(rerank[i, rest], dual[i, rest])  # outside the top k: the dual score
        assert rerank[i, top[i]].min() > rerank[i, rest].max()  # the k re-ranked stay on top
        assert torch.equal(rerank[i, top[i]].argsort(), fusion[i, top[i]].argsort())  # in fusion's order
    full = retrieve(m, imgs, texts, "rerank", k=6)["scores"]
    assert torch.equal(full.argmax(1), fusion.argmax(1))


def test_fusion_scores_for_pairs_and_alone(gallery):
    imgs, texts = gallery
    m = tiny().eval()
    full = fusion_scores(m, imgs, texts)
    pairs = torch.tensor([[0, 5], [4, 0], [2, 2], [2, 3], [0, 5]])
    close(fusion_scores(m, imgs, texts, pairs), full[pairs[:, 0], pairs[:, 1]])
    close(fusion_scores(m, imgs, texts, batch_size=7), full)
    for i, j in [(1, 4), (3, 1)]:  # one pair alone, its text unpadded: the same log-odds
        logits = m.itm_logits(m.fuse(imgs[i:i + 1], [texts[j]]))
        close(full[i, j], logits[0, 1] - logits[0, 0])
    assert differs(full, full.mean(), 1e-4)


# ----------------------------------------------------------------------------- bad input


def test_images_of_the_wrong_size_range_or_dtype():
    m = tiny()
    with pytest.raises(ValueError, match=r"images must have shape \(\?, 3, 32, 32\), got \(2, 3, 16, 16\)"):
        m.encode_image(images(2, size=16))
    with pytest.raises(ValueError, match=r"images must lie in \[0\.0, 1\.0\]"):
        m.fuse(images(3) * 2, TEXTS)
    with pytest.raises(ValueError, match="images must have 4 dims"):
        m.encode_image(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="images must have the model's dtype torch.float32"):
        m.encode_image(images(2).double())


def test_token_ids_out_of_vocab_or_too_long():
    m = tiny()
    v = len(TOK)
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {v - 1}\], got values in \[2, {v}\]"):
        m.encode_text(torch.tensor([[2, 5, v]]))
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {v - 1}\], got values in \[-1, 5\]"):
        m.fuse(images(1), torch.tensor([[2, 5, -1]]))
    with pytest.raises(ValueError, match="text has 33 tokens, longer than max_text_len=32"):
        m.encode_text(torch.full((1, 33), 7))
    with pytest.raises(ValueError, match="longer than max_len=32"):
        m.encode_text(["a " * 40])
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        m.encode_text(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(1, 3\), got \(1, 4\)"):
        m.encode_text(torch.tensor([[2, 5, 3]]), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="wrap it in a list"):
        m.encode_text("a red circle.")


def test_bad_mode_stage_and_config():
    m = tiny()
    with pytest.raises(ValueError, match=r"mode must be one of \('image', 'text', 'fusion'\), got 'audio'"):
        m.routes("audio", 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        m.run(torch.randn(1, 3, 32), "video", 0)
    with pytest.raises(ValueError, match="image mode takes only image tokens, got 2 image and 1 text tokens"):
        m.routes("image", 2, 1)
    with pytest.raises(ValueError, match="text mode takes only text tokens"):
        m.routes("text", 1, 3)
    for call in (lambda: set_stage(m, "video"), lambda: stage_parameters(m, "video"),
                 lambda: stage_batches("video"), lambda: staged_pretrain(m, [("video", 1, True)], progress=False)):
        with pytest.raises(ValueError, match=r"stage must be one of \('image', 'text', 'pairs'\), got 'video'"):
            call()
    with pytest.raises(TypeError, match="shared must be True or False, got 1"):
        set_stage(m, "image", shared=1)
    with pytest.raises(ValueError, match="schedule must be a non-empty list"):
        staged_pretrain(m, [], progress=False)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        staged_pretrain(m, [("image", 0, True)], progress=False)
    with pytest.raises(ValueError, match="vl_depth=3 cannot exceed depth=2"):
        VLMoConfig(**{**TINY, "vl_depth": 3})
    with pytest.raises(ValueError, match="vl_depth must be an int >= 0, got -1"):
        VLMoConfig(**{**TINY, "vl_depth": -1})
    with pytest.raises(ValueError, match=r"mode must be 'dual', 'fusion' or 'rerank', got 'cross'"):
        retrieve(m, images(2), TEXTS[:2], mode="cross")
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        retrieve(m, images(2), TEXTS[:2], mode="rerank", k=0)


def test_bad_patch_mask():
    m = tiny()
    imgs = images(2)
    with pytest.raises(ValueError, match=r"patch_mask must have shape \(B, N\) = \(2, 16\), got \(2, 17\)"):
        m.encode_image(imgs, torch.zeros(2, 17, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"patch_mask must have shape \(B, N\) = \(2, 16\), got \(3, 16\)"):
        mim_step(m, {"images": imgs, "patch_mask": torch.zeros(3, 16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="patch_mask must be a bool tensor, got dtype torch.float32"):
        m.encode_image(imgs, torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"batch is missing \['patch_mask'\]"):
        mim_step(m, {"images": imgs})
    with pytest.raises(TypeError, match="batch must be a dict"):
        mim_step(m, [imgs])
    with pytest.raises(TypeError, match="expected a VLMo, got Linear"):
        mim_step(torch.nn.Linear(2, 2), mim_batch())


def test_mismatched_batch_sizes():
    m = tiny()
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    with pytest.raises(ValueError, match="batch sizes must match, got images=3, texts=2"):
        m.fuse(images(3), TEXTS[:2])
    with pytest.raises(ValueError, match="batch sizes must match, got images=3, texts=2"):
        m.fuse(images(3), ids, mask)
    with pytest.raises(ValueError, match=r"need as many texts as images .*images=3, texts=2"):
        m.match_probability(images(3), TEXTS[:2])
    batch = stage_batches("pairs", batch_size=4, seed=0)(0)
    batch["mlm_labels"] = batch["mlm_labels"][:3]
    with pytest.raises(ValueError, match="same batch size"):
        pair_step(m, batch)


def test_fuse_embedded_batch_mismatch_is_a_value_error():
    m = tiny()
    ids, mask = TOK(TEXTS[:2], add_bos=True, add_eos=True)
    with pytest.raises(ValueError, match="batch"):
        m.fuse_embedded(m.embed_image(images(3)), m.embed_text(ids), mask)


def test_mim_step_with_nothing_masked_is_a_value_error():
    with pytest.raises(ValueError, match="patch_mask"):
        mim_step(tiny(), {"images": images(2), "patch_mask": torch.zeros(2, N, dtype=torch.bool)})


def test_fusion_scores_pairs_out_of_range_is_a_value_error(gallery):
    imgs, texts = gallery
    with pytest.raises(ValueError, match="pairs"):
        fusion_scores(tiny(), imgs, texts, torch.tensor([[0, 6]]))


def test_mim_targets_normalise_each_patch_or_keep_the_pixels():
    imgs = images(2, seed=3)
    imgs[1, :, :8, :8] = 0.25  # a flat patch: nothing to predict beyond its mean
    pixels = tiny(mim_target="pixels").mim_targets(imgs)
    normed = tiny().mim_targets(imgs)  # the default, MAE's
    close(pixels, patchify((imgs - 0.5) / 0.5, 8))
    real = normed[0]  # random pixels: every patch mean 0, spread 1
    close(real.mean(-1), torch.zeros(N), atol=1e-5)
    close(real.std(-1), torch.ones(N), atol=1e-4)
    assert normed[1, 0].abs().max() == 0  # the flat patch becomes 0, not noise over 1e-6


def test_unimodal_check_scores_the_trivial_predictor_itself_as_no_gain(monkeypatch):
    m = tiny()
    image = vlmo_module.unimodal_check(m, "image", train_seed=1, n_train=2, n_heldout=1, batch_size=8)
    assert set(image) == {"model", "trivial", "gain"}
    close(torch.tensor(image["gain"].value), torch.tensor(image["trivial"].value - image["model"].value), atol=1e-5)
    assert image["model"].n == 8 * 7  # every masked patch of the held-out batch, ceil(0.4 · 16) per image
    # a MIM head that outputs the mean target patch of the training batches is the trivial predictor: gain 0
    train = stage_batches("image", 8, seed=1)
    mean_patch = torch.cat([m.mim_targets(train(i)["images"]).flatten(0, 1) for i in range(2)]).mean(0)
    with torch.no_grad():
        m.mim_head.weight.zero_()
        m.mim_head.bias.copy_(mean_patch)
    same = vlmo_module.unimodal_check(m, "image", train_seed=1, n_train=2, n_heldout=1, batch_size=8)
    assert abs(same["gain"].value) < 1e-6 and abs(same["model"].value - image["trivial"].value) < 1e-6
    # text: logits equal to the log word frequencies are the trivial predictor too
    text = vlmo_module.unimodal_check(m, "text", train_seed=1, n_train=2, n_heldout=1, batch_size=8)
    counts = torch.ones(m.config.vocab_size)
    for i in range(2):
        labels = stage_batches("text", 8, seed=1)(i)["mlm_labels"]
        counts += torch.bincount(labels[labels != IGNORE_INDEX], minlength=m.config.vocab_size).float()
    monkeypatch.setattr(m, "mlm_logits", lambda tokens: (counts / counts.sum()).log().expand(*tokens.shape[:2], -1))
    frequency = vlmo_module.unimodal_check(m, "text", train_seed=1, n_train=2, n_heldout=1, batch_size=8)
    assert abs(frequency["gain"].value) < 1e-6 and abs(frequency["model"].value - text["trivial"].value) < 1e-6
    with pytest.raises(ValueError, match="unimodal stage"):
        vlmo_module.unimodal_check(m, "pairs")


def test_stage_of_reads_every_label_staged_pretrain_writes():
    from minivlm.drivers import stage_of, stage_seed

    histories = staged_pretrain(tiny(), [("image", 1, True), ("text", 1, False), ("pairs", 1, True)],
                                batch_size=4, seed=3, progress=False)
    assert [stage_of(label) for label in histories] == [(0, "image"), (1, "text"), (2, "pairs")]
    assert stage_seed(3, 1) == 301  # the stream staged_pretrain gave stage 1 (unimodal_check's train_seed)
