"""The LLM's corpus (chapter 09): chat turns, context-over-memory documents, the mixture, and
packing whole documents into full-context rows."""
import re

import numpy as np
import pytest
import torch

from minivlm.data import Tokenizer
from minivlm.data.corpus import KINDS, MIXTURE, Corpus, check_mixture, pack, packed_batches
from minivlm.data.worldtext import (
    COUNTERFACTUAL_FACTS,
    FACTS,
    ONE_WORD_INSTRUCTIONS,
    TEMPLATES,
    WorldText,
    chat_items,
    chat_prompt,
    chat_reply,
    chat_text,
    counterfactual,
    counterfactual_items,
    fact_questions,
    fact_statements,
)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_world()


@pytest.fixture(scope="module")
def corpus_docs():
    c = Corpus(seed=21)
    return {kind: [c.document(kind) for _ in range(300)] for kind in KINDS}


# ----------------------------------------------------------------------------- chat
def test_chat_template_by_hand():
    assert chat_text([("hi", "hello.")]) == "<im_start> <user> hi <im_end> <im_start> <assistant> hello. <im_end>"
    assert chat_prompt("what color is the star?", [("hi", "hello.")]) == (
        "<im_start> <user> hi <im_end> <im_start> <assistant> hello. <im_end> "
        "<im_start> <user> what color is the star? <im_end> <im_start> <assistant>")
    assert chat_prompt("q?") == "<im_start> <user> q? <im_end> <im_start> <assistant>"
    assert chat_reply("red", True) == "red." and chat_reply("red", False) == "the answer is red."
    with pytest.raises(ValueError, match="at least one"):
        chat_text([])


def test_chat_tokens_are_single_tokens(tok):
    ids = tok.encode(chat_prompt("hi"))
    assert [tok.vocab[i] for i in ids] == ["<im_start>", "<user>", "hi", "<im_end>", "<im_start>", "<assistant>"]


def test_chat_documents_answer_one_word_exactly_when_asked(corpus_docs):
    turns = 0
    for doc in corpus_docs["chat"]:
        for user, reply in re.findall(r"<im_start> <user> (.+?) <im_end> <im_start> <assistant> (.+?) <im_end>", doc):
            turns += 1
            asked = any(user.endswith(i) for i in ONE_WORD_INSTRUCTIONS)
            if user == "describe the scene.":
                continue
            if asked:
                assert re.fullmatch(r"[a-z]+( and [a-z]+)?\.", reply), (user, reply)
            else:
                assert reply.startswith("the answer is "), (user, reply)
    assert turns > 500


def test_chat_items_are_answerable_from_the_caption():
    items = chat_items(40, seed=3)
    assert {it.family for it in items} == {"vqa", "knowledge"}
    for it in items:
        assert it.prompt.startswith("<im_start> <user> ") and it.prompt.endswith("<im_end> <im_start> <assistant>")
        assert any(i in it.prompt for i in ONE_WORD_INSTRUCTIONS)
    long = chat_items(10, seed=3, one_word=False)
    assert all(it.answer.startswith("the answer is ") for it in long)
    assert all(not any(i in it.prompt for i in ONE_WORD_INSTRUCTIONS) for it in long)


# ----------------------------------------------------------------------------- context over memory
def test_counterfactual_states_a_wrong_answer_and_asks_for_it():
    rng = np.random.default_rng(0)
    for fact in COUNTERFACTUAL_FACTS:
        prompt, answer = counterfactual(fact, rng, "heldout", distractors=2)
        assert answer != fact.answer
        stated = [s.format(**{**fact.slots(), "a": answer}) for s in TEMPLATES[fact.relation][0]]
        assert any(s in prompt for s in stated), prompt
        assert prompt.endswith(" answer:")
        assert any(q in prompt for q, _ in fact_questions(fact, "heldout"))
        # the true statement of the fact is not in the context: only the wrong one
        assert not any(s in prompt for s in fact_statements(fact, "train") + fact_statements(fact, "heldout"))


def test_counterfactual_items_cycle_through_the_facts(tok):
    items = counterfactual_items(2 * len(COUNTERFACTUAL_FACTS), seed=1)
    assert {it.fact for it in items} == set(COUNTERFACTUAL_FACTS)
    assert all(it.answer != it.fact.answer and it.family == "counterfactual" for it in items)
    assert all(tok.unk_id not in tok.encode(f"{it.prompt} {it.answer}.") for it in items)
    assert items == counterfactual_items(2 * len(COUNTERFACTUAL_FACTS), seed=1)
    assert "mix_parts" not in {f.relation for f in COUNTERFACTUAL_FACTS}


def test_counterfactual_documents_use_training_forms_only(corpus_docs):
    for doc in corpus_docs["counterfactual"]:
        for fact in FACTS:
            for q, _ in fact_questions(fact, "heldout"):
                assert q not in doc, (q, doc)
            for s in fact_statements(fact, "heldout"):
                assert not doc.startswith(s) and ". " + s not in doc, (s, doc)


# ----------------------------------------------------------------------------- the mixture
def test_every_kind_encodes_without_unk_and_fits_the_context(tok, corpus_docs):
    for kind, docs in corpus_docs.items():
        lengths = [len(tok.encode(d, add_bos=True, add_eos=True)) for d in docs]
        assert max(lengths) <= 128, kind
        assert not [d for d in docs if tok.unk_id in tok.encode(d)], kind


def test_mixture_decides_the_kinds(tok):
    c = Corpus(seed=2, mixture={"keyvalue": 1.0})
    assert all(re.search(r"<extra_\d+>", d) and "question" not in d for d in c.documents(50))
    c = Corpus(seed=2, mixture={"chat": 1.0})
    assert all(d.startswith("<im_start> <user>") for d in c.documents(50))
    assert check_mixture({"facts": 3, "chat": 1, "binding": 0}) == {"facts": 0.75, "chat": 0.25}
    assert abs(sum(MIXTURE.values()) - 1) < 1e-9 and set(MIXTURE) == set(KINDS)


def test_corpus_trains_most_of_the_vocabulary(tok):
    seen = set()
    for d in Corpus(seed=0).documents(3000):
        seen.update(tok.encode(d))
    old = set()
    for d in WorldText(seed=0).documents(3000):
        old.update(tok.encode(d))
    assert {tok.id(t) for t in ("<im_start>", "<im_end>", "<user>", "<assistant>", "<extra_0>", "<extra_63>")} <= seen
    assert len(seen) > len(old) + 80  # chat tokens, 64 nonce words, instruction words


@pytest.mark.parametrize("call,needle", [
    (lambda: Corpus(mixture={"images": 1.0}), "'images'"),
    (lambda: Corpus(mixture={"facts": -1.0}), "-1.0"),
    (lambda: Corpus(mixture={}), "{}"),
    (lambda: Corpus().document("poems"), "'poems'"),
    (lambda: Corpus().documents(0), "0"),
    (lambda: packed_batches(0), "batch_size"),
    (lambda: packed_batches(4, 8), "max_len"),
])
def test_bad_arguments_are_rejected(call, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        call()


# ----------------------------------------------------------------------------- packing
def test_pack_keeps_documents_whole_and_in_order():
    docs = [[1, 5, 2], [1, 6, 7, 2], [1, 8, 2], [1, 9, 9, 9, 9, 2], [1, 4, 2]]
    ids, mask, used = pack(docs, rows=3, max_len=7, pad_id=0)
    assert ids.tolist() == [[1, 5, 2, 1, 6, 7, 2], [1, 8, 2, 0, 0, 0, 0], [1, 9, 9, 9, 9, 2, 0]]
    assert mask.tolist() == [[True] * 7, [True] * 3 + [False] * 4, [True] * 6 + [False]]
    assert used == 4  # the fifth document does not fit any row
    with pytest.raises(ValueError, match="8 tokens"):
        pack([[1] * 8], rows=1, max_len=7, pad_id=0)
    ids, mask, used = pack([], rows=2, max_len=4, pad_id=0)
    assert used == 0 and not mask.any()


def test_packed_batches_fill_rows_with_whole_documents(tok):
    batches = packed_batches(batch_size=4, max_len=256, seed=3)
    b = batches(0)
    assert b["ids"].shape == (4, 256) and b["attention_mask"].dtype == torch.bool
    assert b["attention_mask"].float().mean() > 0.8  # short documents fill most of each row
    for row, m in zip(b["ids"], b["attention_mask"]):
        real = row[m].tolist()
        assert real[0] == tok.bos_id and real[-1] == tok.eos_id and real.count(tok.bos_id) == real.count(tok.eos_id)
        assert not row[~m].ne(tok.pad_id).any() and m.tolist() == sorted(m.tolist(), reverse=True)
    assert torch.equal(batches(5)["ids"], packed_batches(4, 256, 3)(5)["ids"])
    assert not torch.equal(batches(5)["ids"], batches(6)["ids"])
