"""recsys.cli.run_main: a UserError is one line and exit 2, a bug keeps its traceback."""
from __future__ import annotations

import pytest

from recsys.cli import error_line, run_main
from recsys.errors import UserError


def _raise(e: BaseException) -> int:
    raise e


def test_user_error_is_one_line_and_status_2(capsys):
    assert run_main("tool", lambda: _raise(UserError("bad\n  value"))) == 2
    assert capsys.readouterr().err == "tool: error: bad value\n"


def test_success_returns_body_status_and_cleanup_runs(capsys):
    done: list[int] = []
    assert run_main("tool", lambda: 3, cleanup=lambda: done.append(1)) == 3
    assert done == [1] and capsys.readouterr().err == ""


def test_should_report_false_stays_quiet(capsys):
    assert run_main("tool", lambda: _raise(UserError("x")), should_report=lambda e: False) == 2
    assert capsys.readouterr().err == ""


def test_bug_is_not_swallowed():
    done: list[int] = []
    with pytest.raises(ZeroDivisionError):
        run_main("tool", lambda: 1 // 0, cleanup=lambda: done.append(1))
    assert done == [1]


def test_error_line_without_prog():
    assert error_line("", "a\nb") == "error: a b"
