"""Exercise notebooks, generated from the solutions: `minivlm exercises build [--check]`.

The solutions (solutions/NN_name.py, jupytext percent) are the one source. In them a region
that the learner must write is marked:

    def causal_mask(t: int) -> torch.Tensor:
        ### BEGIN SOLUTION hint: keep the lower triangle of a (T, T) matrix of ones
        return torch.ones(t, t, dtype=torch.bool).tril()
        ### END SOLUTION

and the generator replaces it with `raise NotImplementedError("<hint>")` at the marker's
indentation. A long hint may go on over the lines right after the BEGIN marker, each starting
with `###` (the generator joins them and wraps the string over lines of at most 110 characters). In markdown cells, `<!-- BEGIN SOLUTION -->` ... `<!-- END SOLUTION -->` becomes
"*Your answer here.*". The result is written to exercises/NN_name.py and its paired .ipynb
(without outputs), with a first cell saying where it comes from and how to check it.

The .ipynb is also an nbgrader source notebook: every cell carries nbgrader's cell metadata
(schema version 3, what its "Create Assignment" toolbar writes). A cell that held a solution
region is an "Autograded answer" (a markdown one a "Manually graded answer" worth 0 points, as
nbgrader wants markdown answers graded by hand); a cell calling `check("NN.task", ...)` is an
"Autograder tests" cell worth the task's registered points; every other cell is "Read-only", so
that nbgrader's autograde puts back any edit of it. The .py carries none of this (it would put a
line of JSON above every cell); `notebook_cells` ignores metadata, so the pair still agrees.

Every chapter uses this; the self-checks that the exercises call live in `minivlm.grading`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from minivlm.grading import CHECKS, IMPORT_ERRORS
from minivlm.notebooks import notebook_cells, py_to_notebook, write_notebook

__all__ = [
    "BuildReport",
    "DEFAULT_HINT",
    "NBGRADER_SCHEMA_VERSION",
    "build",
    "exercise_notebook",
    "exercise_text",
    "solution_files",
    "strip_solutions",
]

DEFAULT_HINT = "write this part"
MARKDOWN_ANSWER = "*Your answer here.*"

_CODE_BEGIN = re.compile(r"^(?P<indent>[ \t]*)###[ \t]*BEGIN SOLUTION(?:[ \t]+hint:[ \t]*(?P<hint>.*?))?[ \t]*$")
_CODE_END = re.compile(r"^[ \t]*###[ \t]*END SOLUTION[ \t]*$")
_HINT_MORE = re.compile(r"^[ \t]*###[ \t]+(?P<more>\S.*?)[ \t]*$")  # a hint's next line, right after BEGIN
_MD_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#[ \t]*<!--[ \t]*BEGIN SOLUTION[ \t]*-->[ \t]*$")
_MD_END = re.compile(r"^[ \t]*#[ \t]*<!--[ \t]*END SOLUTION[ \t]*-->[ \t]*$")
_CELL_MARKER = re.compile(r"^# %%")
_SOLUTION_NAME = re.compile(r"^\d{2}_[\w\-]+\.py$")
_CHECK_CALL = re.compile(r"^[ \t]*check\(\s*(?P<q>['\"])(?P<task>[^'\"]+)(?P=q)", re.MULTILINE)
_NOT_IN_GRADE_ID = re.compile(r"[^A-Za-z0-9_\-]")  # nbgrader's grade_id pattern: ^[a-zA-Z0-9_\-]*$

NBGRADER_SCHEMA_VERSION = 3


def _raise_line(indent: str, hint: str, width: int = 110) -> str:
    """`raise NotImplementedError("hint")` at `indent`; a hint too long for one line is split into
    adjacent string literals (Python joins them: the message is the hint, unchanged)."""
    import textwrap

    one = f"{indent}raise NotImplementedError({json.dumps(hint, ensure_ascii=False)})\n"
    if len(one) <= width + 1:
        return one
    chunks = textwrap.wrap(hint, width=max(30, width - len(indent) - 8), break_on_hyphens=False,
                           break_long_words=False)
    literals = [json.dumps(c + (" " if i < len(chunks) - 1 else ""), ensure_ascii=False) for i, c in enumerate(chunks)]
    body = "".join(f"{indent}    {lit}\n" for lit in literals[:-1]) + f"{indent}    {literals[-1]})\n"
    return f"{indent}raise NotImplementedError(\n{body}"


def strip_solutions(text: str, source: str = "<string>") -> str:
    """Replace every marked solution region in a jupytext percent script by its stub.

    Raises ValueError naming `source` and the line (1-based) for an END without a BEGIN, a
    BEGIN inside an open region (nested), a region left open at the end of the file, a region
    that crosses a cell boundary, or a malformed marker line.
    """
    out: list[str] = []
    open_at: int | None = None  # line number of the BEGIN of the region we are inside
    open_kind = ""
    pending: list | None = None  # [indent, hint words] of a code BEGIN whose hint may go on
    for n, line in enumerate(text.splitlines(keepends=True), start=1):
        bare = line.rstrip("\r\n")
        if pending is not None:
            more = _HINT_MORE.match(bare)
            if more and "SOLUTION" not in bare:
                pending[1].append(more.group("more"))
                continue
            out.append(_raise_line(pending[0], " ".join(" ".join(pending[1]).split())))
            pending = None
        code_begin, md_begin = _CODE_BEGIN.match(bare), _MD_BEGIN.match(bare)
        code_end, md_end = _CODE_END.match(bare), _MD_END.match(bare)
        if code_begin or md_begin:
            if open_at is not None:
                raise ValueError(f"{source}:{n}: nested BEGIN SOLUTION (the region opened at line {open_at} is not closed)")
            open_at, open_kind = n, "code" if code_begin else "markdown"
            m = code_begin or md_begin
            indent = m.group("indent")
            if code_begin and (m.group("hint") or "").strip():
                pending = [indent, [m.group("hint").strip()]]
            elif code_begin:
                out.append(_raise_line(indent, DEFAULT_HINT))
            else:
                out.append(f"{indent}# {MARKDOWN_ANSWER}\n")
            continue
        if code_end or md_end:
            if open_at is None:
                raise ValueError(f"{source}:{n}: END SOLUTION without a matching BEGIN SOLUTION")
            kind = "code" if code_end else "markdown"
            if kind != open_kind:
                raise ValueError(f"{source}:{n}: {kind} END SOLUTION closes the {open_kind} region opened at line {open_at}")
            open_at = None
            continue
        if "BEGIN SOLUTION" in bare or "END SOLUTION" in bare:
            raise ValueError(
                f"{source}:{n}: malformed solution marker {bare.strip()!r} (expected '### BEGIN SOLUTION [hint: ...]', "
                "'### END SOLUTION', '# <!-- BEGIN SOLUTION -->' or '# <!-- END SOLUTION -->' on a line of its own)"
            )
        if open_at is not None:
            if _CELL_MARKER.match(bare):
                raise ValueError(f"{source}:{n}: a cell boundary inside the solution region opened at line {open_at}")
            continue  # the solution itself: dropped
        out.append(line)
    if open_at is not None:
        raise ValueError(f"{source}:{open_at}: BEGIN SOLUTION is never closed by an END SOLUTION")
    return "".join(out)


def _header_cell(name: str) -> str:
    stem = Path(name).stem
    return (
        "# %% [markdown]\n"
        f"# > **Exercises.** This notebook is generated from `solutions/{stem}.py` by `minivlm exercises build`:\n"
        "# > edit the solution, not this file.\n"
        "# > Replace every `raise NotImplementedError(...)` with your code; each task is followed by a\n"
        "# > `check(...)` cell that tells you precisely what is wrong. To grade the whole notebook, run\n"
        f"# > `minivlm check exercises/{stem}.ipynb`.\n"
        "\n"
    )


def _split_yaml_header(text: str) -> tuple[str, str]:
    """Split the jupytext YAML header ('# ---' ... '# ---' at the top) from the cells."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip() != "# ---":
        return "", text
    for i in range(1, len(lines)):
        if lines[i].rstrip() == "# ---":
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            return "".join(lines[: i + 1]) + "\n", "".join(lines[j:])
    return "", text


def exercise_text(solution_text: str, name: str, source: str | None = None) -> str:
    """The exercise script for a solution script called `name` (e.g. "01_transformer.py")."""
    stripped = strip_solutions(solution_text, source or name)
    header, body = _split_yaml_header(stripped)
    # The nbgrader metadata lives in the .ipynb only: without this filter, opening the pair in
    # Jupyter with jupytext and saving would drop it (the cells are read from the .py).
    header = header.replace("#   jupytext:\n", "#   jupytext:\n#     cell_metadata_filter: -nbgrader\n", 1)
    return header + _header_cell(name) + body


def _nbgrader(grade_id: str, *, solution: bool, grade: bool, locked: bool, points: float | None = None) -> dict:
    """One cell's nbgrader metadata, the keys its "Create Assignment" toolbar writes (schema 3)."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked}
    if grade:
        meta["points"] = points  # only graded cells have points
    meta.update(schema_version=NBGRADER_SCHEMA_VERSION, solution=solution, task=False)
    return meta


def _grade_id(*parts: str) -> str:
    return "-".join(_NOT_IN_GRADE_ID.sub("_", p) for p in parts)


def _add_nbgrader_metadata(nb: nbformat.NotebookNode, solution_text: str, name: str, source: str) -> None:
    """Mark every cell of the exercise notebook `nb` (generated from `solution_text`) for nbgrader.

    grade_ids come from the chapter, the task and the cell's role, never from a clock: the same
    solution always gives the same notebook. Raises ValueError naming `source` for a check of an
    unregistered task, a task checked by two cells, two checks in one cell, or a check inside a
    solution cell: nbgrader could not grade those as `minivlm check` does.
    """

    chapter = name[:2]
    solution_cells = jupytext.reads(solution_text, fmt="py:percent").cells
    # Stripping never crosses a cell boundary, so the exercise is the header cell plus the
    # solution's cells, one for one; a cell without a solution region is copied unchanged.
    if len(nb.cells) != len(solution_cells) + 1 or any(
        "BEGIN SOLUTION" not in s.source and s.source != e.source for s, e in zip(solution_cells, nb.cells[1:])
    ):
        raise RuntimeError(f"{source}: the exercise's cells do not line up with the solution's (a bug in minivlm.exercises)")
    had_solution = [False] + ["BEGIN SOLUTION" in c.source for c in solution_cells]
    answers = 0
    used: set[str] = set()  # answer cells' names
    checked: dict[str, int] = {}
    for i, (cell, solution) in enumerate(zip(nb.cells, had_solution)):
        tasks = [m.group("task") for m in _CHECK_CALL.finditer(cell.source)] if cell.cell_type == "code" else []
        if solution and tasks:
            raise ValueError(f"{source}: cell {i} holds a solution region and check({tasks[0]!r}, ...); "
                             "put the check in a cell of its own (nbgrader locks test cells)")
        if len(tasks) > 1:
            raise ValueError(f"{source}: cell {i} checks {', '.join(tasks)}; give each check a cell of its own "
                             "(nbgrader gives a test cell one task's points)")
        if solution:
            answers += 1
            defined = set(re.findall(r"^(?:def|class)[ \t]+(\w+)", cell.source, re.MULTILINE))
            named = [t for t, c in CHECKS.items() if t.startswith(chapter + ".") and c.fn_name in defined]
            # Named after the task it answers where there is one (and only one cell answers it);
            # numbered otherwise.
            gid = _grade_id(chapter, named[0].split(".", 1)[1]) if len(named) == 1 else ""
            if not gid or gid in used:
                gid = _grade_id(chapter, f"answer{answers}")
            used.add(gid)
            if cell.cell_type == "markdown":  # nbgrader: a markdown answer must be graded by hand
                meta = _nbgrader(gid + "-answer", solution=True, grade=True, locked=False, points=0)
            else:
                meta = _nbgrader(gid + "-solution", solution=True, grade=False, locked=False)
        elif tasks:
            task = tasks[0]
            if task not in CHECKS:
                broken = f" (failed to import: {IMPORT_ERRORS})" if IMPORT_ERRORS else ""
                raise ValueError(f"{source}: cell {i} checks {task!r}, which minivlm.grading does not register{broken}")
            if task in checked:
                raise ValueError(f"{source}: {task!r} is checked by cells {checked[task]} and {i}; "
                                 "one cell per task (nbgrader would count its points twice)")
            checked[task] = i
            meta = _nbgrader(_grade_id(*task.split(".", 1), "check"), solution=False, grade=True, locked=True,
                             points=CHECKS[task].points)
        else:
            meta = _nbgrader(_grade_id(chapter, f"cell{i}", "readonly"), solution=False, grade=False, locked=True)
        cell.metadata["nbgrader"] = meta
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells]
    dup = sorted({g for g in ids if ids.count(g) > 1})
    if dup:
        raise ValueError(f"{source}: two cells would get the nbgrader grade_id {dup[0]!r}")


def exercise_notebook(solution_text: str, name: str, source: str | None = None) -> nbformat.NotebookNode:
    """The exercise notebook (no outputs, nbgrader metadata on every cell) for a solution script `name`."""
    nb = py_to_notebook(exercise_text(solution_text, name, source))
    _add_nbgrader_metadata(nb, solution_text, name, source or name)
    return nb


def solution_files(solutions_dir: str | Path) -> list[Path]:
    """The solution scripts (NN_name.py) in a folder, sorted."""
    d = Path(solutions_dir)
    return sorted(p for p in d.glob("*.py") if _SOLUTION_NAME.match(p.name))


@dataclass
class BuildReport:
    written: list[Path]  # files (re)written, or that would be with check=True
    removed: list[Path]  # stale generated exercises (no solution any more): deleted only with prune=True
    pruned: bool = False  # whether `removed` were deleted (prune=True and check=False)

    @property
    def changed(self) -> list[Path]:
        return self.written + self.removed


def _ipynb_differs(path: Path, want: nbformat.NotebookNode) -> bool:
    if not path.exists():
        return True
    try:
        have = nbformat.read(str(path), as_version=4)
    except Exception:
        return True
    has_outputs = any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in have.cells)
    if has_outputs or notebook_cells(have) != notebook_cells(want):
        return True
    def metadata_filter(nb):
        return (nb.metadata.get("jupytext") or {}).get("cell_metadata_filter")

    if metadata_filter(have) != metadata_filter(want):
        return True
    return [c.metadata.get("nbgrader") for c in have.cells] != [c.metadata.get("nbgrader") for c in want.cells]


def build(solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises", check: bool = False,
          prune: bool = False) -> BuildReport:
    """Generate exercises_dir/NN_name.{py,ipynb} from every solutions_dir/NN_name.py.

    With check=True nothing is written: the report lists what differs from what would be generated.
    Only the chapters present in solutions_dir are built. A generated exercise whose solution is
    gone (NN_name.py/.ipynb carrying this builder's header) is stale: the report lists it in
    `removed`, and it is deleted only with prune=True; nothing else is ever removed.
    Raises ValueError, before touching anything, when solutions_dir is missing or holds no
    NN_name.py script (a mistyped folder must not make every generated exercise look stale), or
    when exercises_dir is solutions_dir (the stubs would overwrite the solutions).
    """
    sol_dir, ex_dir = Path(solutions_dir), Path(exercises_dir)
    if not isinstance(check, bool) or not isinstance(prune, bool):
        raise TypeError(f"check and prune must be True or False, got check={check!r}, prune={prune!r}")
    if not sol_dir.is_dir():
        raise ValueError(f"solutions folder {str(sol_dir)!r} does not exist (expected a folder of NN_name.py scripts)")
    if ex_dir.resolve() == sol_dir.resolve():
        raise ValueError(f"exercises folder {str(ex_dir)!r} is the solutions folder {str(sol_dir)!r}: the stubs would "
                         "overwrite the solutions; expected another folder (e.g. exercises/). Nothing was written")
    solutions = solution_files(sol_dir)
    if not solutions:
        raise ValueError(
            f"solutions folder {str(sol_dir)!r} holds no solution scripts (expected at least one NN_name.py, "
            "e.g. 01_transformer.py); nothing was built and nothing was removed"
        )
    written: list[Path] = []
    wanted: set[str] = set()
    for sol in solutions:
        sol_text = sol.read_text(encoding="utf-8")
        py_text = exercise_text(sol_text, sol.name, source=str(sol))
        py_path, nb_path = ex_dir / sol.name, ex_dir / (sol.stem + ".ipynb")
        wanted |= {py_path.name, nb_path.name}
        nb = exercise_notebook(sol_text, sol.name, source=str(sol))
        if not py_path.exists() or py_path.read_text(encoding="utf-8") != py_text:
            written.append(py_path)
            if not check:
                ex_dir.mkdir(parents=True, exist_ok=True)
                py_path.write_text(py_text, encoding="utf-8")
        if _ipynb_differs(nb_path, nb):
            written.append(nb_path)
            if not check:
                ex_dir.mkdir(parents=True, exist_ok=True)
                write_notebook(nb, nb_path)
    # Generated exercises whose solution is gone are stale; files we did not generate are left alone.
    removed: list[Path] = []
    if ex_dir.is_dir():
        for p in sorted(ex_dir.iterdir()):
            if p.suffix in (".py", ".ipynb") and _SOLUTION_NAME.match(p.stem + ".py") and p.name not in wanted:
                if "minivlm exercises build" in p.read_text(encoding="utf-8", errors="replace"):
                    removed.append(p)
    pruned = prune and not check
    if pruned:
        for p in removed:
            p.unlink()
    return BuildReport(written, removed, pruned)
