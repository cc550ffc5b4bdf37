"""ImageTextDataset: real image files + captions from a folder or a .jsonl (chapter 02)."""
import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from minivlm.data import ShapesWorld, Tokenizer
from minivlm.data.folder import ImageTextDataset, collate, load_image
from minivlm.losses import clip_loss
from minivlm.models import CLIP, CLIPConfig
from minivlm.models.clip import clip_step

TOK = Tokenizer.from_world()


def save(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    """Two ShapesWorld renders and a solid-colour image, each with a caption file."""
    world = ShapesWorld(seed=3, image_size=32)
    scenes = world.sample(2)
    images = world.render(scenes)
    d = tmp_path / "photos"
    d.mkdir()
    for k, (img, scene) in enumerate(zip(images, scenes)):
        save(d / f"shape{k}.png", (img.permute(1, 2, 0) * 255).round().numpy())
        (d / f"shape{k}.txt").write_text(world.caption(scene) + "\n")
    save(d / "solid.png", np.full((40, 40, 3), (200, 30, 90)))
    (d / "solid.txt").write_text("a pink square .")
    (d / "notes.md").write_text("not an image, ignored")
    return d, images


def test_folder_round_trips_pixels(folder):
    d, rendered = folder
    ds = ImageTextDataset(d, image_size=32)
    assert len(ds) == 3
    names = [p.name for p, _ in ds.items]
    assert names == ["shape0.png", "shape1.png", "solid.png"]
    for k in range(2):  # 32×32 PNGs: no resize, values are the render rounded to 1/255
        img, caption = ds[k]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert (img - rendered[k]).abs().max() <= 0.5 / 255 + 1e-6
        assert caption == (d / f"shape{k}.txt").read_text().strip()
    img, caption = ds[2]  # 40×40 solid colour, resized to 32: still exactly that colour
    expected = torch.tensor([200, 30, 90]).float().div(255).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(img, expected, rtol=0, atol=1e-7)
    assert caption == "a pink square ."


def test_resize_short_side_and_centre_crop(tmp_path):
    # 48 wide × 32 high, red channel = 5 × column index: with image_size 32 there is no resize,
    # and the centre crop must keep columns 8..39
    cols = np.arange(48) * 5
    array = np.zeros((32, 48, 3))
    array[..., 0] = cols[None, :]
    array[..., 1] = np.arange(32)[:, None] * 3  # green encodes the row
    save(tmp_path / "wide.png", array)
    img = load_image(tmp_path / "wide.png", 32)
    torch.testing.assert_close(img[0, 0] * 255, torch.tensor(cols[8:40]).float())
    torch.testing.assert_close(img[1, :, 0] * 255, torch.arange(32).float() * 3)
    # 64 high × 32 wide with a top half black, bottom white: short side 32, crop rows 16..47
    tall = np.zeros((64, 32, 3))
    tall[32:] = 255
    save(tmp_path / "tall.png", tall)
    img = load_image(tmp_path / "tall.png", 32)
    assert img.shape == (3, 32, 32)
    assert img[:, :16].max() == 0 and img[:, 16:].min() == 1
    # downsampling a 2×2 checkerboard of 32-pixel blocks to 16: each quadrant keeps its colour
    board = np.zeros((64, 64, 3))
    board[:32, :32] = board[32:, 32:] = 255
    save(tmp_path / "board.png", board)
    img = load_image(tmp_path / "board.png", 16)
    assert img[:, 2:6, 2:6].min() == 1 and img[:, 2:6, 10:14].max() == 0


def test_transparent_png_goes_on_white_and_grey_becomes_rgb(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 8).min() == 1
    Image.fromarray(np.full((8, 8), 51, dtype=np.uint8), "L").save(tmp_path / "grey.png")
    img = load_image(tmp_path / "grey.png", 8)
    assert img.shape == (3, 8, 8) and torch.allclose(img, torch.full_like(img, 0.2))


def test_jsonl_with_relative_paths(tmp_path):
    (tmp_path / "img").mkdir()
    save(tmp_path / "img" / "a.png", np.full((32, 32, 3), (10, 20, 30)))
    save(tmp_path / "img" / "b.jpg", np.full((32, 32, 3), 255))
    lines = [{"image": "img/a.png", "caption": "a blue circle ."}, {"image": "img/b.jpg", "caption": " white "}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = ImageTextDataset(tmp_path / "pairs.jsonl", image_size=32)
    assert len(ds) == 2
    img, cap = ds[0]
    torch.testing.assert_close(img[:, 5, 7] * 255, torch.tensor([10.0, 20.0, 30.0]))
    assert cap == "a blue circle ."
    img, cap = ds[1]
    assert cap == "white" and (img - 1).abs().max() < 2 / 255  # JPEG: near-exact white


def test_missing_files_raise_errors_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageTextDataset(tmp_path / "nowhere")
    save(tmp_path / "lonely.png", np.zeros((8, 8, 3)))
    with pytest.raises(FileNotFoundError, match="lonely.txt"):
        ImageTextDataset(tmp_path)
    (tmp_path / "lonely.txt").write_text("   ")
    with pytest.raises(ValueError, match="lonely.txt.*empty"):
        ImageTextDataset(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "gone.png", "caption": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        ImageTextDataset(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"image": "lonely.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        ImageTextDataset(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1.*JSON"):
        ImageTextDataset(tmp_path / "bad.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image-caption pairs"):
        ImageTextDataset(empty)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png", 8)


def test_collate_and_a_clip_step(folder):
    d, _ = folder
    ds = ImageTextDataset(d, image_size=32)
    loader = DataLoader(ds, batch_size=3, collate_fn=functools.partial(collate, tokenizer=TOK, max_len=16))
    batch = next(iter(loader))
    assert batch["images"].shape == (3, 3, 32, 32)
    ids, mask = TOK([c for _, c in ds.items], 16)
    assert torch.equal(batch["ids"], ids) and torch.equal(batch["attention_mask"], mask)
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(vision_dim=32, vision_depth=1, text_dim=32, text_depth=1, embed_dim=16,
                            context_length=16, patch_size=8))
    out = clip_step(model, batch)
    img, txt, scale = model(batch["images"], batch["ids"], batch["attention_mask"])
    torch.testing.assert_close(out["loss"], clip_loss(img, txt, scale))
    out["loss"].backward()
    assert torch.isfinite(model.visual.patch_embed.proj.weight.grad).all()
    assert model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
