"""Issue 28, the commands: no command loses a learner's work (each refuses, exits non-zero and
touches nothing), and no grading batch dies on one bad hand-in (it gets its own row)."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minivlm import cli
from minivlm.exercises import build
from minivlm.grading.sandbox import extract_definitions, grade_notebook

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKS = f"{FIXTURES / 'grading_fixture.py'}:register_all"


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _solutions(folder: Path, chapters=("01", "02", "03")) -> Path:
    folder.mkdir()
    for ch in chapters:
        shutil.copy(FIXTURES / "solutions" / "01_demo.py", folder / f"{ch}_demo.py")
    return folder


# ----------------------------------------------------------------------------- exercises build


@pytest.mark.parametrize("check", [False, True])
def test_exercises_build_refuses_the_solutions_folder_as_exercises(tmp_path, capsys, check):
    sol = _solutions(tmp_path / "S")
    before = _snapshot(sol)
    args = ["exercises", "build", "--solutions", str(sol), "--exercises", str(sol / ".." / "S")]
    assert cli.main(args + (["--check"] if check else [])) == 1
    err = capsys.readouterr().err
    assert "is the solutions folder" in err and "would overwrite the solutions" in err
    assert _snapshot(sol) == before  # every solution intact, no stub written
    with pytest.raises(ValueError, match="exercises folder .* is the solutions folder"):
        build(sol, sol)


def test_exercises_build_from_one_chapter_keeps_the_other_chapters(tmp_path, capsys):
    ex = tmp_path / "E"
    build(_solutions(tmp_path / "all"), ex)
    (ex / "07_mine.py").write_text("x = 1\n")  # a file the builder did not generate
    before = _snapshot(ex)
    one = _solutions(tmp_path / "one", chapters=("01",))
    assert cli.main(["exercises", "build", "--solutions", str(one), "--exercises", str(ex)]) == 0
    out = capsys.readouterr().out
    assert _snapshot(ex) == before  # chapter 01 already up to date; 02 and 03 kept
    for name in ("02_demo.py", "02_demo.ipynb", "03_demo.py", "03_demo.ipynb"):
        assert f"kept {ex / name}: stale" in out and "--prune" in out
    assert cli.main(["exercises", "build", "--solutions", str(one), "--exercises", str(ex), "--check"]) == 1
    assert _snapshot(ex) == before
    assert cli.main(["exercises", "build", "--solutions", str(one), "--exercises", str(ex), "--prune"]) == 0
    assert f"removed {ex / '02_demo.py'}" in capsys.readouterr().out
    assert sorted(p.name for p in ex.iterdir()) == ["01_demo.ipynb", "01_demo.py", "07_mine.py"]


# ----------------------------------------------------------------------------- check --csv


def _fake_report(path) -> dict:
    return {"notebook": str(path), "chapter": "99", "seconds": 0.0, "errors": [], "notes": [], "passed": 1,
            "failed": 0, "points": 1, "max_points": 1, "ok": True,
            "tasks": [{"task_id": "99.add", "title": "", "status": "passed", "message": "passed", "cell": 2,
                       "points": 1, "max_points": 1}]}


@pytest.mark.parametrize("target", ["the hand-in", "another hand-in", "a notebook", "a notebook named .csv",
                                    "a folder"])
def test_check_refuses_a_csv_path_that_is_a_hand_in_or_a_notebook(tmp_path, monkeypatch, capsys, target):
    graded = []
    monkeypatch.setattr(cli, "check_notebook", lambda path, **kw: graded.append(path) or _fake_report(path))
    a, b = tmp_path / "99_a.ipynb", tmp_path / "99_b.ipynb"
    shutil.copy(FIXTURES / "99_fixture.ipynb", a)
    shutil.copy(FIXTURES / "99_fixture.ipynb", b)
    other = tmp_path / "99_other.ipynb"
    shutil.copy(FIXTURES / "99_fixture.ipynb", other)
    disguised = tmp_path / "grades.csv"
    shutil.copy(FIXTURES / "99_fixture.ipynb", disguised)
    out = {"the hand-in": a, "another hand-in": b, "a notebook": other, "a notebook named .csv": disguised,
           "a folder": tmp_path}[target]
    before = _snapshot(tmp_path)
    assert cli.main(["check", str(a), str(b), "--csv", str(out)]) == 2
    assert f"--csv {out}" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before and graded == []  # refused before grading anything
    with pytest.raises(ValueError, match="--csv"):
        cli.write_csv([_fake_report(a)], out)
    assert _snapshot(tmp_path) == before


def test_the_csv_is_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "grades.csv"
    out.write_text("yesterday's grades\n")
    bad = _fake_report(tmp_path / "99_a.ipynb")
    bad["tasks"][0]["points"] = object()  # fails half-way through the rows
    monkeypatch.setattr(cli, "_fmt_points", lambda x: 1 / 0 if not isinstance(x, (int, float)) else f"{x:g}")
    with pytest.raises(ZeroDivisionError):
        cli.write_csv([_fake_report(tmp_path / "99_b.ipynb"), bad], out)
    assert out.read_text() == "yesterday's grades\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv"]  # no temporary file left behind
    cli.write_csv([_fake_report(tmp_path / "99_b.ipynb")], out)
    assert list(csv.reader(out.open()))[1][0] == str(tmp_path / "99_b.ipynb")


# ----------------------------------------------------------------------------- malformed hand-ins


def _notebook(tmp_path, name, edit) -> Path:
    nb = json.loads((FIXTURES / "99_fixture.ipynb").read_text())
    edit(nb)
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return path


def _add_cell(source):
    return lambda nb: nb["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {},
                                          "outputs": [], "source": source})


MALFORMED = {
    "source [1, 2]": (_add_cell([1, 2]), r"cell 9's source must be a string or a list of strings, got \[1, 2\]"),
    "source 7": (_add_cell(7), r"cell 9's source must be a string or a list of strings, got 7"),
    "source None": (_add_cell(None), r"cell 9's source must be a string or a list of strings, got None"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_cell_makes_the_hand_in_unreadable(tmp_path, case):
    edit, pattern = MALFORMED[case]
    report = grade_notebook(_notebook(tmp_path, "99_x.ipynb", edit))
    assert report["unreadable"].startswith("not a notebook") and not report["ok"]
    assert re.search(pattern, report["unreadable"]), report["unreadable"]


def test_json_nested_too_deeply_is_unreadable(tmp_path):
    deep = tmp_path / "99_deep.ipynb"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    report = grade_notebook(deep)
    assert report["unreadable"] == "not a notebook: its JSON is nested too deeply to read"


@pytest.mark.parametrize("source, what", [
    ("x = " + "+".join(["1"] * 50_000), "Python's parser gave up on this cell"),
    ("def f():\n    return " + "+".join(["1"] * 2_000), "f: nested too deeply for the grader to read"),
], ids=["parser", "unparse"])
def test_a_cell_too_deep_for_python_is_skipped_and_reported(source, what):
    statements, errors, _ = extract_definitions([(0, "import math"), (1, source), (2, "def g():\n    return 1")])
    assert [s["cell"] for s in statements] == [0, 2]
    assert [e["cell"] for e in errors] == [1] and what in errors[0]["evalue"]


def test_a_batch_with_malformed_hand_ins_grades_the_rest_and_writes_the_csv(tmp_path):
    good = _notebook(tmp_path, "99_alice.ipynb", lambda nb: None)
    listy = _notebook(tmp_path, "99_bob.ipynb", _add_cell([1, 2]))
    deep = tmp_path / "99_carol.ipynb"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    long_sum = _notebook(tmp_path, "99_dave.ipynb", _add_cell("x = " + "+".join(["1"] * 50_000)))
    out = tmp_path / "grades.csv"
    r = subprocess.run([sys.executable, "-m", "minivlm.cli", "check", str(good), str(listy), str(deep), str(long_sum),
                        "--csv", str(out), "--checks", CHECKS, "--timeout", "120"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    rows = {row[0]: row for row in csv.reader(out.open())}
    assert rows[str(listy)][-1].startswith("not graded: not a notebook: cell 9's source")
    assert rows[str(deep)][-1] == "not graded: not a notebook: its JSON is nested too deeply to read"
    assert rows[str(good)][1:] == rows[str(long_sum)][1:]  # graded the same: the long cell is not a definition
    assert rows[str(good)][-1] == "3 of 4 task(s) not passed"
    assert "4 hand-ins (chapter 99): 0 fully passed, 2 not fully passed, 2 not graded" in r.stdout


def test_a_hand_in_the_grader_chokes_on_gets_a_row(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "99_a.ipynb", tmp_path / "99_b.ipynb"
    for p in (a, b):
        shutil.copy(FIXTURES / "99_fixture.ipynb", p)

    def grade(path, **kw):
        if path == a:
            raise TypeError("sequence item 0: expected str instance, int found")
        return _fake_report(path)

    monkeypatch.setattr(cli, "check_notebook", grade)
    assert cli.main(["check", str(a), str(b), "--csv", str(tmp_path / "g.csv")]) == 1
    rows = list(csv.reader((tmp_path / "g.csv").open()))
    assert rows[1][0] == str(a) and rows[1][-1].startswith("not graded: the grader failed on it (TypeError")
    assert rows[2][-1] == "passed"


# ----------------------------------------------------------------------------- every command's bad options


@pytest.mark.parametrize("argv, message", [
    (["zoo", "build", "nope"], "unknown zoo model 'nope'; expected one of: clip"),
    (["bench", "clip", "--device", "gpu"], "device must name a torch device such as 'cpu'"),
    (["bench", "clip", "--batch-size", "0"], "argument --batch-size: must be positive, got 0"),
    (["bench", "gpt", "--new-tokens", "-2"], "argument --new-tokens: must be positive, got -2"),
    (["bench", "render", "--n", "0"], "argument --n: must be positive, got 0"),
    (["bench", "render", "--image-size", "many"], "argument --image-size: expected a positive number, got 'many'"),
    (["notebooks", "execute", "--timeout", "0"], "argument --timeout: must be positive, got 0"),
    (["check", "99_a.ipynb", "--memory-mb", "0"], "argument --memory-mb: must be positive, got 0"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_a_bad_option_is_a_usage_error_not_a_traceback(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
