"""Tables are born sharded (issue 8): members are built with their tables on ``meta``, DMP
allocates only each rank's shards, and each shard is filled from a pure function of
(seed, table, row, column).  So the same seed gives bit-identical tables under every plan
(table-, row-, column-wise) and world size, and equal to the unsharded member of one process.
"""
from __future__ import annotations

import pytest
import torch

from recsys.models.embedding_init import BLOCK_ROWS, TableInit
from recsys.models.registry import build_member
from tests.dist_harness import run_ranks
from tests.toy_data import toy_schema

# Tables larger than one generator block, so shards cut through blocks.
SCHEMA = toy_schema(num_fields=3, vocab=BLOCK_ROWS + 1500, num_dense=2)
SPECS = ["fnn:mlp=16,seed=7,embedding_dim=8", "deepfm:mlp=16,seed=8,embedding_dim=8"]  # xavier, normal


def _gather_tables(rank: int, world: int, sharding: str | None) -> dict[str, dict[tuple[int, int], torch.Tensor]]:
    """This rank's local shards of every table: {table: {(row_offset, col_offset): values}}."""
    from recsys.distributed import DistEnv, EmbeddingOptimizerConfig, ShardingConfig, shard_module
    from recsys.ensemble import GroupTrain, build_group

    env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
    module = GroupTrain(build_group(SPECS, ["a", "b"], [0, 1], SCHEMA, materialize=False))
    emb = [p for n, p in module.named_parameters() if "embedding_bags" in n]
    assert emb and all(p.is_meta for p in emb), "tables must not exist whole before sharding"
    dmp = shard_module(module, None, env, EmbeddingOptimizerConfig(), ShardingConfig(sharding))
    out: dict[str, dict[tuple[int, int], torch.Tensor]] = {}
    for key, value in dmp.state_dict().items():
        if hasattr(value, "local_shards"):
            table = key.split(".")[-2]
            for sh in value.local_shards():
                off = tuple(sh.metadata.shard_offsets)
                out.setdefault(table, {})[(off[0], off[1])] = sh.tensor.detach().clone()
    return out


def _assemble(per_rank: list[dict[str, dict[tuple[int, int], torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Whole tables from every rank's shards; every cell must be written exactly once."""
    tables: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for shards in per_rank:
        for table, parts in shards.items():
            for (r, c), t in parts.items():
                rows, cols = r + t.shape[0], c + t.shape[1]
                if table not in tables:
                    tables[table] = torch.zeros(SCHEMA.sparse_features[0].num_embeddings + 10, 8)
                    counts[table] = torch.zeros_like(tables[table])
                tables[table][r:rows, c:cols] = t
                counts[table][r:rows, c:cols] += 1
    for table, t in tables.items():
        n = int(counts[table].sum(1).nonzero().max()) + 1
        assert torch.all(counts[table][:n] == 1), f"{table}: a cell is missing or written twice"
        tables[table] = t[:n]
    return tables


@pytest.fixture(scope="module")
def unsharded() -> dict[str, torch.Tensor]:
    out = {}
    for spec, name in zip(SPECS, ["a", "b"]):
        member = build_member(spec, SCHEMA, name)
        for key, v in member.state_dict().items():
            if "embedding_bags" in key:
                out[key.split(".")[-2]] = v.detach().clone()
    return out


def test_every_plan_and_world_size_gives_the_unsharded_tables_bit_for_bit(unsharded: dict[str, torch.Tensor]) -> None:
    one = _assemble(run_ranks(_gather_tables, 1, "table_wise"))
    assert set(one) == set(unsharded) and len(one) == 6
    for table, t in unsharded.items():
        assert torch.equal(one[table], t), table
    for sharding in ("table_wise", "row_wise", "column_wise"):
        two = _assemble(run_ranks(_gather_tables, 2, sharding))
        for table, t in unsharded.items():
            assert torch.equal(two[table], t), f"{sharding}: {table} differs from the unsharded table"


def test_table_init_is_a_pure_function_of_seed_table_row_and_column() -> None:
    init = TableInit("C1", num_embeddings=3 * BLOCK_ROWS - 5, dim=8, seed=3, scheme="xavier")
    whole = init.values(0, init.num_embeddings)
    bound = (6.0 / (init.num_embeddings + 8)) ** 0.5
    assert whole.abs().max() <= bound and whole.abs().max() > 0.9 * bound  # xavier-uniform's range
    # Any row/column window, across block edges, is the slice of the whole table.
    for r0, r1, c0, c1 in [(0, 1, 0, 8), (BLOCK_ROWS - 3, BLOCK_ROWS + 3, 2, 5), (17, 2 * BLOCK_ROWS + 9, 4, 8)]:
        assert torch.equal(init.values(r0, r1, c0, c1), whole[r0:r1, c0:c1])
    # Another seed or another table gives other numbers; the same key gives the same ones.
    assert not torch.equal(TableInit("C1", init.num_embeddings, 8, 4).values(0, 10), whole[:10])
    assert not torch.equal(TableInit("C2", init.num_embeddings, 8, 3).values(0, 10), whole[:10])
    assert torch.equal(TableInit("C1", init.num_embeddings, 8, 3).values(0, 10), whole[:10])
    normal = TableInit("C1", 50_000, 16, seed=0, scheme="normal", std=0.01).values(0, 50_000)
    assert abs(float(normal.std()) - 0.01) < 2e-4 and abs(float(normal.mean())) < 2e-4
    with pytest.raises(ValueError, match="outside"):
        init.values(0, init.num_embeddings + 1)


def test_member_init_does_not_depend_on_its_name() -> None:
    """The table key drops the member's prefix: a member trained alone equals the same
    spec inside an ensemble, whatever name the config gives it."""
    a = build_member(SPECS[0], SCHEMA, "first")
    b = build_member(SPECS[0], SCHEMA, "other_name")
    ta = [v for k, v in a.state_dict().items() if "embedding_bags" in k]
    tb = [v for k, v in b.state_dict().items() if "embedding_bags" in k]
    assert len(ta) == 3 and all(torch.equal(x, y) for x, y in zip(ta, tb))


def test_init_does_not_depend_on_the_cpu_vector_unit() -> None:
    """Nodes of one job may differ in SIMD support; torch's uniform_/normal_ CPU kernels give
    different low bits under AVX2 and the default path, so the init must not use them."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib; from recsys.models.embedding_init import TableInit as T; "
            "print(hashlib.sha256(T('C1', 5000, 16, 3, 'xavier').values(0, 5000).numpy().tobytes()"
            " + T('C1', 5000, 16, 3, 'normal', 0.01).values(0, 5000).numpy().tobytes()).hexdigest())")
    digests = set()
    for cap in ("default", "avx2"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "ATEN_CPU_CAPABILITY": cap})
        assert r.returncode == 0, r.stderr[-1000:]
        digests.add(r.stdout.strip())
    here = TableInit("C1", 5000, 16, 3, "xavier").values(0, 5000).numpy().tobytes()
    here += TableInit("C1", 5000, 16, 3, "normal", 0.01).values(0, 5000).numpy().tobytes()
    assert digests == {hashlib.sha256(here).hexdigest()}
