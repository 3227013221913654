"""The Criteo layouts, written down once: the raw TSV's columns and TorchRec's day files.

Why one module: the counts (13 dense, 26 categorical), the column names and the
``day_{i}_{kind}.npy`` file names used to be spelled out separately by the converters,
the synthetic-data writer, the config checks, the planner and the loader.  This module has
no heavy imports (no torch, no torchrec), so ``recsys.config`` can use it while loading a
config.

Two layouts:

- **Raw Criteo TSV** (Kaggle display-advertising and the 1TB click logs): one row per line,
  ``label, I1..I13, C1..C26``, tab-separated; what ``data_prep/criteo_to_npy.py`` reads.
- **TorchRec's Criteo-1TB npy** (``torchrec/datasets/scripts``, MLPerf DLRM): per day ``i``,
  ``day_{i}_dense.npy`` float32 [N, 13], ``day_{i}_sparse.npy`` int64 [N, 26] (or
  ``day_{i}_sparse_contig.npy`` after ``contiguous_preproc_criteo.py``) and
  ``day_{i}_labels.npy`` int32 [N, 1]; fields named as ``torchrec.datasets.criteo`` names
  them, ``int_0..int_12`` and ``cat_0..cat_25``.  A day of a split is a whole day ``23`` or
  a fraction ``(23, 0.0, 0.5)``: rows ``[int(0.0 * N), int(0.5 * N))``.

Example::

    from recsys.data.criteo_layout import NUM_SPARSE, day_files, parse_day, torchrec_criteo_schema

    dense, sparse, labels = day_files(Path("/data/criteo_1tb"), 23)   # .../day_23_dense.npy, ...
    parse_day((23, 0.0, 0.5))                                          # (23, 0.0, 0.5)
    torchrec_criteo_schema(40_000_000).num_sparse                      # 26 == NUM_SPARSE
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from recsys.data.errors import LoaderError
from recsys.data.schema import Schema, SparseFeature

NUM_DENSE = 13
NUM_SPARSE = 26

RAW_DENSE_NAMES: tuple[str, ...] = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
RAW_SPARSE_NAMES: tuple[str, ...] = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
RAW_COLUMNS: tuple[str, ...] = ("label", *RAW_DENSE_NAMES, *RAW_SPARSE_NAMES)

# == torchrec.datasets.criteo.DEFAULT_INT_NAMES / DEFAULT_CAT_NAMES (tests/test_loader.py checks)
TORCHREC_DENSE_NAMES: tuple[str, ...] = tuple(f"int_{i}" for i in range(NUM_DENSE))
TORCHREC_SPARSE_NAMES: tuple[str, ...] = tuple(f"cat_{i}" for i in range(NUM_SPARSE))

DAY_KINDS = ("dense", "sparse", "labels")  # the "sparse" file may carry another suffix

DaySpec = Union[int, tuple[int, float, float]]


def day_file(data_dir: Path, day: int, kind: str) -> Path:
    """``data_dir / "day_{day}_{kind}.npy"``; ``kind``: dense, labels, or the sparse suffix."""
    return data_dir / f"day_{day}_{kind}.npy"


def day_files(data_dir: Path, day: int, sparse_suffix: str = "sparse") -> tuple[Path, Path, Path]:
    """The (dense, sparse, labels) files of one day."""
    return day_file(data_dir, day, "dense"), day_file(data_dir, day, sparse_suffix), day_file(data_dir, day, "labels")


def has_day_files(data_dir: Path) -> bool:
    """Whether ``data_dir`` looks like TorchRec's layout (it has ``day_0_sparse.npy``)."""
    return day_file(data_dir, 0, "sparse").exists()


def parse_day(d: object) -> tuple[int, float, float]:
    """``23`` or ``(23, lo, hi)`` with ``0 <= lo < hi <= 1`` -> ``(day, lo, hi)``; else ``LoaderError``."""
    if isinstance(d, numbers.Integral) and not isinstance(d, bool):
        return int(d), 0.0, 1.0
    if isinstance(d, (tuple, list)) and len(d) == 3:
        day, lo, hi = int(d[0]), float(d[1]), float(d[2])
        if 0.0 <= lo < hi <= 1.0:
            return day, lo, hi
    raise LoaderError(f"bad day {d!r}: expected a day number or (day, start_fraction, stop_fraction)")


def table_sizes(num_embeddings_per_feature: int | Sequence[int]) -> list[int]:
    """One size for all 26 fields, or 26 sizes -> the 26 sizes; ``LoaderError`` otherwise."""
    n = num_embeddings_per_feature
    sizes = [int(n)] * NUM_SPARSE if isinstance(n, (int, numbers.Integral)) else [int(x) for x in n]  # numpy ints too
    if len(sizes) != NUM_SPARSE:
        raise LoaderError(f"num_embeddings_per_feature has {len(sizes)} values, expected 1 or {NUM_SPARSE}")
    if any(s <= 0 for s in sizes):
        raise LoaderError(f"num_embeddings_per_feature must be positive, got {sizes}")
    return sizes


def torchrec_criteo_schema(
    num_embeddings_per_feature: int | Sequence[int],
    dataset: str = "criteo_1tb_torchrec",
    splits: Mapping[str, int] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> Schema:
    """The schema of TorchRec's layout, which its files do not carry: table sizes from the user.

    Fields ``cat_0..cat_25`` (sizes from :func:`table_sizes`), dense ``int_0..int_12``.
    """
    sizes = table_sizes(num_embeddings_per_feature)
    return Schema(
        dataset,
        tuple(SparseFeature(n, s) for n, s in zip(TORCHREC_SPARSE_NAMES, sizes)),
        TORCHREC_DENSE_NAMES,
        splits=dict(splits or {}),
        preprocessing=dict(preprocessing or {}),
    )


__all__ = [
    "DAY_KINDS",
    "DaySpec",
    "NUM_DENSE",
    "NUM_SPARSE",
    "RAW_COLUMNS",
    "RAW_DENSE_NAMES",
    "RAW_SPARSE_NAMES",
    "TORCHREC_DENSE_NAMES",
    "TORCHREC_SPARSE_NAMES",
    "day_file",
    "day_files",
    "has_day_files",
    "parse_day",
    "table_sizes",
    "torchrec_criteo_schema",
]
