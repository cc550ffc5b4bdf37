"""The zoo's ClipCap (chapter 10): the file holds only the mapper, loading joins it to the zoo's
clip and llm (and refuses a clip or llm other than the ones it was trained on), and the loaded
model reproduces the manifest's captioning and knowledge figures."""
import json
import shutil

import pytest
import torch

from minivlm import zoo
from minivlm.data import ShapesBench
from minivlm.models.blip import evaluate_captions
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
    know = knowledge_figures(model, bench.knowledge(900))
    for way in ("direct", "describe_first", "llm_alone"):
        assert abs(know[way]["accuracy"].value - info["metrics"][f"knowledge_{way}"]["value"]) < 0.03


def test_clipcap_refuses_a_rebuilt_llm(tmp_path):
    for f in ("clip", "llm", "clipcap"):
        for ext in ("json", "safetensors"):
            shutil.copy(zoo.WEIGHTS_DIR / f"{f}.{ext}", tmp_path / f"{f}.{ext}")
    info = json.loads((tmp_path / "clipcap.json").read_text())
    info["config"]["llm_sha256"] = "0" * 64
    (tmp_path / "clipcap.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="trained on a zoo 'llm'|weights were trained and saved"):
        zoo.load("clipcap", weights_dir=tmp_path)
