"""The `minivlm` command: check reports, exercises build --check, notebooks execute, dispatch."""
import json
import shutil
import sys
import types
from pathlib import Path

import nbformat
import pytest

from minivlm import cli, grading
from minivlm.notebooks import pair_differences

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import grading_fixture  # noqa: E402


@pytest.fixture(scope="module")
def fixture_checks():
    """The fixture notebook's checks, registered here too so the report knows titles and missing tasks."""
    grading_fixture.register_all()
    yield
    grading_fixture.unregister_all()
    assert not any(t in grading.CHECKS for t in grading_fixture.TASKS)


@pytest.fixture(scope="module")
def checked(fixture_checks):
    """Grade tests/fixtures/99_fixture.ipynb once via `--json`; its checks come from `--checks` (trusted)."""
    out = []
    mp = pytest.MonkeyPatch()
    mp.setattr("builtins.print", lambda *a, **k: out.append(" ".join(map(str, a))))
    try:
        rc = cli.main(["check", str(FIXTURES / "99_fixture.ipynb"), "--json", "--timeout", "120",
                       "--checks", f"{FIXTURES / 'grading_fixture.py'}:register_all"])
    finally:
        mp.undo()
    return rc, json.loads("\n".join(out))


def test_check_json_report(checked):
    rc, report = checked
    assert rc == 1
    assert set(report) >= {"notebook", "tasks", "errors", "passed", "failed", "ok"}
    # graded on the functions the notebook defines (the cell of each def), not on what its cells printed
    rows = {r["task_id"]: (r["status"], r["message"], r["cell"]) for r in report["tasks"]}
    assert rows == {
        "99.add": ("passed", "passed", 2),
        "99.double": ("failed", "not implemented yet — multiply x by two", 4),
        "99.square": ("failed", "square(4.0): values differ from the reference: max |diff| = 4 at [] "
                                "(expected 16, got 12; 1 of 1 entries outside atol=1e-05, rtol=0.0001)", 6),
        "99.cube": ("missing", "missing: no top-level function `def cube(...)` in the notebook", None),
    }
    assert report["errors"] == []  # cell 8 is not a definition: the grader never runs it
    assert (report["passed"], report["failed"], report["points"], report["max_points"], report["ok"]) == (1, 3, 1, 4, False)


def test_check_text_report_and_exit_code(checked, monkeypatch, capsys):
    _, report = checked
    bad = {**report, "errors": [{"cell": 8, "ename": "NameError", "evalue": "name 'undefined_name' is not defined"}]}
    monkeypatch.setattr(cli, "check_notebook", lambda path, **kw: bad)  # no second grading run
    assert cli.main(["check", str(FIXTURES / "99_fixture.ipynb")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "✓ 99.add — Add two numbers: passed",
        "✗ 99.double — Double a number: not implemented yet — multiply x by two",
        "✗ 99.square — Square a number: " + report["tasks"][2]["message"],
        "✗ 99.cube — Cube a number: missing: no top-level function `def cube(...)` in the notebook",
        "! error outside the checks, cell 8: NameError: name 'undefined_name' is not defined",
        "1 passed, 3 failed, 1 error(s) outside the checks",
    ]
    ok = {**report, "tasks": report["tasks"][:1], "errors": [], "passed": 1, "failed": 0, "max_points": 1, "ok": True}
    monkeypatch.setattr(cli, "check_notebook", lambda path, **kw: ok)
    assert cli.main(["check", str(FIXTURES / "99_fixture.ipynb")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 0 failed"


def test_check_rejects_a_missing_notebook(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "nope.ipynb")]) == 2
    assert "expected an existing .ipynb" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "soon"])
def test_check_rejects_a_timeout_that_is_not_positive(value, capsys):
    assert cli.main(["check", str(FIXTURES / "99_fixture.ipynb"), "--timeout", value]) == 2
    assert "argument --timeout" in capsys.readouterr().err


def test_exercises_build_check_exit_codes(tmp_path, capsys):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    shutil.copytree(FIXTURES / "solutions", sol)
    args = ["exercises", "build", "--solutions", str(sol), "--exercises", str(ex)]
    assert cli.main(args + ["--check"]) == 1
    out = capsys.readouterr().out
    assert "01_demo.py" in out and "01_demo.ipynb" in out
    assert cli.main(args) == 0
    assert cli.main(args + ["--check"]) == 0
    (ex / "01_demo.py").write_text("# edited by hand\n")
    capsys.readouterr()
    assert cli.main(args + ["--check"]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [f"  {ex / '01_demo.py'}"]
    (sol / "02_bad.py").write_text("# %%\n### BEGIN SOLUTION\nx = 1\n")
    assert cli.main(args) == 1
    assert f"{sol / '02_bad.py'}:2: BEGIN SOLUTION is never closed" in capsys.readouterr().err


def test_notebooks_execute_builds_and_runs_the_pair(tmp_path, capsys):
    py = tmp_path / "01_tiny.py"
    py.write_text("# %% [markdown]\n# A tiny chapter\n\n# %%\nfrom pathlib import Path\nx = 6 * 7\n"
                  "print(x, Path.cwd().name)\n\n# %%\nx + 1\n")
    assert cli.main(["notebooks", "execute", str(py), "--timeout", "120"]) == 0
    assert "01_tiny.ipynb: " in capsys.readouterr().out
    nb = nbformat.read(str(tmp_path / "01_tiny.ipynb"), as_version=4)
    assert pair_differences(py, tmp_path / "01_tiny.ipynb") == []
    assert [c.execution_count for c in nb.cells[1:]] == [1, 2]
    assert nb.cells[1].outputs[0].text == f"42 {tmp_path.name}\n"  # ran in the notebook's own folder
    assert nb.cells[2].outputs[0].data["text/plain"] == "43"
    assert "execution" not in nb.cells[1].metadata  # no timestamps: reruns give no diff


def test_notebooks_execute_reports_failure_and_keeps_the_old_file(tmp_path, capsys):
    py, ipynb = tmp_path / "02_broken.py", tmp_path / "02_broken.ipynb"
    py.write_text("# %%\nraise RuntimeError('boom')\n")
    ipynb.write_text("old")
    assert cli.main(["notebooks", "execute", str(tmp_path), "--timeout", "120"]) == 1
    assert "02_broken.ipynb: FAILED" in capsys.readouterr().out
    assert ipynb.read_text() == "old"
    assert cli.main(["notebooks", "execute", str(tmp_path / "nope.py")]) == 2


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["zoo"]) == 2
    assert "usage: minivlm" in capsys.readouterr().err


def test_zoo_dispatch_and_missing_module(monkeypatch, capsys):
    built = []
    fake = types.SimpleNamespace(available=lambda: ["clip_vision", "tiny_llm"], build=lambda name: built.append(name))
    monkeypatch.setitem(sys.modules, "minivlm.zoo", fake)
    monkeypatch.setattr("minivlm.zoo", fake, raising=False)
    assert cli.main(["zoo", "list"]) == 0
    assert capsys.readouterr().out.split() == ["clip_vision", "tiny_llm"]
    assert cli.main(["zoo", "build", "all"]) == 0 and built == ["clip_vision", "tiny_llm"]
    assert cli.main(["zoo", "build", "tiny_llm"]) == 0 and built[-1] == "tiny_llm"
    monkeypatch.setitem(sys.modules, "minivlm.zoo", types.SimpleNamespace())
    monkeypatch.setattr("minivlm.zoo", types.SimpleNamespace(), raising=False)
    assert cli.main(["zoo", "list"]) == 1
    assert "minivlm.zoo has no build()/available()" in capsys.readouterr().err


def test_bench_commands_print_json(monkeypatch, capsys):
    calls = {}
    render = types.SimpleNamespace(time_render=lambda n, image_size: calls.setdefault("render", (n, image_size))
                                   and {"n": n, "image_size": image_size, "seconds": 0.5})
    bench = types.SimpleNamespace(bench_clip=lambda **kw: {"kwargs": kw}, bench_vilt=lambda **kw: {"vilt": kw})
    monkeypatch.setitem(sys.modules, "minivlm.data.shapesworld", render)
    monkeypatch.setitem(sys.modules, "minivlm.benchmarks", bench)
    assert cli.main(["bench", "render", "--n", "8", "--image-size", "64"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 8, "image_size": 64, "seconds": 0.5}
    assert cli.main(["bench", "clip", "--repeats", "3", "--batch-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out) == {"kwargs": {"repeats": 3, "batch_size": 4}}
    assert cli.main(["bench", "vilt", "--repeats", "2", "--threads", "1", "--image-size", "64"]) == 0
    assert json.loads(capsys.readouterr().out) == {"vilt": {"repeats": 2, "threads": 1, "image_size": 64}}
    monkeypatch.setitem(sys.modules, "minivlm.benchmarks", types.SimpleNamespace())
    assert cli.main(["bench", "vilt"]) == 1
    assert "bench_vilt is not available" in capsys.readouterr().err


def test_bench_clip_runs_from_the_cli(capsys):
    pytest.importorskip("transformers")
    # the real benchmark, tiny: the CLI's options must be ones bench_clip accepts
    assert cli.main(["bench", "clip", "--repeats", "1", "--batch-size", "4", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ours_ms"] > 0 and report["theirs_ms"] > 0
    assert abs(report["ratio"] - report["ours_ms"] / report["theirs_ms"]) < 1e-2


def test_bench_vilt_runs_from_the_cli(capsys):
    pytest.importorskip("transformers")
    # the real benchmark, tiny: the CLI's options must be ones bench_vilt accepts
    assert cli.main(["bench", "vilt", "--repeats", "1", "--batch-size", "4", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ours_ms"] > 0 and report["theirs_ms"] > 0 and report["batch_size"] == 4
    assert abs(report["ratio"] - report["ours_ms"] / report["theirs_ms"]) < 1e-2
