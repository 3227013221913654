"""The converter's two errors: a user's bad input (``InputError``) and a check failed inside a chunk.

Why two: a worker that finds a bad value knows only its chunk's local line, not how many
lines came before the chunk; it raises ``ChunkFault``, and the driver, which consumes chunks
in order, turns that into an ``InputError`` naming the file line.

Example::

    raise InputError(f"{path}: empty file")                   # exit code 2: before any work
    raise InputError("900 of 1000 rows malformed", exit_code=1)  # the data failed a check mid-run
"""
from __future__ import annotations

from recsys.errors import UserError


class InputError(UserError):
    """A problem with the user's input (missing/empty/wrong-dataset file, too many bad rows).

    Carries the exit code; the CLI prints ``str(e)`` as one line, never a traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ChunkFault(Exception):
    """A check failed on chunk-local line ``line`` of input file ``file_idx``.

    Raised in a worker, which does not know how many lines came before its chunk; the
    driver, which consumes chunks in order, turns it into an ``InputError`` naming the
    file line.  Plain args, so it pickles back from a forked worker.
    """

    def __init__(self, file_idx: int, line: int, what: str) -> None:
        super().__init__(file_idx, line, what)
        self.file_idx, self.line, self.what = file_idx, line, what
