"""Training drivers of the papers whose recipe is more than one call of `minivlm.train.fit`: each
runs `fit` over a model's own step functions and data (which stay beside the model), so that the
model files never import the training loop.

    staged_pretrain   VLMo's stage-wise pretraining: images, then text with the attention frozen,
                      then pairs (chapter 05); `stage_seed` and `stage_of` name a stage's data
                      stream and read its label
    train_tokenizer   BEiT-2's VQ-KD visual tokenizer, with dead codes restarted (chapter 08)
    train_question_only  the question-only VQA baseline on the VQA training stream (chapter 03)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from minivlm.data.pairs import vqa_batches
from minivlm.models.beit3 import VisualTokenizer, tokenizer_batches, vqkd_step
from minivlm.models.question_only import QuestionOnly, QuestionOnlyConfig, question_only_step
from minivlm.models.vlmo import STEP_FUNCTIONS, VLMo, set_stage, stage_batches, stage_parameters
from minivlm.train import History, fit
from minivlm.utils import check_int, eval_mode, seed_everything, unwrap


def staged_pretrain(model: VLMo, schedule: Sequence[tuple[str, int, bool]], batch_size: int = 64, seed: int = 0,
             lr: float = 2e-3, warmup: int = 50, weight_decay: float = 0.01, noise: float = 0.0,
             device=None, progress: bool = True, on_stage_end=None) -> dict:
    """Train `model` through `schedule`: (stage, steps, shared) triples in order, e.g. VLMo's
    [("image", 300, True), ("text", 300, False), ("pairs", 600, True)]. Each stage gets its own
    cosine schedule and its own data stream (seeded by `seed` and the stage's place).
    on_stage_end(label, model), if given, is called after each stage (to inspect the weights).
    Returns {stage label: History}; the model ends with every parameter trainable, in eval mode."""
    unwrap(model, VLMo)
    if isinstance(schedule, (str, bytes)) or not schedule:
        raise ValueError("schedule must be a non-empty list of (stage, steps, shared)")
    for item in schedule:
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise ValueError(f"each schedule entry is (stage, steps, shared), got {item!r}")
        stage, steps, shared = item
        stage_parameters(model, stage, shared)  # checks stage and shared
        check_int("steps", steps)
    c = model.config
    histories = {}
    for k, (stage, steps, shared) in enumerate(schedule):
        set_stage(model, stage, shared)
        batches = stage_batches(stage, batch_size, seed=stage_seed(seed, k), image_size=c.image_size,
                                patch_size=c.patch_size, mim_ratio=c.mim_ratio, noise=noise,
                                max_text_len=c.max_text_len, mim_mask=c.mim_mask)
        label = f"{k + 1}: {stage}" + ("" if shared or stage == "pairs" else " (attention frozen)")
        histories[label] = fit(model, STEP_FUNCTIONS[stage], batches, steps, lr=lr, warmup=min(warmup, steps // 2),
                               weight_decay=weight_decay, device=device, seed=seed + k, progress=progress,
                               desc=f"stage {label}")
        if on_stage_end is not None:
            on_stage_end(label, model)
    set_stage(model, "pairs")
    return histories


def stage_seed(seed: int, k: int) -> int:
    """The data seed of stage k (0-based) of a `staged_pretrain` run with `seed`: its batches are
    `stage_batches(stage, ..., seed=stage_seed(seed, k))` (to score a stage on its own data)."""
    return seed * 100 + k


def stage_of(label: str) -> tuple[int, str]:
    """A `staged_pretrain` label ("2: text (attention frozen)") → (0-based index, stage name)."""
    number, rest = label.split(": ", 1)
    return int(number) - 1, rest.split(" ")[0]


def train_tokenizer(model: VisualTokenizer, teacher, steps: int, batch_size: int = 64, seed: int = 0,
                    lr: float = 2e-3, warmup: int = 20, weight_decay: float = 0.05, restart_every: int = 50,
                    progress: bool = True, desc: str | None = None):
    """VQ-KD training with `minivlm.train.fit`, plus two remedies for dead codes:
      - the codes start on encoder outputs of a batch (BEiT-2 runs k-means on its first batch);
      - every `restart_every` steps in the first 80 % of training, a code that no patch of a
        fresh batch chose restarts on one of that batch's encoder outputs (0: never).
    Returns (History, restarts: how many codes each restart moved)."""
    if not isinstance(model, VisualTokenizer):
        raise TypeError(f"train_tokenizer trains a VisualTokenizer, got {type(model).__name__}")
    check_int("restart_every", restart_every, lo=0)
    c = model.config
    batches = tokenizer_batches(teacher, batch_size, seed=seed, image_size=c.image_size, grid=c.grid)
    probe = tokenizer_batches(teacher, batch_size, seed=seed + 1_000, image_size=c.image_size, grid=c.grid)
    vq = model.quantizer
    with torch.no_grad():  # on the unit sphere, where the search and the EMA updates put the codes
        z = F.normalize(model.encode(probe(0)["images"]).reshape(-1, c.code_dim), dim=-1)
        vq.restart_dead(z, torch.zeros(c.codebook_size), torch.Generator().manual_seed(seed))
    restarts: list[int] = []

    def restart(i: int, logs: dict) -> None:
        if restart_every and (i + 1) % restart_every == 0 and i + 1 < 0.8 * steps:
            images = probe(i + 1)["images"]
            with torch.no_grad(), eval_mode(model):  # eval: looking must not move the EMA codes
                z = F.normalize(model.encode(images).reshape(-1, c.code_dim), dim=-1)
                counts = torch.bincount(vq(z).indices, minlength=c.codebook_size)
            restarts.append(vq.restart_dead(z, counts, torch.Generator().manual_seed(seed + i)))

    history = fit(model, vqkd_step, batches, steps, lr=lr, warmup=warmup, weight_decay=weight_decay, seed=seed,
                  progress=progress, desc=desc or "VQ-KD tokenizer", callback=restart)
    return history, restarts


def train_question_only(steps: int = 300, batch_size: int = 64, seed: int = 0, lr: float = 1e-2,
                        config: QuestionOnlyConfig | None = None, device=None,
                        progress: bool = False) -> tuple[QuestionOnly, History]:
    """A QuestionOnly (weights seeded by `seed`) trained with `fit` on `vqa_batches(batch_size,
    seed=seed)`, the stream a ViLT VQA fine-tune with that seed reads. Returns (model, History)."""
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    config = config or QuestionOnlyConfig()
    seed_everything(seed)
    model = QuestionOnly(config)
    batches = vqa_batches(batch_size, seed=seed, max_text_len=config.max_text_len, answers=config.answers)
    history = fit(model, question_only_step, batches, steps, lr=lr, warmup=min(20, steps // 10), seed=seed,
                  device=device, progress=progress, desc="question-only VQA")
    return model, history
