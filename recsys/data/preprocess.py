"""Moved to the package :mod:`recsys.data.convert`; this name re-exports it for one release.

Why a package: this one module held chunking, both parsers, the worker pool, vocabularies,
the writers, the staging dir, the driver and the CLI; each now has its own module there.

Example::

    from recsys.data.convert import ConvertConfig, convert   # new
    from recsys.data.preprocess import ConvertConfig, convert  # old, still works
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.data.preprocess", "recsys.data.convert", __name__)

from recsys.data.convert.badrows import BadRowLog
from recsys.data.convert.chunks import Task, check_inputs, make_tasks, read_task_bytes
from recsys.data.convert.cli import Terminated, build_parser, main
from recsys.data.convert.driver import MAX_HASH, ConvertConfig, check_config, convert
from recsys.data.convert.errors import ChunkFault, InputError
from recsys.data.convert.parse_arrow import parse_chunk
from recsys.data.convert.parse_native import CRITEO_NAMES, resolve_engine, scan_chunk
from recsys.data.convert.parsed import MAX_REPORTED, Parsed, Scanned
from recsys.data.convert.passes import (
    ChunkStats,
    Job,
    Pass1Result,
    SplitArrays,
    run_count_chunk,
    run_hash_chunk,
    run_map_chunk,
)
from recsys.data.convert.pool import make_pool, ordered_map
from recsys.data.convert.splits import SPLITS
from recsys.data.convert.staging import Staging, close_staging, glob_escape, open_staging, swap_in
from recsys.data.convert.vocab import lookup
from recsys.data.convert.writer import NpyAppender, SplitWriter

__all__ = [
    "CRITEO_NAMES", "MAX_HASH", "MAX_REPORTED", "SPLITS", "BadRowLog", "ChunkFault", "ChunkStats", "ConvertConfig",
    "InputError", "Job", "NpyAppender", "Parsed", "Pass1Result", "Scanned", "SplitArrays", "SplitWriter", "Staging",
    "Task", "Terminated", "build_parser", "check_config", "check_inputs", "close_staging", "convert",
    "glob_escape", "lookup", "main", "make_pool", "make_tasks", "open_staging", "ordered_map", "parse_chunk",
    "read_task_bytes", "resolve_engine", "run_count_chunk", "run_hash_chunk", "run_map_chunk", "scan_chunk",
    "swap_in",
]
