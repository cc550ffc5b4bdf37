"""bench_vilt: our ViLT VQA training step against transformers' ViltForQuestionAnswering."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from minivlm.benchmarks import bench_vilt, hf_vilt_like  # noqa: E402
from minivlm.data.pairs import vqa_batches  # noqa: E402
from minivlm.models.vilt import ViLT, ViLTConfig  # noqa: E402

TINY = dict(dim=32, depth=1, heads=2, patch_size=8, max_text_len=24)


def test_benchmark_builds_the_same_model():
    """hf_vilt_like has our configuration: from_hf reads back the same architecture, and with
    its weights copied into ours both give the same VQA loss on the benchmark's batch."""
    cfg = ViLTConfig(act="gelu_tanh", mlp_ratio=2.0, **TINY)
    torch.manual_seed(0)
    hf, _ = hf_vilt_like(cfg)
    ours = ViLT.from_hf(hf.eval(), image_mean=cfg.image_mean, image_std=cfg.image_std).eval()
    for key in ("dim", "depth", "heads", "mlp_ratio", "image_size", "patch_size", "vocab_size", "max_text_len",
                "answers", "act", "eps", "pad_id"):
        assert getattr(ours.config, key) == getattr(cfg, key), key
    batch = vqa_batches(6, image_size=cfg.image_size, max_text_len=cfg.max_text_len)(0)
    images, ids, mask, labels = batch["images"], batch["ids"], batch["attention_mask"], batch["labels"]
    assert not mask.all()  # questions of different lengths: the padding mask is exercised
    with torch.no_grad():
        theirs = F.cross_entropy(hf(input_ids=ids, attention_mask=mask.long(), pixel_values=(images - 0.5) / 0.5)
                                 .logits, labels)
        loss = F.cross_entropy(ours.vqa_logits(ours.pool(ours(images, ids, mask))), labels)
    assert loss.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_bench_vilt_reports_both_timings():
    r = bench_vilt(batch_size=4, repeats=2, warmup=1, threads=1, **TINY)
    for key in ("ours_ms", "theirs_ms", "ratio", "ours_cpu_ms", "theirs_cpu_ms"):
        assert r[key] > 0, key
    assert r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"], rel=2e-3)  # both sides rounded
    assert r["threads"] == 1 and r["device"] == "cpu" and r["batch_size"] == 4 and r["repeats"] == 2
    assert r["config"]["dim"] == 32 and r["config"]["patch_size"] == 8
    assert r["torch"] and r["transformers"]
    # theirs also has BERT's 2-row token-type table, which our model folds into the positions
    assert r["params_theirs"] == r["params_ours"] + 2 * 32
    with pytest.raises(ValueError, match="patches only"):
        bench_vilt(batch_size=4, repeats=1, visual="regions", **TINY)
