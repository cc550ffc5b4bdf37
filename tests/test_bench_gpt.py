"""bench_gpt: our GPT's training step and cached greedy generation against transformers' GPT2LMHeadModel."""
import math
import sys
import types

import pytest
import torch

pytest.importorskip("transformers")

from minivlm.benchmarks import (  # noqa: E402
    bench_gpt,
    gpt_bench_batches,
    gpt_bench_models,
    gpt_generate_theirs,
    gpt_lm_loss_theirs,
    hf_gpt2_like,
)
from minivlm.losses import lm_loss  # noqa: E402
from minivlm.models.gpt import (
    LLM_SHAPE,  # noqa: E402
    GPTConfig,  # noqa: E402
)

TINY = dict(dim=32, depth=2, heads=2, max_len=24)


def test_benchmark_builds_the_same_model():
    """hf_gpt2_like has our configuration and gpt_bench_models gives both the same weights: the
    same loss and logits on the benchmark's batch and the same greedy tokens, so the benchmark
    compares like with like."""
    cfg = GPTConfig(**{**LLM_SHAPE, **TINY})
    ours, hf, version = gpt_bench_models(cfg, seed=0)
    h = hf.config
    assert version and (h.vocab_size, h.n_positions, h.n_embd, h.n_layer, h.n_head, h.n_inner) == \
        (cfg.vocab_size, 24, 32, 2, 2, 128)
    assert h.activation_function == "gelu_new" and h.layer_norm_epsilon == cfg.eps and h._attn_implementation == "sdpa"
    assert (h.bos_token_id, h.eos_token_id, h.pad_token_id) == (cfg.bos_id, cfg.eos_id, cfg.pad_id)
    assert ours.config == cfg  # our config kept (the course's pad id), not from_hf's
    ids, prompts = gpt_bench_batches(cfg, 6, prompt_len=5)
    assert ids.shape == (6, 24) and prompts.shape == (6, 5) and (prompts[:, 0] == cfg.bos_id).all()
    ours.eval(), hf.eval()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-5
        ours_loss, theirs_loss = lm_loss(ours(ids), ids), gpt_lm_loss_theirs(hf, ids)
    assert ours_loss.item() == pytest.approx(theirs_loss.item(), abs=1e-5)
    assert ours_loss.item() == pytest.approx(math.log(cfg.vocab_size), abs=0.5)  # untrained: about uniform

    new = 10
    mine, theirs = ours.generate(prompts, new, use_cache=True), gpt_generate_theirs(hf, prompts, new)
    assert theirs.shape == (6, 5 + new) and torch.equal(theirs[:, :5], prompts)
    compared = 0
    for row_ours, row_theirs in zip(mine[:, 5:].tolist(), theirs[:, 5:].tolist()):
        # transformers is held to exactly `new` tokens (eos suppressed): equal up to our first eos
        end = row_ours.index(cfg.eos_id) if cfg.eos_id in row_ours else new
        assert row_ours[:end] == row_theirs[:end]
        compared += end
    assert compared >= 5 * new  # most rows never emit eos: the comparison is not vacuous


def test_hf_gpt2_like_rejects_what_gpt2_cannot_express():
    with pytest.raises(ValueError, match="integer"):
        hf_gpt2_like(GPTConfig(**{**TINY, "mlp_ratio": 2.01}))
    with pytest.raises(ValueError, match="dropout=0"):
        hf_gpt2_like(GPTConfig(**{**TINY, "dropout": 0.1}))
    with pytest.raises(ValueError, match="exceeds max_len=24"):
        bench_gpt(batch_size=2, repeats=1, warmup=0, new_tokens=20, prompt_len=8, **TINY)


def test_bench_gpt_reports_both_timings():
    r = bench_gpt(batch_size=4, repeats=2, warmup=1, threads=1, new_tokens=6, **TINY)
    for key in ("train_ours_ms", "train_theirs_ms", "train_ratio", "train_ours_cpu_ms", "train_theirs_cpu_ms",
                "generate_ours_ms", "generate_theirs_ms", "ours_tokens_per_s", "theirs_tokens_per_s",
                "generate_ratio", "generate_ours_cpu_ms", "generate_theirs_cpu_ms"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["train_ratio"] == pytest.approx(r["train_ours_ms"] / r["train_theirs_ms"], rel=2e-3)  # both rounded
    assert r["new_tokens_ours"] == r["new_tokens_theirs"] == 6
    per_token = (r["generate_ours_ms"] / r["new_tokens_ours"]) / (r["generate_theirs_ms"] / r["new_tokens_theirs"])
    assert r["generate_ratio"] == pytest.approx(per_token, rel=2e-3)
    assert r["generate_ratio"] == pytest.approx(r["theirs_tokens_per_s"] / r["ours_tokens_per_s"], rel=2e-3)
    assert r["ours_tokens_per_s"] == pytest.approx(4 * 6 / (r["generate_ours_ms"] / 1000), rel=2e-3)
    assert r["threads"] == 1 and r["device"] == "cpu" and r["batch_size"] == 4 and r["repeats"] == 2
    assert r["config"]["dim"] == 32 and r["config"]["max_len"] == 24 and r["config"]["vocab_size"] == 603
    assert r["torch"] and r["transformers"]
    assert r["params_ours"] == r["params_theirs"] > 0  # tied heads: the same parameters on both sides


def test_cli_registers_bench_gpt(monkeypatch, capsys):
    from minivlm import cli

    args = cli.build_parser().parse_args(["bench", "gpt", "--repeats", "3", "--threads", "1", "--new-tokens", "4"])
    assert args.func is cli._cmd_bench_model and (args.action, args.repeats, args.threads, args.new_tokens) == \
        ("gpt", 3, 1, 4)
    with pytest.raises(SystemExit):  # a text model has no image size
        cli.build_parser().parse_args(["bench", "gpt", "--image-size", "32"])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "minivlm.benchmarks", types.SimpleNamespace(bench_gpt=lambda **kw: {"kw": kw}))
    assert cli.main(["bench", "gpt", "--new-tokens", "4", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert '"new_tokens": 4' in out and '"batch_size": 8' in out
