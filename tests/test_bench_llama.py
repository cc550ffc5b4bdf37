"""bench_llama: our GPT in the Llama layout (chapter 09) against transformers' LlamaForCausalLM,
a training step and cached greedy generation, through bench_gpt's code."""
import math
import sys
import types

import pytest
import torch

pytest.importorskip("transformers")

from minivlm.benchmarks import (  # noqa: E402
    bench_llama,
    gpt_bench_batches,
    gpt_bench_models,
    gpt_generate_theirs,
    gpt_lm_loss_theirs,
    hf_gpt2_like,
    hf_llama_like,
)
from minivlm.losses import lm_loss  # noqa: E402
from minivlm.models.gpt import (
    LLM_SHAPE,  # noqa: E402
    GPTConfig,  # noqa: E402
)

TINY = dict(dim=32, depth=2, heads=4, max_len=24)


@pytest.mark.parametrize("extra", [{}, {"kv_heads": 2, "tie_head": False}])
def test_benchmark_builds_the_same_llama(extra):
    """hf_llama_like has our configuration and gpt_bench_models gives both the same weights: the
    same logits and loss on the benchmark's batch and the same greedy tokens."""
    cfg = GPTConfig.llama(**{**LLM_SHAPE, **TINY, **extra})
    ours, hf, version = gpt_bench_models(cfg, seed=0)
    h = hf.config
    assert version and type(hf).__name__ == "LlamaForCausalLM" and h._attn_implementation == "sdpa"
    assert (h.vocab_size, h.max_position_embeddings, h.hidden_size, h.num_hidden_layers, h.num_attention_heads,
            h.intermediate_size) == (cfg.vocab_size, 24, 32, 2, 4, 88)  # 2/3 of 4 · 32, up to a multiple of 8
    assert h.num_key_value_heads == extra.get("kv_heads", 4) and h.tie_word_embeddings == extra.get("tie_head", True)
    assert h.rms_norm_eps == cfg.eps and not h.attention_bias and not h.mlp_bias
    assert ours.config == cfg
    ids, prompts = gpt_bench_batches(cfg, 6, prompt_len=5)
    ours.eval(), hf.eval()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-5
        ours_loss, theirs_loss = lm_loss(ours(ids), ids), gpt_lm_loss_theirs(hf, ids)
    assert ours_loss.item() == pytest.approx(theirs_loss.item(), abs=1e-5)
    new = 10
    mine, theirs = ours.generate(prompts, new, use_cache=True), gpt_generate_theirs(hf, prompts, new)
    compared = 0
    for row_ours, row_theirs in zip(mine[:, 5:].tolist(), theirs[:, 5:].tolist()):
        end = row_ours.index(cfg.eos_id) if cfg.eos_id in row_ours else new
        assert row_ours[:end] == row_theirs[:end]
        compared += end
    assert compared >= 5 * new


def test_each_reference_refuses_the_other_layout():
    with pytest.raises(ValueError, match=r"LlamaForCausalLM has the layout.*this config has \{'norm': 'layernorm'"):
        hf_llama_like(GPTConfig(**TINY, positions="rope"))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel has the layout.*this config has \{'norm': 'rmsnorm'"):
        hf_gpt2_like(GPTConfig(**TINY, norm="rmsnorm"))
    with pytest.raises(ValueError, match="dropout=0"):
        hf_llama_like(GPTConfig.llama(**TINY, dropout=0.1))


def test_bench_llama_reports_both_timings():
    r = bench_llama(batch_size=4, repeats=2, warmup=1, threads=1, new_tokens=6, **TINY)
    for key in ("train_ours_ms", "train_theirs_ms", "train_ratio", "generate_ours_ms", "generate_theirs_ms",
                "ours_tokens_per_s", "theirs_tokens_per_s", "generate_ratio"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["reference"] == "LlamaForCausalLM" and r["new_tokens_ours"] == r["new_tokens_theirs"] == 6
    c = r["config"]
    assert (c["norm"], c["positions"], c["mlp"], c["act"], c["bias"]) == ("rmsnorm", "rope", "glu", "silu", False)
    assert c["dim"] == 32 and c["vocab_size"] == 603 and r["params_ours"] == r["params_theirs"] > 0
    assert r["generate_ratio"] == pytest.approx(r["theirs_tokens_per_s"] / r["ours_tokens_per_s"], rel=2e-3)


def test_cli_registers_bench_llama(monkeypatch, capsys):
    from minivlm import cli

    args = cli.build_parser().parse_args(["bench", "llama", "--repeats", "3", "--new-tokens", "4"])
    assert args.func is cli._cmd_bench_model and (args.action, args.repeats, args.new_tokens) == ("llama", 3, 4)
    with pytest.raises(SystemExit):  # a text model has no image size
        cli.build_parser().parse_args(["bench", "llama", "--image-size", "32"])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "minivlm.benchmarks", types.SimpleNamespace(bench_llama=lambda **kw: {"kw": kw}))
    assert cli.main(["bench", "llama", "--new-tokens", "4", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert '"new_tokens": 4' in out and '"batch_size": 8' in out
