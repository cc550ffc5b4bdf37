"""Self-grading exercises: a registry of checks that tell a learner precisely what is wrong.

Every chapter's exercise notebook (exercises/NN_name.ipynb) calls `check("NN.task", obj)` after
each task. The checks live in `minivlm/grading/chNN.py`, one module per chapter, and register
themselves with `@register`; this package imports all of them, so `CHECKS` holds every task.

Writing a check (in minivlm/grading/ch01.py):

    @register("01.causal_mask", title="A causal mask")
    def _(causal_mask):
        got = call(causal_mask, 4)                  # learner errors become clean messages
        expect_dtype("causal_mask(4)", got, torch.bool)
        expect_close("causal_mask(4)", got, torch.ones(4, 4, dtype=torch.bool).tril())

A check raises `GradingFailure(message)` when the answer is wrong; returning means it passed.
`minivlm check exercises/NN_name.ipynb` grades a whole notebook, every task, without trusting what
the notebook printed: see minivlm.grading.sandbox.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

__all__ = [
    "CHECKS",
    "Check",
    "GradingFailure",
    "Result",
    "call",
    "check",
    "expect_close",
    "expect_dtype",
    "expect_equal",
    "expect_gradients",
    "expect_zero_loss",
    "expect_shape",
    "fresh_generator",
    "is_close",
    "tensor_answer",
    "register",
    "run",
    "tasks_for_chapter",
    "unregister",
]


class GradingFailure(AssertionError):
    """The learner's answer is wrong (or missing); the message says exactly how."""


@dataclass(frozen=True)
class Check:
    task_id: str
    title: str
    fn: Callable[[Any], None]
    points: float = 1
    fn_name: str = ""  # the hand-in's function this task grades (`minivlm check`)


@dataclass(frozen=True)
class Result:
    task_id: str
    title: str
    passed: bool
    message: str

    def line(self) -> str:
        """One report line: '✓ 01.causal_mask — A causal mask: passed'."""
        return f"{'✓' if self.passed else '✗'} {self.task_id} — {self.title}: {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


CHECKS: dict[str, Check] = {}


def register(task_id: str, title: str, points: float = 1,
             fn_name: str | None = None) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Decorator: register `fn(obj)` as the check of `task_id` ("NN.name", NN = the chapter).

    `points`: what the task is worth in `minivlm check --csv`. `fn_name`: the name of the function
    a hand-in defines for this task (`minivlm check` grades that function); default: "name".
    """
    if not isinstance(task_id, str) or "." not in task_id:
        raise ValueError(f"task_id must look like 'NN.name', got {task_id!r}")
    if not isinstance(points, (int, float)) or isinstance(points, bool) or points < 0:
        raise ValueError(f"points must be a number >= 0, got {points!r}")
    fn_name = fn_name or task_id.split(".", 1)[1]
    if not fn_name.isidentifier():
        raise ValueError(f"fn_name must be a Python identifier, got {fn_name!r}")

    def decorate(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        # Re-registering the same function (a module imported twice) is harmless; two different
        # checks under one id is a bug in the grading modules.
        old = CHECKS.get(task_id)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"task {task_id!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        CHECKS[task_id] = Check(task_id, title, fn, points, fn_name)
        return fn

    return decorate


def unregister(task_id: str) -> None:
    """Remove a check (tests register throwaway checks and clean up after themselves)."""
    CHECKS.pop(task_id, None)


def tasks_for_chapter(chapter: str) -> list[str]:
    """The registered task ids of one chapter ("01" -> ["01.causal_mask", ...]), in registration order."""
    return [t for t in CHECKS if t.split(".", 1)[0] == chapter]


def _lookup(task_id: str) -> Check:
    if task_id not in CHECKS:
        known = ", ".join(sorted(CHECKS)) or "(none)"
        raise KeyError(f"unknown task id {task_id!r}; known ids: {known}")
    return CHECKS[task_id]


def _describe(exc: BaseException) -> str:
    """A learner's exception as one clean line, without the traceback."""
    if isinstance(exc, NotImplementedError):
        hint = str(exc).strip()
        return f"not implemented yet — {hint}" if hint else "not implemented yet"
    text = str(exc).strip()
    return f"your code raised {type(exc).__name__}: {text}" if text else f"your code raised {type(exc).__name__}"


def run(task_id: str, obj: Any) -> Result:
    """Run the check of `task_id` on `obj`; never raises (except KeyError for an unknown id)."""
    chk = _lookup(task_id)
    try:
        chk.fn(obj)
    except GradingFailure as exc:
        return Result(task_id, chk.title, False, str(exc))
    except Exception as exc:  # the learner's code failed inside the check
        return Result(task_id, chk.title, False, _describe(exc))
    return Result(task_id, chk.title, True, "passed")


def check(task_id: str, obj: Any) -> None:
    """What exercise notebooks call: print '✓ ... passed', or raise GradingFailure saying what is wrong."""
    result = run(task_id, obj)
    if not result.passed:
        # `from None`: the learner sees one line, not the grader's internals.
        raise GradingFailure(result.line()) from None
    print(result.line())


# ----------------------------------------------------------------------------- helpers for check authors


def call(fn: Callable, *args, **kwargs) -> Any:
    """Call the learner's `fn`; turn any exception it raises into a clean GradingFailure."""
    if not callable(fn):
        raise GradingFailure(f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except GradingFailure:
        raise
    except Exception as exc:
        raise GradingFailure(_describe(exc)) from None


def _as_tensor(name: str, x):
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (np.ndarray, np.generic, int, float, bool, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise GradingFailure(f"{name}: cannot read {type(x).__name__} as an array ({exc})") from None
    raise GradingFailure(f"{name}: expected a tensor, got {type(x).__name__}")


def expect_shape(name: str, got, shape) -> None:
    """`got` must have exactly `shape`: "wrong shape: expected (4, 4), got (4,)"."""
    t = _as_tensor(name, got)
    want, have = tuple(int(s) for s in shape), tuple(t.shape)
    if want != have:
        raise GradingFailure(f"{name}: wrong shape: expected {want}, got {have}")


def expect_dtype(name: str, got, dtype) -> None:
    """`got` must be a tensor of `dtype` (a torch.dtype), or of a kind: "float", "int" or "bool"."""
    import torch

    t = _as_tensor(name, got)
    kinds = {
        "float": t.is_floating_point(),
        "int": not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool),
        "bool": t.dtype == torch.bool,
    }
    ok = kinds[dtype] if isinstance(dtype, str) else t.dtype == dtype
    if not ok:
        raise GradingFailure(f"{name}: wrong dtype: expected {dtype}, got {t.dtype}")


def expect_close(name: str, got, want, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """`got` must equal `want` within tolerance; the message names the largest difference and where."""
    import torch

    g, w = _as_tensor(name, got), _as_tensor(name, want)
    if tuple(g.shape) != tuple(w.shape):
        raise GradingFailure(f"{name}: wrong shape: expected {tuple(w.shape)}, got {tuple(g.shape)}")
    if g.numel() == 0:
        return
    if w.dtype == torch.bool or g.dtype == torch.bool:
        # For masks: compare exactly, report the first wrong entry.
        g, w = g.to(torch.bool), w.to(torch.bool)
        wrong = (g != w).nonzero()
        if len(wrong):
            at = list(map(int, wrong[0]))
            raise GradingFailure(
                f"{name}: values differ from the reference at {len(wrong)} of {w.numel()} entries, "
                f"first at {at}: expected {bool(w[tuple(at)])}, got {bool(g[tuple(at)])}"
            )
        return
    g, w = g.to(torch.float64), w.to(torch.float64)
    if torch.isnan(g).any() and not torch.isnan(w).any():
        at = list(map(int, torch.isnan(g).nonzero()[0]))
        raise GradingFailure(f"{name}: contains NaN (first at {at})")
    diff = (g - w).abs().nan_to_num(nan=0.0)
    bad = diff > atol + rtol * w.abs().nan_to_num(nan=0.0)
    if bad.any():
        flat = int(torch.argmax(diff))
        at = list(map(int, torch.unravel_index(torch.tensor(flat), diff.shape))) if diff.ndim else []
        idx = tuple(at)
        raise GradingFailure(
            f"{name}: values differ from the reference: max |diff| = {float(diff.max()):.3g} at {at} "
            f"(expected {float(w[idx]):.4g}, got {float(g[idx]):.4g}; {int(bad.sum())} of {w.numel()} entries "
            f"outside atol={atol:g}, rtol={rtol:g})"
        )


def expect_equal(name: str, got, want) -> None:
    """Plain values (ints, strings, tuples) must be equal."""
    if got != want:
        raise GradingFailure(f"{name}: expected {want!r}, got {got!r}")


def fresh_generator():
    """A torch.Generator seeded at random: fresh inputs on every check, so a hard-coded answer cannot pass."""
    import torch

    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))


def randint(g, lo: int, hi: int) -> int:
    """An int in [lo, hi], drawn from the torch.Generator g (a check's input sizes)."""
    import torch

    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def all_distinct(values, rel: float = 1e-3) -> bool:
    """Every pair of numbers differs by more than `rel` relative, so that a tolerance never
    confuses two: inputs are redrawn until every plausible mistake gives its own number."""
    return all(abs(a - b) > rel * max(1.0, abs(a), abs(b)) for i, a in enumerate(values) for b in values[i + 1:])


def token_losses(logits, targets):
    """Cross-entropy of every position (B, T') against its target (B, T'): the pieces the LM-loss
    checks recombine into the right answer and into each mistake."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def masked_mean(losses, keep):
    """The mean of `losses` over the positions where `keep` is True (or 1)."""
    keep = keep.float()
    return (losses * keep).sum() / keep.sum()


NO_SHIFT = ("no shift: position t's logits were scored against token t itself, which the model already sees "
            "there; they predict the NEXT token: logits[:, :-1] against ids[:, 1:]")
WRONG_WAY = ("shifted the wrong way: logits[:, 1:] against ids[:, :-1] asks position t + 1 to predict token t, "
             "which it has already read; drop the last position's logits and the first token: logits[:, :-1] "
             "against ids[:, 1:]")


def reduction_mistakes(logits, ids, target, unit: str, targets: str) -> list:
    """The wrong reductions of a shifted next-token loss (chapters 09, 10), as (value, message):
    the mean of per-row means, the sum, the raw logits taken for log-probabilities. target
    (B, T-1): 1 on the targets that count; unit: what a row is ("row", "caption"); targets: what
    they are ("real target tokens", "caption tokens")."""
    shifted = token_losses(logits[:, :-1], ids[:, 1:])
    per_row = (shifted * target).sum(1) / target.sum(1)
    return [
        (per_row.mean(),
         f"the mean of per-row means: a short {unit} then weighs as much as a long one; take the mean over all "
         f"{targets} of the batch (their sum over their number)"),
        ((shifted * target).sum(), f"the sum over the {targets}: the loss is their MEAN (divide by their number)"),
        (masked_mean(-logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1), target),
         "the raw logits were used as log-probabilities (F.nll_loss on logits): take log_softmax first, or use "
         "F.cross_entropy, which does"),
    ]


def expect_gradients(name: str, got, want, leaves: dict, atol: float = 1e-4, rtol: float = 1e-3) -> None:
    """`got` (the learner's output) must pass gradients to every tensor of `leaves` (name -> a leaf
    with requires_grad) as `want` (the reference, computed from the same leaves) does: both are
    weighted by one random tensor, summed and differentiated. Catches an output computed through
    `.data`, `.detach()`, `.item()` or a new tensor (`torch.tensor(loss.item())`), and a leaf that
    the learner's computation leaves out or reaches in the wrong place."""
    import torch

    got = tensor_answer(name, got)
    if got.grad_fn is None:
        through = ", ".join(leaves)
        raise GradingFailure(
            f"{name} carries no gradient (it has no grad_fn): it was computed through .data, .detach(), .item() or "
            f"a new tensor such as torch.tensor(...), so training would never reach {through}; compute it with "
            f"tensor operations on the inputs")
    if tuple(got.shape) != tuple(want.shape):
        raise GradingFailure(f"{name}: wrong shape: expected {tuple(want.shape)}, got {tuple(got.shape)}")
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    weight = torch.randn(want.shape, generator=g, dtype=torch.float64)
    names = list(leaves)
    ref = torch.autograd.grad((want.double() * weight).sum(), [leaves[n] for n in names], allow_unused=True)
    mine = torch.autograd.grad((got.double() * weight).sum(), [leaves[n] for n in names], allow_unused=True)
    for leaf, r, m in zip(names, ref, mine):
        if r is None or not bool(r.abs().gt(0).any()):
            continue  # the reference sends it no gradient either
        if m is None or not bool(m.abs().gt(0).any()):
            raise GradingFailure(
                f"no gradient reaches {leaf} through {name}: it was used through .data or .detach() (or not used), "
                f"so training would never update it")
        if not is_close(m, r, atol=atol, rtol=rtol):
            raise GradingFailure(f"the gradient of {name} with respect to {leaf} differs from the reference's (max "
                                 f"|diff| {float((m - r).abs().max()):.3g}): part of it is computed outside the graph "
                                 f"or in the wrong place")


def is_close(a, b, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    """Same shape and equal within tolerances (as float tensors, detached)."""
    import torch

    a, b = torch.as_tensor(a).detach().float(), torch.as_tensor(b).detach().float()
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


def tensor_answer(name: str, got):
    """`got`, if it is a torch.Tensor; otherwise the failure that says what `name` must be."""
    import torch

    if not isinstance(got, torch.Tensor):
        raise GradingFailure(f"{name} must be a torch.Tensor, got {type(got).__name__}")
    return got


# ----------------------------------------------------------------------------- chapter modules

def expect_zero_loss(what: str, got, nothing: str, source: str) -> None:
    """A loss over an empty selection (no word chosen, no patch masked) must be exactly 0, one
    number, and still a tensor of the graph (computed from `source`, e.g. "the logits"), so that
    loss.backward() runs on every batch: not NaN (a mean over zero `nothing`), not a new tensor,
    not .item()."""
    import torch

    value = torch.as_tensor(got).detach().float().reshape(-1)
    if value.numel() == 1 and torch.isnan(value).all():
        raise GradingFailure(f"{what} gives NaN (a mean over zero {nothing}): return 0 there; one NaN loss would "
                             f"ruin the whole training")
    if value.numel() != 1:
        raise GradingFailure(f"{what} must be one number, got shape {tuple(value.shape)}")
    expect_close(what, value.reshape(()), torch.tensor(0.0))
    if not (isinstance(got, torch.Tensor) and got.requires_grad and got.grad_fn is not None):
        raise GradingFailure(f"{what} is a detached 0 (a new tensor, or .item()): make it 0 computed from {source}, "
                             f"attached to the graph, so that loss.backward() runs on every batch")


def _import_chapter_modules() -> None:
    """Import every minivlm/grading/ch*.py so that their @register calls fill CHECKS."""
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("ch"):
            try:
                importlib.import_module(f"{__name__}.{info.name}")
            except Exception as exc:  # one broken chapter must not take every other chapter's checks down
                IMPORT_ERRORS[info.name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"minivlm.grading.{info.name} failed to import: {exc!r}", stacklevel=2)


IMPORT_ERRORS: dict[str, str] = {}


_import_chapter_modules()

