"""Chapter 11's Flamingo (minivlm.models.flamingo) on tiny random CLIPs and GPTs: the frozen LLM
exactly at initialisation, the media mask inside the model, what is trained, decoding with and
without the KV cache, the interleaved data, and clear errors."""
from __future__ import annotations

import pytest
import torch

from minivlm.data import Tokenizer
from minivlm.data.interleaved import (
    HELDOUT_NONCE,
    KINDS,
    TRAIN_NONCE,
    Document,
    InterleavedDocs,
    collate,
    interleaved_batches,
    kshot_documents,
    text_only,
)
from minivlm.models.clip import CLIP, CLIPConfig
from minivlm.models.flamingo import Flamingo, FlamingoConfig, flamingo_step, frozen_llm_equal, kshot_accuracy
from minivlm.models.gpt import GPT, GPTConfig

TOK = Tokenizer.from_world()


def tiny(config: FlamingoConfig | None = None, llama: bool = True) -> Flamingo:
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(image_size=32, patch_size=8, vision_dim=32, vision_depth=1, vision_heads=2,
                           text_dim=32, text_depth=1, text_heads=2, embed_dim=24, context_length=16))
    make = GPTConfig.llama if llama else GPTConfig
    llm = GPT(make(max_len=128, dim=48, depth=2, heads=4))
    return Flamingo(clip, llm, config or FlamingoConfig(n_latents=3, heads=2))


def open_gates(model: Flamingo, value: float = 0.7) -> Flamingo:
    with torch.no_grad():
        for block in model.xattn.values():
            for g in (block.attn_gate, block.ff_gate):
                if g is not None:
                    g.fill_(value)
    return model


def batch(n: int = 4, seed: int = 0) -> dict:
    return interleaved_batches(n, seed=seed, max_len=128)(0)


def test_starts_as_the_frozen_llm_bit_for_bit():
    b = batch()
    for llama in (True, False):
        assert frozen_llm_equal(tiny(llama=llama), b["images"], b["n_images"], b["ids"])
    assert not frozen_llm_equal(open_gates(tiny()), b["images"], b["n_images"], b["ids"])


def test_only_the_bridge_trains_and_the_frozen_parts_stay_put():
    model = open_gates(tiny())
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("llm.", "visual."))}
    flamingo_step(model, batch())["loss"].backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("llm.", "visual."))
        assert p.requires_grad != frozen, name
        if not frozen:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    stored = model.stored_state_dict()
    assert stored and not any(k.startswith(("llm.", "visual.")) for k in stored)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_token_reads_only_the_image_just_before_it():
    model = open_gates(tiny())
    doc = InterleavedDocs(1).captions(2)
    b = collate([doc], TOK, 128)
    ids = b["ids"]
    second = int((ids[0] == TOK.image_id).nonzero()[1])
    changed = b["images"].clone()
    changed[0, 1] = 1 - changed[0, 1]  # a different second image
    with torch.no_grad():
        a = model(b["images"], b["n_images"], ids)
        c = model(changed, b["n_images"], ids)
    assert torch.equal(a[0, :second], c[0, :second])  # before the second <image>: untouched
    assert not torch.allclose(a[0, second:], c[0, second:])
    # with only_immediate=False the later tokens see both images; the earlier still only the first
    model.config.only_immediate = False
    with torch.no_grad():
        a2 = model(b["images"], b["n_images"], ids)
        first = b["images"].clone()
        first[0, 0] = 1 - first[0, 0]
        c2 = model(first, b["n_images"], ids)
    assert not torch.allclose(a2[0, second + 1:], c2[0, second + 1:])


def test_text_before_the_first_image_is_the_llm_plus_feedforward_only():
    model = open_gates(tiny())
    ids = torch.tensor([[1] + TOK.encode("a red circle <image> blue")])
    img = torch.rand(1, 1, 3, 32, 32)
    with torch.no_grad():
        a = model(img, torch.tensor([1]), ids)
        b = model(1 - img, torch.tensor([1]), ids)
    where = int((ids[0] == TOK.image_id).nonzero()[0])
    assert torch.equal(a[0, :where], b[0, :where]) and not torch.allclose(a[0, where:], b[0, where:])


@pytest.mark.parametrize("config", [
    FlamingoConfig(n_latents=3, heads=2),
    FlamingoConfig(visual="mean", heads=2, every=2),
    FlamingoConfig(visual="patches", heads=2, gated=False, feedforward=False, placement="after_attention"),
])
def test_cached_decoding_equals_uncached(config):
    model = open_gates(tiny(config), 0.4)
    docs = kshot_documents("binding", 1, 3) + kshot_documents("attribute", 2, 2)
    b = collate(docs, TOK, 128, add_eos=False)
    prompts = [d.text for d in docs]
    cached = model.generate_ids(b["images"], b["n_images"], prompts, 5)  # one left-padded batch, KV cache
    assert len(cached) == len(docs) and all(len(row) == 5 for row in cached)
    # without a cache: each document alone, the whole text fed again at every step
    for d, img, n, row in zip(docs, b["images"], b["n_images"], cached):
        ids = torch.tensor([[TOK.bos_id] + TOK.encode(d.text)])
        for t in row:
            with torch.no_grad():
                nxt = int(model(img[None], n[None], ids)[0, -1].argmax())
            assert nxt == t
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)


def test_kshot_accuracy_and_text_only_control_run():
    model = tiny()
    docs = kshot_documents("binding", 1, 4)
    with_images, without = kshot_accuracy(model, docs), kshot_accuracy(model, docs, images=False)
    for r in (with_images, without):
        assert len(r["hits"]) == 4 and 0 <= r["accuracy"].value <= 1
    with pytest.raises(TypeError, match="k-shot Documents"):
        kshot_accuracy(model, InterleavedDocs(0).documents(2))


def test_interleaved_documents():
    gen = InterleavedDocs(0)
    docs = gen.documents(200)
    assert {d.kind for d in docs} == set(KINDS)
    train_names = {w for d in docs for w in d.text.split() if w.startswith("<extra_")}
    held = {f"<extra_{i}>" for i in HELDOUT_NONCE}
    assert train_names and not {n.rstrip(".") for n in train_names} & held
    assert {int(n.rstrip(".")[7:-1]) for n in train_names} <= set(TRAIN_NONCE)
    for k in (0, 1, 3):
        for d in kshot_documents("binding", k, 5):
            assert len(d.scenes) == 2 * k + 1 and d.answer in d.meta["names"] and d.text.endswith("called a")
            shown = [w.rstrip(".") for w in d.text.split() if w.startswith("<extra_")]
            assert sorted(shown) == sorted(d.meta["names"] * k)
        for d in kshot_documents("attribute", k, 6):
            assert len(d.scenes) == k + 1 and d.text.split().count("<image>") == k + 1
    assert "<image>" not in text_only(kshot_documents("binding", 2, 1)[0])
    assert kshot_documents("binding", 2, 3, seed=5)[2].text == kshot_documents("binding", 2, 3, seed=5)[2].text


def test_collate_masks_and_errors():
    docs = InterleavedDocs(3).documents(5)
    b = collate(docs, TOK, 128)
    assert b["images"].shape[:2] == (5, max(len(d.scenes) for d in docs))
    assert not b["loss_mask"][:, 0].any() and not b["loss_mask"][b["ids"] == TOK.image_id].any()
    assert torch.equal((b["ids"] == TOK.image_id).sum(1), b["n_images"])
    with pytest.raises(ValueError, match="longer than max_len"):
        collate(docs, TOK, 8)
    with pytest.raises(ValueError, match="one <image> per scene"):
        Document("<image> a", [], "captions")


def test_bad_input():
    model = tiny()
    b = batch(2)
    with pytest.raises(ValueError, match="one <image> token per image"):
        model(b["images"], b["n_images"] - 1, b["ids"])
    with pytest.raises(ValueError, match="images must have 5 dims"):
        model(b["images"][:, 0], b["n_images"], b["ids"])
    with pytest.raises(ValueError, match="placement"):
        FlamingoConfig(placement="inside")
    with pytest.raises(ValueError, match="visual"):
        FlamingoConfig(visual="cls")
    with pytest.raises(TypeError, match="clip must be a minivlm CLIP"):
        Flamingo(tiny().visual, tiny().llm)
    with pytest.raises(ValueError, match="n_images must lie in"):
        model(b["images"], b["n_images"] + 9, b["ids"])


def test_caption_ask_and_text_only_recall_at_init_are_the_llm_s():
    from minivlm.data.worldtext import recall_items
    from minivlm.models.flamingo import fact_recall as through_flamingo
    from minivlm.models.gpt import fact_recall

    model = tiny()
    items = recall_items()[:6]
    assert through_flamingo(model, items)["predictions"] == fact_recall(model.llm, items)["predictions"]
    with_image = through_flamingo(model, items, torch.rand(2, 3, 32, 32))
    assert len(with_image["hits"]) == len(items)
    images = torch.rand(2, 3, 32, 32)
    caps = model.caption(images, max_len=6)
    answers = model.ask(images, ["what colour is the star?", "how many shapes are there?"])
    assert len(caps) == len(answers) == 2 and all(isinstance(c, str) for c in caps + answers)
    with pytest.raises(TypeError, match="RecallItem"):
        through_flamingo(model, ["question: x answer:"])


def test_prefix_kshot_control_batches_like_one_by_one():
    from minivlm.models.flamingo import prefix_kshot_accuracy
    from minivlm.models.frozen import PrefixConfig, PrefixVLM

    torch.manual_seed(0)
    flamingo = tiny()
    prefix = PrefixVLM(CLIP(CLIPConfig(image_size=32, patch_size=8, vision_dim=32, vision_depth=1, vision_heads=2,
                                       text_dim=32, text_depth=1, text_heads=2, embed_dim=24, context_length=16)),
                       flamingo.llm, PrefixConfig("clipcap", n_prefix=2, hidden=16))
    with torch.no_grad():
        for p in prefix.mapper.parameters():
            p.normal_(0, 0.5)
    docs = kshot_documents("binding", 2, 3) + kshot_documents("attribute", 1, 2)
    together = prefix_kshot_accuracy(prefix, docs)
    alone = [prefix_kshot_accuracy(prefix, [d])["predictions"][0] for d in docs]
    assert together["predictions"] == alone and len(set(alone)) > 1  # the images and texts matter
    with pytest.raises(TypeError, match="PrefixVLM"):
        prefix_kshot_accuracy(flamingo, docs)
