"""minivlm.zoo: the shipped CLIP weights match their manifest, load in eval mode and reach the
zero-shot bar on a fresh ShapesBench seed; unknown names and corrupt files give clear errors."""
import json
import shutil

import pytest
import torch

from minivlm import zoo
from minivlm.data import ShapesBench
from minivlm.eval import CLIP_TEMPLATES, class_prompts, zero_shot_accuracy, zero_shot_classifier, zero_shot_logits
from minivlm.models.clip import CLIP


def test_available_lists_clip():
    assert "clip" in zoo.available()


def test_manifest_sha256_matches_the_shipped_file():
    info = zoo.manifest("clip")
    path = zoo.WEIGHTS_DIR / info["file"]
    assert path.is_file()
    assert zoo.sha256(path) == info["sha256"]
    assert path.stat().st_size == info["bytes"] <= 5 * 1024 * 1024  # small enough to ship
    for key in ("config", "tokenizer_vocab_size", "metrics", "torch_version", "steps", "seconds", "recipe"):
        assert key in info, key
    assert info["metrics"]["zero_shot_seen"] >= 0.9


def test_load_gives_a_trained_clip_in_eval_mode():
    model = zoo.load("clip")
    assert isinstance(model, CLIP)
    assert not model.training and not any(m.training for m in model.modules())
    assert model.config.vocab_size == zoo.manifest("clip")["tokenizer_vocab_size"]
    # loaded weights, not a fresh init: a fresh model's scale is exactly 1/0.07
    assert abs(float(model.scale().detach()) - 1 / 0.07) > 1.0


def test_zero_shot_bar_on_a_fresh_bench_seed():
    model = zoo.load("clip")
    seed = 777 + int(torch.randint(0, 10_000, (1,)))  # never the manifest's seed (1234)
    data = ShapesBench(seed=seed).classification("seen", n_per_class=6)
    classifier = zero_shot_classifier(model, class_prompts(data["class_names"]), list(CLIP_TEMPLATES))
    acc = zero_shot_accuracy(zero_shot_logits(model, data["images"], classifier), data["labels"])
    assert acc >= 0.90, f"zoo CLIP zero-shot accuracy on ShapesBench(seed={seed}) seen classes: {acc:.1%}"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown zoo model 'llava'; available: .*clip"):
        zoo.load("llava")
    with pytest.raises(ValueError, match="available"):
        zoo.build("nope")


def test_corrupt_weights_are_refused(tmp_path):
    for name in ("clip.safetensors", "clip.json"):
        shutil.copy(zoo.WEIGHTS_DIR / name, tmp_path / name)
    zoo.load("clip", weights_dir=tmp_path)  # an intact copy loads
    with open(tmp_path / "clip.safetensors", "r+b") as f:  # flip one byte near the end
        f.seek(-3, 2)
        b = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        zoo.load("clip", weights_dir=tmp_path)


def test_build_writes_weights_and_a_matching_manifest(tmp_path):
    """A tiny build (a few steps of a tiny config) goes through the whole recipe: deterministic,
    saved, and loadable."""
    tiny = dict(image_size=32, patch_size=8, vision_dim=16, vision_depth=1, vision_heads=2, text_dim=16,
                text_depth=1, text_heads=2, embed_dim=16, context_length=32)
    a = zoo.build("clip", out_dir=tmp_path / "a", progress=False, steps=3, pairs=5, config=tiny)
    b = zoo.build("clip", out_dir=tmp_path / "b", progress=False, steps=3, pairs=5, config=tiny)
    assert a["sha256"] == b["sha256"], "the recipe must be deterministic"
    saved = json.loads((tmp_path / "a" / "clip.json").read_text())
    assert saved["sha256"] == zoo.sha256(tmp_path / "a" / "clip.safetensors") == a["sha256"]
    assert saved["steps"] == 3 and saved["config"]["vision_dim"] == 16
    assert set(saved["metrics"]) >= {"zero_shot_seen", "zero_shot_heldout", "i2t_r1", "t2i_r1"}
    model = zoo.load("clip", weights_dir=tmp_path / "a")
    assert not model.training and model.config.vision_dim == 16


# ----------------------------------------------------------------------------- the ViLTs (chapter 03)


@pytest.mark.parametrize("name", ["vilt_pretrained", "vilt"])
def test_vilt_entries_match_their_manifests_and_load(name):
    from minivlm.models.vilt import ViLT

    info = zoo.manifest(name)
    path = zoo.WEIGHTS_DIR / info["file"]
    assert zoo.sha256(path) == info["sha256"] and path.stat().st_size == info["bytes"] <= 2 * 1024 * 1024
    model = zoo.load(name)
    assert isinstance(model, ViLT) and not model.training
    assert model.config.vocab_size == info["tokenizer_vocab_size"]


def test_vilt_pretrained_itm_on_a_fresh_bench_seed():
    from minivlm.eval import evaluate_itm

    seed = 5000 + int(torch.randint(0, 10_000, (1,)))
    acc = evaluate_itm(zoo.load("vilt_pretrained"), ShapesBench(seed=seed).itm(400))["accuracy"]
    assert acc.value >= 0.70, f"zoo vilt_pretrained ITM accuracy on ShapesBench(seed={seed}): {acc}"


def test_vilt_vqa_on_a_fresh_bench_seed_beats_the_blind_baseline():
    from minivlm.data import ShapesWorld
    from minivlm.eval import answer_hits, answer_prior, evaluate_vqa, interval

    seed = 5000 + int(torch.randint(0, 10_000, (1,)))
    data = ShapesBench(seed=seed).vqa(600)
    result = evaluate_vqa(zoo.load("vilt"), data)
    train = ShapesWorld(seed=5, split="train").vqa_sample(1200)
    prior = answer_prior(train["answers"], train["kinds"])
    blind = interval(answer_hits([prior[k] for k in data["kinds"]], data["answers"]))
    assert result["overall"].value >= 0.50, f"zoo vilt VQA on ShapesBench(seed={seed}): {result['overall']}"
    assert result["overall"].low > blind.high, f"zoo vilt {result['overall']} vs blind baseline {blind}"


def test_vilt_builds_are_deterministic_and_chain(tmp_path):
    """A tiny build of both entries: "vilt" fine-tunes the "vilt_pretrained" it finds in the same
    folder, records its seed arms, and two builds give the same bits."""
    tiny = dict(image_size=16, patch_size=8, dim=16, depth=1, heads=2, max_text_len=32, pos_init_std=1.0)
    with pytest.raises(FileNotFoundError, match="vilt_pretrained"):
        zoo.build("vilt", out_dir=tmp_path / "empty", progress=False, steps=2)
    shas = []
    for run in ("a", "b"):
        zoo.build("vilt_pretrained", out_dir=tmp_path / run, progress=False, steps=2, batch_size=8, itm_n=20,
                  config=tiny)
        info = zoo.build("vilt", out_dir=tmp_path / run, progress=False, steps=2, batch_size=8, seeds=2, vqa_n=12)
        shas.append(info["sha256"])
    assert shas[0] == shas[1], "the recipe must be deterministic"
    assert [r["seed"] for r in info["arms"]["pretrained"]] == [0, 1] and len(info["arms"]["scratch"]) == 2
    assert len(info["pretraining_gain"]["per_seed"]) == 2
    assert zoo.load("vilt", weights_dir=tmp_path / "a").config.dim == 16
    # the scratch variants: one config change each, every seed, the same rows with 1 or 2 workers
    for variant, change in info["scratch_variants"].items():
        assert [r["seed"] for r in info["arms"][variant]] == [0, 1] and len(change) == 1
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    again = zoo.build("vilt", out_dir=tmp_path / "a", progress=False, steps=2, batch_size=8, seeds=2, vqa_n=12,
                      only_variants=True, workers=2)
    assert set(again["arms"]) == {"pretrained", *info["scratch_variants"]} and again["pretraining_gain"] is None
    assert again["sha256"] == info["sha256"], "the shipped arm must come out the same in a variants-only build"
    for variant in info["scratch_variants"]:
        assert strip(again["arms"][variant]) == strip(info["arms"][variant])
    with pytest.raises(ValueError, match="variants must be drawn from"):
        zoo.build("vilt", out_dir=tmp_path / "a", progress=False, steps=2, variants=("scratch_nope",))
