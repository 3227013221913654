"""What a worker does with one chunk, in each pass: the per-chunk work of a conversion.

``--hash N``: one pass (``run_hash_chunk``): parse, id = key % N, rows back per split; so does
``--vocab-from`` a min-count vocabulary (id = the saved vocabulary's lookup, nothing counted).
Vocabulary mode: pass 1 (``run_count_chunk``) parses, counts the train values and caches
the parsed chunk to the scratch dir; pass 2 (``run_map_chunk``) maps the cache to ids and
writes the rows in place (``pwrite``) at the chunk's offsets of the preallocated outputs.
Each function takes ``(job, item)`` and is run by ``pool.ordered_map``; ``Job`` is small
because it is pickled with every task to a forked worker.

Example::

    job = Job("criteo", "discretize", (0.8, 0.1, 0.1), 0, hash_size=1000, cache_dir=c, out_dir=o)
    res = run_hash_chunk(job, task)        # SplitArrays: per split (dense, sparse, labels)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from recsys.data.convert import kernels
from recsys.data.convert.chunks import Task, read_task_bytes
from recsys.data.convert.formats import FORMATS
from recsys.data.convert.parse_arrow import parse_chunk
from recsys.data.convert.parse_native import scan_chunk
from recsys.data.convert.parsed import Parsed, Scanned
from recsys.data.convert.splits import SPLITS, SplitRows, split_parts
from recsys.data.convert.vocab import KeyCounts, VocabCache, lookup
from recsys.data.convert.writer import NpyAppender, raw_bytes, writing


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the chunk: small, pickled with every task."""

    fmt_name: str
    numeric: str
    split_fracs: tuple[float, ...]
    seed: int
    hash_size: int | None
    cache_dir: str
    out_dir: str
    vocab: VocabCache | None = None  # pass 2: the run's vocabulary
    engine: str = "arrow"  # resolved: "native" (recsys.data.convert.kernels) or "arrow"
    spill: bool = False  # --hash in a pool worker: hand rows back through a file, not the pipe


@dataclass
class ChunkStats:
    """What the driver logs of every chunk, whatever the pass: rows, bad rows, bytes read."""

    task: Task
    n_lines: int
    n_rows: int
    bad_count: int
    bad_examples: list[tuple[int, str]]
    n_bytes: int


CACHE_ARRAYS = ("indices", "dense", "labels", "split", "keys", "offsets")  # a chunk's pass-1 cache files


@dataclass
class Pass1Result:
    """One chunk after the count pass: its train counts and where its parsed rows are cached."""

    stats: ChunkStats
    counts: list[KeyCounts]  # per field: (keys, train counts)
    cache_file: str
    split_rows: list[int]  # good rows per split: where pass 2 writes this chunk


@dataclass
class SplitArrays:
    """One --hash chunk's output rows for each split: (dense, sparse, labels).

    From a pool worker the rows come as a spill file instead (``spill``: path, and
    per split its (dense, sparse, labels) rows in file order), because pickling
    ~160 bytes per row through the pool's pipe cost the parent ~0.4 us/row of CPU
    (its result thread reads and unpickles) plus ~0.2 us/row to write them again.
    """

    stats: ChunkStats
    parts: SplitRows | None
    spill: str | None = None
    spill_rows: list[int] | None = None  # rows per split in the spill file


def _stats(task: Task, data: bytes, p: Parsed | Scanned) -> ChunkStats:
    return ChunkStats(task, p.n_lines, p.n_rows, p.bad_count, p.bad_examples, len(data))


def parse_bytes(job: Job, data: bytes, task: Task) -> Parsed | Scanned:
    """The chunk parsed by the run's engine."""
    if job.engine == "native":
        return scan_chunk(data, task, job.split_fracs, job.seed, job.numeric)
    return parse_chunk(FORMATS[job.fmt_name], data, task, job.split_fracs, job.seed, job.numeric)


def split_ids(job: Job, p: Parsed | Scanned) -> SplitRows:
    """A parsed chunk's good rows per split, its values mapped to ids: ``key % N`` with ``--hash N``,
    else the lookup in ``job.vocab`` (OOV 0).  One piece for the converter's passes and for
    ``raw_rows.RawRowEncoder``, so that offline conversion and serving cannot disagree."""
    if job.hash_size is None:
        if isinstance(p, Scanned):
            p = p.to_parsed()[0]
        keys = np.concatenate(p.keys) if p.keys else np.zeros(0, np.uint64)
        return lookup_rows(job, p.indices, keys, np.cumsum([0] + [k.size for k in p.keys]), p.dense, p.labels,
                           p.split)
    if isinstance(p, Scanned):
        parts = []
        for s in range(len(SPLITS)):
            m = p.split == s
            parts.append((p.dense[m], kernels.hashed_ids(p.keys, p.good[m], job.hash_size), p.labels[m]))
        return parts
    n_buckets = np.uint64(job.hash_size)
    sparse_t = np.empty(p.indices.shape, dtype=np.int32)  # [F, n]
    for f, k in enumerate(p.keys):
        np.take((k % n_buckets).astype(np.int32), p.indices[f], out=sparse_t[f])
    return split_parts(p.dense, sparse_t.T, p.labels, p.split)


def lookup_rows(job: Job, indices: np.ndarray, keys: np.ndarray, off: np.ndarray, dense: np.ndarray,
                labels: np.ndarray, split: np.ndarray) -> SplitRows:
    """A dictionary-encoded chunk (``indices`` int32 [F, n]; field f's distinct keys are
    ``keys[off[f]:off[f + 1]]``) -> per split (dense, ids int32 [n_s, F], labels), in file order."""
    assert job.vocab is not None
    vocab = job.vocab.vocab()
    if indices.shape[1] == 0:  # a chunk with no good rows
        vocab = []
    if job.engine == "native":
        sparse, order, starts = kernels.lookup_gather(indices, keys, off, job.vocab.tables(), split, len(SPLITS))
        if int(np.diff(starts).max(initial=0)) != sparse.shape[0]:  # (all rows in one split: order is 0..n-1)
            dense, labels = dense[order], labels[order]
        return [(dense[a:b], sparse[a:b], labels[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    sparse_t = np.empty(indices.shape, dtype=np.int32)  # [F, n]
    for f, (vk, vi) in enumerate(vocab):
        np.take(lookup(vk, vi, keys[off[f]:off[f + 1]]), indices[f], out=sparse_t[f])
    return split_parts(dense, sparse_t.T, labels, split)


def run_hash_chunk(job: Job, task: Task) -> SplitArrays:
    """The single pass (``--hash N``, or ``--vocab-from`` a min-count vocabulary, nothing counted):
    parse, map to ids, hand back per-split rows."""
    data = read_task_bytes(task)
    p = parse_bytes(job, data, task)
    parts = split_ids(job, p)
    if not job.spill:
        return SplitArrays(_stats(task, data, p), parts)
    path = os.path.join(job.cache_dir, f"hash_{task.file_idx:04d}_{task.chunk_idx:06d}.bin")
    with writing(path), open(path, "wb") as fh:
        for dense, sparse, labels in parts:
            for arr in (dense, sparse, labels):
                if arr.size:
                    fh.write(raw_bytes(arr))
    return SplitArrays(_stats(task, data, p), None, path, [int(x[2].shape[0]) for x in parts])


def run_count_chunk(job: Job, task: Task) -> Pass1Result:
    """Vocabulary pass 1: parse, count values on train rows, cache the parsed chunk."""
    data = read_task_bytes(task)
    scanned = parse_bytes(job, data, task)
    if isinstance(scanned, Scanned):
        p, counts = scanned.to_parsed()
    else:
        p = scanned
        train = p.split == 0
        counts = []
        for f, k in enumerate(p.keys):
            c = np.bincount(p.indices[f][train], minlength=len(k))
            seen = c > 0
            counts.append((k[seen], c[seen]))
    offsets = np.cumsum([0] + [k.size for k in p.keys])
    # raw .npy files, not .npz: zip's crc32 alone cost more than the write.  Holding the chunks
    # in memory instead (thread workers share it) was measured at 1M rows, 2 workers: the count
    # pass 0.05 s faster, the map pass 0.02 s slower, +170 MB peak RSS; not worth the memory.
    cache_file = os.path.join(job.cache_dir, f"chunk_{task.file_idx:04d}_{task.chunk_idx:06d}")
    for name, arr in zip(CACHE_ARRAYS, (p.indices, p.dense, p.labels, p.split,
                                        np.concatenate(p.keys) if p.keys else np.zeros(0, np.uint64), offsets)):
        with writing(f"{cache_file}.{name}.npy"):
            np.save(f"{cache_file}.{name}.npy", arr)
    split_rows = np.bincount(p.split, minlength=len(SPLITS)).tolist()
    return Pass1Result(_stats(task, data, p), counts, cache_file, split_rows)


def run_map_chunk(job: Job, item: tuple[str, list[int]]) -> None:
    """Vocabulary pass 2: cached chunk -> contiguous ids, written in place at this chunk's
    row offset of each split's (preallocated) output, so no rows travel back to the parent."""
    cache_file, row_offsets = item
    z = {name: np.load(f"{cache_file}.{name}.npy") for name in CACHE_ARRAYS}
    parts = lookup_rows(job, z["indices"], z["keys"], z["offsets"], z["dense"], z["labels"], z["split"])
    for s, (dense, sparse, labels) in zip(SPLITS, parts):
        n, at = labels.shape[0], row_offsets[SPLITS.index(s)]
        for kind, arr in (("dense", dense), ("sparse", sparse), ("labels", labels)):
            if n and arr.size:
                # this chunk's rows of a split are contiguous in the file: one positional write.
                # (A memmap + flush here msync'ed every chunk to disk: ~1 us/row of CPU.)
                row_bytes = arr.itemsize * (arr.size // n)
                path = os.path.join(job.out_dir, f"{s}_{kind}.npy.tmp")
                with writing(path):
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.pwrite(fd, raw_bytes(arr), NpyAppender.HEADER_BYTES + at * row_bytes)
                    finally:
                        os.close(fd)
    for name in z:
        os.remove(f"{cache_file}.{name}.npy")
