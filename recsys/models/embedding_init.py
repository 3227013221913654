"""Embedding-table init as a pure function of (member seed, table, row, column).

Why: tables are built on the ``meta`` device and DMP materializes only each rank's local
shard, so no rank ever holds a whole table (a 196 GB table needs no 196 GB rank).  Then the
values of a shard must not depend on who fills it: rows are generated in fixed blocks of
``BLOCK_ROWS`` from a generator seeded by (seed, table key, block), and any row/column range
is the slice of those blocks.  A table-, row- or column-wise shard on any world size, and the
unsharded table of a single process, therefore hold bit-identical values, and a member's
result does not depend on the sharding plan or the schedule.

The table key is the table name without the member's prefix (``C1``, or ``e0__C1`` for
Multi-Embed's sets), so a member's init depends on its spec's seed, not on the name the
config gives it.

Example::

    init = TableInit(key="C1", num_embeddings=1000, dim=16, seed=3, scheme="xavier", std=1e-4)
    w = init.values(0, 1000)               # [1000, 16], the whole table
    shard = init.values(500, 1000, 8, 16)  # rows 500..999, columns 8..15: the same numbers
    assert torch.equal(w[500:, 8:], shard)

The member's tables live here too: ``make_ebc`` builds a member's EBC on the ``meta``
device and records each table's ``TableInit`` on it; ``materialize_embeddings`` fills
whole tables for one process (tests, evaluation, serving), ``table_inits`` hands the
inits to ``recsys.distributed.shard_module``, which fills only each rank's shards.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys.data.schema import Schema

BLOCK_ROWS = 4096  # rows per generator; fixed forever: changing it changes every init
EMBEDDING_INITS = ("normal", "xavier", "xavier_global")


def _block_seed(seed: int, key: str, block: int) -> int:
    """A stable 63-bit seed per (seed, table key, block): independent of Python's hash salt."""
    digest = hashlib.blake2b(f"{seed}/{key}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TableInit:
    """How one table is initialized: ``xavier`` (uniform, bound sqrt(6 / (rows + dim)), as
    ``nn.init.xavier_uniform_`` on a [rows, dim] weight), ``xavier_global`` (uniform, bound
    sqrt(6 / (fan_rows + fan_dim))) or ``normal`` (N(0, std^2)).

    ``xavier_global`` is the official TTS4CTR init: its members hold ONE table of every
    field's rows and draw it with ``xavier_uniform_``, so the bound is set by the total rows
    (about 0.009 on Criteo-sized vocabularies); ``make_ebc`` passes ``fan_rows`` = the rows of
    all the member's fields and ``fan_dim`` = the width the model sees.  The values are still
    drawn per table and block, so they stay a pure function of (seed, table, row, column).
    """

    key: str
    num_embeddings: int
    dim: int
    seed: int
    scheme: str = "xavier"
    std: float = 1e-4
    fan_rows: int = 0  # xavier_global's rows; 0 = num_embeddings
    fan_dim: int = 0  # xavier_global's dim; 0 = dim

    def __post_init__(self) -> None:
        if self.scheme not in EMBEDDING_INITS:
            raise ValueError(f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}, got {self.scheme!r}")

    def _block(self, b: int) -> torch.Tensor:
        """One block's values, from numpy's PCG64.  Not torch's ``uniform_``/``normal_``: their
        CPU kernels take ISA-specific vector paths (AVX2 vs default differ by up to 4e-9 in about
        half the cells), so two nodes of one job could fill the same rows differently; numpy's
        generator is the same scalar code everywhere."""
        rows = min(BLOCK_ROWS, self.num_embeddings - b * BLOCK_ROWS)
        rng = np.random.Generator(np.random.PCG64(_block_seed(self.seed, self.key, b)))
        if self.scheme in ("xavier", "xavier_global"):
            bound = np.float32(self.bound)
            vals = rng.random(size=(rows, self.dim), dtype=np.float32)  # [0, 1)
            vals *= np.float32(2.0) * bound  # separate, correctly rounded ops: exact on every ISA
            vals -= bound
        else:
            vals = rng.standard_normal(size=(rows, self.dim), dtype=np.float32)
            vals *= np.float32(self.std)
        # explicit CPU: a meta device context (recsys.budget) must not apply here
        return torch.from_numpy(vals).to("cpu")

    @property
    def bound(self) -> float:
        """The uniform schemes' bound (what ``xavier_uniform_`` would use on the fan's weight)."""
        if self.scheme == "xavier_global":
            return math.sqrt(6.0 / ((self.fan_rows or self.num_embeddings) + (self.fan_dim or self.dim)))
        return math.sqrt(6.0 / (self.num_embeddings + self.dim))

    def values(self, row_start: int, row_stop: int, col_start: int = 0, col_stop: int | None = None) -> torch.Tensor:
        """Rows [row_start, row_stop) x columns [col_start, col_stop) of the table: [rows, cols] f32."""
        col_stop = self.dim if col_stop is None else col_stop
        if not (0 <= row_start <= row_stop <= self.num_embeddings and 0 <= col_start <= col_stop <= self.dim):
            raise ValueError(f"{self.key}: range [{row_start}:{row_stop}, {col_start}:{col_stop}] is outside "
                             f"[{self.num_embeddings}, {self.dim}]")
        out = torch.empty(row_stop - row_start, col_stop - col_start, device="cpu")
        self.fill(out, row_start, col_start)
        return out

    def fill(self, out: torch.Tensor, row_start: int, col_start: int = 0) -> None:
        """Writes the table's values at rows ``row_start + i`` and columns ``col_start + j`` into
        ``out`` [rows, cols] (any device or float dtype), one generator block at a time, so the
        memory beyond ``out`` is one block."""
        rows, cols = out.shape
        if rows == 0 or out.is_meta:  # a meta tensor has no values to write
            return
        with torch.no_grad():
            for b in range(row_start // BLOCK_ROWS, (row_start + rows - 1) // BLOCK_ROWS + 1):
                lo, hi = max(row_start, b * BLOCK_ROWS), min(row_start + rows, (b + 1) * BLOCK_ROWS)
                block = self._block(b)[lo - b * BLOCK_ROWS: hi - b * BLOCK_ROWS, col_start:col_start + cols]
                out[lo - row_start: hi - row_start].copy_(block)


def table_name(member: str, field: str) -> str:
    """Table names are ``<member>__<field>``.

    DESIGN.md asks for ``<member>.<field>``, but EBC keeps tables in an
    ``nn.ModuleDict`` keyed by table name, which refuses dots.

    Example::

        table_name("m0", "C1")   # "m0__C1"
    """
    return f"{member}__{field}"


def make_ebc(
    member: str,
    schema: Schema,
    embedding_dim: int,
    num_sets: int | None = None,
    init: str = "xavier",  # as MemberConfig.embedding_init; "normal" draws N(0, init_std^2)
    init_std: float = 1e-4,
    seed: int = 0,
    model_dim: int = 0,  # the width the model sees (MemberConfig.model_dim): xavier_global's fan
) -> EmbeddingBagCollection:
    """The member's own EBC, on the ``meta`` device: one table per field, named ``<member>__<field>``.

    No table memory is allocated here.  Each table's init is recorded in
    ``ebc.table_inits`` (name -> ``TableInit``, a pure function of seed, table, row and
    column); ``materialize_embeddings`` fills whole tables for one process, and
    ``recsys.distributed.shard_module`` fills only each rank's shards.

    With ``num_sets=M`` (Multi-Embed, D-MoE) it holds M independent tables per
    field, named ``<member>__e{k}__<field>``, set-major, all in this ONE EBC so DMP
    shards them like any other member's.  Several tables then read the same KJT
    feature; EBC supports that and names the pooled outputs ``<field>@<table>``
    (``torchrec.modules.embedding_modules.get_embedding_names_by_table``).

    Example::

        ebc = make_ebc("m0", schema, 16, seed=3)        # meta: nothing allocated
        materialize_embeddings(ebc)                     # [rows, 16] tables on CPU, seeded
    """
    if init not in EMBEDDING_INITS:
        raise ValueError(f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}, got {init!r}")
    prefixes = [member] if num_sets is None else [f"{member}__e{k}" for k in range(num_sets)]
    tables = [
        EmbeddingBagConfig(
            name=table_name(prefix, f.name),
            embedding_dim=embedding_dim,
            num_embeddings=f.num_embeddings,
            feature_names=[f.name],
            pooling=PoolingType.SUM,
        )
        for prefix in prefixes
        for f in schema.sparse_features
    ]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    # xavier_global: the rows of one official table, i.e. of every field once (a multi-set
    # member has num_sets such tables, each at the official scale).
    fan_rows = sum(f.num_embeddings for f in schema.sparse_features) if init == "xavier_global" else 0
    fan_dim = model_dim if init == "xavier_global" else 0
    ebc.table_inits = {
        t.name: TableInit(t.name[len(member) + 2:], t.num_embeddings, t.embedding_dim, seed, init, init_std,
                          fan_rows, fan_dim)
        for t in tables
    }
    return ebc


def table_inits(module: nn.Module) -> dict[str, TableInit]:
    """Every table's ``TableInit`` in every EBC made by ``make_ebc`` inside ``module``.

    Example::

        table_inits(build_member("fnn", schema, "m0", materialize=False))   # {"m0__C1": TableInit(...), ...}
    """
    out: dict[str, TableInit] = {}
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            out.update(getattr(m, "table_inits", {}))
    return out


def materialize_embeddings(module: nn.Module, device: torch.device | str = "cpu", fill: bool = True) -> None:
    """Allocates every meta-device EBC inside ``module`` on ``device``, whole, and fills each
    table from its ``TableInit`` (``fill=False`` leaves them uninitialized, for a checkpoint
    load that overwrites them anyway).  For one process holding whole members: tests,
    evaluation, serving.  Training shards instead (``recsys.distributed.shard_module``).

    Example::

        member = build_member("fnn", schema, "m0", materialize=False)   # tables on meta
        materialize_embeddings(member)                                   # whole, seeded, on CPU
    """
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection) and any(p.is_meta for p in m.parameters()):
            m.to_empty(device=device)
            if fill:
                inits = getattr(m, "table_inits", {})
                for name, bag in m.embedding_bags.items():
                    inits[name].fill(bag.weight.data, 0)
