"""The zoo's BEiT-3 (chapter 08): the visual tokenizer and the MDM-pretrained model match their
manifests and load; the tokenizer reproduces its measured cosine and codebook usage; the
manifest holds both arms for every seed with each task's figures."""
import torch

from minivlm import zoo
from minivlm.models.beit3 import BEiT3, VisualTokenizer
from minivlm.zoo.recipes.beit3 import tokenizer_metrics


def _checked(name: str) -> dict:
    info = zoo.manifest(name)
    path = zoo.WEIGHTS_DIR / info["file"]
    assert zoo.sha256(path) == info["sha256"] and path.stat().st_size == info["bytes"] <= 2 * 1024 * 1024
    return info


def test_tokenizer_reproduces_its_cosine_and_code_usage():
    info = _checked("beit3_tokenizer")
    tokenizer = zoo.load("beit3_tokenizer")
    assert isinstance(tokenizer, VisualTokenizer) and not tokenizer.training
    got = tokenizer_metrics(tokenizer, zoo.load("clip"), info["recipe"]["bench_seed"], train_seed=info["recipe"]["seed"])
    want = info["metrics"]
    assert abs(got["cosine"]["value"] - want["cosine"]["value"]) < 1e-3
    assert got["dead_codes"] == want["dead_codes"] and abs(got["perplexity"] - want["perplexity"]) < 0.05
    assert got["cosine"]["low"] > got["mean_feature_cosine"]["high"]  # the codes carry CLIP's features


def test_beit3_manifest_holds_both_arms_for_every_seed():
    info = _checked("beit3")
    seeds = info["recipe"]["seeds"]
    assert seeds >= 3 and set(info["arms"]) == {"pretrained", "scratch"}
    for arm, runs in info["arms"].items():
        assert [r["seed"] for r in runs] == list(range(seeds))
        for r in runs:
            for metric in ("vqa", "i2t_r1"):
                assert 0 <= r[metric]["low"] <= r[metric]["value"] <= r[metric]["high"] <= 1
            assert ("cider" in r) == (arm == "pretrained") and ("mdm_loss" in r) == (arm == "pretrained")
    for metric in ("vqa", "i2t_r1"):
        gains = [p[metric]["value"] - s[metric]["value"] for p, s in zip(info["arms"]["pretrained"],
                                                                           info["arms"]["scratch"])]
        assert [round(g, 4) for g in gains] == info["pretraining_gain"][metric]


def test_loaded_beit3_predicts_masked_visual_tokens():
    """The shipped model is the MDM-pretrained one: on fresh images it must name the visual token
    of masked patches far more often than the most frequent token does."""
    from minivlm.models.beit3 import mdm_batches

    model = zoo.load("beit3")
    assert isinstance(model, BEiT3) and not model.training
    batch = mdm_batches(zoo.load("beit3_tokenizer"), 64, seed=12_345)(0)
    with torch.no_grad():
        tokens, _ = model.encode_image(batch["images"], batch["patch_mask"])
    chosen = batch["patch_mask"]
    target = batch["visual_tokens"][chosen]
    hit = (model.mim_logits(tokens).argmax(-1)[chosen] == target).float().mean()
    majority = (target == target.mode().values).float().mean()
    assert hit > majority + 0.1, (float(hit), float(majority))
