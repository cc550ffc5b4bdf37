"""The zoo CLIP (chapter 02): the dual encoder later chapters load as their vision tower."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from minivlm.data import ShapesBench, ShapesWorld, Tokenizer
from minivlm.data.shapesworld import SEEN_COMPOSITIONS
from minivlm.eval import (
    CLIP_TEMPLATES,
    class_prompts,
    retrieval_metrics,
    swap_scores,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_logits,
)
from minivlm.models.clip import CLIP, CLIPConfig, clip_step, similarity, swap_similarity
from minivlm.train import fit
from minivlm.utils import seed_everything

# Prompt templates for zero-shot classification with the course's CLIP (prompt ensembling,
# CLIP paper §3.1.4). They follow the caption styles the model was trained on; the class name
# brings its own article ("an orange star"), see `class_prompts`.


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

    name = "clip"

    @property
    def batch_size(self) -> int:

        return len(SEEN_COMPOSITIONS) + self.pairs

    @staticmethod
    def model(config: dict):

        return CLIP(CLIPConfig(**config))

    def train(self, weights_dir, progress: bool):

        seed_everything(self.seed)
        tok = Tokenizer.from_world()
        config = CLIPConfig(**self.config)
        model = CLIP(config)
        start = time.perf_counter()
        history = fit(model, clip_step, clip_batches(self, tok, config.context_length), self.steps, lr=self.lr,
                      weight_decay=self.weight_decay, warmup=self.warmup, device="cpu", seed=self.seed,
                      progress=progress, desc="zoo: clip")
        seconds = time.perf_counter() - start
        model.eval()
        cfg = asdict(config)
        return model, {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "tokenizer_vocab_size": len(tok),
            "metrics": evaluate_clip(model, self.bench_seed),
            "final_loss": round(history.last("loss"), 4),
            "final_logit_scale": round(float(model.scale().detach()), 3),
            "steps": self.steps,
            "train_seconds": round(seconds, 1),
        }


def clip_batches(recipe: ClipRecipe, tokenizer, context_length: int = 32):
    """A function step -> training batch (images, ids, attention_mask) for CLIP, deterministic
    given the recipe: one single-object scene per seen composition, then `recipe.pairs`
    two-object scenes, each with a random caption paraphrase or, for a share of the two-object
    scenes, one of its spatial relations. Scenes come from the train split, so the held-out
    compositions never appear."""

    world = ShapesWorld(seed=recipe.world_seed, image_size=recipe.config.get("image_size", 32), split="train")

    def batch(step: int) -> dict:
        scenes = [world.sample(1, n_objects=1, compositions=[pair])[0] for pair in SEEN_COMPOSITIONS]
        if recipe.pairs:
            scenes += world.sample(recipe.pairs, n_objects=2)
        captions = [world.mixed_caption(scene, recipe.relational_fraction) for scene in scenes]
        ids, mask = tokenizer(captions, max_len=context_length)
        return {"images": world.render(scenes), "ids": ids, "attention_mask": mask}

    return batch


@torch.no_grad()
def evaluate_clip(model, bench_seed: int = 1234, templates=CLIP_TEMPLATES) -> dict:
    """ShapesBench metrics of a CLIP: zero-shot accuracy (seen / held-out compositions, with the
    template ensemble), image->text and text->image R@1 and R@5, and the relation-swap scores."""

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
