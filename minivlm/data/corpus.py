"""The tiny LLM's pretraining corpus: world text and in-context episodes, packed (chapter 09).

A language model pretrained for what chapters 10-18 ask of it reads several kinds of document
(`KINDS`), drawn in the proportions of a *mixture*:

    facts           world facts, statements and question-answer pairs (`WorldText.fact_document`)
    scene           a scene's caption, then questions about it          (`WorldText.scene_document`)
    chat            a conversation about a scene in the chat template  (`WorldText.chat_document`)
    counterfactual  a statement against a world fact, then a question the context answers
    attribute, keyvalue, binding   in-context episodes (`minivlm.data.incontext`)

Documents are *packed*: each training row holds as many whole documents ("<bos> ... <eos>")
as fit the context, the rest is padding. A short document costs no more than its tokens, and
the model sees sequences as long as its context, so long prompts (64 image tokens and a
question, a few-shot episode) are in distribution.
"""
from __future__ import annotations

import numpy as np
import torch

from minivlm.data.incontext import Episodes
from minivlm.data.tokenizer import Tokenizer
from minivlm.data.worldtext import WorldText

KINDS: tuple[str, ...] = ("facts", "scene", "chat", "counterfactual", "attribute", "keyvalue", "binding")
MIXTURE: dict[str, float] = {"facts": 0.2, "scene": 0.1, "chat": 0.15, "counterfactual": 0.1, "attribute": 0.15,
                             "keyvalue": 0.15, "binding": 0.15}


def check_mixture(mixture: dict) -> dict[str, float]:
    if not isinstance(mixture, dict) or not mixture or any(k not in KINDS for k in mixture) or any(
            not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in mixture.values()) \
            or sum(mixture.values()) <= 0:
        raise ValueError(f"mixture must map document kinds {KINDS} to non-negative weights with a positive sum, "
                         f"got {mixture!r}")
    total = float(sum(mixture.values()))
    return {k: float(w) / total for k, w in mixture.items() if w > 0}


class Corpus:
    """Documents of the mixture, generated from `seed` (training split: the facts' training
    phrasings, ShapesWorld's train scenes, the training templates of the episodes)."""

    def __init__(self, seed: int = 0, mixture: dict[str, float] | None = None):
        self.mixture = check_mixture(dict(MIXTURE) if mixture is None else mixture)
        self.kinds = list(self.mixture)
        self.p = np.array([self.mixture[k] for k in self.kinds])
        self.rng = np.random.default_rng(seed)
        self.text = WorldText(seed, "train")
        self.episodes = Episodes(seed + 1)
        self.make = {"facts": self.text.fact_document, "scene": self.text.scene_document,
                     "chat": self.text.chat_document, "counterfactual": self.text.counterfactual_document,
                     "attribute": lambda: self.episodes.attribute(self._units()),
                     "keyvalue": lambda: self.episodes.keyvalue(self._units()),
                     "binding": lambda: self.episodes.binding(self._units())}

    def _units(self) -> int:
        return int(self.rng.integers(2, self.episodes.max_units + 1))

    def document(self, kind: str | None = None) -> str:
        """One document of `kind` (default: a kind drawn from the mixture)."""
        if kind is None:
            kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.p))]
        elif kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.make[kind]()

    def documents(self, n: int) -> list[str]:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        return [self.document() for _ in range(n)]


def pack(documents: list[list[int]], rows: int, max_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pack token lists into `rows` rows of `max_len`, in order, each document whole: a document
    that does not fit the rest of a row starts the next one. Returns ids (rows, max_len),
    attention_mask (rows, max_len) (True on real tokens) and how many documents were used."""
    ids = torch.full((rows, max_len), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, max_len), dtype=torch.bool)
    row, col, used = 0, 0, 0
    for doc in documents:
        if len(doc) > max_len:
            raise ValueError(f"a document of {len(doc)} tokens does not fit the context max_len={max_len}")
        if col + len(doc) > max_len:
            row, col = row + 1, 0
            if row == rows:
                break
        ids[row, col:col + len(doc)] = torch.tensor(doc)
        mask[row, col:col + len(doc)] = True
        col += len(doc)
        used += 1
    return ids, mask, used


def packed_batches(batch_size: int = 32, max_len: int = 256, seed: int = 0, mixture: dict[str, float] | None = None):
    """batches(i) -> dict(ids, attention_mask): batch_size rows of packed corpus documents, the
    i-th batch of stream `seed` (deterministic in i, so a run can resume)."""
    for name, value, lo in (("batch_size", batch_size, 1), ("max_len", max_len, 16)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    tok = Tokenizer.from_world()
    Corpus(seed, mixture)  # check the mixture now, not at the first step

    def batches(i: int) -> dict:
        corpus = Corpus(seed * 1_000_003 + i, mixture)
        docs: list[list[int]] = []
        tokens = 0
        while tokens < batch_size * max_len:  # enough documents to fill every row
            docs.append(tok.encode(corpus.document(), add_bos=True, add_eos=True))
            tokens += len(docs[-1])
        ids, mask, _ = pack(docs, batch_size, max_len, tok.pad_id)
        return {"ids": ids, "attention_mask": mask}

    return batches
