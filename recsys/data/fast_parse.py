"""Moved to :mod:`recsys.data.convert.kernels`; this name re-exports it for one release.

Example::

    from recsys.data.convert.kernels import scan_criteo   # new
    from recsys.data.fast_parse import scan_criteo        # old, still works
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.data.fast_parse", "recsys.data.convert.kernels", __name__)

from recsys.data.convert.kernels import (
    BAD_COLUMNS,
    BAD_CR,
    BAD_VALUE,
    CRITEO_COLUMNS,
    OK,
    ScanResult,
    build_vocab_tables,
    dict_encode,
    hashed_ids,
    load,
    lookup_gather,
    scan_criteo,
    sum_by_key,
)

__all__ = ["BAD_COLUMNS", "BAD_CR", "BAD_VALUE", "CRITEO_COLUMNS", "OK", "ScanResult", "build_vocab_tables",
           "dict_encode", "hashed_ids", "load", "lookup_gather", "scan_criteo", "sum_by_key"]
