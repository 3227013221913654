"""recsys.distributed on gloo ranks: sharded == unsharded, subgroups without global
rank 0, the combined optimizer, and the group schedule.

Each test spawns ONE world and runs several checks in it (process start-up is
the expensive part on 2 shared cores).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys.distributed import (
    DistEnv,
    EmbeddingOptimizerConfig,
    ShardingConfig,
    group_schedule,
    init_distributed,
    make_optimizer,
    new_subgroups,
    plan_sharding_types,
    planner_compute_kernels,
    shard_module,
)
from recsys.models import MODELS, build_member
from tests.dist_harness import RankFailure, run_ranks
from tests.toy_data import toy_arrays, toy_schema

# Small configs of the models this checks; names not (yet) registered are skipped.
SPECS = {
    "fnn": "fnn:mlp=16,seed=3",
    "dcnv2": "dcnv2:mlp=16,cross_layers=2,seed=3",
    "wukong": "wukong:layers=2,lcb_tokens=4,fmb_tokens=4,fmb_rank=4,fmb_mlp=16,mlp=16,seed=3",
}
SHARDING_TYPES = ("table_wise", "column_wise", "row_wise")


def _specs() -> list[str]:
    return [spec for name, spec in SPECS.items() if name in MODELS]


def _env(rank: int, world_size: int) -> DistEnv:
    return DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo")


def _local_batch(schema, rank: int, world_size: int, per_rank: int = 16, seed: int = 0):
    """This rank's slice of one global batch: dense [b, Dd], kjt, labels [b]."""
    from recsys.data.batch import batch_from_arrays

    dense, sparse, labels = toy_arrays(schema, per_rank * world_size, seed=seed)
    sl = slice(rank * per_rank, (rank + 1) * per_rank)
    b = batch_from_arrays(dense[sl], sparse[sl], labels[sl], schema.sparse_names)
    return b.dense_features, b.sparse_features, b.labels


def _body_matches_unsharded(rank: int, world_size: int, specs: list[str]) -> dict[str, object]:
    """Sharded logits == unsharded logits for each model and forced sharding type;
    on every rank, and the plan really used that type (spread over both ranks)."""
    schema = toy_schema(num_fields=4, vocab=40, num_dense=2)
    env = _env(rank, world_size)
    dense, kjt, _ = _local_batch(schema, rank, world_size)
    out: dict[str, object] = {}
    for spec in specs:
        member = build_member(spec, schema, name="m0")
        with torch.no_grad():
            expected = member(dense, kjt)
        # Fused kernel for every model; the dense kernel (Adam on CPU) for the first.
        opts = ["rowwise_adagrad"] + (["adam"] if spec == specs[0] else [])
        for opt_name in opts:
            for st in SHARDING_TYPES:
                dmp = shard_module(
                    copy.deepcopy(member), None, env, EmbeddingOptimizerConfig(opt_name), ShardingConfig(st)
                )
                with torch.no_grad():
                    got = dmp(dense, kjt)
                types = set(plan_sharding_types(dmp.plan).values())
                ranks = {r for mp in dmp.plan.plan.values() for ps in mp.values() for r in ps.ranks}
                kernels = {ps.compute_kernel for mp in dmp.plan.plan.values() for ps in mp.values()}
                out[f"{spec}/{st}/{opt_name}"] = ((got - expected).abs().max().item(), types, ranks, kernels)
    return out


def test_sharded_member_matches_unsharded() -> None:
    specs = _specs()
    results = run_ranks(_body_matches_unsharded, 2, specs)
    for rank_result in results:
        assert len(rank_result) == (len(specs) + 1) * len(SHARDING_TYPES)
        for key, (err, types, ranks, kernels) in rank_result.items():
            _, st, opt_name = key.split("/")
            assert types == {st}, f"{key}: plan used {types}"
            assert kernels == {"dense" if opt_name == "adam" else "fused"}, f"{key}: kernels {kernels}"
            assert ranks == {0, 1}, f"{key}: tables only on ranks {ranks}"
            assert err < 1e-5, f"{key}: max |sharded - unsharded| = {err}"


def _body_subgroups(rank: int, world_size: int, spec: str) -> dict[str, float]:
    """Two groups {0, 1} and {2, 3}: each group shards its own member (different
    seeds) on its own subgroup, the one without global rank 0 included, and runs
    forward / backward / optimizer step.  Logits must equal the unsharded member."""
    schema = toy_schema(num_fields=4, vocab=40, num_dense=0)
    ranks = group_schedule(world_size, [[0], [1]])
    assert ranks == [[0, 1], [2, 3]]
    pgs = new_subgroups(ranks)
    k = rank // 2
    pg = pgs[k]
    env = _env(rank, world_size)
    local = pg.rank()
    dense, kjt, labels = _local_batch(schema, local, 2, seed=k)
    member = build_member(spec.replace("seed=3", f"seed={10 + k}"), schema, name=f"m{k}")
    with torch.no_grad():
        expected = member(dense, kjt)
    dmp = shard_module(copy.deepcopy(member), pg, env, EmbeddingOptimizerConfig(), ShardingConfig("row_wise"))
    placements = {
        str(shard.placement)
        for mp in dmp.plan.plan.values()
        for ps in mp.values()
        for shard in ps.sharding_spec.shards
    }
    assert placements == {f"rank:{r}/cpu" for r in ranks[k]}, placements
    opt = make_optimizer(dmp, lr=1e-2, emb_opt=EmbeddingOptimizerConfig())
    logits = dmp(dense, kjt)
    err = (logits.detach() - expected).abs().max().item()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = dmp(dense, kjt)
    moved = (after - logits.detach()).abs().max().item()
    dist.barrier()
    return {"err": err, "moved": moved, "group": float(k)}


def test_subgroup_without_rank0() -> None:
    results = run_ranks(_body_subgroups, 4, SPECS["fnn"])
    for r, res in enumerate(results):
        assert res["group"] == r // 2
        assert res["err"] < 1e-5, f"rank {r}: sharded != unsharded ({res['err']})"
        assert res["moved"] > 1e-6, f"rank {r}: the optimizer step changed nothing"


def _param_snapshot(dmp) -> dict[str, torch.Tensor]:
    """Local values of every parameter (the whole local shard for table-wise tables)."""
    snap = {}
    for k, v in dmp.state_dict().items():
        if isinstance(v, ShardedTensor):
            if not v.local_shards():
                continue
            (shard,) = v.local_shards()
            assert shard.metadata.shard_offsets == [0, 0], "table-wise expected"
            v = shard.tensor
        snap[k] = v.detach().clone()
    return snap


def _body_train_step(rank: int, world_size: int, spec: str) -> dict[str, dict[str, float]]:
    """One step with the combined optimizer changes dense AND embedding parameters,
    changes exactly the embedding rows the global batch looked up, and round-trips
    its state dict."""
    schema = toy_schema(num_fields=4, vocab=40, num_dense=2)
    env = _env(rank, world_size)
    dense, kjt, labels = _local_batch(schema, rank, world_size)
    _, global_ids, _ = toy_arrays(schema, 16 * world_size, seed=0)  # what _local_batch slices
    out = {}
    for name in ("rowwise_adagrad", "adam"):
        member = build_member(spec, schema, name="m0")
        emb_opt = EmbeddingOptimizerConfig(name, lr=0.05)
        dmp = shard_module(member, None, env, emb_opt, ShardingConfig("table_wise"))
        opt = make_optimizer(dmp, lr=1e-2, emb_opt=emb_opt)
        emb_dense_lrs = {
            g["lr"] for key, o in opt.optimizers if key == "embedding_dense" for g in o.param_groups
        }
        before = _param_snapshot(dmp)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(dmp(dense, kjt), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        after = _param_snapshot(dmp)
        emb_keys = [k for k in before if "embedding_bags" in k]
        dense_keys = [k for k in before if "embedding_bags" not in k]
        assert emb_keys and dense_keys, (emb_keys, dense_keys)
        wrong_rows = 0
        for k in emb_keys:  # e.g. ...embedding_bags.m0__C2.weight
            field = k.split("__")[1].split(".")[0]
            used = torch.zeros(before[k].shape[0], dtype=torch.bool)
            used[torch.as_tensor(global_ids[:, schema.sparse_names.index(field)], dtype=torch.long)] = True
            changed = (after[k] != before[k]).any(dim=1)
            wrong_rows += int((changed != used).sum())
        dense_delta = min((after[k] - before[k]).abs().max().item() for k in dense_keys)
        state = opt.state_dict()
        groups = {k.split(".")[0] for k in state["state"]}
        opt.load_state_dict(state)
        out[name] = {
            "num_emb_tables": float(len(emb_keys)),
            "wrong_rows": float(wrong_rows),
            "dense_delta": dense_delta,
            "has_dense_state": float("dense" in groups),
            "has_emb_state": float(any(g.startswith("embedding") for g in groups)),
            "emb_dense_lrs": sorted(emb_dense_lrs),
        }
    return out


def test_train_step_updates_dense_and_embeddings() -> None:
    results = run_ranks(_body_train_step, 2, SPECS["fnn"])
    for r, res in enumerate(results):
        for name, d in res.items():
            assert d["dense_delta"] > 0, f"rank {r} {name}: some dense parameter did not move"
            assert d["num_emb_tables"] >= 1, f"rank {r} {name}: holds no table"
            assert d["wrong_rows"] == 0, f"rank {r} {name}: {d['wrong_rows']} rows moved iff unused"
            assert d["has_dense_state"] and d["has_emb_state"], f"rank {r} {name}: optimizer state {d}"
            # Adam on CPU: torch Adam over the tables with emb_opt's lr; fused: none.
            assert d["emb_dense_lrs"] == ([0.05] if name == "adam" else []), f"rank {r} {name}: {d}"


@pytest.mark.parametrize(
    "world_size, groups, expected",
    [
        (4, [[0, 1], [2, 3]], [[0, 1], [2, 3]]),
        (2, [[0], [1]], [[0], [1]]),
        (4, [[0, 1, 2]], [[0, 1, 2, 3]]),
        (6, [[0], [1], [2]], [[0, 1], [2, 3], [4, 5]]),
        (3, [[0], [1]], None),  # W % K != 0
        (1, [[0], [1]], None),  # W < K
    ],
)
def test_group_schedule(world_size: int, groups: list[list[int]], expected: list[list[int]] | None) -> None:
    assert group_schedule(world_size, groups) == expected


def test_bad_configs_fail_with_one_line() -> None:
    with pytest.raises(ValueError, match="unknown embedding optimizer 'lamb'"):
        EmbeddingOptimizerConfig("lamb")
    with pytest.raises(ValueError, match="unknown sharding type 'data_parallel'"):
        ShardingConfig("data_parallel")
    with pytest.raises(ValueError, match="world_size"):
        group_schedule(0, [[0]])


def test_cuda_local_rank_beyond_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match=r"local rank 3 needs GPU 3 but only 2 are visible; use --nproc_per_node <= 2"):
        init_distributed("cuda")


def test_planner_compute_kernels() -> None:
    # CUDA: the planner may fall back to UVM caching when tables do not fit in HBM.
    assert planner_compute_kernels(torch.device("cuda"), dense_kernel=False) == ["fused", "fused_uvm_caching"]
    assert planner_compute_kernels(torch.device("cpu"), dense_kernel=False) == ["fused"]
    assert planner_compute_kernels(torch.device("cpu"), dense_kernel=True) == ["fused"]


def _body_fails(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank 1")
    dist.barrier()  # rank 0 blocks; the harness must still return


def test_harness_reports_rank_failure() -> None:
    with pytest.raises(RankFailure, match="boom on rank 1"):
        run_ranks(_body_fails, 2, timeout=60)
