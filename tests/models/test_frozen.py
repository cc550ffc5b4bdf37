"""Chapter 10's prefix models (minivlm.models.frozen) on tiny random CLIPs and GPTs: the splice,
the loss mask, what each variant trains, the frozen LLM left bit-identical, decoding with and
without the cache (and with beam search, whose rows share prompt ids but not images), and clear
errors on bad input."""
import pytest
import torch

from minivlm.data import Tokenizer
from minivlm.losses import lm_loss
from minivlm.models.clip import CLIP, CLIPConfig
from minivlm.models.frozen import (
    VARIANTS,
    PrefixConfig,
    PrefixVLM,
    insert_image_tokens,
    prefix_step,
    splice,
)
from minivlm.models.gpt import GPT, GPTConfig
from minivlm.utils import count_parameters

TOK = Tokenizer.from_world()


def tiny_clip():
    return CLIP(CLIPConfig(image_size=16, patch_size=4, vision_dim=32, vision_depth=1, vision_heads=2,
                           text_dim=32, text_depth=1, text_heads=2, embed_dim=24, context_length=16))


def tiny(variant="clipcap", n_prefix=3, seed=0, llm_scale=1.0):
    torch.manual_seed(seed)
    clip = tiny_clip()
    llm = GPT(GPTConfig(dim=32, depth=2, heads=2, max_len=40))
    with torch.no_grad():  # sharper logits: greedy decoding far from ties
        llm.token_embedding.weight.mul_(llm_scale)
    return PrefixVLM(clip, llm, PrefixConfig(variant, n_prefix=n_prefix, hidden=16, mapper_dim=16, mapper_heads=2))


def images(n, seed=1):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def caption_batch(model, n=4):
    ids, mask = TOK(["a red circle.", "two shapes: a blue star and a green square.", "a small cyan cross.",
                     "there is a white diamond."][:n], add_bos=True, add_eos=True)
    ids, mask, loss_mask = insert_image_tokens(ids, mask, model.config.n_prefix, TOK.image_id)
    return {"images": images(n), "ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


# ----------------------------------------------------------------------------- splice
def test_splice_puts_each_rows_images_in_order_and_leaves_the_rest():
    ids = torch.tensor([[1, 5, 5, 9, 8], [1, 7, 5, 3, 5]])
    embeds = torch.randn(2, 5, 3)
    image = torch.randn(2, 2, 3, requires_grad=True)
    out = splice(embeds, ids, image, image_id=5)
    assert torch.equal(out[0, 1], image[0, 0]) and torch.equal(out[0, 2], image[0, 1])
    assert torch.equal(out[1, 2], image[1, 0]) and torch.equal(out[1, 4], image[1, 1])
    keep = ids != 5
    assert torch.equal(out[keep], embeds[keep])
    assert not torch.equal(out, embeds) and embeds.data_ptr() != out.data_ptr()  # a new tensor
    out.sum().backward()
    assert torch.equal(image.grad, torch.ones_like(image))


@pytest.mark.parametrize("bad_ids, k, match", [
    ([[1, 5, 9], [1, 5, 5]], 1, "row 1 has 2"),
    ([[1, 5, 9], [1, 9, 9]], 1, "row 1 has 0"),
    ([[1, 5, 9], [1, 5, 9]], 2, "K=2"),
])
def test_splice_refuses_a_count_of_image_tokens_that_differs_from_k(bad_ids, k, match):
    with pytest.raises(ValueError, match=match):
        splice(torch.randn(2, 3, 4), torch.tensor(bad_ids), torch.randn(2, k, 4), image_id=5)


def test_splice_refuses_mismatched_shapes():
    ids = torch.tensor([[1, 5, 9]])
    with pytest.raises(ValueError, match="embeddings of ids"):
        splice(torch.randn(1, 4, 4), ids, torch.randn(1, 1, 4), 5)
    with pytest.raises(ValueError, match=r"image_embeds must be \(1, K, 4\)"):
        splice(torch.randn(1, 3, 4), ids, torch.randn(1, 1, 6), 5)
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        splice(torch.randn(1, 3, 4), ids.float(), torch.randn(1, 1, 4), 5)


def test_insert_image_tokens_and_the_loss_mask():
    ids, mask = TOK(["a red circle.", "a star."], add_bos=True, add_eos=True)
    new, new_mask, loss_mask = insert_image_tokens(ids, mask, 3, TOK.image_id)
    assert new.shape == (2, ids.shape[1] + 3)
    assert (new[:, 1:4] == TOK.image_id).all() and (new[:, 0] == TOK.bos_id).all()
    assert torch.equal(new[:, 4:], ids[:, 1:])
    # targets: the words and <eos> only
    assert not loss_mask[:, :4].any()
    assert torch.equal(loss_mask[:, 4:], mask[:, 1:].bool())
    assert torch.equal(new_mask[:, 4:], mask[:, 1:].bool()) and new_mask[:, :4].all()
    # lm_loss with it scores exactly those targets
    logits = torch.randn(2, new.shape[1], len(TOK))
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), new[:, 1:], reduction="none")
    want = per_token[loss_mask[:, 1:]].mean()
    assert torch.allclose(lm_loss(logits, new, loss_mask), want)


# ----------------------------------------------------------------------------- what trains
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_training_step_moves_only_the_trainable_parts(variant):
    model = tiny(variant)
    batch = caption_batch(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want_prefixes = ("mapper.", "visual.", "image_projection.") if variant == "frozen" else ("mapper.",)
    assert trainable and all(n.startswith(want_prefixes) for n in trainable)
    if variant == "frozen":
        assert any(n.startswith("visual.") for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = prefix_step(model, batch)["loss"]
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"frozen {name} received a gradient"
    opt.step()
    after = model.state_dict()
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        if k.startswith("llm."):
            assert not moved, f"the frozen LLM's {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("mapper."))
    assert count_parameters(model, trainable_only=True) == sum(p.numel() for n, p in model.named_parameters()
                                                              if n in trainable)


def test_frozen_trains_its_vision_tower_even_from_a_frozen_clip():
    from minivlm.train import freeze

    again = PrefixVLM(freeze(tiny_clip()), GPT(GPTConfig(dim=32, depth=2, heads=2, max_len=40)),
                      PrefixConfig("frozen", n_prefix=3))
    assert all(p.requires_grad for p in again.visual.parameters())


def test_the_variants_train_what_their_papers_train():
    counts = {v: count_parameters(tiny(v), trainable_only=True) for v in VARIANTS}
    vision = count_parameters(tiny("frozen").visual)
    assert counts["frozen"] > vision  # the whole ViT, plus a map
    assert counts["clipcap"] < vision and counts["mapl"] < vision


def test_the_llm_stays_in_eval_mode_when_the_model_trains():
    model = tiny("mapl")
    from minivlm.train import fit

    fit(model, prefix_step, lambda i: caption_batch(model), steps=2, lr=1e-3, progress=False)
    assert not model.llm.training


def test_stored_state_dict_holds_only_the_models_own_part():
    assert set(tiny("clipcap").stored_state_dict()) == {k for k in tiny("clipcap").state_dict()
                                                         if k.startswith("mapper.")}
    frozen = tiny("frozen").stored_state_dict()
    assert any(k.startswith("visual.") for k in frozen) and not any(k.startswith("llm.") for k in frozen)


def test_image_features_are_clips_image_embedding():
    model = tiny("clipcap")
    torch.manual_seed(0)
    clip = tiny_clip()
    x = images(3)
    assert torch.allclose(model.image_features(x), clip.encode_image(x), atol=1e-6)


def test_forward_equals_the_llm_on_spliced_embeddings():
    model = tiny("clipcap").eval()
    batch = caption_batch(model, 2)
    prefix = model.image_prefix(batch["images"])
    embeds = model.llm.embed(batch["ids"]).clone()
    k = model.config.n_prefix
    embeds[:, 1:1 + k] = prefix
    assert torch.allclose(model(batch["images"], batch["ids"]), model.llm(inputs_embeds=embeds), atol=1e-6)


# ----------------------------------------------------------------------------- decoding
def _prompt(model, n):
    return torch.tensor([[TOK.bos_id] + [TOK.image_id] * model.config.n_prefix] * n)


def strong_prefix_model():
    """A model whose prefix for an image is the embedding of a word picked by the image's first
    pixel: the sharpened, tied LLM then tends to continue with that word, so that rows decode
    differently whenever their images differ (a random mapper's prefixes barely steer it)."""
    model = tiny("clipcap", llm_scale=4.0).eval()
    table, k = model.llm.token_embedding.weight, model.config.n_prefix
    model.image_prefix = lambda x: table[100 + (x[:, 0, 0, 0] * 50).long()][:, None].repeat(1, k, 1)
    return model


def test_generation_with_and_without_the_cache_agree_and_depends_on_the_image():
    model = strong_prefix_model()
    x = images(6)
    cached = model.generate(x, _prompt(model, 6), 8)
    assert torch.equal(cached, model.generate(x, _prompt(model, 6), 8, use_cache=False))
    assert len({tuple(r) for r in cached[:, 4:].tolist()}) > 1, "every image got the same tokens"
    assert model.caption(x, max_len=10) == model.complete(x, [""] * 6, 8, stop=None, use_cache=False)


def test_beam_search_keeps_each_rows_own_image_in_the_cache():
    # every row's prompt is "<bos> <image>×K": equal ids, different images. A cache that matched
    # rows by ids alone would hand one image's keys and values to another row.
    model = strong_prefix_model()
    x = images(4)
    beams = model.generate(x, _prompt(model, 4), 6, num_beams=3)
    one_by_one = torch.cat([model.generate(x[i:i + 1], _prompt(model, 1), 6, num_beams=3) for i in range(4)])
    assert torch.equal(beams, one_by_one)
    assert torch.equal(beams, model.generate(x, _prompt(model, 4), 6, num_beams=3, use_cache=False))
    assert len({tuple(r) for r in beams[:, 4:].tolist()}) > 1


def test_ask_prompts_with_the_question_and_stops_at_the_full_stop():
    model = tiny("clipcap").eval()
    answers = model.ask(images(2), ["what color is the circle?", "how many shapes are there?"])
    assert len(answers) == 2 and all(isinstance(a, str) and "." not in a for a in answers)
    both = model.ask(images(2), ["what color is the circle?"] * 2, describe_first=True)
    assert len(both) == 2


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors():
    model = tiny("clipcap")
    batch = caption_batch(model, 2)
    with pytest.raises(ValueError, match="one image per row"):
        model(images(3), batch["ids"])
    with pytest.raises(ValueError, match="exactly K=3 <image> tokens"):
        model(batch["images"], batch["ids"][:, [0, 1, 2, 5, 6, 7]])
    with pytest.raises(ValueError, match="longer than the language model's context"):
        model(images(1), torch.cat([batch["ids"][:1], torch.full((1, 40), 7)], dim=1))
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(2, 3, 32, 32), batch["ids"])
    with pytest.raises(ValueError, match="one prompt per image"):
        model.ask(images(2), ["what color is the circle?"])
    with pytest.raises(TypeError, match="list of strings"):
        model.ask(images(1), "what color is the circle?")
    with pytest.raises(ValueError, match="no room for text"):
        tiny("clipcap", n_prefix=38)
    with pytest.raises(ValueError, match="right-padded"):
        insert_image_tokens(torch.tensor([[0, 1, 9, 2]]), torch.tensor([[False, True, True, True]]), 2, 5)
    with pytest.raises(ValueError, match="variant must be one of"):
        PrefixConfig("llava")
    with pytest.raises(TypeError, match="minivlm GPT"):
        PrefixVLM(tiny_clip(), torch.nn.Linear(2, 2))


def test_the_cache_follows_rows_to_their_own_example_when_ids_are_equal():
    # Beam search hands next_logits reordered rows; with equal prompt ids in every row only the
    # rows' example indices tell two images apart. Each call must equal a fresh uncached run.
    llm = tiny().llm.eval()
    x = torch.randn(2, 1, 32)  # example 0 and example 1: different "images"

    def embed(ids, rows):
        out = llm.embed(ids).clone()
        out[:, 1] = x[rows, 0]
        return out

    cached, fresh = llm.next_logits_fn(True, embed), llm.next_logits_fn(False, embed)
    ids = torch.tensor([[1, 5, 9], [1, 5, 9]])
    for rows, grown in ((torch.tensor([0, 1]), ids), (torch.tensor([1, 0]), torch.cat([ids, ids[:, :1]], 1)),
                        (torch.tensor([1, 1]), torch.cat([ids, ids[:, :2]], 1))):
        with torch.no_grad():
            assert torch.allclose(cached(grown, rows), fresh(grown, rows), atol=1e-5), rows
