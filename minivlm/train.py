"""The training loop used by every chapter from 01 on (chapter 01 explains it).

One small loop, plain PyTorch: a chapter writes a `step(model, batch) -> {"loss": ..., ...}`
function and calls `fit(model, step, batches, steps)`. `fit` moves model and batches to the
device, builds AdamW (weight decay only on matrices), warms the learning rate up and decays it
with a cosine, clips gradients, uses mixed precision on CUDA when asked, shows a progress bar,
records a `History`, and saves/resumes checkpoints in safetensors.

Resuming is exact: the checkpoint holds the weights, the optimizer state, the step, the
history and every random number generator's state, so a run stopped at step k and resumed ends
with the same weights, bit for bit on the CPU, as a run that was never stopped. For that the
batches should come from a function of the step index (`batches(i)`), not from an iterator.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# A text bar everywhere, on stdout inside a notebook (see `fit`): a widget bar (tqdm.auto with
# ipywidgets) is stored in an executed notebook as its first frame, "0%", and shows nothing in a
# viewer without the widget state; a text bar is stored as its last line.
from tqdm import tqdm

from minivlm import utils
from minivlm.viz import plot_losses

# ----------------------------------------------------------------------------- history


@dataclass
class History:
    """What `fit` recorded: one entry per step (step indices start at 0)."""

    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def last(self, key: str = "loss", n: int = 20) -> float:
        """Mean of the last `n` recorded values of `key` (less noisy than the very last one)."""
        if key not in self.losses:
            raise KeyError(f"no loss named {key!r} in the history; it has {sorted(self.losses)}")
        values = self.losses[key][-n:]
        if not values:
            raise ValueError(f"the history of {key!r} is empty")
        return float(sum(values) / len(values))

    def plot(self, ax=None, smooth: float = 0.9, logy: bool = False):
        """Loss curves (raw and smoothed); returns the matplotlib Figure."""

        return plot_losses(self, smooth=smooth, ax=ax, logy=logy)

    def _append(self, step: int, logs: dict[str, float], lr: float) -> None:
        self.steps.append(step)
        self.lrs.append(lr)
        for key, value in logs.items():
            # a key that appears late is padded with NaN so that every list lines up with `steps`
            self.losses.setdefault(key, [math.nan] * (len(self.steps) - 1)).append(value)
        for key, values in self.losses.items():
            if len(values) < len(self.steps):
                values.append(math.nan)


# ----------------------------------------------------------------------------- freezing


def _train_mode(model: nn.Module) -> None:
    model.train()
    for m in model.modules():
        if getattr(m, "_minivlm_frozen", False):
            m.eval()


# ----------------------------------------------------------------------------- helpers


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor in a (nested) dict / list / tuple to `device`; leave the rest alone."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)((k, to_device(v, device)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_optimizer(params: Iterable[nn.Parameter], lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying biases and norm gains only hurts."""
    params = list(params)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, steps: int, schedule: str | None = "cosine", warmup: int = 0) -> float:
    """Multiplier of the base learning rate at 0-based `step` of `steps`.

    Linear warm-up over `warmup` steps (large early updates from a fresh Adam are noisy), then
    constant (`schedule=None`) or a cosine decay towards 0 at the end of training.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule is None:
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_logs(out: Any, step: int) -> dict[str, Tensor | float]:
    """The step function must return {"loss": scalar tensor with grad, other: scalars...}."""
    if not isinstance(out, dict):
        raise TypeError(f"the step function must return a dict with a scalar tensor 'loss', "
                        f"got {type(out).__name__} at step {step}")
    if "loss" not in out:
        raise ValueError(f"the step function's dict must have a 'loss' key, got keys {sorted(out)} at step {step}")
    loss = out["loss"]
    if not isinstance(loss, Tensor):
        raise TypeError(f"'loss' must be a torch.Tensor, got {type(loss).__name__} at step {step}")
    if loss.numel() != 1:
        raise ValueError(f"'loss' must be a scalar tensor, got shape {tuple(loss.shape)} at step {step}")
    if not loss.requires_grad:
        raise ValueError(f"'loss' does not require grad at step {step}: was it computed under torch.no_grad(), "
                         f"or are all the parameters it depends on frozen?")
    for key, value in out.items():
        if isinstance(value, Tensor) and value.numel() != 1:
            raise ValueError(f"logged value {key!r} must be a scalar, got shape {tuple(value.shape)} at step {step}")
        if not isinstance(value, (Tensor, int, float)):
            raise TypeError(f"logged value {key!r} must be a scalar tensor or number, got {type(value).__name__}")
    return out


# ----------------------------------------------------------------------------- checkpoints
# One safetensors file: tensors under "model.*", "optimizer.*", "rng.*"; everything that is not
# a tensor (step, history, optimizer hyper-parameters, RNG positions) as JSON in its metadata.


def _encode(obj: Any) -> Any:
    """JSON-encode with tuples kept as tuples (AdamW's betas) so a round trip is exact."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v) for v in obj["__tuple__"])
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _cpu_copy(t: Tensor) -> Tensor:
    # a private contiguous copy: safetensors refuses tensors that share memory (tied weights)
    return t.detach().to("cpu", copy=True).contiguous()


def _rng_state(tensors: dict[str, Tensor]) -> dict:
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    return {"python": random.getstate(), "numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def _set_rng_state(tensors: dict[str, Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[f"rng.cuda.{i}"] for i in range(meta.get("cuda_devices", 0)) if f"rng.cuda.{i}" in tensors]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    step: int = 0, history: History | None = None, scaler=None, rng: bool = True,
                    extra: dict | None = None) -> Path:
    """Save weights, optimizer state, step, history and RNG states to one safetensors file.

    Written to a temporary file first and renamed, so an interrupted save never leaves a
    half-written checkpoint behind.
    """
    path = Path(path)
    tensors = {f"model.{k}": _cpu_copy(v) for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"format": "minivlm-checkpoint-1", "step": int(step), "extra": extra or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        opt_extra: dict[str, dict] = {}
        for pid, pstate in state["state"].items():
            for k, v in pstate.items():
                if isinstance(v, Tensor):
                    tensors[f"optimizer.state.{pid}.{k}"] = _cpu_copy(v)
                else:
                    opt_extra.setdefault(str(pid), {})[k] = v
        groups = []
        for gi, group in enumerate(state["param_groups"]):
            g = {}
            for k, v in group.items():
                if isinstance(v, Tensor):  # e.g. a tensor learning rate
                    tensors[f"optimizer.param_groups.{gi}.{k}"] = _cpu_copy(v)
                    g[k] = {"__tensor__": f"optimizer.param_groups.{gi}.{k}"}
                else:
                    g[k] = v
            groups.append(g)
        meta["optimizer"] = {"param_groups": groups, "state_extra": opt_extra, "param_ids": sorted(state["state"])}
    if history is not None:
        meta["history"] = asdict(history)
    if scaler is not None:
        meta["scaler"] = scaler.state_dict()
    if rng:
        meta["rng"] = _rng_state(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"minivlm": json.dumps(_encode(meta))})
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    scaler=None, rng: bool = True, strict: bool = True) -> dict:
    """Load what `save_checkpoint` wrote into `model` (and `optimizer`, `scaler`, the RNGs).

    Returns {"step": int, "history": History | None, "extra": dict}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("minivlm")
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not a minivlm checkpoint (no 'minivlm' metadata)")
    meta = _decode(json.loads(raw))
    tensors = load_file(str(path))
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    problems = utils.state_dict_mismatches(model.state_dict(), weights, strict=strict)
    if problems:
        raise ValueError(f"checkpoint {path} does not fit this {type(model).__name__} ({len(problems)} mismatch(es), "
                         f"first: {problems[0]}): was it saved from a model with another config?")
    model.load_state_dict(weights, strict=strict)
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"{path} holds no optimizer state")
        om = meta["optimizer"]
        state: dict[int, dict] = {}
        for pid in om["param_ids"]:
            prefix = f"optimizer.state.{pid}."
            pstate = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            pstate.update(om["state_extra"].get(str(pid), {}))
            state[int(pid)] = pstate
        groups = []
        for group in om["param_groups"]:
            groups.append({k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
                           for k, v in group.items()})
        try:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except ValueError as e:  # torch's message names neither the file nor the fix
            raise ValueError(f"the optimizer state in checkpoint {path} does not fit this optimizer: {e}") from None
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    if rng and "rng" in meta:
        _set_rng_state(tensors, meta["rng"])
    history = History(**meta["history"]) if "history" in meta else None
    return {"step": meta["step"], "history": history, "extra": meta.get("extra", {})}


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    step: Callable[[nn.Module, Any], dict[str, Tensor]],
    batches: Callable[[int], Any] | Iterable,
    steps: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: str | None = "cosine",
    warmup: int = 0,
    clip_grad: float | None = 1.0,
    amp: bool = False,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool = True,
    desc: str | None = None,
    params=None,
    callback: Callable[[int, dict], None] | None = None,
) -> History:
    """Train `model` for `steps` steps; return the `History`.

    step:      step(model, batch) -> {"loss": scalar tensor, other logged scalars...}
    batches:   a function i -> batch of the 0-based step index (deterministic, so resumable),
               or an iterable (re-iterated when it runs out, like DataLoader epochs).
    schedule:  None (constant) or "cosine"; both after a linear warm-up of `warmup` steps.
    seed:      seeds Python/numpy/torch before training (dropout, random batches); the model's
               initial weights come from how it was built, before `fit`.
    checkpoint, checkpoint_every, resume: save every `checkpoint_every` steps (0: only at the
               end) to a safetensors file; `resume=True` continues from it if it exists.
    params:    the parameters to optimise (default: those with requires_grad).
    callback:  callback(i, logs) after each step, logs = losses + "lr" (+ "grad_norm").
    The model is left in eval mode.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if schedule not in (None, "cosine"):
        raise ValueError(f"schedule must be None or 'cosine', got {schedule!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be > 0 or None, got {clip_grad!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    if (checkpoint_every or resume) and checkpoint is None:
        raise ValueError("checkpoint_every and resume need a checkpoint path")
    if not callable(batches) and not isinstance(batches, Iterable):
        raise TypeError(f"batches must be a function of the step index or an iterable, got {type(batches).__name__}")

    dev = utils.check_device("device", device) or utils.device()
    if seed is not None:
        utils.seed_everything(seed)
    model.to(dev)

    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        if not params:
            raise ValueError("nothing to train: the model has no parameter with requires_grad=True")
        optimizer = default_optimizer(params, lr=lr, weight_decay=weight_decay)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])  # the base learning rate the schedule scales

    # Mixed precision only where it pays and is safe: CUDA. bf16 needs no loss scaling; fp16 does.
    use_amp = amp and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else contextlib.nullcontext

    history, start = History(), 0
    if resume and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint, model, optimizer, scaler=scaler)
        start, history = state["step"], state["history"] or History()
        saved_steps = state["extra"].get("steps")
        if saved_steps is not None and saved_steps != steps:
            warnings.warn(f"resuming a run planned for {saved_steps} steps with steps={steps}: the learning-rate "
                          f"schedule will differ from the original run", stacklevel=2)

    def save(done: int) -> None:
        save_checkpoint(checkpoint, model, optimizer, step=done, history=history, scaler=scaler,
                        extra={"steps": steps, "schedule": schedule, "warmup": warmup})

    iterator = None
    if not callable(batches):
        iterator = iter(batches)
        for _ in range(start):  # an iterable cannot jump: replay it up to where we stopped
            iterator = _next_batch(batches, iterator, _)[1]

    _train_mode(model)
    bar = _progress_bar(total=steps, initial=start, desc=desc, disable=not progress)
    smoothed: dict[str, float] = {}
    t0 = time.perf_counter()
    seconds0 = history.seconds
    try:
        for i in range(start, steps):
            if callable(batches):
                batch = batches(i)
            else:
                batch, iterator = _next_batch(batches, iterator, i)
            batch = to_device(batch, dev)
            factor = lr_factor(i, steps, schedule, warmup)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor

            optimizer.zero_grad(set_to_none=True)
            with autocast():
                out = _check_logs(step(model, batch), i)
            loss = out["loss"]
            logs = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in out.items()}
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(f"loss is {logs['loss']} at step {i} (losses: {logs}); try a lower lr, "
                                         f"warm-up, or check the inputs of that batch")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            else:
                loss.backward()
            extras = {"lr": optimizer.param_groups[0]["lr"]}
            if clip_grad is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, clip_grad))
                extras["grad_norm"] = grad_norm
            else:
                grad_norm = _grad_norm(trained)
            # A finite loss can still have a NaN/inf gradient (sqrt at 0, log of 0, ...): one
            # optimizer step with it would make every weight NaN. (With a float16 GradScaler an
            # inf gradient is expected now and then; the scaler skips that step itself.)
            if scaler is None and not math.isfinite(grad_norm):
                raise FloatingPointError(
                    f"gradient norm is {grad_norm} at step {i} while the loss is finite (losses: {logs}); "
                    "the weights were not updated. Look for an operation with an infinite derivative "
                    "(sqrt or log at 0, division by a norm of 0) or try a lower lr"
                )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()

            history._append(i, logs, extras["lr"])
            history.seconds = seconds0 + time.perf_counter() - t0
            for k, v in logs.items():  # bias-corrected running mean, for a readable progress bar
                smoothed[k] = 0.9 * smoothed.get(k, 0.0) + 0.1 * v
            debias = 1 - 0.9 ** (i - start + 1)
            bar.set_postfix({k: f"{v / debias:.4g}" for k, v in smoothed.items()}, refresh=False)
            bar.update(1)
            if checkpoint is not None and checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < steps:
                save(i + 1)
            if callback is not None:
                callback(i, {**logs, **extras})
    finally:
        bar.close()
        model.eval()
    if checkpoint is not None:
        save(max(start, steps))
    return history


def _progress_bar(**kwargs) -> tqdm:
    """A terminal: tqdm's text bar on stderr. A notebook with ipywidgets: a widget bar while the
    loop runs, replaced by its final text line when it ends (`_WidgetBar`). A notebook without:
    the text bar on stdout (Jupyter paints stderr pink, as if it were an error)."""
    if not _in_kernel():
        return tqdm(dynamic_ncols=True, file=sys.stderr, **kwargs)
    try:
        return _WidgetBar(**kwargs)
    except ImportError:
        return tqdm(dynamic_ncols=True, file=sys.stdout, **kwargs)


class _WidgetBar(tqdm):
    """tqdm drawn as a notebook widget (a progress bar and tqdm's text), shown with a display id
    so that `close` can replace it by the final text line: an executed notebook then stores one
    plain line per loop, which every viewer shows, instead of a widget without its state."""

    def __init__(self, **kwargs):
        import io

        import ipywidgets as widgets
        from IPython.display import display

        self._progress = widgets.FloatProgress(min=0.0, max=float(kwargs.get("total") or 1), bar_style="info")
        self._text = widgets.Label()
        self._handle = None if kwargs.get("disable") else display(widgets.HBox([self._progress, self._text]),
                                                                  display_id=True)
        super().__init__(file=io.StringIO(), ncols=0, ascii=False, **kwargs)  # the text without the drawn bar

    def display(self, msg=None, pos=None):
        if self._handle is not None:
            self._progress.value = float(self.n)
            self._text.value = self.__str__()
        return True

    def close(self):
        if self.disable or self._handle is None:
            return super().close()
        super().close()
        from IPython.display import Pretty

        self._progress.close()
        self._text.close()
        full = tqdm.format_meter(**{**self.format_dict, "ncols": None})
        self._handle.update(Pretty(full))
        self._handle = None


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (a notebook), False in a terminal or under pytest."""
    if "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _grad_norm(params) -> float:
    """Total 2-norm of the gradients of `params` (those that have one); 0.0 if none has."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])))


def _next_batch(batches: Iterable, iterator, i: int):
    """Next item of an iterable, starting it again when it runs out (a new epoch)."""
    try:
        return next(iterator), iterator
    except StopIteration:
        iterator = iter(batches)
        try:
            return next(iterator), iterator
        except StopIteration:
            raise ValueError(f"batches ran out at step {i}: pass a function of the step index, or an iterable "
                             f"that can be iterated again (a list, a DataLoader), not a used-up generator") from None
