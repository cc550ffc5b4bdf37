"""Grade a hand-in notebook without trusting anything it printed: `grade_notebook(path)`.

`minivlm check` used to read the ✓ lines a notebook printed; a learner could shadow `check`,
print fake lines, or monkeypatch the grader. Here the grade is decided outside the hand-in:

1. The code cells are parsed with `ast` (IPython `%magic` and `!shell` lines are blanked first);
   a cell that does not parse is skipped and reported. Only top-level `import`/`from ... import`,
   `def` and `class` statements are kept; every other statement (assignments, calls, `check(...)`
   calls, monkeypatches, prints) is dropped. Imports of `minivlm.grading` and relative imports are
   dropped too. Definitions are kept only in a form that runs none of the learner's code when it
   is defined: annotations are removed, default values must be constants or dotted names,
   decorators must be well-known harmless ones (`staticmethod`, `torch.no_grad()`, ...; others
   are removed with a note), class bases must be dotted names without keywords (no metaclass),
   and a class body may hold only methods, a docstring and constant attributes.
2. The kept code runs in a clean namespace in a fresh `python -I` subprocess, which imports the
   registry (`minivlm.grading` and every chapter module) *before* the learner's code, caps its
   address space with `resource.setrlimit(RLIMIT_AS)` and sends the learner's output to /dev/null.
3. For every registered task of the notebook's chapter the subprocess looks up the function the
   task names (`register(..., fn_name=...)`, by default the part of the id after the dot), which
   must be a function defined by a `def` in the hand-in, and runs `minivlm.grading.run` on it;
   results come back to the parent as JSON lines. The parent enforces a time limit per task and
   per notebook: a task that runs too long is reported as "timed out after N s", its process is
   killed and a fresh one grades the remaining tasks.

Remaining hole: a task function runs inside the grading process when it is checked, so a
malicious function can attack the grader at that moment (patch `minivlm.grading`, write fake
results to the result stream, read the reference implementation, touch the file system or the
network). Run untrusted hand-ins in a throwaway container without network access.
"""
from __future__ import annotations

import ast
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["extract_definitions", "grade_notebook", "notebook_chapter"]

_CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d{2})\.[\w\-]+["']""")
_MAGIC = re.compile(r"^\s*[%!]")
_SAFE_DECORATORS = {
    "staticmethod", "classmethod", "property", "abstractmethod", "abc.abstractmethod", "dataclass",
    "dataclasses.dataclass", "functools.cache", "functools.lru_cache", "torch.no_grad",
    "torch.inference_mode", "torch.enable_grad", "torch.jit.ignore", "torch.jit.unused",
}
_FORBIDDEN_METHODS = {"__init_subclass__", "__set_name__", "__class_getitem__", "__mro_entries__", "__prepare__"}


# ----------------------------------------------------------------------------- static part (parent)


def notebook_chapter(path: Path, sources: list[str]) -> str | None:
    """The chapter "NN": from the file name NN_..., else the most common chapter of its check calls."""
    m = re.match(r"^(\d{2})_", Path(path).name)
    if m:
        return m.group(1)
    found = [c for s in sources for c in _CHECK_CALL.findall(s)]
    return max(set(found), key=found.count) if found else None


def _dotted(node: ast.AST) -> str | None:
    """'torch.nn.Module' for a Name/Attribute chain without dunder parts, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    if any(p.startswith("__") for p in parts):
        return None
    return ".".join(reversed(parts))


def _is_literal(node: ast.AST | None) -> bool:
    if node is None:
        return True
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _simple_annotation(node: ast.AST | None) -> bool:
    if node is None or isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Subscript):
        return _simple_annotation(node.value) and _simple_annotation(node.slice)
    if isinstance(node, ast.Tuple):
        return all(_simple_annotation(e) for e in node.elts)
    return _dotted(node) is not None


class _Unsafe(Exception):
    pass


def _check_default(node: ast.AST, learner_names: set[str], what: str) -> None:
    name = _dotted(node)
    if _is_literal(node) or (name is not None and name.split(".")[0] not in learner_names):
        return
    raise _Unsafe(f"{what}: default values must be constants or names of library objects")


def _clean_decorators(node, learner_names: set[str], notes: list[str], cell: int) -> None:
    kept = []
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = _dotted(target)
        args_ok = not isinstance(dec, ast.Call) or (
            all(_is_literal(a) for a in dec.args) and all(_is_literal(k.value) for k in dec.keywords))
        root = name.split(".")[0] if name else None
        ok = name is not None and args_ok and root not in learner_names and (
            name in _SAFE_DECORATORS or (name.count(".") == 1 and name.split(".")[1] in ("setter", "getter", "deleter")
                                         and not isinstance(dec, ast.Call)))
        if ok:
            kept.append(dec)
        else:
            notes.append(f"cell {cell}: the grader ignores the decorator @{ast.unparse(dec)} on {node.name}")
    node.decorator_list = kept


def _clean_function(node, learner_names: set[str], notes: list[str], cell: int) -> None:
    _clean_decorators(node, learner_names, notes, cell)
    a = node.args
    for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
        if arg is not None:
            arg.annotation = None
    node.returns = None
    for d in a.defaults + [d for d in a.kw_defaults if d is not None]:
        _check_default(d, learner_names, f"def {node.name}")
    if getattr(node, "type_params", None):
        raise _Unsafe(f"def {node.name}: type parameters are not supported by the grader")


def _clean_class(node: ast.ClassDef, learner_names: set[str], notes: list[str], cell: int) -> None:
    _clean_decorators(node, learner_names, notes, cell)
    if node.keywords or any(_dotted(b) is None for b in node.bases) or getattr(node, "type_params", None):
        raise _Unsafe(f"class {node.name}: bases must be plain names, without keywords such as metaclass=")
    body = []
    for i, stmt in enumerate(node.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if stmt.name in _FORBIDDEN_METHODS:
                raise _Unsafe(f"class {node.name}: the grader does not accept a {stmt.name} method")
            _clean_function(stmt, learner_names, notes, cell)
        elif isinstance(stmt, ast.ClassDef):
            _clean_class(stmt, learner_names, notes, cell)
        elif isinstance(stmt, ast.Pass) or (i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            pass
        elif isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) and not t.id.startswith("__")
                                                  for t in stmt.targets) and _is_literal(stmt.value):
            pass
        elif (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and not stmt.target.id.startswith("__")
              and _simple_annotation(stmt.annotation) and _is_literal(stmt.value)):
            pass
        else:
            raise _Unsafe(f"class {node.name}: a class body may hold only methods, a docstring and constant attributes")
        body.append(stmt)
    node.body = body or [ast.Pass()]


def _grading_import(stmt) -> bool:
    if isinstance(stmt, ast.Import):
        return any(a.name == "minivlm.grading" or a.name.startswith("minivlm.grading.") for a in stmt.names)
    mod = stmt.module or ""
    return (stmt.level > 0 or mod == "minivlm.grading" or mod.startswith("minivlm.grading.")
            or (mod == "minivlm" and any(a.name in ("grading", "*") for a in stmt.names)))


def extract_definitions(sources: list[tuple[int, str]]) -> tuple[list[dict], list[dict], list[str]]:
    """The kept statements of the code cells [(cell index, source)].

    Returns (statements [{"cell", "code"}], errors [{"cell", "ename", "evalue"}], notes [str]).
    """
    parsed, errors, notes = [], [], []
    for cell, src in sources:
        text = "\n".join("" if _MAGIC.match(line) else line for line in src.splitlines())
        try:
            parsed.append((cell, ast.parse(text)))
        except SyntaxError as exc:
            errors.append({"cell": cell, "ename": "SyntaxError",
                           "evalue": f"{exc.msg} (line {exc.lineno}); the grader skipped this cell"})
        except (RecursionError, MemoryError, ValueError) as exc:  # 50,000 terms of `1+1+...`; a NUL byte
            errors.append({"cell": cell, "ename": type(exc).__name__,
                           "evalue": f"Python's parser gave up on this cell ({exc}); the grader skipped it"})
    learner_names = {s.name for _, tree in parsed for s in tree.body
                     if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    statements = []
    for cell, tree in parsed:
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                if _grading_import(stmt):
                    continue
            elif not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            try:
                if isinstance(stmt, ast.ClassDef):
                    _clean_class(stmt, learner_names, notes, cell)
                elif not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    _clean_function(stmt, learner_names, notes, cell)
                statements.append({"cell": cell, "code": ast.unparse(stmt)})
            except _Unsafe as exc:
                errors.append({"cell": cell, "ename": "Skipped", "evalue": f"{exc}; the grader skipped it"})
            except RecursionError:
                name = getattr(stmt, "name", "an import")
                errors.append({"cell": cell, "ename": "Skipped",
                               "evalue": f"{name}: nested too deeply for the grader to read; the grader skipped it"})
    return statements, errors, notes


# ----------------------------------------------------------------------------- the grading process (child)


def _child() -> None:
    """Entry point of the grading subprocess: a JSON payload on stdin, JSON lines on the original stdout."""
    payload = json.loads(sys.stdin.read())
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")

    def send(**msg) -> None:
        proto.write(json.dumps(msg, ensure_ascii=False) + "\n")
        proto.flush()

    import importlib
    import importlib.util
    import types

    import torch

    from minivlm import grading

    torch.set_num_threads(1)
    for spec in payload.get("extra_checks", []):  # trusted, from the grader's command line
        where, _, func = spec.partition(":")
        if where.endswith(".py"):
            mspec = importlib.util.spec_from_file_location(Path(where).stem, where)
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = mod
            mspec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(where)
        if func:
            getattr(mod, func)()
    run = grading.run
    checks = dict(grading.CHECKS)
    tasks = [t for t in checks if t.split(".", 1)[0] == payload["chapter"]]
    skip = set(payload.get("skip", []))
    send(event="tasks", tasks=[{"task_id": t, "title": checks[t].title, "points": checks[t].points,
                                "fn_name": checks[t].fn_name} for t in tasks])

    limit_mb = payload.get("memory_mb")
    if limit_mb:
        try:
            import resource

            with open("/proc/self/status") as f:
                vm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
            cap = vm + int(limit_mb) * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ImportError, OSError, ValueError):
            pass  # no RLIMIT_AS here (not Linux): the time limits still apply

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the learner's prints go nowhere)

    ns: dict = {"__name__": "__handin__", "__builtins__": __builtins__}
    errors = []
    for st in payload["statements"]:
        try:
            exec(compile(st["code"], f"<cell {st['cell']}>", "exec"), ns)
        except BaseException as exc:  # noqa: BLE001 (an import that fails, MemoryError, ...)
            errors.append({"cell": st["cell"], "ename": type(exc).__name__, "evalue": str(exc).strip()})
    send(event="loaded", errors=errors)

    mem_words = ("MemoryError", "can't allocate memory", "not enough memory", "std::bad_alloc", "out of memory")
    for t in tasks:
        if t in skip:
            continue
        name = checks[t].fn_name
        fn = ns.get(name)
        if not isinstance(fn, types.FunctionType) or not fn.__code__.co_filename.startswith("<cell "):
            send(event="result", task_id=t, status="missing", cell=None,
                 message=f"missing: no top-level function `def {name}(...)` in the notebook")
            continue
        cell = int(fn.__code__.co_filename[6:-1])
        send(event="start", task_id=t)
        try:
            res = run(t, fn)
            passed, message = res.passed, res.message
        except BaseException as exc:  # noqa: BLE001 (KeyboardInterrupt, SystemExit from the learner's code)
            passed, message = False, f"your code raised {type(exc).__name__}: {exc}"
        if not passed and limit_mb and any(w in message for w in mem_words):
            message = f"exceeded the memory limit of {limit_mb} MiB ({message})"
        send(event="result", task_id=t, status="passed" if passed else "failed", cell=cell, message=message)
    send(event="done")
    proto.close()
    os._exit(0)  # no atexit handlers or finalizers of the learner's objects


# ----------------------------------------------------------------------------- the parent


def _spawn(payload: dict, cwd: Path):
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", "from minivlm.grading.sandbox import _child; _child()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=str(cwd), start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    proc.stdin.write(json.dumps(payload).encode())
    proc.stdin.close()
    return proc, err


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _stream(proc, deadline_of):
    """Yield the child's JSON messages; yield ("timeout", None) when deadline_of() passes, then stop."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    fd = proc.stdout.fileno()
    try:
        while True:
            left = deadline_of() - time.monotonic()
            if left <= 0:
                yield "timeout", None
                return
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if buf.strip():
                    yield "message", buf
                yield "eof", None
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield "message", line
    finally:
        sel.close()


def _abbreviated(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def grade_notebook(path: str | Path, timeout: float = 60, notebook_timeout: float = 600, memory_mb: int | None = 4096,
                   chapter: str | None = None, extra_checks: tuple[str, ...] = ()) -> dict:
    """Grade one hand-in; never raises for a bad hand-in (the report says why it was not graded).

    Returns {"notebook", "chapter", "seconds", "tasks": [{"task_id", "title", "status", "message",
    "cell", "points", "max_points"}], "errors": [...], "notes": [...], "passed", "failed", "points",
    "max_points", "ok"} and, for a hand-in that could not be graded, "unreadable": the reason.
    status: "passed", "failed", "missing", "timed out" or "not run".
    """
    path = Path(path)
    start = time.perf_counter()
    report = {"notebook": str(path), "chapter": None, "seconds": 0.0, "tasks": [], "errors": [], "notes": [],
              "passed": 0, "failed": 0, "points": 0, "max_points": 0, "ok": False}

    def give_up(reason: str) -> dict:
        report.update(unreadable=reason, seconds=round(time.perf_counter() - start, 2))
        return report

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return give_up(f"cannot read the file ({exc.__class__.__name__}: {exc})")
    except json.JSONDecodeError as exc:
        return give_up(f"not a notebook: not JSON ({exc})")
    except RecursionError:
        return give_up("not a notebook: its JSON is nested too deeply to read")
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        return give_up("not a notebook: the JSON has no list of cells")
    sources = []
    for i, cell in enumerate(raw["cells"]):
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            src = cell.get("source", "")
            if isinstance(src, list) and all(isinstance(line, str) for line in src):
                src = "".join(src)
            if not isinstance(src, str):
                return give_up(f"not a notebook: cell {i}'s source must be a string or a list of strings, "
                               f"got {_abbreviated(src)}")
            sources.append((i, src))
    own = notebook_chapter(path, [s for _, s in sources])
    report["chapter"] = own
    if chapter is not None and own is not None and own != chapter:
        return give_up(f"belongs to chapter {own}, not chapter {chapter}: not graded")
    chapter = chapter or own
    report["chapter"] = chapter
    if chapter is None:
        return give_up("cannot tell the chapter: name the file NN_name.ipynb")

    statements, errors, notes = extract_definitions(sources)
    report["errors"], report["notes"] = errors, notes
    payload = {"chapter": chapter, "statements": statements, "memory_mb": memory_mb,
               "extra_checks": [str(Path(e.split(":")[0]).resolve()) + (":" + e.split(":", 1)[1] if ":" in e else "")
                                if e.split(":")[0].endswith(".py") else e for e in extra_checks]}
    results: dict[str, dict] = {}
    meta: list[dict] | None = None
    nb_deadline = time.monotonic() + notebook_timeout
    load_errors_seen = False
    while True:
        payload["skip"] = list(results)
        proc, err = _spawn(payload, path.parent.resolve())
        current, task_deadline = None, float("inf")
        ended = None
        for kind, line in _stream(proc, lambda: min(nb_deadline, task_deadline)):
            if kind != "message":
                ended = kind
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            ev = msg.get("event")
            if ev == "tasks":
                meta = meta or msg["tasks"]
            elif ev == "loaded" and not load_errors_seen:
                report["errors"] += msg["errors"]
                load_errors_seen = True
            elif ev == "start":
                current, task_deadline = msg["task_id"], time.monotonic() + timeout
            elif ev == "result":
                results[msg["task_id"]] = {k: msg[k] for k in ("status", "message", "cell")}
                current, task_deadline = None, float("inf")
            elif ev == "done":
                ended = "done"
                break
        if ended != "done":
            _kill(proc)
        else:
            proc.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace").strip()
        err.close()
        if ended == "done":
            break
        if ended == "timeout":
            if current is not None and time.monotonic() < nb_deadline:
                results[current] = {"status": "timed out", "message": f"timed out after {timeout:g} s", "cell": None}
                continue  # a fresh process grades the remaining tasks
            if current is not None:
                results[current] = {"status": "timed out", "cell": None,
                                    "message": f"timed out: the notebook's limit of {notebook_timeout:g} s ran out"}
            report["errors"].append({"cell": None, "ename": "Timeout",
                                     "evalue": f"grading timed out after {notebook_timeout:g} s (the notebook's limit)"})
            break
        # the grading process died
        last = stderr.splitlines()[-1] if stderr else f"exit code {proc.returncode}"
        if meta is None:
            report["errors"].append({"cell": None, "ename": "GraderError", "evalue": f"the grading process failed: {last}"})
            break
        if current is None:
            report["errors"].append({"cell": None, "ename": "GraderError", "evalue": f"the grading process died: {last}"})
            break
        memory = "MemoryError" in stderr or "bad_alloc" in stderr or proc.returncode in (-signal.SIGKILL, -signal.SIGSEGV)
        results[current] = {"status": "failed", "cell": None, "message": (
            f"exceeded the memory limit of {memory_mb} MiB" if memory and memory_mb else
            f"the grading process died while running your code ({last})")}

    for t in meta or []:
        r = results.get(t["task_id"], {"status": "not run", "cell": None, "message": "not run: grading stopped before it"})
        pts = t["points"] if r["status"] == "passed" else 0
        report["tasks"].append({"task_id": t["task_id"], "title": t["title"], "status": r["status"],
                                "message": r["message"], "cell": r["cell"], "points": pts, "max_points": t["points"]})
    if meta is not None and not meta:
        report["errors"].append({"cell": None, "ename": "NoTasks", "evalue": f"no registered tasks for chapter {chapter}"})
    tasks = report["tasks"]
    report["errors"].sort(key=lambda e: (e["cell"] is None, e["cell"] or 0))
    report.update(passed=sum(r["status"] == "passed" for r in tasks), points=sum(r["points"] for r in tasks),
                  max_points=sum(r["max_points"] for r in tasks), seconds=round(time.perf_counter() - start, 2))
    report["failed"] = len(tasks) - report["passed"]
    report["ok"] = bool(tasks) and report["failed"] == 0 and not report["errors"]
    return report
