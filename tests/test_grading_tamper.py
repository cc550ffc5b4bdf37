"""`minivlm check` decides grades outside the hand-in: tampered notebooks gain no pass.

Every tampered notebook is generated here from exercises/02_clip.ipynb (the stub, which fails
every task) or solutions/02_clip.ipynb (which passes every task) with nbformat.
"""
import csv
import re
import time
from pathlib import Path

import nbformat
import pytest

from minivlm import cli
from minivlm.grading.sandbox import extract_definitions

ROOT = Path(__file__).resolve().parents[1]
STUB, SOLUTION = ROOT / "exercises" / "02_clip.ipynb", ROOT / "solutions" / "02_clip.ipynb"
TASKS = ["02.multi_positive_loss", "02.zero_shot_classifier", "02.recall_at_k", "02.temperature_experiment"]


def _load(path):
    return nbformat.read(str(path), as_version=4)


def _write(nb, folder: Path, name="02_clip.ipynb") -> Path:
    out = folder / name
    nbformat.write(nb, str(out))
    return out


def _grade(path, **kw):
    return cli.check_notebook(path, timeout=kw.pop("timeout", 60), **kw)


def _passes(report) -> list[str]:
    return [r["task_id"] for r in report["tasks"] if r["status"] == "passed"]


def _fake_stub(nb):
    """The issue's fake: `check` shadowed by a lambda printing ✓, every raise replaced by `return None`."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            # the stub's message may be wrapped over several lines of string literals
            cell.source = re.sub(r"raise NotImplementedError\(.*?\)$", "return None", cell.source,
                                 flags=re.DOTALL | re.MULTILINE)
            if "from minivlm.grading import check" in cell.source:
                cell.source += "\ncheck = lambda *a, **k: print('✓ ' + a[0] + ' — ok')"
    assert not any("NotImplementedError" in c.source for c in nb.cells if c.cell_type == "code")
    return nb


def _check_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and re.match(r"\s*check\(", c.source)]


@pytest.fixture(scope="module")
def solution_report():
    return _grade(SOLUTION)


def test_untampered_solution_passes_every_task(solution_report):
    assert _passes(solution_report) == TASKS
    assert solution_report["ok"] and solution_report["errors"] == []
    assert (solution_report["points"], solution_report["max_points"]) == (4, 4)


def test_untampered_stub_fails_every_task_as_not_implemented():
    report = _grade(STUB)
    assert [r["task_id"] for r in report["tasks"]] == TASKS
    assert all(r["status"] == "failed" and r["message"].startswith("not implemented yet") for r in report["tasks"])
    assert not report["ok"]


def test_the_issues_fake_gains_nothing(tmp_path, capsys):
    path = _write(_fake_stub(_load(STUB)), tmp_path)
    report = _grade(path)
    assert _passes(report) == [] and report["failed"] == 4
    assert cli.main(["check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "0 passed, 4 failed"


def test_check_cells_deleted_edited_or_faked_gain_nothing(tmp_path):
    nb = _fake_stub(_load(STUB))
    cells = _check_cells(nb)
    assert len(cells) >= 4
    cells[0].source = "pass  # edited"
    for c in cells[1:3]:
        c.source = "\n".join(f"print('✓ {t} — faked: passed')" for t in TASKS)  # fake ✓ lines
    nb.cells.remove(cells[3])  # deleted
    assert _passes(_grade(_write(nb, tmp_path))) == []


def test_monkeypatching_the_grader_at_top_level_gains_nothing(tmp_path):
    nb = _fake_stub(_load(STUB))
    attacks = [
        "import minivlm.grading as g\ng.run = lambda t, f: g.Result(t, 'x', True, 'passed')\ng.CHECKS.clear()",
        "from minivlm import grading\ngrading.run = lambda *a: None\nimport minivlm.grading.ch02 as c\n"
        "c.expect_close = lambda *a, **k: None",
        # definitions that would run code when defined: a class body, a decorator, a default value, a metaclass
        "class Evil:\n    import minivlm.grading as g\n    g.CHECKS.clear()",
        "@exec(\"import minivlm.grading as g; g.CHECKS.clear()\")\ndef helper():\n    pass",
        "def helper2(x=__import__('minivlm.grading').grading.CHECKS.clear()):\n    pass",
        "class Meta(type):\n    def __new__(m, *a):\n        import minivlm.grading as g\n        g.CHECKS.clear()\n"
        "        return type.__new__(m, *a)\n\nclass UsesMeta(metaclass=Meta):\n    pass",
        "class Base:\n    def __init_subclass__(cls):\n        import minivlm.grading as g\n        g.CHECKS.clear()\n\n"
        "class Sub(Base):\n    pass",
        # the reference implementation imported under the task's name
        "from minivlm.grading.ch02 import reference_multi_positive_loss as multi_positive_loss\n"
        "from minivlm.grading.ch02 import reference_recall_at_k as recall_at_k",
    ]
    nb.cells += [nbformat.v4.new_code_cell(a) for a in attacks]
    report = _grade(_write(nb, tmp_path))
    assert _passes(report) == [] and len(report["tasks"]) == 4
    skipped = [e for e in report["errors"] if e["ename"] == "Skipped"]
    assert len(skipped) >= 3  # Evil, helper2, UsesMeta/Base refused; the exec decorator is dropped with a note
    assert any("@exec" in n for n in report["notes"])


def test_check_calls_in_comments_and_strings_gain_nothing(tmp_path):
    nb = _load(STUB)
    for c in _check_cells(nb):
        c.source = f'# {c.source}\n"""{c.source}"""\nx = "{c.source}"'
    nb.cells.append(nbformat.v4.new_code_cell("print('''✓ 02.multi_positive_loss — faked: passed''')"))
    report = _grade(_write(nb, tmp_path))
    assert _passes(report) == []
    assert all(r["message"].startswith("not implemented yet") for r in report["tasks"])


def test_only_imports_defs_and_classes_are_kept():
    kept, errors, notes = extract_definitions([
        (0, "import torch\nx = 1\nprint(x)\n%matplotlib inline\ncheck('02.a', f)"),
        (1, "def f(a, b: int = 2, *, c=torch.float32) -> int:\n    return a"),
        (2, "def broken(:\n    pass"),
        (3, "class M(torch.nn.Module):\n    '''doc'''\n    k = 3\n    def forward(self, x):\n        return x"),
    ])
    assert [k["cell"] for k in kept] == [0, 1, 3]
    assert kept[1]["code"] == "def f(a, b=2, *, c=torch.float32):\n    return a"  # annotations removed
    assert errors[0]["cell"] == 2 and errors[0]["ename"] == "SyntaxError" and notes == []


def test_an_infinite_loop_is_reported_as_timed_out(tmp_path):
    nb = _load(SOLUTION)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def multi_positive_loss"))
    cell.source = "def multi_positive_loss(logits, groups):\n    while True:\n        pass"
    start = time.perf_counter()
    # 5 s per task: the loop must time out, and the chapter's experiment task must not on a loaded
    # machine (at 2 s it did, at a load average of 5)
    report = _grade(_write(nb, tmp_path), timeout=5)
    assert time.perf_counter() - start < 40
    rows = {r["task_id"]: (r["status"], r["message"]) for r in report["tasks"]}
    assert rows["02.multi_positive_loss"] == ("timed out", "timed out after 5 s")
    assert all(rows[t] == ("passed", "passed") for t in TASKS[1:])  # a fresh process graded the rest
    title = "CLIP's loss when a batch repeats a caption: every pair of a group is a positive"
    assert f"✗ 02.multi_positive_loss — {title}: timed out after 5 s" in cli.format_report(report)


def test_the_notebook_limit_stops_grading(tmp_path):
    nb = _load(SOLUTION)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def multi_positive_loss"))
    cell.source = "def multi_positive_loss(logits, groups):\n    while True:\n        pass"
    start = time.perf_counter()
    # 12 s: the cells before the first task (imports) must finish inside the limit on a slow machine
    # too (with 3 s, a CI machine under load ran out before reaching the loop: "not run")
    report = _grade(_write(nb, tmp_path), timeout=60, notebook_timeout=12)
    assert time.perf_counter() - start < 45  # far below the task's own 60 s: the notebook limit stopped it
    assert report["tasks"][0]["status"] == "timed out" and not report["ok"]
    assert any("grading timed out after 12 s" in e["evalue"] for e in report["errors"])


def test_memory_cap(tmp_path):
    nb = _load(SOLUTION)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def multi_positive_loss"))
    cell.source = "def multi_positive_loss(logits, groups):\n    return bytearray(8 * 2**30)"
    report = _grade(_write(nb, tmp_path), memory_mb=512)
    first = report["tasks"][0]
    assert first["status"] == "failed" and "exceeded the memory limit of 512 MiB" in first["message"]
    assert _passes(report) == TASKS[1:]


def test_batch_csv_with_bad_hand_ins(tmp_path, capsys):
    good = _write(_load(SOLUTION), tmp_path, "02_alice.ipynb")
    stub = _write(_load(STUB), tmp_path, "02_bob.ipynb")
    junk = tmp_path / "02_carol.ipynb"
    junk.write_text("this is not JSON")
    listy = tmp_path / "02_dave.ipynb"
    listy.write_text("[1, 2]")
    other = _write(_load(ROOT / "exercises" / "03_vilt.ipynb"), tmp_path, "03_eve.ipynb")
    out = tmp_path / "grades.csv"
    rc = cli.main(["check", str(good), str(stub), str(junk), str(listy), str(other), "--csv", str(out)])
    assert rc == 1
    text = capsys.readouterr().out
    assert f"minivlm check {junk}\n! not graded: not a notebook: not JSON" in text
    assert f"minivlm check {listy}\n! not graded: not a notebook" in text
    assert f"minivlm check {other}\n! not graded: belongs to chapter 03, not chapter 02: not graded" in text
    assert "5 hand-ins (chapter 02): 1 fully passed, 1 not fully passed, 3 not graded" in text
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["notebook", *TASKS, "total", "max", "status"]
    assert rows[1] == [str(good), "1", "1", "1", "1", "4", "4", "passed"]
    assert rows[2] == [str(stub), "0", "0", "0", "0", "0", "4", "4 of 4 task(s) not passed"]
    assert rows[3][:-1] == [str(junk), "", "", "", "", "0", "4"] and rows[3][-1].startswith("not graded: not a notebook")
    assert rows[5][-1] == "not graded: belongs to chapter 03, not chapter 02: not graded"
    assert len(rows) == 6
    # --json for several hand-ins: a list
    assert cli.main(["check", str(good), str(junk), "--json"]) == 1
    import json

    reports = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in reports] == [True, False] and "unreadable" in reports[1]
