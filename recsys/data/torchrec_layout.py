"""TorchRec's Criteo-1TB npy layout (``torchrec/datasets/scripts``), read in place.

Users with MLPerf-preprocessed Criteo already have the day files described in
``recsys.data.criteo_layout`` (dense float32 [N, 13], log-transformed; sparse int64 [N, 26],
raw hashed ids, or contiguous ids after ``contiguous_preproc_criteo.py``; labels int32
[N, 1]).  These files carry no schema, so the user supplies the table sizes; ids are taken
modulo them, as ``InMemoryBinaryCriteoIterDataPipe``'s ``hashes`` does (a no-op for
contiguous ids already in range).

Public API::

    open_torchrec_criteo(data_dir, *, train_days, val_days=(), test_days=(),
                         num_embeddings_per_feature, sparse_suffix="sparse") -> TorchRecCriteo
    TorchRecCriteo: .schema, .open(split) -> NpySplit; pass it to make_loader.

A day may be a whole day ``23`` or a fraction of one ``(23, 0.0, 0.5)`` (rows
``[int(0.0 * N), int(0.5 * N))``), as TorchRec's DLRM example splits day 23
into validation and test halves.

Example::

    data = open_torchrec_criteo("/data/criteo_1tb", train_days=range(23),
                                val_days=[(23, 0.0, 0.5)], test_days=[(23, 0.5, 1.0)],
                                num_embeddings_per_feature=40_000_000)
    loader = make_loader(data, "train", 4096, rank=r, world_size=w, shuffle=True,
                         equal_batches=True, drop_last=True)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from recsys.data.criteo_layout import DaySpec, day_files, parse_day, table_sizes, torchrec_criteo_schema
from recsys.data.errors import LoaderError
from recsys.data.schema import Schema
from recsys.data.source import FilePart, NpySplit, open_file_triple


@dataclass
class TorchRecCriteo:
    """Day files assigned to splits; opens each split as an ``NpySplit``."""

    data_dir: Path
    schema: Schema
    days: dict[str, list[tuple[int, float, float]]]
    sparse_suffix: str
    modulo: np.ndarray  # [1, 26] int64

    def open(self, split: str) -> NpySplit:
        if split not in self.days:
            raise LoaderError(f"{self.data_dir}: no split {split!r} (splits: {sorted(self.days)})")
        parts: list[FilePart] = []
        start = 0
        for day, flo, fhi in self.days[split]:
            dp, sp, lp = day_files(self.data_dir, day, self.sparse_suffix)
            dense, sparse, labels = open_file_triple(self.schema, dp, sp, lp, f"day {day} of split {split!r}")
            n = sparse.shape[0]
            lo, hi = int(flo * n), int(fhi * n)
            parts.append(FilePart(start, hi - lo, lo, dense, sparse, labels, sp, dp, lp))
            start += hi - lo
        return NpySplit.from_parts(self.schema, split, parts, id_modulo=self.modulo)


def open_torchrec_criteo(
    data_dir: str | Path,
    *,
    train_days: Iterable[DaySpec],
    val_days: Iterable[DaySpec] = (),
    test_days: Iterable[DaySpec] = (),
    num_embeddings_per_feature: int | Sequence[int],
    sparse_suffix: str = "sparse",
) -> TorchRecCriteo:
    """Builds the schema from the user's table sizes and checks every day file's shape.

    ``num_embeddings_per_feature``: one int for all 26 fields or 26 ints; ids are
    taken modulo these.  ``sparse_suffix="sparse_contig"`` reads the output of
    ``contiguous_preproc_criteo.py`` without renaming it.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise LoaderError(f"{d}: no such directory")
    sizes = table_sizes(num_embeddings_per_feature)
    days = {
        name: [parse_day(x) for x in spec]
        for name, spec in (("train", train_days), ("val", val_days), ("test", test_days))
    }
    days = {k: v for k, v in days.items() if v}
    if not days:
        raise LoaderError("open_torchrec_criteo: no days given (train_days is empty)")
    provisional = torchrec_criteo_schema(sizes)
    src = TorchRecCriteo(d, provisional, days, sparse_suffix, np.array(sizes, dtype=np.int64).reshape(1, -1))
    rows = {name: src.open(name).num_rows for name in days}  # checks every file's shape now
    src.schema = torchrec_criteo_schema(
        sizes,
        splits=rows,
        preprocessing={
            "layout": "torchrec_criteo_1tb",
            "data_dir": str(d),
            "days": {k: [list(x) for x in v] for k, v in days.items()},
            "id_modulo": sizes,
            "sparse_suffix": sparse_suffix,
        },
    )
    return src


__all__ = ["DaySpec", "TorchRecCriteo", "open_torchrec_criteo"]
