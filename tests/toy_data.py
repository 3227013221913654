"""In-memory toy CTR data with a planted, learnable signal, for model and training tests.

Labels come from a planted logit with first-order field effects plus pairwise
interactions between a few field pairs, so models that capture interactions
beat a linear one.  (data_prep/synthesize.py writes raw files; this is the
in-memory twin for fast tests.)
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torchrec.datasets.utils import Batch

from recsys.data.batch import batch_from_arrays
from recsys.data.schema import Schema, SparseFeature


def toy_schema(num_fields: int = 6, vocab: int = 50, num_dense: int = 0) -> Schema:
    return Schema(
        "toy",
        tuple(SparseFeature(f"C{i}", vocab + i) for i in range(num_fields)),
        tuple(f"I{i}" for i in range(num_dense)),
    )


def toy_arrays(
    schema: Schema, n: int, seed: int = 0, planted_seed: int = 1234
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns dense [n, Dd] float32, sparse [n, F] int32, labels [n] float32."""
    prng = np.random.default_rng(planted_seed)  # the planted model: fixed across calls
    rng = np.random.default_rng(seed)  # the rows
    F = schema.num_sparse
    sparse = np.empty((n, F), dtype=np.int32)
    for j, v in enumerate(schema.vocab_sizes):
        p = 1.0 / np.arange(1, v + 1) ** 1.1  # Zipf-like
        sparse[:, j] = rng.choice(v, size=n, p=p / p.sum())
    dense = rng.standard_normal((n, schema.num_dense)).astype(np.float32)
    logit = np.full(n, -0.5)
    for j, v in enumerate(schema.vocab_sizes):
        logit += 0.5 * prng.standard_normal(v)[sparse[:, j]]
    k = 4  # latent rank of the pairwise part
    lat = [prng.standard_normal((v, k)) for v in schema.vocab_sizes]
    for a in range(F):
        for b in range(a + 1, F):
            logit += 0.8 * (lat[a][sparse[:, a]] * lat[b][sparse[:, b]]).sum(1) / np.sqrt(k * F)
    if schema.num_dense:
        logit += dense @ prng.standard_normal(schema.num_dense) * 0.3
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return dense, sparse, labels


def toy_batches(
    schema: Schema, n: int, batch_size: int, seed: int = 0
) -> Iterator[Batch]:
    dense, sparse, labels = toy_arrays(schema, n, seed)
    for i in range(0, n, batch_size):
        yield batch_from_arrays(
            dense[i : i + batch_size], sparse[i : i + batch_size], labels[i : i + batch_size], schema.sparse_names
        )


def as_tensors(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.dense_features, batch.labels
