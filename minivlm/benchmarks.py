"""Speed checks of our models against reference implementations (chapter 02 for CLIP, 03 for
ViLT, 06 for BLIP, 09 for the GPT).

`bench_clip` times one full training step (forward, loss, backward, AdamW step) of our CLIP and
of Hugging Face transformers' CLIPModel built at the *same* configuration, on the same batch,
alternating the two in each repeat so that a machine slowing down or speeding up (thermal
throttling, another process) affects both alike. transformers is a development dependency
only, imported inside the function. `bench_vilt` does the same for a VQA step of our ViLT and
of transformers' ViltForQuestionAnswering, `bench_blip` for a captioning (LM) step of our BLIP
and of transformers' BlipForConditionalGeneration, `bench_gpt` for a language-modelling step and
for greedy generation with the KV cache of our GPT and of transformers' GPT2LMHeadModel, and
`bench_llama` the same for our GPT in the Llama layout and transformers' LlamaForCausalLM.

    python -m minivlm.benchmarks                       # the chapter's default config
    python -m minivlm.benchmarks --dim 256 --depth 6 --image-size 64 --patch-size 8
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from minivlm.data import ShapesWorld, Tokenizer
from minivlm.data.pairs import vqa_batches
from minivlm.losses import clip_loss, lm_loss
from minivlm.models.blip import BLIP, BLIP_CONFIG, BLIPConfig
from minivlm.models.clip import CLIP, CLIPConfig
from minivlm.models.gpt import GPT, LLAMA, LLM_SHAPE, GPTConfig
from minivlm.models.vilt import ViLT, ViLTConfig
from minivlm.nn import masks
from minivlm.nn.blocks import mlp_width
from minivlm.nn.gated import GatedCrossAttentionBlock
from minivlm.nn.pooling import PerceiverResampler
from minivlm.utils import check_device, check_int, count_parameters

# our activation names → transformers' ACT2FN names for the same function
HF_ACT = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}


def _transformers(bench: str):
    """The transformers module, imported only when a benchmark runs (a development dependency)."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{bench} compares against Hugging Face transformers: pip install transformers "
                          "(a development dependency; the library itself never needs it)") from e
    return transformers


def hf_clip_like(config):
    """A randomly initialised transformers CLIPModel with the same architecture as our CLIP(config)."""
    transformers = _transformers("bench_clip")
    common = dict(num_attention_heads=None, hidden_act=HF_ACT[config.act], layer_norm_eps=config.eps,
                  attention_dropout=config.dropout)
    text = dict(common, hidden_size=config.text_dim, intermediate_size=int(config.text_dim * config.mlp_ratio),
                num_hidden_layers=config.text_depth, num_attention_heads=config.text_heads,
                vocab_size=config.vocab_size, max_position_embeddings=config.context_length,
                eos_token_id=config.eos_id, pad_token_id=config.pad_id, bos_token_id=config.pad_id)
    vision = dict(common, hidden_size=config.vision_dim, intermediate_size=int(config.vision_dim * config.mlp_ratio),
                  num_hidden_layers=config.vision_depth, num_attention_heads=config.vision_heads,
                  image_size=config.image_size, patch_size=config.patch_size, num_channels=3)
    hf_config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.embed_dim)
    hf_config._attn_implementation = "sdpa"  # the fused kernel, as our MultiHeadAttention uses
    return transformers.CLIPModel(hf_config), transformers.__version__


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _step_race(step_ours, ours, step_theirs, theirs, warmup: int, repeats: int, dev: torch.device,
               extra: dict) -> dict:
    """Time a training step of ours and theirs, alternating, each with its own AdamW (lr 1e-4):
    `_time_alternating`'s figures with the run's settings and `extra`."""
    runs = {"ours": (step_ours, torch.optim.AdamW(ours.parameters(), lr=1e-4)),
            "theirs": (step_theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4))}
    return {**_time_alternating(runs, warmup, repeats, dev), "repeats": repeats, "warmup": warmup, **extra}


def _time_alternating(runs: dict, warmup: int, repeats: int, dev: torch.device) -> dict:
    """Time {"ours": (step, opt), "theirs": (step, opt)}: warmup + repeats rounds, each running
    both steps, alternating who goes first. Returns the median wall and CPU milliseconds and
    the ratio ours / theirs."""
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    cpu_times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(warmup + repeats):
        order = ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")  # alternate who goes first
        for name in order:
            step, opt = runs[name]
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            step(opt)
            _sync(dev)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
                cpu_times[name].append((time.process_time() - c0) * 1000)
    ours_ms, theirs_ms = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {
        "ours_ms": round(ours_ms, 3),
        "theirs_ms": round(theirs_ms, 3),
        "ratio": float(f"{ours_ms / theirs_ms:.4g}"),  # 4 significant figures, also for a small ratio
        # CPU time of the process (all threads): on a busy shared machine it is less
        # disturbed by other processes than wall time
        "ours_cpu_ms": round(statistics.median(cpu_times["ours"]), 3),
        "theirs_cpu_ms": round(statistics.median(cpu_times["theirs"]), 3),
    }


def bench_clip(batch_size: int = 64, repeats: int = 20, warmup: int = 3, device: str | None = None,
               threads: int | None = None, seed: int = 0, **config) -> dict:
    """Median milliseconds per training step of our CLIP and of transformers' CLIPModel.

    config: CLIPConfig fields (image_size, vision_dim, text_depth, ...); both models get them.
    device: "cpu" (default) or e.g. "cuda". threads: torch intra-op threads (None: leave as is).
    Returns a dict: ours_ms, theirs_ms (wall), ratio (ours / theirs, < 1 means ours is faster),
    ours_cpu_ms, theirs_cpu_ms (process CPU time), the config, parameter counts, torch / transformers versions, threads and device.
    """

    with _bench_setup(batch_size, repeats, warmup, device, threads) as dev:
        cfg = CLIPConfig(**config)
        torch.manual_seed(seed)
        ours = CLIP(cfg).to(dev).train()
        hf, hf_version = hf_clip_like(cfg)
        hf = hf.to(dev).train()
        n_ours, n_theirs = count_parameters(ours), count_parameters(hf)

        world = ShapesWorld(seed=seed, image_size=cfg.image_size)
        data = world.batch(batch_size)
        ids, mask = Tokenizer.from_world()(data["captions"], cfg.context_length)
        images, ids, mask = data["images"].to(dev), ids.to(dev), mask.to(dev)
        mean, std = ours.image_mean, ours.image_std

        def step_ours(opt):
            opt.zero_grad(set_to_none=True)
            img, txt, scale = ours(images, ids, mask)
            clip_loss(img, txt, scale).backward()
            opt.step()

        def step_theirs(opt):
            opt.zero_grad(set_to_none=True)
            pixel_values = (images - mean) / std  # the same normalisation our model does inside
            out = hf(input_ids=ids, pixel_values=pixel_values, attention_mask=mask, return_loss=True)
            out.loss.backward()
            opt.step()

        return _step_race(step_ours, ours, step_theirs, hf, warmup, repeats, dev,
                          {"batch_size": batch_size, "config": asdict(cfg), "params_ours": n_ours,
                           "params_theirs": n_theirs, **_versions(hf_version, dev)})


def hf_vilt_like(config):
    """A randomly initialised transformers ViltForQuestionAnswering with the same architecture as
    our ViLT(config) and its VQA head (patches mode only: transformers has no regions ViLT)."""
    transformers = _transformers("bench_vilt")
    if config.visual != "patches":
        raise ValueError(f"transformers' ViLT embeds patches only, got visual={config.visual!r}")
    hf_config = transformers.ViltConfig(
        vocab_size=config.vocab_size, max_position_embeddings=config.max_text_len, hidden_size=config.dim,
        num_hidden_layers=config.depth, num_attention_heads=config.heads,
        intermediate_size=int(config.dim * config.mlp_ratio), hidden_act=HF_ACT[config.act],
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
        layer_norm_eps=config.eps, image_size=config.image_size, patch_size=config.patch_size, num_channels=3,
        qkv_bias=True, max_image_length=-1, pad_token_id=config.pad_id,
        id2label=dict(enumerate(config.answers)), label2id={a: i for i, a in enumerate(config.answers)},
    )
    # transformers' ViLT has only the eager attention (matmul, softmax, matmul): no
    # _attn_implementation to choose, unlike CLIP's "sdpa"
    return transformers.ViltForQuestionAnswering(hf_config), transformers.__version__


def bench_vilt(batch_size: int = 64, repeats: int = 20, warmup: int = 3, device: str | None = None,
               threads: int | None = None, seed: int = 0, **config) -> dict:
    """Median milliseconds per VQA training step of our ViLT and of transformers'
    ViltForQuestionAnswering (chapter 03).

    One step: forward on a ShapesWorld VQA batch (`vqa_batches`), cross-entropy of the VQA
    logits, backward, AdamW step. config: ViLTConfig fields (dim, depth, image_size, ...);
    both models get them. device, threads and the returned dict as in `bench_clip`.
    """


    with _bench_setup(batch_size, repeats, warmup, device, threads) as dev:
        cfg = ViLTConfig(**config)
        torch.manual_seed(seed)
        ours = ViLT(cfg).to(dev).train()
        hf, hf_version = hf_vilt_like(cfg)
        hf = hf.to(dev).train()
        n_ours, n_theirs = count_parameters(ours), count_parameters(hf)
        n_ours -= count_parameters(ours.itm_head) + count_parameters(ours.mlm_transform) + \
            count_parameters(ours.mlm_norm) + ours.mlm_bias.numel()  # heads a VQA step never uses

        batch = vqa_batches(batch_size, seed, image_size=cfg.image_size, max_text_len=cfg.max_text_len,
                            answers=cfg.answers)(0)
        images, ids, mask, labels = (batch[k].to(dev) for k in ("images", "ids", "attention_mask", "labels"))
        mean, std = ours.image_mean, ours.image_std

        def step_ours(opt):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ours.vqa_logits(ours.pool(ours(images, ids, mask))), labels).backward()
            opt.step()

        def step_theirs(opt):
            opt.zero_grad(set_to_none=True)
            pixel_values = (images - mean) / std  # the same normalisation our model does inside
            out = hf(input_ids=ids, attention_mask=mask.long(), pixel_values=pixel_values)
            F.cross_entropy(out.logits, labels).backward()
            opt.step()

        return _step_race(step_ours, ours, step_theirs, hf, warmup, repeats, dev,
                          {"batch_size": batch_size, "config": asdict(cfg), "params_ours": n_ours,
                           "params_theirs": n_theirs, **_versions(hf_version, dev)})


def hf_blip_like(config):
    """A randomly initialised transformers BlipForConditionalGeneration with the same architecture
    as the captioning path of our BLIP(config): its ViT (no pre-norm, a patch bias) and its
    post-LN decoder with cross-attention and the LM head tied to the word embeddings."""
    transformers = _transformers("bench_blip")
    if config.text_norm_first or config.vision_pre_norm or not config.patch_bias:
        raise ValueError("transformers' BLIP is post-LN on the text side, has no LayerNorm before its ViT and a "
                         "patch bias: use text_norm_first=False, vision_pre_norm=False, patch_bias=True")
    vision = dict(hidden_size=config.vision_dim, intermediate_size=int(config.vision_dim * config.mlp_ratio),
                  num_hidden_layers=config.vision_depth, num_attention_heads=config.vision_heads,
                  image_size=config.image_size, patch_size=config.patch_size, hidden_act=HF_ACT[config.act],
                  layer_norm_eps=config.eps, attention_dropout=0.0)
    text = dict(vocab_size=config.vocab_size, hidden_size=config.dim,
                intermediate_size=int(config.dim * config.mlp_ratio), num_hidden_layers=config.text_depth, num_attention_heads=config.heads,
                max_position_embeddings=config.max_text_len, hidden_act=HF_ACT[config.act],
                layer_norm_eps=config.text_eps, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                pad_token_id=config.pad_id, bos_token_id=config.dec_id, sep_token_id=config.eos_id,
                eos_token_id=config.eos_id, label_smoothing=config.label_smoothing)
    # transformers' BLIP attention is eager only (matmul, softmax, matmul), as its masks assume
    hf_config = transformers.BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=config.embed_dim,
                                        attn_implementation="eager")
    return transformers.BlipForConditionalGeneration(hf_config), transformers.__version__


def blip_caption_batch(config, batch_size: int, seed: int = 0) -> dict:
    """A ShapesWorld captioning batch for `bench_blip`: images, ids "[DEC] words <eos>" (the
    decoder's input and targets) and their attention mask."""

    data = ShapesWorld(seed=seed, image_size=config.image_size).batch(batch_size)
    ids, mask = Tokenizer.from_world()(data["captions"], config.max_text_len, add_bos=True, add_eos=True)
    ids = ids.clone()
    ids[:, 0] = config.dec_id  # as BLIP.with_first_token(ids, "decoder")
    return {"images": data["images"], "ids": ids, "attention_mask": mask.bool()}


def blip_lm_loss_ours(model, images, ids, mask) -> torch.Tensor:
    """Our BLIP's captioning loss: encode_image, the MED decoder mode, lm_logits, lm_loss."""

    image_tokens, _ = model.encode_image(images)
    logits = model.lm_logits(model.text_forward(ids, mask, "decoder", image_tokens))
    return lm_loss(logits, ids, mask, model.config.label_smoothing)


def blip_lm_loss_theirs(hf, images, ids, mask, mean, std) -> torch.Tensor:
    """transformers' loss for the same step: padded targets ignored (-100), the label smoothing
    of its text config."""
    pixel_values = (images - mean) / std  # the same normalisation our model does inside
    return hf(pixel_values=pixel_values, input_ids=ids, attention_mask=mask.long(),
              labels=ids.masked_fill(~mask, -100)).loss


def bench_blip(batch_size: int = 64, repeats: int = 20, warmup: int = 3, device: str | None = None,
               threads: int | None = None, seed: int = 0, **config) -> dict:
    """Median milliseconds per captioning training step of our BLIP and of transformers'
    BlipForConditionalGeneration (chapter 06).

    One step: encode the images, run the MED decoder mode with cross-attention to them, LM
    logits, next-word loss with label smoothing 0.1, backward, AdamW step; transformers' model
    does the same with `labels`. config: BLIPConfig fields over the chapter's shape
    (`minivlm.models.blip.BLIP_CONFIG`), always post-LN text, no ViT pre-norm, a patch bias and
    label smoothing 0.1 (transformers' layout and loss; the zoo BLIP trains without smoothing). device, threads and the returned dict as in `bench_clip`;
    params_ours counts only what the step uses (not the encoder's self-attention, the ITC
    projections, the ITM head or the temperature, which transformers' captioner lacks).
    """

    with _bench_setup(batch_size, repeats, warmup, device, threads) as dev:
        cfg = BLIPConfig(**{**BLIP_CONFIG, **config, "text_norm_first": False, "vision_pre_norm": False,
                            "patch_bias": True, "label_smoothing": 0.1})  # transformers' captioner smooths by 0.1
        torch.manual_seed(seed)
        ours = BLIP(cfg).to(dev).train()
        hf, hf_version = hf_blip_like(cfg)
        hf = hf.to(dev).train()
        unused = [ours.image_projection, ours.text_projection, ours.itm_head]
        unused += [m for b in ours.blocks for m in (b.attn, b.norm1)]
        n_ours = count_parameters(ours) - sum(count_parameters(m) for m in unused) - ours.log_scale.numel()
        n_theirs = count_parameters(hf)

        batch = blip_caption_batch(cfg, batch_size, seed)
        images, ids, mask = (batch[k].to(dev) for k in ("images", "ids", "attention_mask"))
        mean, std = ours.image_mean, ours.image_std

        def step_ours(opt):
            opt.zero_grad(set_to_none=True)
            blip_lm_loss_ours(ours, images, ids, mask).backward()
            opt.step()

        def step_theirs(opt):
            opt.zero_grad(set_to_none=True)
            blip_lm_loss_theirs(hf, images, ids, mask, mean, std).backward()
            opt.step()

        return _step_race(step_ours, ours, step_theirs, hf, warmup, repeats, dev,
                          {"batch_size": batch_size, "config": asdict(cfg), "params_ours": n_ours,
                           "params_theirs": n_theirs, **_versions(hf_version, dev)})


def hf_gpt2_like(config):
    """A randomly initialised transformers GPT2LMHeadModel with the same architecture as our
    GPT(config) (chapter 09): context n_positions = max_len, n_inner = our MLP width, no
    dropout, the LM head tied to the token embeddings, the fused attention (sdpa)."""
    transformers = _transformers("bench_gpt")
    _check_layout(config, "GPT2LMHeadModel", dict(norm="layernorm", positions="learned", mlp="mlp", bias=True,
                                                  kv_heads=None, tie_head=True))
    n_inner = config.mlp_hidden or config.dim * config.mlp_ratio
    if n_inner != int(n_inner):
        raise ValueError(f"GPT-2's MLP width is an integer: dim * mlp_ratio = {n_inner}")
    if config.dropout:
        raise ValueError(f"bench_gpt times the same computation on both sides: use dropout=0, got {config.dropout}")
    # GPT-2 names its tanh-approximated GELU "gelu_new" (the function of our "gelu_tanh")
    act = "gelu_new" if config.act == "gelu_tanh" else HF_ACT[config.act]
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.dim, n_layer=config.depth,
        n_head=config.heads, n_inner=int(n_inner), activation_function=act, layer_norm_epsilon=config.eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=config.bos_id, eos_token_id=config.eos_id,
        pad_token_id=config.pad_id, attn_implementation="sdpa")  # the fused kernel, as our attention uses
    return transformers.GPT2LMHeadModel(hf_config), transformers.__version__


def hf_llama_like(config):
    """A randomly initialised transformers LlamaForCausalLM with the same architecture as our
    GPT(config) in the Llama layout (chapter 09): intermediate_size = our MLP width, rope_theta
    = rope_base, grouped-query attention with kv_heads, biases and head tying as ours, the fused
    attention (sdpa)."""

    transformers = _transformers("bench_llama")
    _check_layout(config, "LlamaForCausalLM", dict(norm="rmsnorm", positions="rope", mlp="glu", act="silu"))
    if config.dropout:
        raise ValueError(f"the benchmark times the same computation on both sides: use dropout=0, got {config.dropout}")
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.depth,
        intermediate_size=mlp_width(config.dim, config.mlp_ratio, config.mlp, config.mlp_hidden),
        num_attention_heads=config.heads, num_key_value_heads=config.kv_heads or config.heads,
        max_position_embeddings=config.max_len, rms_norm_eps=config.eps, rope_theta=config.rope_base,
        hidden_act="silu", attention_bias=config.bias, mlp_bias=config.bias, tie_word_embeddings=config.tie_head,
        bos_token_id=config.bos_id, eos_token_id=config.eos_id, pad_token_id=config.pad_id,
        attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(hf_config), transformers.__version__


def _check_layout(config, reference: str, layout: dict) -> None:
    wrong = {k: getattr(config, k) for k, v in layout.items() if getattr(config, k) != v}
    if wrong:
        raise ValueError(f"transformers' {reference} has the layout {layout}; this config has {wrong}")


def hf_gpt_like(config):
    """transformers' model of our GPT(config): LlamaForCausalLM for rotary positions (the Llama
    layout), GPT2LMHeadModel for learned ones; each refuses what it cannot express."""
    return (hf_llama_like if config.positions == "rope" else hf_gpt2_like)(config)


def gpt_bench_models(config, seed: int = 0):
    """(ours, theirs, transformers version): transformers' GPT-2 or Llama at our config
    (`hf_gpt_like`), randomly initialised, and our GPT(config) holding the same weights (copied
    with `GPT.from_hf`), so that the two compute the same thing."""

    torch.manual_seed(seed)
    hf, hf_version = hf_gpt_like(config)
    ours = GPT(config)  # our config (the course's pad id; from_hf's would be GPT-2's, pad = eos)
    ours.load_state_dict(GPT.from_hf(hf).state_dict())
    return ours, hf, hf_version


def gpt_lm_loss_theirs(hf, ids: torch.Tensor) -> torch.Tensor:
    """transformers' next-token loss on ids (B, T): `labels` are shifted inside, as `lm_loss` does."""
    return hf(input_ids=ids, labels=ids).loss


def gpt_generate_theirs(hf, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """transformers' greedy search with its KV cache, exactly `new_tokens` tokens per row (eos is
    suppressed until then), every other decoding default off."""
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, num_beams=1,
                       use_cache=True, min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                       repetition_penalty=1.0, no_repeat_ngram_size=0, pad_token_id=hf.config.pad_token_id)


def gpt_bench_batches(config, batch_size: int, prompt_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids for `bench_gpt`: a training batch (B, max_len), the full context, and
    prompts (B, prompt_len), "<bos>" then random tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch_size, config.max_len), generator=g)
    prompts = torch.randint(0, config.vocab_size, (batch_size, prompt_len), generator=g)
    prompts[:, 0] = config.bos_id
    return ids, prompts


def bench_gpt(batch_size: int = 64, repeats: int = 20, warmup: int = 3, device: str | None = None,
              threads: int | None = None, new_tokens: int = 32, prompt_len: int = 8, seed: int = 0,
              **config) -> dict:
    """Our GPT against transformers' GPT2LMHeadModel at the zoo LLM's shape (chapter 09), with
    the same weights (in the Llama layout, config `GPTConfig.llama`'s fields: against
    LlamaForCausalLM, see `bench_llama`).

    Training: median milliseconds per step (forward on random ids of the full context, next-token
    loss, backward, AdamW step). Generation: greedy decoding with the KV cache of `new_tokens`
    tokens after prompts of `prompt_len` tokens, ours `GPT.generate(use_cache=True)`, theirs
    `generate(use_cache=True)`; transformers is held to exactly new_tokens (min_new_tokens), and
    tokens per second count the tokens each side actually generated (ours stops early only if
    every row has emitted eos). config: GPTConfig fields over `minivlm.zoo.recipes.llm.LLM_SHAPE` (GPT-2's layout).

    Returns a dict: train_ours_ms, train_theirs_ms, train_ratio (ours / theirs, < 1: ours is
    faster) and their CPU times; generate_ours_ms, generate_theirs_ms (one generate call),
    ours_tokens_per_s, theirs_tokens_per_s, generate_ratio (ours / theirs time per token) and
    their CPU times; the config, the reference model's class, parameter counts, versions,
    threads and device.
    """

    check_int("new_tokens", new_tokens)
    check_int("prompt_len", prompt_len)
    with _bench_setup(batch_size, repeats, warmup, device, threads) as dev:
        cfg = GPTConfig(**{**LLM_SHAPE, **config})
        if prompt_len + new_tokens > cfg.max_len:
            raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds max_len={cfg.max_len}")
        ours, hf, hf_version = gpt_bench_models(cfg, seed)
        ours, hf = ours.to(dev).train(), hf.to(dev).train()
        ids, prompts = (t.to(dev) for t in gpt_bench_batches(cfg, batch_size, prompt_len, seed))

        def train_ours(opt):
            opt.zero_grad(set_to_none=True)
            lm_loss(ours(ids), ids).backward()
            opt.step()

        def train_theirs(opt):
            opt.zero_grad(set_to_none=True)
            gpt_lm_loss_theirs(hf, ids).backward()
            opt.step()

        runs = {"ours": (train_ours, torch.optim.AdamW(ours.parameters(), lr=1e-4)),
                "theirs": (train_theirs, torch.optim.AdamW(hf.parameters(), lr=1e-4))}
        train = _time_alternating(runs, warmup, repeats, dev)

        ours.eval()
        hf.eval()
        generated = {}

        def generate_ours(_):
            generated["ours"] = ours.generate(prompts, new_tokens, use_cache=True).shape[1] - prompt_len

        def generate_theirs(_):
            generated["theirs"] = gpt_generate_theirs(hf, prompts, new_tokens).shape[1] - prompt_len

        gen = _time_alternating({"ours": (generate_ours, None), "theirs": (generate_theirs, None)}, warmup,
                                repeats, dev)
        tokens = {k: batch_size * n for k, n in generated.items()}  # greedy: the same count every call
        per_s = {k: tokens[k] / (gen[f"{k}_ms"] / 1000) for k in tokens}
        return {
            "train_ours_ms": train["ours_ms"], "train_theirs_ms": train["theirs_ms"], "train_ratio": train["ratio"],
            "train_ours_cpu_ms": train["ours_cpu_ms"], "train_theirs_cpu_ms": train["theirs_cpu_ms"],
            "generate_ours_ms": gen["ours_ms"], "generate_theirs_ms": gen["theirs_ms"],
            "ours_tokens_per_s": round(per_s["ours"], 1), "theirs_tokens_per_s": round(per_s["theirs"], 1),
            "generate_ratio": float(f"{per_s['theirs'] / per_s['ours']:.4g}"),  # time per token, ours / theirs
            "generate_ours_cpu_ms": gen["ours_cpu_ms"], "generate_theirs_cpu_ms": gen["theirs_cpu_ms"],
            "new_tokens_ours": generated["ours"], "new_tokens_theirs": generated["theirs"],
            "prompt_len": prompt_len, "batch_size": batch_size, "repeats": repeats, "warmup": warmup,
            "config": asdict(cfg), "reference": type(hf).__name__, "params_ours": count_parameters(ours),
            "params_theirs": count_parameters(hf), **_versions(hf_version, dev)}


def bench_llama(batch_size: int = 64, repeats: int = 20, warmup: int = 3, device: str | None = None,
                threads: int | None = None, new_tokens: int = 32, prompt_len: int = 8, seed: int = 0,
                **config) -> dict:
    """`bench_gpt` in the Llama layout (chapter 09): our GPT with `GPTConfig.llama`'s fields
    (RMSNorm, RoPE, SwiGLU, no biases) at the zoo LLM's shape against transformers'
    LlamaForCausalLM with the same weights: one training step and greedy generation with the KV
    cache. config: more GPTConfig fields (kv_heads, tie_head, ...). Returns bench_gpt's dict."""

    return bench_gpt(batch_size, repeats, warmup, device, threads, new_tokens, prompt_len, seed,
                     **{**LLAMA, **config})


def bench_flamingo(batch_size: int = 32, repeats: int = 20, warmup: int = 3, device: str | None = None,
                   threads: int | None = None, seed: int = 0, dim: int = 64, heads: int = 4, depth: int = 4,
                   n_latents: int = 8, images: int = 3, tokens: int = 65, text_len: int = 64) -> dict:
    """Median milliseconds per training step of Flamingo's trainable parts, ours against lucidrains'
    flamingo-pytorch at the same configuration: a 2-layer Perceiver Resampler over each image's
    `tokens` tokens, then `depth` gated cross-attention blocks (gates opened to 0.5) over text of
    `text_len` tokens with `images` images per document, loss = the mean square of the output.
    Returns the `_step_race` figures (ratio = ours / theirs; the goal is <= 1)."""
    try:
        import flamingo_pytorch as fp
    except ImportError as exc:  # a development dependency, installed by `make install`
        raise ValueError(f"bench flamingo needs flamingo-pytorch (make install): {exc}") from exc

    for name, value in (("dim", dim), ("heads", heads), ("depth", depth), ("n_latents", n_latents),
                        ("images", images), ("tokens", tokens), ("text_len", text_len)):
        check_int(name, value)
    with _bench_setup(batch_size, repeats, warmup, device, threads) as dev:
        torch.manual_seed(seed)
        ours = torch.nn.ModuleDict({
            "resampler": PerceiverResampler(dim, depth=2, n_latents=n_latents, heads=heads, ff_mult=4),
            "blocks": torch.nn.ModuleList(GatedCrossAttentionBlock(dim, heads) for _ in range(depth))}).to(dev)
        theirs = torch.nn.ModuleDict({
            "resampler": fp.PerceiverResampler(dim=dim, depth=2, dim_head=dim // heads, heads=heads,
                                               num_latents=n_latents, num_media_embeds=1),
            "blocks": torch.nn.ModuleList(fp.GatedCrossAttentionBlock(dim=dim, dim_head=dim // heads, heads=heads)
                                          for _ in range(depth))}).to(dev)
        with torch.no_grad():
            for model in (ours, theirs):
                for block in model["blocks"]:
                    block.attn_gate.fill_(0.5), block.ff_gate.fill_(0.5)
        g = torch.Generator().manual_seed(seed)
        media = torch.randn(batch_size, images, tokens, dim, generator=g).to(dev)
        x = torch.randn(batch_size, text_len, dim, generator=g).to(dev)
        loc = torch.zeros(batch_size, text_len, dtype=torch.bool)
        for row in range(batch_size):
            loc[row, torch.randperm(text_len, generator=g)[:images]] = True
        loc = loc.to(dev)
        mask = masks.media(loc, images, n_latents)

        def step_ours(opt):
            opt.zero_grad(set_to_none=True)
            visual = ours["resampler"](media.flatten(0, 1)).unflatten(0, (batch_size, images)).flatten(1, 2)
            h = x
            for block in ours["blocks"]:
                h = block(h, visual, mask)
            h.pow(2).mean().backward()
            opt.step()

        def step_theirs(opt):
            opt.zero_grad(set_to_none=True)
            visual = theirs["resampler"](media.flatten(0, 1)[:, None]).unflatten(0, (batch_size, images))[:, :, 0]
            h = x
            for block in theirs["blocks"]:
                h = block(h, visual, media_locations=loc)
            h.pow(2).mean().backward()
            opt.step()

        return _step_race(step_ours, ours, step_theirs, theirs, warmup, repeats, dev, {
            "batch_size": batch_size, "config": dict(dim=dim, heads=heads, depth=depth, n_latents=n_latents,
                                                     images=images, tokens=tokens, text_len=text_len),
            "params_ours": count_parameters(ours), "params_theirs": count_parameters(theirs),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev)})


@contextlib.contextmanager
def _bench_setup(batch_size: int, repeats: int, warmup: int, device: str | None, threads: int | None):
    """Check the arguments, set torch's threads for the run (restored after), yield the device."""
    if repeats < 1 or warmup < 0 or batch_size < 2:
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch_size >= 2; got {repeats}, {warmup}, {batch_size}")
    dev = check_device("device", device) or torch.device("cpu")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield dev
    finally:
        torch.set_num_threads(old_threads)


def _versions(hf_version: str, dev: torch.device) -> dict:
    return {"torch": torch.__version__, "transformers": hf_version, "threads": torch.get_num_threads(),
            "device": str(dev)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Time a CLIP training step: ours vs transformers' CLIPModel.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dim", type=int, help="vision_dim = text_dim = embed_dim")
    p.add_argument("--depth", type=int, help="vision_depth = text_depth")
    p.add_argument("--heads", type=int, help="vision_heads = text_heads")
    p.add_argument("--image-size", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--act", choices=sorted(HF_ACT))
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--config", default="{}", help="more CLIPConfig fields as JSON")
    a = p.parse_args(argv)
    config = json.loads(a.config)
    for field, value in (("dim", a.dim), ("depth", a.depth), ("heads", a.heads)):
        if value is not None:
            keys = ("vision", "text", "embed") if field == "dim" else ("vision", "text")
            config.update({f"{k}_{field}": value for k in keys})
    for key in ("image_size", "patch_size", "act"):
        if getattr(a, key) is not None:
            config[key] = getattr(a, key)
    result = bench_clip(a.batch_size, a.repeats, a.warmup, device=a.device, threads=a.threads, **config)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
