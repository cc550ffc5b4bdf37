"""Plots used across the chapters (chapter 00 first uses them): images, similarity matrices, masks,
attention, losses, bars.

Every function returns the matplotlib Figure. Functions that draw a single panel take an
optional `ax`, so a chapter can compose several plots in one figure. Plain pyplot: it works in
notebooks (inline) and headless (Agg) alike. In a notebook, end the cell with `;` or assign the
result (`fig = show_images(...)`) so the figure is not shown twice.
"""
from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle

from minivlm.utils import check_range, check_tensor

ATTEND_COLOR = "#2b6cb0"  # mask cells that may attend (True)
BLOCKED_COLOR = "#dde3ea"  # mask cells that are blocked (False)
BOX_COLOR = "#ffd400"  # boxes drawn on images: yellow shows on every ShapesWorld colour but yellow


def _tensor(name: str, x) -> torch.Tensor:
    """Accept tensors and numpy arrays / nested lists; return a CPU tensor without grad."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _new_axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _check_labels(name: str, labels, n: int) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(s) for s in labels]
    if len(labels) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(labels)}")
    return labels


# Average width of a character of the default font at 8 pt, in inches: used to fit text (titles,
# tick labels) into the space a plot gives it, instead of letting neighbours overlap.
CHAR_INCHES = 0.06
LINE_INCHES = 0.135  # one line of 8-pt text


def _wrap(text: str, width: int) -> str:
    """`text` broken into lines of at most `width` characters; line breaks already there are kept."""
    return "\n".join(textwrap.fill(line, max(width, 1)) if line else line for line in text.split("\n"))


def _longest_line(labels: Sequence[str] | None) -> int:
    return max((len(line) for s in labels for line in s.split("\n")), default=0) if labels else 0


# ----------------------------------------------------------------------------- images


def _boxes(entry, i: int) -> torch.Tensor:
    """One image's boxes as a (K, 4) float tensor of (x0, y0, x1, y1) fractions."""
    if entry is None:
        return torch.zeros(0, 4)
    b = torch.as_tensor(np.asarray(entry.detach().cpu() if isinstance(entry, torch.Tensor) else entry,
                                   dtype=np.float64))
    if b.numel() == 0:
        return torch.zeros(0, 4)
    if b.shape[-1] != 4 or b.ndim > 2:
        raise ValueError(f"boxes[{i}] must be (x0, y0, x1, y1) or a list of them, got shape {tuple(b.shape)}")
    b = b.reshape(-1, 4)
    check_range(f"boxes[{i}] (fractions of the image)", b, 0.0, 1.0)
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError(f"boxes[{i}] must have x0 <= x1 and y0 <= y1, got {b.tolist()}")
    return b


def show_images(images, titles: Sequence[str] | None = None, ncols: int = 8, scale: float = 1.4, boxes=None):
    """A grid of images: (N, 3, H, W) RGB or (N, H, W) grey, values in [0, 1].

    boxes: optional list with one entry per image: None, one (x0, y0, x1, y1) box or a list of
    them, as fractions of the width and height (the way ShapesWorld stores boxes).
    """
    images = _tensor("images", images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] != 3):
        raise ValueError(f"images must have shape (N, 3, H, W) or (N, H, W), got {tuple(images.shape)}")
    check_tensor("images", images, dtype="float")
    check_range("images", images, 0.0, 1.0)
    n = images.shape[0]
    if n == 0:
        raise ValueError("images is empty (N = 0)")
    titles = _check_labels("titles", titles, n)
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"boxes must have one entry per image ({n}), got {len(boxes)}")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}")
    all_boxes = [_boxes(boxes[i] if boxes is not None else None, i) for i in range(n)]

    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    h, w = images.shape[-2:]
    aspect = h / w
    title_space = 0.0
    if titles:
        # a caption wider than its panel would run into the next one: wrap it to the panel's width
        titles = [_wrap(t, int(0.85 * scale / CHAR_INCHES)) for t in titles]
        lines = max(t.count("\n") + 1 for t in titles)
        title_space = 0.3 + 1.3 * LINE_INCHES * (lines - 1)  # tight_layout needs a little more than the text
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * (scale * aspect + title_space)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            fig.delaxes(ax)  # no empty frames; the figure has exactly one axes per image
            continue
        if images.ndim == 4:
            ax.imshow(images[i].permute(1, 2, 0).numpy(), vmin=0, vmax=1, interpolation="nearest")  # (H, W, 3)
        else:
            ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")  # (H, W)
        # imshow puts pixel centres on integers, so the image spans [-0.5, W - 0.5]
        for x0, y0, x1, y1 in all_boxes[i].tolist():
            ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
                                   fill=False, edgecolor=BOX_COLOR, linewidth=1.5))
        if titles:
            ax.set_title(titles[i], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_anchor("S")  # spare height of a panel goes above its title, not between the rows
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- heat maps


def _heatmap(name, values, row_labels, col_labels, title, ax, annotate, cmap, cbar_label, vmin=None, vmax=None):
    values = _tensor(name, values)
    if values.ndim != 2:
        raise ValueError(f"{name} must have shape (R, C), got {tuple(values.shape)}")
    check_tensor(name, values, dtype="float")
    r, c = values.shape
    row_labels = _check_labels("row_labels", row_labels, r)
    col_labels = _check_labels("col_labels", col_labels, c)
    # Long labels (captions) are wrapped, and long column labels stand upright, so that they
    # neither overlap nor squeeze the matrix; the figure grows by the room they take.
    long_cols = _longest_line(col_labels) > 12
    if row_labels:
        row_labels = [_wrap(s, 30) for s in row_labels]
    if col_labels and long_cols:
        col_labels = [_wrap(s, 30) for s in col_labels]  # at 7 pt, three lines fit a cell's width
    row_room = CHAR_INCHES * max(0, _longest_line(row_labels) - 8)
    col_room = CHAR_INCHES * max(0, _longest_line(col_labels) - 8) * (0.9 if long_cols else 0.71)
    own = ax is None
    fig, ax = _new_axes(ax, (min(1.6 + 0.5 * c, 9) + row_room, min(1.2 + 0.45 * r, 8) + col_room))
    data = values.float().numpy()
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    if annotate is None:
        annotate = r * c <= 100
    if annotate:
        lo, hi = im.get_clim()
        for y in range(r):
            for x in range(c):
                v = data[y, x]
                bright = (v - lo) / (hi - lo + 1e-12) > 0.6  # dark text on the light end of the colour map
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    if row_labels:
        ax.set_yticks(range(r), row_labels, fontsize=8)
    if col_labels and long_cols:
        ax.set_xticks(range(c), col_labels, rotation=90, ha="center", fontsize=7)
    elif col_labels:
        ax.set_xticks(range(c), col_labels, rotation=45, ha="right", fontsize=8)
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
    return fig


def plot_similarity(sim, row_labels=None, col_labels=None, title: str | None = None, ax=None,
                    annotate: bool | None = None):
    """Heat map of a similarity matrix (R, C), e.g. image-text cosine similarities (chapter 02).

    annotate: write the values in the cells; by default only when there are at most 100.
    """
    return _heatmap("sim", sim, row_labels, col_labels, title, ax, annotate, "viridis", "similarity")


def plot_attention(weights, row_labels=None, col_labels=None, title: str | None = None, ax=None,
                   annotate: bool | None = False):
    """Heat map of attention weights (Tq, Tk): row q shows where query q looks."""
    return _heatmap("weights", weights, row_labels, col_labels, title, ax, annotate, "magma", "attention weight",
                    vmin=0.0)


def plot_attention_on_image(image, weights, ax=None, title: str | None = None, alpha: float = 0.6,
                            grid: tuple[int, int] | None = None):
    """Attention over patches (e.g. of the CLS token) laid over the image.

    image: (3, H, W) in [0, 1]; weights: (N,) with N = gh * gw patches in row-major order
    (square grid unless `grid=(gh, gw)` says otherwise), the order ViT's patchify uses.
    """
    image = _tensor("image", image)
    weights = _tensor("weights", weights)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    check_tensor("image", image, dtype="float")
    check_range("image", image, 0.0, 1.0)
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (N,) over patches, got {tuple(weights.shape)}")
    check_tensor("weights", weights, dtype="float")
    n = weights.shape[0]
    if grid is None:
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"weights must cover a square grid of patches (N = g*g), got N = {n}; "
                             f"did you keep the CLS token? pass grid=(gh, gw) for other grids")
        grid = (g, g)
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"grid {grid} has {gh * gw} patches but weights has N = {n}")
    _, h, w = image.shape
    fig, ax = _new_axes(ax, (3, 3 * h / w))
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")  # (H, W, 3)
    heat = weights.float().reshape(gh, gw).numpy()  # (gh, gw)
    # each patch's weight covers its patch of pixels exactly, thanks to the extent
    ax.imshow(heat, cmap="inferno", alpha=alpha, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5),
              vmin=0.0, vmax=max(float(heat.max()), 1e-12))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


# ----------------------------------------------------------------------------- masks

_MASK_CMAP = ListedColormap([BLOCKED_COLOR, ATTEND_COLOR])


def _mask_labels(labels, tq: int, tk: int):
    if labels is None:
        return None, None
    if isinstance(labels, tuple) and len(labels) == 2 and not isinstance(labels[0], str):
        return _check_labels("labels[0] (queries)", labels[0], tq), _check_labels("labels[1] (keys)", labels[1], tk)
    if tq != tk:
        raise ValueError(f"a single list of labels needs a square mask, got ({tq}, {tk}); "
                         f"pass labels=(query_labels, key_labels)")
    lab = _check_labels("labels", labels, tq)
    return lab, lab


def plot_mask(mask, title: str | None = None, ax=None, labels=None):
    """An attention mask (Tq, Tk), True = may attend (blue), False = blocked (light grey).

    labels: token names for both axes of a square mask, or (query_labels, key_labels).
    """
    mask = _tensor("mask", mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (Tq, Tk), got {tuple(mask.shape)}")
    check_tensor("mask", mask, dtype="bool")
    tq, tk = mask.shape
    qlab, klab = _mask_labels(labels, tq, tk)
    fig, ax = _new_axes(ax, (min(1.2 + 0.3 * tk, 8), min(1.0 + 0.3 * tq, 8)))
    ax.imshow(mask.int().numpy(), cmap=_MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
    if max(tq, tk) <= 40:  # thin white lines between cells make it easy to count tokens
        ax.set_xticks(np.arange(-0.5, tk, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, tq, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
    if qlab:
        ax.set_yticks(range(tq), qlab, fontsize=7)
        ax.set_xticks(range(tk), klab, rotation=90, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title)
    return fig


def plot_masks(masks: Mapping[str, object], labels=None, size: float = 2.6):
    """Several masks side by side, titled by their names (e.g. the BLIP-2 Q-Former's three).

    labels: as plot_mask's, shared by every panel, or a dict name -> that panel's labels.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError(f"masks must be a non-empty dict name -> (Tq, Tk) bool mask, got {type(masks).__name__}")
    if isinstance(labels, Mapping) and set(labels) != set(masks):
        raise ValueError(f"labels as a dict must name the masks {sorted(masks)}, got {sorted(labels)}")
    fig, axes = plt.subplots(1, len(masks), figsize=(size * len(masks), size + 0.4), squeeze=False)
    for ax, (name, mask) in zip(axes[0], masks.items()):
        plot_mask(mask, title=name, ax=ax, labels=labels[name] if isinstance(labels, Mapping) else labels)
    handles = [Patch(color=ATTEND_COLOR, label="may attend"), Patch(color=BLOCKED_COLOR, label="blocked")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# ----------------------------------------------------------------------------- curves and bars


def ema(values: Sequence[float], smooth: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (what TensorBoard's smoothing slider does)."""
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):  # a missing value does not move the average
            out.append(avg / weight if weight else math.nan)
            continue
        avg = smooth * avg + (1 - smooth) * v
        weight = smooth * weight + (1 - smooth)
        out.append(avg / weight)
    return np.asarray(out, dtype=float)


def plot_losses(history, smooth: float = 0.9, ax=None, logy: bool = False):
    """Loss curves from a `History` (of `fit`) or a dict name -> list of values.

    With smoothing, each curve is drawn twice: the raw values faint, their moving average bold.
    """
    if hasattr(history, "losses") and hasattr(history, "steps"):
        curves, x = dict(history.losses), list(history.steps)
    elif isinstance(history, Mapping):
        curves, x = dict(history), None
    else:
        raise TypeError(f"history must be a History or a dict name -> list of floats, got {type(history).__name__}")
    if not curves:
        raise ValueError("nothing to plot: no losses recorded")
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    own = ax is None
    fig, ax = _new_axes(ax, (5, 3))
    for idx, (name, values) in enumerate(curves.items()):
        values = [float(v) for v in values]
        xs = x if x is not None and len(x) == len(values) else list(range(len(values)))
        color = f"C{idx % 10}"
        if smooth > 0:
            ax.plot(xs, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, ema(values, smooth), color=color, linewidth=1.6, label=name)
        else:
            ax.plot(xs, values, color=color, linewidth=1.2, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if own:
        fig.tight_layout()
    return fig


def _bar_value(h: float) -> str:
    """The number written on a bar: counts in full ("1363", not "1.36e+03"), others to 3 digits."""
    if math.isfinite(h) and (h.is_integer() or abs(h) >= 1000):
        return f"{h:.0f}"
    return f"{h:.3g}"


def plot_bars(values: Mapping[str, float], title: str | None = None, ax=None, ylabel: str | None = None,
              errors: Mapping[str, float] | None = None):
    """Bar chart with the value written on each bar: ablations, model comparisons.

    errors: optional error bar (e.g. std over seeds) per name.
    """
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"values must be a non-empty dict name -> number, got {values!r}")
    names = [str(k) for k in values]
    heights = []
    for k, v in values.items():
        try:
            heights.append(float(v))
        except (TypeError, ValueError):
            raise TypeError(f"values[{k!r}] must be a number, got {type(v).__name__}") from None
    yerr = None
    if errors is not None:
        missing = set(values) - set(errors)
        if missing:
            raise ValueError(f"errors must have an entry for every bar, missing {sorted(map(str, missing))}")
        yerr = [float(errors[k]) for k in values]
    own = ax is None
    fig, ax = _new_axes(ax, (max(3, 0.9 * len(names) + 1), 3))
    bars = ax.bar(names, heights, yerr=yerr, color=[f"C{i % 10}" for i in range(len(names))], capsize=3)
    ax.bar_label(bars, labels=[_bar_value(h) for h in heights], fontsize=8, padding=2)
    ax.margins(y=0.15)
    if len(names) > 4 or max(len(n) for n in names) > 10:
        ax.tick_params(axis="x", labelrotation=30)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if own:
        fig.tight_layout()
    return fig


def plot_estimates(series: Mapping[str, Mapping[str, object]], title: str | None = None, ax=None,
                   ylabel: str | None = None, scale: float = 100.0):
    """Grouped bars with 95 % intervals: series {name: {category: Estimate}} (minivlm.eval), one
    colour per series, one group per category (the first series' order). Heights are value ×
    scale (100: accuracies in %); a category a series lacks is left empty."""
    if not isinstance(series, Mapping) or not series or not all(isinstance(v, Mapping) for v in series.values()):
        raise ValueError("series must be a non-empty dict name -> {category: Estimate}")
    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    own = ax is None
    fig, ax = _new_axes(ax, (max(4, 0.4 * len(categories) * len(series) + 2), 3))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs, heights, errs = [], [], [[], []]
        for j, c in enumerate(categories):
            if c not in values:
                continue
            e = values[c]
            if not all(hasattr(e, a) for a in ("value", "low", "high")):
                raise TypeError(f"series[{name!r}][{c!r}] must be an Estimate (value, low, high), got "
                                f"{type(e).__name__}")
            xs.append(j + width * (i - (len(series) - 1) / 2))
            heights.append(scale * e.value)
            errs[0].append(max(0.0, scale * (e.value - e.low)))  # never negative: rounding at 0 or 1
            errs[1].append(max(0.0, scale * (e.high - e.value)))
        ax.bar(xs, heights, width=width, yerr=errs, capsize=2, label=name, color=f"C{i % 10}")
    ax.set_xticks(range(len(categories)), categories)
    if len(categories) > 5:
        ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
    return fig


def plot_sequence(tokens: Sequence[str], rows: Mapping[str, Sequence[bool]], title: str | None = None,
                  ax=None):
    """One token sequence as a strip of cells, and under it one row per mask (filled where
    True): e.g. where the image embeddings go, which positions are attended, which are loss
    targets (chapter 10's splice)."""
    tokens = [str(t) for t in tokens]
    if not tokens:
        raise ValueError("tokens must hold at least one token")
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty dict name -> mask")
    masks = {}
    for name, mask in rows.items():
        values = [bool(v) for v in (mask.tolist() if isinstance(mask, torch.Tensor) else mask)]
        if len(values) != len(tokens):
            raise ValueError(f"rows[{name!r}] has {len(values)} entries for {len(tokens)} tokens")
        masks[name] = values
    own = ax is None
    fig, ax = _new_axes(ax, (max(5, 0.55 * len(tokens) + 2), 0.5 * (len(masks) + 1) + 0.6))
    for t, token in enumerate(tokens):
        ax.add_patch(Rectangle((t, len(masks)), 1, 1, facecolor="#edf2f7", edgecolor="#4a5568", linewidth=0.6))
        ax.text(t + 0.5, len(masks) + 0.5, token, ha="center", va="center", fontsize=7, rotation=60)
    for r, (name, values) in enumerate(masks.items()):
        y = len(masks) - 1 - r
        for t, on in enumerate(values):
            ax.add_patch(Rectangle((t, y), 1, 1, facecolor=f"C{r % 10}" if on else "white", alpha=0.8 if on else 1,
                                   edgecolor="#a0aec0", linewidth=0.5))
        ax.text(-0.2, y + 0.5, name, ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.1, len(tokens) + 0.1)
    ax.set_ylim(-0.1, len(masks) + 1.1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- diagrams

STAGE_COLORS = {"input": "#e2e8f0", "vision": "#fbd38d", "text": "#9ae6b4", "fusion": "#90cdf4", "head": "#d6bcfa"}


def plot_pipelines(table: Mapping[str, Sequence[tuple[str, str]]], notes: Mapping[str, str] | None = None,
                   width: float = 13.0):
    """A diagram of model pipelines drawn from a data table, one row per model.

    table: model name -> [(stage label, kind), ...] drawn left to right with arrows, where kind
    is one of STAGE_COLORS ("input", "vision", "text", "fusion", "head"); a label may hold "\\n".
    notes: model name -> a line of text under its row (e.g. a measured cost).
    """
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"table must be a non-empty dict name -> list of (label, kind), got {type(table).__name__}")
    for name, stages in table.items():
        bad = [s for s in stages if not (isinstance(s, tuple) and len(s) == 2 and s[1] in STAGE_COLORS)]
        if not stages or bad:
            raise ValueError(f"row {name!r}: each stage must be (label, kind) with kind in {sorted(STAGE_COLORS)}, "
                             f"got {bad or stages}")
    notes = notes or {}
    rows = list(table.items())
    row_h = 1.5
    fig, ax = plt.subplots(figsize=(width, 0.4 + row_h * len(rows)))
    longest = max(len(stages) for _, stages in rows)
    x0, box_w, gap = 2.6, (width - 3.0) / longest - 0.35, 0.35
    for r, (name, stages) in enumerate(rows):
        y = (len(rows) - 1 - r) * row_h
        ax.text(0.05, y + 0.1, name, ha="left", va="center", fontsize=10, fontweight="bold", wrap=True)
        if name in notes:
            ax.text(x0, y - 0.55, notes[name], ha="left", va="center", fontsize=8.5, color="#4a5568")
        for k, (label, kind) in enumerate(stages):
            x = x0 + k * (box_w + gap)
            ax.add_patch(Rectangle((x, y - 0.32), box_w, 0.84, facecolor=STAGE_COLORS[kind], edgecolor="#4a5568",
                                   linewidth=0.8))
            ax.text(x + box_w / 2, y + 0.1, label, ha="center", va="center", fontsize=8)
            if k:
                ax.annotate("", xy=(x, y + 0.1), xytext=(x - gap, y + 0.1),
                            arrowprops=dict(arrowstyle="->", color="#4a5568", lw=1))
    ax.set_xlim(0, width)
    ax.set_ylim(-0.9, (len(rows) - 1) * row_h + 0.8)
    ax.axis("off")
    handles = [Patch(facecolor=c, edgecolor="#4a5568", label=k) for k, c in STAGE_COLORS.items()]
    ax.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False,
              bbox_to_anchor=(1.0, 1.08))
    fig.tight_layout()
    return fig
