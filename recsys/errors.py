"""One base class for every error a user can cause (bad config, data, checkpoint, request).

Why: each CLI turns a ``UserError`` into one line and exit status 2, and lets anything else
(a bug) raise with its traceback.  Before this module, every CLI listed its own tuple of nine
unrelated exception classes, and a new error type was easy to forget in one of them.

Example::

    from recsys.errors import UserError, one_line

    class LoaderError(UserError, ValueError): ...

    try:
        run()
    except UserError as e:
        print(f"prog: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line (never a traceback).

    ``report_here``: in a multi-rank job, whether this rank prints the line (None: the CLI
    decides, e.g. rank 0 only for errors every rank hits alike).  Errors one group or rank
    finds set it, so the line is printed once, by the rank that knows.
    """

    report_here: bool | None = None


def one_line(e: BaseException | str) -> str:
    """``str(e)`` with all whitespace runs (newlines included) folded to one space."""
    return " ".join(str(e).split())
