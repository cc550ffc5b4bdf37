"""The zoo's tiny LLM (chapter 09): the frozen language model of chapters 10-18.

A GPT (`minivlm.models.gpt`) trained on world text (`minivlm.data.worldtext`): captions and
question-answer pairs about scenes, and the world facts no image-text data states. Measured on
text it never trained on: fact recall through every fact's held-out phrasings, perplexity on
held-out world text, and questions about scenes described in text (the caption in place of the
image that chapters 10-18 will give it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.zoo.recipes import config_dict, estimate

LLM_CONFIG = dict(max_len=64, dim=128, depth=4, heads=4)


def _model(config: dict):
    from minivlm.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig(**config))


def llm_metrics(model, eval_seed: int = 1234, documents: int = 500, scene_questions: int = 1000) -> dict:
    """Held-out fact recall (all, per family, per form), recall in the training forms, perplexity
    on held-out and on fresh training-split world text, and scene questions asked in text."""
    from minivlm.data.worldtext import WorldText, recall_items, scene_items
    from minivlm.models.gpt import fact_recall, world_perplexity

    out = {}
    held = recall_items("heldout")
    r = fact_recall(model, held)
    out["recall_heldout"] = estimate(r["accuracy"])
    out.update({f"recall_{family}": estimate(e) for family, e in r["per_family"].items()})
    for form in ("question", "cloze"):
        hits = [h for h, it in zip(r["hits"], held) if it.form == form]
        out[f"recall_{form}"] = estimate(_interval(hits))
    out["recall_train_forms"] = estimate(fact_recall(model, recall_items("train"))["accuracy"])
    out["perplexity_heldout"] = estimate(world_perplexity(model, WorldText(eval_seed, "heldout").documents(documents)))
    out["perplexity_train_split"] = estimate(world_perplexity(model, WorldText(eval_seed, "train").documents(documents)))
    s = fact_recall(model, scene_items(scene_questions, eval_seed))
    out.update({f"scene_{family}": estimate(e) for family, e in s["per_family"].items()})
    return out


def _window_means(values: list[float], window: int) -> list[float]:
    return [round(sum(values[a:a + window]) / len(values[a:a + window]), 4) for a in range(0, len(values), window)]


def _interval(hits):
    from minivlm.eval import interval

    return interval(hits)


@dataclass
class LlmRecipe:
    """The zoo LLM: seeded, on the CPU, one thread."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    data_seed: int = 0
    eval_seed: int = 1234
    config: dict = field(default_factory=lambda: dict(LLM_CONFIG))

    name = "llm"
    model = staticmethod(_model)

    def train(self, weights_dir, progress: bool):
        from minivlm.models.gpt import lm_batches, lm_step
        from minivlm.train import fit
        from minivlm.utils import seed_everything

        seed_everything(self.seed)
        model = _model(self.config)
        batches = lm_batches(self.batch_size, model.config.max_len, self.data_seed)
        start = time.perf_counter()
        history = fit(model, lm_step, batches, self.steps, lr=self.lr, weight_decay=self.weight_decay,
                      warmup=self.warmup, device="cpu", seed=self.seed, progress=progress, desc="zoo: llm")
        train_seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            metrics = llm_metrics(model, self.eval_seed)
        return model, {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": metrics,
            "final_loss": round(history.last("loss"), 4),
            "loss_every_50_steps": _window_means(history.losses["loss"], 50),
            "steps": self.steps,
            "train_seconds": round(train_seconds, 1),
            "ms_per_step": round(1000 * train_seconds / self.steps, 1),
        }
