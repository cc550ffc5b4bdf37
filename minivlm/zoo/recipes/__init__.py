"""One module per zoo entry: how it is trained (a seeded CPU recipe), evaluated and rebuilt
(chapter 02 introduces the zoo; each entry's chapter explains its recipe).

Each module defines a recipe dataclass with
    name, model(config: dict) -> nn.Module   the architecture the weights load into
    train(weights_dir, progress) -> (model, manifest fields)
and the registry in `minivlm.zoo` lists the recipes in build order (an entry may load an
earlier one: "vilt" fine-tunes "vilt_pretrained").
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict
from typing import Callable

from minivlm.eval import evaluate_hard_itm, evaluate_itm, to_record
from minivlm.zoo import store


def config_dict(model) -> dict:
    """A model's config dataclass as JSON-ready values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.config).items()}


def finish_job(out: dict, job: dict, start: float, state: dict | None = None) -> dict:
    """A job's result with the seconds it took since `start`, and the weights `state` (copied)
    when the job is the one its recipe ships."""
    if job["ship"] and state is not None:
        out["state"] = {k: v.detach().clone() for k, v in state.items()}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def run_jobs(fn: Callable[[dict], dict], jobs: list[dict], workers: int, progress: bool, label: str) -> list[dict]:
    """fn(job) for every job, in order; with workers > 1 in that many spawned processes (fn must be a
    top-level function, and should pin itself to one thread so that the figures do not depend on
    which process ran it). Each result must carry "arm", "seed" and "seconds"."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers == 1:
        return [fn(job) for job in jobs]

    results = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for r in pool.imap(fn, jobs):
            results.append(r)
            if progress:
                print(f"zoo: {label} {r['arm']} seed {r['seed']} done in {r['seconds']} s", flush=True)
    return results


def arm_table(results: list[dict], extra: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """The manifest's `arms`: for each arm, one row per seed with its metrics, final loss, training
    seconds and the `extra` fields a result has."""
    arms: dict[str, list[dict]] = {}
    for r in results:
        row = {"seed": r["seed"], **r["metrics"], "final_loss": r["final"]["loss"], "train_seconds": r["train_seconds"]}
        row.update({k: r[k] for k in extra if k in r})
        arms.setdefault(r["arm"], []).append(row)
    return arms


def frozen_parts_config(config: dict, parts: tuple[str, ...], what: str, rebuild: str) -> dict:
    """A model built on other zoo entries records the sha256 of each part it was trained on
    (`<part>_sha256` in its config). Returns the config without those keys; ValueError if one is
    missing or a part has been rebuilt since (its weights would then meet a part they never saw).
    what: the model, for the message ("this prefix"); rebuild: the command(s) that retrain it."""
    config = dict(config)
    for part in parts:
        key = f"{part}_sha256"
        if key not in config:
            raise ValueError(f"config has no {key!r}: the {part!r} weights {what} was trained on")
        trained_on, now = config.pop(key), store.manifest(part)["sha256"]
        if trained_on != now:
            raise ValueError(f"{what} was trained on a zoo {part!r} with sha256 {trained_on[:12]}…, the zoo's "
                             f"{part!r} is now {now[:12]}…: rebuild {rebuild}")
    return config


def shipped_model(make: Callable[[dict], object], config: dict, results: list[dict]):
    """(the model built by make(config) holding the weights of the one result that carries a
    "state", in eval mode; that result)."""
    shipped = next(r for r in results if "state" in r)
    model = make(config)
    # a model built on other zoo entries ships only its own part (`stored_state_dict`)
    model.load_state_dict(shipped["state"], strict=not hasattr(model, "stored_state_dict"))
    return model.eval(), shipped


def itm_figures(model, bench, itm_n: int, hard_n: int) -> dict:
    """ITM accuracy of a model with `match_probability` (ALBEF, VLMo) on a ShapesBench's standard
    set and its hard set (one fact changed): accuracy, pair accuracy, pair accuracy per kind."""

    itm = evaluate_itm(model, bench.itm(itm_n))
    hard = evaluate_hard_itm(model, bench.hard_itm(hard_n))
    out = {"itm": to_record(itm["accuracy"]), "hard_itm": to_record(hard["accuracy"]),
           "hard_pairs": to_record(hard["pair_accuracy"])}
    out.update({f"hard_pairs_{kind}": to_record(v) for kind, v in hard["per_kind"].items()})
    return out
