"""One way every command line turns a user error into one line and exit status 2.

Why: before this module each CLI hand-rolled its own ``try/except`` around ``main`` with its own
prefix and its own list of exception classes, and a new error type was easy to miss in one of
them.  Every user-caused error subclasses :class:`recsys.errors.UserError`; a bug (anything else)
keeps its traceback.

Example::

    from recsys.cli import run_main

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        return run_main("plan", lambda: _run(args))       # "plan: error: ..." and 2 on a UserError
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable

from recsys.errors import UserError, one_line


def error_line(prog: str, e: BaseException | str) -> str:
    """``"<prog>: error: <one line>"`` (just ``"error: ..."`` when ``prog`` is empty)."""
    return (f"{prog}: " if prog else "") + "error: " + one_line(e)


def run_main(
    prog: str,
    body: Callable[[], int],
    should_report: Callable[[UserError], bool] | None = None,
    cleanup: Callable[[], None] | None = None,
) -> int:
    """Runs ``body()`` and returns its exit status; a ``UserError`` becomes one stderr line and 2.

    ``should_report(e)``: whether this process prints the line (multi-rank jobs print it once);
    default: always.  ``cleanup``: runs last either way (e.g. destroying a process group).
    """
    try:
        return body()
    except UserError as e:
        if should_report is None or should_report(e):
            print(error_line(prog, e), file=sys.stderr, flush=True)
        return 2
    finally:
        if cleanup is not None:
            cleanup()


def parser_with_examples(prog: str, description: str, examples: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` ends with ``examples`` as written (line breaks kept).

    Why: every command of the project shows its examples this way; one function instead of
    the same five constructor lines in each CLI.  Lives here (no torch) so that ``--help``
    stays fast for commands whose work needs torch.

    Example::

        p = parser_with_examples("python -m recsys.budget", "Inference budget per member.",
                                 "examples:\n  python -m recsys.budget --schema data/criteo --members dcnv2\n")
    """
    return argparse.ArgumentParser(prog=prog, description=description, epilog=examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def warn_moved(old: str, new: str, module_name: str) -> None:
    """One ``DeprecationWarning`` when a deprecated module path is imported (not when it runs as
    a command: the command prints its own deprecation line).

    Why: the split of issue 13 keeps the old import paths for one release; a warning is the
    message an importer sees, pointing at the new path.

    Example::

        warn_moved("recsys.evaluate", "recsys.eval", __name__)     # at the top of the shim
    """
    if module_name != "__main__":
        warnings.warn(f"{old} is deprecated and will be removed; import from {new}", DeprecationWarning,
                      stacklevel=3)
