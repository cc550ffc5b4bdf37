"""The zoo's tiny LLM (chapter 09): the frozen language model of chapters 10-18.

A GPT (`minivlm.models.gpt`) in the Llama layout (RMSNorm, RoPE, SwiGLU, no biases) with a
256-token context, trained on the packed corpus of `minivlm.data.corpus`: world facts and scene
text, chat turns in the vocabulary's chat template, context-over-memory documents and in-context
episodes (attribute rules shown only by demonstrations, nonce key-value retrieval, nonce
binding). Measured on what it never trained on: fact recall through the held-out phrasings,
perplexity on held-out world text, k-shot curves on held-out templates (exact answer and answer
type), counterfactual statements read from the context, chat questions about a described scene.

Beside the shipped model the build trains the walk from GPT-2 to Llama, one change at a time,
`arm_seeds` seeds each at equal steps and data (short runs of a smaller model), and records each
arm's held-out perplexity.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.data.corpus import packed_batches
from minivlm.data.incontext import kshot_items
from minivlm.data.worldtext import WorldText, chat_items, counterfactual_items, recall_items, scene_items
from minivlm.eval import interval, to_record
from minivlm.models.gpt import (
    GPT,
    LLM_CONFIG,
    GPTConfig,
    fact_recall,
    kshot_figures,
    lm_step,
    world_perplexity,
)
from minivlm.train import fit
from minivlm.utils import count_parameters, seed_everything
from minivlm.zoo.recipes import arm_table, config_dict, run_jobs

# the first steps' mixture: retrieval-heavy (nonce key-value and binding), so that reading a value
# from the context forms before the rest of the corpus is learned
RETRIEVAL_MIXTURE = dict(facts=0.15, scene=0.05, chat=0.1, counterfactual=0.05, attribute=0.1, keyvalue=0.35,
                         binding=0.2)

# GPT-2 to Llama, one change at a time: each arm adds its change to the one before.
TO_LLAMA = (
    ("gpt2", {}),
    ("+rmsnorm", dict(norm="rmsnorm")),
    ("+rope", dict(positions="rope")),
    ("+swiglu", dict(mlp="glu", act="silu")),
    ("+no bias (llama)", dict(bias=False)),
)
ARM_CONFIG = dict(max_len=256, dim=128, depth=4, heads=4)

# the k-shot curves measured (family, shots); keyvalue and binding ask about a demonstration, so k >= 1
KSHOT = {"attribute": (0, 1, 2, 4), "keyvalue": (1, 2, 4), "binding": (1, 2, 4), "count": (0, 1, 2, 4)}


def arm_configs() -> dict[str, dict]:
    """{arm: its GPTConfig fields}: the TO_LLAMA walk applied cumulatively to ARM_CONFIG."""
    out, fields = {}, dict(ARM_CONFIG)
    for name, change in TO_LLAMA:
        fields = {**fields, **change}
        out[name] = dict(fields)
    return out


def _model(config: dict):

    return GPT(GPTConfig(**config))


def kshot_metrics(model, seed: int, n: int) -> dict:
    """Exact and answer-type accuracy of every KSHOT curve on held-out templates, and at k = 4 on
    training templates with fresh nonce words and objects ("held-in")."""

    out = {}
    for family, ks in KSHOT.items():
        for k in ks:
            f = kshot_figures(model, kshot_items(family, k, n, seed, "heldout"))
            out[f"{family}_k{k}"] = to_record(f["exact"])
            out[f"{family}_k{k}_type"] = to_record(f["type"])
    for family in ("attribute", "keyvalue"):
        f = kshot_figures(model, kshot_items(family, 4, n, seed, "train"))
        out[f"{family}_k4_heldin"] = to_record(f["exact"])
        out[f"{family}_k4_heldin_type"] = to_record(f["type"])
    return out


def llm_metrics(model, eval_seed: int = 1234, documents: int = 500, scene_questions: int = 1000,
                kshot_n: int = 400, context_n: int = 600) -> dict:
    """Held-out fact recall (all, per family, per form), recall in the training forms, perplexity
    on held-out and on fresh training-split world text, scene questions asked in text, the k-shot
    curves (`kshot_metrics`), counterfactual statements in context and chat questions."""

    out = {}
    held = recall_items("heldout")
    r = fact_recall(model, held)
    out["recall_heldout"] = to_record(r["accuracy"])
    out.update({f"recall_{family}": to_record(e) for family, e in r["per_family"].items()})
    for form in ("question", "cloze"):
        out[f"recall_{form}"] = to_record(interval([h for h, it in zip(r["hits"], held) if it.form == form]))
    out["recall_train_forms"] = to_record(fact_recall(model, recall_items("train"))["accuracy"])
    out["perplexity_heldout"] = to_record(world_perplexity(model, WorldText(eval_seed, "heldout").documents(documents)))
    out["perplexity_train_split"] = to_record(world_perplexity(model, WorldText(eval_seed, "train").documents(documents)))
    s = fact_recall(model, scene_items(scene_questions, eval_seed))
    out.update({f"scene_{family}": to_record(e) for family, e in s["per_family"].items()})
    out["counterfactual"] = to_record(fact_recall(model, counterfactual_items(context_n, eval_seed))["accuracy"])
    out["chat"] = to_record(fact_recall(model, chat_items(context_n, eval_seed))["accuracy"])
    out.update({f"kshot_{key}": value for key, value in kshot_metrics(model, eval_seed, kshot_n).items()})
    return out


def formation_probe(model, seed: int, n: int = 100) -> dict:
    """The few figures logged during training (retrieval forming before anything else is read):
    held-in key-value retrieval at k = 4, held-out attribute rules at k = 0 and 4, fact recall."""

    out = {"keyvalue_k4_heldin": kshot_figures(model, kshot_items("keyvalue", 4, n, seed, "train"))["exact"].value}
    for k in (0, 4):
        out[f"attribute_k{k}"] = kshot_figures(model, kshot_items("attribute", k, n, seed, "heldout"))["exact"].value
    out["recall_heldout"] = fact_recall(model, recall_items("heldout"))["accuracy"].value
    return {key: round(v, 4) for key, v in out.items()}


def _window_means(values: list[float], window: int) -> list[float]:
    return [round(sum(values[a:a + window]) / len(values[a:a + window]), 4) for a in range(0, len(values), window)]


class _Counted:
    """The batches, counting the real (non-pad) tokens trained and the vocabulary ids they use."""

    def __init__(self, batches):
        self.batches, self.tokens, self.ids = batches, 0, set()

    def __call__(self, i: int) -> dict:
        b = self.batches(i)
        real = b["ids"][b["attention_mask"]]
        self.tokens += int(real.numel())
        self.ids.update(real.unique().tolist())
        return b


def _run(job: dict) -> dict:
    """One training run: the shipped model (job["ship"]) or a GPT-2-to-Llama arm."""

    torch.set_num_threads(1)
    start = time.perf_counter()
    seed_everything(job["seed"])
    model = _model(job["config"])
    main = packed_batches(job["batch_size"], model.config.max_len, job["data_seed"])
    first = packed_batches(job["batch_size"], model.config.max_len, job["data_seed"], RETRIEVAL_MIXTURE)
    batches = _Counted(lambda i: first(i) if i < job["curriculum_steps"] else main(i))
    curve = []

    def probe(i: int, logs: dict) -> None:
        if job["probe_every"] and (i + 1) % job["probe_every"] == 0:
            model.eval()
            with torch.no_grad():
                curve.append({"step": i + 1, **formation_probe(model, job["eval_seed"])})
            model.train()

    history = fit(model, lm_step, batches, job["steps"], lr=job["lr"], weight_decay=job["weight_decay"],
                  warmup=job["warmup"], device="cpu", seed=job["seed"], progress=job["progress"],
                  desc=f"zoo: llm {job['arm']} seed {job['seed']}", callback=probe)
    train_seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        if job["ship"]:
            metrics = llm_metrics(model, job["eval_seed"])
        else:
            docs = WorldText(job["eval_seed"], "heldout").documents(job["arm_documents"])
            metrics = {"perplexity_heldout": to_record(world_perplexity(model, docs))}
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": metrics, "final": {"loss": round(history.last("loss"), 4)},
           "train_seconds": round(train_seconds, 1), "ms_per_step": round(1000 * train_seconds / job["steps"], 1),
           "parameters": count_parameters(model), "tokens_trained": batches.tokens,
           "vocabulary_trained": len(batches.ids)}
    if job["ship"]:
        out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out["formation"] = curve
        out["loss_every_50_steps"] = _window_means(history.losses["loss"], 50)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


@dataclass
class LlmRecipe:
    """The zoo LLM and the GPT-2-to-Llama arms: seeded, on the CPU, one thread per job; `workers`
    jobs at once (the shipped model's job first, the arms beside it)."""

    steps: int = 2200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 200
    seed: int = 0
    data_seed: int = 0
    eval_seed: int = 1234
    probe_every: int = 200
    curriculum_steps: int = 1000  # steps on RETRIEVAL_MIXTURE before the corpus's MIXTURE (0: none)
    arm_steps: int = 400
    arm_batch_size: int = 16
    arm_seeds: int = 3
    arm_documents: int = 500
    workers: int = 2
    config: dict = field(default_factory=lambda: dict(LLM_CONFIG))

    name = "llm"
    model = staticmethod(_model)

    def jobs(self, progress: bool) -> list[dict]:
        common = dict(lr=self.lr, weight_decay=self.weight_decay, warmup=self.warmup, eval_seed=self.eval_seed,
                      arm_documents=self.arm_documents)
        jobs = [dict(common, arm="shipped", seed=self.seed, config=dict(self.config), steps=self.steps,
                     batch_size=self.batch_size, data_seed=self.data_seed, probe_every=self.probe_every,
                     curriculum_steps=self.curriculum_steps, ship=True,
                     progress=progress and self.workers == 1)]
        for seed in range(self.arm_seeds):
            for arm, config in arm_configs().items():
                jobs.append(dict(common, arm=arm, seed=seed, config=config, steps=self.arm_steps,
                                 batch_size=self.arm_batch_size, data_seed=self.data_seed + 1 + seed, probe_every=0,
                                 curriculum_steps=0, ship=False, progress=False))
        return jobs

    def train(self, weights_dir, progress: bool):
        results = run_jobs(_run, self.jobs(progress), self.workers, progress, "llm")
        shipped = next(r for r in results if r["arm"] == "shipped")
        model = _model(self.config)
        model.load_state_dict(shipped["state"])
        arms = arm_table([r for r in results if r["arm"] != "shipped"], ("ms_per_step", "parameters", "tokens_trained"))
        return model.eval(), {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": shipped["metrics"],
            "formation": shipped["formation"],
            "arms": arms,
            "arm_configs": arm_configs(),
            "final_loss": shipped["final"]["loss"],
            "loss_every_50_steps": shipped["loss_every_50_steps"],
            "steps": self.steps,
            "tokens_trained": shipped["tokens_trained"],
            "vocabulary_trained": shipped["vocabulary_trained"],
            "train_seconds": shipped["train_seconds"],
            "ms_per_step": shipped["ms_per_step"],
            "job_seconds": {f"{r['arm']} seed {r['seed']}": r["seconds"] for r in results},
        }
