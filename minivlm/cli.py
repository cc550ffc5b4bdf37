"""The `minivlm` command: build exercises, grade a notebook, execute chapters, build the zoo, benchmark.

    minivlm exercises build [--check] [--prune] exercises/ from solutions/ (see minivlm.exercises)
    minivlm check PATHS.ipynb [--json|--csv F]  grade hand-ins (their definitions only), report each task
    minivlm notebooks execute [PATHS...]       rebuild .ipynb from .py, execute, store outputs
    minivlm zoo build NAME|all, zoo list       the pretrained components later chapters load
    minivlm bench render|clip|vilt|blip|gpt|llama|flamingo  timings as JSON
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

__all__ = ["check_csv_path", "check_notebook", "format_report", "main", "write_csv"]


# ----------------------------------------------------------------------------- minivlm check


def check_notebook(path: str | Path, timeout: float = 60, notebook_timeout: float = 600, memory_mb: int | None = 4096,
                   chapter: str | None = None, extra_checks: tuple[str, ...] = ()) -> dict:
    """Grade a hand-in without trusting its outputs (see minivlm.grading.sandbox.grade_notebook).

    Only the notebook's imports, functions and classes are kept; they run in a fresh subprocess
    with `timeout` seconds per task, `notebook_timeout` for the whole notebook and an address-space
    cap of `memory_mb` MiB on top of the grader's own, and each registered task of the notebook's
    chapter is checked there on the function it names.
    """
    from minivlm.grading.sandbox import grade_notebook

    return grade_notebook(path, timeout=timeout, notebook_timeout=notebook_timeout, memory_mb=memory_mb,
                          chapter=chapter, extra_checks=tuple(extra_checks))


def _fmt_points(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def format_report(report: dict) -> str:
    lines = [f"minivlm check {report['notebook']}"]
    if report.get("unreadable"):
        lines.append(f"! not graded: {report['unreadable']}")
        return "\n".join(lines)
    for r in report["tasks"]:
        mark = "✓" if r["status"] == "passed" else "✗"
        title = f" — {r['title']}" if r["title"] else ""
        lines.append(f"{mark} {r['task_id']}{title}: {r['message']}")
    for e in report["errors"]:
        where = f"cell {e['cell']}" if e["cell"] is not None else "grader"
        lines.append(f"! error outside the checks, {where}: {e['ename']}: {e['evalue']}")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    summary = f"{report['passed']} passed, {report['failed']} failed"
    if report.get("max_points") not in (None, len(report["tasks"])):
        summary += f", {_fmt_points(report['points'])}/{_fmt_points(report['max_points'])} points"
    if report["errors"]:
        summary += f", {len(report['errors'])} error(s) outside the checks"
    lines.append(summary)
    return "\n".join(lines)


def _batch_chapter(paths: list[Path]) -> str | None:
    """The chapter most hand-ins of a batch belong to (the first one's on a tie)."""
    from minivlm.grading.sandbox import notebook_chapter

    found = []
    for p in paths:
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
            cells = raw.get("cells", []) if isinstance(raw, dict) else []
            sources = ["".join(c.get("source", "")) if isinstance(c.get("source"), list) else str(c.get("source", ""))
                       for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):  # graded (and reported) one by one
            sources = []
        ch = notebook_chapter(p, sources)
        if ch:
            found.append(ch)
    return max(found, key=found.count) if found else None


def _is_notebook(path: Path) -> bool:
    """Whether an existing file is (or is named as) a Jupyter notebook: a .ipynb, or JSON with cells."""
    if path.suffix.lower() == ".ipynb":
        return True
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and "cells" in raw


def check_csv_path(out: str | Path, inputs=()) -> Path:
    """The path `minivlm check --csv` may write: ValueError for one of the graded `inputs`, a
    notebook (a .ipynb name, or an existing file holding one), a folder, or a missing folder."""
    out = Path(out)
    if out.resolve() in {Path(p).resolve() for p in inputs}:
        raise ValueError(f"--csv {out} is one of the hand-ins being graded; expected a new .csv path")
    if out.is_dir():
        raise ValueError(f"--csv {out} is a folder; expected a .csv file path")
    if out.suffix.lower() == ".ipynb" or (out.is_file() and _is_notebook(out)):
        raise ValueError(f"--csv {out} is a notebook; expected a .csv file path (the grades would overwrite it)")
    if not out.resolve().parent.is_dir():
        raise ValueError(f"--csv {out}: its folder {out.resolve().parent} does not exist")
    return out


def write_csv(reports: list[dict], out: str | Path) -> None:
    """A row per hand-in: notebook, one column of points per task, total, max, status.

    Written atomically (a temporary file in the same folder, then renamed), so a failure leaves
    any earlier file untouched; refuses a path check_csv_path rejects (a hand-in, a notebook)."""
    import csv
    import os
    import tempfile

    out = check_csv_path(out, [rep["notebook"] for rep in reports])

    tasks: list[str] = []
    max_points: dict[str, float] = {}
    for rep in reports:
        for r in rep["tasks"]:
            if r["task_id"] not in max_points:
                tasks.append(r["task_id"])
                max_points[r["task_id"]] = r["max_points"]
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            _write_rows(csv.writer(f), reports, tasks, max_points)
        os.chmod(tmp, out.stat().st_mode & 0o777 if out.exists() else 0o644)  # mkstemp's file is 0o600
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_rows(w, reports: list[dict], tasks: list[str], max_points: dict[str, float]) -> None:
    w.writerow(["notebook", *tasks, "total", "max", "status"])
    for rep in reports:
        got = {r["task_id"]: r["points"] for r in rep["tasks"]}
        if rep.get("unreadable"):
            status = f"not graded: {rep['unreadable']}"
        else:
            status = "passed" if rep["ok"] else f"{rep['failed']} of {len(rep['tasks'])} task(s) not passed"
            if rep["errors"] and not rep["failed"]:
                status = f"{len(rep['errors'])} error(s) outside the checks"
        w.writerow([rep["notebook"], *(_fmt_points(got[t]) if t in got else "" for t in tasks),
                    _fmt_points(sum(got.values())), _fmt_points(sum(max_points.values())), status])


# ----------------------------------------------------------------------------- subcommands


def _cmd_exercises_build(args) -> int:
    from minivlm.exercises import build
    from minivlm.notebooks import repo_root

    root = repo_root()
    sol = Path(args.solutions) if args.solutions else root / "solutions"
    ex = Path(args.exercises) if args.exercises else root / "exercises"
    try:
        report = build(sol, ex, check=args.check, prune=args.prune)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if report.changed:
            print(f"exercises differ from what `minivlm exercises build` generates from {sol}:")
            for p in report.written:
                print(f"  {p}")
            for p in report.removed:
                print(f"  {p} (stale: its solution is gone; `--prune` removes it)")
            return 1
        print(f"exercises are up to date ({len(list(sol.glob('*.py')))} solution scripts)")
        return 0
    for p in report.written:
        print(f"wrote {p}")
    for p in report.removed:
        print(f"removed {p}" if report.pruned else f"kept {p}: stale (its solution is not in {sol}); "
              "`--prune` would remove it")
    if not report.changed:
        print("exercises already up to date")
    return 0


def _unreadable(path: Path, reason: str) -> dict:
    return {"notebook": str(path), "chapter": None, "seconds": 0.0, "tasks": [], "errors": [], "notes": [],
            "passed": 0, "failed": 0, "points": 0, "max_points": 0, "ok": False, "unreadable": reason}


def _cmd_check(args) -> int:
    paths = [Path(p) for p in args.paths]
    if args.csv:
        try:  # before grading: a bad output path must not cost a batch's grading, nor overwrite anything
            check_csv_path(args.csv, paths)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    missing = [p for p in paths if not p.is_file()]
    for p in missing:
        print(f"error: expected an existing .ipynb notebook, got {p}", file=sys.stderr)
    if len(paths) == 1 and missing:
        return 2
    chapter = args.chapter or (_batch_chapter([p for p in paths if p.is_file()]) if len(paths) > 1 else None)
    reports = []
    for p in paths:
        if p in missing:
            rep = _unreadable(p, "no such file")
        else:
            try:
                rep = check_notebook(p, timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                                     memory_mb=args.memory_mb, chapter=chapter, extra_checks=tuple(args.checks or ()))
            except Exception as exc:  # noqa: BLE001 (a hand-in the grader chokes on must not end the batch)
                rep = _unreadable(p, f"the grader failed on it ({type(exc).__name__}: {exc})")
        reports.append(rep)
        if not args.json:
            print(format_report(rep) + ("\n" if len(paths) > 1 else ""))
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
    if args.csv:
        write_csv(reports, args.csv)
    if len(reports) > 1 and not args.json:
        ok = sum(r["ok"] for r in reports)
        bad = sum(bool(r.get("unreadable")) for r in reports)
        line = (f"{len(reports)} hand-ins (chapter {chapter or '?'}): {ok} fully passed, "
                f"{len(reports) - ok - bad} not fully passed, {bad} not graded")
        print(line)
    if args.csv:
        print(f"wrote {args.csv}", file=sys.stderr if args.json else sys.stdout)
    return 0 if all(r["ok"] for r in reports) else 1


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _cmd_notebooks_execute(args) -> int:
    from minivlm.notebooks import execute

    try:
        failed = execute(args.paths or None, timeout=args.timeout)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _import_zoo():
    try:
        from minivlm import zoo
    except ImportError as exc:
        print(f"error: the model zoo is not available (minivlm.zoo: {exc})", file=sys.stderr)
        return None
    if not hasattr(zoo, "build") or not hasattr(zoo, "available"):
        print("error: minivlm.zoo has no build()/available() yet", file=sys.stderr)
        return None
    return zoo


def _cmd_zoo_build(args) -> int:
    zoo = _import_zoo()
    if zoo is None:
        return 1
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.name != "all" and args.name not in zoo.available():
        print(f"error: unknown zoo model {args.name!r}; expected one of: {', '.join(zoo.available())}, or all",
              file=sys.stderr)
        return 2
    names = list(zoo.available()) if args.name == "all" else [args.name]
    for name in names:
        start = time.perf_counter()
        overrides = {}
        if args.workers is not None:
            if args.name == "all" and "workers" not in zoo.RECIPES[name].__dataclass_fields__:
                pass  # `all`: the option goes to the recipes that train several arms
            elif "workers" not in zoo.RECIPES[name].__dataclass_fields__:
                print(f"error: the {name!r} recipe trains one model at a time; --workers is for recipes with "
                      f"seed arms ({', '.join(n for n, r in zoo.RECIPES.items() if 'workers' in r.__dataclass_fields__)})",
                      file=sys.stderr)
                return 2
            else:
                overrides["workers"] = args.workers
        result = zoo.build(name, **overrides)
        extra = f" -> {result}" if result is not None else ""
        print(f"built {name} in {time.perf_counter() - start:.1f} s{extra}")
    return 0


def _cmd_zoo_list(args) -> int:
    zoo = _import_zoo()
    if zoo is None:
        return 1
    for name in zoo.available():
        print(name)
    return 0


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_bench_render(args) -> int:
    try:
        from minivlm.data.shapesworld import time_render
    except ImportError as exc:
        print(f"error: minivlm.data.shapesworld.time_render is not available ({exc})", file=sys.stderr)
        return 1
    _print_json(time_render(args.n, args.image_size))
    return 0


def _cmd_bench_model(args) -> int:
    """`minivlm bench clip|vilt|blip|gpt|llama`: minivlm.benchmarks.bench_clip / bench_vilt /
    bench_blip / bench_gpt / bench_llama (ours vs transformers)."""
    name = f"bench_{args.action}"
    try:
        benchmarks = importlib.import_module("minivlm.benchmarks")
    except ImportError as exc:
        print(f"error: minivlm.benchmarks.{name} is not available ({exc})", file=sys.stderr)
        return 1
    if not hasattr(benchmarks, name):
        print(f"error: minivlm.benchmarks.{name} is not available", file=sys.stderr)
        return 1
    kwargs = {k: v for k, v in vars(args).items()
              if k in ("repeats", "batch_size", "image_size", "new_tokens", "device", "threads") and v is not None}
    try:
        result = getattr(benchmarks, name)(**kwargs)
    except (TypeError, ValueError) as exc:  # an option out of range: --device gpu, --batch-size 1 ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_json(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minivlm", description="minivlm course tools")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ex = sub.add_parser("exercises", help="exercise notebooks").add_subparsers(dest="action", metavar="ACTION")
    ex.required = True
    b = ex.add_parser("build", help="generate exercises/ from solutions/")
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 if exercises/ is out of date")
    b.add_argument("--solutions", help="solutions folder (default: solutions/ of the repo)")
    b.add_argument("--exercises", help="exercises folder (default: exercises/ of the repo)")
    b.add_argument("--prune", action="store_true",
                   help="remove generated exercises whose solution is gone (default: list them, keep them)")
    b.set_defaults(func=_cmd_exercises_build)

    c = sub.add_parser("check", help="grade exercise notebooks (hand-ins)")
    c.add_argument("paths", nargs="+", metavar="PATH", help="the hand-in notebooks (.ipynb)")
    c.add_argument("--json", action="store_true", help="print the report as JSON (a list for several hand-ins)")
    c.add_argument("--csv", metavar="FILE", help="write a row per hand-in: points per task and a total")
    c.add_argument("--timeout", type=_positive(float), default=60, help="seconds allowed per task (default 60)")
    c.add_argument("--notebook-timeout", type=_positive(float), default=600,
                   help="seconds allowed per hand-in (default 600)")
    c.add_argument("--memory-mb", type=_positive(int), default=4096,
                   help="address space the hand-in's code may add, in MiB (default 4096)")
    c.add_argument("--chapter", help="grade as this chapter (NN); default: from the file names")
    c.add_argument("--checks", action="append", metavar="FILE.py[:FUNC]",
                   help="extra trusted grading module to import (and FUNC to call) before grading")
    c.set_defaults(func=_cmd_check)

    nbp = sub.add_parser("notebooks", help="chapter notebooks").add_subparsers(dest="action", metavar="ACTION")
    nbp.required = True
    e = nbp.add_parser("execute", help="build .ipynb from .py, execute, store outputs")
    e.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/ and solutions/)")
    e.add_argument("--timeout", type=_positive(int), default=600, help="seconds allowed per cell (default 600)")
    e.set_defaults(func=_cmd_notebooks_execute)

    z = sub.add_parser("zoo", help="pretrained components").add_subparsers(dest="action", metavar="ACTION")
    z.required = True
    zb = z.add_parser("build", help="train and save a zoo entry")
    zb.add_argument("name", help="an entry of `minivlm zoo list`, or all")
    zb.add_argument("--workers", type=int, default=None,
                    help="train a recipe's arms in this many processes at once (one thread each: same figures)")
    zb.set_defaults(func=_cmd_zoo_build)
    z.add_parser("list", help="list the zoo entries").set_defaults(func=_cmd_zoo_list)

    bp = sub.add_parser("bench", help="benchmarks (JSON)").add_subparsers(dest="action", metavar="ACTION")
    bp.required = True
    br = bp.add_parser("render", help="ShapesWorld render speed")
    br.add_argument("--n", type=_positive(int), default=256, help="scenes per batch (default 256)")
    br.add_argument("--image-size", type=_positive(int), default=32, help="image side in pixels (default 32)")
    br.set_defaults(func=_cmd_bench_render)
    for name, what, reference in (("clip", "CLIP", "transformers' CLIPModel"),
                                  ("vilt", "ViLT VQA", "transformers' ViltForQuestionAnswering"),
                                  ("blip", "BLIP captioning", "transformers' BlipForConditionalGeneration"),
                                  ("gpt", "GPT", "transformers' GPT2LMHeadModel"),
                                  ("llama", "Llama-layout GPT", "transformers' LlamaForCausalLM"),
                                  ("flamingo", "Flamingo resampler + gated cross-attention",
                                   "lucidrains' flamingo-pytorch")):
        text_only = name in ("gpt", "llama")
        no_image_size = text_only or name == "flamingo"
        extra = " and greedy-generation" if text_only else ""
        bm = bp.add_parser(name, help=f"{what} training-step{extra} speed against {reference}")
        bm.add_argument("--repeats", type=_positive(int), help="timed steps per model (default 20)")
        bm.add_argument("--threads", type=_positive(int), help="torch threads (default: torch's)")
        bm.add_argument("--batch-size", type=_positive(int))
        if text_only:  # no image size, a generation length instead
            bm.add_argument("--new-tokens", type=_positive(int), help="tokens each generation adds (default 32)")
        elif not no_image_size:
            bm.add_argument("--image-size", type=_positive(int))
        bm.add_argument("--device")
        bm.set_defaults(func=_cmd_bench_model)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage after printing it; 0 for --help
        return int(exc.code or 0)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
