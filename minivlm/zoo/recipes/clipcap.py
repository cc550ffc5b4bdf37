"""The zoo's ClipCap (chapter 10): an MLP that turns the zoo CLIP's image embedding into eight
embeddings the frozen zoo `llm` reads as a prefix, trained on ShapesWorld captions.

The build trains the three prefix variants of the chapter (Frozen: CLIP's ViT fine-tuned + a
linear map; ClipCap: an MLP on the frozen CLIP embedding; MAPL: a light mapper over frozen patch
tokens) for the same number of steps on the same batches as the zoo BLIP (chapter 06), `seeds`
seeds each, and ships ClipCap seed 0 (the `mapl` entry ships MAPL seed 0). Only the trained part
is stored: the weights file holds the mapper, and loading joins it to the zoo's `clip` and `llm`
(whose sha256 the manifest records, so a rebuilt CLIP or LLM makes the entry refuse to load
instead of decoding noise).

Two more arms, at the same steps, images and batch size: `clipcap_kl`, a ClipCap mapper trained
to act as the caption (chapter 10's arm 6: on visible-answer VQA of the same images, whose text is
asserted to hold no world-fact word, the frozen LLM reading [prefix ; question ; answer] is pulled
towards it reading [true caption ; question ; answer], KL at every suffix position), and
`clipcap_word`, ClipCap with its prefix kept at the word embeddings' scale. The Frozen arm runs
once per learning rate in `frozen_lrs` (arms `frozen_lr0.003` ...): it fine-tunes CLIP's ViT,
which CLIP itself was trained at 2e-3.

Every arm is measured on the same ShapesBench sets: captions (CIDEr-D, BLEU-4, exactly true);
VQA by prompting (never trained on questions) per kind; knowledge questions ("how many corners
does the red object have?") taken apart (`knowledge_decomposition`: the LLM alone, the true
caption in text, the model's own caption in text, describe-then-answer, direct), each again on
the items whose matching visual question the model answers right (`perception_figures`); and
the prefix vectors' norms next to the word embeddings'.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.data import ShapesBench
from minivlm.data.pairs import image_text_pairs
from minivlm.eval import evaluate_captions, to_record
from minivlm.models.frozen import (
    PREFIX_CONFIG,
    PrefixConfig,
    PrefixVLM,
    caption_distill_batches,
    caption_distill_step,
    caption_qa_set,
    knowledge_decomposition,
    perception_figures,
    prefix_batches,
    prefix_norms,
    prefix_step,
    vqa_figures,
)
from minivlm.train import fit
from minivlm.utils import count_parameters, seed_everything
from minivlm.zoo import store
from minivlm.zoo.recipes import arm_table, finish_job, frozen_parts_config, run_jobs, shipped_model

# What each arm varies: the variant (what is trained), the objective ("caption": `prefix_step` on
# the captions; "caption_kl": `caption_distill_step` on visible-answer VQA of the same images) and
# the prefix's norm. "frozen" runs once per learning rate of the recipe's `frozen_lrs`.
ARM_SPECS = {
    "clipcap": dict(variant="clipcap", objective="caption", prefix_norm="free"),
    "frozen": dict(variant="frozen", objective="caption", prefix_norm="free"),
    "mapl": dict(variant="mapl", objective="caption", prefix_norm="free"),
    "clipcap_kl": dict(variant="clipcap", objective="caption_kl", prefix_norm="free"),
    "clipcap_word": dict(variant="clipcap", objective="caption", prefix_norm="word"),
}
ARMS = tuple(ARM_SPECS)
FROZEN_PARTS = ("clip", "llm")


def _model(config: dict):
    """A PrefixVLM on the zoo's clip and llm; config: PrefixConfig's fields + the sha256 of the
    clip and llm weights it was trained on (`clip_sha256`, `llm_sha256`). The entry's name is its
    variant ("clipcap", "mapl")."""

    config = frozen_parts_config(config, FROZEN_PARTS, "this prefix", "the prefix entries trained on it "
                                 "(`minivlm zoo build clipcap`, then `mapl` and `clipcap_kl`)")
    return PrefixVLM(store.load("clip"), store.load("llm"), PrefixConfig(**config))


def prefix_metrics(model, bench_seed: int = 1234, caption_n: int = 256, vqa_n: int = 600,
                   knowledge_n: int = 900) -> dict:
    """ShapesBench figures of a PrefixVLM with 95 % intervals: greedy captions; VQA by prompting,
    all and per kind; knowledge questions five ways (`knowledge_decomposition`), all and per
    kind, and again where the model answers the matching visual question right
    (`perception_figures`: knowledge_<way>_given_perception, and direct's share of the
    true-caption ceiling there); the prefix vectors' norms (on the captioning images) and the
    word embeddings'."""

    bench = ShapesBench(image_size=model.image_size, seed=bench_seed)
    cap = bench.captioning(caption_n)
    ev = evaluate_captions(model, cap["images"], cap["scenes"])
    out = {"cider": to_record(ev["cider"]), "bleu4": round(ev["bleu4"], 4), "caption_true": to_record(ev["true"])}
    vqa_set = bench.vqa(vqa_n)
    vqa = vqa_figures(model, vqa_set)
    out["vqa"] = to_record(vqa["accuracy"])
    out.update({f"vqa_{kind}": to_record(e) for kind, e in vqa["per_kind"].items()})
    out["vqa_describe_first"] = to_record(vqa_figures(model, vqa_set, describe_first=True)["accuracy"])
    know_set = bench.knowledge(knowledge_n)
    know = knowledge_decomposition(model, know_set)
    for way, figures in know.items():
        out[f"knowledge_{way}"] = to_record(figures["accuracy"])
        out.update({f"knowledge_{way}_{kind}": to_record(e) for kind, e in figures["per_kind"].items()})
    seen = perception_figures(model, know_set, know)
    out["perception"] = to_record(seen["perception"]["accuracy"])
    out.update({f"perception_{kind}": to_record(e) for kind, e in seen["perception"]["per_kind"].items()})
    for way, e in seen["given_perception"].items():
        out[f"knowledge_{way}_given_perception"] = None if e is None else to_record(e)
    share = seen["direct_share_of_ceiling"]
    out["knowledge_direct_share_of_ceiling_given_perception"] = None if share is None else to_record(share)
    norms = prefix_norms(model, cap["images"])
    out["prefix_norm"] = {k: round(v, 4) for k, v in norms["prefix"].items()}
    out["word_norm"] = {k: round(v, 4) for k, v in norms["words"].items()}
    return out


def _run_arm(job: dict) -> dict:

    torch.set_num_threads(1)
    start = time.perf_counter()
    seed_everything(job["seed"])
    spec = ARM_SPECS[job["spec"]]
    model = PrefixVLM(store.load("clip"), store.load("llm"),
                      PrefixConfig(spec["variant"], prefix_norm=spec["prefix_norm"], **job["config"]))
    data = image_text_pairs(job["n_images"], 0.0, seed=job["world_seed"])
    if spec["objective"] == "caption":
        step, batches = prefix_step, prefix_batches(data, model.config.n_prefix, batch_size=job["batch_size"],
                                                    seed=job["seed"])
    else:  # the same images, each caption with a visible-answer question (no fact word: asserted)
        qa = caption_qa_set(data, seed=job["world_seed"])
        step, batches = caption_distill_step, caption_distill_batches(qa, model.config.n_prefix,
                                                                      batch_size=job["batch_size"], seed=job["seed"])
    history = fit(model, step, batches, job["steps"], lr=job["lr"], weight_decay=job["weight_decay"],
                  warmup=job["warmup"], device="cpu", seed=job["seed"], progress=job["progress"],
                  desc=f"zoo: prefix {job['arm']} seed {job['seed']}")
    train_seconds = time.perf_counter() - start
    model.eval()
    metrics = prefix_metrics(model, job["bench_seed"], **job.get("metric_sizes", {}))
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": metrics, "lr": job["lr"],
           "final": {"loss": round(history.last("loss"), 4)}, "train_seconds": round(train_seconds, 1),
           "ms_per_step": round(1000 * train_seconds / job["steps"], 1),
           "trainable": count_parameters(model, trainable_only=True), "total": count_parameters(model)}
    return finish_job(out, job, start, model.stored_state_dict())


@dataclass
class ClipCapRecipe:
    """The prefix arms on clean ShapesWorld captions (`ARM_SPECS`; "frozen" once per lr of
    `frozen_lrs`), at the zoo BLIP's steps and batch size, `seeds` seeds each, on the CPU;
    ClipCap seed 0 is shipped. `workers` > 1 runs that many arms at once (one thread each: the
    figures do not change)."""

    steps: int = 1500  # the zoo BLIP's
    batch_size: int = 32  # the zoo BLIP's
    lr: float = 3e-3
    frozen_lrs: tuple = (3e-3, 1e-3, 3e-4)  # Frozen fine-tunes CLIP's ViT (pretrained at 2e-3): swept
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

    def jobs(self, progress: bool = False) -> list[dict]:
        """One job per (seed, arm), "frozen" expanded to one arm per lr of `frozen_lrs`."""
        bad = [a for a in self.arms if a not in ARM_SPECS]
        if bad:
            raise ValueError(f"arms must be among {list(ARM_SPECS)}, got {bad}")
        if "frozen" in self.arms and not self.frozen_lrs:
            raise ValueError("frozen_lrs must hold at least one learning rate when the arms include 'frozen'")
        runs = []  # (arm name, spec, lr)
        for arm in self.arms:
            if arm == "frozen":
                runs += [(f"frozen_lr{lr:g}", arm, lr) for lr in self.frozen_lrs]
            else:
                runs.append((arm, arm, self.lr))
        names = [r[0] for r in runs]
        if self.ship_arm not in names:
            raise ValueError(f"ship_arm must be one of the arms run {names}, got {self.ship_arm!r}")
        return [dict(arm=name, spec=spec, seed=seed, config=dict(self.config), steps=self.steps,
                     batch_size=self.batch_size, lr=lr, weight_decay=self.weight_decay, warmup=self.warmup,
                     n_images=self.n_images, world_seed=self.world_seed, bench_seed=self.bench_seed,
                     ship=name == self.ship_arm and seed == 0, progress=progress and self.workers == 1)
                for seed in range(self.seeds) for name, spec, lr in runs]

    def shipped_config(self) -> dict:
        """The manifest's config of the shipped arm: PrefixConfig's fields + the sha256 of the zoo
        clip and llm it was trained on."""

        spec = ARM_SPECS[next(j["spec"] for j in self.jobs() if j["arm"] == self.ship_arm)]
        return {"variant": spec["variant"], **self.config, "prefix_norm": spec["prefix_norm"],
                **{f"{part}_sha256": store.manifest(part)["sha256"] for part in FROZEN_PARTS}}

    def train(self, weights_dir, progress: bool):
        results = run_jobs(_run_arm, self.jobs(progress), self.workers, progress, "clipcap")
        arms = arm_table(results, ("lr", "ms_per_step", "trainable", "total"))
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


@dataclass
class MaplRecipe(ClipCapRecipe):
    """MAPL alone, shipped so that chapter 10 can re-measure it: the same job as the clipcap
    build's MAPL seed 0 (one thread, so the same weights)."""

    seeds: int = 1
    workers: int = 1
    arms: tuple = ("mapl",)
    ship_arm: str = "mapl"

    name = "mapl"


@dataclass
class ClipCapKLRecipe(ClipCapRecipe):
    """Chapter 10's arm 6 alone, shipped so that the chapter can re-measure it: a ClipCap mapper
    trained to act as the caption (`caption_distill_step` on visible-answer VQA), the same job as
    the clipcap build's `clipcap_kl` seed 0 (one thread, so the same weights)."""

    seeds: int = 1
    workers: int = 1
    arms: tuple = ("clipcap_kl",)
    ship_arm: str = "clipcap_kl"

    name = "clipcap_kl"
