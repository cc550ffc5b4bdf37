"""The zoo's ClipCap (chapter 10): the file holds only the mapper, loading joins it to the zoo's
clip and llm (and refuses a clip or llm other than the ones it was trained on), and the loaded
model reproduces the manifest's captioning and knowledge figures."""
import json
import shutil

import pytest
import torch

from minivlm import zoo
from minivlm.data import ShapesBench
from minivlm.eval import evaluate_captions
from minivlm.models.frozen import PrefixVLM, knowledge_figures


def test_clipcap_stores_only_its_mapper_and_loads_on_the_frozen_zoo_parts():
    info = zoo.manifest("clipcap")
    path = zoo.WEIGHTS_DIR / info["file"]
    assert zoo.sha256(path) == info["sha256"] and path.stat().st_size == info["bytes"] < 1024 * 1024
    model = zoo.load("clipcap")
    assert isinstance(model, PrefixVLM) and not model.training and model.config.variant == "clipcap"
    assert set(model.stored_state_dict()) == {k for k in model.state_dict() if k.startswith("mapper.")}
    llm, clip = zoo.load("llm"), zoo.load("clip")
    assert all(torch.equal(v, llm.state_dict()[k]) for k, v in model.llm.state_dict().items())
    assert all(torch.equal(v, clip.visual.state_dict()[k]) for k, v in model.visual.state_dict().items())
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("mapper."))
    assert info["trainable_parameters"] == sum(p.numel() for p in model.mapper.parameters())


def test_clipcap_reproduces_its_manifest():
    info = zoo.manifest("clipcap")
    model = zoo.load("clipcap")
    bench = ShapesBench(image_size=model.image_size, seed=info["recipe"]["bench_seed"])
    cap = bench.captioning(256)
    cider = evaluate_captions(model, cap["images"], cap["scenes"])["cider"]
    assert abs(cider.value - info["metrics"]["cider"]["value"]) < 0.1  # other CPUs may flip a few tokens
    # Knowledge on one kind's 300 questions of the manifest's 900, against the manifest's per-kind
    # figures: the same reproduction at a third of the decoding (issue 24). Chapter 10's notebook
    # re-measures all 900 questions five ways against the manifest under nbval.
    data = bench.knowledge(900)
    keep = [i for i, kind in enumerate(data["kinds"]) if kind == "corners"]
    data = {k: v[keep] if torch.is_tensor(v) else [v[i] for i in keep] for k, v in data.items()}
    assert len(data["questions"]) == info["metrics"]["knowledge_direct_corners"]["n"] == 300
    know = knowledge_figures(model, data)
    for way in ("direct", "describe_first", "llm_alone"):
        assert abs(know[way]["accuracy"].value - info["metrics"][f"knowledge_{way}_corners"]["value"]) < 0.03


def test_the_arm_trained_to_act_as_the_caption_reproduces_and_reads_knowledge_from_the_image():
    """Chapter 10's arm 6 (issue 23): asked directly, knowledge 20 points above the LLM alone with the
    intervals apart; where its perception is right, 80 % of the true caption's accuracy."""
    info = zoo.manifest("clipcap_kl")
    assert info["ship_arm"] == "clipcap_kl" and info["config"]["variant"] == "clipcap"
    model = zoo.load("clipcap_kl")
    bench = ShapesBench(image_size=model.image_size, seed=info["recipe"]["bench_seed"])
    data = bench.knowledge(900)
    # only the two ways asserted on, as knowledge_figures asks them (its describe_first, unused here,
    # is two thirds of its decoding: issue 24)
    from minivlm.models.frozen import answer_figures, llm_alone_figures

    n = max(len(a.split()) for a in data["answers"]) + 1
    know = {"direct": answer_figures(model.ask(data["images"], data["questions"], max_new_tokens=n),
                                     data["answers"], data["kinds"]),
            "llm_alone": llm_alone_figures(model, data, n)}
    direct, alone = know["direct"]["accuracy"], know["llm_alone"]["accuracy"]
    assert abs(direct.value - info["metrics"]["knowledge_direct"]["value"]) < 0.03
    assert direct.value >= alone.value + 0.20 and direct.low > alone.high
    assert info["metrics"]["knowledge_direct_share_of_ceiling_given_perception"]["value"] >= 0.80


def test_clipcap_refuses_a_rebuilt_llm(tmp_path):
    for f in ("clip", "llm", "clipcap"):
        for ext in ("json", "safetensors"):
            shutil.copy(zoo.WEIGHTS_DIR / f"{f}.{ext}", tmp_path / f"{f}.{ext}")
    info = json.loads((tmp_path / "clipcap.json").read_text())
    info["config"]["llm_sha256"] = "0" * 64
    (tmp_path / "clipcap.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="trained on a zoo 'llm'|weights were trained and saved"):
        zoo.load("clipcap", weights_dir=tmp_path)


# ----------------------------------------------------------------------------- the recipe's arms (issue 23)
def test_the_recipe_runs_every_arm_sweeps_frozens_lr_and_ships_one():
    from minivlm.zoo.recipes.clipcap import ARM_SPECS, ClipCapKLRecipe, ClipCapRecipe, MaplRecipe

    recipe = ClipCapRecipe()
    jobs = recipe.jobs()
    names = ["clipcap", "frozen_lr0.003", "frozen_lr0.001", "frozen_lr0.0003", "mapl", "clipcap_kl", "clipcap_word"]
    assert [j["arm"] for j in jobs] == names * recipe.seeds and [j["seed"] for j in jobs] == [0] * 7 + [1] * 7
    by_arm = {j["arm"]: j for j in jobs if j["seed"] == 0}
    assert [by_arm[f"frozen_lr{lr:g}"]["lr"] for lr in (3e-3, 1e-3, 3e-4)] == [3e-3, 1e-3, 3e-4]
    assert {ARM_SPECS[j["spec"]]["variant"] for j in jobs if j["arm"].startswith("frozen")} == {"frozen"}
    assert ARM_SPECS[by_arm["clipcap_kl"]["spec"]] == dict(variant="clipcap", objective="caption_kl", prefix_norm="free")
    assert ARM_SPECS[by_arm["clipcap_word"]["spec"]]["prefix_norm"] == "word"
    assert all(j["lr"] == recipe.lr for j in jobs if not j["arm"].startswith("frozen"))
    assert [(j["arm"], j["seed"]) for j in jobs if j["ship"]] == [("clipcap", 0)]
    # every arm sees the same images, steps and batch size
    assert len({(j["n_images"], j["world_seed"], j["steps"], j["batch_size"]) for j in jobs}) == 1
    # the mapl entry trains exactly the clipcap build's MAPL seed 0 (same weights)
    (mapl,) = MaplRecipe().jobs()
    assert {k: v for k, v in mapl.items() if k != "ship"} == {k: v for k, v in by_arm["mapl"].items() if k != "ship"}
    assert mapl["ship"]
    (kl,) = ClipCapKLRecipe().jobs()  # and the clipcap_kl entry its arm 6, seed 0
    assert {k: v for k, v in kl.items() if k != "ship"} == {k: v for k, v in by_arm["clipcap_kl"].items() if k != "ship"}
    assert kl["ship"]
    with pytest.raises(ValueError, match=r"arms must be among .*got \['llava'\]"):
        ClipCapRecipe(arms=("clipcap", "llava")).jobs()
    with pytest.raises(ValueError, match="ship_arm must be one of the arms run"):
        ClipCapRecipe(arms=("mapl",)).jobs()
    with pytest.raises(ValueError, match="frozen_lrs must hold at least one"):
        ClipCapRecipe(frozen_lrs=()).jobs()


def test_the_shipped_config_names_the_arms_prefix_and_old_manifests_load_free():
    from minivlm.zoo.recipes.clipcap import ClipCapRecipe

    config = ClipCapRecipe().shipped_config()
    assert config["variant"] == "clipcap" and config["prefix_norm"] == "free"
    assert config["llm_sha256"] == zoo.manifest("llm")["sha256"]
    word = ClipCapRecipe(ship_arm="clipcap_word").shipped_config()
    assert word["variant"] == "clipcap" and word["prefix_norm"] == "word"
    assert zoo.manifest("clipcap")["config"]["prefix_norm"] == "free"
    assert zoo.load("clipcap").config.prefix_norm == "free"
    old = {k: v for k, v in zoo.manifest("clipcap")["config"].items() if k != "prefix_norm"}
    assert zoo.RECIPES["clipcap"].model(old).config.prefix_norm == "free"  # manifests from before the option


def test_a_kl_arm_runs_end_to_end_and_reports_the_decomposition():
    from minivlm.zoo.recipes.clipcap import ClipCapRecipe, _run_arm

    recipe = ClipCapRecipe(steps=2, batch_size=4, n_images=16, seeds=1, arms=("clipcap_kl",), ship_arm="clipcap_kl",
                           warmup=0)
    (job,) = recipe.jobs()
    out = _run_arm({**job, "metric_sizes": dict(caption_n=4, vqa_n=6, knowledge_n=6)})
    m = out["metrics"]
    for way in ("llm_alone", "true_caption", "own_caption", "describe_first", "direct"):
        assert m[f"knowledge_{way}"]["n"] == 6
        assert f"knowledge_{way}_given_perception" in m
    assert m["perception"]["n"] == 6 and "knowledge_direct_share_of_ceiling_given_perception" in m
    assert m["prefix_norm"]["n"] == 4 * 8 and m["word_norm"]["min"] <= m["word_norm"]["mean"] <= m["word_norm"]["max"]
    assert out["final"]["loss"] >= 0 and set(out["state"]) == {k for k in out["state"] if k.startswith("mapper.")}
