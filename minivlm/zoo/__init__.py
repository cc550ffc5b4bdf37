"""The model zoo: pretrained components that later chapters start from (chapter 02 builds "clip").

Nothing is downloaded: the weights ship inside the package (`minivlm/zoo/weights/`, safetensors)
next to a JSON manifest with their sha256, the config, the recipe and the metrics they reached on
ShapesBench. `build(name)` (the command `minivlm zoo build clip`) retrains them with a seeded
recipe on the CPU, so anyone can check that the shipped file is what the recipe makes.

    from minivlm import zoo
    clip = zoo.load("clip")           # the trained chapter-02 CLIP, in eval mode
    vision_tower = clip.visual        # the frozen image encoder of BLIP-2, LLaVA ... (chapters 12+)
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CLIP_TEMPLATES", "ClipRecipe", "class_prompts", "evaluate_clip", "WEIGHTS_DIR", "available", "build", "load", "manifest", "sha256"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Prompt templates for zero-shot classification with the course's CLIP (prompt ensembling,
# CLIP paper §3.1.4). They follow the caption styles the model was trained on; the class name
# brings its own article ("an orange star"), see `class_prompts`.
CLIP_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "there is {}.",
    "a picture of {}.",
    "one shape: {}.",
    "an image with {}.",
)


def class_prompts(class_names) -> list[str]:
    """"orange star" -> "an orange star": the class names as a caption would write them."""
    from minivlm.data.shapesworld import with_article

    return [with_article(name) for name in class_names]


@dataclass
class ClipRecipe:
    """How the zoo CLIP is trained: seeded, on the CPU, a few minutes on 2 cores.

    Each batch holds one single-object scene of every seen colour-shape composition (43), so no
    two of those captions name the same object: the in-batch negatives are true negatives,
    which is what makes zero-shot classification learn fast. `pairs` two-object scenes are
    added for retrieval and word order; a share of them is captioned by a spatial relation.
    """

    steps: int = 2000
    pairs: int = 21  # two-object scenes per batch, on top of the 43 single-object ones
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    world_seed: int = 1
    relational_fraction: float = 0.3  # of two-object scenes, captioned by a relation ("x left of y")
    bench_seed: int = 1234  # the ShapesBench sets the manifest's metrics are measured on
    config: dict = field(default_factory=lambda: dict(
        image_size=32, patch_size=4, vision_dim=64, vision_depth=3, vision_heads=4,
        text_dim=64, text_depth=2, text_heads=4, embed_dim=64, context_length=32,
    ))

    @property
    def batch_size(self) -> int:
        from minivlm.data.shapesworld import SEEN_COMPOSITIONS

        return len(SEEN_COMPOSITIONS) + self.pairs


RECIPES = {"clip": ClipRecipe}


def available() -> list[str]:
    """The names `load` and `build` accept."""
    return sorted(RECIPES)


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
    digest = sha256(weights)
    if digest != info["sha256"]:
        raise ValueError(f"{weights} is corrupt or stale: its sha256 is {digest}, the manifest says {info['sha256']}; "
                         f"run `minivlm zoo build {name}`")
    from minivlm.models.clip import CLIP, CLIPConfig

    model = CLIP(CLIPConfig(**info["config"]))
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()


# ----------------------------------------------------------------------------- building


def clip_batches(recipe: ClipRecipe, tokenizer, context_length: int = 32):
    """A function step -> training batch (images, ids, attention_mask) for CLIP, deterministic
    given the recipe: one single-object scene per seen composition, then `recipe.pairs`
    two-object scenes, each with a random caption paraphrase or, for a share of the two-object
    scenes, one of its spatial relations. Scenes come from the train split, so the held-out
    compositions never appear."""
    from minivlm.data import ShapesWorld
    from minivlm.data.shapesworld import SEEN_COMPOSITIONS

    world = ShapesWorld(seed=recipe.world_seed, image_size=recipe.config.get("image_size", 32), split="train")

    def batch(step: int) -> dict:
        scenes = [world.sample(1, n_objects=1, compositions=[pair])[0] for pair in SEEN_COMPOSITIONS]
        if recipe.pairs:
            scenes += world.sample(recipe.pairs, n_objects=2)
        captions = []
        for scene in scenes:
            relational = len(scene) > 1 and world.text_rng.uniform() < recipe.relational_fraction
            caption = world.relational_caption(scene) if relational else None
            captions.append(caption or world.caption(scene))
        ids, mask = tokenizer(captions, max_len=context_length)
        return {"images": world.render(scenes), "ids": ids, "attention_mask": mask}

    return batch


@torch.no_grad()
def evaluate_clip(model, bench_seed: int = 1234, templates=CLIP_TEMPLATES) -> dict:
    """ShapesBench metrics of a CLIP: zero-shot accuracy (seen / held-out compositions, with the
    template ensemble), image->text and text->image R@1 and R@5, and the relation-swap scores."""
    from minivlm.data import ShapesBench
    from minivlm.eval import retrieval_metrics, swap_scores, zero_shot_accuracy
    from minivlm.models.clip import similarity, swap_similarity, zero_shot_classifier, zero_shot_logits

    bench = ShapesBench(image_size=model.config.image_size, seed=bench_seed)
    out = {}
    for split in ("seen", "heldout"):
        data = bench.classification(split)
        classifier = zero_shot_classifier(model, class_prompts(data["class_names"]), list(templates))
        out[f"zero_shot_{split}"] = zero_shot_accuracy(zero_shot_logits(model, data["images"], classifier),
                                                       data["labels"])
    ret = bench.retrieval(256)
    out.update(retrieval_metrics(similarity(model, ret["images"], ret["captions"])))
    sw = bench.swap(128)
    out.update({f"swap_{k}": v for k, v in swap_scores(swap_similarity(model, sw["images"], sw["captions"])).items()})
    return {k: round(float(v), 4) for k, v in out.items()}


def _build_clip(recipe: ClipRecipe, weights: Path, progress: bool) -> dict:
    from minivlm.data import Tokenizer
    from minivlm.models.clip import CLIP, CLIPConfig, clip_step
    from minivlm.train import fit
    from minivlm.utils import count_parameters, seed_everything

    seed_everything(recipe.seed)
    tok = Tokenizer.from_world()
    config = CLIPConfig(**recipe.config)
    model = CLIP(config)
    start = time.perf_counter()
    history = fit(model, clip_step, clip_batches(recipe, tok, config.context_length), recipe.steps, lr=recipe.lr,
                  weight_decay=recipe.weight_decay, warmup=recipe.warmup, device="cpu", seed=recipe.seed,
                  progress=progress, desc="zoo: clip")
    seconds = time.perf_counter() - start
    model.eval()
    # contiguous copies: safetensors refuses views that share memory
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(weights))
    cfg = asdict(config)
    return {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "tokenizer_vocab_size": len(tok),
        "metrics": evaluate_clip(model, recipe.bench_seed),
        "final_loss": round(history.last("loss"), 4),
        "final_logit_scale": round(float(model.scale().detach()), 3),
        "parameters": count_parameters(model),
        "steps": recipe.steps,
        "train_seconds": round(seconds, 1),
    }


def build(name: str, out_dir: str | Path | None = None, progress: bool = True, **recipe_overrides) -> dict:
    """Retrain zoo model `name` with its seeded CPU recipe; write `<name>.safetensors` and
    `<name>.json` to `out_dir` (default: the package's weights folder); return the manifest.

    recipe_overrides change fields of the recipe (e.g. steps=50 for a quick test build); the
    manifest records the recipe actually used.
    """
    name = _check_name(name)
    recipe = RECIPES[name](**recipe_overrides)
    weights, manifest_path = _paths(name, out_dir)
    weights.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One thread: float sums then run in one fixed order, so a rebuild gives the same bits on any
    # machine; on a busy 2-core machine it is also faster than two threads waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        info = _build_clip(recipe, weights, progress)
    finally:
        torch.set_num_threads(threads)
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
