"""The zoo CoCa (chapter 07): shipped weights match their manifest and load, the manifest holds
every arm for every seed, the shipped metrics are CoCa seed 0's, and the loaded model reproduces
its zero-shot accuracy."""
from minivlm import zoo
from minivlm.models.coca import CoCa, coca_metrics


def test_manifest_holds_every_arm_for_every_seed():
    info = zoo.manifest("coca")
    path = zoo.WEIGHTS_DIR / info["file"]
    assert zoo.sha256(path) == info["sha256"] and path.stat().st_size == info["bytes"] <= 2 * 1024 * 1024
    seeds = info["recipe"]["seeds"]
    assert seeds >= 3 and set(info["arms"]) == {"coca", "coca_pos1", "prefixlm"}
    for arm, runs in info["arms"].items():
        assert [r["seed"] for r in runs] == list(range(seeds))
        for r in runs:
            assert 0 <= r["caption_true"]["low"] <= r["caption_true"]["value"] <= r["caption_true"]["high"] <= 1
            assert ("zero_shot_seen" in r) == arm.startswith("coca")
    shipped = {k: v for k, v in info["arms"]["coca"][0].items()
               if k not in ("seed", "final_loss", "train_seconds", "ms_per_step")}
    assert info["metrics"] == shipped


def test_loaded_coca_reproduces_its_zero_shot_accuracy():
    model = zoo.load("coca")
    assert isinstance(model, CoCa) and not model.training
    got = coca_metrics(model, caption_n=8, retrieval_n=8)["zero_shot_seen"]["value"]
    assert abs(got - zoo.manifest("coca")["metrics"]["zero_shot_seen"]["value"]) < 0.02
