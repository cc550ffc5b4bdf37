"""Tokenizer: the fixed vocabulary, encode/decode round trips, batching, errors."""
import pytest
import torch

from minivlm.data import ShapesWorld, Tokenizer
from minivlm.data.tokenizer import SPECIALS, WORDS


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_world()


def test_vocabulary_is_fixed(tok):
    # Trained weights depend on these numbers: changing the vocabulary must fail this test.
    assert len(tok) == 603 == len(SPECIALS) + len(WORDS)
    assert list(WORDS) == sorted(set(WORDS))
    assert tok.specials[:6] == ["<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<image>"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id, tok.image_id) == (0, 1, 2, 3, 4, 5)
    for s in ["<box>", "</box>", "<ref>", "</ref>", "<sep>", "<im_start>", "<im_end>", "<user>", "<assistant>",
              "<loc_0>", "<loc_31>", "<extra_0>", "<extra_63>"]:
        assert s in tok.specials
    assert tok.loc_id(5) == tok.id("<loc_5>") == tok.id("<loc_0>") + 5
    assert tok.id("red") == SPECIALS.__len__() + WORDS.index("red")
    for w in ["describe", "image", "what", "where", "how", "many", "is", "there", "answer", "question", "yes",
              "no", "the", "corners", "mixed", "twenty", "20", "0", "left", "above"]:
        assert w in tok.token_to_id, w
    assert set(ShapesWorld.vocabulary()) <= set(tok.vocab)


def test_encode_splits_and_lowercases(tok):
    assert tok.tokenize("A Red circle, left? Yes!") == ["a", "red", "circle", ",", "left", "?", "yes", "!"]
    ids = tok.encode("Red circle.", add_bos=True, add_eos=True)
    assert ids == [tok.bos_id, tok.id("red"), tok.id("circle"), tok.id("."), tok.eos_id]
    assert tok.tokenize("it's 12 stars;") == ["it", "'", "s", "12", "stars", ";"]


def test_unknown_words_map_to_unk(tok):
    ids = tok.encode("a zebra near the xylophone")
    assert ids == [tok.id("a"), tok.unk_id, tok.id("near"), tok.id("the"), tok.unk_id]
    assert tok.decode(ids) == "a <unk> near the <unk>"


def test_special_tokens_kept_whole(tok):
    ids = tok.encode("<image><box><loc_3> <loc_30></box> Red<sep><bogus>")
    assert ids == [tok.image_id, tok.id("<box>"), tok.loc_id(3), tok.loc_id(30), tok.id("</box>"),
                   tok.id("red"), tok.id("<sep>"), tok.unk_id]
    assert tok.decode(ids, skip_special=False) == "<image> <box> <loc_3> <loc_30> </box> red <sep> <unk>"
    assert tok.decode(ids) == "red <unk>"


def test_round_trip_on_world_text(tok):
    world = ShapesWorld(seed=0)
    texts = []
    for s in world.sample(100):
        texts += world.captions(s) + [q for q, _, _ in world.vqa(s)]
    texts += ["it's a red circle.", "how many corners does a triangle have? three."]
    for t in texts:
        ids = tok.encode(t)
        assert tok.unk_id not in ids, t
        assert tok.decode(ids) == t
        assert tok.decode(torch.tensor(ids)) == t


def test_batch_padding_and_mask(tok):
    texts = ["a red circle.", "there are a blue square and a green star."]
    ids, mask = tok(texts)
    n0, n1 = len(tok.encode(texts[0])) + 1, len(tok.encode(texts[1])) + 1
    assert ids.shape == mask.shape == (2, n1) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [n0, n1]
    assert ids[0, n0 - 1] == tok.eos_id and (ids[0, n0:] == tok.pad_id).all()
    assert ids[0, :n0].tolist() == tok.encode(texts[0], add_eos=True)
    assert tok.batch_decode(ids) == texts
    ids2, mask2 = tok(texts, max_len=20, padding="max_length", add_bos=True)
    assert ids2.shape == (2, 20) and ids2[:, 0].eq(tok.bos_id).all() and mask2.sum(1).tolist() == [n0 + 1, n1 + 1]
    ids3, _ = tok("a red circle.", add_eos=False)
    assert ids3.tolist() == [tok.encode("a red circle.")]


def test_truncation(tok):
    text = "there are a blue square and a green star."
    ids, mask = tok([text], max_len=5)
    assert ids.shape == (1, 5) and bool(mask.all())
    assert ids[0].tolist() == tok.encode(text)[:4] + [tok.eos_id]  # eos kept at the end
    ids, _ = tok([text], max_len=5, add_eos=False)
    assert ids[0].tolist() == tok.encode(text)[:5]
    n = len(tok.encode(text)) + 1
    with pytest.raises(ValueError, match=rf"{n} tokens, longer than max_len=5"):
        tok([text], max_len=5, truncation=False)
    with pytest.raises(ValueError, match="max_len"):
        tok([text], padding="max_length")
    with pytest.raises(ValueError, match="padding"):
        tok([text], padding="left")
    with pytest.raises(TypeError):
        tok([1, 2])
    with pytest.raises(ValueError, match="token id"):
        tok.decode([9999])
