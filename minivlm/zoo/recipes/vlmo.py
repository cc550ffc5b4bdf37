"""The zoo VLMo (chapter 05) and the arms behind the chapter's staged-pretraining claim.

The recipe trains five arms, `seeds` seeds each; the first three at equal total steps:
  - "staged", the paper's: masked image modelling on images alone (attention + vision experts),
    masked language modelling on captions alone with the attention and vision experts frozen
    (language experts), then image-text pairs (everything: ITC + ITM + MLM; ITM's negative
    captions drawn by similarity, its negative images uniformly, see `VLMoConfig.negatives`);
  - "pairs_only": every step on image-text pairs;
  - "reversed": text first (attention + language experts), then images with attention frozen,
    then pairs, which the VLMo paper reports works worse;
  - "pairs_short": only the staged arm's pair steps, from scratch (about the staged arm's compute);
  - "pairs_short_pos002": "pairs_short" with the image positions initialised at std 0.02 instead
    of 1 (chapter 07's question, at equal steps).
Every arm is evaluated on the same ShapesBench sets: image→text retrieval among 256 captions in
the three ways (dual mode, fusion mode on every pair, dual top-k re-ranked by fusion), ITM
accuracy on the standard set and on the hard set (negatives one fact away), and zero-shot
classification of single objects by the dual mode (class, colour, shape). The staged and reversed
arms also record each unimodal stage against its trivial predictor (`unimodal_check`). Seed 0 of
`ship_arm` ships as "vlmo" (the chapter shows the manifest's figures).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.data import ShapesBench
from minivlm.drivers import stage_of, stage_seed, staged_pretrain
from minivlm.eval import evaluate_zero_shot, to_record
from minivlm.models.vlmo import VLMO_CONFIG, VLMo, VLMoConfig, evaluate_retrieval, unimodal_check
from minivlm.utils import seed_everything
from minivlm.zoo.recipes import arm_table, config_dict, itm_figures, run_jobs, shipped_model


def _model(config: dict):

    return VLMo(VLMoConfig(**config))


def arm_schedule(arm: str, unimodal_steps: int, pair_steps: int) -> list[tuple[str, int, bool]]:
    """The (stage, steps, shared) schedule of an arm. "staged", "pairs_only" and "reversed" train
    2·unimodal_steps + pair_steps steps; "pairs_short" only the pair steps (a pair step costs about
    eight unimodal ones, so it matches the staged arm's compute, not its steps)."""
    schedules = {
        "staged": [("image", unimodal_steps, True), ("text", unimodal_steps, False), ("pairs", pair_steps, True)],
        "pairs_only": [("pairs", 2 * unimodal_steps + pair_steps, True)],
        "reversed": [("text", unimodal_steps, True), ("image", unimodal_steps, False), ("pairs", pair_steps, True)],
        "pairs_short": [("pairs", pair_steps, True)],  # the staged arm's pair steps alone: about its compute
        "pairs_short_pos002": [("pairs", pair_steps, True)],  # the same, positions initialised small
    }
    if arm not in schedules:
        raise ValueError(f"arm must be one of {sorted(schedules)}, got {arm!r}")
    return schedules[arm]


ARM_CONFIG = {"pairs_short_pos002": {"pos_init_std": 0.02}}  # an arm's changes to the recipe's config


def vlmo_metrics(model, bench_seed: int = 1234, retrieval_n: int = 256, itm_n: int = 1000, hard_n: int = 1000,
                 k: int = 16) -> dict:
    """The chapter's ShapesBench figures of a VLMo, each with its 95 % interval."""

    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    ret = evaluate_retrieval(model, bench.retrieval(retrieval_n), k=k)
    out = {"i2t_r1_dual": to_record(ret["dual"]["r1"]), f"i2t_r1_rerank{k}": to_record(ret["rerank"]["r1"]),
           "i2t_r1_fusion": to_record(ret["fusion"]["r1"])}
    zero_shot = evaluate_zero_shot(model, bench.classification("seen"))
    out |= {"zero_shot" if key == "accuracy" else f"zero_shot_{key}": to_record(v) for key, v in zero_shot.items()}
    return out | itm_figures(model, bench, itm_n, hard_n)


def _run_arm(job: dict) -> dict:
    """One arm, start to figures, on one thread (a top-level function, for worker processes)."""

    torch.set_num_threads(1)
    seed_everything(job["seed"])
    model = _model(job["config"])
    data_seed = job["world_seed"] + job["seed"]
    checks, check_seconds = {}, 0.0

    def check_stage(label: str, model) -> None:  # each unimodal stage against its trivial predictor
        nonlocal check_seconds
        k, stage = stage_of(label)
        if stage in ("image", "text"):
            t = time.perf_counter()
            found = unimodal_check(model, stage, train_seed=stage_seed(data_seed, k))
            checks[label] = {key: to_record(value) for key, value in found.items()}
            check_seconds += time.perf_counter() - t

    start = time.perf_counter()
    histories = staged_pretrain(model, job["schedule"], batch_size=job["batch_size"], seed=data_seed,
                                lr=job["lr"], warmup=job["warmup"], weight_decay=job["weight_decay"], device="cpu",
                                progress=job["progress"], on_stage_end=check_stage)
    train_seconds = time.perf_counter() - start - check_seconds
    last = list(histories.values())[-1]
    metrics = vlmo_metrics(model, job["bench_seed"], job["retrieval_n"], job["itm_n"], job["itm_n"], job["k"])
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": metrics,
           "final": {key: round(last.last(key), 4) for key in ("loss", "itc", "itm", "mlm")},
           "stage_seconds": {label: round(h.seconds, 1) for label, h in histories.items()},
           "unimodal_checks": checks,
           "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - start, 1)}
    if job["ship"]:
        out["state"] = {key: v.detach().clone() for key, v in model.state_dict().items()}
        out["temperature"] = round(float(1.0 / model.scale().detach()), 4)
    return out


@dataclass
class VlmoRecipe:
    """VLMo on ShapesWorld, seeded, on the CPU: the `arms` over `seeds` seeds (figures in the
    manifest), seed 0 of `ship_arm` shipped. `workers` > 1 trains that many arms at once in
    separate processes (each on one thread: the same figures as workers=1)."""

    unimodal_steps: int = 300  # each of the image-only and text-only stages
    pair_steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seeds: int = 3
    arms: tuple = ("staged", "pairs_only", "reversed", "pairs_short", "pairs_short_pos002")
    ship_arm: str = "pairs_only"  # the arm whose seed 0 ships: the best at our scale (see the manifest's arms)
    world_seed: int = 5
    bench_seed: int = 1234
    k: int = 16
    retrieval_n: int = 256  # candidates in the retrieval evaluation (fusion scores all n² pairs)
    itm_n: int = 1000  # pairs in each ITM evaluation set (standard and hard)
    workers: int = 1
    config: dict = field(default_factory=lambda: dict(VLMO_CONFIG))

    name = "vlmo"
    model = staticmethod(_model)

    def train(self, weights_dir, progress: bool):
        if self.ship_arm not in self.arms:
            raise ValueError(f"ship_arm must be one of the arms {self.arms!r}, got {self.ship_arm!r}")
        jobs = [dict(arm=arm, seed=seed, schedule=arm_schedule(arm, self.unimodal_steps, self.pair_steps),
                     config={**self.config, **ARM_CONFIG.get(arm, {})}, world_seed=self.world_seed,
                     batch_size=self.batch_size, lr=self.lr, warmup=self.warmup, weight_decay=self.weight_decay, bench_seed=self.bench_seed, k=self.k,
                     retrieval_n=self.retrieval_n, itm_n=self.itm_n,
                     ship=seed == 0 and arm == self.ship_arm, progress=progress and self.workers == 1)
                for seed in range(self.seeds) for arm in self.arms]
        results = run_jobs(_run_arm, jobs, self.workers, progress, "vlmo")
        arms = arm_table(results, ("stage_seconds", "unimodal_checks"))
        model, shipped = shipped_model(_model, {**self.config, **ARM_CONFIG.get(self.ship_arm, {})}, results)
        return model.eval(), {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": shipped["metrics"],
            "arms": arms,
            "schedules": {arm: arm_schedule(arm, self.unimodal_steps, self.pair_steps) for arm in self.arms},
            "final_loss": shipped["final"]["loss"],
            "final_itc": shipped["final"]["itc"],
            "final_itm": shipped["final"]["itm"],
            "final_mlm": shipped["final"]["mlm"],
            "final_temperature": shipped["temperature"],
            "steps": 2 * self.unimodal_steps + self.pair_steps,
            "train_seconds": shipped["train_seconds"],
        }
