"""Vocabularies: counting values on train rows, min-count with the OOV id 0, and the lookup.

Why counted on train only: a value seen only in val/test must map to the OOV id 0 as an
unseen value would, or the evaluation leaks.  Ids 1..V go by descending train count (ties by
key), so frequent values get small ids.  Every value is its 64-bit key (``formats``); the
``--hash N`` mode needs none of this (id = key % N, in ``passes``).

A run's vocabulary is written once to the scratch dir and read by every pass-2 worker through
a ``VocabCache``: one object per run, shared by thread workers (they build the C engine's
lookup tables once) and re-created once per forked worker process (never once per chunk).

Example::

    counts = TrainCounts(num_fields=26, engine="native")
    counts.add(pass1_result.counts)                       # per chunk
    vocab, sizes = build_vocab(counts.final(), min_count=2, engine="native")
    save_vocab(path, vocab)
    ids = lookup(*VocabCache(path).vocab()[0], keys)     # int32, 0 where a key is OOV
"""
from __future__ import annotations

import multiprocessing as mp
import threading
from multiprocessing.pool import Pool, ThreadPool
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from recsys.data.convert import kernels

KeyCounts = tuple[np.ndarray, np.ndarray]  # (uint64 keys, int64 train counts) of one field
FieldVocab = tuple[np.ndarray, np.ndarray]  # (sorted uint64 keys, their int32 ids >= 1) of one field
VocabTables = tuple[np.ndarray, np.ndarray, np.ndarray]  # kernels.build_vocab_tables: (tbl, base, mask)
_PROCESS_SLOT = "recsys_convert_vocab"  # attribute of a forked worker's Process object: its VocabCache


def lookup(vocab_keys: np.ndarray, vocab_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Contiguous id of each key (sorted-key binary search); 0 (OOV) when not in the vocabulary."""
    if vocab_keys.size == 0:
        return np.zeros(keys.shape, dtype=np.int32)
    pos = np.searchsorted(vocab_keys, keys)
    pos[pos == vocab_keys.size] = 0
    return np.where(vocab_keys[pos] == keys, vocab_ids[pos], 0).astype(np.int32)


def build_vocab(
    counts: list[list[KeyCounts]], min_count: int | Sequence[int], engine: str, pool: Pool | None = None
) -> tuple[list[FieldVocab], list[int]]:
    """Per field: (sorted keys, their ids) for values with train count >= min_count (one for all
    fields, or one per field: Criteo's numeric tokens under ``--numeric-min-count``).

    Ids 1..V go by descending count (ties by key), so frequent values get small
    ids; 0 is OOV.  num_embeddings = V + 1.  With a thread pool the fields are built
    in parallel (the merge kernel and numpy's sorts release the GIL); this step runs
    between the passes, while the workers would otherwise wait.
    """

    mins = [min_count] * len(counts) if isinstance(min_count, int) else list(min_count)
    if len(mins) != len(counts):
        raise ValueError(f"{len(mins)} min counts for {len(counts)} fields")

    def field_vocab(job: tuple[list[KeyCounts], int]) -> FieldVocab:
        parts, least = job
        k, c = merge_counts(parts, engine)
        keep = c >= least
        k, c = k[keep], c[keep]
        order = np.lexsort((k, -c))
        ids = np.empty(k.size, dtype=np.int32)
        ids[order] = np.arange(1, k.size + 1, dtype=np.int32)
        by_key = np.argsort(k)
        return k[by_key], ids[by_key]

    if isinstance(pool, ThreadPool):
        vocab = pool.map(field_vocab, list(zip(counts, mins)), chunksize=1)
    else:
        vocab = [field_vocab(job) for job in zip(counts, mins)]
    return vocab, [int(k.size) + 1 for k, _ in vocab]


def merge_counts(parts: list[KeyCounts], engine: str) -> KeyCounts:
    """Sums counts of equal keys: the C kernel's hash aggregation, or arrow's group-by (~10x slower)."""
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if engine == "native":
        return kernels.sum_by_key(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    t = pa.table({"k": np.concatenate([p[0] for p in parts]), "c": np.concatenate([p[1] for p in parts])})
    g = t.group_by("k").aggregate([("c", "sum")])
    return g.column("k").to_numpy(), g.column("c_sum").to_numpy()


class TrainCounts:
    """Per-field train counts of all chunks so far, compacted whenever the pending lists grow large."""

    COMPACT_AT = 8_000_000

    def __init__(self, num_fields: int, engine: str) -> None:
        self.parts: list[list[KeyCounts]] = [[] for _ in range(num_fields)]
        self.pending = 0
        self.engine = engine

    def add(self, counts: list[KeyCounts]) -> None:
        for f, kc in enumerate(counts):
            self.parts[f].append(kc)
            self.pending += kc[0].size
        if self.pending > self.COMPACT_AT:
            self.parts = [[merge_counts(p, self.engine)] for p in self.parts]
            self.pending = sum(p[0][0].size for p in self.parts)

    def final(self) -> list[list[KeyCounts]]:
        return self.parts


def save_vocab(path: str, vocab: list[FieldVocab]) -> None:
    """Writes ``vocab`` as one ``.npz`` (``keys{f}``, ``ids{f}`` per field) for the pass-2 workers."""
    arrays: dict[str, np.ndarray] = {f"keys{f}": k for f, (k, _) in enumerate(vocab)}
    arrays.update({f"ids{f}": i for f, (_, i) in enumerate(vocab)})
    np.savez(path, allow_pickle=False, **arrays)  # numeric arrays only (naming it also types **arrays)


def load_vocab(path: str) -> list[FieldVocab]:
    """The vocabulary ``save_vocab`` wrote."""
    with np.load(path) as z:
        nf = len(z.files) // 2
        return [(z[f"keys{f}"], z[f"ids{f}"]) for f in range(nf)]


class VocabCache:
    """One run's vocabulary file, loaded at most once per process, and its C lookup tables.

    Why an object and not a module-level memo: it belongs to one run (``convert`` drops it at
    the end, nothing stays behind in the process), and it says who shares it.  Thread workers
    (the C engine) share the parent's object, so the tables are built once, under its lock.
    Sent to a forked worker with a task, it unpickles as that worker's own cache for the same
    file (kept on the worker's ``Process`` object), so each worker reads the file once, not
    once per chunk.

    Example::

        cache = VocabCache(str(cache_dir / "vocab.npz"))
        keys, ids = cache.vocab()[f]          # field f: sorted uint64 keys, int32 ids
        tbl, base, mask = cache.tables()      # for kernels.lookup_gather
    """

    def __init__(self, path: str, vocab: list[FieldVocab] | None = None) -> None:
        self.path = path  # ``vocab``: the file's contents, when the caller has read them already
        self._lock = threading.Lock()
        self._vocab: list[FieldVocab] | None = vocab
        self._tables: VocabTables | None = None

    def _load(self) -> list[FieldVocab]:
        if self._vocab is None:
            self._vocab = load_vocab(self.path)
        return self._vocab

    def vocab(self) -> list[FieldVocab]:
        with self._lock:
            return self._load()

    def tables(self) -> VocabTables:
        with self._lock:
            if self._tables is None:
                self._tables = kernels.build_vocab_tables(self._load())
            return self._tables

    def __reduce__(self) -> tuple[Callable[[str], VocabCache], tuple[str]]:
        return (worker_cache, (self.path,))


def worker_cache(path: str) -> VocabCache:
    """This process's own ``VocabCache`` of ``path`` (a new one when it holds another run's)."""
    proc = mp.current_process()
    cache = getattr(proc, _PROCESS_SLOT, None)
    if not isinstance(cache, VocabCache) or cache.path != path:
        cache = VocabCache(path)
        setattr(proc, _PROCESS_SLOT, cache)
    return cache
