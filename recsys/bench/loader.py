"""Loader throughput: batches/s and rows/s of ``make_loader``, unshuffled and shuffled.

Writes a synthetic split in our npy layout (Criteo-like by default: 26 sparse
fields and 13 dense features, as ``recsys.data.criteo_layout``) to a temporary
directory, or reads ``--data``'s existing split, then times ``--passes`` full epochs per mode after one warm-up
epoch (so the page cache, not the disk, is measured; the loader's own cost is
what the training loop sees on a warm machine).  Only the loader is timed: the
batches are consumed and dropped.

Example::

    python -m recsys.bench.loader                          # 200k rows, batch 4096, 4 passes
    python -m recsys.bench.loader --rows 1000000 --batch-size 8192 --prefetch 4
    python -m recsys.bench.loader --data /data/criteo_npy --split train --passes 1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recsys.cli import run_main
from recsys.data.criteo_layout import NUM_DENSE, NUM_SPARSE
from recsys.data.loader import make_loader
from recsys.data.schema import Schema, SparseFeature


@dataclass
class Result:
    shuffle: bool
    batches: int
    rows: int
    seconds: float

    def line(self, batch_size: int) -> str:
        return (
            f"shuffle={str(self.shuffle):5s}  {self.batches / self.seconds:8.1f} batches/s of {batch_size}  "
            f"{self.rows / self.seconds / 1e6:6.2f} M rows/s  ({self.batches} batches in {self.seconds:.2f} s)"
        )


def write_synthetic(d: Path, rows: int, num_sparse: int, num_dense: int, vocab: int, seed: int = 0) -> None:
    """A ``train`` split of random ids, dense values and labels in our npy layout."""
    rng = np.random.default_rng(seed)
    Schema(
        "bench",
        tuple(SparseFeature(f"C{i}", vocab) for i in range(num_sparse)),
        tuple(f"I{i}" for i in range(num_dense)),
        splits={"train": rows},
    ).save(d)
    np.save(d / "train_sparse.npy", rng.integers(0, vocab, (rows, num_sparse), dtype=np.int32))
    np.save(d / "train_dense.npy", rng.standard_normal((rows, num_dense), dtype=np.float32))
    np.save(d / "train_labels.npy", (rng.random(rows) < 0.3).astype(np.float32))


def measure(data: Path, split: str, batch_size: int, shuffle: bool, passes: int, prefetch: int) -> Result:
    """Times ``passes`` epochs after a warm-up epoch; every row must come out once per epoch."""
    loader = make_loader(data, split, batch_size, shuffle=shuffle, prefetch=prefetch)
    expected = loader.split.num_rows
    for _ in loader:  # warm-up: page cache and worker start-up
        pass
    rows = batches = 0
    seconds = 0.0
    for epoch in tqdm(range(passes), desc=f"shuffle={shuffle}", unit="epoch", file=sys.stderr):
        loader.set_epoch(epoch)
        t = time.perf_counter()
        epoch_rows = 0
        for b in loader:
            epoch_rows += len(b.labels)
            batches += 1
        seconds += time.perf_counter() - t
        if epoch_rows != expected:
            raise RuntimeError(f"epoch {epoch} yielded {epoch_rows} rows, the split has {expected}")
        rows += epoch_rows
    return Result(shuffle, batches, rows, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.bench.loader",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m recsys.bench.loader\n"
        "  python -m recsys.bench.loader --rows 1000000 --batch-size 8192 --prefetch 4\n"
        "  python -m recsys.bench.loader --data /data/criteo_npy --split train --passes 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=None, help="existing dataset dir (default: synthetic, in a temp dir)")
    p.add_argument("--split", default="train", help="split of --data to read (default: train)")
    p.add_argument("--rows", type=int, default=200_000, help="synthetic rows (default: 200000)")
    p.add_argument("--sparse", type=int, default=NUM_SPARSE, help=f"synthetic sparse fields (default: {NUM_SPARSE})")
    p.add_argument("--dense", type=int, default=NUM_DENSE, help=f"synthetic dense features (default: {NUM_DENSE})")
    p.add_argument("--vocab", type=int, default=1000, help="synthetic ids per field (default: 1000)")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per batch (default: 4096)")
    p.add_argument("--passes", type=int, default=4, help="timed epochs per mode (default: 4)")
    p.add_argument("--prefetch", type=int, default=2, help="batches prefetched by the loader (default: 2)")
    args = p.parse_args(argv)
    for name in ("rows", "sparse", "dense", "vocab", "batch_size", "passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return run_main(p.prog, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """Measures both modes and prints one line each; a bad ``--data`` is a ``UserError``."""
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp)
            write_synthetic(data, args.rows, args.sparse, args.dense, args.vocab)
        results = [
            measure(data, args.split, args.batch_size, shuffle, args.passes, args.prefetch)
            for shuffle in (False, True)
        ]
    print(f"loader throughput ({data if args.data else 'synthetic'}, batch {args.batch_size}, prefetch {args.prefetch}):")
    for r in results:
        print("  " + r.line(args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
