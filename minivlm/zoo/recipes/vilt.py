"""The zoo ViLTs (chapter 03): "vilt_pretrained" (MLM + ITM on captions) and "vilt" (that model
fine-tuned for VQA), and the seed arms behind the chapter's question "does pretraining help?".

"vilt" also records, in its manifest, the VQA accuracy of `seeds` pairs of arms at equal
fine-tune steps: pretrained (MLM + ITM with that seed, then VQA) vs from scratch (VQA only),
so the chapter can compare the difference with the spread over seeds. Seed 0's pretrained
arm is the shipped "vilt"; the other arms' weights are not shipped (only their figures).

It also trains, from scratch at the same steps and seeds, the variants in SCRATCH_VARIANTS, each
one change from the "scratch" arm: the chapter's test of what holds relation and position
questions back (the position initialisation, the patch size, the training length).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from minivlm.data import ShapesBench
from minivlm.data.pairs import vqa_batches
from minivlm.eval import evaluate_itm, evaluate_vqa, to_record
from minivlm.models.vilt import VILT_CONFIG, ViLT, ViLTConfig, pretrain_batches, pretrain_step, vqa_step
from minivlm.train import fit
from minivlm.utils import seed_everything
from minivlm.zoo import store
from minivlm.zoo.recipes import config_dict, run_jobs

# name -> the one change from the "scratch" arm: a config field, or "steps_factor" (train that many times longer)
SCRATCH_VARIANTS = {"scratch_pos002": {"pos_init_std": 0.02}, "scratch_patch4": {"patch_size": 4},
                    "scratch_steps2x": {"steps_factor": 2}}


def _model(config: dict):

    config = dict(config)
    if "answers" in config:
        config["answers"] = tuple(config["answers"])
    return ViLT(ViLTConfig(**config))


def pretrain(config: dict, steps: int, seed: int, world_seed: int, batch_size: int, lr: float, warmup: int,
             weight_decay: float, progress: bool = False, desc: str | None = None):
    """MLM + ITM pretraining of a fresh ViLT (seeded init), on the CPU. Returns (model, history)."""

    seed_everything(seed)
    model = _model(config)
    history = fit(model, pretrain_step, pretrain_batches(batch_size, seed=world_seed + 1000 * seed,
                                                         image_size=model.config.image_size,
                                                         max_text_len=model.config.max_text_len),
                  steps, lr=lr, warmup=warmup, weight_decay=weight_decay, device="cpu", seed=seed, progress=progress,
                  desc=desc)
    return model, history


def finetune_vqa(model, steps: int, seed: int, world_seed: int, batch_size: int, lr: float, warmup: int,
                 weight_decay: float, progress: bool = False, desc: str | None = None):
    """VQA fine-tuning of `model` (pretrained or fresh) on the train split. Returns the history."""

    batches = vqa_batches(batch_size, seed=world_seed + 1000 * seed, image_size=model.config.image_size,
                          max_text_len=model.config.max_text_len, answers=model.config.answers)
    return fit(model, vqa_step, batches, steps, lr=lr, warmup=warmup, weight_decay=weight_decay, device="cpu",
               seed=seed, progress=progress, desc=desc)


def vqa_metrics(model, bench_seed: int, n: int) -> dict:
    """VQA accuracy (overall and per kind, with 95 % intervals) on ShapesBench(bench_seed).vqa(n)."""

    result = evaluate_vqa(model, ShapesBench(image_size=model.config.image_size, seed=bench_seed).vqa(n))
    out = {"vqa": to_record(result["overall"])}
    out.update({f"vqa_{k}": to_record(v) for k, v in result["per_kind"].items()})
    return out


def _scratch_variant(job: dict) -> dict:
    """One seed of a SCRATCH_VARIANTS arm: a fresh ViLT with the arm's change, VQA-trained from
    scratch exactly as the "scratch" arm (top level, one thread: run_jobs may spawn it)."""

    torch.set_num_threads(1)
    start = time.perf_counter()
    changes = dict(SCRATCH_VARIANTS[job["arm"]])
    steps = job["steps"] * changes.pop("steps_factor", 1)
    torch.manual_seed(job["seed"])
    model = _model({**job["config"], **changes})
    finetune_vqa(model, steps, job["seed"], job["world_seed"], job["batch_size"], job["lr"], job["warmup"],
                 job["weight_decay"], job["progress"], desc=f"zoo: vilt VQA {job['arm']} seed {job['seed']}")
    metrics = vqa_metrics(model, job["bench_seed"], job["vqa_n"])
    seconds = round(time.perf_counter() - start, 1)
    return {"arm": job["arm"], "seed": job["seed"],
            "row": {"seed": job["seed"], **metrics, "steps": steps, "seconds": seconds},
            "seconds": seconds}


@dataclass
class ViltPretrainedRecipe:
    """ViLT pretrained with MLM + ITM on ShapesWorld captions (a third of multi-object scenes
    captioned by a spatial relation), seeded, on the CPU."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    world_seed: int = 1
    bench_seed: int = 1234
    itm_n: int = 1000
    config: dict = field(default_factory=lambda: dict(VILT_CONFIG))

    name = "vilt_pretrained"
    model = staticmethod(_model)

    def train(self, weights_dir, progress: bool):

        start = time.perf_counter()
        model, history = pretrain(self.config, self.steps, self.seed, self.world_seed, self.batch_size, self.lr,
                                  self.warmup, self.weight_decay, progress, desc="zoo: vilt_pretrained")
        seconds = time.perf_counter() - start
        itm = evaluate_itm(model, ShapesBench(image_size=model.config.image_size, seed=self.bench_seed).itm(self.itm_n))
        return model, {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": {"itm": to_record(itm["accuracy"])},
            "final_loss": round(history.last("loss"), 4),
            "final_mlm": round(history.last("mlm"), 4),
            "final_itm": round(history.last("itm"), 4),
            "steps": self.steps,
            "train_seconds": round(seconds, 1),
        }


@dataclass
class ViltRecipe:
    """"vilt_pretrained" fine-tuned for VQA; plus the arms pretrained vs from scratch at equal
    fine-tune steps over `seeds` seeds, whose figures go into the manifest."""

    steps: int = 2000  # VQA fine-tune steps of every arm
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seeds: int = 3
    world_seed: int = 2
    bench_seed: int = 1234
    vqa_n: int = 1200
    variants: tuple = tuple(SCRATCH_VARIANTS)  # the scratch variants to train
    only_variants: bool = False  # train the shipped arm and the variants only (to add variants to a build)
    workers: int = 1  # the variants run in this many processes (one thread each: same figures)

    name = "vilt"
    model = staticmethod(_model)

    def train(self, weights_dir, progress: bool):


        path = Path(weights_dir) / "vilt_pretrained.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"'vilt' fine-tunes 'vilt_pretrained', which is not in {weights_dir}: "
                                    f"build it first (`minivlm zoo build vilt_pretrained`)")
        info = store.manifest("vilt_pretrained", weights_dir)
        # the other seeds' pretrained arms repeat the shipped model's own recipe, with their seed
        pre_recipe = ViltPretrainedRecipe(**info["recipe"])
        arms: dict[str, list] = {"pretrained": [], "scratch": []}
        shipped, shipped_history, seconds = None, None, 0.0
        unknown = sorted(set(self.variants) - set(SCRATCH_VARIANTS))
        if unknown:
            raise ValueError(f"variants must be drawn from {list(SCRATCH_VARIANTS)}, got {unknown}")
        for seed in range(self.seeds):
            for arm in ("pretrained", "scratch"):
                if self.only_variants and (seed, arm) != (0, "pretrained"):
                    continue
                start = time.perf_counter()
                if arm == "scratch":
                    torch.manual_seed(seed)
                    model = _model(info["config"])
                elif seed == 0:  # the shipped pretrained model itself
                    model = _model(info["config"])
                    model.load_state_dict(load_file(str(path)))
                else:
                    model, _ = pretrain(info["config"], pre_recipe.steps, seed, pre_recipe.world_seed,
                                        pre_recipe.batch_size, pre_recipe.lr, pre_recipe.warmup,
                                        pre_recipe.weight_decay, progress, desc=f"zoo: vilt pretrain seed {seed}")
                history = finetune_vqa(model, self.steps, seed, self.world_seed, self.batch_size, self.lr, self.warmup,
                                       self.weight_decay, progress, desc=f"zoo: vilt VQA {arm} seed {seed}")
                metrics = vqa_metrics(model, self.bench_seed, self.vqa_n)
                arms[arm].append({"seed": seed, **metrics, "seconds": round(time.perf_counter() - start, 1)})
                if seed == 0 and arm == "pretrained":
                    shipped, shipped_history, seconds = model, history, time.perf_counter() - start
        jobs = [dict(arm=arm, seed=seed, config=info["config"], steps=self.steps, world_seed=self.world_seed,
                     batch_size=self.batch_size, lr=self.lr, warmup=self.warmup, weight_decay=self.weight_decay,
                     bench_seed=self.bench_seed, vqa_n=self.vqa_n, progress=progress and self.workers == 1)
                for arm in self.variants for seed in range(self.seeds)]
        for r in run_jobs(_scratch_variant, jobs, self.workers, progress, "vilt"):
            arms.setdefault(r["arm"], []).append(r["row"])
        arms = {arm: rows for arm, rows in arms.items() if rows}  # a variants-only build has no scratch arm
        values = {arm: [r["vqa"]["value"] for r in rows] for arm, rows in arms.items()}
        gains = [p - s for p, s in zip(values["pretrained"], values.get("scratch", []))]
        return shipped, {
            "config": config_dict(shipped),
            "tokenizer_vocab_size": shipped.config.vocab_size,
            "metrics": {k: v for k, v in arms["pretrained"][0].items() if k.startswith("vqa")},
            "arms": arms,
            "scratch_variants": {arm: SCRATCH_VARIANTS[arm] for arm in self.variants},
            "pretraining_gain": {"per_seed": [round(g, 4) for g in gains], "mean": round(sum(gains) / len(gains), 4),
                                 "min": round(min(gains), 4), "max": round(max(gains), 4)} if gains else None,
            "final_loss": round(shipped_history.last("loss"), 4),
            "steps": self.steps,
            "train_seconds": round(seconds, 1),
        }
