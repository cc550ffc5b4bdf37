"""Exercise notebooks, generated from the solutions: `minivlm exercises build [--check]`.

The solutions (solutions/NN_name.py, jupytext percent) are the one source. In them a region
that the learner must write is marked:

    def causal_mask(t: int) -> torch.Tensor:
        ### BEGIN SOLUTION hint: keep the lower triangle of a (T, T) matrix of ones
        return torch.ones(t, t, dtype=torch.bool).tril()
        ### END SOLUTION

and the generator replaces it with `raise NotImplementedError("<hint>")` at the marker's
indentation. In markdown cells, `<!-- BEGIN SOLUTION -->` ... `<!-- END SOLUTION -->` becomes
"*Your answer here.*". The result is written to exercises/NN_name.py and its paired .ipynb
(without outputs), with a first cell saying where it comes from and how to check it.

Every chapter uses this; the self-checks that the exercises call live in `minivlm.grading`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from minivlm.notebooks import notebook_cells, py_to_notebook, write_notebook

__all__ = ["BuildReport", "build", "exercise_text", "strip_solutions", "solution_files", "DEFAULT_HINT"]

DEFAULT_HINT = "write this part"
MARKDOWN_ANSWER = "*Your answer here.*"

_CODE_BEGIN = re.compile(r"^(?P<indent>[ \t]*)###[ \t]*BEGIN SOLUTION(?:[ \t]+hint:[ \t]*(?P<hint>.*?))?[ \t]*$")
_CODE_END = re.compile(r"^[ \t]*###[ \t]*END SOLUTION[ \t]*$")
_MD_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#[ \t]*<!--[ \t]*BEGIN SOLUTION[ \t]*-->[ \t]*$")
_MD_END = re.compile(r"^[ \t]*#[ \t]*<!--[ \t]*END SOLUTION[ \t]*-->[ \t]*$")
_CELL_MARKER = re.compile(r"^# %%")
_SOLUTION_NAME = re.compile(r"^\d{2}_[\w\-]+\.py$")


def strip_solutions(text: str, source: str = "<string>") -> str:
    """Replace every marked solution region in a jupytext percent script by its stub.

    Raises ValueError naming `source` and the line (1-based) for an END without a BEGIN, a
    BEGIN inside an open region (nested), a region left open at the end of the file, a region
    that crosses a cell boundary, or a malformed marker line.
    """
    out: list[str] = []
    open_at: int | None = None  # line number of the BEGIN of the region we are inside
    open_kind = ""
    for n, line in enumerate(text.splitlines(keepends=True), start=1):
        bare = line.rstrip("\r\n")
        code_begin, md_begin = _CODE_BEGIN.match(bare), _MD_BEGIN.match(bare)
        code_end, md_end = _CODE_END.match(bare), _MD_END.match(bare)
        if code_begin or md_begin:
            if open_at is not None:
                raise ValueError(f"{source}:{n}: nested BEGIN SOLUTION (the region opened at line {open_at} is not closed)")
            open_at, open_kind = n, "code" if code_begin else "markdown"
            m = code_begin or md_begin
            indent = m.group("indent")
            if code_begin:
                hint = (m.group("hint") or "").strip() or DEFAULT_HINT
                out.append(f"{indent}raise NotImplementedError({json.dumps(hint, ensure_ascii=False)})\n")
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
    return header + _header_cell(name) + body


def solution_files(solutions_dir: str | Path) -> list[Path]:
    """The solution scripts (NN_name.py) in a folder, sorted."""
    d = Path(solutions_dir)
    return sorted(p for p in d.glob("*.py") if _SOLUTION_NAME.match(p.name))


@dataclass
class BuildReport:
    written: list[Path]  # files (re)written, or that would be with check=True
    removed: list[Path]  # stale generated exercises (no solution any more)

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
    return has_outputs or notebook_cells(have) != notebook_cells(want)


def build(solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises", check: bool = False) -> BuildReport:
    """Generate exercises_dir/NN_name.{py,ipynb} from every solutions_dir/NN_name.py.

    With check=True nothing is written: the report lists what differs from what would be generated.
    Raises ValueError when solutions_dir is missing or holds no NN_name.py script (a mistyped
    folder must not make every generated exercise look stale). Only files this builder generated
    (NN_name.py/.ipynb carrying its header) are ever removed.
    """
    sol_dir, ex_dir = Path(solutions_dir), Path(exercises_dir)
    if not sol_dir.is_dir():
        raise ValueError(f"solutions folder {str(sol_dir)!r} does not exist (expected a folder of NN_name.py scripts)")
    solutions = solution_files(sol_dir)
    if not solutions:
        raise ValueError(
            f"solutions folder {str(sol_dir)!r} holds no solution scripts (expected at least one NN_name.py, "
            "e.g. 01_transformer.py); nothing was built and nothing was removed"
        )
    written: list[Path] = []
    wanted: set[str] = set()
    for sol in solutions:
        py_text = exercise_text(sol.read_text(encoding="utf-8"), sol.name, source=str(sol))
        py_path, nb_path = ex_dir / sol.name, ex_dir / (sol.stem + ".ipynb")
        wanted |= {py_path.name, nb_path.name}
        nb = py_to_notebook(py_text)
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
                    if not check:
                        p.unlink()
    return BuildReport(written, removed)
