"""The zoo's Flamingo (chapter 11): a Perceiver Resampler and gated cross-attention blocks that
join the frozen zoo `clip` (image tower) and the frozen zoo `llm`, trained on interleaved
ShapesWorld documents (`minivlm.data.interleaved`: captions, VQA, image episodes, fast binding).

Only the trained parts are stored (resampler, gated blocks, the <image> embedding); loading joins
them to the zoo's `clip` and `llm`, whose sha256 the manifest records (a rebuilt CLIP or LLM
makes the entry refuse to load, as chapter 10's prefixes do).

The arms, each `seeds` seeds at the same steps, batch size and documents (`ARM_SPECS`):

    flamingo     the shipped model: resampler, a gated block before every LLM layer, each text
                 token reading only the image just before it
    ungated      the same without the tanh gates (plain residual sums from step 0)
    vcgpt        before Flamingo (VC-GPT / GPT-2's add_cross_attention): ungated cross-attention
                 inside every layer, no feed-forward, all patch tokens, no resampler
    mean         one visual token per image (the mean of the ViT's tokens), no resampler
    patches      all 65 ViT tokens per image, no resampler
    every2       a gated block before every second layer only
    all_images   each text token reads every earlier image, not only the last

Each arm is measured the same way (`flamingo_metrics`): the k-shot curve (k = 0, 1, 2, 4) of
fast binding and of attribute episodes, with held-out nonce words and images, once in the
training formats and once in held-out ones (binding phrased "that one is called a", chapter 09's
held-out templates), each with the text-only control (images removed); captions (CIDEr-D) and VQA by
prompting on ShapesBench; the LLM's held-out fact recall through the model, with no image and
after an unrelated image; the
loss at step 0 and at the end; the gates; time per step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.data import ShapesBench
from minivlm.data.interleaved import KSHOT_TASKS, interleaved_batches, kshot_documents
from minivlm.data.worldtext import recall_items
from minivlm.eval import evaluate_captions, to_record
from minivlm.models.flamingo import (
    FLAMINGO_CONFIG,
    Flamingo,
    FlamingoConfig,
    fact_recall,
    flamingo_optimizer,
    flamingo_step,
    kshot_accuracy,
)
from minivlm.models.frozen import answer_figures
from minivlm.train import fit
from minivlm.utils import count_parameters, seed_everything
from minivlm.zoo import store
from minivlm.zoo.recipes import arm_table, finish_job, frozen_parts_config, run_jobs, shipped_model

ARM_SPECS = {
    "flamingo": {},
    "ungated": dict(gated=False),
    "vcgpt": dict(gated=False, feedforward=False, placement="after_attention", visual="patches"),
    "mean": dict(visual="mean"),
    "patches": dict(visual="patches"),
    "every2": dict(every=2),
    "all_images": dict(only_immediate=False),
}
ARMS = tuple(ARM_SPECS)
FROZEN_PARTS = ("clip", "llm")
KSHOTS = (0, 1, 2, 4)


def _model(config: dict) -> Flamingo:
    """A Flamingo on the zoo's clip and llm; config: FlamingoConfig's fields + the sha256 of the
    clip and llm weights it was trained on (`clip_sha256`, `llm_sha256`)."""
    config = frozen_parts_config(config, FROZEN_PARTS, "this Flamingo", "it (`minivlm zoo build flamingo`)")
    return Flamingo(store.load("clip"), store.load("llm"), FlamingoConfig(**config))


def flamingo_metrics(model: Flamingo, bench_seed: int = 1234, kshot_n: int = 96, caption_n: int = 128,
                     vqa_n: int = 300, kshot_seed: int = 1) -> dict:
    """The k-shot curves (held-out nonce words and images; in the training formats and in the
    held-out ones; each with the text-only control), captions, VQA by prompting, and the LLM's
    fact recall with no image and after an unrelated image, each with a 95 % interval."""
    out = {}
    for formats in ("train", "heldout"):
        for task in KSHOT_TASKS:
            for k in KSHOTS:
                docs = kshot_documents(task, k, kshot_n, seed=kshot_seed, formats=formats)
                key = f"{task}_{formats}_{k}shot"
                out[key] = to_record(kshot_accuracy(model, docs)["accuracy"])
                out[f"{key}_text_only"] = to_record(kshot_accuracy(model, docs, images=False)["accuracy"])
    bench = ShapesBench(image_size=model.image_size, seed=bench_seed)
    cap = bench.captioning(caption_n)
    ev = evaluate_captions(model, cap["images"], cap["scenes"])
    out.update(cider=to_record(ev["cider"]), bleu4=round(ev["bleu4"], 4), caption_true=to_record(ev["true"]))
    vqa = bench.vqa(vqa_n)
    figures = answer_figures(model.ask(vqa["images"], vqa["questions"]), vqa["answers"], vqa["kinds"])
    out["vqa"] = to_record(figures["accuracy"])
    out.update({f"vqa_{kind}": to_record(e) for kind, e in figures["per_kind"].items()})
    facts = recall_items()
    out["fact_recall_text_only"] = to_record(fact_recall(model, facts)["accuracy"])
    out["fact_recall_after_image"] = to_record(fact_recall(model, facts, cap["images"])["accuracy"])
    out["gates"] = {str(i): {k: round(v, 4) for k, v in g.items()} for i, g in model.gates().items()}
    return out


def _run_arm(job: dict) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    seed_everything(job["seed"])
    model = Flamingo(store.load("clip"), store.load("llm"), FlamingoConfig(**{**job["config"], **job["spec"]}))
    batches = interleaved_batches(job["batch_size"], seed=job["seed"], max_len=model.llm.config.max_len,
                                  weights=job["weights"])
    gates: list[dict] = []

    def record_gates(i: int, logs: dict) -> None:
        if i % job["gate_every"] == 0 or i == job["steps"] - 1:
            gates.append({"step": i + 1, **{str(k): v for k, v in model.gates().items()}})

    history = fit(model, flamingo_step, batches, job["steps"], lr=job["lr"], warmup=job["warmup"], device="cpu",
                  seed=job["seed"], progress=job["progress"], desc=f"zoo: flamingo {job['arm']} seed {job['seed']}",
                  optimizer=flamingo_optimizer(model, job["lr"], job["gate_lr_mult"], job["weight_decay"]),
                  callback=record_gates)
    train_seconds = time.perf_counter() - start
    model.eval()
    losses = history.losses["loss"]
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": flamingo_metrics(model, job["bench_seed"],
                                                                                **job.get("metric_sizes", {})),
           "final": {"loss": round(history.last("loss"), 4)}, "first_loss": round(losses[0], 4),
           "loss_curve": [round(sum(losses[a:a + 50]) / len(losses[a:a + 50]), 4) for a in range(0, len(losses), 50)],
           "gate_curve": gates, "train_seconds": round(train_seconds, 1),
           "ms_per_step": round(1000 * train_seconds / job["steps"], 1),
           "trainable": count_parameters(model, trainable_only=True), "total": count_parameters(model)}
    return finish_job(out, job, start, model.stored_state_dict())


@dataclass
class FlamingoRecipe:
    """The arms of `ARM_SPECS` on interleaved ShapesWorld documents, `seeds` seeds each, on the
    CPU; the "flamingo" arm's seed 0 is shipped. `workers` > 1 runs that many arms at once (one
    thread each: the figures do not change)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    gate_lr_mult: float = 1.0
    weight_decay: float = 0.0
    warmup: int = 50
    seeds: int = 3
    weights: dict = field(default_factory=lambda: {"captions": 1.0, "vqa": 1.0, "attribute": 1.0, "binding": 2.0})
    bench_seed: int = 1234
    gate_every: int = 50
    workers: int = 2
    arms: tuple = ARMS
    ship_arm: str = "flamingo"
    config: dict = field(default_factory=lambda: dict(FLAMINGO_CONFIG))
    metric_sizes: dict = field(default_factory=dict)

    name = "flamingo"
    model = staticmethod(_model)

    def jobs(self, progress: bool = False) -> list[dict]:
        bad = [a for a in self.arms if a not in ARM_SPECS]
        if bad:
            raise ValueError(f"arms must be among {list(ARM_SPECS)}, got {bad}")
        if self.ship_arm not in self.arms:
            raise ValueError(f"ship_arm must be one of the arms run {list(self.arms)}, got {self.ship_arm!r}")
        return [dict(arm=arm, spec=ARM_SPECS[arm], seed=seed, config=dict(self.config), steps=self.steps,
                     batch_size=self.batch_size, lr=self.lr, gate_lr_mult=self.gate_lr_mult,
                     weight_decay=self.weight_decay, warmup=self.warmup, weights=dict(self.weights),
                     bench_seed=self.bench_seed, gate_every=self.gate_every, metric_sizes=dict(self.metric_sizes),
                     ship=arm == self.ship_arm and seed == 0, progress=progress and self.workers == 1)
                for seed in range(self.seeds) for arm in self.arms]

    def shipped_config(self) -> dict:
        return {**self.config, **ARM_SPECS[self.ship_arm],
                **{f"{part}_sha256": store.manifest(part)["sha256"] for part in FROZEN_PARTS}}

    def train(self, weights_dir, progress: bool):
        results = run_jobs(_run_arm, self.jobs(progress), self.workers, progress, "flamingo")
        arms = arm_table(results, ("first_loss", "loss_curve", "gate_curve", "ms_per_step", "trainable", "total"))
        config = self.shipped_config()
        model, shipped = shipped_model(_model, config, results)
        return model, {
            "config": config,
            "metrics": shipped["metrics"],
            "ship_arm": self.ship_arm,
            "arms": arms,
            "trainable_parameters": shipped["trainable"],
            "final_loss": shipped["final"]["loss"],
            "steps": self.steps,
            "train_seconds": shipped["train_seconds"],
            "job_seconds": {f"{r['arm']} seed {r['seed']}": r["seconds"] for r in results},
        }
