"""minivlm.grading: the registry, check()/run(), and the helpers' messages (with throwaway checks)."""
import sys
import textwrap

import pytest
import torch

from minivlm import grading
from minivlm.grading import GradingFailure, call, check, expect_close, expect_dtype, expect_shape, register, run

TASK = "00.tmp_causal_mask"


def _reference(t):
    return torch.ones(t, t, dtype=torch.bool).tril()


@pytest.fixture
def tmp_check():
    """A throwaway check of a causal-mask function, removed after the test."""

    @register(TASK, title="A causal mask")
    def _check(fn):
        got = call(fn, 4)
        expect_shape("causal_mask(4)", got, (4, 4))
        expect_dtype("causal_mask(4)", got, torch.bool)
        expect_close("causal_mask(4)", got, _reference(4))

    yield TASK
    grading.unregister(TASK)
    assert TASK not in grading.CHECKS


def test_right_answer_passes_and_prints_one_line(tmp_check, capsys):
    res = run(tmp_check, _reference)
    assert res == grading.Result(TASK, "A causal mask", True, "passed")
    check(tmp_check, lambda t: torch.tril(torch.ones(t, t)).bool())
    assert capsys.readouterr().out == f"✓ {TASK} — A causal mask: passed\n"


def test_wrong_shape_names_both_shapes(tmp_check):
    res = run(tmp_check, lambda t: torch.ones(t, dtype=torch.bool))
    assert not res.passed
    assert res.message == "causal_mask(4): wrong shape: expected (4, 4), got (4,)"
    with pytest.raises(GradingFailure, match=r"wrong shape: expected \(4, 4\), got \(4,\)") as info:
        check(tmp_check, lambda t: torch.ones(t, dtype=torch.bool))
    assert isinstance(info.value, AssertionError)
    assert str(info.value).startswith(f"✗ {TASK} — A causal mask: ")


def test_wrong_mask_names_the_first_wrong_entry(tmp_check):
    res = run(tmp_check, lambda t: torch.ones(t, t, dtype=torch.bool).triu())  # transposed: wrong off the diagonal
    assert not res.passed
    assert "differ from the reference at 12 of 16 entries, first at [0, 1]: expected False, got True" in res.message


def test_wrong_dtype(tmp_check):
    res = run(tmp_check, lambda t: torch.ones(t, t).tril())
    assert res.message == "causal_mask(4): wrong dtype: expected torch.bool, got torch.float32"


def test_not_implemented_gives_the_hint(tmp_check):
    def stub(t):
        raise NotImplementedError("keep the lower triangle of a matrix of ones")

    res = run(tmp_check, stub)
    assert res.message == "not implemented yet — keep the lower triangle of a matrix of ones"
    with pytest.raises(GradingFailure, match="not implemented yet — keep the lower triangle"):
        check(tmp_check, stub)
    assert run(tmp_check, lambda t: (_ for _ in ()).throw(NotImplementedError())).message == "not implemented yet"


def test_other_exception_is_one_clean_line(tmp_check):
    res = run(tmp_check, lambda t: t / 0)
    assert res.message == "your code raised ZeroDivisionError: division by zero"
    with pytest.raises(GradingFailure) as info:
        check(tmp_check, lambda t: t / 0)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert info.value.__suppress_context__  # `from None`: no chained traceback shown to the learner


def test_unknown_task_lists_known_ids(tmp_check):
    with pytest.raises(KeyError, match=TASK):
        check("00.no_such_task", _reference)
    with pytest.raises(KeyError, match="unknown task id"):
        run("00.no_such_task", _reference)


def test_expect_close_reports_max_diff_and_where():
    want = torch.zeros(3, 2)
    got = want.clone()
    got[2, 1] = 0.31
    got[0, 0] = 0.1
    with pytest.raises(GradingFailure) as info:
        expect_close("x", got, want, atol=1e-3, rtol=0)
    msg = str(info.value)
    assert msg.startswith("x: values differ from the reference: max |diff| = 0.31 at [2, 1]")
    assert "2 of 6 entries" in msg
    expect_close("x", want + 1e-7, want)  # within tolerance: passes silently
    with pytest.raises(GradingFailure, match=r"wrong shape: expected \(3, 2\), got \(2, 3\)"):
        expect_close("x", want.T, want)
    with pytest.raises(GradingFailure, match=r"contains NaN \(first at \[1, 0\]\)"):
        expect_close("x", torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]]), want)
    with pytest.raises(GradingFailure, match="expected a tensor, got str"):
        expect_close("x", "oops", want)


def test_expect_close_accepts_numpy_and_scalars():
    import numpy as np

    expect_close("y", np.arange(3.0), torch.arange(3.0))
    with pytest.raises(GradingFailure, match=r"max \|diff\| = 1 at \[\]"):
        expect_close("y", 2.0, 3.0)


def test_call_rejects_non_callables():
    with pytest.raises(GradingFailure, match="expected a function, got int"):
        call(3)


def test_registering_two_checks_under_one_id_is_an_error(tmp_check):
    with pytest.raises(ValueError, match="already registered"):
        register(TASK, title="other")(lambda obj: None)
    with pytest.raises(ValueError, match="NN.name"):
        register("nodot", title="x")


def test_chapter_modules_are_imported_automatically(tmp_path, monkeypatch):
    (tmp_path / "ch98_tmp.py").write_text(textwrap.dedent("""
        from minivlm.grading import register

        @register("98.auto", title="found by pkgutil")
        def _(obj):
            pass
    """))
    (tmp_path / "helpers98.py").write_text("raise RuntimeError('not a chapter module: must not be imported')\n")
    monkeypatch.setattr(grading, "__path__", [*grading.__path__, str(tmp_path)])
    try:
        grading._import_chapter_modules()
        assert grading.CHECKS["98.auto"].title == "found by pkgutil"
        assert grading.tasks_for_chapter("98") == ["98.auto"]
        assert run("98.auto", None).passed
    finally:
        grading.unregister("98.auto")
        sys.modules.pop("minivlm.grading.ch98_tmp", None)


def test_every_chapter_module_registers_on_a_fresh_import():
    """A chapter module that fails to import (a helper defined after the registry imports the
    chapters, say) only warns; in a fresh process, with warnings as errors, every chapter that has
    a solutions notebook must register its tasks."""
    import subprocess
    import sys
    from pathlib import Path

    chapters = sorted(p.name[:2] for p in (Path(__file__).resolve().parents[1] / "solutions").glob("[0-9][0-9]_*.py"))
    code = ("import minivlm.grading as g; print(' '.join(sorted({t.split('.')[0] for t in g.CHECKS})))")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == chapters
