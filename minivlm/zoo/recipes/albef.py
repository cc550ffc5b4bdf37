"""The zoo ALBEF (chapter 04) and the arms behind the chapter's two claims.

"albef" is pretrained with ITC + ITM + MLM on clean captions (noise 0 %) with momentum
distillation (MoD), seed 0. Its manifest also records, for `seeds` seeds each, the figures of
  - the four arms of "does MoD help on noisy captions?": caption noise 0 % and 40 %, MoD on
    and off, at equal steps;
  - ITM trained with random instead of hard negatives (noise 0 %, MoD on), for "do hard
    negatives help?", compared with the matching arm above;
  - MoD on and off at 40 % noise with the paper's one-hot ITC targets (the arms above know every
    caption in the batch that is true of an image: no in-batch false negatives for MoD to soften);
  - the controls of "align before fuse": ALBEF trained with ITC alone (no fusion, a third of the
    passes), and the zoo CLIP itself trained the same further steps on the same batches with the
    same ITC targets.
Every arm is evaluated on the same ShapesBench sets: image→text retrieval among 256 captions
(ITC alone and ITC top-k re-ranked by ITM), ITM accuracy on the standard set and on the hard
set (negatives one fact away), and the hard pairs by ITC cosine alone (the one score every arm
has; the ITC-only and CLIP arms have only the ITC figures). Only seed 0's clean MoD arm ships.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minivlm.data import ShapesBench
from minivlm.data.pairs import pretrain_batches
from minivlm.eval import evaluate_retrieval, interval, itc_similarity, to_record
from minivlm.models.albef import ALBEF, ALBEF_CONFIG, ALBEFConfig, ALBEFPretrainer, pretrain_step
from minivlm.models.clip import clip_step, init_vision_from_clip
from minivlm.train import fit
from minivlm.utils import count_parameters, seed_everything
from minivlm.zoo import store
from minivlm.zoo.recipes import arm_table, config_dict, itm_figures, run_jobs, shipped_model


def _model(config: dict):

    return ALBEF(ALBEFConfig(**config))


def pretrain(config: dict, steps: int, seed: int, world_seed: int, noise: float, batch_size: int, lr: float,
             warmup: int, weight_decay: float, vision_init=None, progress: bool = False, desc: str | None = None):
    """ALBEF pretraining of a fresh model (seeded init; the image encoder copied from
    `vision_init`, a CLIP, when given) on captions with `noise`, on the CPU. Returns (model,
    history). The data depend on (world_seed, seed, noise) only, so two arms of one seed that
    differ in MoD or in the negatives see the very same batches."""

    seed_everything(seed)
    model = _model(config)
    if vision_init is not None:
        init_vision_from_clip(model, vision_init)
    trainer = ALBEFPretrainer(model, queue_seed=seed)
    batches = pretrain_batches(batch_size, seed=world_seed + 1000 * seed, image_size=model.config.image_size,
                               noise=noise, max_text_len=model.config.max_text_len)
    history = fit(trainer, pretrain_step, batches, steps, lr=lr, warmup=warmup, weight_decay=weight_decay,
                  device="cpu", seed=seed, progress=progress, desc=desc)
    return model.eval(), history


def clip_more(clip, steps: int, seed: int, world_seed: int, noise: float, batch_size: int, lr: float, warmup: int,
              weight_decay: float, progress: bool = False, desc: str | None = None):
    """The control of "align before fuse": the zoo CLIP trained `steps` further steps on the very
    batches an ALBEF arm of this seed sees, with the same ITC targets (every true caption in the
    batch a positive; `clip_step` with "positives"). Returns (model, history)."""

    seed_everything(seed)
    batches = pretrain_batches(batch_size, seed=world_seed + 1000 * seed, image_size=clip.config.image_size,
                               noise=noise, max_text_len=clip.config.context_length)
    history = fit(clip, clip_step, batches, steps, lr=lr, warmup=warmup, weight_decay=weight_decay, device="cpu",
                  seed=seed, progress=progress, desc=desc)
    return clip.eval(), history


def _run_arm(job: dict) -> dict:
    """One arm, start to figures; a top-level function so that worker processes can run it.
    On one thread, as every zoo build, so the result does not depend on which process ran it."""

    torch.set_num_threads(1)
    clip = store.load("clip", job["weights_dir"]) if job["vision_init"] == "clip" or job["kind"] == "clip" else None
    start = time.perf_counter()
    desc = f"zoo: albef {job['arm']} seed {job['seed']}"
    args = (job["steps"], job["seed"], job["world_seed"], job["noise"], job["batch_size"], job["lr"], job["warmup"],
            job["weight_decay"])
    if job["kind"] == "clip":
        model, history = clip_more(clip, *args, progress=job["progress"], desc=desc)
    else:
        model, history = pretrain(job["config"], *args, clip, job["progress"], desc=desc)
    train_seconds = time.perf_counter() - start
    fused = job["kind"] == "albef" and not model.config.itc_only
    metrics = itc_figures(model, job["bench_seed"])
    if fused:
        metrics = albef_metrics(model, job["bench_seed"], rerank_k=job["rerank_k"]) | metrics
    out = {"arm": job["arm"], "seed": job["seed"], "metrics": metrics,
           "final": {k: round(history.last(k), 4) for k in ("loss", "itc", "itm", "mlm") if k in history.losses},
           "parameters": count_parameters(model), "train_seconds": round(train_seconds, 1),
           "seconds": round(time.perf_counter() - start, 1)}
    if job["ship"]:
        out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out["temperature"] = round(float(1.0 / model.scale().detach()), 4)
    return out


def albef_metrics(model, bench_seed: int = 1234, retrieval_n: int = 256, itm_n: int = 1000, hard_n: int = 1000,
                  rerank_k: int = 16) -> dict:
    """The chapter's ShapesBench figures of an ALBEF, each with its 95 % interval."""

    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    ret = evaluate_retrieval(model, bench.retrieval(retrieval_n), rerank_k=rerank_k)
    out = {"i2t_r1_itc": to_record(ret["itc_r1"]), f"i2t_r1_rerank{rerank_k}": to_record(ret["r1"])}
    return out | itm_figures(model, bench, itm_n, hard_n)


@torch.no_grad()
def itc_figures(model, bench_seed: int = 1234, retrieval_n: int = 256, hard_n: int = 1000) -> dict:
    """The figures any dual encoder has (ALBEF's ITC, a CLIP): image→text R@1 among `retrieval_n`
    by cosine, and the hard pairs (true caption above the one-fact negative) by cosine, overall and
    per kind, on the same ShapesBench sets as `albef_metrics`."""

    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    ret = bench.retrieval(retrieval_n)
    hits = (itc_similarity(model, ret["images"], ret["captions"]).argmax(1) == torch.arange(retrieval_n)).tolist()
    hard = bench.hard_itm(hard_n)
    true = itc_similarity(model, hard["images"], [c[0] for c in hard["captions"]]).diagonal()
    negative = itc_similarity(model, hard["images"], [c[1] for c in hard["captions"]]).diagonal()
    pairs = (true > negative).tolist()
    out = {"i2t_r1_itc": to_record(interval(hits)), "hard_pairs_itc": to_record(interval(pairs))}
    for kind in dict.fromkeys(hard["kinds"]):
        out[f"hard_pairs_itc_{kind}"] = to_record(interval([p for p, k in zip(pairs, hard["kinds"]) if k == kind]))
    return out


@dataclass
class AlbefRecipe:
    """ALBEF pretrained on ShapesWorld captions, seeded, on the CPU, its image encoder started
    from the zoo CLIP's; plus the MoD and hard-negative arms over `seeds` seeds (figures in the
    manifest). `workers` > 1 trains that many arms at once in separate processes (each on one
    thread, so the figures are the same as with workers=1)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seeds: int = 3
    noises: tuple = (0.0, 0.4)
    world_seed: int = 4
    bench_seed: int = 1234
    rerank_k: int = 16
    vision_init: str | None = "clip"  # the zoo entry whose image tower starts ours (None: from scratch)
    only: tuple = ()  # train only these arms (empty: every arm); the shipped first arm always trains
    workers: int = 1
    config: dict = field(default_factory=lambda: dict(ALBEF_CONFIG))

    name = "albef"
    model = staticmethod(_model)

    def arms(self) -> list[tuple[str, str, float, dict]]:
        """(name, "albef" or "clip", noise, ALBEF config changes) of every arm, the shipped one first."""
        clean, noisy = (f"noise{int(round(n * 100))}" for n in (self.noises[0], self.noises[-1]))
        out = [(f"noise{int(round(noise * 100))}_{'mod' if mod else 'nomod'}", "albef", noise, {"distill": mod})
               for noise in self.noises for mod in (True, False)]
        return out + [(f"{clean}_mod_random_neg", "albef", self.noises[0], {"hard_negatives": False}),
                      (f"{noisy}_mod_onehot", "albef", self.noises[-1], {"itc_targets": "one_hot"}),
                      (f"{noisy}_nomod_onehot", "albef", self.noises[-1], {"distill": False, "itc_targets": "one_hot"}),
                      (f"{clean}_itc_only", "albef", self.noises[0], {"itc_only": True}),
                      (f"{clean}_clip_more", "clip", self.noises[0], {})]

    def train(self, weights_dir, progress: bool):
        if self.vision_init not in (None, "clip"):
            raise ValueError(f"vision_init must be None or 'clip', got {self.vision_init!r}")
        names = [arm[0] for arm in self.arms()]
        unknown = sorted(set(self.only) - set(names))
        if unknown:
            raise ValueError(f"only must name arms of {names}, got {unknown}")
        jobs = []
        for seed in range(self.seeds):
            for k, (arm, kind, noise, changes) in enumerate(self.arms()):
                if self.only and k and arm not in self.only:
                    continue
                jobs.append(dict(arm=arm, kind=kind, seed=seed, noise=noise,
                                 config={**self.config, "distill": True, "hard_negatives": True, **changes},
                                 steps=self.steps, world_seed=self.world_seed, batch_size=self.batch_size, lr=self.lr,
                                 warmup=self.warmup, weight_decay=self.weight_decay, bench_seed=self.bench_seed,
                                 rerank_k=self.rerank_k, vision_init=self.vision_init, weights_dir=str(weights_dir),
                                 ship=seed == 0 and k == 0, progress=progress and self.workers == 1))
        results = run_jobs(_run_arm, jobs, self.workers, progress, "albef")
        arms = arm_table(results, ("parameters",))
        model, shipped = shipped_model(_model, {**self.config, "distill": True, "hard_negatives": True}, results)
        return model.eval(), {
            "config": config_dict(model),
            "tokenizer_vocab_size": model.config.vocab_size,
            "metrics": shipped["metrics"],
            "arms": arms,
            "final_loss": shipped["final"]["loss"],
            "final_itc": shipped["final"]["itc"],
            "final_itm": shipped["final"]["itm"],
            "final_mlm": shipped["final"]["mlm"],
            "final_temperature": shipped["temperature"],
            "steps": self.steps,
            "train_seconds": shipped["train_seconds"],
        }
