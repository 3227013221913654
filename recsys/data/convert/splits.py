"""The three output splits, and which split each row goes to.

Why one place: both parsers draw the random 8:1:1 (``--split``) split from the same seeded
generator, ``(seed, file, chunk)``, so that the outputs never depend on the engine or the
worker count; the explicit-files mode (``--train/--val/--test``) fixes the split per file.

Example::

    files, splits = resolve_files({"train": ["a.tsv"], "test": ["b.tsv"]}, [])  # ["a.tsv", "b.tsv"], [0, 2]
    split = draw_split(1000, task, (0.8, 0.1, 0.1), seed=0)                     # uint8 [1000] in 0..2
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recsys.data.convert.chunks import Task

SPLITS = ("train", "val", "test")

# per split: (dense [n, Dd] float32, sparse [n, F] int32, labels [n] float32)
SplitRows = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def resolve_files(split_files: dict[str, list[str]], inputs: list[str]) -> tuple[list[str], list[int]]:
    """(files, split index per file): explicit split files, else ``inputs`` with -1 (random split)."""
    if split_files:
        files, splits = [], []
        for s, paths in split_files.items():
            for p in paths:
                files.append(p)
                splits.append(SPLITS.index(s))
        return files, splits
    return list(inputs), [-1] * len(inputs)


def draw_split(n: int, task: Task, split_fracs: tuple[float, ...], seed: int) -> np.ndarray:
    """Split of each of the chunk's n rows that have the right column count (bad values included,
    so that both parsers draw the same numbers): uint8 [n]."""
    if task.split >= 0:
        return np.full(n, task.split, dtype=np.uint8)
    rng = np.random.default_rng([seed, task.file_idx, task.chunk_idx])
    return np.searchsorted(np.cumsum(split_fracs)[:-1], rng.random(n), side="right").astype(np.uint8)


def split_parts(dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, split: np.ndarray) -> SplitRows:
    """The rows of each split, in file order: ``[(dense, sparse, labels)] * 3``."""
    return [(dense[m], sparse[m], labels[m]) for m in (split == s for s in range(len(SPLITS)))]
