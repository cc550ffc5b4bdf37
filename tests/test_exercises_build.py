"""minivlm.exercises: stubs generated from solutions; bad markers; exercises/ is up to date."""
import shutil
from pathlib import Path

import nbformat
import pytest
import torch

from minivlm.exercises import build, exercise_text, solution_files, strip_solutions
from minivlm.notebooks import notebook_cells, read_py

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_fixture_solution_gives_expected_stubs():
    got = exercise_text((FIXTURES / "solutions/01_demo.py").read_text(), "01_demo.py")
    assert got == (FIXTURES / "expected/01_demo.py").read_text()


def test_stubs_raise_with_the_hint_and_solution_works():
    sol = (FIXTURES / "solutions/01_demo.py").read_text()
    cell = sol.split("# %%\n")[1]  # the causal_mask cell
    ns: dict = {}
    exec(cell, ns)
    assert torch.equal(ns["causal_mask"](3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    ex: dict = {}
    exec(strip_solutions(cell), ex)
    with pytest.raises(NotImplementedError, match=r"^start from a \(T, T\) matrix of ones"):
        ex["causal_mask"](3)


def test_stub_keeps_indentation_and_code_around_it():
    src = "def f(x):\n    y = x + 1\n    if y:\n        ### BEGIN SOLUTION hint: add one\n        y += 1\n        ### END SOLUTION\n    return y\n"
    assert strip_solutions(src) == (
        "def f(x):\n    y = x + 1\n    if y:\n        raise NotImplementedError(\"add one\")\n    return y\n"
    )
    ns: dict = {}
    exec(strip_solutions(src), ns)
    assert ns["f"](-1) == 0  # the branch around the stub still runs
    with pytest.raises(NotImplementedError, match="add one"):
        ns["f"](1)


def test_a_long_hint_goes_on_over_marker_lines_and_is_wrapped_in_the_stub():
    words = [f"word{i}" for i in range(60)]
    src = ("def f():\n    ### BEGIN SOLUTION hint: " + " ".join(words[:20]) + "\n"
           "    ###     " + " ".join(words[20:40]) + "\n    ### " + " ".join(words[40:]) + "\n"
           "    return 1\n    ### END SOLUTION\n")
    stub = strip_solutions(src)
    assert "return 1" not in stub and "###" not in stub
    assert max(len(line) for line in stub.splitlines()) <= 110
    assert stub.count("\n") > 3, "a hint this long must be split over several lines"
    ns: dict = {}
    exec(stub, ns)
    with pytest.raises(NotImplementedError) as info:
        ns["f"]()
    assert str(info.value) == " ".join(words), "the message must be the whole hint, words joined by single spaces"


def test_marker_lines_after_a_begin_without_hint_are_solution_lines():
    src = "def f():\n    ### BEGIN SOLUTION\n    ### not a hint\n    return 1\n    ### END SOLUTION\n"
    assert strip_solutions(src) == 'def f():\n    raise NotImplementedError("write this part")\n'


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("x = 1\n### END SOLUTION\n", 2, "without a matching BEGIN"),
        ("### BEGIN SOLUTION\nx = 1\n", 1, "never closed"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION\n", 2, "nested"),
        ("### BEGIN SOLUTION\nx = 1\n\n# %%\ny = 2\n### END SOLUTION\n", 4, "cell boundary"),
        ("# <!-- BEGIN SOLUTION -->\n# text\n### END SOLUTION\n", 3, "closes the markdown region"),
        ("x = 1\n### BEGIN SOLUTION (part a)\n", 2, "malformed solution marker"),
    ],
)
def test_bad_markers_raise_naming_file_and_line(text, line, what):
    with pytest.raises(ValueError, match=rf"^solutions/07_bad\.py:{line}: .*{what}"):
        strip_solutions(text, "solutions/07_bad.py")


def test_build_writes_pair_without_outputs_and_check_detects_drift(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    shutil.copytree(FIXTURES / "solutions", sol)
    assert solution_files(sol) == [sol / "01_demo.py"]
    report = build(sol, ex, check=True)
    assert sorted(p.name for p in report.written) == ["01_demo.ipynb", "01_demo.py"] and not ex.exists()

    report = build(sol, ex)
    assert sorted(p.name for p in report.written) == ["01_demo.ipynb", "01_demo.py"]
    assert (ex / "01_demo.py").read_text() == (FIXTURES / "expected/01_demo.py").read_text()
    nb = nbformat.read(str(ex / "01_demo.ipynb"), as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert nb.cells[0].cell_type == "markdown" and "minivlm check exercises/01_demo.ipynb" in nb.cells[0].source
    assert notebook_cells(nb) == notebook_cells(read_py(ex / "01_demo.py"))
    assert nb.metadata.kernelspec.name == "python3"
    assert build(sol, ex, check=True).changed == [] and build(sol, ex).changed == []  # idempotent

    # A hand edit of the exercise is drift; so is a solution edit not yet rebuilt.
    (ex / "01_demo.py").write_text((ex / "01_demo.py").read_text() + "\n# my edit\n")
    assert [p.name for p in build(sol, ex, check=True).written] == ["01_demo.py"]
    build(sol, ex)
    (sol / "01_demo.py").write_text((sol / "01_demo.py").read_text().replace("answer = 42", "answer = 43"))
    assert build(sol, ex, check=True).changed == []  # the change is inside a solution region: stubs unchanged
    (sol / "01_demo.py").write_text((sol / "01_demo.py").read_text().replace("import torch", "import torch  # !"))
    assert sorted(p.name for p in build(sol, ex, check=True).written) == ["01_demo.ipynb", "01_demo.py"]

    # Outputs stored in an exercise notebook are drift too.
    build(sol, ex)
    nb = nbformat.read(str(ex / "01_demo.ipynb"), as_version=4)
    nb.cells[2].execution_count = 1
    nbformat.write(nb, str(ex / "01_demo.ipynb"))
    assert [p.name for p in build(sol, ex, check=True).written] == ["01_demo.ipynb"]

    # An exercise whose solution was removed is stale: listed, and removed only with prune=True;
    # a hand-made file stays.
    (sol / "01_demo.py").rename(sol / "02_demo.py")
    (ex / "05_mine.py").write_text("x = 1\n")
    report = build(sol, ex)
    assert sorted(p.name for p in report.removed) == ["01_demo.ipynb", "01_demo.py"] and not report.pruned
    assert sorted(p.name for p in ex.iterdir()) == ["01_demo.ipynb", "01_demo.py", "02_demo.ipynb", "02_demo.py",
                                                    "05_mine.py"]
    report = build(sol, ex, prune=True)
    assert sorted(p.name for p in report.removed) == ["01_demo.ipynb", "01_demo.py"] and report.pruned
    assert sorted(p.name for p in ex.iterdir()) == ["02_demo.ipynb", "02_demo.py", "05_mine.py"]


def test_repo_exercises_are_what_the_generator_makes_now(tmp_path):
    """exercises/ must be regenerated (`make exercises`) whenever a solution changes."""
    solutions = solution_files(ROOT / "solutions")
    build(ROOT / "solutions", tmp_path)
    for sol in solutions:
        have_py, have_nb = ROOT / "exercises" / sol.name, ROOT / "exercises" / (sol.stem + ".ipynb")
        assert have_py.exists() and have_nb.exists(), f"{sol.name}: exercises/ lacks its pair; run `make exercises`"
        assert have_py.read_text() == (tmp_path / sol.name).read_text(), f"{have_py} is stale; run `make exercises`"
        want = [c.source for c in nbformat.read(str(tmp_path / (sol.stem + ".ipynb")), as_version=4).cells]
        have = [c.source for c in nbformat.read(str(have_nb), as_version=4).cells]
        assert have == want, f"{have_nb} is stale; run `make exercises`"
    assert build(ROOT / "solutions", ROOT / "exercises", check=True).changed == []
