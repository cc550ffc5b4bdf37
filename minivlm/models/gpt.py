"""A tiny GPT: the decoder-only language model that chapters 10-18 keep frozen (chapter 09).

Radford, Wu, Child, Luan, Amodei and Sutskever, "Language Models are Unsupervised Multitask
Learners" (GPT-2), 2019; Karpathy's nanoGPT for the layout.

The model is chapter 01's text Transformer, causal, with a language-modelling head tied to the
token embeddings (the same matrix reads words in and writes them out: fewer weights, and GPT-2
does it too):

    ids (B, T) -> token + position embeddings -> pre-LN blocks, causal mask -> final LN
               -> h @ Eᵀ -> next-token logits (B, T, V)

It is trained on `minivlm.data.worldtext`: scene text and the world facts no image-text data
states. Decoding goes through chapter 06's `minivlm.generate`, with a KV cache behind it
(`minivlm.nn.attention.KVCache`): each step feeds the new token only.

The same model in the Llama layout (Touvron et al., "LLaMA", 2023), one config option per
change, GPT-2's layout the default (`GPTConfig.llama()` turns them all on):

    norm="rmsnorm"      RMSNorm for LayerNorm (no mean, no bias)
    positions="rope"    rotary positions inside attention, no position table (`minivlm.nn.rope`)
    mlp="glu", act="silu"   the SwiGLU MLP, down(silu(gate(x)) · up(x))
    bias=False          no bias in any attention or MLP linear
    kv_heads < heads    grouped-query attention (Llama 2-3, SmolLM)
    tie_head=False      a separate output head (Llama's own checkpoints)

`GPT.from_hf` loads a `transformers` GPT2LMHeadModel's or LlamaForCausalLM's weights into this
model: with the checkpoint's own tokenizer (anything with `encode(text) -> ids` and
`decode(ids) -> text`), `complete` runs real GPT-2 or a real Llama in the from-scratch code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.data.incontext import ShotItem
from minivlm.data.tokenizer import Tokenizer
from minivlm.data.worldtext import RecallItem, WorldText
from minivlm.eval import answer_hits, interval, perplexity
from minivlm.generate import generate
from minivlm.losses import lm_loss
from minivlm.nn.attention import KVCache
from minivlm.nn.blocks import ACTIVATIONS, MLPS, NORMS
from minivlm.nn.text import TextTransformer
from minivlm.utils import check_int, check_number, check_strings, check_tensor, eval_mode, unwrap


@dataclass
class GPTConfig:
    vocab_size: int | None = None  # None: the course tokenizer's
    max_len: int = 64  # the context: prompt and generated tokens together
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    act: str = "gelu_tanh"  # GPT-2's "gelu_new"
    eps: float = 1e-5
    dropout: float = 0.0
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    # the Llama layout's options (chapter 09); the defaults are GPT-2's
    norm: str = "layernorm"  # or "rmsnorm"
    positions: str = "learned"  # or "rope": rotary, no position table
    rope_base: float = 10000.0  # RoPE's θ: the slowest pair turns once per 2π·rope_base positions
    mlp: str = "mlp"  # or "glu": a gated MLP, SwiGLU with act="silu"
    mlp_hidden: int | None = None  # None: int(dim · mlp_ratio), 2/3 of it (rounded up to 8s) for "glu"
    bias: bool = True  # False: no bias in attention and MLP linears
    kv_heads: int | None = None  # fewer key/value heads than heads: grouped-query attention; None: heads
    tie_head: bool = True  # False: an output head of its own instead of the token embeddings

    @classmethod
    def llama(cls, **overrides) -> "GPTConfig":
        """The Llama layout (RMSNorm, RoPE, SwiGLU, no biases), any field overridden."""
        return cls(**{**LLAMA, **overrides})

    def __post_init__(self):
        if None in (self.vocab_size, self.pad_id, self.bos_id, self.eos_id):

            tok = Tokenizer.from_world()
            if self.vocab_size is None:
                self.vocab_size = len(tok)
            for name in ("pad_id", "bos_id", "eos_id"):
                if getattr(self, name) is None:
                    setattr(self, name, getattr(tok, name))
        for name in ("vocab_size", "max_len", "dim", "depth", "heads"):
            check_int(name, getattr(self, name))
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 (a token and the one it predicts), got {self.max_len}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        check_number("mlp_ratio", self.mlp_ratio, 0, math.inf, lo_open=True, hi_open=True)
        check_number("eps", self.eps, 0, 1.0, lo_open=True)
        check_number("dropout", self.dropout, 0, 1, hi_open=True)
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an int in [0, {self.vocab_size - 1}], got {value!r}")
        for name, choices in (("norm", NORMS), ("positions", ("learned", "rope")), ("mlp", MLPS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        check_number("rope_base", self.rope_base, 1, math.inf, lo_open=True, hi_open=True)
        if self.positions == "rope" and (self.dim // self.heads) % 2:
            raise ValueError(f"RoPE rotates channel pairs: dim / heads = {self.dim // self.heads} must be even")
        if self.mlp_hidden is not None:
            check_int("mlp_hidden", self.mlp_hidden)
        if self.kv_heads is not None:
            check_int("kv_heads", self.kv_heads)
            if self.heads % self.kv_heads:
                raise ValueError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        for name in ("bias", "tie_head"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


# GPTConfig.llama()'s fields: what the Llama layout changes in GPT-2's
LLAMA = dict(norm="rmsnorm", positions="rope", mlp="glu", act="silu", bias=False)


class GPT(nn.Module):
    """Token (+ position) embeddings, `depth` causal pre-norm blocks, a final norm and a head
    tied to the token embeddings (or its own, tie_head=False). forward(ids) -> next-token
    logits (B, T, V)."""

    def __init__(self, config: GPTConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = c = config or GPTConfig()
        self.text = TextTransformer(c.vocab_size, max_len=c.max_len, dim=c.dim, depth=c.depth, heads=c.heads,
                                    mlp_ratio=c.mlp_ratio, causal=True, dropout=c.dropout, act=c.act, eps=c.eps,
                                    norm=c.norm, positions=c.positions, rope_base=c.rope_base, mlp=c.mlp,
                                    mlp_hidden=c.mlp_hidden, bias=c.bias, kv_heads=c.kv_heads)
        self.head = None if c.tie_head else nn.Linear(c.dim, c.vocab_size, bias=False)
        self.tokenizer = tokenizer
        self.apply(self._init_weights)
        # GPT-2: each residual branch's last projection starts smaller, by 1/√(2·depth), so that
        # the residual stream's variance does not grow with depth at initialisation.
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "mlp.fc2.weight", "mlp.down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.depth))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The (V, dim) embedding table; also the output head when tie_head=True."""
        return self.text.token_embedding

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> token embeddings (B, T, dim), before positions: what a bridge (chapter 10)
        splices image embeddings into, then passes as `inputs_embeds`."""
        self.text.check_ids(ids)
        return self.text.token_embedding(ids)

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model (one layer per block)."""
        return KVCache(self.config.depth)

    def forward(self, ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None, cache: KVCache | None = None,
                position_ids: torch.Tensor | None = None, hooks=None) -> torch.Tensor:
        """ids (B, T) or inputs_embeds (B, T, dim) -> logits (B, T, V): position t's logits score
        the token at t + 1. attention_mask (B, T): True on real tokens (right padding needs
        none: a causal model never looks ahead). cache: continue the tokens it holds.
        position_ids (B, T): each token's position (None: len(cache) + 0..T-1); a left-padded
        row should count from its first real token (`generate` does). hooks: {block index: (where,
        fn)}, layers a bridge adds to this frozen model (chapter 11, `minivlm.nn.blocks.Transformer`)."""
        h = self.text(ids, attention_mask, inputs_embeds=inputs_embeds, cache=cache, position_ids=position_ids,
                      hooks=hooks)
        if self.head is not None:
            return self.head(h)  # (B, T, V)
        return F.linear(h, self.text.token_embedding.weight)  # tied head: (B, T, V)

    # ------------------------------------------------------------------ decoding
    def next_logits_fn(self, use_cache: bool = True, embed=None, attention_mask: torch.Tensor | None = None,
                       hooks=None):
        """next_logits(ids, rows) -> (N, V) for `minivlm.generate`: the logits after each row of ids.

        Without a cache, every call runs the model on the whole prefix. With one, the function
        keeps the cache of the ids it saw last call and feeds only the new tokens; rows whose
        prefix it holds (same example, same ids) are picked out of it (beam search reorders
        rows), and if a row's prefix is not in it (a new prompt) it starts over.

        embed(ids, rows) -> (N, T, dim): the input embeddings of a whole prompt (chapter 10: the
        token embeddings with an image spliced in, row n showing example rows[n]'s image);
        default `self.embed`. Tokens fed on top of a cache are plain token embeddings.

        attention_mask (B, T0): the prompts' mask, False on their left padding. Row n of ids is
        example rows[n]'s prompt followed by generated tokens, so its mask is the prompt's row
        then True, and its positions count from its first real token.

        hooks(ids, rows, past) -> the `hooks` of forward for the tokens ids[:, past:] (chapter 11:
        gated cross-attention reading row n's images, with the media mask of its whole text)."""
        def hooks_for(ids, rows, past):
            return None if hooks is None else hooks(ids, rows, past)

        def mask_and_positions(ids, rows):
            if attention_mask is None:
                return None, None
            prompt = attention_mask[rows]  # (N, T0)
            mask = torch.cat([prompt, prompt.new_ones(len(rows), ids.shape[1] - prompt.shape[1])], dim=1)  # (N, T)
            # the padded prompt then reads exactly as the unpadded one: the same positions, pads unseen
            return mask, (mask.long().cumsum(1) - 1).clamp(min=0)

        def run(ids, rows, cache=None):
            mask, positions = mask_and_positions(ids, rows)
            if embed is None:
                return self(ids, mask, cache=cache, position_ids=positions, hooks=hooks_for(ids, rows, 0))[:, -1]
            return self(inputs_embeds=embed(ids, rows), attention_mask=mask, cache=cache,
                        position_ids=positions, hooks=hooks_for(ids, rows, 0))[:, -1]

        if not use_cache:
            return run
        state: dict = {"cache": None, "ids": None, "rows": None}

        def next_logits(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            cache, seen, seen_rows = state["cache"], state["ids"], state["rows"]
            if cache is not None and ids.shape[1] > seen.shape[1]:
                past = seen.shape[1]
                if ids.shape[0] == seen.shape[0] and torch.equal(rows, seen_rows) \
                        and bool((ids[:, :past] == seen).all()):
                    pass  # the same rows, grown: the common case
                else:
                    # (N, M): row n continues cached row m (the same example: two examples' prompts
                    # may have equal ids and different images)
                    same = (ids[:, None, :past] == seen[None]).all(-1) & (rows[:, None] == seen_rows[None])
                    if bool(same.any(1).all()):
                        cache.select(same.float().argmax(1))
                    else:
                        cache = None
            else:
                cache = None
            if cache is None:
                cache = self.new_cache()
                logits = run(ids, rows, cache)
            else:
                past = seen.shape[1]
                mask, positions = mask_and_positions(ids, rows)  # the mask covers cached and new tokens
                logits = self(ids[:, past:], mask, cache=cache,
                              position_ids=None if positions is None else positions[:, past:],
                              hooks=hooks_for(ids, rows, past))[:, -1]  # (N, V)
            state.update(cache=cache, ids=ids, rows=rows)
            return logits

        return next_logits

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, use_cache: bool = True, embed=None,
                 attention_mask: torch.Tensor | None = None, hooks=None, **decoding) -> torch.Tensor:
        """Continue prompt ids (B, T) by at most max_new_tokens with `minivlm.generate` (greedy by
        default; decoding: num_beams, do_sample, temperature, top_k, top_p, generator, eos_id).
        The prompt and the new tokens must fit the context: T + max_new_tokens <= max_len.
        embed(ids, rows) -> (N, T, dim): the prompt's input embeddings, and hooks(ids, rows, past):
        layers added for the new tokens, see `next_logits_fn`.

        attention_mask (B, T): prompts of different lengths as one batch, left-padded (False on
        the padding, then True): every row's new tokens are appended at the same column, each
        row's positions count from its first real token and the padding is never attended, so
        a row generates what it would alone."""
        c = self.config
        check_tensor("prompt", prompt, ndim=2, dtype="int")
        check_int("max_new_tokens", max_new_tokens, lo=0)
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2)
            if attention_mask.shape != prompt.shape:
                raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, got "
                                 f"{tuple(attention_mask.shape)}")
            real = attention_mask.to(prompt.device).bool()
            if not bool(real[:, -1].all()) or bool((real[:, :-1] & ~real[:, 1:]).any()):
                raise ValueError("attention_mask must be False only on left padding: each row False, then True, "
                                 "and True on its last token")
            attention_mask = None if bool(real.all()) else real  # no padding: the fast path
        if prompt.shape[1] + max_new_tokens > c.max_len:
            raise ValueError(f"the prompt has {prompt.shape[1]} tokens; with max_new_tokens={max_new_tokens} that is "
                             f"{prompt.shape[1] + max_new_tokens}, longer than the context max_len={c.max_len}")
        if max_new_tokens == 0:
            return prompt
        eos_id = decoding.pop("eos_id", c.eos_id)
        check_int("eos_id", eos_id, lo=0)
        if eos_id >= c.vocab_size:
            raise ValueError(f"eos_id must be a token id in [0, {c.vocab_size - 1}], got {eos_id}")
        with eval_mode(self):
            return generate(self.next_logits_fn(use_cache, embed, attention_mask, hooks), prompt, max_new_tokens, eos_id,
                            pad_id=c.pad_id, **decoding)

    def get_tokenizer(self):
        if self.tokenizer is None:

            tok = Tokenizer.from_world()
            if len(tok) != self.config.vocab_size:
                raise ValueError(f"this GPT (vocab_size={self.config.vocab_size}) was not built for the course "
                                 f"tokenizer (vocab {len(tok)}): pass its own, GPT(config, tokenizer=...) or "
                                 "complete(..., tokenizer=...)")
            self.tokenizer = tok
        return self.tokenizer

    def encode_prompts(self, prompts: Sequence[str], tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt as "<bos> prompt" ids, left-padded with pad_id into one batch on the model's
        device: (ids (B, T), attention_mask (B, T), False on the padding), as `generate` takes them."""
        tok = tokenizer if tokenizer is not None else self.get_tokenizer()
        c = self.config
        encoded = [[c.bos_id] + list(tok.encode(p)) for p in prompts]
        dev = next(self.parameters()).device
        longest = max(len(e) for e in encoded)
        prompt = torch.tensor([[c.pad_id] * (longest - len(e)) + e for e in encoded], device=dev)  # (B, T)
        mask = torch.tensor([[False] * (longest - len(e)) + [True] * len(e) for e in encoded], device=dev)
        return prompt, mask

    @torch.no_grad()
    def complete(self, prompts: Sequence[str], max_new_tokens: int = 8, stop: str | None = ".", tokenizer=None,
                 use_cache: bool = True, embed=None, hooks=None, **decoding) -> list[str]:
        """The text each prompt continues with, up to `stop` (a token, not included; None: up to
        <eos> or max_new_tokens). Each prompt is "<bos> prompt words"; an empty prompt generates
        from <bos> alone, and unknown words become <unk>. All prompts are decoded as one batch,
        left-padded with pad_id (see `generate`). tokenizer: anything with encode(text) -> ids
        and decode(ids) -> text (default: the course tokenizer; the checkpoint's own for a model
        from `from_hf`). embed(ids, index) -> (N, T, dim): the input embeddings of the padded
        prompts[index] (chapter 10 splices images in); hooks: see `next_logits_fn` (chapter 11)."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) \
                or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}"
                            + (" (one string: wrap it in a list)" if isinstance(prompts, str) else ""))
        if not prompts:
            raise ValueError("prompts must hold at least one string")
        tok = tokenizer if tokenizer is not None else self.get_tokenizer()
        c = self.config
        stop_ids = list(tok.encode(stop)) if stop else []
        if stop and len(stop_ids) != 1:
            raise ValueError(f"stop must be one token, got {stop!r} = {len(stop_ids)} tokens")
        prompt, mask = self.encode_prompts(prompts, tok)
        ids = self.generate(prompt, max_new_tokens, use_cache=use_cache, embed=embed, attention_mask=mask, hooks=hooks,
                            **decoding)
        out = []
        for row in ids[:, prompt.shape[1]:].tolist():
            ends = [row.index(t) for t in [c.eos_id, *stop_ids] if t in row]
            out.append(tok.decode(row[:min(ends)] if ends else row).strip())
        return out

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def token_logprobs(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(token t+1 | tokens ≤ t) for every t: (B, T-1), and the mask (B, T-1) of the
        targets that are real tokens (padding is never scored)."""
        check_tensor("ids", ids, ndim=2, dtype="int")
        if ids.shape[1] < 2:
            raise ValueError(f"scoring needs at least 2 tokens per row, got ids of shape {tuple(ids.shape)}")
        with eval_mode(self):
            logp = self(ids).float().log_softmax(-1)[:, :-1]  # (B, T-1, V)
        target = ids[:, 1:]
        scored = torch.ones_like(target, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
        return logp.gather(-1, target[..., None]).squeeze(-1) * scored, scored

    # ------------------------------------------------------------------ GPT-2's and Llama's weights
    @classmethod
    def from_hf(cls, hf_model, tokenizer=None) -> "GPT":
        """A GPT holding the weights of a `transformers` GPT2LMHeadModel or GPT2Model (the GPT-2
        layout) or LlamaForCausalLM or LlamaModel (the Llama layout, `_from_hf_llama`): same
        logits to float precision. GPT-2 stores its projections as Conv1D (in, out) matrices and
        q, k, v as one (dim, 3·dim) matrix: both are transposed and split here."""
        hf_config = hf_model.config
        model_type = getattr(hf_config, "model_type", None)
        if model_type == "llama":
            return cls._from_hf_llama(hf_model, tokenizer)
        if model_type != "gpt2":
            raise TypeError(f"from_hf loads a Llama or GPT-2 model, got model_type={model_type!r}")
        acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                "quick_gelu": "quick_gelu"}
        if hf_config.activation_function not in acts:
            raise ValueError(f"activation {hf_config.activation_function!r} is not one of {sorted(acts)}")
        for flag, unsupported in (("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                                  ("scale_attn_weights", False), ("tie_word_embeddings", False)):
            if getattr(hf_config, flag, not unsupported) == unsupported:
                raise ValueError(f"{flag}={unsupported} is not supported: this GPT scales attention by 1/√d and ties "
                                 "its head to the token embeddings, as GPT-2 does")
        d = hf_config.n_embd
        hidden = hf_config.n_inner or 4 * d
        if int(d * (hidden / d)) != hidden:
            raise ValueError(f"an MLP width of n_inner={hidden} with n_embd={d} cannot be written as a ratio here")
        bos, eos = _hf_token_ids(hf_config, "GPT-2")
        config = GPTConfig(vocab_size=hf_config.vocab_size, max_len=hf_config.n_positions, dim=d,
                           depth=hf_config.n_layer, heads=hf_config.n_head,
                           mlp_ratio=hidden / d, act=acts[hf_config.activation_function],
                           eps=hf_config.layer_norm_epsilon, pad_id=eos, bos_id=bos, eos_id=eos)
        model = cls(config, tokenizer=tokenizer)
        src = hf_model.transformer if hasattr(hf_model, "transformer") else hf_model
        state = {"text.token_embedding.weight": src.wte.weight, "text.pos_embedding": src.wpe.weight[None],
                 "text.norm.weight": src.ln_f.weight, "text.norm.bias": src.ln_f.bias}
        for i, h in enumerate(src.h):
            p = f"text.transformer.blocks.{i}."
            qkv_w, qkv_b = h.attn.c_attn.weight.t(), h.attn.c_attn.bias  # (3·dim, dim), (3·dim,)
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                state[p + f"attn.{name}.weight"] = qkv_w[j * d:(j + 1) * d]
                state[p + f"attn.{name}.bias"] = qkv_b[j * d:(j + 1) * d]
            state.update({
                p + "attn.out_proj.weight": h.attn.c_proj.weight.t(), p + "attn.out_proj.bias": h.attn.c_proj.bias,
                p + "norm1.weight": h.ln_1.weight, p + "norm1.bias": h.ln_1.bias,
                p + "norm2.weight": h.ln_2.weight, p + "norm2.bias": h.ln_2.bias,
                p + "mlp.fc1.weight": h.mlp.c_fc.weight.t(), p + "mlp.fc1.bias": h.mlp.c_fc.bias,
                p + "mlp.fc2.weight": h.mlp.c_proj.weight.t(), p + "mlp.fc2.bias": h.mlp.c_proj.bias,
            })
        model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()})
        return model.eval()

    @classmethod
    def _from_hf_llama(cls, hf_model, tokenizer=None) -> "GPT":
        """A LlamaForCausalLM (or LlamaModel: no head of its own, so ours is tied) in the Llama
        layout. Its linears are nn.Linear (out, in) like ours, q, k and v separate: the weights
        only change names. Its RoPE pairs channel j with j + d/2, as `minivlm.nn.rope` does, so
        q and k need no permutation (checkpoints converted from Meta's interleaved layout had
        their q and k rows permuted for that)."""
        hc = hf_model.config
        if hc.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (Llama's SwiGLU), got {hc.hidden_act!r}")
        # transformers 5 keeps RoPE's settings in rope_parameters, 4 in rope_theta and rope_scaling
        rope = dict(getattr(hc, "rope_parameters", None) or getattr(hc, "rope_scaling", None) or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"only plain RoPE is supported (rope_type 'default'), got rope scaling {rope_type!r}: "
                             f"{rope}")
        heads = hc.num_attention_heads
        head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // heads
        if head_dim * heads != hc.hidden_size:
            raise ValueError(f"head_dim must be hidden_size / num_attention_heads = {hc.hidden_size} / {heads}, "
                             f"got head_dim={head_dim}")
        attention_bias, mlp_bias = bool(getattr(hc, "attention_bias", False)), bool(getattr(hc, "mlp_bias", False))
        if attention_bias != mlp_bias:
            raise ValueError(f"bias is one switch here, for attention and MLP alike: got attention_bias="
                             f"{attention_bias}, mlp_bias={mlp_bias}")
        bos, eos = _hf_token_ids(hc, "Llama")
        pad = hc.pad_token_id if isinstance(hc.pad_token_id, int) and 0 <= hc.pad_token_id < hc.vocab_size else eos
        head = getattr(hf_model, "lm_head", None)
        config = GPTConfig.llama(
            vocab_size=hc.vocab_size, max_len=hc.max_position_embeddings, dim=hc.hidden_size,
            depth=hc.num_hidden_layers, heads=heads, kv_heads=hc.num_key_value_heads,
            mlp_ratio=hc.intermediate_size / hc.hidden_size, mlp_hidden=hc.intermediate_size, eps=hc.rms_norm_eps,
            rope_base=float(rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))), bias=attention_bias,
            tie_head=head is None or bool(hc.tie_word_embeddings), pad_id=pad, bos_id=bos, eos_id=eos)
        model = cls(config, tokenizer=tokenizer)
        src = getattr(hf_model, "model", hf_model)  # LlamaForCausalLM.model is a LlamaModel
        state = {"text.token_embedding.weight": src.embed_tokens.weight, "text.norm.weight": src.norm.weight}
        if not config.tie_head:
            state["head.weight"] = head.weight
        names = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm", "attn.q_proj": "self_attn.q_proj",
                 "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
                 "attn.out_proj": "self_attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
                 "mlp.down_proj": "mlp.down_proj"}
        for i, layer in enumerate(src.layers):
            theirs = dict(layer.named_parameters())
            for ours, their in names.items():
                for kind in ("weight", "bias"):
                    if f"{their}.{kind}" in theirs:
                        state[f"text.transformer.blocks.{i}.{ours}.{kind}"] = theirs[f"{their}.{kind}"]
        model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()})
        return model.eval()


def _hf_token_ids(hf_config, family: str) -> tuple[int, int]:
    """(bos, eos) of a transformers config, each a single id in the vocabulary."""
    ids = []
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(hf_config, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < hf_config.vocab_size:
            raise ValueError(f"the {family} config's {name} must be one id in [0, {hf_config.vocab_size - 1}], "
                             f"got {value!r}")
        ids.append(value)
    return ids[0], ids[1]


# ----------------------------------------------------------------------------- training
def lm_step(model: GPT, batch: dict) -> dict:
    """The language-modelling loss for `minivlm.train.fit`: every real token predicted from the
    ones before it (shifted by one; padding is never a target). batch: ids, attention_mask."""
    unwrap(model, GPT, "lm_step")
    if not isinstance(batch, dict) or any(k not in batch for k in ("ids", "attention_mask")):
        raise ValueError("batch must be a dict with ids and attention_mask")
    # right padding: the causal mask already keeps real tokens from seeing the pads after them
    return {"loss": lm_loss(model(batch["ids"]), batch["ids"], batch["attention_mask"])}


def lm_batches(batch_size: int = 64, max_len: int = 64, seed: int = 0, split: str = "train", **world_text):
    """batches(i) -> dict(ids, attention_mask): batch_size world-text documents "<bos> ... <eos>",
    right-padded, the i-th batch of stream `seed` (deterministic in i, so a run can resume)."""

    check_int("batch_size", batch_size)
    check_int("max_len", max_len, lo=2)
    tok = Tokenizer.from_world()
    WorldText(seed, split, **world_text)  # check the arguments now, not at the first step

    def batches(i: int) -> dict:
        docs = WorldText(seed * 1_000_003 + i, split, **world_text).documents(batch_size)
        ids, mask = tok(docs, max_len, add_bos=True, add_eos=True)
        return {"ids": ids, "attention_mask": mask}

    return batches


# ----------------------------------------------------------------------------- evaluation
def _items(items, item_type: type, maker: str) -> list:
    """`items` as a non-empty list of `item_type` (a string or one item is a TypeError, not a
    sequence of characters to ask)."""
    if isinstance(items, (str, item_type)) or not hasattr(items, "__iter__"):
        raise TypeError(f"items must be a list of {item_type.__name__} (from {maker}), got {type(items).__name__}")
    items = list(items)
    if not items:
        raise ValueError(f"items must hold at least one {item_type.__name__} (from {maker})")
    bad = [(i, type(it).__name__) for i, it in enumerate(items) if not isinstance(it, item_type)]
    if bad:
        raise TypeError(f"items must be a list of {item_type.__name__} (from {maker}), got {bad[0][1]} at index "
                        f"{bad[0][0]}")
    return items


def fact_recall(model: GPT, items, use_cache: bool = True) -> dict:
    """Ask each `RecallItem` (minivlm.data.worldtext.recall_items) greedily: a hit when the text
    generated up to the first "." equals the answer. Returns dict(predictions, hits, accuracy
    (an Estimate), per_family {family: Estimate})."""

    items = _items(items, RecallItem, "minivlm.data.worldtext.recall_items")
    longest = max(len(it.answer.split()) for it in items)
    predictions = model.complete([it.prompt for it in items], max_new_tokens=longest + 1, use_cache=use_cache)
    hits = answer_hits(predictions, [it.answer for it in items])
    families = sorted({it.family for it in items})
    per_family = {f: interval([h for h, it in zip(hits, items) if it.family == f]) for f in families}
    return {"predictions": predictions, "hits": hits, "accuracy": interval(hits), "per_family": per_family}


def kshot_figures(model: GPT, items) -> dict:
    """Ask each k-shot `ShotItem` (minivlm.data.incontext.kshot_items) greedily and read as many
    words as its answer has. Exact: those words are the answer; type: they are an answer of the
    right kind (a colour for a colour rule), which a model can get from the format alone.
    Returns dict(predictions, exact, type (Estimates), per_rule {rule: exact Estimate})."""

    items = _items(items, ShotItem, "minivlm.data.incontext.kshot_items")
    tok = model.get_tokenizer()
    longest = max(len(tok.encode(it.answer)) for it in items)
    raw = model.complete([it.prompt for it in items], max_new_tokens=longest, stop=None)
    predictions = [" ".join(p.split()[:len(it.answer.split())]) for p, it in zip(raw, items)]
    exact = [p == it.answer for p, it in zip(predictions, items)]
    typed = [p in it.answer_type for p, it in zip(predictions, items)]
    rules = sorted({it.rule for it in items})
    per_rule = {r: interval([h for h, it in zip(exact, items) if it.rule == r]) for r in rules}
    return {"predictions": predictions, "exact": interval(exact), "type": interval(typed), "per_rule": per_rule}


def world_perplexity(model: GPT, documents: Sequence[str], batch_size: int = 128):
    """Perplexity of `model` on world-text documents ("<bos> ... <eos>"), with a bootstrap interval
    over documents (`minivlm.eval.perplexity`)."""
    documents = check_strings("documents", documents)
    check_int("batch_size", batch_size)
    tok = model.get_tokenizer()
    per_doc = []
    for a in range(0, len(documents), batch_size):
        ids, mask = tok(list(documents[a:a + batch_size]), model.config.max_len, add_bos=True, add_eos=True,
                        truncation=False)
        logp, scored = model.token_logprobs(ids.to(next(model.parameters()).device), mask)
        per_doc += [lp[m].cpu() for lp, m in zip(logp, scored.cpu())]
    return perplexity(per_doc)


LLM_SHAPE = dict(max_len=256, dim=192, depth=4, heads=6)  # the size, in either layout (`minivlm bench gpt`)


LLM_CONFIG = dict(LLM_SHAPE, norm="rmsnorm", positions="rope", mlp="glu", act="silu", bias=False)  # GPTConfig.llama's
