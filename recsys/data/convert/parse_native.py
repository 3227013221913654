"""The native engine: a Criteo chunk -> ``Scanned``, with the compiled single-pass C scanner.

Why: one loop over the bytes that tokenizes, parses numbers, applies ln^2 and hashes every
field to the same 64-bit keys the pyarrow engine computes (``kernels``), ~0.7 us/row against
~4.7 for pyarrow's three passes.  Python looks only at the rare bad rows, to report them
exactly as ``parse_arrow`` does.  ``resolve_engine`` picks the engine for a run and loads
the kernels once, before the worker pool starts.

Example::

    engine, seconds = resolve_engine("auto", "criteo")    # ("native", 0.001) with a C compiler
    s = scan_chunk(data, task, (0.8, 0.1, 0.1), seed=0, numeric="discretize")
    s.keys  # uint64 [F, rows read]; s.good: the good rows' columns, in file order
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from recsys.data import native
from recsys.data.convert import kernels
from recsys.data.convert.chunks import Task
from recsys.data.convert.errors import InputError
from recsys.data.convert.formats import FORMATS
from recsys.data.convert.parsed import CR_REASON, MAX_REPORTED, Scanned, field_texts, non_finite
from recsys.data.convert.splits import draw_split

CRITEO_NAMES = FORMATS["criteo"].column_names  # label, I1..I13, C1..C26


def scan_chunk(data: bytes, task: Task, split_fracs: tuple[float, ...], seed: int, numeric: str) -> Scanned:
    """Criteo chunk -> per-row keys with the compiled scanner; same rows, keys, splits and
    bad-row reports as ``parse_chunk`` (tests/test_preprocess.py checks both agree)."""
    keys, dense, labels, status, aux, lines, n_lines = kernels.scan_criteo(
        np.frombuffer(data, dtype=np.uint8), numeric == "dense")
    ok = status == kernels.OK
    n_ok = int(np.count_nonzero(ok))
    colok = (status != kernels.BAD_COLUMNS) & (status != kernels.BAD_CR)  # arrow draws no split for either
    split = draw_split(int(np.count_nonzero(colok)), task, split_fracs, seed)
    if n_ok == status.size:
        good = np.arange(status.size, dtype=np.int64)
        examples: list[tuple[int, str]] = []
    else:
        good = np.flatnonzero(ok)
        split = split[ok[colok]]
        dense, labels = dense[good], labels[good]
        examples = []
        names = CRITEO_NAMES
        shown = [r for r in np.flatnonzero(~ok)[:MAX_REPORTED]]
        values = iter(field_texts(data, [(int(lines[r]), int(aux[r])) for r in shown
                                         if status[r] == kernels.BAD_VALUE], "\t"))
        for r in shown:
            if status[r] == kernels.BAD_CR:
                why = CR_REASON
            elif status[r] == kernels.BAD_COLUMNS:
                why = f"expected {kernels.CRITEO_COLUMNS} columns, got {aux[r]}"
            elif aux[r] == 0:
                why = f"bad label (label) value {next(values)}"
            else:
                why = f"non-numeric {names[aux[r]]} value {next(values)}"
            examples.append((int(lines[r]), why))
    if dense.size and not np.isfinite(dense).all():
        r = int(np.argwhere(~np.isfinite(dense))[0][0])
        non_finite(task, dense, r, int(lines[good[r]]), list(CRITEO_NAMES[1:1 + dense.shape[1]]))
    return Scanned(n_lines, int(status.size), keys, good, np.ascontiguousarray(dense), labels, split,
                   int(status.size - n_ok), examples)


def resolve_engine(engine: str, dataset: str, log: Callable[[str], None] = print) -> tuple[str, float]:
    """("native", seconds spent building/loading the C kernels) when the compiled scanner covers
    ``dataset`` and a C compiler is there, else ("arrow", 0.0).  Must run before the pool forks,
    so that the workers inherit the loaded library."""
    if engine not in ("auto", "native", "arrow"):
        raise InputError(f"engine must be auto, native or arrow, got {engine!r}")
    if engine == "native" and dataset != "criteo":
        raise InputError(f"--engine native: the compiled scanner reads criteo only, not {dataset}")
    if engine == "arrow" or dataset != "criteo":
        return "arrow", 0.0
    try:
        return "native", kernels.load()
    except native.NativeUnavailable as e:
        if engine == "native":
            raise InputError(f"--engine native unavailable: {e}") from None
        log(f"warning: {e}; parsing with pyarrow (--engine arrow, ~3x slower)")
        return "arrow", 0.0

