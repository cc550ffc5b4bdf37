"""The model zoo: pretrained components that later chapters start from (chapter 02 builds "clip",
chapter 03 "vilt_pretrained" and "vilt", chapter 04 "albef").

Nothing is downloaded: the weights ship inside the package (`minivlm/zoo/weights/`, safetensors)
next to a JSON manifest with their sha256, the config, the recipe and the metrics they reached on
ShapesBench. `build(name)` (the command `minivlm zoo build clip`) retrains them with a seeded
recipe on the CPU, so anyone can check that the shipped file is what the recipe makes.

    from minivlm import zoo
    clip = zoo.load("clip")           # the trained chapter-02 CLIP, in eval mode
    vision_tower = clip.visual        # the frozen image encoder of BLIP-2, LLaVA ... (chapters 12+)
    vilt = zoo.load("vilt")           # chapter 03's ViLT, MLM + ITM pretrained, then VQA fine-tuned

Each entry's recipe (how it is trained and evaluated) lives in `minivlm/zoo/recipes/`; this
module is only the registry: load, build, manifest.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minivlm.utils import count_parameters

__all__ = ["CLIP_TEMPLATES", "ClipRecipe", "class_prompts", "evaluate_clip", "WEIGHTS_DIR", "available", "build", "load",
           "manifest", "sha256"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

from minivlm.zoo.recipes.clip import CLIP_TEMPLATES, ClipRecipe, class_prompts, evaluate_clip  # noqa: E402
from minivlm.zoo.recipes.vilt import ViltPretrainedRecipe, ViltRecipe  # noqa: E402
from minivlm.zoo.recipes.albef import AlbefRecipe  # noqa: E402

# The registry, in build order: an entry may load an earlier one ("vilt" fine-tunes "vilt_pretrained").
RECIPES = {recipe.name: recipe for recipe in (ClipRecipe, ViltPretrainedRecipe, ViltRecipe, AlbefRecipe)}


def available() -> list[str]:
    """The names `load` and `build` accept, in build order."""
    return list(RECIPES)


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(available())}")
    return name


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _paths(name: str, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    d = Path(out_dir) if out_dir is not None else WEIGHTS_DIR
    return d / f"{name}.safetensors", d / f"{name}.json"


def manifest(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON manifest of a zoo model: sha256, config, recipe, metrics, torch version, seconds."""
    name = _check_name(name)
    path = _paths(name, weights_dir)[1]
    if not path.is_file():
        raise FileNotFoundError(f"no manifest for {name!r} at {path}: run `minivlm zoo build {name}`")
    return json.loads(path.read_text())


def load(name: str, weights_dir: str | Path | None = None, device: str | torch.device | None = "cpu") -> nn.Module:
    """The pretrained model `name`, in eval mode, after checking its file against the manifest's sha256."""
    name = _check_name(name)
    weights, _ = _paths(name, weights_dir)
    info = manifest(name, weights_dir)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights for {name!r} at {weights}: run `minivlm zoo build {name}`")
    manifest_path = _paths(name, weights_dir)[1]
    if not isinstance(info, dict):
        raise ValueError(f"manifest {manifest_path} must hold a JSON object, got {type(info).__name__}; "
                         f"run `minivlm zoo build {name}`")
    for key in ("sha256", "config"):
        if key not in info:
            raise ValueError(f"manifest {manifest_path} has no {key!r} key (expected keys include 'sha256' and "
                             f"'config', got {sorted(info)}); run `minivlm zoo build {name}`")
    digest = sha256(weights)
    if digest != info["sha256"]:
        raise ValueError(f"{weights} is corrupt or stale: its sha256 is {digest}, the manifest says {info['sha256']}; "
                         f"run `minivlm zoo build {name}`")
    model = RECIPES[name].model(info["config"])
    state = load_file(str(weights))
    want = model.state_dict()
    problems = [f"missing key {k!r}" for k in want if k not in state]
    problems += [f"unexpected key {k!r}" for k in state if k not in want]
    problems += [f"key {k!r} has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}"
                 for k, v in want.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise ValueError(f"{weights} does not fit the {name!r} model built from its manifest's config "
                         f"({len(problems)} mismatch(es), first: {problems[0]}); run `minivlm zoo build {name}`")
    model.load_state_dict(state)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- building


def build(name: str, out_dir: str | Path | None = None, progress: bool = True, **recipe_overrides) -> dict:
    """Retrain zoo model `name` with its seeded CPU recipe; write `<name>.safetensors` and
    `<name>.json` to `out_dir` (default: the package's weights folder); return the manifest.

    recipe_overrides change fields of the recipe (e.g. steps=50 for a quick test build); the
    manifest records the recipe actually used.
    """
    name = _check_name(name)
    recipe = RECIPES[name](**recipe_overrides)
    weights, manifest_path = _paths(name, out_dir)
    out_dir = weights.parent
    weights.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One thread: float sums then run in one fixed order, so a rebuild gives the same bits on any
    # machine; on a busy 2-core machine it is also faster than two threads waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, info = recipe.train(out_dir, progress)
    finally:
        torch.set_num_threads(threads)
    # contiguous copies: safetensors refuses views that share memory (tied weights)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(weights))
    info["parameters"] = count_parameters(model)
    info = {
        "name": name,
        "file": weights.name,
        "sha256": sha256(weights),
        "bytes": weights.stat().st_size,
        **info,
        "recipe": asdict(recipe),
        "torch_version": torch.__version__,
        "device": "cpu",
        "threads": 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    manifest_path.write_text(json.dumps(info, indent=2) + "\n")
    return info
