"""The question-only VQA model: the trivial predictor every VQA model must beat (chapter 03, and
every later chapter that answers questions, BEiT-3's in chapter 08).

A VQA model has read the image only where it beats a model that reads the question alone,
trained on the same questions. A per-kind majority (`minivlm.eval.answer_prior`) is a weaker
bar: asked "is the red circle on the left or on the right?" it answers its kind's most frequent
answer, "top", which the question rules out. This model reads the words:

    bag    = mean of the word embeddings over the question's real tokens    (B, D)
    logits = MLP(bag)                                                       (B, A) over config.answers

so it learns what the words alone tell: which answers a question allows ("left" or "right", not
"top") and which of those the training questions favour given the words. Word order is lost (a
bag of words), and the image is never seen: `answer(images, questions)` takes the images only
to fit the interface `evaluate_vqa` scores every VQA model through, and ignores them.

    model, history = minivlm.drivers.train_question_only(steps=300)  # on vqa_batches, as ViLT fine-tunes
    evaluate_vqa(model, ShapesBench(seed=4321).vqa(1200))  # the bar a VQA model's result must clear
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from minivlm.data.pairs import check_batch_keys
from minivlm.data.shapesworld import VQA_ANSWER_VOCAB
from minivlm.nn.inputs import TextInputs, check_ids_in_vocab, fill_token_ids
from minivlm.nn.text import check_token_ids
from minivlm.utils import check_int, check_strings, check_tensor, eval_mode


@dataclass
class QuestionOnlyConfig:
    """vocab_size / pad_id left as None come from the course tokenizer."""

    vocab_size: int | None = None
    dim: int = 64  # word embedding size
    hidden: int = 64  # the MLP's hidden layer: lets a pair of words ("red" + "star") move an answer
    max_text_len: int = 32  # <bos> and <eos> included, as in vqa_batches
    answers: tuple[str, ...] = VQA_ANSWER_VOCAB  # the classes, as ViLT's VQA head
    pad_id: int | None = None

    def __post_init__(self):
        fill_token_ids(self)
        for name in ("vocab_size", "dim", "hidden", "max_text_len"):
            check_int(name, getattr(self, name))
        check_ids_in_vocab(self)
        self.answers = tuple(check_strings("answers", self.answers))
        if len(self.answers) < 2 or len(set(self.answers)) != len(self.answers):
            raise ValueError(f"answers must be at least 2 distinct strings, got {self.answers!r}")

    @property
    def n_answers(self) -> int:
        return len(self.answers)


class QuestionOnly(TextInputs, nn.Module):
    """Bag of words → MLP → answer logits; never sees an image."""

    def __init__(self, config: QuestionOnlyConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or QuestionOnlyConfig()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.mlp = nn.Sequential(nn.Linear(c.dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.n_answers))
        self.tokenizer = tokenizer

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) with attention_mask (B, T) True on real tokens (None: every id but pad_id)
        → answer logits (B, A)."""
        check_token_ids(ids, self.config.vocab_size, self.config.max_text_len, "max_text_len")
        if attention_mask is None:
            attention_mask = ids != self.config.pad_id
        check_tensor("attention_mask", attention_mask, ndim=2)
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
        real = attention_mask.to(self.word_embeddings.weight.dtype)
        words = self.word_embeddings(ids) * real[..., None]  # (B, T, D), padding zeroed
        # clamp: a row of padding alone (no real token) gives a zero bag, not 0 / 0
        bag = reduce(words, "b t d -> b d", "sum") / real.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return self.mlp(bag)

    @torch.no_grad()
    def answer(self, images, questions: Sequence[str], batch_size: int = 1024) -> list[str]:
        """Answer each question from its words alone: a list of strings from config.answers.
        `images` (one per question, or None) is ignored: it is there so that `evaluate_vqa`
        scores this model as it scores ViLT."""
        if isinstance(questions, str) or not isinstance(questions, (list, tuple)):
            raise TypeError(f"questions must be a list of strings, got {type(questions).__name__}"
                            + (" (one string: wrap it in a list)" if isinstance(questions, str) else ""))
        if not questions:
            raise ValueError("need at least one question, got none")
        if images is not None and len(images) != len(questions):
            raise ValueError(f"need one image per question (or images=None), got images={len(images)}, "
                             f"questions={len(questions)}")
        check_int("batch_size", batch_size)
        picks = []
        with eval_mode(self):
            for start in range(0, len(questions), batch_size):
                ids, mask = self.tokenize(list(questions[start:start + batch_size]))  # checks the strings
                picks += self(ids, mask).argmax(dim=1).tolist()
        return [self.config.answers[i] for i in picks]


def question_only_step(model: QuestionOnly, batch: dict) -> dict:
    """Cross-entropy of the answer logits on a `vqa_batches` batch (its images unused)."""
    check_batch_keys(batch, ("ids", "attention_mask", "labels"), "vqa_batches")
    logits = model(batch["ids"], batch["attention_mask"])
    loss = F.cross_entropy(logits, batch["labels"])
    return {"loss": loss, "acc": (logits.argmax(1) == batch["labels"]).float().mean()}
