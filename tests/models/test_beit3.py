"""BEiT-3 (chapter 08): the VQ-KD tokenizer against a hand-averaged CLIP teacher and its own
quantiser; BEiT-3 as VLMo's network with its own heads; masked data modelling against its
formula, its gradients and its targets; the captioning mask, causality and greedy decoding;
the fine-tuning steps; bad input."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import minivlm.drivers
import minivlm.models.beit3 as beit3
from minivlm.data.masking import IGNORE_INDEX
from minivlm.data.pairs import pretrain_batches, vqa_batches
from minivlm.data.tokenizer import Tokenizer
from minivlm.drivers import train_tokenizer
from minivlm.losses import mlm_loss, multi_positive_itc
from minivlm.models.beit3 import (
    BEiT3,
    BEiT3Config,
    VisualTokenizer,
    VisualTokenizerConfig,
    caption_batches,
    caption_inputs,
    caption_step,
    code_usage,
    masked_token_loss,
    mdm_batches,
    mdm_step,
    retrieval_step,
    teacher_features,
    vqa_step,
    vqkd_step,
)
from minivlm.models.clip import CLIP, CLIPConfig
from minivlm.models.vlmo import VLMo, VLMoConfig
from minivlm.train import History

TOK = Tokenizer.from_world()
TINY = dict(dim=16, depth=2, vl_depth=1, heads=2, embed_dim=16, codebook_size=8)
TOKENIZER = dict(dim=16, depth=1, heads=2, code_dim=8, codebook_size=8, teacher_dim=16)
N, K = 16, 8  # 4 × 4 patches of 8 pixels on a 32-pixel image; codes
V, L, VL = 0, 1, 2  # expert indices in a MoME block


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (see tests/models/test_vilt.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def moved(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move every weight off its initial value (LayerNorms off (1, 0), a non-zero mask token and
    biases), so that every parameter leaves a trace in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim:  # all but VLMo's temperature
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def tiny(**kw) -> BEiT3:
    torch.manual_seed(0)
    return moved(BEiT3(BEiT3Config(**{**TINY, **kw})))


def teacher() -> CLIP:
    torch.manual_seed(0)
    return moved(CLIP(CLIPConfig(vision_dim=16, vision_depth=1, vision_heads=2, text_dim=16, text_depth=1,
                                 text_heads=2, embed_dim=16))).eval()


def visual_tokenizer(seed: int = 0, **kw) -> VisualTokenizer:
    torch.manual_seed(seed)
    return VisualTokenizer(VisualTokenizerConfig(**{**TOKENIZER, **kw}))


def images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def differs(a, b, tol=1e-5) -> bool:
    return bool((a - b).abs().max() > tol)


def special_ids() -> torch.Tensor:
    return torch.tensor(sorted(TOK._special_ids))


# ----------------------------------------------------------------------------- the teacher


def test_teacher_features_average_clip_patches_onto_the_grid():
    clip, x = teacher(), images(3)
    out = teacher_features(clip, x, 4)
    assert out.shape == (3, 16, 16)
    with torch.no_grad():
        tokens = clip.visual.forward_features((x - clip.image_mean) / clip.image_std)[:, 1:]  # (B, 64, D)
    assert tokens.shape == (3, 64, 16)
    want = torch.zeros(3, 16, 16)
    for r in range(4):  # cell (r, c) of the 4 × 4 grid averages the teacher's rows 2r, 2r+1, columns 2c, 2c+1
        for c in range(4):
            block = [(2 * r + a) * 8 + 2 * c + b for a in range(2) for b in range(2)]
            want[:, r * 4 + c] = tokens[:, block].mean(1)
    close(out, want, atol=1e-6)
    close(teacher_features(clip, x, 8), tokens, atol=1e-6)  # the teacher's own grid: nothing averaged
    assert not clip.training, "the teacher must stay in eval mode"


@pytest.mark.parametrize("grid", [3, 16])
def test_teacher_features_reject_a_grid_that_does_not_divide(grid):
    with pytest.raises(ValueError, match="cannot be averaged"):
        teacher_features(teacher(), images(1), grid)


# ----------------------------------------------------------------------------- the visual tokenizer


def test_tokenize_is_the_quantisers_choice_and_moves_no_code():
    vt = visual_tokenizer().train()
    x = images(5)
    before = {k: v.clone() for k, v in vt.state_dict().items()}
    tokens = vt.tokenize(x)
    assert tokens.shape == (5, N) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < K
    assert vt.training, "tokenize must give the module back in the mode it found it"
    for k, v in vt.state_dict().items():
        assert torch.equal(v, before[k]), f"tokenize changed {k}"
    assert torch.equal(vt.tokenize(x, batch_size=2), tokens)  # chunks change nothing
    vt.eval()
    _, q = vt(x)
    assert torch.equal(q.indices, tokens)
    # the nearest unit code to each normalised encoder output
    z = F.normalize(vt.encode(x), dim=-1)
    assert torch.equal((z @ vt.quantizer.codes().t()).argmax(-1), tokens)
    counts = code_usage(vt, x)
    assert counts.shape == (K,) and torch.equal(counts, torch.bincount(tokens.flatten(), minlength=K))
    vt.train()(x)  # the control: a forward pass in training mode does move the EMA codes
    assert not torch.equal(vt.quantizer.codebook, before["quantizer.codebook"])


def test_vqkd_step_is_one_minus_cosine_plus_the_commitment_loss():
    clip, x = teacher(), images(4)
    vt = moved(visual_tokenizer(beta=0.5)).eval()
    batch = {"images": x, "targets": teacher_features(clip, x, 4)}
    out = vqkd_step(vt, batch)
    with torch.no_grad():
        z = vt.encode(x)
        codes = vt.quantizer.codes()
        idx = (F.normalize(z, dim=-1) @ codes.t()).argmax(-1)  # (B, N)
        q = z + (codes[idx] - z)  # the straight-through value
        y = vt.to_teacher(vt.decoder_norm(vt.decoder(vt.from_code(q) + vt.decoder_pos)))  # (B, N, teacher_dim)
        cosine = F.cosine_similarity(y, batch["targets"], dim=-1).mean()
        commitment = (F.normalize(z, dim=-1) - codes[idx]).pow(2).mean()
    close(out["cosine"], cosine)
    close(out["loss"], 1 - cosine + 0.5 * commitment)
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="targets"):
        vqkd_step(vt, {"images": x, "targets": batch["targets"][:, :8]})
    with pytest.raises(ValueError, match="targets"):
        vqkd_step(vt, {"images": x})
    with pytest.raises(TypeError, match="VisualTokenizer"):
        vqkd_step(tiny(), batch)


def test_train_tokenizer_starts_the_codes_on_encoder_outputs_and_restarts_early_only(monkeypatch):
    clip, vt = teacher(), visual_tokenizer()
    start = copy.deepcopy(vt)
    random_init = vt.quantizer.codebook.clone()
    steps, every = 10, 2

    done = [0]  # vqkd steps taken so far
    real_step = beit3.vqkd_step

    after_step = {}  # the EMA state as the last step left it

    def counting_step(model, batch):
        done[0] += 1
        out = real_step(model, batch)
        after_step.update(codebook=vt.quantizer.codebook.clone(), cluster_size=vt.quantizer.cluster_size.clone())
        return out

    last_images = [None]  # the images of the batch made last (the probe's, just before a restart)
    real_batches = beit3.tokenizer_batches

    def recording_batches(*args, **kw):
        make = real_batches(*args, **kw)

        def batch(step):
            out = make(step)
            last_images[0] = out["images"]
            return out

        return batch

    calls = []
    real_restart = vt.quantizer.restart_dead

    def spy(z, counts, generator=None):
        if after_step:  # looking for dead codes must not move the EMA codes
            assert torch.equal(vt.quantizer.codebook, after_step["codebook"])
            assert torch.equal(vt.quantizer.cluster_size, after_step["cluster_size"])
        moved_codes = real_restart(z, counts, generator)
        calls.append(dict(step=done[0], z=z.clone(), images=last_images[0], counts=counts.clone(), n=moved_codes,
                          codebook=vt.quantizer.codebook.clone(), codes=vt.quantizer.codes().clone()))
        return moved_codes

    monkeypatch.setattr(minivlm.drivers, "vqkd_step", counting_step)  # the names train_tokenizer looks up
    monkeypatch.setattr(minivlm.drivers, "tokenizer_batches", recording_batches)
    monkeypatch.setattr(vt.quantizer, "restart_dead", spy)
    history, restarts = train_tokenizer(vt, clip, steps, batch_size=4, warmup=2, restart_every=every, progress=False)

    assert isinstance(history, History) and len(history.steps) == steps and done[0] == steps
    assert all(math.isfinite(v) for v in history.losses["loss"])
    # the initial restart, before any step: every code moves onto an encoder output of a fresh batch
    first = calls[0]
    assert first["step"] == 0 and first["n"] == K and int(first["counts"].sum()) == 0
    with torch.no_grad():  # the restarts place codes on the unit sphere, where the search looks
        zn = F.normalize(start.encode(first["images"]).reshape(-1, 8), dim=-1)  # (B·N, code_dim)
    close(first["z"], zn, atol=1e-6)
    for k in range(K):
        assert any(torch.equal(first["codebook"][k], row) for row in first["z"]), f"code {k} is no encoder output"
        assert not torch.equal(first["codebook"][k], random_init[k])
    close(first["codes"].norm(dim=-1), torch.ones(K), atol=1e-6)
    assert (first["codes"] @ zn.t()).max(1).values.min() > 1 - 1e-5, "each unit code is a normalised encoder output"
    # the periodic restarts: every `every` steps, only while fewer than 80 % of the steps are done
    later = calls[1:]
    assert [c["step"] for c in later] == [s for s in range(1, steps + 1) if s % every == 0 and s < 0.8 * steps]
    assert all(c["step"] < 0.8 * steps for c in later)
    assert restarts == [c["n"] for c in later]
    for c in later:  # the dead codes, and only they, restart on encoder outputs of the probe batch
        dead = c["counts"] == 0
        assert c["n"] == int(dead.sum())
        assert all(any(torch.equal(c["codebook"][k], row) for row in c["z"]) for k in dead.nonzero().flatten())
    assert sum(restarts) > 0, "the tiny run should have had dead codes to restart"


def test_train_tokenizer_without_restarts():
    history, restarts = train_tokenizer(visual_tokenizer(), teacher(), 2, batch_size=4, warmup=0, restart_every=0,
                                        progress=False)
    assert restarts == [] and len(history.steps) == 2
    with pytest.raises(TypeError, match="VisualTokenizer"):
        train_tokenizer(tiny(), teacher(), 2, progress=False)


# ----------------------------------------------------------------------------- BEiT-3 is VLMo's network


def test_beit3_is_vlmo_with_its_own_heads():
    m = tiny()
    torch.manual_seed(0)
    v = VLMo(VLMoConfig(**{k: val for k, val in TINY.items() if k != "codebook_size"}))
    ours = {n: p.shape for n, p in m.named_parameters()}
    for name, p in v.named_parameters():
        if name.startswith(("itm_head.", "mim_head.")):
            continue
        assert name in ours, f"VLMo's {name} is missing from BEiT3"
        assert ours[name] == p.shape, f"{name}: BEiT3 {tuple(ours[name])}, VLMo {tuple(p.shape)}"
    assert not hasattr(m, "itm_head") and not any(n.startswith("itm_head.") for n in ours)
    assert ours["mim_head.weight"] == (K, 16)  # a visual token per patch, not P·P·3 pixels
    assert isinstance(m, VLMo)
    tokens, _ = m.encode_image(images(3))
    logits = m.mim_logits(tokens)
    assert logits.shape == (3, N, K)
    close(logits, m.mim_head(tokens[:, 1:]))  # the patches, not the CLS
    fused = m.fuse(images(2), ["a red circle.", "a blue square."])
    with pytest.raises(NotImplementedError):
        m.itm_logits(fused)
    with pytest.raises(NotImplementedError):
        m.mim_pixels(tokens)


@pytest.mark.parametrize("kw, match", [
    (dict(codebook_size=1), "codebook_size"),
    (dict(mim_ratio=1.0), "mim_ratio"),
    (dict(text_mask_ratio=1.0), "text_mask_ratio"),
    (dict(pair_mask_ratio=1.0), "pair_mask_ratio"),
    (dict(caption_mask_ratio=-0.1), "caption_mask_ratio"),
    (dict(answers=("yes", "no", "yes")), "answers"),
    (dict(answers=("yes",)), "answers"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        BEiT3Config(**{**TINY, **kw})


def test_beit3_needs_its_own_config():
    with pytest.raises(TypeError, match="BEiT3Config"):
        BEiT3(VLMoConfig())
    from minivlm.data.shapesworld import VQA_ANSWER_VOCAB

    assert BEiT3Config(**TINY).answers == tuple(VQA_ANSWER_VOCAB)


# ----------------------------------------------------------------------------- masked data modelling


@pytest.fixture(scope="module")
def mdm_batch():
    torch.manual_seed(0)
    return mdm_batches(visual_tokenizer(), batch_size=4, seed=0)(0)


def test_mdm_step_is_the_sum_of_its_three_losses(mdm_batch):
    m, b = tiny(), mdm_batch
    out = mdm_step(m, b)
    assert torch.isfinite(out["loss"])
    close(out["loss"].detach(), out["image"] + out["text"] + (out["pair_image"] + out["pair_text"]) / 2)
    n = m.n_image_tokens
    with torch.no_grad():  # each term by hand
        tokens = m.encode_image(b["images"], b["patch_mask"])[0]
        image = F.cross_entropy(m.mim_head(tokens[:, 1:])[b["patch_mask"]], b["visual_tokens"][b["patch_mask"]])
        text = mlm_loss(m.mlm_logits(m.encode_text(b["text_ids"], b["text_mask"])[0]), b["text_labels"])
        fused = m.fuse_embedded(m.embed_image(b["pair_images"], b["pair_patch_mask"]), m.embed_text(b["pair_ids"]),
                                b["pair_mask"])
        pm = b["pair_patch_mask"]
        pair_image = F.cross_entropy(m.mim_head(fused[:, 1:n])[pm], b["pair_visual_tokens"][pm])
        pair_text = mlm_loss(m.mlm_logits(fused[:, n:]), b["pair_labels"])
    for key, want in (("image", image), ("text", text), ("pair_image", pair_image), ("pair_text", pair_text)):
        close(out[key], want)
    # the pair is fused: its image term reads the caption; the image-only term reads no text
    other = dict(b, pair_ids=b["pair_ids"].roll(1, dims=0), pair_mask=b["pair_mask"].roll(1, dims=0),
                 pair_labels=b["pair_labels"].roll(1, dims=0), text_ids=b["text_ids"].roll(1, dims=0),
                 text_mask=b["text_mask"].roll(1, dims=0), text_labels=b["text_labels"].roll(1, dims=0))
    out2 = mdm_step(m, other)
    assert torch.equal(out2["image"], out["image"])
    assert differs(out2["pair_image"], out["pair_image"])


def test_mdm_step_trains_every_expert_and_head(mdm_batch):
    m = tiny()
    mdm_step(m, mdm_batch)["loss"].backward()

    def reached(p):
        return p.grad is not None and bool(p.grad.abs().sum() > 0)

    for i, block in enumerate(m.blocks):
        experts = block.ffn.experts
        for e in range(len(experts)):
            assert all(reached(p) for p in experts[e].parameters()), f"no gradient in block {i}, expert {e}"
    assert len(m.blocks[-1].ffn.experts) == 3  # the vision-language expert was among them
    assert reached(m.mim_head.weight) and reached(m.token_embedding.weight) and reached(m.mlm_bias)
    assert reached(m.mask_token) and reached(m.patch_embed.proj.weight)
    assert m.image_projection.weight.grad is None, "masked data modelling has no contrastive term"


def test_mdm_targets_count_only_at_masked_patches(mdm_batch):
    m, b = tiny(), mdm_batch
    base = mdm_step(m, b)
    for mask_key, token_key, term in (("patch_mask", "visual_tokens", "image"),
                                      ("pair_patch_mask", "pair_visual_tokens", "pair_image")):
        mask, tokens = b[mask_key], b[token_key]
        assert bool((~mask).any()) and bool(mask.any())
        unmasked = torch.where(mask, tokens, (tokens + 1 + torch.randint(K - 1, tokens.shape)) % K)
        assert not torch.equal(unmasked, tokens)
        assert torch.equal(mdm_step(m, {**b, token_key: unmasked})["loss"], base["loss"])
        r, c = mask.nonzero()[0].tolist()
        at_masked = tokens.clone()
        at_masked[r, c] = (tokens[r, c] + 1) % K
        changed = mdm_step(m, {**b, token_key: at_masked})
        assert differs(changed[term], base[term]) and differs(changed["loss"], base["loss"])


def test_masked_token_loss():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 5, K, generator=g), torch.randint(K, (2, 5), generator=g)
    chosen = torch.tensor([[True, False, False, True, False], [False, False, True, False, False]])
    want = -torch.stack([logits[0, 0].log_softmax(-1)[targets[0, 0]], logits[0, 3].log_softmax(-1)[targets[0, 3]],
                         logits[1, 2].log_softmax(-1)[targets[1, 2]]]).mean()
    close(masked_token_loss(logits, targets, chosen), want)
    logits.requires_grad_(True)
    nothing = masked_token_loss(logits, targets, torch.zeros(2, 5, dtype=torch.bool))  # minivlm.losses' rule
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="must agree"):
        masked_token_loss(logits, targets[:, :4], chosen)


def test_mdm_step_bad_batch(mdm_batch):
    m = tiny()
    with pytest.raises(ValueError, match="pair_labels"):
        mdm_step(m, {k: v for k, v in mdm_batch.items() if k != "pair_labels"})
    with pytest.raises(ValueError, match="no position is masked"):
        mdm_step(m, {**mdm_batch, "patch_mask": torch.zeros_like(mdm_batch["patch_mask"])})
    with pytest.raises(TypeError, match="BEiT3"):
        mdm_step(VLMo(VLMoConfig(dim=16, depth=2, vl_depth=1, heads=2, embed_dim=16)), mdm_batch)


def _chosen_share(ids, labels, mask) -> float:
    words = mask.bool() & ~torch.isin(ids, special_ids())  # positions that may be chosen
    return float((labels != IGNORE_INDEX).sum() / words.sum())


def _check_text_masking(inputs, labels, mask):
    """labels name exactly the chosen positions: real words, never a special token or padding;
    an input that is not its original word sits at a chosen position."""
    chosen = labels != IGNORE_INDEX
    assert bool(mask[:, 0].all()) and bool((inputs[:, 0] == TOK.bos_id).all()) and not bool(chosen[:, 0].any())
    assert not bool((chosen & ~mask.bool()).any()), "a label on padding"
    assert not bool(torch.isin(labels[chosen], special_ids()).any()), "a special token was chosen"
    assert bool(((inputs == TOK.pad_id) == ~mask.bool()).all())
    assert not bool(((inputs == TOK.mask_id) & ~chosen).any()), "a <mask> at a position without a label"
    original = torch.where(chosen, labels, inputs)
    assert not bool(((inputs != original) & ~chosen).any())
    return original


def test_mdm_batches_shapes_targets_and_masks():
    vt = visual_tokenizer()
    batches = mdm_batches(vt, batch_size=4, seed=0)
    b = batches(0)
    keys = {"images", "patch_mask", "visual_tokens", "text_ids", "text_labels", "text_mask", "pair_images",
            "pair_patch_mask", "pair_visual_tokens", "pair_ids", "pair_labels", "pair_mask"}
    assert set(b) == keys
    assert b["images"].shape == b["pair_images"].shape == (4, 3, 32, 32)
    for key in ("patch_mask", "pair_patch_mask", "visual_tokens", "pair_visual_tokens"):
        assert b[key].shape == (4, N)
    assert b["patch_mask"].dtype == b["pair_patch_mask"].dtype == torch.bool
    assert bool((b["patch_mask"].sum(1) >= math.ceil(0.4 * N)).all())
    assert torch.equal(b["visual_tokens"], vt.tokenize(b["images"]))  # tokens of the unmasked images
    assert torch.equal(b["pair_visual_tokens"], vt.tokenize(b["pair_images"]))
    for ids, labels, mask in (("text_ids", "text_labels", "text_mask"), ("pair_ids", "pair_labels", "pair_mask")):
        assert b[ids].shape == b[labels].shape == b[mask].shape and b[ids].shape[0] == 4
        _check_text_masking(b[ids], b[labels], b[mask])
    assert not torch.equal(b["images"], b["pair_images"]), "images and pairs are independent draws"
    again = batches(0)
    for key in keys:
        assert torch.equal(again[key], b[key]), f"{key} differs for the same step"
    assert not torch.equal(batches(1)["images"], b["images"])
    assert not torch.equal(mdm_batches(vt, batch_size=4, seed=1)(0)["images"], b["images"])


def test_mdm_batches_mask_shares():
    b = mdm_batches(visual_tokenizer(), batch_size=256, seed=0, pair_mask_ratio=0.5, text_mask_ratio=0.15)(0)
    text = _check_text_masking(b["text_ids"], b["text_labels"], b["text_mask"])
    pair = _check_text_masking(b["pair_ids"], b["pair_labels"], b["pair_mask"])
    assert abs(_chosen_share(text, b["text_labels"], b["text_mask"]) - 0.15) < 0.04
    assert abs(_chosen_share(pair, b["pair_labels"], b["pair_mask"]) - 0.5) < 0.05
    chosen = b["pair_labels"] != IGNORE_INDEX
    assert abs(float((b["pair_ids"][chosen] == TOK.mask_id).float().mean()) - 0.8) < 0.06  # BERT's 80 %
    assert abs(float(b["patch_mask"].float().mean()) - 0.4) < 0.1


def test_mdm_batches_bad_tokenizer():
    with pytest.raises(ValueError, match="patches of 4"):
        mdm_batches(visual_tokenizer(patch_size=4), batch_size=4)
    with pytest.raises(ValueError, match="must agree"):
        mdm_batches(visual_tokenizer(image_size=16), batch_size=4)
    with pytest.raises(TypeError, match="VisualTokenizer"):
        mdm_batches(tiny(), batch_size=4)
    with pytest.raises(ValueError, match="pair_mask_ratio"):
        mdm_batches(visual_tokenizer(), batch_size=4, pair_mask_ratio=1.0)


# ----------------------------------------------------------------------------- captioning


def test_caption_mask():
    m = tiny()
    n = m.n_image_tokens  # 17
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = m.caption_mask(attention_mask)
    t = attention_mask.shape[1]
    assert mask.shape == (2, n + t, n + t) and mask.dtype == torch.bool
    for b in range(2):
        for q in range(n):  # an image token: every image token, no text
            assert mask[b, q, :n].all() and not mask[b, q, n:].any()
        for i in range(t):  # text token i: the whole image, real text tokens 0..i, no padding
            want = [j <= i and bool(attention_mask[b, j]) for j in range(t)]
            assert mask[b, n + i, :n].all()
            assert mask[b, n + i, n:].tolist() == want, (b, i)


def test_caption_logits_are_causal_in_the_text():
    m = tiny().eval()
    ids, attention_mask = TOK(["a red circle above a blue square.", "a green star."], add_bos=True, add_eos=True)
    image_x = m.embed_image(images(2))
    logits = m.caption_logits(image_x, ids, attention_mask)
    assert logits.shape == (2, ids.shape[1], m.config.vocab_size)
    for j in (1, 3, 5):
        changed = ids.clone()
        changed[:, j] = TOK.mask_id
        after = m.caption_logits(image_x, changed, attention_mask)
        close(after[:, :j], logits[:, :j], atol=1e-6)
        assert differs(after[0, j], logits[0, j])
    assert differs(m.caption_logits(image_x.flip(0), ids, attention_mask)[:, 0], logits[:, 0])  # the image is seen


def _greedy_by_hand(m: BEiT3, x: torch.Tensor, max_len: int) -> list[str]:
    """BEiT-3's decoding written out: append <mask>, take the argmax at the last position, stop at <eos>."""
    image_x = m.embed_image(x)
    out = []
    for i in range(len(x)):
        ids = [TOK.bos_id]
        while len(ids) < max_len:
            inp = torch.tensor([ids + [m.config.mask_id]])
            token = int(m.caption_logits(image_x[i:i + 1], inp, torch.ones_like(inp, dtype=torch.bool))[0, -1].argmax())
            if token == TOK.eos_id:
                break
            ids.append(token)
        out.append(TOK.decode(ids[1:max_len - 1]))
    return out


def test_greedy_caption_appends_a_mask_and_stops_at_eos():
    m = tiny().eval()
    x = images(2)
    with torch.no_grad():
        want = _greedy_by_hand(m, x, max_len=6)
        got = m.caption(x, max_len=6)
    assert isinstance(got, list) and len(got) == 2 and all(isinstance(c, str) for c in got)
    assert got == want
    assert m.caption(x, max_len=6) == got
    with torch.no_grad():
        m.mlm_bias[TOK.eos_id] += 100.0  # <eos> first: empty captions
        assert _greedy_by_hand(m, x, max_len=6) == ["", ""]
    assert m.caption(x, max_len=6) == ["", ""]


def test_caption_inputs():
    g = torch.Generator().manual_seed(0)
    b, t = 400, 12
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    attention_mask = torch.arange(t)[None] < lengths[:, None]
    words = torch.randint(20, len(TOK), (b, t), generator=g)
    ids = torch.where(attention_mask, words, torch.full_like(words, TOK.pad_id))
    ids[:, 0] = TOK.bos_id
    ids[torch.arange(b), lengths - 1] = TOK.eos_id
    ratio = 0.3
    inputs, labels = caption_inputs(ids, attention_mask, TOK.mask_id, ratio, generator=g)
    masked = inputs == TOK.mask_id
    assert not bool(masked[:, 0].any()), "<bos> was masked"
    assert not bool((masked & ~attention_mask).any()), "padding was masked"
    assert bool(masked.any(1).all()), "a caption with nothing masked"
    assert torch.equal(labels, torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX)))
    assert torch.equal(inputs[~masked], ids[~masked])
    # a row of e eligible tokens masks e·ratio on average, plus one when the draw chose none
    eligible = (lengths - 1).double()
    expected = float((eligible * ratio + (1 - ratio) ** eligible).sum() / eligible.sum())
    share = float(masked.sum() / eligible.sum())
    assert abs(share - expected) < 0.03 and abs(share - ratio) < 0.06
    again = caption_inputs(ids, attention_mask, TOK.mask_id, ratio, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again[0], inputs)
    with pytest.raises(ValueError, match="ratio"):
        caption_inputs(ids, attention_mask, TOK.mask_id, 0.0)


# ----------------------------------------------------------------------------- fine-tuning


def test_vqa_step_and_answer():
    m = tiny()
    b = vqa_batches(4, seed=0, answers=m.config.answers)(0)
    out = vqa_step(m, b)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    with torch.no_grad():
        logits = m.vqa_logits(m.fuse(b["images"], b["ids"], b["attention_mask"]))
    close(out["loss"].detach(), F.cross_entropy(logits, b["labels"]))
    fused = torch.randn(2, m.n_image_tokens + 5, 16)
    other = fused.clone()
    other[:, 1:] = torch.randn(2, m.n_image_tokens + 4, 16)
    assert torch.equal(m.vqa_logits(other), m.vqa_logits(fused)), "the VQA head reads the image CLS alone"
    assert m.vqa_logits(fused).shape == (2, len(m.config.answers))
    with pytest.raises(ValueError, match="labels"):
        vqa_step(m, {k: v for k, v in b.items() if k != "labels"})
    questions = ["what color is the circle?", "how many shapes are there?", "is there a star?", "what shape is red?"]
    got = m.answer(b["images"], questions)
    assert len(got) == 4 and all(a in m.config.answers for a in got)
    with torch.no_grad():
        ids, mask = m.tokenize(questions)
        want = m.vqa_logits(m.fuse(b["images"], ids, mask)).argmax(1).tolist()
    assert got == [m.config.answers[i] for i in want]
    with pytest.raises(ValueError, match="one question per image"):
        m.answer(b["images"], questions[:3])


def test_retrieval_step():
    m = tiny()
    b = pretrain_batches(4, seed=0)(0)
    out = retrieval_step(m, b)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    close(out["temp"], 1.0 / m.scale().detach())
    with torch.no_grad():  # the dual modes: the image CLS against the text <bos>, every true caption a positive
        image_feat = m.encode_image(b["images"])[1]
        text_feat = m.encode_text(b["ids"], b["attention_mask"])[1]
    close(out["loss"].detach(), multi_positive_itc(m.scale().detach() * image_feat @ text_feat.t(), b["positives"]))
    with pytest.raises(ValueError, match="attention_mask"):
        retrieval_step(m, {k: v for k, v in b.items() if k != "attention_mask"})


def test_caption_step_and_batches():
    m = tiny()
    b = caption_batches(4, seed=0)(0)
    assert torch.equal(b["caption_labels"] != IGNORE_INDEX, b["caption_ids"] == TOK.mask_id)
    assert torch.equal(caption_batches(4, seed=0)(0)["caption_ids"], b["caption_ids"])
    out = caption_step(m, b)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    with torch.no_grad():
        logits = m.caption_logits(m.embed_image(b["images"]), b["caption_ids"], b["attention_mask"])
    close(out["loss"].detach(), mlm_loss(logits, b["caption_labels"]))
    with pytest.raises(ValueError, match="caption_ids"):
        caption_step(m, {k: v for k, v in b.items() if k != "caption_ids"})
