"""Every notebook is a jupytext pair (.py <-> .ipynb) holding the same cells; chapters and
solutions store the outputs of a run, exercises store none."""
from pathlib import Path

import nbformat
import pytest

from minivlm.notebooks import pair_differences, py_to_notebook, write_notebook

ROOT = Path(__file__).resolve().parent.parent
DIRS = ("notebooks", "exercises", "solutions")


def _stems(folder: str) -> list[str]:
    d = ROOT / folder
    if not d.is_dir():
        return []
    return sorted({f"{folder}/{p.stem}" for p in d.iterdir() if p.suffix in (".py", ".ipynb") and p.name[:2].isdigit()})


ALL = [s for d in DIRS for s in _stems(d)]
EXECUTED = [s for s in ALL if not s.startswith("exercises/")]
EXERCISES = [s for s in ALL if s.startswith("exercises/")]


@pytest.mark.parametrize("stem", ALL)
def test_pair_exists_and_agrees(stem):
    py, nb = ROOT / f"{stem}.py", ROOT / f"{stem}.ipynb"
    assert py.exists(), f"{nb} has no paired {py.name}"
    fix = "make exercises" if stem.startswith("exercises/") else f"minivlm notebooks execute {stem}.py"
    assert nb.exists(), f"{py} has no paired {nb.name}: run `{fix}`"
    problems = pair_differences(py, nb)
    assert not problems, f"{stem}: .py and .ipynb disagree: " + "; ".join(problems)


def _code_cells(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


@pytest.mark.parametrize("stem", EXECUTED)
def test_chapter_and_solution_notebooks_store_outputs(stem):
    nb = ROOT / f"{stem}.ipynb"
    if not nb.exists():
        pytest.fail(f"{nb} is missing")
    not_run = [i for i, c in enumerate(_code_cells(nb)) if c.get("execution_count") is None]
    assert not not_run, f"{nb}: code cells {not_run} were never executed; run `minivlm notebooks execute {stem}.py`"


@pytest.mark.parametrize("stem", EXERCISES)
def test_exercise_notebooks_store_no_outputs(stem):
    nb = ROOT / f"{stem}.ipynb"
    if not nb.exists():
        pytest.fail(f"{nb} is missing")
    dirty = [i for i, c in enumerate(_code_cells(nb)) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{nb}: code cells {dirty} carry outputs; run `make exercises`"


PY = """# %% [markdown]
# # A pair
#
# Some text.

# %%
x = 6 * 7

# %%
print(x)
"""


def test_pair_comparison_catches_a_broken_pair(tmp_path):
    py, ipynb = tmp_path / "01_pair.py", tmp_path / "01_pair.ipynb"
    py.write_text(PY)
    assert pair_differences(py, ipynb) == [f"missing: {ipynb}"]
    write_notebook(py_to_notebook(PY), ipynb)
    assert pair_differences(py, ipynb) == []

    nb = nbformat.read(str(ipynb), as_version=4)
    nb.cells[2].source += "\n\n"  # trailing blank lines: jupytext reads them the same way
    nb.cells[1].metadata["tags"] = ["x"]  # so is metadata the script does not carry
    nbformat.write(nb, str(ipynb))
    assert pair_differences(py, ipynb) == []

    nb.cells[1].source = "x = 6 * 8"  # a real edit made in Jupyter, not synced to the .py
    nbformat.write(nb, str(ipynb))
    assert pair_differences(py, ipynb) == ["cell 1 (code) differs: line 1: .py has 'x = 6 * 7', .ipynb has 'x = 6 * 8'"]

    nb.cells[1].source = "x = 6 * 7"
    nb.cells[0] = nbformat.v4.new_raw_cell(nb.cells[0].source)
    nbformat.write(nb, str(ipynb))
    assert pair_differences(py, ipynb) == ["cell 0: markdown in 01_pair.py, raw in 01_pair.ipynb"]

    write_notebook(py_to_notebook(PY + "\n# %%\ny = 1\n"), ipynb)
    assert pair_differences(py, ipynb) == ["01_pair.py has 3 cells, 01_pair.ipynb has 4"]


def test_py_to_notebook_keeps_metadata_and_gives_stable_ids():
    old = nbformat.v4.new_notebook(metadata={"language_info": {"name": "python"}, "widgets": {"state": {}}})
    nb = py_to_notebook(PY, previous=old)
    assert nb.metadata.language_info.name == "python" and "widgets" not in nb.metadata
    assert nb.metadata.kernelspec.name == "python3"
    assert [c.id for c in nb.cells] == ["cell-0", "cell-1", "cell-2"]
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[1].source == "x = 6 * 7"


def test_squash_streams_keeps_final_progress_lines():
    from minivlm.notebooks import squash_streams

    outs = [nbformat.v4.new_output("stream", name="stderr", text="\rtrain:   0%| 0/3"),
            nbformat.v4.new_output("stream", name="stderr", text="\rtrain:  33%| 1/3"),
            nbformat.v4.new_output("stream", name="stderr", text="\rtrain: 100%| 3/3\n"),
            nbformat.v4.new_output("stream", name="stdout", text="loss 0.5\n"),
            nbformat.v4.new_output("stream", name="stdout", text="done\n"),
            nbformat.v4.new_output("stream", name="stderr", text="\rnext:  50%|\rnext: 100%|\r")]
    got = squash_streams(outs)
    assert [(o["name"], o["text"]) for o in got] == [("stderr", "train: 100%| 3/3\n"),
                                                     ("stdout", "loss 0.5\ndone\n"), ("stderr", "next: 100%|")]


@pytest.mark.parametrize("stem", EXECUTED)
def test_stored_outputs_carry_no_machine_path(stem):
    import re

    text = (ROOT / f"{stem}.ipynb").read_text(encoding="utf-8")
    found = re.findall(r"(?:/work|/home|/root|/tmp|/Users)/[A-Za-z0-9_.-]+/[^\s\"']*", text)
    assert not found, f"{stem}.ipynb stores a path of the machine that ran it: {found[:3]}"
