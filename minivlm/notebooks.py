"""Chapter notebooks: jupytext pairs, built and executed with `minivlm notebooks execute`.

Every chapter is written as a jupytext percent script (notebooks/NN_name.py, the source of
truth, easy to diff and review) paired with a notebook (NN_name.ipynb) that stores the outputs
of a real run. `execute` rebuilds the .ipynb from the .py, runs it with nbclient in its own
folder and writes it back with outputs. The same pairing holds in exercises/ and solutions/.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Iterable

import jupytext
import nbformat

__all__ = [
    "DEFAULT_DIRS",
    "execute",
    "execute_notebook",
    "find_pairs",
    "notebook_cells",
    "pair_differences",
    "py_to_notebook",
    "read_py",
    "repo_root",
    "write_notebook",
]

DEFAULT_DIRS = ("notebooks", "solutions")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_BIG_OUTPUT = 1_000_000  # characters: one output larger than this is worth a warning


def repo_root() -> Path:
    """The repository: the first folder upwards from here holding pyproject.toml and notebooks/."""
    for d in [Path.cwd(), *Path.cwd().parents]:
        if (d / "pyproject.toml").is_file() and (d / "notebooks").is_dir():
            return d
    return Path(__file__).resolve().parent.parent  # an editable install lives in the repo


def read_py(path: str | Path) -> nbformat.NotebookNode:
    """Read a jupytext percent script as a notebook."""
    return jupytext.read(str(path), fmt="py:percent")


def _roundtrip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return jupytext.reads(jupytext.writes(nb, fmt="py:percent"), fmt="py:percent")


def notebook_cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell_type, source) of every cell, as jupytext reads them back from the percent script.

    Round-tripping through the script makes the comparison ignore what a pair cannot encode
    (trailing blank lines, cell ids, metadata) while catching any real change of a cell.
    """
    return [(c.cell_type, c.source) for c in _roundtrip(nb).cells]


def pair_differences(py_path: str | Path, ipynb_path: str | Path) -> list[str]:
    """Why a .py / .ipynb pair disagrees (empty list: they hold the same cells)."""
    py_path, ipynb_path = Path(py_path), Path(ipynb_path)
    missing = [str(p) for p in (py_path, ipynb_path) if not p.exists()]
    if missing:
        return [f"missing: {', '.join(missing)}"]
    a = notebook_cells(read_py(py_path))
    b = notebook_cells(nbformat.read(str(ipynb_path), as_version=4))
    problems = []
    if len(a) != len(b):
        problems.append(f"{py_path.name} has {len(a)} cells, {ipynb_path.name} has {len(b)}")
    for i, (ca, cb) in enumerate(zip(a, b)):
        if ca != cb:
            if ca[0] != cb[0]:
                problems.append(f"cell {i}: {ca[0]} in {py_path.name}, {cb[0]} in {ipynb_path.name}")
            else:
                problems.append(f"cell {i} ({ca[0]}) differs: {_first_diff(ca[1], cb[1])}")
            break  # the first difference is what a reader needs; later ones usually follow from it
    return problems


def _first_diff(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for k in range(max(len(la), len(lb))):
        x = la[k] if k < len(la) else "<end>"
        y = lb[k] if k < len(lb) else "<end>"
        if x != y:
            return f"line {k + 1}: .py has {x!r}, .ipynb has {y!r}"
    return "whitespace"


def py_to_notebook(text: str, previous: nbformat.NotebookNode | None = None) -> nbformat.NotebookNode:
    """The notebook of a percent script: its cells, with deterministic cell ids.

    Notebook metadata comes from `previous` (the existing .ipynb: kernelspec, language_info),
    updated by what the script's header says; no outputs.
    """
    nb = jupytext.reads(text, fmt="py:percent")
    metadata = dict(previous.metadata) if previous is not None else {}
    metadata.update(nb.metadata)
    metadata.setdefault("kernelspec", dict(KERNELSPEC))
    metadata.pop("widgets", None)
    jt = dict(metadata.get("jupytext", {}))
    jt.pop("text_representation", None)
    if jt:
        metadata["jupytext"] = jt
    nb.metadata = nbformat.from_dict(metadata)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # random ids would make every rebuild a diff
    return nb


def write_notebook(nb: nbformat.NotebookNode, path: str | Path) -> None:
    """Write a notebook the way Jupyter does (indent 1, trailing newline)."""
    text = jupytext.writes(nb, fmt="ipynb")
    Path(path).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def find_pairs(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(py, ipynb) paths for every notebook named by `paths` (files of a pair, or folders)."""
    stems: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix in (".py", ".ipynb") and re.match(r"^\d{2}_", f.name):
                    stems[f.with_suffix("")] = None
        elif p.suffix in (".py", ".ipynb"):
            if not p.exists():
                raise FileNotFoundError(f"no such notebook: {p}")
            stems[p.with_suffix("")] = None
        else:
            raise ValueError(f"expected a .py or .ipynb notebook or a folder, got {p}")
    return [(s.with_suffix(".py"), s.with_suffix(".ipynb")) for s in stems]


def _final_line(line: str) -> str:
    """What a terminal shows of a line that was rewritten with carriage returns (a progress bar)."""
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


def squash_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of one stream (the kernel sends a progress bar in hundreds
    of chunks) and keep only the final state of every line a progress bar rewrote with '\r'."""
    merged: list = []
    for out in outputs:
        if out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                and merged[-1].get("name") == out.get("name"):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream" and "\r" in out["text"]:
            out["text"] = "\n".join(_final_line(line) for line in out["text"].split("\n"))
    return merged


def _clean_outputs(nb: nbformat.NotebookNode, warn: Callable[[str], None]) -> None:
    """Drop interactive-widget outputs (a static notebook cannot show them), squash progress-bar
    chunks into their final lines, and flag huge outputs."""
    nb.metadata.pop("widgets", None)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            cell.outputs = squash_streams(cell.outputs)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if _WIDGET_MIME in data and len(data) > 1:
                del data[_WIDGET_MIME]
            size = sum(len(v) if isinstance(v, str) else len(str(v)) for v in data.values())
            size += len(out.get("text", "")) if isinstance(out.get("text"), str) else 0
            if size > _BIG_OUTPUT:
                warn(f"  warning: cell {i} has an output of {size / 1e6:.1f} MB")
        cell.metadata.pop("execution", None)


def execute_notebook(
    py_path: str | Path | None,
    ipynb_path: str | Path,
    timeout: int = 600,
    kernel_name: str = "python3",
    log: Callable[[str], None] = print,
) -> float:
    """Build `ipynb_path` from `py_path` (if given), execute it in its folder, write it with outputs.

    Returns the wall time in seconds. Raises nbclient's CellExecutionError (the notebook file is
    then left as it was) when a cell fails.
    """
    from nbclient import NotebookClient

    ipynb_path = Path(ipynb_path)
    previous = nbformat.read(str(ipynb_path), as_version=4) if ipynb_path.exists() else None
    if py_path is not None and Path(py_path).exists():
        nb = py_to_notebook(Path(py_path).read_text(encoding="utf-8"), previous)
    elif previous is not None:
        nb = previous
    else:
        raise FileNotFoundError(f"neither {py_path} nor {ipynb_path} exists")
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(ipynb_path.parent.resolve())}},
        record_timing=False,  # timestamps in the metadata would make every run a diff
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    _clean_outputs(nb, log)
    write_notebook(nb, ipynb_path)
    return seconds


def execute(
    paths: Iterable[str | Path] | None = None,
    timeout: int = 600,
    kernel_name: str = "python3",
    log: Callable[[str], None] = print,
) -> int:
    """Execute notebooks (default: every one in notebooks/ and solutions/); return the number that failed."""
    if not paths:
        root = repo_root()
        paths = [root / d for d in DEFAULT_DIRS if (root / d).is_dir()]
    pairs = find_pairs(paths)
    failed = 0
    times: list[tuple[Path, float, str]] = []
    for py, ipynb in pairs:
        start = time.perf_counter()
        try:
            seconds = execute_notebook(py if py.exists() else None, ipynb, timeout, kernel_name, log)
            times.append((ipynb, seconds, "ok"))
            log(f"{ipynb}: {seconds:.1f} s")
        except Exception as exc:
            failed += 1
            seconds = time.perf_counter() - start
            times.append((ipynb, seconds, "FAILED"))
            first = str(exc).strip().splitlines()
            log(f"{ipynb}: FAILED after {seconds:.1f} s ({type(exc).__name__}: {first[-1] if first else ''})")
            log(str(exc))
    if len(times) > 1:
        log(f"{len(times)} notebooks, {sum(t for _, t, _ in times):.1f} s in all, {failed} failed")
    return failed
