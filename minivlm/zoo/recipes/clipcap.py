"""The zoo's ClipCap (chapter 10): an MLP that turns the zoo CLIP's image embedding into eight
embeddings the frozen zoo `llm` reads as a prefix, trained on ShapesWorld captions.

The build trains the three prefix variants of the chapter (Frozen: CLIP's ViT fine-tuned + a
linear map; ClipCap: an MLP on the frozen CLIP embedding; MAPL: a light mapper over frozen patch
tokens) for the same number of steps on the same batches as the zoo BLIP (chapter 06), `seeds`
seeds each, and ships ClipCap seed 0 (the `mapl` entry ships MAPL seed 0). Only the trained part
is stored: the weights file holds the mapper, and loading joins it to the zoo's `clip` and `llm`
(whose sha256 the manifest records, so a rebuilt CLIP or LLM makes the entry refuse to load
instead of decoding noise).

Every arm is measured on the same ShapesBench sets: captions (CIDEr-D, BLEU-4, exactly true);
VQA by prompting (never trained on questions) per kind; knowledge questions ("how many corners
does the red object have?") asked directly, after the model's own caption, and to the LLM alone
without the image (the baseline).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.zoo.recipes import arm_table, estimate, run_jobs

ARMS = ("clipcap", "frozen", "mapl")
PREFIX_CONFIG = dict(n_prefix=8, hidden=128, mapper_dim=128, mapper_heads=4)
FROZEN_PARTS = ("clip", "llm")


def _model(config: dict):
    """A PrefixVLM on the zoo's clip and llm; config: PrefixConfig's fields + the sha256 of the
    clip and llm weights it was trained on (`clip_sha256`, `llm_sha256`). The entry's name is its
    variant ("clipcap", "mapl")."""
    from minivlm import zoo
    from minivlm.models.frozen import PrefixConfig, PrefixVLM

    config = dict(config)
    for part in FROZEN_PARTS:
        key = f"{part}_sha256"
        if key not in config:
            raise ValueError(f"config has no {key!r}: the {part!r} weights this prefix was trained on")
        trained_on, now = config.pop(key), zoo.manifest(part)["sha256"]
        if trained_on != now:
            raise ValueError(f"this prefix was trained on a zoo {part!r} with sha256 {trained_on[:12]}…, the zoo's "
                             f"{part!r} is now {now[:12]}…: run `minivlm zoo build {config.get('variant')}`")
    return PrefixVLM(zoo.load("clip"), zoo.load("llm"), PrefixConfig(**config))


def prefix_metrics(model, bench_seed: int = 1234, caption_n: int = 256, vqa_n: int = 600,
                   knowledge_n: int = 900) -> dict:
    """ShapesBench figures of a PrefixVLM with 95 % intervals: greedy captions; VQA by prompting,
    all and per kind; knowledge questions asked directly, after the model's own caption, and to
    the LLM alone (no image)."""
    from minivlm.data import ShapesBench
    from minivlm.models.blip import evaluate_captions
    from minivlm.models.frozen import knowledge_figures, vqa_figures

    bench = ShapesBench(image_size=model.image_size, seed=bench_seed)
    cap = bench.captioning(caption_n)
    ev = evaluate_captions(model, cap["images"], cap["scenes"])
    out = {"cider": estimate(ev["cider"]), "bleu4": round(ev["bleu4"], 4), "caption_true": estimate(ev["true"])}
    vqa_set = bench.vqa(vqa_n)
    vqa = vqa_figures(model, vqa_set)
    out["vqa"] = estimate(vqa["accuracy"])
    out.update({f"vqa_{kind}": estimate(e) for kind, e in vqa["per_kind"].items()})
    out["vqa_describe_first"] = estimate(vqa_figures(model, vqa_set, describe_first=True)["accuracy"])
    know = knowledge_figures(model, bench.knowledge(knowledge_n))
    for way, figures in know.items():
        out[f"knowledge_{way}"] = estimate(figures["accuracy"])
        out.update({f"knowledge_{way}_{kind}": estimate(e) for kind, e in figures["per_kind"].items()})
    return out


def _run_arm(job: dict) -> dict:
    from minivlm import zoo
    from minivlm.models.blip import image_text_pairs
    from minivlm.models.frozen import PrefixConfig, PrefixVLM, prefix_batches, prefix_step
    from minivlm.train import fit
    from minivlm.utils import count_parameters, seed_everything

    torch.set_num_threads(1)
    start = time.perf_counter()
    seed_everything(job["seed"])
    model = PrefixVLM(zoo.load("clip"), zoo.load("llm"), PrefixConfig(job["arm"], **job["config"]))
    data = image_text_pairs(job["n_images"], 0.0, seed=job["world_seed"])
    batches = prefix_batches(data, model.config.n_prefix, batch_size=job["batch_size"], seed=job["seed"])
    history = fit(model, prefix_step, batches, job["steps"], lr=job["lr"], weight_decay=job["weight_decay"],
                  warmup=job["warmup"], device="cpu", seed=job["seed"], progress=job["progress"],
                  desc=f"zoo: prefix {job['arm']} seed {job['seed']}")
    train_seconds = time.perf_counter() - start
    model.eval()
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": prefix_metrics(model, job["bench_seed"]),
           "final": {"loss": round(history.last("loss"), 4)}, "train_seconds": round(train_seconds, 1),
           "ms_per_step": round(1000 * train_seconds / job["steps"], 1),
           "trainable": count_parameters(model, trainable_only=True), "total": count_parameters(model)}
    if job["ship"]:
        out["state"] = {k: v.detach().clone() for k, v in model.stored_state_dict().items()}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


@dataclass
class ClipCapRecipe:
    """The three prefix variants on clean ShapesWorld captions, at the zoo BLIP's steps and batch
    size, `seeds` seeds each, on the CPU; ClipCap seed 0 is shipped. `workers` > 1 runs that many
    arms at once (one thread each: the figures do not change)."""

    steps: int = 1500  # the zoo BLIP's
    batch_size: int = 32  # the zoo BLIP's
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50
    seeds: int = 2
    n_images: int = 4096
    world_seed: int = 6  # the zoo BLIP's world
    bench_seed: int = 1234
    workers: int = 2
    arms: tuple = ARMS
    ship_arm: str = "clipcap"
    config: dict = field(default_factory=lambda: dict(PREFIX_CONFIG))

    name = "clipcap"
    model = staticmethod(_model)

    def train(self, weights_dir, progress: bool):
        from minivlm import zoo

        jobs = [dict(arm=arm, seed=seed, config=dict(self.config), steps=self.steps, batch_size=self.batch_size,
                     lr=self.lr, weight_decay=self.weight_decay, warmup=self.warmup, n_images=self.n_images,
                     world_seed=self.world_seed, bench_seed=self.bench_seed, ship=arm == self.ship_arm and seed == 0,
                     progress=progress and self.workers == 1)
                for seed in range(self.seeds) for arm in self.arms]
        results = run_jobs(_run_arm, jobs, self.workers, progress, "clipcap")
        arms = arm_table(results, ("ms_per_step", "trainable", "total"))
        shipped = next(r for r in results if "state" in r)
        config = {"variant": self.ship_arm, **self.config,
                  **{f"{part}_sha256": zoo.manifest(part)["sha256"] for part in FROZEN_PARTS}}
        model = _model(config)
        model.load_state_dict(shipped["state"], strict=False)
        return model.eval(), {
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


@dataclass
class MaplRecipe(ClipCapRecipe):
    """MAPL alone, shipped so that chapter 10 can re-measure it: the same job as the clipcap
    build's MAPL seed 0 (one thread, so the same weights)."""

    seeds: int = 1
    workers: int = 1
    arms: tuple = ("mapl",)
    ship_arm: str = "mapl"

    name = "mapl"
