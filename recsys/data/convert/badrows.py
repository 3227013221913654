"""The bad-row log of a run: rows read, rows dropped, the first few as ``file:line: reason``.

Why in the driver and not the workers: a worker knows only its chunk's local lines; chunks
are logged in order here, so each file's line count so far turns a chunk line into a file
line.  ``check`` then fails the run above ``--max-bad-fraction`` (exit code 1).

Example::

    bad = BadRowLog()
    bad.add(result.stats)                     # per chunk, in order
    bad.check(0.001, files)                   # InputError: "12 of 1000 rows malformed (1.2% > ...)"
    bad.examples[0]                           # "day_0.tsv:17: non-numeric I3 value 'abc'"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recsys.data.convert.errors import InputError
from recsys.data.convert.parsed import MAX_REPORTED

if TYPE_CHECKING:
    from recsys.data.convert.passes import ChunkStats


@dataclass
class BadRowLog:
    """Counts rows and malformed rows; keeps the first few as ``file:line: reason``."""

    rows: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)
    lines_before: dict[int, int] = field(default_factory=dict)  # file_idx -> lines seen so far

    def add(self, s: ChunkStats) -> None:
        base = self.lines_before.get(s.task.file_idx, 0)
        self.lines_before[s.task.file_idx] = base + s.n_lines
        self.rows += s.n_rows
        self.bad += s.bad_count
        for line, why in s.bad_examples:
            if len(self.examples) < MAX_REPORTED:
                self.examples.append(f"{s.task.path}:{base + line}: {why}")

    def check(self, max_fraction: float, files: list[str] | None = None) -> None:
        if self.rows == 0:
            shown = ", ".join((files or [])[:3]) + (f" and {len(files) - 3} more" if files and len(files) > 3 else "")
            raise InputError(f"{shown or 'the input files'}: no data rows (only blank lines or a header)")
        if self.bad == self.rows:  # even --max-bad-fraction 1 must not "succeed" with an empty dataset
            raise InputError(f"all {self.rows} rows malformed, nothing to convert; first: "
                             f"{self.examples[0] if self.examples else '?'}", exit_code=1)
        frac = self.bad / self.rows
        if frac > max_fraction:
            raise InputError(
                f"{self.bad} of {self.rows} rows malformed ({100 * frac:.3g}% > --max-bad-fraction "
                f"{100 * max_fraction:.3g}%); first: {self.examples[0] if self.examples else '?'}",
                exit_code=1,
            )
