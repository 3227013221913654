"""Moved to :mod:`recsys.data.convert.formats`; this name re-exports it for one release.

Example::

    from recsys.data.convert.formats import FORMATS   # new
    from recsys.data.raw_formats import FORMATS       # old, still works
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.data.raw_formats", "recsys.data.convert.formats", __name__)

from recsys.data.convert.formats import (
    AVAZU,
    CRITEO,
    EMPTY_KEY,
    FORMATS,
    KDD12,
    MAX_EXACT_INT,
    NUMBER,
    TAG_NUM,
    Column,
    ColumnResult,
    RawFormat,
    criteo_token,
    hash_binary,
    int_keys,
    mix64,
    parse_numbers,
    transform_column,
    transform_column_arity,
)

__all__ = ["AVAZU", "CRITEO", "EMPTY_KEY", "FORMATS", "KDD12", "MAX_EXACT_INT", "NUMBER", "TAG_NUM", "Column",
           "ColumnResult", "RawFormat", "criteo_token", "hash_binary", "int_keys", "mix64", "parse_numbers",
           "transform_column", "transform_column_arity"]
