"""Measured forward latency: random inputs inside every vocabulary, and a median wall time.

Why the median: the machines this runs on are shared, and outliers are other people's work.

Example::

    dense, kjt = random_inputs(schema, 1024)                 # [1024, Dd] float32, KJT of F keys
    ms = forward_latency_ms(member, schema, batch_size=1024)  # median of 5 timed forwards
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import kjt_from_ids
from recsys.data.schema import Schema


def random_inputs(
    schema: Schema, batch_size: int, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """A random (dense [B, Dd], KJT with one id per field and example) input with ids inside
    every field's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch_size, schema.num_dense, generator=g)
    ids = torch.stack([torch.randint(0, v, (batch_size,), generator=g) for v in schema.vocab_sizes], dim=1)
    kjt = kjt_from_ids(ids, schema.sparse_names)
    return dense.to(device), kjt.to(torch.device(device))


@torch.no_grad()
def measure_latency_ms(
    fn: Callable[[], object], warmup: int = 2, repeats: int = 5, device: torch.device | str = "cpu"
) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls after ``warmup`` calls.

    The median, not the mean, because the machine is shared and outliers are
    other people's work.
    """
    dev = torch.device(device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def forward_latency_ms(
    module: nn.Module,
    schema: Schema,
    batch_size: int,
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> float:
    """Latency of ``module(dense, kjt)`` (a Member or an EnsembleGroup) in eval mode; the
    module's training flag is restored afterwards."""
    was_training = module.training
    module.eval()
    dense, kjt = random_inputs(schema, batch_size, device=device)
    try:
        return measure_latency_ms(lambda: module(dense, kjt), warmup, repeats, device)
    finally:
        module.train(was_training)
