"""The three tests every chapter's checks get (imported by tests/test_grading_chNN.py):

- each reference solution passes its check, three times on fresh random inputs;
- a stub that raises NotImplementedError fails with "not implemented yet";
- each wrong version fails, with the message that names its mistake.

    from grading_suite import grading_tests
    test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
        grading_tests(GOOD, WRONG)
"""
import pytest

from minivlm.grading import run


def stub(*args, **kwargs):
    raise NotImplementedError("write this part")


def grading_tests(good: dict, wrong: dict, draws: dict | None = None):
    """good: task id -> a correct function; wrong: task id -> [(wrong function, expected message part)];
    draws: task id -> how many fresh draws its reference passes (default 3), fewer for a check that
    runs a zoo model for seconds and whose other passing runs (another right way, the solutions
    notebook under nbval) draw afresh too."""

    @pytest.mark.parametrize("task", sorted(good))
    def test_reference_passes(task):
        for _ in range((draws or {}).get(task, 3)):  # fresh random inputs each time
            result = run(task, good[task])
            assert result.passed, result.message

    @pytest.mark.parametrize("task", sorted(good))
    def test_stub_says_not_implemented(task):
        result = run(task, stub)
        assert not result.passed
        assert result.message.startswith("not implemented yet"), result.message

    @pytest.mark.parametrize("task, wrong_fn, message", [(t, w, m) for t, cases in wrong.items() for w, m in cases])
    def test_wrong_version_fails_with_its_message(task, wrong_fn, message):
        result = run(task, wrong_fn)
        assert not result.passed
        assert message in result.message, result.message

    return test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message
