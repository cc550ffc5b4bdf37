"""The zoo BLIP (chapter 06) and the arms behind CapFilt's claim.

For each of `seeds` seeds, on a "web" set of `n_web` ShapesWorld pairs with `noise` of the
captions wrong and a small clean ("human-annotated") set of `n_clean` pairs:
  1. "noisy": BLIP pretrained (ITC + ITM + LM) on web + clean, `steps` steps;
  2. a captioner (LM) and a filter (ITC + ITM) fine-tuned from it on the clean set;
  3. CapFilt: the captioner writes a synthetic caption per web image, by nucleus sampling and,
     separately, by beam search; the filter removes the web and synthetic captions it judges
     unmatched. The filter's precision and recall at catching the noisy web captions, and the
     synthetic captions that are not exactly true, are recorded;
  4. "capfilt_nucleus" and "capfilt_beam": a fresh BLIP pretrained on each bootstrapped set +
     the clean set, the same `steps` steps as "noisy"; "filter_only": the same, on the web
     captions the filter kept and no synthetic ones, to credit CapFilt's gain to its parts.
Equal steps is not equal compute: the bootstrapped arms also paid for the noisy pretraining, the
fine-tunes and the captioning (`BlipRecipe.compute`, and the seconds in the manifest).
Every arm is measured on the same ShapesBench sets: captioning (CIDEr-D, BLEU-4, captions
exactly true), image→text retrieval R@1 (ITC), ITM accuracy. Seed 0's capfilt_nucleus model,
BLIP's final recipe, ships as the weights.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from minivlm.data import ShapesBench
from minivlm.data.pairs import image_text_pairs, merge_pair_sets, pair_batches
from minivlm.eval import evaluate_captions, interval, itc_similarity, to_record, true_caption_rate
from minivlm.models.blip import BLIP, BLIP_CONFIG, BLIPConfig, BLIPPretrainer, capfilt, filter_scores, pretrain_step
from minivlm.models.clip import init_vision_from_clip
from minivlm.train import fit
from minivlm.utils import seed_everything
from minivlm.zoo import store
from minivlm.zoo.recipes import arm_table, config_dict, finish_job, itm_figures, run_jobs, shipped_model

BOOTSTRAPS = ("nucleus", "beam")
SECOND_ARMS = ("capfilt_nucleus", "capfilt_beam", "filter_only")  # the arms pretrained on a bootstrapped set


def _model(config: dict):

    return BLIP(BLIPConfig(**config))


def pair_sets(job: dict) -> tuple[dict, dict]:
    """The web set (noisy) and the clean set of a seed: they depend on (world_seed, seed) only."""

    base, size = job["world_seed"] + 1000 * job["seed"], job["config"].get("image_size", 32)
    return (image_text_pairs(job["n_web"], job["noise"], seed=base, image_size=size),
            image_text_pairs(job["n_clean"], 0.0, seed=base + 500, image_size=size))


def train_blip(model, data: dict, steps: int, job: dict, losses=("itc", "itm", "lm"), lr: float | None = None,
               desc: str | None = None):
    """Train `model` (in place) on a pair set for `steps` steps with the job's settings; returns the history."""

    trainer = BLIPPretrainer(model, queue_seed=job["seed"], losses=losses)
    batches = pair_batches(data, job["batch_size"], seed=job["seed"], max_text_len=model.config.max_text_len)
    return fit(trainer, pretrain_step, batches, steps, lr=lr or job["lr"], warmup=job["warmup"],
               weight_decay=job["weight_decay"], device="cpu", seed=job["seed"], progress=job["progress"], desc=desc)


def _fresh(job: dict):

    seed_everything(job["seed"])
    model = _model(job["config"])
    if job["vision_init"] == "clip":
        init_vision_from_clip(model, store.load("clip", job["weights_dir"]))
    return model


def _bootstrap(job: dict) -> dict:
    """Steps 1-3 of a seed: the noisy arm, the captioner and filter, both bootstrapped sets."""

    torch.set_num_threads(1)
    start = time.perf_counter()
    web, clean = pair_sets(job)
    model = _fresh(job)
    history = train_blip(model, merge_pair_sets(web, clean), job["steps"], job,
                         desc=f"zoo: blip noisy seed {job['seed']}")
    train_seconds = time.perf_counter() - start
    out = {"arm": "noisy", "seed": job["seed"], "metrics": blip_metrics(model.eval(), job["bench_seed"]),
           "final": {k: round(history.last(k), 4) for k in ("loss", "itc", "itm", "lm")},
           "train_seconds": round(train_seconds, 1)}
    t0 = time.perf_counter()
    captioner, filt = copy.deepcopy(model), copy.deepcopy(model)
    train_blip(captioner, clean, job["finetune_steps"], job, losses=("lm",), lr=job["finetune_lr"])
    train_blip(filt, clean, job["finetune_steps"], job, losses=("itc", "itm"), lr=job["finetune_lr"])
    captioner.eval(), filt.eval()
    out["finetune_seconds"] = round(time.perf_counter() - t0, 1)
    pre_filter = model.match_probability(web["images"], web["captions"]) > 0.5
    out["filter_before_finetune"] = _scores(filter_scores(pre_filter, web["clean"]))
    boots = {}
    for how in BOOTSTRAPS:
        t0 = time.perf_counter()
        r = capfilt(captioner, filt, web, do_sample=how == "nucleus", top_p=job["top_p"], num_beams=job["num_beams"],
                    seed=job["seed"])
        true_syn = true_caption_rate(r["synthetic"], web["scenes"])
        boots[how] = {"captions": r["data"]["captions"], "image_ids": r["data"]["image_ids"].tolist()}
        kept_good = (r["web_kept"] & web["clean"]).sum() + (r["synthetic_kept"] & torch.tensor(true_syn)).sum()
        out[f"capfilt_{how}"] = {
            "filter": _scores(filter_scores(r["web_kept"], web["clean"])),
            # the same filter on the synthetic captions, "noisy" there meaning not exactly true of the scene
            "synthetic_filter": _scores(filter_scores(r["synthetic_kept"], torch.tensor(true_syn))),
            "pairs": len(r["data"]["captions"]),
            "clean_or_true": round(int(kept_good) / max(1, len(r["data"]["captions"])), 4),
            "web_kept": int(r["web_kept"].sum()), "synthetic_kept": int(r["synthetic_kept"].sum()),
            "synthetic_true": to_record(interval(true_syn)),
            "kept_synthetic_true": to_record(interval([t for t, k in zip(true_syn, r["synthetic_kept"].tolist()) if k]))
            if bool(r["synthetic_kept"].any()) else None,
            "distinct_synthetic": len(set(r["synthetic"])),
            "examples": r["synthetic"][:6], "seconds": round(time.perf_counter() - t0, 1)}
        if how == "nucleus":  # the filter alone: the web captions it kept, no synthetic ones
            keep = r["web_kept"].nonzero().flatten()
            boots["filter_only"] = {"captions": [web["captions"][i] for i in keep.tolist()],
                                    "image_ids": keep.tolist()}
            out["filter_only"] = {"pairs": len(keep),
                                  "clean_or_true": round(float(web["clean"][keep].float().mean()), 4)}
    out["web_noisy"] = int((~web["clean"]).sum())
    out["web_clean_share"] = round(float(web["clean"].float().mean()), 4)
    out["boots"] = boots
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _scores(s: dict) -> dict:
    return {k: (to_record(v) if hasattr(v, "low") else v) for k, v in s.items()}


def _pretrain_bootstrapped(job: dict) -> dict:
    """Step 4 of a seed: a fresh BLIP pretrained on a bootstrapped set + the clean set."""

    torch.set_num_threads(1)
    start = time.perf_counter()
    web, clean = pair_sets(job)
    boot = {"images": web["images"], "scenes": web["scenes"], "captions": job["boot"]["captions"],
            "image_ids": torch.tensor(job["boot"]["image_ids"], dtype=torch.long)}
    model = _fresh(job)
    history = train_blip(model, merge_pair_sets(boot, clean), job["steps"], job,
                         desc=f"zoo: blip {job['arm']} seed {job['seed']}")
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": blip_metrics(model.eval(), job["bench_seed"]),
           "final": {k: round(history.last(k), 4) for k in ("loss", "itc", "itm", "lm")},
           "train_seconds": round(time.perf_counter() - start, 1), "pairs": len(boot["captions"]) + job["n_clean"]}
    return finish_job(out, job, start, model.state_dict())


def blip_metrics(model, bench_seed: int = 1234, caption_n: int = 256, retrieval_n: int = 256, itm_n: int = 1000,
                 hard_n: int = 1000) -> dict:
    """The chapter's ShapesBench figures of a BLIP, each with its 95 % interval: greedy captions'
    CIDEr-D, BLEU-4 and exact truth; image→text R@1 by ITC; ITM accuracies."""

    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    cap = bench.captioning(caption_n)
    ev = evaluate_captions(model, cap["images"], cap["scenes"])
    ret = bench.retrieval(retrieval_n)
    hits = (itc_similarity(model, ret["images"], ret["captions"]).argmax(1) == torch.arange(retrieval_n)).tolist()
    out = {"cider": to_record(ev["cider"]), "bleu4": round(ev["bleu4"], 4), "caption_true": to_record(ev["true"]),
           "i2t_r1_itc": to_record(interval(hits))}
    return out | itm_figures(model, bench, itm_n, hard_n)


@dataclass
class BlipRecipe:
    """BLIP pretrained on noisy ShapesWorld pairs, bootstrapped with CapFilt, pretrained again;
    seeded, on the CPU, its image encoder started from the zoo CLIP's. `workers` > 1 runs that
    many jobs at once in separate processes (each on one thread: the figures do not change)."""

    steps: int = 1500
    finetune_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    finetune_lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.01
    seeds: int = 3
    noise: float = 0.4
    n_web: int = 4096
    n_clean: int = 512
    top_p: float = 0.9
    num_beams: int = 3
    world_seed: int = 6
    bench_seed: int = 1234
    vision_init: str | None = "clip"
    workers: int = 1
    config: dict = field(default_factory=lambda: dict(BLIP_CONFIG))

    name = "blip"
    model = staticmethod(_model)

    def _job(self, seed: int, weights_dir, progress: bool, **extra) -> dict:
        return dict(seed=seed, config=dict(self.config), steps=self.steps, finetune_steps=self.finetune_steps,
                    batch_size=self.batch_size, lr=self.lr, finetune_lr=self.finetune_lr, warmup=self.warmup,
                    weight_decay=self.weight_decay, noise=self.noise, n_web=self.n_web, n_clean=self.n_clean,
                    top_p=self.top_p, num_beams=self.num_beams, world_seed=self.world_seed,
                    bench_seed=self.bench_seed, vision_init=self.vision_init, weights_dir=str(weights_dir),
                    progress=progress and self.workers == 1, **extra)

    def compute(self) -> dict:
        """What each arm paid, in steps of batch_size pairs and in forward passes of the captioner
        and the filter (the seconds per seed are in the manifest's job_seconds and bootstrapping)."""
        bootstrap = {"pretrain_steps": 2 * self.steps, "finetune_steps": 2 * self.finetune_steps,
                     "captioned_images": self.n_web, "judged_captions": 2 * self.n_web}
        return {"noisy": {"pretrain_steps": self.steps},
                "capfilt_nucleus": bootstrap, "capfilt_beam": bootstrap,
                "filter_only": {"pretrain_steps": 2 * self.steps, "finetune_steps": self.finetune_steps,
                                "judged_captions": self.n_web}}

    def train(self, weights_dir, progress: bool):
        if self.vision_init not in (None, "clip"):
            raise ValueError(f"vision_init must be None or 'clip', got {self.vision_init!r}")
        first = run_jobs(_bootstrap, [self._job(s, weights_dir, progress, arm="noisy") for s in range(self.seeds)],
                         self.workers, progress, "blip")
        second = run_jobs(_pretrain_bootstrapped,
                          [self._job(r["seed"], weights_dir, progress, arm=arm,
                                     boot=r["boots"][arm.removeprefix("capfilt_")],
                                     ship=r["seed"] == 0 and arm == "capfilt_nucleus")
                           for r in first for arm in SECOND_ARMS], self.workers, progress, "blip")
        arms = arm_table(first + second, ("pairs",))
        bootstrapping = [{"seed": r["seed"], "web_noisy": r["web_noisy"], "web_clean_share": r["web_clean_share"],
                          "filter_before_finetune": r["filter_before_finetune"],
                          "finetune_seconds": r["finetune_seconds"],
                          "filter_only": r["filter_only"],
                          **{f"capfilt_{how}": r[f"capfilt_{how}"] for how in BOOTSTRAPS}} for r in first]
        model, shipped = shipped_model(_model, self.config, second)
        return model.eval(), {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": shipped["metrics"],
            "ship_arm": "capfilt_nucleus",
            "arms": arms,
            "bootstrapping": bootstrapping,
            "final_loss": shipped["final"]["loss"],
            "final_lm": shipped["final"]["lm"],
            "steps": self.steps,
            "train_seconds": shipped["train_seconds"],
            "job_seconds": {f"{r['arm']} seed {r['seed']}": r["seconds"] for r in first + second},
            "compute": self.compute(),
        }
