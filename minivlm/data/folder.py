"""Real image-caption pairs from disk, for training the course's models on your own data
(chapter 02 trains CLIP on it; any chapter whose step takes images + captions can use it).

Two layouts:

    photos/                          pairs.jsonl
        cat.jpg   cat.txt              {"image": "img/cat.jpg", "caption": "a cat on a mat"}
        dog.png   dog.txt              {"image": "img/dog.png", "caption": "a brown dog"}

A folder holds image files, each with a same-named `.txt` caption; a `.jsonl` file has one JSON
object per line, its image path relative to the jsonl file's folder. Images are decoded with
Pillow, made RGB, resized so the short side is `image_size` and centre-cropped to a square,
the preprocessing CLIP uses.

    ds = ImageTextDataset("photos", image_size=32)
    loader = DataLoader(ds, batch_size=64, shuffle=True, drop_last=True,  # no last batch of 1 pair
                        collate_fn=functools.partial(collate, tokenizer=tok, max_len=32))
    fit(model, clip_step, loader, steps=500)
"""
from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """One image file → float (3, image_size, image_size) in [0, 1]: RGB, short side resized to
    image_size (bicubic, antialiased), centre crop. Transparent pixels are put on white; 16-bit
    grayscale is scaled to 8 bits (0..65535 → 0..255). Float ("F") images are a ValueError."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            img = im
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None
    if img.mode.startswith("I"):  # "I;16", "I;16B", ... and "I" (how Pillow reads 16-bit grayscale)
        # convert("RGB") would clip every value above 255 to white: scale the 16-bit range instead
        values = np.asarray(img).astype(np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"cannot decode image {path}: mode {img.mode!r} with values in "
                             f"[{values.min():g}, {values.max():g}], expected 16-bit values in [0, 65535]")
        img = Image.fromarray(np.round(values * (255.0 / 65535.0)).astype(np.uint8))  # mode "L"
    elif img.mode == "F":
        raise ValueError(f"cannot decode image {path}: mode 'F' (32-bit float pixels) has no standard range; "
                         "expected an 8- or 16-bit image (convert it to 8-bit first)")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    img = img.convert("RGB")
    w, h = img.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    return pixels.permute(2, 0, 1).float() / 255.0  # (3, H, W)


class ImageTextDataset(Dataset):
    """(image float (3, S, S) in [0, 1], caption str) pairs from a folder or a .jsonl file.

    A .jsonl image path must be relative and stay inside the jsonl file's folder (no absolute
    path, no '..'): a ValueError otherwise, unless `allow_outside=True`.

    Use `DataLoader(..., drop_last=True)` for training: otherwise the last batch of an epoch can
    hold a single pair, and a contrastive loss over one pair has no negative (`clip_loss` raises
    ValueError for it).
    """

    def __init__(self, source: str | Path, image_size: int = 32, *, allow_outside: bool = False):
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.source, self.image_size, self.allow_outside = Path(source), image_size, bool(allow_outside)
        if not self.source.exists():
            raise FileNotFoundError(f"no such folder or .jsonl file: {self.source}")
        if self.source.is_dir():
            self.items = self._scan_folder(self.source)
        elif self.source.suffix == ".jsonl":
            self.items = self._read_jsonl(self.source, self.allow_outside)
        else:
            raise ValueError(f"source must be a folder or a .jsonl file, got {self.source}")
        if not self.items:
            raise ValueError(f"no image-caption pairs found in {self.source}")

    @staticmethod
    def _scan_folder(folder: Path) -> list[tuple[Path, str]]:
        items = []
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            caption_file = image.with_suffix(".txt")
            if not caption_file.is_file():
                raise FileNotFoundError(f"image {image} has no caption file {caption_file}")
            caption = caption_file.read_text(encoding="utf-8").strip()
            if not caption:
                raise ValueError(f"caption file {caption_file} is empty")
            items.append((image, caption))
        return items

    @staticmethod
    def _read_jsonl(path: Path, allow_outside: bool = False) -> list[tuple[Path, str]]:
        items = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("image"), str) \
                    or not isinstance(record.get("caption"), str):
                raise ValueError(f'{path}:{n}: each line must be {{"image": "<path>", "caption": "<text>"}}, got {line!r}')
            rel = PurePath(record["image"])
            if not allow_outside and (rel.is_absolute() or rel.anchor or ".." in rel.parts):
                raise ValueError(
                    f"{path}:{n}: image path {record['image']!r} points outside the dataset's folder {path.parent} "
                    "(expected a relative path without '..'); pass allow_outside=True to load it anyway"
                )
            image = path.parent / record["image"]
            if not image.is_file():
                raise FileNotFoundError(f"{path}:{n}: image file not found: {image}")
            if not record["caption"].strip():
                raise ValueError(f"{path}:{n}: empty caption for {image}")
            items.append((image, record["caption"].strip()))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} pairs")
        path, caption = self.items[i]
        return load_image(path, self.image_size), caption

    def __repr__(self) -> str:
        return f"ImageTextDataset({str(self.source)!r}, image_size={self.image_size}, pairs={len(self)})"


def collate(batch: Sequence[tuple[torch.Tensor, str]], tokenizer, max_len: int) -> dict:
    """A list of (image, caption) → dict(images (B, 3, S, S), ids (B, T), attention_mask (B, T),
    captions), the batch `clip_step` takes. Captions longer than max_len are cut, keeping <eos>."""
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    images, captions = zip(*batch)
    ids, mask = tokenizer(list(captions), max_len)
    return {"images": torch.stack(images), "ids": ids, "attention_mask": mask, "captions": list(captions)}
