"""Bad input at the library's public boundaries: clear errors instead of silent wrong answers."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# -- 1. exercises build with a missing or empty solutions folder ------------------------------

def _built_exercises(tmp_path):
    from minivlm.exercises import build

    sol, ex = tmp_path / "sol", tmp_path / "ex"
    sol.mkdir()
    shutil.copy(next((FIXTURES / "solutions").glob("*.py")), sol / "01_demo.py")
    build(sol, ex)
    return sol, ex


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_exercises_build_rejects_missing_or_empty_solutions_and_keeps_files(tmp_path, make):
    from minivlm.exercises import build

    _, ex = _built_exercises(tmp_path)
    before = sorted(p.name for p in ex.iterdir())
    assert before == ["01_demo.ipynb", "01_demo.py"]
    typo = tmp_path / "solutoins"
    if make:
        typo.mkdir()
    for check in (True, False):
        with pytest.raises(ValueError, match="solutoins"):
            build(typo, ex, check=check)
    assert sorted(p.name for p in ex.iterdir()) == before


def test_cli_exercises_build_with_mistyped_solutions_fails(tmp_path):
    _, ex = _built_exercises(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "minivlm.cli", "exercises", "build", "--solutions", str(tmp_path / "nope"),
         "--exercises", str(ex)],
        capture_output=True, text=True,
    )
    assert r.returncode != 0, r.stdout + r.stderr
    assert "nope" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in ex.iterdir()) == ["01_demo.ipynb", "01_demo.py"]


# -- 2. NaN / inf scores in the metrics ---------------------------------------------------------

def _with(value, shape, at=(0, 0)):
    x = torch.randn(*shape)
    x[at] = value
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_metrics_reject_non_finite_scores(value):
    from minivlm.eval import recall_at_k, retrieval_metrics, swap_scores, zero_shot_accuracy

    nan6 = torch.full((6, 6), float("nan"))
    with pytest.raises(ValueError, match="similarity must be finite"):
        recall_at_k(nan6, 1)
    with pytest.raises(ValueError, match="similarity must be finite"):
        retrieval_metrics(nan6)
    with pytest.raises(ValueError, match="similarity must be finite"):
        recall_at_k(_with(value, (6, 6)), 1)
    with pytest.raises(ValueError, match="scores must be finite"):
        swap_scores(_with(value, (3, 2, 2), (1, 0, 1)))
    with pytest.raises(ValueError, match="logits must be finite"):
        zero_shot_accuracy(_with(value, (4, 3)), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="logits must be finite"):
        zero_shot_accuracy(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 2, 0]))


# -- 3. a bare string where a list of texts is expected ----------------------------------------

def test_clip_rejects_a_bare_string_of_text():
    from minivlm.models import CLIP, CLIPConfig

    torch.manual_seed(0)
    model = CLIP(CLIPConfig(vision_depth=1, text_depth=1)).eval()
    with pytest.raises(TypeError, match=r"list of strings.*\['a red circle'\]"):
        model.encode_text("a red circle")
    with pytest.raises(TypeError, match="list of strings"):
        model.tokenize("ab")
    images = torch.rand(2, 3, model.config.image_size, model.config.image_size)
    with pytest.raises(TypeError, match="list of strings"):
        model(images, "ab")
    assert model.encode_text(["a red circle"]).shape == (1, model.config.embed_dim)


# -- 4. a finite loss with a NaN/inf gradient in fit ---------------------------------------------

@pytest.mark.parametrize("clip_grad", [1.0, None])
def test_fit_stops_on_a_non_finite_gradient_before_the_update(clip_grad):
    from minivlm.train import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def sqrt_at_zero(m, batch):
        w = m.weight
        return {"loss": torch.sqrt(w - w.detach()).sum()}  # value 0, gradient 1/(2·sqrt(0)) = inf

    with pytest.raises(FloatingPointError, match="gradient norm is (nan|inf) at step 0"):
        fit(model, sqrt_at_zero, lambda i: None, 3, clip_grad=clip_grad, progress=False, device="cpu")
    for k, v in model.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, before[k]), k


# -- 5, 6. clip_loss: infinite scale, features not unit length or not finite, a batch of one ----

def _unit(b, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)


def test_clip_loss_rejects_an_infinite_scale():
    from minivlm.losses import clip_loss

    img, txt = _unit(4), _unit(4, seed=1)
    for scale in (float("inf"), torch.tensor(float("inf"))):
        with pytest.raises(ValueError, match="logit_scale must be finite.*inf"):
            clip_loss(img, txt, scale)


def test_clip_loss_rejects_features_that_are_not_unit_length():
    from minivlm.losses import clip_loss

    img, txt = _unit(4), _unit(4, seed=1)
    raw = img.clone()
    raw[2] *= 3.0
    with pytest.raises(ValueError, match=r"image_features must be L2-normalised.*row 2 has norm 3\b.*deviation 2"):
        clip_loss(raw, txt, 10.0)
    with pytest.raises(ValueError, match="text_features must be L2-normalised"):
        clip_loss(img, txt * 0.99, 10.0)
    bad = txt.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="text_features must be finite"):
        clip_loss(img, bad, 10.0)
    clip_loss(img, txt * (1 + 5e-4), 10.0)  # rounding-sized deviations are fine
    clip_loss(img.bfloat16(), txt.bfloat16(), 10.0)


def test_clip_loss_rejects_a_batch_of_one_pair():
    from minivlm.losses import clip_loss

    with pytest.raises(ValueError, match=r"at least 2 pairs.*B=1.*drop_last=True"):
        clip_loss(_unit(1), _unit(1, seed=1), 10.0)


# -- 7. .jsonl image paths outside the dataset's folder ------------------------------------------

def _png(path, value=128, size=8):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_jsonl_paths_outside_the_folder_need_allow_outside(tmp_path, kind):
    import json

    from minivlm.data.folder import ImageTextDataset

    _png(tmp_path / "secret.png")
    _png(tmp_path / "data" / "img" / "ok.png")
    image = "../secret.png" if kind == "dotdot" else str(tmp_path / "secret.png")
    jsonl = tmp_path / "data" / "pairs.jsonl"
    jsonl.write_text(json.dumps({"image": "img/ok.png", "caption": "fine"}) + "\n"
                     + json.dumps({"image": image, "caption": "outside"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: image path .*outside.*allow_outside=True"):
        ImageTextDataset(jsonl, image_size=8)
    ds = ImageTextDataset(jsonl, image_size=8, allow_outside=True)
    assert len(ds) == 2 and ds[1][0].shape == (3, 8, 8)


# -- 8. 16-bit grayscale PNG ---------------------------------------------------------------------

def test_16_bit_grayscale_png_keeps_its_values(tmp_path):
    import numpy as np
    from PIL import Image

    from minivlm.data.folder import load_image

    a = np.zeros((8, 8), np.uint16)
    a[:, :4] = 0x8000  # mid grey on the left, black on the right
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = load_image(tmp_path / "g16.png", 8)
    assert x.shape == (3, 8, 8)
    torch.testing.assert_close(x[:, :, :4], torch.full((3, 8, 4), 128 / 255))
    torch.testing.assert_close(x[:, :, 4:], torch.zeros(3, 8, 4))
    full = np.full((8, 8), 65535, np.uint16)
    Image.fromarray(full).save(tmp_path / "white16.png")
    torch.testing.assert_close(load_image(tmp_path / "white16.png", 8), torch.ones(3, 8, 8))


def test_float_image_is_rejected_clearly(tmp_path):
    import numpy as np
    from PIL import Image

    from minivlm.data.folder import load_image

    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match="mode 'F'"):
        load_image(tmp_path / "f.tiff", 8)


# -- 10. zoo: a manifest without sha256, weights that do not fit the model ----------------------

def _zoo_copy(tmp_path):
    from minivlm import zoo

    for name in ("clip.safetensors", "clip.json"):
        shutil.copy(zoo.WEIGHTS_DIR / name, tmp_path / name)
    return zoo


def test_zoo_manifest_without_sha256_is_a_clear_error(tmp_path):
    import json

    zoo = _zoo_copy(tmp_path)
    info = json.loads((tmp_path / "clip.json").read_text())
    del info["sha256"]
    (tmp_path / "clip.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"clip.json has no 'sha256' key"):
        zoo.load("clip", weights_dir=tmp_path)


def test_zoo_weights_that_do_not_fit_the_model_name_the_file_and_key(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    zoo = _zoo_copy(tmp_path)
    state = load_file(str(tmp_path / "clip.safetensors"))
    first = next(iter(state))
    state[first] = torch.zeros(3)
    save_file(state, str(tmp_path / "clip.safetensors"))
    info = json.loads((tmp_path / "clip.json").read_text())
    info["sha256"] = zoo.sha256(tmp_path / "clip.safetensors")
    (tmp_path / "clip.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=rf"clip.safetensors does not fit.*key '{first}' has shape \(3,\)"):
        zoo.load("clip", weights_dir=tmp_path)
