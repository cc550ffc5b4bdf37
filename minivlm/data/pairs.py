"""Image–text pair sets and the batches every chapter trains on (chapters 03–10).

    image_text_pairs   a fixed set of ShapesWorld images with one caption each, some made noisy
                       (chapter 06's web set); check_pair_set, merge_pair_sets
    pair_batches       step -> batch drawn from a pair set, with the positives matrix
    pretrain_batches   step -> fresh image–caption pairs with masked copies for MLM and the
                       positives matrix (ALBEF, chapter 04; BLIP, VLMo, CoCa, BEiT-3 reuse it)
    caption_batches    step -> clean image–caption pairs (CoCa and PrefixLM, chapter 07)
    vqa_batches        step -> VQA questions with answer indices (ViLT, chapter 03; BEiT-3)
    oracle_regions     ShapesWorld's exact boxes, the "detector" of a regions pipeline (chapter 03)
    check_batch        the checks every pretraining step runs on such a batch

Every batch function is deterministic given (seed, step): batch i depends on them alone, so a
resumed run (`fit(..., resume=True)`) sees exactly the batches the interrupted one would have.
"""
from __future__ import annotations

from typing import Sequence

import torch

from minivlm.data.masking import mlm_mask
from minivlm.data.shapesworld import VQA_ANSWER_VOCAB, ShapesWorld
from minivlm.data.tokenizer import Tokenizer
from minivlm.utils import check_int, check_keys, check_number, check_tensor


def step_world(seed: int, step: int, image_size: int, noise: float = 0.0) -> ShapesWorld:
    """The train-split world of one step of a batch function."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return ShapesWorld(seed=seed * 1_000_003 + step, image_size=image_size, split="train", noise=noise)


def image_text_pairs(n: int, noise: float, seed: int, image_size: int = 32, split: str = "train") -> dict:
    """A fixed set of n ShapesWorld images with one caption each, a share `noise` of them replaced
    by another scene's caption (web-like noise; `clean` says which are real).
    Returns dict(images (n, 3, H, W), scenes, captions (n,), image_ids (n,) long: caption j
    describes images[image_ids[j]], clean (n,) bool)."""
    check_int("n", n)
    check_number("noise", noise, 0.0, 1.0)
    world = ShapesWorld(seed=seed, image_size=image_size, split=split, noise=noise)
    scenes = world.sample(n)
    captions, clean = world.noisy_captions(scenes, noise)
    return {"images": world.render(scenes), "scenes": scenes, "captions": captions,
            "image_ids": torch.arange(n), "clean": clean}


def check_pair_set(data, allow_empty: bool = False) -> None:
    """A pair set: images (N, 3, H, W), scenes (N), captions (M) and image_ids (M) into images;
    M >= 1 unless allow_empty (a filter may keep nothing of a set that is then merged)."""
    if not isinstance(data, dict) or any(k not in data for k in ("images", "scenes", "captions", "image_ids")):
        raise ValueError("a pair set is a dict with images, scenes, captions and image_ids "
                         "(see image_text_pairs)")
    n, m = len(data["images"]), len(data["captions"])
    if len(data["scenes"]) != n or len(data["image_ids"]) != m or (m == 0 and not allow_empty):
        raise ValueError(f"a pair set needs one scene per image and one image id per caption (and a caption), got "
                         f"{n} images, {len(data['scenes'])} scenes, {m} captions, {len(data['image_ids'])} image ids")
    ids = torch.as_tensor(data["image_ids"])
    if m and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(f"image_ids must lie in [0, {n - 1}], got values in [{int(ids.min())}, {int(ids.max())}]")


def pair_batches(data: dict, batch_size: int = 64, seed: int = 0, tokenizer=None, max_text_len: int = 32):
    """A function step -> batch of `batch_size` pairs drawn at random (deterministic given seed
    and step) from a pair set: images, ids / attention_mask ("<bos> ... <eos>"), positives (B, B):
    caption j is true of image i (its own pair always counts, noisy or not)."""
    check_pair_set(data)
    check_int("batch_size", batch_size, lo=2)
    tok = tokenizer or Tokenizer.from_world()
    image_ids = torch.as_tensor(data["image_ids"])
    truths = {}

    def batch(step: int) -> dict:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        pick = torch.randint(len(image_ids), (batch_size,), generator=g)
        rows = image_ids[pick]
        captions = [data["captions"][j] for j in pick.tolist()]
        for i in rows.tolist():
            if i not in truths:
                truths[i] = ShapesWorld.true_captions(data["scenes"][i])
        ids, mask = tok(captions, max_text_len, add_bos=True, add_eos=True)
        positives = torch.tensor([[captions[j] in truths[i] for j in range(batch_size)] for i in rows.tolist()])
        positives |= torch.eye(batch_size, dtype=torch.bool) | (rows[:, None] == rows[None, :])
        return {"images": data["images"][rows], "ids": ids, "attention_mask": mask, "positives": positives}

    return batch


def merge_pair_sets(*sets: dict) -> dict:
    """One pair set holding the images and pairs of several (image ids shifted)."""
    for s in sets:
        check_pair_set(s, allow_empty=True)
    images, scenes, captions, image_ids, offset = [], [], [], [], 0
    for s in sets:
        images.append(s["images"])
        scenes += list(s["scenes"])
        captions += list(s["captions"])
        image_ids.append(torch.as_tensor(s["image_ids"]) + offset)
        offset += len(s["images"])
    out = {"images": torch.cat(images), "scenes": scenes, "captions": captions,
           "image_ids": torch.cat(image_ids).long()}
    check_pair_set(out)
    return out


def pretrain_batches(batch_size: int = 64, seed: int = 0, image_size: int = 32, noise: float = 0.0,
                     tokenizer=None, max_text_len: int = 32, relational_fraction: float = 0.3,
                     mask_prob: float = 0.15):
    """A function step -> batch of image-caption pairs on the train split, deterministic given `seed`.

    noise: ShapesWorld's knob, the share of pairs whose caption describes another scene (web
    noise). Clean captions are a paraphrase or, for 30 % of multi-object scenes, a true relation.
    The batch: images, ids / attention_mask ("<bos> ... <eos>"), mlm_ids / mlm_labels (15 % of
    words masked, 80/10/10), positives (B, B) bool: caption j is true of image i (always on the
    diagonal: the data's own pairing, noisy or not), and clean (B,) bool: which captions are real.
    """
    check_int("batch_size", batch_size, lo=2)
    check_number("noise", noise, 0.0, 1.0)
    tok = tokenizer or Tokenizer.from_world()

    def batch(step: int) -> dict:
        world = step_world(seed, step, image_size, noise)
        g = torch.Generator().manual_seed(world.seed)
        scenes = world.sample(batch_size)
        noisy, clean = world.noisy_captions(scenes, noise)
        captions = [world.mixed_caption(s, relational_fraction) if ok else cap
                    for s, cap, ok in zip(scenes, noisy, clean.tolist())]
        ids, mask = tok(captions, max_text_len, add_bos=True, add_eos=True)
        mlm_ids, mlm_labels = mlm_mask(ids, tok, prob=mask_prob, generator=g)
        truths = [ShapesWorld.true_captions(s) for s in scenes]
        positives = torch.tensor([[captions[j] in truths[i] for j in range(batch_size)] for i in range(batch_size)])
        positives |= torch.eye(batch_size, dtype=torch.bool)
        return {"images": world.render(scenes), "ids": ids, "attention_mask": mask, "mlm_ids": mlm_ids,
                "mlm_labels": mlm_labels, "positives": positives, "clean": clean}

    return batch


def check_batch(batch: dict, b: int,
                 keys: tuple[str, ...] = ("images", "ids", "attention_mask", "mlm_ids", "mlm_labels")) -> torch.Tensor:
    """Every entry agrees on B (checked before any state changes); returns `positives` (B, B)."""
    check_keys("batch", batch, keys, "pretrain_batches(...)(step)")
    for key in keys[1:]:
        x = batch[key]
        check_tensor(f"batch['{key}']", x, ndim=2)
        if x.shape != batch["ids"].shape or x.shape[0] != b:
            raise ValueError(f"batch['{key}'] has shape {tuple(x.shape)}, but images has {b} rows and ids shape "
                             f"{tuple(batch['ids'].shape)}: every entry of a batch must have the same batch size")
    positives = batch.get("positives")
    if positives is None:
        return torch.eye(b, dtype=torch.bool, device=batch["images"].device)
    check_tensor("batch['positives']", positives, ndim=2, dtype="bool")
    if positives.shape != (b, b) or not bool(positives.diagonal().all()):
        raise ValueError(f"batch['positives'] must be (B, B) = ({b}, {b}) bool with a true diagonal (a caption is "
                         f"a positive of its own image), got shape {tuple(positives.shape)}")
    return positives


def caption_batches(batch_size: int = 64, seed: int = 0, image_size: int = 32, tokenizer=None,
                    max_text_len: int = 32, relational_fraction: float = 0.3):
    """step -> a batch of clean ShapesWorld pairs for coca_step (images, ids, attention_mask)."""
    inner = pretrain_batches(batch_size, seed=seed, image_size=image_size, tokenizer=tokenizer,
                             max_text_len=max_text_len, relational_fraction=relational_fraction)

    def batch(step: int) -> dict:
        b = inner(step)
        return {"images": b["images"], "ids": b["ids"], "attention_mask": b["attention_mask"]}

    return batch


def oracle_regions(scenes, max_regions: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The 'detector' of the regions pipeline: ShapesWorld's exact boxes, for free.

    Returns boxes (B, R, 4) as (x0, y0, x1, y1) fractions of the image and box_mask (B, R),
    True on real boxes (padding slots hold a dummy full-image box that attention ignores).
    """
    b = len(scenes)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(b, max_regions, 1)
    mask = torch.zeros(b, max_regions, dtype=torch.bool)
    for i, scene in enumerate(scenes):
        if len(scene) > max_regions:
            raise ValueError(f"scene {i} has {len(scene)} objects, more than max_regions={max_regions}")
        for k, obj in enumerate(scene.objects):
            boxes[i, k] = torch.tensor(obj.box)
            mask[i, k] = True
    return boxes, mask


def vqa_batches(batch_size: int = 64, seed: int = 0, image_size: int = 32, tokenizer=None, max_text_len: int = 32,
                answers: Sequence[str] = VQA_ANSWER_VOCAB, max_regions: int = 4):
    """A function step -> VQA batch on the train split: B questions, every kind in equal share.
    Returns dict(images, ids, attention_mask, labels (B,) indices into `answers`, boxes, box_mask)."""
    tok = tokenizer or Tokenizer.from_world()
    missing = [a for a in VQA_ANSWER_VOCAB if a not in answers]
    if missing:
        raise ValueError(f"answers must contain every answer ShapesWorld's VQA can give; missing {missing}")
    index = {a: i for i, a in enumerate(answers)}

    def batch(step: int) -> dict:
        world = step_world(seed, step, image_size)
        data = world.vqa_sample(batch_size)
        ids, mask = tok(data["questions"], max_text_len, add_bos=True, add_eos=True)
        boxes, box_mask = oracle_regions(data["scenes"], max_regions)
        return {"images": world.render(data["scenes"]), "ids": ids, "attention_mask": mask,
                "labels": torch.tensor([index[a] for a in data["answers"]]), "boxes": boxes, "box_mask": box_mask}

    return batch


def check_batch_keys(batch, keys: tuple[str, ...], maker: str) -> None:
    """TypeError unless batch is a dict, ValueError naming the missing keys and the function that
    makes a complete batch (`maker`)."""
    check_keys("batch", batch, keys, f"{maker}(...)(step)")
