"""The zoo's BEiT-3 (chapter 08): the visual tokenizer, and the masked-data-modelling model with
the arms behind the chapter's claim.

"beit3_tokenizer": BEiT-2's VQ-KD at our scale, taught by the zoo CLIP's image tower (its patch
features averaged onto the 4×4 grid of 8-pixel patches); measured by the cosine between its
decoded features and the teacher's on fresh images (against the cosine of always answering the
mean teacher feature) and by its codebook usage (perplexity, dead codes).

"beit3": per seed, two arms fine-tuned for the same steps on the same data:
  - "pretrained": masked data modelling (images, texts and pairs, `mdm_step`) for `pretrain_steps`,
    then, each from a copy of that model, VQA (`vqa_step`), retrieval (`retrieval_step`) and
    captioning (`caption_step`) fine-tuning for `finetune_steps` each;
  - "scratch": the same VQA and retrieval fine-tuning from a fresh model.
Every fine-tuned model is measured on the same ShapesBench sets (VQA accuracy with per-kind
figures, image→text R@1 among 256 in the dual mode, caption CIDEr-D). The MDM-pretrained model of
seed 0 (before any fine-tuning) ships as "beit3".
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from minivlm.data import ShapesBench
from minivlm.data.pairs import pretrain_batches, vqa_batches
from minivlm.drivers import train_tokenizer
from minivlm.eval import answer_hits, evaluate_captions, interval, itc_similarity, to_record
from minivlm.models.beit3 import (
    BEIT3_CONFIG,
    TOKENIZER_CONFIG,
    BEiT3,
    BEiT3Config,
    VisualTokenizer,
    VisualTokenizerConfig,
    caption_batches,
    caption_step,
    code_usage,
    mdm_batches,
    mdm_step,
    retrieval_step,
    teacher_features,
    tokenizer_batches,
    vqa_step,
)
from minivlm.nn.quantize import codebook_stats
from minivlm.train import fit
from minivlm.utils import eval_mode, seed_everything
from minivlm.zoo import store
from minivlm.zoo.recipes import config_dict, run_jobs


def _tokenizer_model(config: dict):

    return VisualTokenizer(VisualTokenizerConfig(**config))


def _model(config: dict):

    return BEiT3(BEiT3Config(**config))


def _load_clip(weights_dir) -> torch.nn.Module:

    if not (Path(weights_dir) / "clip.safetensors").is_file():
        raise FileNotFoundError(f"the visual tokenizer is taught by the zoo CLIP, which is not in {weights_dir}: "
                                f"build it first (`minivlm zoo build clip`)")
    return store.load("clip", weights_dir)


def tokenizer_metrics(tokenizer, teacher, bench_seed: int = 1234, n: int = 256, train_seed: int = 0) -> dict:
    """The tokenizer on n fresh ShapesBench images: the cosine of its decoded features with the
    teacher's, the cosine of the mean training feature (a tokenizer that knows nothing), and the
    codebook usage."""


    c = tokenizer.config
    images = ShapesBench(image_size=c.image_size, seed=bench_seed).captioning(n)["images"]
    target = teacher_features(teacher, images, c.grid)  # (n, N, D)
    with torch.no_grad(), eval_mode(tokenizer):
        decoded, _ = tokenizer(images)
    mean = tokenizer_batches(teacher, 256, seed=train_seed + 7, image_size=c.image_size, grid=c.grid)(0)["targets"]
    mean = mean.mean(0, keepdim=True)  # (1, N, D): the average feature of each patch position
    cos = F.cosine_similarity(decoded, target, dim=-1).mean(1)  # (n,) per image
    base = F.cosine_similarity(mean.expand_as(target), target, dim=-1).mean(1)
    stats = codebook_stats(code_usage(tokenizer, images))
    return {"cosine": to_record(interval(cos.tolist())), "mean_feature_cosine": to_record(interval(base.tolist())),
            "perplexity": round(stats["perplexity"], 2), "dead_codes": stats["dead"],
            "used_fraction": round(stats["used_fraction"], 4), "codebook_size": c.codebook_size}


@dataclass
class Beit3TokenizerRecipe:
    """VQ-KD against the zoo CLIP, on the CPU, one seed."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.05
    restart_every: int = 50
    seed: int = 0
    bench_seed: int = 1234
    config: dict = field(default_factory=lambda: dict(TOKENIZER_CONFIG))

    name = "beit3_tokenizer"
    model = staticmethod(_tokenizer_model)

    def train(self, weights_dir, progress: bool):

        teacher = _load_clip(weights_dir)
        seed_everything(self.seed)
        model = _tokenizer_model(self.config)
        start = time.perf_counter()
        history, restarts = train_tokenizer(model, teacher, self.steps, self.batch_size, seed=self.seed, lr=self.lr,
                                            warmup=self.warmup, weight_decay=self.weight_decay,
                                            restart_every=self.restart_every, progress=progress,
                                            desc="zoo: beit3 tokenizer")
        seconds = time.perf_counter() - start
        model.eval()
        return model, {
            "config": config_dict(model),
            "metrics": tokenizer_metrics(model, teacher, self.bench_seed, train_seed=self.seed),
            "restarts": restarts,
            "final_loss": round(history.last("loss"), 4),
            "final_cosine": round(history.last("cosine"), 4),
            "steps": self.steps,
            "train_seconds": round(seconds, 1),
        }


def finetuned_metrics(model, task: str, bench_seed: int = 1234, vqa_n: int = 1200, retrieval_n: int = 256,
                      caption_n: int = 256) -> dict:
    """ShapesBench figures of a model fine-tuned for `task` ("vqa", "retrieval" or "caption")."""

    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    if task == "vqa":

        data = bench.vqa(vqa_n)
        hits = answer_hits(model.answer(data["images"], data["questions"]), data["answers"])
        out = {"vqa": to_record(interval(hits))}
        for kind in dict.fromkeys(data["kinds"]):
            out[f"vqa_{kind}"] = to_record(interval([h for h, k in zip(hits, data["kinds"]) if k == kind]))
        return out
    if task == "retrieval":
        data = bench.retrieval(retrieval_n)
        sim = itc_similarity(model, data["images"], data["captions"])
        return {"i2t_r1": to_record(interval((sim.argmax(1) == torch.arange(retrieval_n)).tolist()))}
    if task == "caption":

        data = bench.captioning(caption_n)
        ev = evaluate_captions(model, data["images"], data["scenes"])
        return {"cider": to_record(ev["cider"]), "bleu4": round(ev["bleu4"], 4), "caption_true": to_record(ev["true"])}
    raise ValueError(f"task must be 'vqa', 'retrieval' or 'caption', got {task!r}")


def _finetune(model, task: str, job: dict, seed: int) -> dict:

    b, world = job["batch_size"], job["world_seed"] * 100 + seed
    step, batches = {
        "vqa": (vqa_step, lambda: vqa_batches(b, seed=world)),
        "retrieval": (retrieval_step, lambda: pretrain_batches(b, seed=world + 1)),
        "caption": (caption_step, lambda: caption_batches(b, seed=world + 2, ratio=model.config.caption_mask_ratio)),
    }[task]
    start = time.perf_counter()
    history = fit(model, step, batches(), job["finetune_steps"], lr=job["lr"], warmup=job["warmup"],
                  weight_decay=job["weight_decay"], device="cpu", seed=seed, progress=job["progress"],
                  desc=f"zoo: beit3 {job['arm']} {task} seed {seed}")
    return {**finetuned_metrics(model, task, job["bench_seed"]), f"{task}_loss": round(history.last("loss"), 4),
            f"{task}_seconds": round(time.perf_counter() - start, 1)}


def _run_arm(job: dict) -> dict:

    torch.set_num_threads(1)
    start = time.perf_counter()
    seed = job["seed"]
    seed_everything(seed)
    model = _model(job["config"])
    out = {"arm": job["arm"], "seed": seed, "metrics": {}}
    if job["arm"] == "pretrained":
        tokenizer = VisualTokenizer(VisualTokenizerConfig(**job["tokenizer_config"]))
        tokenizer.load_state_dict(job["tokenizer_state"])
        c = model.config
        batches = mdm_batches(tokenizer.eval(), job["batch_size"], seed=job["world_seed"] * 100 + seed,
                              image_size=c.image_size, patch_size=c.patch_size, mim_ratio=c.mim_ratio,
                              text_mask_ratio=c.text_mask_ratio, pair_mask_ratio=c.pair_mask_ratio,
                              max_text_len=c.max_text_len)
        t = time.perf_counter()
        history = fit(model, mdm_step, batches, job["pretrain_steps"], lr=job["lr"], warmup=job["warmup"],
                      weight_decay=job["weight_decay"], device="cpu", seed=seed, progress=job["progress"],
                      desc=f"zoo: beit3 MDM seed {seed}")
        out["metrics"]["mdm_loss"] = {k: round(history.last(k), 4) for k in history.losses}
        out["metrics"]["pretrain_seconds"] = round(time.perf_counter() - t, 1)
        if seed == 0:
            out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for task in job["tasks"]:
        out["metrics"].update(_finetune(copy.deepcopy(model), task, job, seed))
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


@dataclass
class Beit3Recipe:
    """MDM pretraining, then fine-tuning, against fine-tuning from scratch, `seeds` seeds each,
    on the CPU. `workers` > 1 runs that many arms at once (one thread each: the figures do not
    change)."""

    pretrain_steps: int = 1500
    finetune_steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seeds: int = 3
    world_seed: int = 8
    bench_seed: int = 1234
    workers: int = 1
    config: dict = field(default_factory=lambda: dict(BEIT3_CONFIG))

    name = "beit3"
    model = staticmethod(_model)

    def train(self, weights_dir, progress: bool):

        if not (Path(weights_dir) / "beit3_tokenizer.safetensors").is_file():
            raise FileNotFoundError(f"'beit3' predicts the visual tokens of 'beit3_tokenizer', which is not in "
                                    f"{weights_dir}: build it first (`minivlm zoo build beit3_tokenizer`)")
        tokenizer = store.load("beit3_tokenizer", weights_dir)
        if tokenizer.config.codebook_size != self.config["codebook_size"]:
            raise ValueError(f"the tokenizer has {tokenizer.config.codebook_size} codes, the model's config "
                             f"{self.config['codebook_size']}")
        common = dict(config=dict(self.config), pretrain_steps=self.pretrain_steps,
                      finetune_steps=self.finetune_steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                      weight_decay=self.weight_decay, world_seed=self.world_seed, bench_seed=self.bench_seed,
                      progress=progress and self.workers == 1, tokenizer_config=config_dict(tokenizer),
                      tokenizer_state=tokenizer.state_dict())
        jobs = [dict(common, arm=arm, seed=seed,
                     tasks=("vqa", "retrieval", "caption") if arm == "pretrained" else ("vqa", "retrieval"))
                for seed in range(self.seeds) for arm in ("pretrained", "scratch")]
        results = run_jobs(_run_arm, jobs, self.workers, progress, "beit3")
        arms: dict[str, list] = {}
        for r in results:
            arms.setdefault(r["arm"], []).append({"seed": r["seed"], **r["metrics"], "seconds": r["seconds"]})
        shipped = next(r for r in results if "state" in r)
        model = _model(self.config)
        model.load_state_dict(shipped["state"])
        model.eval()

        def gains(metric: str) -> list[float]:
            return [round(p[metric]["value"] - s[metric]["value"], 4) for p, s in zip(arms["pretrained"], arms["scratch"])]

        return model, {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": {k: v for k, v in arms["pretrained"][0].items() if k not in ("seed", "seconds")},
            "arms": arms,
            "pretraining_gain": {"vqa": gains("vqa"), "i2t_r1": gains("i2t_r1")},
            "steps": self.pretrain_steps,
            "train_seconds": shipped["metrics"]["pretrain_seconds"],
            "job_seconds": {f"{r['arm']} seed {r['seed']}": r["seconds"] for r in results},
        }
