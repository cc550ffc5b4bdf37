"""Decoding: turn a model's next-token logits into text (chapter 06; every later captioning
and LLM chapter decodes through `generate`).

A language model gives, for a prefix of tokens, a score (logit) for every possible next token.
Decoding is the loop that picks one, appends it and asks again, until the end-of-text token or
a length limit. How the next token is picked is the whole difference between the strategies:

    greedy          the highest logit, every step: deterministic, often repetitive
    beam search     keep the `num_beams` best prefixes by total log-probability, extend each by
                    every token, keep the best `num_beams` again; returns the best finished one
    sampling        draw from softmax(logits / temperature), optionally only among the k most
                    likely tokens (top-k) or the smallest set holding probability p (top-p,
                    "nucleus"): diverse, which is what CapFilt wants of its synthetic captions

`generate` works over any model through one function, `next_logits(ids, rows) -> (N, V)`:
ids (N, T) are N prefixes, rows (N,) says which example of the batch each prefix continues
(beam search runs several prefixes per example: a captioner uses `rows` to pick the image).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from minivlm.utils import check_int, check_number, check_tensor

NextLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (k=0 keeps all). Ties at
    the k-th value are all kept."""
    check_int("top_k", k, lo=0)
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum to
    at least p (the token that crosses p is kept), set the rest to -inf. p=1 keeps all."""
    check_number("top_p", p, 0.0, 1.0, lo_open=True)
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p  # the set already holds p without this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _check_args(prompt, max_new_tokens, eos_id, num_beams, do_sample, temperature, top_k, top_p, length_penalty):
    check_tensor("prompt", prompt, ndim=2, dtype="int")
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must hold at least one token per row and one row, got shape {tuple(prompt.shape)}")
    check_int("max_new_tokens", max_new_tokens, lo=1)
    check_int("eos_id", eos_id, lo=0)
    check_int("num_beams", num_beams, lo=1)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
    check_number("temperature", temperature, 0.0, math.inf, lo_open=True, hi_open=True)
    check_int("top_k", top_k, lo=0)
    check_number("top_p", top_p, 0.0, 1.0, lo_open=True)
    check_number("length_penalty", length_penalty, -math.inf, math.inf, lo_open=True, hi_open=True)
    if do_sample and num_beams > 1:
        raise ValueError("sampling draws one continuation per example: use num_beams=1 with do_sample=True")


def _logits(next_logits: NextLogits, ids: torch.Tensor, rows: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """next_logits(ids, rows) as float (N, V), checked: eos_id and pad_id within its V columns, and
    no NaN or +inf (argmax would read NaN as token 0 and decode it at every step)."""
    out = next_logits(ids, rows)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != ids.shape[0]:
        raise ValueError(f"next_logits(ids, rows) must return ({ids.shape[0]}, vocab_size) logits for ids of shape "
                         f"{tuple(ids.shape)}, got {getattr(out, 'shape', type(out).__name__)}")
    v = out.shape[1]
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value >= v:
            raise ValueError(f"{name} must lie in [0, {v - 1}] (next_logits returns {v} logits per row), got {value}")
    out = out.float()
    if bool(torch.isnan(out).any() | torch.isposinf(out).any()):
        bad = int((torch.isnan(out) | torch.isposinf(out)).any(1).sum())
        raise ValueError(f"next_logits returned NaN or +inf logits in {bad} of {len(out)} rows (ids of shape "
                         f"{tuple(ids.shape)}): expected finite scores; are the model's weights or inputs NaN?")
    if bool(torch.isneginf(out).all(1).any()):
        raise ValueError(f"next_logits returned a row of -inf logits only (ids of shape {tuple(ids.shape)}): "
                         "no token can be chosen")
    return out


@torch.no_grad()
def generate(
    next_logits: NextLogits,
    prompt: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    *,
    pad_id: int | None = None,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    length_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue each row of `prompt` (B, T) by at most `max_new_tokens` tokens.

    Greedy by default; num_beams > 1: beam search; do_sample=True: sampling from
    softmax(logits / temperature) after top-k (0: off) and top-p (1: off) filtering, drawn with
    `generator`. A row stops at its first `eos_id` (kept); rows that stopped are filled with
    `pad_id` (default: eos_id) while the others go on. Returns (B, T + L) ids, L <= max_new_tokens:
    the prompt followed by the generated tokens.
    """
    _check_args(prompt, max_new_tokens, eos_id, num_beams, do_sample, temperature, top_k, top_p, length_penalty)
    pad_id = eos_id if pad_id is None else pad_id
    check_int("pad_id", pad_id, lo=0)
    if num_beams > 1:
        return _beam_search(next_logits, prompt, max_new_tokens, eos_id, pad_id, num_beams, length_penalty)
    ids = prompt
    rows = torch.arange(len(prompt), device=prompt.device)
    done = torch.zeros(len(prompt), dtype=torch.bool, device=prompt.device)
    for _ in range(max_new_tokens):
        logits = _logits(next_logits, ids, rows, eos_id, pad_id)  # (B, V)
        if do_sample:
            logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
            token = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).squeeze(1).to(ids.device)
        else:
            token = logits.argmax(-1)  # (B,)
        token = token.masked_fill(done, pad_id)
        ids = torch.cat([ids, token[:, None]], dim=1)
        done |= token == eos_id
        if bool(done.all()):
            break
    return ids


def _beam_search(next_logits: NextLogits, prompt: torch.Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
                 k: int, length_penalty: float) -> torch.Tensor:
    """Beam search with k beams per example, ranked by the sum of token log-probabilities. A beam
    that emitted eos is finished: it may only add padding, at no cost, so it keeps its score and
    its place. At the end the best beam per example is the one with the highest
    score / (generated length) ** length_penalty (1: the mean log-probability per token)."""
    b, t = prompt.shape
    dev = prompt.device
    ids = prompt.repeat_interleave(k, dim=0)  # (B·k, T): beam j of example i is row i·k + j
    rows = torch.arange(b, device=dev).repeat_interleave(k)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # the k beams start as copies of one prompt: only the first may expand at step 1
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, device=dev)  # generated tokens up to and including eos
    for _ in range(max_new_tokens):
        logp = _logits(next_logits, ids, rows, eos_id, pad_id).log_softmax(-1)  # (B·k, V)
        v = logp.shape[1]
        finished = torch.full_like(logp, float("-inf"))
        finished[:, pad_id] = 0.0
        logp = torch.where(done[:, None], finished, logp)
        total = (scores.view(-1, 1) + logp).view(b, k * v)  # (B, k·V)
        scores, flat = total.topk(k, dim=1)  # (B, k)
        parent = (flat // v + torch.arange(b, device=dev)[:, None] * k).flatten()  # rows they extend
        token = (flat % v).flatten()
        ids = torch.cat([ids[parent], token[:, None]], dim=1)
        lengths = lengths[parent] + (~done[parent]).float()
        done = done[parent] | (token == eos_id)
        if bool(done.all()):
            break
    normalised = scores / lengths.view(b, k).clamp(min=1) ** length_penalty
    best = normalised.argmax(1) + torch.arange(b, device=dev) * k
    return ids[best]


def strip_generated(ids: torch.Tensor, prompt_len: int, eos_id: int) -> list[list[int]]:
    """The generated tokens of each row after the prompt, up to (not including) the first eos."""
    check_tensor("ids", ids, ndim=2, dtype="int")
    out = []
    for row in ids[:, prompt_len:].tolist():
        out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out


def check_images_to_caption(images) -> None:
    """A captioner's input: a float tensor (B, 3, H, W) of at least one image. Every captioner
    (BLIP, CoCa, PrefixLM, BEiT-3, the prefix models) raises this for an empty batch."""
    check_tensor("images", images, ndim=4, dtype="float")
    if len(images) == 0:
        raise ValueError(f"images must hold at least one image to caption, got shape {tuple(images.shape)}")


def caption_texts(next_logits: NextLogits, n: int, start_id: int, eos_id: int, pad_id: int, max_len: int | None,
                  max_text_len: int, tokenizer, device=None, **decoding) -> list[str]:
    """The captioners' loop (BLIP, CoCa, PrefixLM): n texts decoded from a prompt of one
    `start_id` token with `generate` (decoding: num_beams, do_sample, top_p, top_k, temperature,
    generator), each cut at its first eos and so that "<bos> words <eos>" fits max_len (default
    max_text_len; at most max_text_len), and turned into strings by the tokenizer."""
    check_int("n", n)
    max_len = max_text_len if max_len is None else max_len
    check_int("max_len", max_len, lo=2)
    if max_len > max_text_len:
        raise ValueError(f"max_len={max_len} is longer than the model's max_text_len={max_text_len}")
    prompt = torch.full((n, 1), start_id, dtype=torch.long, device=device)
    ids = generate(next_logits, prompt, max_len - 1, eos_id, pad_id=pad_id, **decoding)
    # a caption that never reached eos is cut so that "<bos> words <eos>" fits max_len
    return [tokenizer.decode(row[:max_len - 2]) for row in strip_generated(ids, 1, eos_id)]
