"""Small helpers every chapter uses: device choice, seeding, input checks.

Chapter 00 introduces `seed_everything` and `device`; every later chapter calls them first.
"""
from __future__ import annotations

import math
import os
import random
from typing import Sequence

import numpy as np
import torch
from torch import nn


def device() -> torch.device:
    """The best device here: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, numpy and torch (all devices); return a torch Generator with that seed."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad if `trainable_only`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------- input checks
# Public functions call these at their boundary so that bad input fails with a message that
# names the expected and the actual value, instead of a stack trace from inside a matmul.


def check_tensor(name: str, x, *, ndim: int | None = None, dtype: str | None = None) -> None:
    """Raise TypeError unless `x` is a tensor; ValueError on the wrong ndim or dtype kind.

    dtype: "float" (any floating dtype), "int" (any integer dtype) or "bool".
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got {x.ndim} (shape {tuple(x.shape)})")
    if dtype == "float" and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if dtype == "int" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    if dtype == "bool" and x.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {x.dtype}")


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int | str | None]) -> dict[str, int]:
    """Check `x.shape` against `expected`, where an int must match exactly, a str names a
    dimension that must agree wherever the same name appears, and None matches anything.

    Returns the sizes bound to the names, e.g. check_shape("images", x, ["B", 3, 32, 32]).
    """
    check_tensor(name, x)
    shape = tuple(x.shape)
    want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
    if len(shape) != len(expected):
        raise ValueError(f"{name} must have shape {want}, got {shape}")
    sizes: dict[str, int] = {}
    for axis, (got, exp) in enumerate(zip(shape, expected)):
        if exp is None:
            continue
        if isinstance(exp, str):
            if exp in sizes and sizes[exp] != got:
                raise ValueError(
                    f"{name} must have shape {want}: dim {axis} ({exp}) is {got} but {exp}={sizes[exp]} "
                    f"elsewhere (shape {shape})"
                )
            sizes[exp] = got
        elif got != exp:
            raise ValueError(f"{name} must have shape {want}, got {shape} (dim {axis}: expected {exp}, got {got})")
    return sizes


def check_same_batch(**tensors: torch.Tensor) -> int:
    """All tensors must share their first (batch) dimension; return it."""
    sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in sizes.items())
        raise ValueError(f"batch sizes must match, got {detail}")
    return next(iter(sizes.values()))


def check_range(name: str, x: torch.Tensor, low: float, high: float) -> None:
    """Values of x must lie in [low, high]."""
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{lo:.4g}, {hi:.4g}]")


def check_int(name: str, value, lo: int = 1) -> None:
    """`value` must be an int >= lo. A bool is not an int here (True would pass as 1), nor is a
    float that happens to be whole (2.0): both are almost always a mistake at the call site."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r} ({type(value).__name__})")
    if value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def check_number(name: str, value, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    """`value` must be a real number (int or float, not bool) in the interval from lo to hi;
    lo_open / hi_open exclude the end. NaN lies in no interval."""
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r} ({type(value).__name__})")
    above = lo < value if lo_open else lo <= value
    below = value < hi if hi_open else value <= hi
    if not (above and below):  # written so that NaN fails
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def check_strings(name: str, value, *, nonempty: bool = True) -> list[str]:
    """`value` must be a sequence of strings (a list, a tuple ...): one string is a TypeError, not
    the sequence of its characters ("yes" would be the answers 'y', 'e', 's'), and so is any item
    that is not a string; an empty sequence is a ValueError when `nonempty`. Returns it as a list."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, got one {type(value).__name__} {value[:40]!r}: "
                        f"wrap it in a list, [{value[:40]!r}]")
    if not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{name} must be a list of strings, got {type(item).__name__} {item!r} at index {i}")
    if nonempty and not value:
        raise ValueError(f"{name} must hold at least one string, got an empty {type(value).__name__}")
    return list(value)


def check_keys(name: str, mapping, keys: Sequence[str], maker: str) -> None:
    """`mapping` must be a dict holding every key of `keys` (a batch, a ShapesBench set): TypeError
    otherwise, ValueError naming the missing keys, the expected ones and `maker`, the function that
    makes a complete one (instead of a bare KeyError from deep inside)."""
    if not isinstance(mapping, dict):
        raise TypeError(f"{name} must be a dict with keys {list(keys)} (see {maker}), got {type(mapping).__name__}")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"{name} is missing {missing}: expected keys {list(keys)}, got {list(mapping)}; "
                         f"{maker} makes a complete one")


def check_same_length(**sequences) -> int:
    """All sequences must have one length (one answer per question ...); return it. A shorter
    one would otherwise be zipped against the others and silently drop their tail."""
    lengths = {k: len(v) for k, v in sequences.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"{', '.join(lengths)} must have the same length, got {detail}")
    return next(iter(lengths.values()))


def check_device(name: str, value) -> torch.device | None:
    """None, a torch.device, or a string torch reads as one ('cpu', 'cuda', 'cuda:1', 'mps');
    returns the torch.device (None stays None)."""
    if value is None or isinstance(value, torch.device):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a torch.device or a string such as 'cpu' or 'cuda', got "
                        f"{type(value).__name__} {value!r}")
    try:
        return torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name} must name a torch device such as 'cpu', 'cuda', 'cuda:0' or 'mps', got "
                         f"{value!r}") from None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled()


def check_dtype(name: str, x: torch.Tensor, expected: torch.dtype) -> None:
    """x must have the dtype of the parameters it meets next (`expected`), or matmuls fail deep
    inside with "mat1 and mat2 must have the same dtype". Under autocast mixed dtypes are the
    point, so nothing is checked there."""
    if x.dtype != expected and not _autocast_enabled(x.device.type):
        raise ValueError(
            f"{name} must have the model's dtype {expected}, got {x.dtype}: convert it with "
            f"{name}.to({expected}) (or the model with .to({x.dtype}))"
        )


def state_dict_mismatches(want: dict, got: dict, strict: bool = True) -> list[str]:
    """How the state dict `got` fails to fit a model whose own state dict is `want`: missing and
    unexpected keys (only when strict), then shape mismatches, in the model's key order."""
    problems = []
    if strict:
        problems += [f"missing key {k!r}" for k in want if k not in got]
        problems += [f"unexpected key {k!r}" for k in got if k not in want]
    problems += [f"key {k!r} has shape {tuple(got[k].shape)}, the model expects {tuple(v.shape)}"
                 for k, v in want.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    return problems


class eval_mode:
    """Context: the model in eval mode without gradients, its mode restored afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def freeze(module: nn.Module) -> nn.Module:
    """Stop training `module`: no gradients, and eval mode (no dropout), kept inside `fit`."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    # `fit` calls model.train(); this flag tells it to put frozen parts back in eval mode, so a
    # frozen LLM inside a trainable model does not start applying dropout. Every submodule is
    # flagged, so it also works when `module` is a container that is not itself part of the model.
    for m in module.modules():
        m._minivlm_frozen = True
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Train `module` again: gradients on, train mode."""
    for p in module.parameters():
        p.requires_grad_(True)
    for m in module.modules():
        if getattr(m, "_minivlm_frozen", False):
            m._minivlm_frozen = False
    module.train()
    return module


def unwrap(model: nn.Module, expected: type, step: str | None = None) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (its `.module`), or `model` itself;
    TypeError unless it is an instance of `expected` (naming the step function that trains it)."""
    core = getattr(model, "module", model)
    if not isinstance(core, expected):
        who = f"{step} trains" if step else "expected"
        raise TypeError(f"{who} a {expected.__name__}, got {type(core).__name__}")
    return core
