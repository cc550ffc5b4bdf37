"""The `minivlm` command: build exercises, grade a notebook, execute chapters, build the zoo, benchmark.

    minivlm exercises build [--check]          exercises/ from solutions/ (see minivlm.exercises)
    minivlm check PATH.ipynb [--json]          run a learner's exercise notebook, report each task
    minivlm notebooks execute [PATHS...]       rebuild .ipynb from .py, execute, store outputs
    minivlm zoo build NAME|all, zoo list       the pretrained components later chapters load
    minivlm bench render|clip|vilt             timings as JSON
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from pathlib import Path

__all__ = ["check_notebook", "format_report", "main"]

# A check call in a cell: check("01.causal_mask", ...) or grading.check('01.x', ...).
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.\-]+)["']""")
# The report line that minivlm.grading.check prints or raises: "✓ 01.x — title: message".
_RESULT_LINE = re.compile(r"^([✓✗]) ([\w.\-]+) — (.*?): (.*)$", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ----------------------------------------------------------------------------- minivlm check


def _titles() -> dict[str, str]:
    from minivlm import grading

    return {t: c.title for t, c in grading.CHECKS.items()}


def _chapter_tasks(path: Path) -> list[str]:
    m = re.match(r"^(\d{2})_", path.name)
    if not m:
        return []
    from minivlm import grading

    return grading.tasks_for_chapter(m.group(1))


def _error_of(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", "Error"), _ANSI.sub("", out.get("evalue", ""))
    return None


def _stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def check_notebook(path: str | Path, timeout: int = 600, kernel_name: str = "python3") -> dict:
    """Execute an exercise notebook (an in-memory copy, run in the notebook's folder) and grade it.

    Returns {"notebook", "tasks": [{"task_id", "title", "status", "message", "cell"}], "errors":
    [{"cell", "ename", "evalue"}], "passed", "failed", "ok"}; status is one of "passed",
    "failed", "missing" (no cell calls its check) or "not run" (execution stopped before it).
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent.resolve())}},
        record_timing=False,
    )
    errors: list[dict] = []
    ran: set[int] = set()
    start = time.perf_counter()
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, i)
                except Exception as exc:  # a timeout or a dead kernel: nothing after this cell runs
                    errors.append({"cell": i, "ename": type(exc).__name__, "evalue": str(exc).strip().splitlines()[0]
                                   if str(exc).strip() else "execution stopped"})
                    break
                ran.add(i)
    except Exception as exc:  # the kernel could not start
        errors.append({"cell": None, "ename": type(exc).__name__, "evalue": str(exc)})
    seconds = time.perf_counter() - start

    titles = _titles()
    tasks: list[dict] = []
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        ids = [t for t in _CHECK_CALL.findall(cell.source) if t not in seen]
        err = _error_of(cell) if i in ran else None
        if not ids:
            if err is not None:
                errors.append({"cell": i, "ename": err[0], "evalue": err[1]})
            continue
        printed = {m.group(2) for line in _stdout_of(cell).splitlines() if (m := _RESULT_LINE.match(line))
                   and m.group(1) == "✓"}
        failed_id, message = None, ""
        if err is not None:
            m = _RESULT_LINE.match(err[1]) if err[0] == "GradingFailure" else None
            if m:
                # the title is known, so strip it whole: a title or message may contain ": " too
                failed_id = m.group(2)
                prefix = f"{m.group(1)} {failed_id} — {titles.get(failed_id, '')}: "
                message = err[1][len(prefix):] if err[1].startswith(prefix) else m.group(4)
            else:
                message = f"{err[0]}: {err[1]}" if err[0] != "GradingFailure" else err[1]
        for t in ids:
            seen.add(t)
            row = {"task_id": t, "title": titles.get(t, ""), "cell": i}
            if i not in ran:
                row.update(status="not run", message="execution stopped before this cell")
            elif err is None or t in printed:
                row.update(status="passed", message="passed")
            elif failed_id is None or t == failed_id:
                row.update(status="failed", message=message)
            else:  # checks before the failing one printed their ✓; this one came after it
                row.update(status="not run", message=f"not run: {failed_id}, earlier in the same cell, failed")
            tasks.append(row)
    for t in _chapter_tasks(path):
        if t not in seen:
            tasks.append({"task_id": t, "title": titles.get(t, ""), "cell": None, "status": "missing",
                          "message": f'missing: no cell calls check("{t}", ...)'})
    passed = sum(r["status"] == "passed" for r in tasks)
    failed = len(tasks) - passed
    errors.sort(key=lambda e: (e["cell"] is None, e["cell"] or 0))
    return {"notebook": str(path), "seconds": round(seconds, 2), "tasks": tasks, "errors": errors,
            "passed": passed, "failed": failed, "ok": failed == 0 and not errors}


def format_report(report: dict) -> str:
    lines = [f"minivlm check {report['notebook']}"]
    for r in report["tasks"]:
        mark = "✓" if r["status"] == "passed" else "✗"
        title = f" — {r['title']}" if r["title"] else ""
        lines.append(f"{mark} {r['task_id']}{title}: {r['message']}")
    for e in report["errors"]:
        where = f"cell {e['cell']}" if e["cell"] is not None else "kernel"
        lines.append(f"! error outside the checks, {where}: {e['ename']}: {e['evalue']}")
    summary = f"{report['passed']} passed, {report['failed']} failed"
    if report["errors"]:
        summary += f", {len(report['errors'])} error(s) outside the checks"
    lines.append(summary)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- subcommands


def _cmd_exercises_build(args) -> int:
    from minivlm.exercises import build
    from minivlm.notebooks import repo_root

    root = repo_root()
    sol = Path(args.solutions) if args.solutions else root / "solutions"
    ex = Path(args.exercises) if args.exercises else root / "exercises"
    try:
        report = build(sol, ex, check=args.check)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if report.changed:
            print(f"exercises differ from what `minivlm exercises build` generates from {sol}:")
            for p in report.written:
                print(f"  {p}")
            for p in report.removed:
                print(f"  {p} (stale: its solution is gone)")
            return 1
        print(f"exercises are up to date ({len(list(sol.glob('*.py')))} solution scripts)")
        return 0
    for p in report.written:
        print(f"wrote {p}")
    for p in report.removed:
        print(f"removed {p}")
    if not report.changed:
        print("exercises already up to date")
    return 0


def _cmd_check(args) -> int:
    path = Path(args.path)
    if not path.is_file() or path.suffix != ".ipynb":
        print(f"error: expected an existing .ipynb notebook, got {path}", file=sys.stderr)
        return 2
    report = check_notebook(path, timeout=args.timeout)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0 if report["ok"] else 1


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
    names = list(zoo.available()) if args.name == "all" else [args.name]
    for name in names:
        start = time.perf_counter()
        result = zoo.build(name)
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
    """`minivlm bench clip|vilt`: minivlm.benchmarks.bench_clip / bench_vilt (ours vs transformers)."""
    name = f"bench_{args.action}"
    try:
        benchmarks = importlib.import_module("minivlm.benchmarks")
    except ImportError as exc:
        print(f"error: minivlm.benchmarks.{name} is not available ({exc})", file=sys.stderr)
        return 1
    if not hasattr(benchmarks, name):
        print(f"error: minivlm.benchmarks.{name} is not available", file=sys.stderr)
        return 1
    kwargs = {k: v for k, v in vars(args).items() if k in ("repeats", "batch_size", "image_size", "device", "threads")
              and v is not None}
    _print_json(getattr(benchmarks, name)(**kwargs))
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
    b.set_defaults(func=_cmd_exercises_build)

    c = sub.add_parser("check", help="grade an exercise notebook")
    c.add_argument("path", help="the exercise notebook (.ipynb)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    c.set_defaults(func=_cmd_check)

    nbp = sub.add_parser("notebooks", help="chapter notebooks").add_subparsers(dest="action", metavar="ACTION")
    nbp.required = True
    e = nbp.add_parser("execute", help="build .ipynb from .py, execute, store outputs")
    e.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/ and solutions/)")
    e.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    e.set_defaults(func=_cmd_notebooks_execute)

    z = sub.add_parser("zoo", help="pretrained components").add_subparsers(dest="action", metavar="ACTION")
    z.required = True
    zb = z.add_parser("build", help="train and save a zoo entry")
    zb.add_argument("name", help="an entry of `minivlm zoo list`, or all")
    zb.set_defaults(func=_cmd_zoo_build)
    z.add_parser("list", help="list the zoo entries").set_defaults(func=_cmd_zoo_list)

    bp = sub.add_parser("bench", help="benchmarks (JSON)").add_subparsers(dest="action", metavar="ACTION")
    bp.required = True
    br = bp.add_parser("render", help="ShapesWorld render speed")
    br.add_argument("--n", type=int, default=256, help="scenes per batch (default 256)")
    br.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    br.set_defaults(func=_cmd_bench_render)
    for name, what, reference in (("clip", "CLIP", "CLIPModel"), ("vilt", "ViLT VQA", "ViltForQuestionAnswering")):
        bm = bp.add_parser(name, help=f"{what} training-step speed against transformers' {reference}")
        bm.add_argument("--repeats", type=int, help="timed steps per model (default 20)")
        bm.add_argument("--threads", type=int, help="torch threads (default: torch's)")
        bm.add_argument("--batch-size", type=int)
        bm.add_argument("--image-size", type=int)
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
