"""nbgrader end to end on one chapter: `nbgrader generate_assignment` takes the exercise notebook
as it is (its cells carry the metadata `minivlm exercises build` writes), and `nbgrader autograde`
gives the stub zero points, the solution full points, and a half-solved hand-in the points of the
tasks it solved, in a temporary course directory. nbgrader is a test-only dependency."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minivlm.grading import CHECKS

pytest.importorskip("nbgrader")

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "01_transformer_blocks"


def _nbgrader(course: Path, *args: str) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force"], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_generate_assignment_and_autograde_score_stub_solution_and_half(tmp_path):
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / "ps").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\nc.CourseDirectory.course_id = 'minivlm'\n")
    source = nbformat.read(str(ROOT / "exercises" / f"{CHAPTER}.ipynb"), as_version=4)
    nbformat.write(source, str(course / "source" / "ps" / f"{CHAPTER}.ipynb"))
    _nbgrader(course, "generate_assignment", "ps")
    released = nbformat.read(str(course / "release" / "ps" / f"{CHAPTER}.ipynb"), as_version=4)

    # the exercise notebook is [header] + the solution notebook's cells, one for one
    solutions = nbformat.read(str(ROOT / "solutions" / f"{CHAPTER}.ipynb"), as_version=4)
    answers = [i for i, c in enumerate(released.cells)
               if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
    assert len(released.cells) == len(solutions.cells) + 1 and answers

    def handed_in(solved: list[int]):
        nb = nbformat.from_dict(released)
        for i in solved:
            nb.cells[i].source = solutions.cells[i - 1].source
        return nb

    half = answers[: len(answers) // 2]
    for student, nb in (("stub", handed_in([])), ("solved", handed_in(answers)), ("half", handed_in(half))):
        folder = course / "submitted" / student / "ps"
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{CHAPTER}.ipynb"))
    _nbgrader(course, "autograde", "ps")

    tasks = [t for t in CHECKS if t.startswith(CHAPTER[:2] + ".")]
    total = sum(CHECKS[t].points for t in tasks)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {s: (gradebook.find_submission("ps", s).score, gradebook.find_submission("ps", s).max_score)
                  for s in ("stub", "solved", "half")}
    assert scores["stub"] == (0.0, total)
    assert scores["solved"] == (total, total)
    # the first answers are the first tasks (each task's answer cell comes before its check cell)
    assert 0 < scores["half"][0] < total, scores
