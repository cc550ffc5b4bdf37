"""Exercise notebooks are nbgrader source notebooks: every cell carries nbgrader's cell metadata.

The rules are nbgrader's (schema version 3: nbgrader/nbgraderformat/v3.json and
MetadataValidatorV3): the keys and their types, a grade_id on every graded, solution or locked
cell, points on every graded cell, a markdown cell graded if and only if it is an answer, grade_ids
unique in a notebook. They are checked here by hand; where the `nbgrader` package is installed its
own validator checks them too.
"""
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from minivlm.exercises import NBGRADER_SCHEMA_VERSION, build, exercise_notebook
from minivlm.grading import CHECKS, register, tasks_for_chapter, unregister

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NOTEBOOKS = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))

KEYS = {"schema_version", "grade", "locked", "solution", "task", "grade_id", "points", "checksum", "cell_type"}
REQUIRED = {"schema_version", "grade", "locked", "solution"}
GRADE_ID = re.compile(r"^[A-Za-z0-9_\-]+$")
CHECK_CALL = re.compile(r"^check\(\"(\d\d\.\w+)\"", re.MULTILINE)
STUB = re.compile(r"^[ \t]*raise NotImplementedError\((\n[ \t]*)?\"", re.MULTILINE)  # one line, or the hint wrapped below


def schema_problems(cell) -> list[str]:
    """Why nbgrader (schema 3) would reject this cell's metadata; empty when it would not."""
    meta = cell.metadata.get("nbgrader")
    if meta is None:
        return []
    problems = [f"unknown key {k!r}" for k in sorted(set(meta) - KEYS)]
    problems += [f"missing key {k!r}" for k in sorted(REQUIRED - set(meta))]
    if problems:
        return problems
    if meta["schema_version"] != NBGRADER_SCHEMA_VERSION or type(meta["schema_version"]) is not int:
        problems.append(f"schema_version {meta['schema_version']!r}, expected 3")
    for k in ("grade", "locked", "solution", "task"):
        if k in meta and type(meta[k]) is not bool:
            problems.append(f"{k} is {meta[k]!r}, not a boolean")
    grade, solution, locked, task = meta["grade"], meta["solution"], meta["locked"], meta.get("task", False)
    if grade or solution or locked:
        gid = meta.get("grade_id")
        if not isinstance(gid, str) or not GRADE_ID.match(gid):
            problems.append(f"grade_id {gid!r} is not a non-empty string of letters, digits, '_' and '-'")
    if "points" in meta and (type(meta["points"]) not in (int, float) or meta["points"] < 0):
        problems.append(f"points {meta['points']!r} is not a number >= 0")
    if grade and "points" not in meta:
        problems.append("a graded cell without points")
    if not grade and "points" in meta:
        problems.append("points on a cell that is not graded")  # nbgrader's toolbar never writes them
    if task and cell.cell_type != "markdown":
        problems.append("a task cell that is not markdown")
    if not task and cell.cell_type == "markdown" and grade != solution:
        problems.append("a markdown cell must be graded if and only if it is an answer")
    return problems


def nbgrader_problems(nb) -> list[str]:
    """schema_problems for every cell, and grade_ids that two cells share."""
    problems = [f"cell {i}: {p}" for i, c in enumerate(nb.cells) for p in schema_problems(c)]
    ids = [c.metadata["nbgrader"].get("grade_id") for c in nb.cells if "nbgrader" in c.metadata]
    problems += [f"grade_id {g!r} is used by {ids.count(g)} cells" for g in sorted(set(ids)) if ids.count(g) > 1]
    return problems


def role(cell) -> str:
    meta = cell.metadata["nbgrader"]
    return {(False, True, False): "answer", (True, False, True): "test", (False, False, True): "readonly",
            (True, True, False): "manual answer"}.get((meta["grade"], meta["solution"], meta["locked"]), "?")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_cell_is_marked_for_nbgrader(path):
    nb = nbformat.read(str(path), as_version=4)
    chapter = path.name[:2]
    assert not nbgrader_problems(nb), f"{path.name}: {nbgrader_problems(nb)}"
    unmarked = [i for i, c in enumerate(nb.cells) if "nbgrader" not in c.metadata]
    assert not unmarked, f"{path.name}: cells {unmarked} carry no nbgrader metadata; run `make exercises`"

    solution_cells = [c for c in nbformat.read(str(ROOT / "solutions" / path.name), as_version=4).cells
                      if "BEGIN SOLUTION" in c.source]
    answers, tests = [], {}
    for i, cell in enumerate(nb.cells):
        meta, checked = cell.metadata["nbgrader"], CHECK_CALL.findall(cell.source)
        if cell.cell_type == "code" and STUB.search(cell.source):  # a stripped solution region
            assert role(cell) == "answer", f"{path.name} cell {i}: a stub cell marked {meta}"
            assert meta["grade_id"].endswith("-solution")
            answers.append(meta["grade_id"])
        elif cell.cell_type == "code" and checked:
            (task,) = checked
            assert role(cell) == "test", f"{path.name} cell {i}: a check cell marked {meta}"
            assert meta["points"] == CHECKS[task].points, f"{path.name} cell {i}: points differ from the registry's"
            assert meta["grade_id"] == task.replace(".", "-") + "-check"
            tests[task] = meta["points"]
        else:
            assert role(cell) == "readonly", f"{path.name} cell {i}: expected read-only, got {meta}"
            assert "points" not in meta
    assert len(answers) == len(solution_cells), f"{path.name}: {answers} vs {len(solution_cells)} solution cells"
    # nbgrader's maximum for the notebook is what `minivlm check` gives for the chapter.
    assert sorted(tests) == sorted(tasks_for_chapter(chapter))
    assert sum(tests.values()) == sum(CHECKS[t].points for t in tasks_for_chapter(chapter))


def test_grade_ids_name_the_task_and_are_unique():
    nb = nbformat.read(str(ROOT / "exercises" / "01_transformer_blocks.ipynb"), as_version=4)
    by_id = {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells}
    assert len(by_id) == len(nb.cells)
    assert "def multi_head_attention" in by_id["01-multi_head_attention-solution"].source
    assert by_id["01-multi_head_attention-check"].source.startswith(
        'check("01.multi_head_attention", multi_head_attention)')


def test_metadata_is_stable_and_its_loss_is_drift(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build(ROOT / "solutions", a)
    build(ROOT / "solutions", b)
    for nb in sorted(a.glob("*.ipynb")):
        assert nb.read_bytes() == (b / nb.name).read_bytes(), f"{nb.name}: two builds differ"
        assert nb.read_bytes() == (ROOT / "exercises" / nb.name).read_bytes(), f"{nb.name} is stale; run `make exercises`"
    # A notebook whose nbgrader metadata was lost or edited (Jupyter without it, a hand edit) is stale.
    path = a / "02_clip.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[5].metadata["nbgrader"]["points"] = 10
    nbformat.write(nb, str(path))
    assert [p.name for p in build(ROOT / "solutions", a, check=True).written] == ["02_clip.ipynb"]
    build(ROOT / "solutions", a)
    nb = nbformat.read(str(path), as_version=4)
    del nb.cells[4].metadata["nbgrader"]
    nbformat.write(nb, str(path))
    assert [p.name for p in build(ROOT / "solutions", a, check=True).written] == ["02_clip.ipynb"]


DEMO = '''# %% [markdown]
# # A demo

# %%
from minivlm.grading import check


def halve(x):
    ### BEGIN SOLUTION hint: divide by two
    return x / 2
    ### END SOLUTION


# %%
check("99.halve", halve)

# %% [markdown]
# Why two?
#
# <!-- BEGIN SOLUTION -->
# Because.
# <!-- END SOLUTION -->

# %%
### BEGIN SOLUTION
extra = 1
### END SOLUTION
'''


@pytest.fixture
def halve_task():
    def _(halve):
        assert halve(4) == 2

    register("99.halve", title="Halve", points=2.5)(_)
    yield
    unregister("99.halve")


def test_points_come_from_the_registry_and_markdown_answers_are_graded_by_hand(halve_task):
    nb = exercise_notebook(DEMO, "99_demo.py")
    assert not nbgrader_problems(nb)
    metas = [c.metadata["nbgrader"] for c in nb.cells]
    assert [role(c) for c in nb.cells] == ["readonly", "readonly", "answer", "test", "manual answer", "answer"]
    assert metas[2] == {"grade": False, "grade_id": "99-halve-solution", "locked": False, "schema_version": 3,
                        "solution": True, "task": False}
    assert metas[3] == {"grade": True, "grade_id": "99-halve-check", "locked": True, "points": 2.5,
                        "schema_version": 3, "solution": False, "task": False}
    assert metas[4]["points"] == 0 and metas[4]["grade_id"] == "99-answer2-answer"
    assert metas[5]["grade_id"] == "99-answer3-solution"  # no task names it: numbered
    assert metas[0] == {"grade": False, "grade_id": "99-cell0-readonly", "locked": True, "schema_version": 3,
                        "solution": False, "task": False}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("99.halve", "99.nope"), r"cell 3 checks '99\.nope', which minivlm\.grading does not register"),
        (lambda t: t + '\n# %%\ncheck("99.halve", halve)\n', r"'99\.halve' is checked by cells 3 and 6"),
        (lambda t: t.replace('check("99.halve", halve)', 'check("99.halve", halve)\ncheck("99.halve", halve)'),
         r"cell 3 checks 99\.halve, 99\.halve"),
        (lambda t: t.replace("    ### END SOLUTION\n", '    ### END SOLUTION\n\n\ncheck("99.halve", halve)\n'),
         r"cell 2 holds a solution region and check"),
    ],
)
def test_checks_nbgrader_cannot_grade_are_refused(halve_task, edit, message):
    with pytest.raises(ValueError, match=rf"^solutions/99_demo\.py: {message}"):
        exercise_notebook(edit(DEMO), "99_demo.py", source="solutions/99_demo.py")


def test_fixture_build_is_valid(tmp_path):
    shutil.copytree(FIXTURES / "solutions", tmp_path / "solutions")
    build(tmp_path / "solutions", tmp_path / "exercises")
    nb = nbformat.read(str(tmp_path / "exercises" / "01_demo.ipynb"), as_version=4)
    assert not nbgrader_problems(nb)
    assert [role(c) for c in nb.cells] == ["readonly", "readonly", "answer", "answer", "answer", "manual answer"]
    # causal_mask is no chapter-01 task's function (the halve demo checks the named form): numbered
    assert nb.cells[2].metadata["nbgrader"]["grade_id"] == "01-answer1-solution"


def test_the_hand_checks_catch_what_nbgrader_rejects():
    cell = nbformat.v4.new_markdown_cell("x")
    cell.metadata["nbgrader"] = {"grade": False, "grade_id": "a", "locked": False, "schema_version": 3,
                                 "solution": True, "task": False}
    assert schema_problems(cell) == ["a markdown cell must be graded if and only if it is an answer"]
    cell = nbformat.v4.new_code_cell("x")
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "04.task", "locked": True, "schema_version": 2,
                                 "solution": False, "extra": 1}
    assert schema_problems(cell) == ["unknown key 'extra'"]
    del cell.metadata["nbgrader"]["extra"]
    assert schema_problems(cell) == ["schema_version 2, expected 3",
                                     "grade_id '04.task' is not a non-empty string of letters, digits, '_' and '-'",
                                     "a graded cell without points"]


def test_nbgrader_validator_accepts_the_exercises(tmp_path, halve_task):
    nbgraderformat = pytest.importorskip("nbgrader.nbgraderformat")  # not a dependency: checked where installed
    validator = nbgraderformat.MetadataValidator()
    assert validator.schema_version == NBGRADER_SCHEMA_VERSION
    shutil.copytree(FIXTURES / "solutions", tmp_path / "solutions")
    build(tmp_path / "solutions", tmp_path / "exercises")
    for path in [*NOTEBOOKS, tmp_path / "exercises" / "01_demo.ipynb"]:
        validator.validate_nb(nbformat.read(str(path), as_version=4))
    validator.validate_nb(exercise_notebook(DEMO, "99_demo.py"))
    # ... and it rejects what the hand checks reject.
    nb = exercise_notebook(DEMO, "99_demo.py")
    nb.cells[1].metadata["nbgrader"]["grade_id"] = nb.cells[0].metadata["nbgrader"]["grade_id"]
    with pytest.raises(nbgraderformat.ValidationError, match="Duplicate grade id"):
        validator.validate_nb(nb)
