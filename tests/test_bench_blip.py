"""bench_blip: our BLIP captioning training step against transformers' BlipForConditionalGeneration."""
import pytest
import torch

pytest.importorskip("transformers")

from minivlm.benchmarks import (  # noqa: E402
    bench_blip,
    blip_caption_batch,
    blip_lm_loss_ours,
    blip_lm_loss_theirs,
    hf_blip_like,
)
from minivlm.models.blip import (
    BLIP_CONFIG,  # noqa: E402
    BLIPConfig,  # noqa: E402
)
from minivlm.models.blip_hf import blip_from_hf  # noqa: E402

TINY = dict(dim=32, vision_depth=1, text_depth=1, heads=2, embed_dim=16, patch_size=8, max_text_len=24)
LAYOUT = dict(text_norm_first=False, vision_pre_norm=False, patch_bias=True, label_smoothing=0.1)  # transformers


def test_benchmark_builds_the_same_model():
    """hf_blip_like has our configuration: blip_from_hf reads back the same architecture, and with
    its weights in ours both give the same captioning loss on the benchmark's batch, so the
    benchmark compares like with like."""
    cfg = BLIPConfig(**{**BLIP_CONFIG, **TINY, **LAYOUT})
    torch.manual_seed(0)
    hf, _ = hf_blip_like(cfg)
    ours = blip_from_hf(hf.eval(), image_mean=cfg.image_mean, image_std=cfg.image_std).eval()
    for key in ("image_size", "patch_size", "dim", "vision_dim", "vision_depth", "text_depth", "heads",
                "vision_heads", "mlp_ratio", "embed_dim", "vocab_size", "max_text_len", "act", "eps", "text_eps",
                "text_norm_first", "vision_pre_norm", "patch_bias", "pad_id", "eos_id", "dec_id", "label_smoothing"):
        assert getattr(ours.config, key) == getattr(cfg, key), key
    batch = blip_caption_batch(cfg, 6)
    images, ids, mask = batch["images"], batch["ids"], batch["attention_mask"]
    assert not mask.all() and (ids[:, 0] == cfg.dec_id).all()  # captions of different lengths, from [DEC]
    with torch.no_grad():
        ours_loss = blip_lm_loss_ours(ours, images, ids, mask)
        theirs_loss = blip_lm_loss_theirs(hf, images, ids, mask, ours.image_mean, ours.image_std)
    assert ours_loss.item() == pytest.approx(theirs_loss.item(), abs=1e-4)
    with pytest.raises(ValueError, match="post-LN"):
        hf_blip_like(BLIPConfig(**{**BLIP_CONFIG, **TINY}))  # the pre-LN default is not transformers' layout


def test_bench_blip_reports_both_timings():
    r = bench_blip(batch_size=4, repeats=2, warmup=1, threads=1, **TINY)
    for key in ("ours_ms", "theirs_ms", "ratio", "ours_cpu_ms", "theirs_cpu_ms"):
        assert r[key] > 0, key
    assert r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"], rel=2e-3)  # both sides rounded
    assert r["threads"] == 1 and r["device"] == "cpu" and r["batch_size"] == 4 and r["repeats"] == 2
    assert r["config"]["dim"] == 32 and r["config"]["patch_size"] == 8 and r["config"]["text_norm_first"] is False
    assert r["torch"] and r["transformers"]
    assert r["params_ours"] == r["params_theirs"] > 0  # the captioning path holds the same parameters


def test_cli_registers_bench_blip():
    from minivlm.cli import _cmd_bench_model, build_parser

    args = build_parser().parse_args(["bench", "blip", "--repeats", "3", "--threads", "1", "--batch-size", "8"])
    assert args.func is _cmd_bench_model and (args.action, args.repeats, args.threads, args.batch_size) == \
        ("blip", 3, 1, 8)
