"""Checks for the chapter 11 exercises (exercises/11_flamingo): the media-location mask of a batch
of interleaved documents (a different number of images in each row, both modes), the Perceiver
Resampler's forward over several frames with a padding mask, the gated cross-attention block's
forward, and an experiment: what does a Flamingo look like at step 0, gated against ungated?

The mask is compared, exactly and as bool, with `minivlm.nn.masks.media` on random layouts (images
anywhere, first or last, back to back, rows with none, image slots that no row fills), with B = 1,
L = 1, a batch with no image at all and one of empty documents (T = 0). The resampler and the
block are compared with the library's modules on fresh random weights (every LayerNorm perturbed,
tanh gates opened to random values), with gradients that must reach the input and every parameter
as the library's do, a size-1 case, and the inputs checked for changes afterwards; the learner
works from the module's parts, and calling the module itself is refused. The block must return x bit for bit with both
gates at zero, send a gradient to the gates there and none to the cross-attention. The
experiment's function is run on the zoo `clip` and `llm` joined five ways: a gated Flamingo, an
ungated one (handed over in training mode), one with a gate opened by a hair (1e-9: not bit for
bit the LLM, though `allclose` says it is), one whose <image> embedding moved, and one whose
attention gates are open (its fact recall after an image then differs from text alone). Every
number is recomputed, and the model and the batch must come back unchanged. When an answer is
wrong the check tries to name the plausible mistake.
"""
from __future__ import annotations

import contextlib

import torch

from minivlm.data.interleaved import interleaved_batches
from minivlm.data.worldtext import recall_items
from minivlm.grading import (
    GradingFailure,
    call,
    expect_close,
    expect_gradients,
    fresh_generator,
    is_close,
    randint,
    register,
    tensor_answer,
)
from minivlm.models.flamingo import Flamingo, FlamingoConfig, fact_recall, flamingo_step, frozen_llm_equal
from minivlm.nn import masks
from minivlm.nn.gated import GatedCrossAttentionBlock
from minivlm.nn.pooling import PerceiverResampler
from minivlm.utils import eval_mode
from minivlm.zoo import store


def _unchanged(name: str, before: torch.Tensor, after: torch.Tensor, hint: str) -> None:
    if not torch.equal(before, after):
        raise GradingFailure(f"{name} was modified in place: {hint}")


def _in_case(exc: GradingFailure, what: str) -> GradingFailure:
    """The learner's error, with the case it happened in (a stub's "not implemented yet" as it is)."""
    text = str(exc)
    return GradingFailure(text if text.startswith("not implemented yet") else f"{text} ({what})")


@contextlib.contextmanager
def _forward_refused(module: torch.nn.Module, hint: str):
    """While the learner's function runs, calling `module` raises the failure that says so."""
    def refuse(*args, **kwargs):
        raise GradingFailure(hint)

    module.forward = refuse  # an instance attribute: module(...) finds it before the class's forward
    try:
        yield
    finally:
        del module.forward


# ----------------------------------------------------------------------------- 11.media_mask


def reference_media_mask(media_locations, n_media, tokens_per_media, only_immediate):
    """`minivlm.nn.masks.media`: image m's L tokens are columns m·L .. (m + 1)·L - 1."""
    return masks.media(media_locations, n_media, tokens_per_media, only_immediate)


def _media_candidates(loc: torch.Tensor, m: int, length: int, immediate: bool) -> list:
    count = loc.long().cumsum(1)  # (B, T)
    column_image = torch.arange(m).repeat_interleave(length) + 1  # (M·L,)

    def from_count(c, cols=column_image, mode=immediate):
        return c[:, :, None] == cols if mode else (c[:, :, None] >= cols) & (c[:, :, None] >= 1)

    exclusive = count - loc.long()  # images strictly before t
    wrapped = torch.where(count == 0, torch.full_like(count, m), count)  # index -1 wraps to the last slot
    named = [
        (from_count(exclusive), "an <image> token must read its own image: count the <image> tokens AT OR BEFORE t "
                                "(an inclusive cumulative sum), so the <image> token itself and the text after it "
                                "see that image"),
        (from_count(wrapped), "text before a row's first image sees an image (the last slot: index c(t) - 1 = -1 "
                              "wraps around): a token with no image before it must see nothing, its row all False"),
        (from_count(count, torch.arange(m).repeat(length) + 1), "the columns are laid out image by image: image m's "
                                                                "L tokens are columns m·L .. (m + 1)·L - 1 (each "
                                                                "image index repeated L times in a row, "
                                                                "repeat_interleave, not the whole list repeated)"),
        (from_count(loc.long().flatten().cumsum(0).view_as(loc)), "the images were counted across the whole batch "
                                                                  "(a cumulative sum over the flattened rows): each "
                                                                  "row counts its own images, a cumsum along T"),
        (from_count(loc.long().cumsum(0)), "the images were counted down the batch (cumsum along dim 0): count "
                                           "along each row's tokens, dim 1"),
    ]
    other = from_count(count, mode=not immediate)
    if immediate:
        named.append((other, "only_immediate=True was ignored: each token sees only the image just before it, "
                             "c(t) == m + 1, not every earlier image"))
    else:
        named.append((other, "only_immediate=False was ignored: each token sees every image up to the one just "
                             "before it, c(t) >= m + 1, not only the last"))
    return named


def _layout(g: torch.Generator, b: int, t: int, counts: list[int]) -> torch.Tensor:
    loc = torch.zeros(b, t, dtype=torch.bool)
    for row, n in enumerate(counts):
        if n:
            loc[row, torch.randperm(t, generator=g)[:n]] = True
    return loc


def _media_case(fn, loc: torch.Tensor, m: int, length: int, immediate: bool, what: str) -> None:
    given = loc.clone()
    try:
        got = call(fn, given, m, length, immediate)
    except GradingFailure as exc:
        raise _in_case(exc, what) from None
    _unchanged("media_locations", loc, given, "leave it as it is (count from a copy, e.g. .long().cumsum(1))")
    got = tensor_answer("the mask", got)
    want = reference_media_mask(loc, m, length, immediate)
    if tuple(got.shape) != tuple(want.shape):
        hint = ""
        if got.ndim == 3 and got.shape[:2] == want.shape[:2]:
            if got.shape[2] == int(loc.sum(1).max()) * length:
                hint = (" (n_media · L columns, one block of L per image SLOT, even for slots no row fills: the "
                        "padded images are still in the visual tokens)")
            elif got.shape[2] == m:
                hint = " (one column per image: each image has L = tokens_per_media visual tokens, one column each)"
        raise GradingFailure(f"the mask must be (B, T, n_media · L) = {tuple(want.shape)}, got {tuple(got.shape)}"
                             f"{hint} ({what})")
    if got.dtype != torch.bool:
        raise GradingFailure(f"the mask must be bool (True = may attend), got {got.dtype}: the attention reads a "
                             f"mask of 0/1 numbers as an additive bias, not as a mask ({what})")
    if torch.equal(got, want):
        return
    for candidate, message in _media_candidates(loc, m, length, immediate):
        if candidate.shape == want.shape and torch.equal(got, candidate):
            raise GradingFailure(f"{message} ({what})")
    pad = torch.arange(m).repeat_interleave(length)[None, None, :] >= loc.sum(1)[:, None, None]  # (B, 1, M·L)
    if bool((got & pad).any()):
        raise GradingFailure(f"a token sees the visual tokens of an image slot its row does not fill (row b has "
                             f"only its own <image> count of images; the rest are padding) ({what})")
    expect_close(f"the mask ({what})", got, want)


@register("11.media_mask", title="The media-location mask of a batch of interleaved documents, both modes")
def check_media_mask(fn) -> None:
    g = fresh_generator()
    for immediate in (True, False):
        for draw in range(2):  # rows with different numbers of images, one with none, slots that no row fills
            b, t, length = randint(g, 3, 5), randint(g, 8, 20), randint(g, 2, 4)
            counts = [randint(g, 1, 4) for _ in range(b)]
            counts[randint(g, 0, b - 1)] = 0
            # the first draw always has empty slots, and n_media differs from (most images in a row) · L, so that
            # a mask with one column per image and one sized by the images present fail with their own messages
            extras = [e for e in (1, 2) if max(counts) + e != max(counts) * length] if draw == 0 else [0, 1, 2]
            m = max(counts) + extras[randint(g, 0, len(extras) - 1)]
            loc = _layout(g, b, t, counts)
            row = randint(g, 0, b - 1)  # one row opens with an image and holds two back to back
            if counts[row] >= 2:
                loc[row] = False
                loc[row, :2] = True
                loc[row, torch.randperm(t - 2, generator=g)[:counts[row] - 2] + 2] = True
            _media_case(fn, loc, m, length, immediate, f"B = {b}, T = {t}, L = {length}, n_media = {m}, images per "
                                                        f"row {loc.sum(1).tolist()}, only_immediate={immediate}")
        # one document, one visual token per image, an image at the very end
        t = randint(g, 5, 12)
        loc = _layout(g, 1, t, [randint(g, 1, 3)])
        loc[0, -1] = True
        n = int(loc.sum())
        _media_case(fn, loc, n, 1, immediate, f"one document (B = 1) of T = {t} tokens, {n} images, L = 1, "
                                              f"only_immediate={immediate}")
        # no image anywhere: no slot at all
        loc = torch.zeros(2, randint(g, 3, 6), dtype=torch.bool)
        _media_case(fn, loc, 0, 3, immediate, f"a batch with no image (n_media = 0), only_immediate={immediate}")
        # documents of no token at all (T = 0), with image slots
        _media_case(fn, torch.zeros(2, 0, dtype=torch.bool), 2, 2, immediate,
                    f"two empty documents (T = 0) and 2 image slots, only_immediate={immediate}")


# ----------------------------------------------------------------------------- 11.resample


def reference_resample(resampler: PerceiverResampler, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The resampler's forward from its parts: x (B, F, N, D), mask (B, F, N) or None -> (B, n_latents, D)
    (the check compares the learner's with the library's own forward)."""
    return _resample_variant(resampler, x, mask)


def _resample_variant(r: PerceiverResampler, x, mask, *, time="frame", self_keys="normed", use_mask=True,
                      joint=True, attn_residual=True, ff_norm=True, final_norm=True, layer=None):
    b, f, n, d = x.shape
    if time == "frame":
        x = x + r.time_embedding[:f]
    elif time == "first":
        x = x + r.time_embedding[0]
    if not joint:  # each frame alone, the results averaged
        outs = [_resample_variant(r, x[:, i:i + 1], None if mask is None else mask[:, i:i + 1], time="none",
                                  self_keys=self_keys, use_mask=use_mask, ff_norm=ff_norm, final_norm=final_norm)
                for i in range(f)]
        return torch.stack(outs).mean(0)
    tokens = x.reshape(b, f * n, d)
    valid = None if (mask is None or not use_mask) else mask.reshape(b, f * n)
    latents = r.latents.expand(b, -1, -1)
    for i in range(len(r.attn)):
        a = r.attn[i if layer is None else layer]
        q = a.norm_queries(latents)
        kv = a.norm_context(tokens)
        keys = None if valid is None else valid[:, None, :]
        if self_keys != "none":
            kv = torch.cat([kv, q if self_keys == "normed" else latents], dim=1)
            keys = None if keys is None else torch.cat([keys, keys.new_ones(b, 1, q.shape[1])], dim=-1)
        h = a.cross_attn(q, kv, keys)
        latents = latents + h if attn_residual else h
        ff = r.ff[i if layer is None else layer]
        norm_ff = r.norm_ff[i if layer is None else layer]
        latents = latents + ff(norm_ff(latents) if ff_norm else latents)
    return r.norm(latents) if final_norm else latents


RESAMPLE_MISTAKES = [
    (dict(time="none"), "the time embeddings are missing: add time_embedding[f] to every token of frame f before "
                        "the frames are flattened"),
    (dict(time="first"), "every frame got frame 0's time embedding: frame f's tokens get time_embedding[f] (the "
                         "first F rows, one per frame)"),
    (dict(self_keys="none"), "the latents do not attend to themselves: the keys and values are [LN(tokens) ; "
                             "LN(latents)], the latents joined to the tokens"),
    (dict(self_keys="raw"), "the latents joined to the keys without their LayerNorm: the key set is [LN(tokens) ; "
                            "LN(latents)], the normed latents, the same that make the queries"),
    (dict(use_mask=False), "the padding mask was ignored: padded tokens are keys no latent may attend to (the mask "
                           "flattened with the frames, to (B, F·N), and the latents' own keys always allowed)"),
    (dict(joint=False), "each frame was resampled on its own and the results averaged: the frames' tokens are "
                        "flattened into ONE key set of F·N tokens that the latents read together"),
    (dict(attn_residual=False), "the attention's residual is missing: latents = latents + read, the read updates "
                                "the latents, it does not replace them"),
    (dict(ff_norm=False), "the feed-forward reads the latents without its LayerNorm: latents + FF(LN(latents)), "
                          "with layer i's norm_ff[i]"),
    (dict(final_norm=False), "the final LayerNorm is missing: the resampler returns norm(latents)"),
    (dict(layer=0), "every read used layer 0's weights: layer i has its own attention, norms and feed-forward"),
]


def _resampler(g: torch.Generator, dim: int, depth: int, n_latents: int, heads: int, frames: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    r = PerceiverResampler(dim, depth=depth, n_latents=n_latents, heads=heads, max_frames=frames, ff_mult=2.0,
                           bias=bool(randint(g, 0, 1)))
    torch.random.set_rng_state(state)
    with torch.no_grad():
        for p in r.parameters():  # LayerNorms too: a forgotten norm must show
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim == 2 and p is not r.latents else 1.0))
    return r


def _resample_case(fn, g: torch.Generator, b: int, f: int, n: int, what: str, with_mask: bool = True,
                   max_frames: int | None = None) -> None:
    dim, heads = 8 * randint(g, 1, 2), 2
    r = _resampler(g, dim, randint(g, 1, 2), randint(g, 2, 5), heads, max_frames or f + randint(g, 0, 2))
    x = torch.randn(b, f, n, dim, generator=g, requires_grad=True)
    mask = None
    if with_mask:
        mask = torch.rand(b, f, n, generator=g) < 0.7
        mask[:, :, 0] = True  # every frame keeps a real token
        if f > 1 and b > 1:
            mask[-1, -1] = False  # the last row's last frame is all padding (a video with a frame fewer)
            mask[-1, 0, 0] = True
    given_x = x.detach().clone()
    given_mask = None if mask is None else mask.clone()
    refusal = ("you called the resampler itself (or one of its LatentAttention reads): write its forward from its "
               "parts, the latents, time embeddings, each layer's norms, cross_attn and feed-forward")
    with _forward_refused(r, refusal), contextlib.ExitStack() as stack:
        for a in r.attn:
            stack.enter_context(_forward_refused(a, refusal))
        try:
            got = call(fn, r, x, given_mask)
        except GradingFailure as exc:
            raise _in_case(exc, what) from None
    _unchanged("x", given_x, x.detach(), "add the time embeddings out of place (x = x + ..., not x += ...)")
    if mask is not None:
        _unchanged("mask", mask, given_mask, "leave it as it is")
    got = tensor_answer("the resampled latents", got)
    want = r(x, mask)  # the library's forward
    if tuple(got.shape) != tuple(want.shape):
        raise GradingFailure(f"the output must be (B, n_latents, D) = {tuple(want.shape)}, got {tuple(got.shape)} "
                             f"({what})")
    if got.dtype != want.dtype:
        raise GradingFailure(f"the output must be {want.dtype}, as x, got {got.dtype} ({what})")
    if not is_close(got, want, atol=1e-4, rtol=1e-4):
        with torch.no_grad():
            for flags, message in RESAMPLE_MISTAKES:
                if flags.get("time") == "first" and f == 1 or flags.get("joint") is False and f == 1:
                    continue
                if flags.get("use_mask") is False and mask is None:
                    continue
                candidate = _resample_variant(r, x, mask, **flags)
                if not is_close(candidate, want, atol=1e-4) and is_close(got, candidate, atol=1e-4, rtol=1e-4):
                    raise GradingFailure(f"{message} ({what})")
        expect_close(f"the resampled latents ({what})", got, want, atol=1e-4, rtol=1e-4)
    leaves = {"x": x, **{f"resampler.{k}": p for k, p in r.named_parameters()}}
    expect_gradients(f"the resampled latents ({what})", got, want, leaves)


@register("11.resample", title="The Perceiver Resampler over F frames with a padding mask")
def check_resample(fn) -> None:
    g = fresh_generator()
    for _ in range(2):
        b, f, n = randint(g, 2, 4), randint(g, 2, 4), randint(g, 3, 7)
        _resample_case(fn, g, b, f, n, f"B = {b}, F = {f} frames of N = {n} tokens, padding in every frame")
    f, n = randint(g, 2, 3), randint(g, 3, 5)
    _resample_case(fn, g, 2, f, n, f"B = 2, F = {f}, N = {n}, mask=None (every token real)", with_mask=False)
    n = randint(g, 2, 6)
    _resample_case(fn, g, 1, 1, n, f"one row of one frame of N = {n} tokens (B = 1, F = 1)")
    _resample_case(fn, g, 1, 1, 1, "one row, one frame, one token (B = F = N = 1)", max_frames=3)


# ----------------------------------------------------------------------------- 11.gated_block


def reference_gated_block(block: GatedCrossAttentionBlock, x, visual, media_mask) -> torch.Tensor:
    """The block's forward from its parts: x + tanh(α)·[xattn(LN(x), visual, mask), zero where a token sees
    no image], then + tanh(β)·FF(LN(x)) (the check compares the learner's with the library's own forward)."""
    return _gated_variant(block, x, visual, media_mask)


def _gated_variant(block, x, visual, media_mask, *, zero_empty=True, use_mask=True, gate="tanh", one_gate=False,
                   parallel=False, norm_cross=True, norm_ff=True, residual="x", feedforward=True):
    def through(p):
        return {"tanh": torch.tanh, "raw": lambda t: t, "sigmoid": torch.sigmoid}[gate](p)

    q = block.norm_cross(x) if norm_cross else x
    h = block.cross_attn(q, visual, media_mask if use_mask else None)
    if zero_empty:
        h = h * media_mask.any(-1, keepdim=True)
    y = {"x": x, "ln": block.norm_cross(x)}[residual] + through(block.attn_gate) * h
    if feedforward:
        src = x if parallel else y
        f = block.ff(block.norm_ff(src) if norm_ff else src)
        y = y + through(block.attn_gate if one_gate else block.ff_gate) * f
    return y


GATED_MISTAKES = [
    (dict(zero_empty=False), "a token that sees no image (text before its row's first image) got a cross-attention "
                             "output: with every key masked the attention spreads over all of them; zero its read "
                             "(where its media-mask row has no True) before the gate"),
    (dict(use_mask=False), "the media mask was not used: each token may read only the visual tokens its row of "
                           "media_mask allows"),
    (dict(gate="raw"), "the gates were used raw: the update is tanh(α)·read, the gate through tanh (so it stays "
                       "in (-1, 1))"),
    (dict(gate="sigmoid"), "the gates went through a sigmoid: sigmoid(0) = 0.5, so the block would not start as the "
                           "identity; tanh(0) = 0"),
    (dict(residual="ln"), "the residual was taken around norm_cross(x): x + tanh(α)·read adds to x itself, the "
                          "norm is only what the cross-attention reads"),
    (dict(one_gate=True), "the feed-forward update used the attention's gate: it has its own, tanh(ff_gate)"),
    (dict(parallel=True), "the feed-forward read x from before the cross-attention update: the two updates are "
                          "in sequence, the feed-forward reads x after the first"),
    (dict(norm_cross=False), "the cross-attention's queries are x, not norm_cross(x): the block is pre-LN"),
    (dict(norm_ff=False), "the feed-forward reads x without norm_ff: the block is pre-LN, FF(norm_ff(x))"),
    (dict(feedforward=False), "the gated feed-forward update is missing: x + tanh(ff_gate)·FF(norm_ff(x)) follows "
                              "the cross-attention update"),
]


def _block(g: torch.Generator, dim: int, heads: int, context_dim: int, layout: str) -> GatedCrossAttentionBlock:
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    kw = dict(norm="rmsnorm", mlp="glu", act="silu") if layout == "llama" else dict()
    block = GatedCrossAttentionBlock(dim, heads, context_dim=context_dim, mlp_ratio=2.0, **kw)
    torch.random.set_rng_state(state)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("_gate"):
                p.copy_((torch.rand(p.shape, generator=g) * 0.8 + 0.3) * (1 if randint(g, 0, 1) else -1))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim == 2 else 1.0))
    return block


def _call_block(fn, block, x, visual, media_mask, what: str):
    given = (x.detach().clone(), visual.detach().clone(), media_mask.clone())
    refusal = ("you called the block itself: write its forward from its parts (norm_cross, cross_attn, attn_gate, "
               "norm_ff, ff, ff_gate)")
    with _forward_refused(block, refusal):
        try:
            got = call(fn, block, x, visual, media_mask)
        except GradingFailure as exc:
            raise _in_case(exc, what) from None
    _unchanged("x", given[0], x.detach(), "the residual updates make a new tensor (x = x + ..., not x += ...)")
    _unchanged("visual", given[1], visual.detach(), "leave it as it is")
    _unchanged("media_mask", given[2], media_mask, "leave it as it is")
    got = tensor_answer("the block's output", got)
    if tuple(got.shape) != tuple(x.shape):
        raise GradingFailure(f"the output must have x's shape {tuple(x.shape)}, got {tuple(got.shape)} ({what})")
    if got.dtype != x.dtype:
        raise GradingFailure(f"the output must have x's dtype {x.dtype}, got {got.dtype} ({what})")
    return got


def _gated_inputs(g, b, t, m_images, length, dim, context_dim, no_image_rows=()):
    x = torch.randn(b, t, dim, generator=g, requires_grad=True)
    visual = torch.randn(b, m_images * length, context_dim, generator=g, requires_grad=True)
    counts = [randint(g, 1, m_images) for _ in range(b)]
    for row in no_image_rows:
        counts[row] = 0
    loc = _layout(g, b, t, counts)
    for row in range(b):  # text before the first image in every row that has one
        if counts[row] and bool(loc[row, 0]) and t > counts[row]:
            loc[row] = False
            loc[row, torch.randperm(t - 1, generator=g)[:counts[row]] + 1] = True
    immediate = bool(randint(g, 0, 1))
    return x, visual, masks.media(loc, m_images, length, immediate), immediate


def _gated_case(fn, g, b, t, m_images, length, what, no_image_rows=()) -> None:
    dim, context_dim = 8 * randint(g, 1, 2), 4 * randint(g, 2, 3)
    block = _block(g, dim, 2, context_dim, "llama" if randint(g, 0, 1) else "gpt")
    x, visual, media_mask, immediate = _gated_inputs(g, b, t, m_images, length, dim, context_dim, no_image_rows)
    what = f"{what}, only_immediate={immediate}"
    got = _call_block(fn, block, x, visual, media_mask, what)
    want = block(x, visual, media_mask)  # the library's forward
    if not is_close(got, want, atol=1e-4, rtol=1e-4):
        with torch.no_grad():
            for flags, message in GATED_MISTAKES:
                candidate = _gated_variant(block, x, visual, media_mask, **flags)
                if not is_close(candidate, want, atol=1e-4) and is_close(got, candidate, atol=1e-4, rtol=1e-4):
                    raise GradingFailure(f"{message} ({what})")
        expect_close(f"the block's output ({what})", got, want, atol=1e-4, rtol=1e-4)
    leaves = {"x": x, "visual": visual, **{f"block.{k}": p for k, p in block.named_parameters()}}
    expect_gradients(f"the block's output ({what})", got, want, leaves)


def _closed_gates_case(fn, g) -> None:
    """Both gates at zero, as at initialisation: x back bit for bit, a gradient to the gates, none to the rest."""
    b, t = randint(g, 2, 3), randint(g, 5, 9)
    dim, context_dim = 16, 8
    block = _block(g, dim, 2, context_dim, "llama")
    with torch.no_grad():
        block.attn_gate.zero_()
        block.ff_gate.zero_()
    x, visual, media_mask, _ = _gated_inputs(g, b, t, 2, 3, dim, context_dim, no_image_rows=(0,))
    what = "both gates at 0, as at initialisation"
    got = _call_block(fn, block, x, visual, media_mask, what)
    if not torch.equal(got.detach(), x.detach()):
        diff = float((got.detach() - x.detach()).abs().max())
        if torch.isnan(got).any():
            raise GradingFailure("with both gates at 0 the output holds NaN: 0 · NaN is NaN, so a read that is NaN "
                                 "(a softmax over no keys) must be zeroed, not multiplied by the gate")
        raise GradingFailure(f"with both gates at 0 the block must return x bit for bit (tanh(0) = 0: each update "
                             f"is added to x itself), got max |output − x| = {diff:.3g}: is the residual taken "
                             f"around x, and are both gates through tanh?")
    if got.grad_fn is not None:
        weight = torch.randn(got.shape, generator=g)
        attention = [p for p in block.cross_attn.parameters()] + [visual]
        grads = torch.autograd.grad((got * weight).sum(), attention, allow_unused=True, retain_graph=True)
        if any(gr is not None and bool(gr.abs().gt(0).any()) for gr in grads):
            raise GradingFailure("with the attention gate at 0 the cross-attention (and visual) must get no gradient: "
                                 "its read is multiplied by tanh(α) = 0; only the gates learn at the first step")
    want = block(x, visual, media_mask)  # the library's forward
    leaves = {"x": x, "block.attn_gate": block.attn_gate, "block.ff_gate": block.ff_gate}
    expect_gradients(f"the block's output ({what})", got, want, leaves)


@register("11.gated_block", title="The gated cross-attention block: media mask, empty rows, tanh gates")
def check_gated_block(fn) -> None:
    g = fresh_generator()
    for _ in range(2):
        b, t, m, length = randint(g, 2, 4), randint(g, 6, 12), randint(g, 2, 3), randint(g, 2, 4)
        _gated_case(fn, g, b, t, m, length, f"B = {b}, T = {t}, {m} image slots of L = {length} tokens, a row with "
                                            f"no image", no_image_rows=(randint(g, 0, b - 1),))
    _gated_case(fn, g, 1, 1, 1, 1, "one token of one document with one image of one visual token (B = T = L = 1)")
    _gated_case(fn, g, 2, 4, 1, 2, "a batch in which no token sees an image", no_image_rows=(0, 1))
    _closed_gates_case(fn, g)


# ----------------------------------------------------------------------------- 11.gate_experiment


def reference_gate_experiment(model, batch, items, images) -> dict:
    """At the model's current weights: the LM loss on batch (its loss_mask's tokens), whether its logits
    equal the frozen LLM's bit for bit, and the fact recall after an unrelated image."""

    with torch.no_grad(), eval_mode(model):
        loss = float(flamingo_step(model, batch)["loss"])
    same = frozen_llm_equal(model, batch["images"], batch["n_images"], batch["ids"])
    recall = fact_recall(model, items, images)
    return {"loss": loss, "same_as_llm": same, "recall": float(sum(recall["hits"])) / len(recall["hits"])}


def _experiment_models(g: torch.Generator):
    """(what, model) pairs: the zoo clip and llm joined four ways, each built from a fresh zoo load."""

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))

    def build(config, eval_mode=True):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Flamingo(store.load("clip"), store.load("llm"), config)
        return model.eval() if eval_mode else model.train()

    gated = build(FlamingoConfig(n_latents=4))
    ungated = build(FlamingoConfig(n_latents=4, gated=False), eval_mode=False)
    hair = build(FlamingoConfig(n_latents=4, visual="mean"))
    with torch.no_grad():  # logits off by ~2e-6: thousands of them not bit for bit, all within allclose
        list(hair.xattn.values())[-1].ff_gate.fill_(1e-9)
    moved = build(FlamingoConfig(n_latents=4, visual="mean"))
    with torch.no_grad():
        moved.image_token.add_(torch.randn(moved.image_token.shape, generator=g))
    looking = build(FlamingoConfig(n_latents=4, visual="mean"))
    with torch.no_grad():
        for block in looking.xattn.values():
            block.attn_gate.fill_(1.0)  # tanh 0.76: the images now count; the feed-forward gates stay shut
    return [("a gated Flamingo at initialisation", gated),
            ("an ungated Flamingo (gated=False) at initialisation, handed over in training mode", ungated),
            ("a gated Flamingo with its last feed-forward gate opened to 1e-9", hair),
            ("a gated Flamingo at initialisation whose <image> embedding was trained", moved),
            ("a gated Flamingo with its attention gates open (tanh α = 0.76), its feed-forward gates shut",
             looking)]


def _model_state(model) -> tuple:
    return (model.training, float(sum(p.detach().double().sum() for p in model.parameters())),
            any(p.grad is not None for p in model.parameters()))


def _experiment_run(fn, model, batch, items, images, what: str) -> None:
    given = {k: v.clone() for k, v in batch.items()}
    given_images = images.clone()
    before = _model_state(model)
    got = call(fn, model, given, list(items), given_images)
    if set(given) != set(batch) or any(not torch.equal(given[k], batch[k]) for k in batch):
        raise GradingFailure("the batch was modified: leave its tensors as they are (and add or drop no key)")
    _unchanged("images", images, given_images, "leave it as it is")
    after = _model_state(model)
    if after[0] != before[0]:
        raise GradingFailure(f"the model was left in {'training' if after[0] else 'eval'} mode: measure it in eval "
                             f"mode, then give it back in the mode it came in ({what})")
    if after[1] != before[1]:
        raise GradingFailure(f"the model's weights changed: the experiment only measures ({what})")
    if after[2]:
        raise GradingFailure(f"the model's parameters now hold gradients (backward was called): measure under "
                             f"torch.no_grad(), nothing is trained here ({what})")
    if not isinstance(got, dict) or any(k not in got for k in ("loss", "same_as_llm", "recall")):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise GradingFailure(f"gate_experiment must return a dict with keys 'loss', 'same_as_llm' and 'recall', got "
                             f"{keys}")
    want = reference_gate_experiment(model, batch, items, images)
    loss = got["loss"]
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise GradingFailure(f"'loss' must be one number, got a tensor of shape {tuple(loss.shape)} ({what})")
        loss = float(loss.detach())
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        raise GradingFailure(f"'loss' must be a number, got {type(loss).__name__} ({what})")
    if abs(loss - want["loss"]) > 1e-4 * max(1.0, abs(want["loss"])):

        with torch.no_grad(), eval_mode(model):
            logits = model(batch["images"], batch["n_images"], batch["ids"], batch["attention_mask"])
            every = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["ids"][:, 1:].flatten())
        if abs(loss - float(every)) < 1e-4 * max(1.0, float(every)):
            raise GradingFailure(f"'loss' counts every position, padding and <image> tokens included: the LM loss is "
                                 f"over the batch's loss_mask tokens only, as flamingo_step takes it ({what})")
        raise GradingFailure(f"'loss' is {loss:.5g}, but the LM loss of this model on this batch is "
                             f"{want['loss']:.5g} ({what})")
    same = got["same_as_llm"]
    if isinstance(same, torch.Tensor) and same.numel() == 1 and same.dtype == torch.bool:
        same = bool(same)
    if not isinstance(same, bool):
        raise GradingFailure(f"'same_as_llm' must be True or False, got {type(same).__name__} ({what})")
    if same != want["same_as_llm"]:
        if same and not want["same_as_llm"]:
            raise GradingFailure(f"'same_as_llm' is True, but the logits differ from the frozen LLM's: the claim is "
                                 f"bit for bit (torch.equal), which a tolerance (allclose) cannot tell; and the LLM "
                                 f"reads the same ids as the model ({what})")
        raise GradingFailure(f"'same_as_llm' is False, but the model's logits equal the frozen LLM's bit for bit on "
                             f"these ids ({what})")
    recall = got["recall"]
    if isinstance(recall, torch.Tensor) and recall.numel() == 1:
        recall = float(recall)
    if not isinstance(recall, (int, float)) or isinstance(recall, bool):
        raise GradingFailure(f"'recall' must be a number (the fraction of facts recalled), got "
                             f"{type(recall).__name__} ({what})")
    if abs(recall - want["recall"]) > 1e-6:
        if abs(recall - 100 * want["recall"]) < 1e-4 and want["recall"] > 0:
            raise GradingFailure(f"'recall' is a percentage ({recall:g}); give the fraction, in [0, 1] ({what})")

        alone = fact_recall(model, items)
        if abs(recall - sum(alone["hits"]) / len(items)) < 1e-6:
            raise GradingFailure(f"'recall' was measured on text alone: ask each question after an unrelated image "
                                 f"(fact_recall(model, items, images)), where the cross-attention acts ({what})")
        raise GradingFailure(f"'recall' is {recall:.4g}, but this model recalls {want['recall']:.4g} of the facts "
                             f"after an unrelated image ({what})")


@register("11.gate_experiment", title="The experiment: a gated and an ungated Flamingo at step 0")
def check_gate_experiment(fn) -> None:

    g = fresh_generator()
    batch = interleaved_batches(6, seed=randint(g, 0, 10_000))(0)
    pool = recall_items()
    items = [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:12]]
    images = batch["images"][:, 0]
    for what, model in _experiment_models(g):
        _experiment_run(fn, model, batch, items, images, what)
